"""``traincraft evaluate`` and ``traincraft predict``: use a trained run's folder, and find the run
that a folder of runs (``runs/NAME``) means. torch is imported only inside the commands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

TRUST_CODE_HELP = ("import the code that the run folder's recipe names (module:Class) although the "
                   "folder is not under this one")

EVALUATE_EXAMPLES = """example:
  traincraft evaluate runs/quickstart/20261121-101500 --split test"""

PREDICT_EXAMPLES = """example:
  traincraft predict runs/diabetes/20261121-101500 --input new.csv --output predictions.csv"""


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``evaluate`` and ``predict`` through ``command(name, handler, help, epilog)``."""
    evaluate = command("evaluate", cmd_evaluate, "evaluate a run's best weights on a split", EVALUATE_EXAMPLES)
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, or runs/NAME: its newest run")
    evaluate.add_argument("--split", choices=["train", "val", "test"], default="test")
    evaluate.add_argument("--data", metavar="FILE|FOLDER",
                          help="new labelled data instead of a split: a file read as the run's data was (CSV with "
                          "its columns, .npz, .pt), or for a run on images a folder with one subfolder per class")
    evaluate.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)

    predict = command("predict", cmd_predict, "predict a CSV file (or a folder of images) with a run's model",
                      PREDICT_EXAMPLES)
    predict.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)
    predict.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, or runs/NAME: its newest run")
    predict.add_argument("--input", required=True,
                         help="CSV with the training data's input columns; for a run on images, a folder of images or one image")
    predict.add_argument("--output", required=True, help="CSV to write")


def run_folder(given: str) -> Path:
    """A run folder as given, or the newest run of a folder of runs (``runs/NAME``), said."""
    from traincraft.runfolder import newest_run

    folder = Path(given)
    if (folder / "recipe.yaml").is_file():
        return folder
    newest = newest_run(folder)
    if newest is None:
        return folder
    print(f"{folder} holds runs: using the newest, {newest}", file=sys.stderr)
    return newest


def _run_trainer(run_dir: str, trust_code: bool = False) -> tuple[Any, Any, Any]:
    """A trainer holding a run's best weights, with the run's data (same seed, same split)."""
    from traincraft.run import (
        build_model,
        evaluation_kwargs,
        load_run,
        run_weights,
        with_normalization,
    )
    from traincraft.trainer import Trainer

    recipe, info = load_run(run_dir, trust_code=trust_code)
    # The run folder alone: neither init_from nor the model's weights: file is read again.
    model = build_model(recipe, info, init_weights=False)
    model.load_state_dict(run_weights(run_dir))
    kwargs = with_normalization(evaluation_kwargs(recipe), recipe, info)
    kwargs["callbacks"] = []
    trainer = Trainer(model, **kwargs, progress=False)
    return trainer, recipe, info


def cmd_evaluate(args: argparse.Namespace) -> int:
    from traincraft.errors import TraincraftError
    from traincraft.run import prepare_data

    args.run_dir = str(run_folder(args.run_dir))
    trainer, recipe, info = _run_trainer(args.run_dir, args.trust_code)
    if args.data is not None:
        from traincraft.predictions import labelled_data

        figures = trainer.evaluate(labelled_data(recipe, info, Path(args.data)))
        print(json.dumps({"data": args.data, **figures}, indent=2))
        return 0
    data = prepare_data(recipe)
    split = getattr(data, args.split)
    if split is None:
        raise TraincraftError(f"the run's recipe has no {args.split} split (data.split.{args.split} is 0)")
    figures = trainer.evaluate(split)
    print(json.dumps({"split": args.split, **figures}, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from traincraft.errors import TraincraftError
    from traincraft.predictions import predict_file

    output = Path(args.output)
    if output.is_dir():
        raise TraincraftError(f"--output {output} is a folder: give a file name, e.g. {output / 'predictions.csv'}")
    if not output.parent.is_dir():
        raise TraincraftError(f"--output {output}: the folder {output.parent} does not exist")
    args.run_dir = str(run_folder(args.run_dir))
    trainer, recipe, info = _run_trainer(args.run_dir, args.trust_code)
    rows = predict_file(trainer, info, recipe, Path(args.input), output)
    print(f"wrote {rows} predictions to {args.output}", file=sys.stderr)
    return 0

