"""The ``traincraft`` command. torch is imported only by the commands that need it."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from traincraft import __version__

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130

EXAMPLES = {
    "fit": """examples:
  traincraft fit                                    # the quickstart: digits with a small CNN
  traincraft fit sunspots                           # a built-in template
  traincraft fit recipe.yaml optimizer.lr=3e-4 train.max_epochs=5 metrics=[mae]
  traincraft fit recipe.yaml --run-dir runs/try1
  traincraft fit recipe.yaml --resume runs/try1     # continue an interrupted run exactly
  traincraft fit recipe.yaml --run-dir runs/job --resume auto   # continue if it has started, else start
  traincraft fit recipe.yaml --nproc 2              # two processes (DDP): one per GPU, or CPU cores""",
    "resume": """examples:
  traincraft resume runs/quickstart/20261121-101500
  traincraft resume runs/quickstart/20261121-101500 train.max_epochs=80   # train longer""",
    "evaluate": """example:
  traincraft evaluate runs/quickstart/20261121-101500 --split test""",
    "predict": """example:
  traincraft predict runs/diabetes/20261121-101500 --input new.csv --output predictions.csv""",
    "init": """examples:
  traincraft init                     # writes recipe.yaml from the quickstart template
  traincraft init sunspots -o sun.yaml""",
    "list": """examples:
  traincraft list                     # everything
  traincraft list losses""",
    "schema": """example:
  traincraft schema > recipe.schema.json   # point your editor's YAML plugin at it""",
}


# Commands with a parser of their own: everything after the name is theirs (--help included).
PASSTHROUGH = {
    "schedule": "traincraft.schedules:preview_main",
    "tune": "traincraft.tuning:tune_main",
    "report": "traincraft.report:report_main",
    "lr-find": "traincraft.lr_finder:lr_find_main",
}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # As under `python -m traincraft`: modules of the current folder (a recipe's
    # "mynets:TinyCNN") import; the installed command otherwise only sees its own bin folder.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        module, _, function = PASSTHROUGH[argv[0]].partition(":")
        return int(getattr(importlib.import_module(module), function)(argv[1:]) or 0)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after options too: `fit r.yaml --nproc 2 train.max_epochs=3`.
    positional = next((name for name in ("args", "overrides") if hasattr(args, name)), None)
    if extra and positional and not any(item.startswith("-") for item in extra):
        getattr(args, positional).extend(extra)
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "command", None):
        parser.print_help()
        return 0
    return run_reporting_errors(lambda: args.handler(args), debug=args.debug)


def run_reporting_errors(command: Callable[[], int | None], *, debug: bool) -> int:
    """Run a command: a user mistake prints one line ``error: ...`` and gives exit code 2
    (``--debug`` shows the traceback instead); Ctrl-C gives 130. Bugs keep their traceback."""
    from traincraft.errors import TraincraftError

    global _FROZEN
    try:
        return int(command() or 0)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except TraincraftError as err:
        if debug:
            raise
        prefix = "" if str(err).startswith("rank ") else _process_prefix()
        print(f"error: {prefix}{err}", file=sys.stderr)
        return EXIT_USER_ERROR
    finally:
        if _FROZEN:  # called in a longer-lived process (a test, a notebook): collectable again
            import gc

            gc.unfreeze()
            _FROZEN = False


def _process_prefix() -> str:
    """``rank 1: `` in one of several processes that torchrun started, else nothing."""
    import os

    world = os.environ.get("WORLD_SIZE", "1")
    return f"rank {os.environ.get('RANK', '?')}: " if world.isdigit() and int(world) > 1 else ""


def add_process_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="train in N local processes (DDP through torchrun): one per GPU, or per CPU core")
    parser.add_argument("--master-port", type=int, metavar="PORT",
                        help="with --nproc: the port the processes meet on (default: a free one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="traincraft",
        description="Train any PyTorch model with the right strategies, from a short YAML recipe.",
        epilog="examples:\n  traincraft fit\n  traincraft init sunspots -o sun.yaml && traincraft fit sun.yaml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"traincraft {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, handler: Callable[[argparse.Namespace], int | None], help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name, help=help, description=help, epilog=EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
        sub.set_defaults(handler=handler)
        return sub

    fit = command("fit", cmd_fit, "train from a recipe (no recipe: the quickstart)")
    fit.add_argument("args", nargs="*", metavar="[RECIPE] [key.path=value ...]",
                     help="a recipe file or template name, then overrides read as YAML")
    fit.add_argument("--run-dir", help="the run folder (default runs/<name>/<YYYYmmdd-HHMMSS>)")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar")
    fit.add_argument("--resume", metavar="RUN_DIR|auto",
                     help="continue an interrupted run exactly; auto: continue --run-dir's run if it "
                     "has a checkpoint, else start it (for jobs that a scheduler restarts)")
    fit.add_argument("--allow-changes", action="store_true",
                     help="resume even though the recipe differs from the run's")
    fit.add_argument("--overwrite", action="store_true",
                     help="replace the run in --run-dir (refused otherwise)")
    add_process_options(fit)

    resume = command("resume", cmd_resume, "continue an interrupted run with its own recipe")
    resume.add_argument("run_dir", metavar="RUN_DIR", nargs="?",
                        help="a run folder, or a folder of runs (runs/NAME: its newest run)")
    resume.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="e.g. train.max_epochs=50 to train longer")
    resume.add_argument("--allow-changes", action="store_true",
                        help="allow overrides other than train.max_epochs / train.max_steps")
    resume.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_process_options(resume)

    trust = "import the code that the run folder's recipe names (module:Class) although the folder is not under this one"
    resume.add_argument("--trust-code", action="store_true", help=trust)

    evaluate = command("evaluate", cmd_evaluate, "evaluate a run's best weights on a split")
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, or runs/NAME: its newest run")
    evaluate.add_argument("--split", choices=["train", "val", "test"], default="test")
    evaluate.add_argument("--trust-code", action="store_true", help=trust)

    predict = command("predict", cmd_predict, "predict a CSV file with a run's model")
    predict.add_argument("--trust-code", action="store_true", help=trust)
    predict.add_argument("run_dir", metavar="RUN_DIR", help="a run folder, or runs/NAME: its newest run")
    predict.add_argument("--input", required=True, help="CSV with the training data's input columns")
    predict.add_argument("--output", required=True, help="CSV to write")

    init = command("init", cmd_init, "write a commented starter recipe")
    init.add_argument("template", nargs="?", default="quickstart", help="quickstart, sunspots, regression, ...")
    init.add_argument("-o", "--output", default="recipe.yaml")
    init.add_argument("--force", action="store_true", help="overwrite an existing file")

    listing = command("list", cmd_list, "list the names you can use in a recipe")
    listing.add_argument("what", nargs="?", choices=sorted(LISTS), help="one kind (default: all)")

    command("schema", cmd_schema, "print the recipe's JSON schema")
    # Listed for --help; main() hands their arguments to their own parsers (PASSTHROUGH).
    commands.add_parser("schedule", help="preview a recipe's learning-rate schedule without training")
    commands.add_parser("tune", help="search hyperparameters with Optuna (the recipe's tune: section)")
    commands.add_parser("report", help="rebuild a run's plots and report.html")
    commands.add_parser("lr-find", help="find a learning rate with the range test")
    return parser


# ----------------------------------------------------------------------------- commands


def split_fit_args(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """``[RECIPE] [key=value ...]``: the first argument without ``=`` is the recipe."""
    recipe = None
    overrides = []
    for arg in args:
        if "=" not in arg and recipe is None and not overrides:
            recipe = arg
        else:
            overrides.append(arg)
    return recipe, overrides


def freeze_startup_objects() -> None:
    """Take the objects that imports created out of the garbage collector's sight
    (``gc.freeze``): its passes over torch's several hundred thousand objects cost about 0.1 s
    of start-up, and the training loop's full collections skip them as well. A training
    command calls it once torch is imported, and again once the trainer is built."""
    import gc

    import torch  # noqa: F401  (most of the objects)

    global _FROZEN
    _FROZEN = True
    gc.freeze()


_FROZEN = False  # set while a command keeps objects frozen; run_reporting_errors thaws them


def cmd_fit(args: argparse.Namespace) -> int:
    freeze_startup_objects()
    from traincraft.errors import TraincraftError
    from traincraft.recipe import load_recipe
    from traincraft.run import agreed_run_dir, default_run_dir

    source, overrides = split_fit_args(args.args)
    for override in overrides:
        if "=" not in override:
            raise TraincraftError(f"expected key.path=value after the recipe, got {override!r}")
    recipe = load_recipe(source, overrides)
    if args.resume == "auto":
        if not args.run_dir:
            raise TraincraftError("--resume auto continues the run in --run-dir: give --run-dir too")
        from traincraft.checkpoint import checkpoint_candidates

        if checkpoint_candidates(Path(args.run_dir)):
            args.resume = args.run_dir
        else:  # not started, or killed before its first checkpoint: (re)start it
            args.resume, args.overwrite = None, True
    if args.resume:
        if args.run_dir and Path(args.run_dir) != Path(args.resume):
            raise TraincraftError("--resume continues in its own run folder: leave out --run-dir")
        check_recipe_changes(recipe, Path(args.resume), args.allow_changes)
        if _say_finished(Path(args.resume), recipe):
            return 0
        if launches(args, recipe):
            return launch_processes(["fit", *args.args, "--resume", args.resume], args)
        return train(recipe, Path(args.resume), args, resume=True)
    if args.run_dir and not args.overwrite:  # refused before any data is loaded
        from traincraft.runfolder import claim, holds_run

        if holds_run(Path(args.run_dir)):
            raise TraincraftError(claim(Path(args.run_dir), overwrite=False))
    if launches(args, recipe):
        # Named (and made) here, once, so that every process writes (rank 0) and reads the same folder.
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(recipe)
        return launch_processes(["fit", *args.args, "--run-dir", str(run_dir)], args)
    return train(recipe, Path(args.run_dir) if args.run_dir else agreed_run_dir(recipe), args)


def launches(args: argparse.Namespace, recipe: Any) -> bool:
    """Whether ``--nproc`` asks for several processes (after checking it against the machine)."""
    if args.nproc is None:
        return False
    from traincraft import distributed
    from traincraft.device import resolve_device

    if distributed.launched_world_size() > 1:
        raise distributed.DistributedError(
            "--nproc in a process that torchrun started: leave --nproc out (torchrun started the processes)"
        )
    distributed.check_nproc(args.nproc, resolve_device(recipe.train.device).type)
    return args.nproc > 1


def launch_processes(command: list[str], args: argparse.Namespace) -> int:
    """Run ``traincraft COMMAND`` in ``--nproc`` processes through torch's launcher."""
    from traincraft.distributed import launch

    flags = [flag for flag, on in (("--no-progress", args.no_progress), ("--debug", args.debug),
                                   ("--allow-changes", getattr(args, "allow_changes", False)),
                                   ("--overwrite", getattr(args, "overwrite", False)),
                                   ("--trust-code", getattr(args, "trust_code", False))) if on]
    return launch([*command, *flags], nproc=args.nproc, master_port=args.master_port, debug=args.debug)


def cmd_resume(args: argparse.Namespace) -> int:
    freeze_startup_objects()
    from traincraft.errors import TraincraftError
    from traincraft.recipe import load_recipe

    if args.run_dir is None:
        raise TraincraftError("resume needs the run folder: traincraft resume runs/NAME/TIME "
                              "(or runs/NAME for its newest run)")
    args.run_dir = str(run_folder(args.run_dir))
    recipe_file = Path(args.run_dir) / "recipe.yaml"
    if not recipe_file.is_file():
        raise TraincraftError(f"{args.run_dir} is not a run folder: recipe.yaml is missing")
    for override in args.overrides:
        if "=" not in override:
            raise TraincraftError(f"expected key.path=value, got {override!r}")
    recipe = load_recipe(recipe_file, args.overrides)
    check_recipe_changes(recipe, Path(args.run_dir), args.allow_changes)
    if _say_finished(Path(args.run_dir), recipe):
        return 0
    from traincraft.runfolder import check_code

    check_code(args.run_dir, recipe, trust_code=args.trust_code)
    if launches(args, recipe):
        return launch_processes(["resume", args.run_dir, *args.overrides], args)
    return train(recipe, Path(args.run_dir), args, resume=True)


def _say_finished(run_dir: Path, recipe: Any) -> bool:
    """When the run in ``run_dir`` is finished and whole, and ``recipe``'s limits do not take it
    further: say so in one line (nothing is built, nothing written) and return True."""
    done = _finished(run_dir, recipe)
    if done is None:
        return False
    longer = (f" To train longer: traincraft resume {run_dir} train.max_epochs=N"
              if done.get("stop_reason") in ("max_epochs", "max_steps") else "")
    print(f"{run_dir}: the run is finished ({done['stop_reason']} at epoch {done['epoch']}, "
          f"step {done['step']}); nothing to resume.{longer}", file=sys.stderr)
    return True


def _finished(run_dir: Path, recipe: Any) -> dict[str, Any] | None:
    """What ``checkpoints/finished.json`` says, when it is newer than the newest checkpoint, the
    files a resume would rebuild are all there, and the recipe's limits end the run where it
    ended; otherwise None (a resume has work to do)."""
    from traincraft.runfolder import FINISHED

    marker, last = run_dir / "checkpoints" / FINISHED, run_dir / "checkpoints" / "last.ckpt"
    try:
        if last.is_file() and marker.stat().st_mtime_ns < last.stat().st_mtime_ns:
            return None
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not all((run_dir / name).is_file() for name in ("best.safetensors", "best.json", "metrics.csv")):
        return None  # the resume writes them again
    limits = recipe.train
    if done.get("stop_reason") == "max_epochs" and limits.max_epochs > int(done["epoch"]) and (
            limits.max_steps is None or limits.max_steps > int(done["step"])):
        return None
    if done.get("stop_reason") == "max_steps" and (limits.max_steps is None or limits.max_steps > int(done["step"])):
        return None
    return done


def check_recipe_changes(recipe: Any, run_dir: Path, allow: bool) -> None:
    """Refuse to resume with a recipe that differs from the run's, unless allowed."""
    from traincraft.errors import TraincraftError
    from traincraft.recipe import changed_keys, load_recipe
    from traincraft.runfolder import CHANGES_ALLOWED_ON_RESUME

    saved_file = run_dir / "recipe.yaml"
    if not saved_file.is_file():
        raise TraincraftError(f"cannot resume: {run_dir} is not a run folder (recipe.yaml is missing)")
    changes = changed_keys(load_recipe(saved_file), recipe)
    refused = {k: v for k, v in changes.items() if k not in CHANGES_ALLOWED_ON_RESUME}
    if refused and not allow:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in refused.items())
        raise TraincraftError(
            f"the recipe differs from the run's in {listed}. Resuming would not continue the same "
            "run: add --allow-changes to resume anyway, or start a new run"
        )


def train(recipe: Any, run_dir: Path, args: argparse.Namespace, resume: bool = False) -> int:
    """Train (or resume) a recipe in ``run_dir`` and print the summary."""
    from traincraft.trainer import Trainer

    if resume:
        check_recipe_changes(recipe, run_dir, args.allow_changes)
    started = time.perf_counter()
    trainer = Trainer.from_recipe(recipe, run_dir=run_dir, progress=not args.no_progress, resuming=resume)
    trainer.resume_hint = f"traincraft resume {run_dir}"
    freeze_startup_objects()  # the data, the model and the later imports: set-up that stays
    main = trainer.is_main_process  # several processes: rank 0 speaks for all
    if main:
        print(trainer.data.summary(), file=sys.stderr)
    history = trainer.fit(resume=run_dir if resume else None, overwrite=getattr(args, "overwrite", False),
                          allow_changes=getattr(args, "allow_changes", False))
    if main:
        print_summary(trainer, history, run_dir, time.perf_counter() - started)
    if history.stop_reason in ("interrupted", "terminated"):
        if main:
            print(f"{history.stop_reason}: what was done so far is in {run_dir}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


def print_summary(trainer: Any, history: Any, run_dir: Path, seconds: float) -> None:
    results_file = run_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    lines = [f"stopped: {history.stop_reason} after {trainer.state.epoch} epochs, {trainer.state.step} steps, {seconds:.1f} s"]
    if history.best:
        best = history.best
        lines.append(f"best:    epoch {best['epoch']}, {best['monitor']} {best['value']:.4f}")
    if results.get("test"):
        lines.append("test:    " + "  ".join(f"{k} {v:.4f}" for k, v in results["test"].items()))
    lines.append(f"files:   {run_dir}")
    print("\n".join(lines), file=sys.stderr)


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
    from traincraft.run import build_model, evaluation_kwargs, load_run, run_weights
    from traincraft.trainer import Trainer

    recipe, info = load_run(run_dir, trust_code=trust_code)
    # The run folder alone: neither init_from nor the model's weights: file is read again.
    model = build_model(recipe, info, init_weights=False)
    model.load_state_dict(run_weights(run_dir))
    kwargs = evaluation_kwargs(recipe)
    kwargs["callbacks"] = []
    trainer = Trainer(model, **kwargs, progress=False)
    return trainer, recipe, info


def cmd_evaluate(args: argparse.Namespace) -> int:
    from traincraft.errors import TraincraftError
    from traincraft.run import prepare_data

    args.run_dir = str(run_folder(args.run_dir))
    trainer, recipe, _ = _run_trainer(args.run_dir, args.trust_code)
    data = prepare_data(recipe)
    split = getattr(data, args.split)
    if split is None:
        raise TraincraftError(f"the run's recipe has no {args.split} split (data.split.{args.split} is 0)")
    figures = trainer.evaluate(split)
    print(json.dumps({"split": args.split, **figures}, indent=2))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from traincraft.errors import TraincraftError
    from traincraft.predict_csv import predict_csv

    output = Path(args.output)
    if output.is_dir():
        raise TraincraftError(f"--output {output} is a folder: give a file name, e.g. {output / 'predictions.csv'}")
    if not output.parent.is_dir():
        raise TraincraftError(f"--output {output}: the folder {output.parent} does not exist")
    args.run_dir = str(run_folder(args.run_dir))
    trainer, recipe, info = _run_trainer(args.run_dir, args.trust_code)
    rows = predict_csv(trainer, info, recipe, Path(args.input), output)
    print(f"wrote {rows} predictions to {args.output}", file=sys.stderr)
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    from traincraft.errors import TraincraftError
    from traincraft.recipe import TEMPLATES, template_names

    source = TEMPLATES / f"{args.template}.yaml"
    if not source.is_file():
        from traincraft.errors import did_you_mean

        hint = did_you_mean(args.template, template_names()) or f"; templates: {', '.join(template_names())}"
        raise TraincraftError(f"unknown template {args.template!r}{hint}")
    target = Path(args.output)
    if target.exists() and not args.force:
        raise TraincraftError(f"{target} exists: choose another -o FILE or add --force")
    if target.is_dir() or not target.parent.is_dir():
        raise TraincraftError(f"-o {target}: " + ("is a folder" if target.is_dir() else f"the folder {target.parent} does not exist"))
    target.write_text(source.read_text())
    print(f"wrote {target}; train with: traincraft fit {target}", file=sys.stderr)
    return 0


def _list_losses() -> list[str]:
    from traincraft import losses

    return losses.names()


def _list_optimizers() -> list[str]:
    from traincraft import optim

    return optim.names()


def _list_metrics() -> list[str]:
    from traincraft import metrics

    return metrics.names()


def _list_models() -> list[str]:
    from traincraft import models

    return models.names()


def _list_datasets() -> list[str]:
    from traincraft import datasets

    return datasets.names()


def _list_templates() -> list[str]:
    from traincraft.recipe import template_names

    return template_names()


LISTS: dict[str, Callable[[], list[str]]] = {
    "losses": _list_losses,
    "optimizers": _list_optimizers,
    "metrics": _list_metrics,
    "models": _list_models,
    "datasets": _list_datasets,
    "templates": _list_templates,
}


def cmd_list(args: argparse.Namespace) -> int:
    for kind in [args.what] if args.what else sorted(LISTS):
        print(f"{kind}: {', '.join(LISTS[kind]())}")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from traincraft.recipe import json_schema

    print(json.dumps(json_schema(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
