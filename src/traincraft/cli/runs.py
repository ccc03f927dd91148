"""``traincraft evaluate``, ``traincraft predict`` and ``traincraft export``: use a trained run's
folder, and find the run that a folder of runs (``runs/NAME``) means. torch is imported only inside the commands."""

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

PREDICT_EXAMPLES = """examples:
  traincraft predict runs/diabetes/20261121-101500 --input new.csv --output predictions.csv
  traincraft predict runs/diabetes --input new.csv --output -     # the newest run; CSV to stdout"""

EXPORT_EXAMPLES = """examples:
  traincraft export runs/quickstart                          # RUN/model.safetensors
  traincraft export runs/quickstart --format pt -o model.pt  # torch.load(model.pt, weights_only=True)"""


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
    predict.add_argument("--output", required=True, help="CSV to write; - writes to stdout")

    export = command("export", cmd_export, "write a run's weights as a plain .safetensors or .pt file",
                     EXPORT_EXAMPLES)
    export.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, or runs/NAME: its newest run")
    export.add_argument("--format", choices=["safetensors", "pt"],
                        help="default: from --output's suffix, else safetensors")
    export.add_argument("--output", "-o", metavar="FILE", help="default: RUN_DIR/model.safetensors (or model.pt)")
    export.add_argument("--weights", choices=["best", "last"], default="best",
                        help="best: best.safetensors (default); last: the newest checkpoint's")


def run_folder(given: str, needs: str = "weights") -> Path:
    """The run that a command's RUN_DIR names: a run folder as given, or the newest run of a
    folder of runs (``runs/NAME``) that holds what the command ``needs``, said on stderr. Every
    command that takes RUN_DIR finds its run here (:func:`traincraft.runfolder.find_run`)."""
    from traincraft.runfolder import find_run

    folder, note = find_run(given, needs=needs)
    if note:
        print(note, file=sys.stderr)
    return folder


def check_run_data(run_dir: str | Path) -> None:
    """Before a command reads a run's data: when the run folder moved away from it, say where
    it looked (one line) instead of naming a single place."""
    from traincraft.errors import DataError
    from traincraft.run_paths import missing_data

    problem = missing_data(run_dir)
    if problem:
        raise DataError(problem)


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
    check_run_data(args.run_dir)
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

    output = None if args.output == "-" else Path(args.output)
    if output is not None and output.is_dir():
        raise TraincraftError(f"--output {output} is a folder: give a file name, e.g. {output / 'predictions.csv'}")
    if output is not None and not output.parent.is_dir():
        raise TraincraftError(f"--output {output}: the folder {output.parent} does not exist")
    args.run_dir = str(run_folder(args.run_dir))
    trainer, recipe, info = _run_trainer(args.run_dir, args.trust_code)
    rows = predict_file(trainer, info, recipe, Path(args.input), output)
    print(f"wrote {rows} predictions to {'stdout' if output is None else output}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from traincraft.export import export_format, export_weights

    export_format(args.output, args.format)  # a wrong name fails before anything is read
    run_dir = run_folder(args.run_dir)
    path = export_weights(run_dir, args.output, format=args.format, which=args.weights)
    print(f"wrote {path} ({args.weights} weights of {run_dir})", file=sys.stderr)
    return 0
