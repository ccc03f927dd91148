"""Fine-tuning against training from scratch on the same small budget (examples/finetune.yaml).

    python bench/finetune.py [--seeds 0 1 2 3 4]

Trains the digits 0-4 once (examples/digits_0_4.yaml), then, per seed, the digits 5-9 from about
90 images in 6 epochs: from scratch, from the 0-4 weights with nothing frozen, with the example's
freezing (conv1 frozen two epochs, then trained at 0.1× the LR), and with both convolutions frozen
the same way. Prints test accuracy (the 720 held-out images) and writes bench/results/finetune.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).parents[1]
RESULTS = Path(__file__).parent / "results"

VARIANTS = {
    "from scratch": ["finetune=null"],
    "from 0-4 weights, nothing frozen": ["finetune.freeze=[]", "finetune.unfreeze=[]"],
    "example: conv1 frozen 2 epochs, then 0.1× LR": [],
    "conv1 and conv2 frozen 2 epochs, then 0.1× LR": [
        "finetune.freeze=[conv*]", "finetune.unfreeze=[{at: 2ep, params: [conv*], lr_mult: 0.1}]"
    ],
}


def test_accuracy(recipe_path: Path, overrides: list[str]) -> float:
    import traincraft as tc

    recipe = tc.load_recipe(recipe_path, overrides=overrides)
    trainer = tc.Trainer.from_recipe(recipe, progress=False)
    trainer.fit()
    return trainer.evaluate(trainer.data.test)["accuracy"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = parser.parse_args()
    import traincraft as tc

    with tempfile.TemporaryDirectory() as tmp:
        pretrain = Path(tmp) / "digits-0-4"
        trainer = tc.Trainer.from_recipe(ROOT / "examples" / "digits_0_4.yaml", run_dir=pretrain, progress=False)
        trainer.fit()
        print(f"digits 0-4: test accuracy {trainer.evaluate(trainer.data.test)['accuracy']:.4f}")
        rows = []
        for name, overrides in VARIANTS.items():
            scores = [
                test_accuracy(ROOT / "examples" / "finetune.yaml",
                              [f"seed={seed}", f"finetune.init_from={pretrain}", *overrides]
                              if "finetune=null" not in overrides else [f"seed={seed}", *overrides])
                for seed in args.seeds
            ]
            rows.append((name, scores))
            print(f"{name}: " + ", ".join(f"{s:.4f}" for s in scores) + f"  mean {statistics.mean(scores):.4f}")
    lines = [
        "| digits 5-9, ~90 training images, 6 epochs | " + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |",
        "|---|" + "---:|" * (len(args.seeds) + 1),
        *(f"| {name} | " + " | ".join(f"{100 * s:.1f}%" for s in scores)
          + f" | {100 * statistics.mean(scores):.1f}% |" for name, scores in rows),
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "finetune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
