"""Draw the plots of docs/schedules.md: one PNG per example under docs/img/schedules/.

Every plot is made by ``traincraft.schedules.preview`` and ``plot`` from the recipe snippet shown
beside it on the page, so the page cannot drift from what the code does.

Run from anywhere:

    python docs/make_schedule_plots.py            # writes docs/img/schedules/*.png
    python docs/make_schedule_plots.py --snippets # prints the recipe snippets of the page
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from traincraft import schedules

OUT = Path(__file__).resolve().parent / "img" / "schedules"
STEPS_PER_EPOCH, EPOCHS, LR = 20, 20, 1e-3

# A validation loss that falls, then stalls: what plateau reacts to.
PLATEAU_LOSS = [
    1.0,
    0.8,
    0.65,
    0.55,
    0.5,
    0.48,
    0.49,
    0.485,
    0.49,
    0.44,
    0.43,
    0.435,
    0.44,
    0.433,
    0.41,
    0.409,
    0.41,
    0.411,
    0.41,
    0.412,
]

# name -> the spec (exactly the recipe's `schedule:` section), and how the preview is run.
EXAMPLES: dict[str, dict[str, Any]] = {
    "constant": {"spec": {"name": "constant", "warmup": "10%"}},
    "step": {"spec": {"name": "step", "step_size": "3ep", "gamma": 0.5}},
    "multistep": {"spec": {"name": "multistep", "milestones": ["10ep", "15ep"], "gamma": 0.1}},
    "exponential": {"spec": {"name": "exponential", "gamma": 0.85, "interval": "epoch"}},
    "cosine": {"spec": {"name": "cosine", "warmup": "5%", "eta_min": 1.0e-5}},
    "cosine_two_groups": {
        "spec": {"name": "cosine", "eta_min": 1.0e-4},
        "base_lrs": (1e-3, 3e-4),
        "labels": ["head (lr_mult 1)", "backbone (lr_mult 0.3)"],
    },
    "cosine_restarts": {
        "spec": {
            "name": "cosine_restarts",
            "T_0": "2ep",
            "T_mult": 2,
            "eta_min": 1.0e-5,
            "interval": "step",
        }
    },
    "onecycle": {"spec": {"name": "onecycle", "max_lr": 0.01, "pct_start": 0.25}},
    "cyclic": {
        "spec": {
            "name": "cyclic",
            "base_lr": 1.0e-4,
            "max_lr": 1.0e-3,
            "step_size_up": "2ep",
            "mode": "triangular2",
            "interval": "step",
        }
    },
    "polynomial": {"spec": {"name": "polynomial", "power": 2.0}},
    "linear": {"spec": {"name": "linear", "start_factor": 1.0, "end_factor": 0.1, "warmup": "1ep"}},
    "inverse_sqrt": {"spec": {"name": "inverse_sqrt", "warmup": "2ep"}},
    "warmup_stable_decay": {
        "spec": {
            "name": "warmup_stable_decay",
            "warmup": "5%",
            "decay": "20%",
            "decay_kind": "sqrt",
        }
    },
    "lambda": {
        # a Python function: shown as the Trainer call (a recipe names one as "module:function")
        "spec": {"name": "lambda", "warmup": "1ep", "lr_lambda": lambda t: 0.5 ** (t / 100)},
        "python": (
            'Trainer(model, loss="cross_entropy", schedule={"name": "lambda", "warmup": "1ep",\n'
            '                                              "lr_lambda": lambda t: 0.5 ** (t / 100)})'
        ),
    },
    "multiplicative": {
        "spec": {"name": "multiplicative", "interval": "epoch", "lr_lambda": lambda e: 0.8},
        "python": (
            'Trainer(model, loss="cross_entropy", schedule={"name": "multiplicative", "interval": "epoch",\n'
            '                                              "lr_lambda": lambda e: 0.8})'
        ),
    },
    "plateau": {
        "spec": {
            "name": "plateau",
            "monitor": "val_loss",
            "patience": 2,
            "factor": 0.5,
            "warmup": "2ep",
        },
        "metrics": PLATEAU_LOSS,
    },
    "warmup_cooldown": {
        "spec": {
            "name": "cosine",
            "eta_min": 2.0e-4,
            "warmup": {"duration": "3ep", "kind": "exponential", "start_factor": 0.01},
            "cooldown": {"duration": "15%", "kind": "cosine", "end_factor": 0.0},
        }
    },
}


def snippet(name: str) -> str:
    """The recipe snippet (or Python line) shown on the page for an example."""
    example = EXAMPLES[name]
    if "python" in example:
        return example["python"]
    return yaml.safe_dump({"schedule": example["spec"]}, sort_keys=False).rstrip()


def draw(name: str) -> Path:
    example = EXAMPLES[name]
    rows = schedules.preview(
        example["spec"],
        STEPS_PER_EPOCH,
        EPOCHS,
        base_lrs=example.get("base_lrs", (LR,)),
        metrics=example.get("metrics"),
    )
    path = OUT / f"{name}.png"
    schedules.plot(
        rows, steps_per_epoch=STEPS_PER_EPOCH, title=name, path=path, labels=example.get("labels")
    )
    return path


def main(argv: list[str]) -> int:
    if "--snippets" in argv:
        for name in EXAMPLES:
            print(f"## {name}\n{snippet(name)}\n")
        return 0
    for name in EXAMPLES:
        print(draw(name))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
