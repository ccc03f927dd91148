"""The quickstart's budget: test accuracy >= 98.5% and training under 30 s on 2 cores.

    python bench/quickstart.py [--seeds 0 1 2] [--set train.max_epochs=20 ...]

Prints, per seed, the training time (fit only, and from recipe to results), the test accuracy
and the peak resident memory, and writes the table to bench/results/quickstart.md.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def run(seed: int, overrides: list[str]) -> dict[str, float]:
    import traincraft as tc

    started = time.perf_counter()
    recipe = tc.load_recipe("quickstart", overrides=[f"seed={seed}", *overrides])
    trainer = tc.Trainer.from_recipe(recipe, progress=False)
    fit_started = time.perf_counter()
    history = trainer.fit()
    fit_seconds = time.perf_counter() - fit_started
    test = trainer.evaluate(trainer.data.test)
    return {
        "seed": seed,
        "epochs": len(history),
        "fit_s": fit_seconds,
        "total_s": time.perf_counter() - started,
        "test_accuracy": test["accuracy"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="recipe overrides")
    args = parser.parse_args()
    rows = [run(seed, args.set) for seed in args.seeds]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines = [
        "| seed | epochs | fit (s) | recipe to results (s) | test accuracy |",
        "|---:|---:|---:|---:|---:|",
        *[
            f"| {r['seed']} | {r['epochs']} | {r['fit_s']:.1f} | {r['total_s']:.1f} | {r['test_accuracy']:.4f} |"
            for r in rows
        ],
        "",
        f"median fit {statistics.median(r['fit_s'] for r in rows):.1f} s; "
        f"min accuracy {min(r['test_accuracy'] for r in rows):.4f}; peak RSS {peak_mib:.0f} MiB",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quickstart.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
