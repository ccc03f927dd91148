"""``traincraft fit`` and ``traincraft resume``: train a recipe, or continue a run, in one process
or several, and print the summary. torch is imported only inside the commands."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from traincraft.cli.policy import EXIT_INTERRUPTED, freeze_startup_objects
from traincraft.cli.runs import TRUST_CODE_HELP, check_run_data, run_folder

FIT_EXAMPLES = """examples:
  traincraft fit                                    # the quickstart: digits with a small CNN
  traincraft fit sunspots                           # a built-in template
  traincraft fit recipe.yaml optimizer.lr=3e-4 train.max_epochs=5 metrics=[mae]
  traincraft fit base.yaml small.yaml ~early_stopping +optimizer.momentum=0.9   # files compose, later wins
  traincraft fit recipe.yaml --dry-run              # build data, model and trainer; train nothing
  traincraft fit recipe.yaml --print-config         # the resolved recipe (as traincraft config)
  traincraft fit recipe.yaml --run-dir runs/try1
  traincraft fit recipe.yaml --resume runs/try1     # continue an interrupted run exactly
  traincraft fit recipe.yaml --run-dir runs/job --resume auto   # continue if it has started, else start
  traincraft fit recipe.yaml --nproc 2              # two processes (DDP): one per GPU, or CPU cores
  traincraft fit recipe.yaml --nproc 8 --nnodes 2 --node-rank 0 --master-addr 10.0.0.1 --run-dir /shared/runs/a"""

RESUME_EXAMPLES = """examples:
  traincraft resume runs/quickstart/20261121-101500   # as many processes as the run had
  traincraft resume runs/quickstart/20261121-101500 train.max_epochs=80   # train longer"""


def add_commands(command: Callable[..., argparse.ArgumentParser]) -> None:
    """Add ``fit`` and ``resume`` through ``command(name, handler, help, epilog)``."""
    fit = command("fit", cmd_fit, "train from a recipe (no recipe: the quickstart)", FIT_EXAMPLES)
    fit.add_argument("args", nargs="*", metavar="[RECIPE ...] [key.path=value ...]",
                     help="recipe files or template names (later ones win), then overrides read as YAML: "
                     "key=value sets, +key=value adds, ~key deletes")
    fit.add_argument("--run-dir", help="the run folder (default runs/<name>/<YYYYmmdd-HHMMSS>)")
    fit.add_argument("--no-progress", action="store_true", help="no progress bar: one line per epoch")
    fit.add_argument("--resume", metavar="RUN_DIR|auto",
                     help="continue an interrupted run exactly; auto: continue --run-dir's run if it "
                     "has a checkpoint, else start it (for jobs that a scheduler restarts)")
    fit.add_argument("--allow-changes", action="store_true",
                     help="resume even though the recipe differs from the run's")
    fit.add_argument("--overwrite", action="store_true",
                     help="replace the run in --run-dir (refused otherwise)")
    fit.add_argument("--print-config", action="store_true",
                     help="print the resolved recipe and stop (as traincraft config)")
    fit.add_argument("--dry-run", action="store_true",
                     help="build data, model, loss, optimizer and schedule, print them, and stop: "
                     "nothing trained, no run folder written")
    add_process_options(fit)

    resume = command("resume", cmd_resume, "continue an interrupted run with its own recipe", RESUME_EXAMPLES)
    resume.add_argument("run_dir", metavar="RUN_DIR", nargs="?",
                        help="a run folder, or a folder of runs (runs/NAME: its newest run)")
    resume.add_argument("overrides", nargs="*", metavar="key.path=value",
                        help="e.g. train.max_epochs=50 to train longer")
    resume.add_argument("--allow-changes", action="store_true",
                        help="allow overrides other than train.max_epochs / train.max_steps")
    resume.add_argument("--no-progress", action="store_true", help="no progress bar: one line per epoch")
    add_process_options(resume)
    resume.add_argument("--trust-code", action="store_true", help=TRUST_CODE_HELP)


def add_process_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nproc", type=int, metavar="N",
                        help="train in N local processes (DDP through torchrun): one per GPU, or per CPU core; "
                        "a resume takes the number its checkpoint records")
    parser.add_argument("--master-port", type=int, metavar="PORT",
                        help="the port the processes meet on (default: a free one; 29500 with --nnodes)")
    parser.add_argument("--nnodes", type=int, metavar="M", default=1,
                        help="machines taking part (the same command on each, with its own --node-rank)")
    parser.add_argument("--node-rank", type=int, metavar="R", default=0,
                        help="with --nnodes: this machine's number, 0 to M-1 (0 hosts the rendezvous)")
    parser.add_argument("--master-addr", metavar="HOST",
                        help="with --nnodes: the address of the machine with --node-rank 0")


def split_fit_args(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """``[RECIPE ...] [key=value ...]``: the recipes come first, then the overrides."""
    from traincraft.cli.config import split_recipe_args

    return split_recipe_args(args)


def cmd_fit(args: argparse.Namespace) -> int:
    freeze_startup_objects()
    from traincraft.errors import TraincraftError
    from traincraft.recipe import load_recipe
    from traincraft.run import agreed_run_dir, default_run_dir

    sources, overrides = split_fit_args(args.args)
    if args.print_config:
        from traincraft.cli.config import resolved_text

        print(resolved_text(sources, overrides), end="")
        return 0
    recipe = load_recipe(sources or None, overrides)
    if args.dry_run:
        from traincraft.cli.config import dry_run

        return dry_run(recipe)
    if args.resume == "auto":
        if not args.run_dir:
            raise TraincraftError("--resume auto continues the run in --run-dir: give --run-dir too")
        if launches(args, recipe, resume_from=Path(args.run_dir)):  # the processes decide, rank 0 for all
            return launch_processes(["fit", *args.args, "--run-dir", args.run_dir, "--resume", "auto"], args)
        if checkpoint_found(Path(args.run_dir), recipe):
            args.resume = args.run_dir
        else:  # not started, or killed before its first checkpoint: (re)start it
            args.resume, args.overwrite = None, True
    if args.resume:
        if args.resume != args.run_dir:  # a folder of runs (runs/NAME) means its newest
            args.resume = str(run_folder(args.resume, needs="checkpoint"))
        if args.run_dir and Path(args.run_dir) != Path(args.resume):
            raise TraincraftError("--resume continues in its own run folder: leave out --run-dir")
        check_recipe_changes(recipe, Path(args.resume), args.allow_changes)
        if _say_finished(Path(args.resume), recipe):
            return 0
        if launches(args, recipe, resume_from=Path(args.resume)):
            return launch_processes(["fit", *args.args, "--resume", args.resume], args)
        return train(recipe, Path(args.resume), args, resume=True)
    if args.run_dir and not args.overwrite:  # refused before any data is loaded
        from traincraft.runfolder import claim, holds_run

        if holds_run(Path(args.run_dir)):
            raise TraincraftError(claim(Path(args.run_dir), overwrite=False))
    if launches(args, recipe):
        if args.nnodes > 1 and not args.run_dir:  # each machine's clock would name another folder
            raise TraincraftError("--nnodes needs --run-dir: the same run folder on every machine")
        # Named (and made) here, once, so that every process writes (rank 0) and reads the same folder.
        run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(recipe)
        return launch_processes(["fit", *args.args, "--run-dir", str(run_dir)], args)
    return train(recipe, Path(args.run_dir) if args.run_dir else agreed_run_dir(recipe), args)


def checkpoint_found(run_dir: Path, recipe: Any) -> bool:
    """Whether ``run_dir`` holds a checkpoint (``--resume auto``); under torchrun rank 0's file
    system decides for every process (a machine without the folder then says so in one line
    when it reads the checkpoint, instead of starting another run)."""
    from traincraft import distributed
    from traincraft.checkpoint import checkpoint_candidates

    if distributed.launched_world_size() <= 1:
        return bool(checkpoint_candidates(run_dir))
    from traincraft.device import resolve_device

    world = distributed.join(resolve_device(recipe.train.device), timeout=recipe.train.dist_timeout)
    found = bool(checkpoint_candidates(run_dir)) if world.rank == 0 else None
    return bool(distributed.broadcast_object(found))


def launches(args: argparse.Namespace, recipe: Any, resume_from: Path | None = None) -> bool:
    """Whether to start several processes: ``--nproc`` above 1, ``--nnodes`` above 1, or a
    resume of a run that several processes trained (``--nproc`` then defaults to the number its
    checkpoint records, divided by ``--nnodes``). Checked against the machine first."""
    from traincraft import distributed
    from traincraft.device import resolve_device

    if distributed.launched_world_size() > 1:
        if args.nproc is not None or args.nnodes > 1:
            raise distributed.DistributedError(
                "--nproc in a process that torchrun started: leave --nproc out (torchrun started the processes)"
            )
        return False
    distributed.check_nodes(args.nnodes, args.node_rank, args.master_addr)
    if args.nproc is None and resume_from is not None:
        from traincraft.resuming import recorded_world_size

        recorded = recorded_world_size(resume_from)
        if recorded is not None and recorded > 1:
            args.nproc = distributed.processes_per_node(recorded, args.nnodes)
            print(f"Resuming with {args.nproc} process(es){' per machine' if args.nnodes > 1 else ''}, "
                  f"as the run was trained ({recorded} in all)", file=sys.stderr)
    if args.nproc is None:
        args.nproc = 1
        return args.nnodes > 1
    distributed.check_nproc(args.nproc, resolve_device(recipe.train.device).type)
    return args.nproc > 1 or args.nnodes > 1


def launch_processes(command: list[str], args: argparse.Namespace) -> int:
    """Run ``traincraft COMMAND`` in ``--nproc`` processes (on each of ``--nnodes`` machines)
    through torch's launcher."""
    from traincraft.distributed import launch

    flags = [flag for flag, on in (("--no-progress", args.no_progress), ("--debug", args.debug),
                                   ("--allow-changes", getattr(args, "allow_changes", False)),
                                   ("--overwrite", getattr(args, "overwrite", False)),
                                   ("--trust-code", getattr(args, "trust_code", False))) if on]
    return launch([*command, *flags], nproc=args.nproc, master_port=args.master_port, debug=args.debug,
                  nnodes=args.nnodes, node_rank=args.node_rank, master_addr=args.master_addr)


def cmd_resume(args: argparse.Namespace) -> int:
    freeze_startup_objects()
    from traincraft.errors import TraincraftError
    from traincraft.recipe import load_recipe

    if args.run_dir is None:
        raise TraincraftError("resume needs the run folder: traincraft resume runs/NAME/TIME "
                              "(or runs/NAME for its newest run)")
    args.run_dir = str(run_folder(args.run_dir, needs="checkpoint"))
    recipe_file = Path(args.run_dir) / "recipe.yaml"
    if not recipe_file.is_file():
        raise TraincraftError(f"{args.run_dir} holds a run without recipe.yaml (trained in Python?): resume it "
                              f"in Python, trainer.fit(..., resume={args.run_dir!r})")
    for override in args.overrides:
        if "=" not in override and not override.startswith("~"):
            raise TraincraftError(f"expected key.path=value, got {override!r}")
    recipe = load_recipe(recipe_file, args.overrides)
    check_recipe_changes(recipe, Path(args.run_dir), args.allow_changes)
    if _say_finished(Path(args.run_dir), recipe):
        return 0
    check_run_data(args.run_dir)
    from traincraft.runfolder import check_code

    check_code(args.run_dir, recipe, trust_code=args.trust_code)
    if launches(args, recipe, resume_from=Path(args.run_dir)):
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
    # --no-progress: no bar, but still a line per epoch (a CI log keeps its figures).
    progress = "lines" if args.no_progress else True
    trainer = Trainer.from_recipe(recipe, run_dir=run_dir, progress=progress, resuming=resume)
    trainer.resume_hint = f"traincraft resume {run_dir}"
    freeze_startup_objects()  # the data, the model and the later imports: set-up that stays
    main = trainer.is_main_process  # several processes: rank 0 speaks for all
    if main:
        trainer.log(trainer.data.summary())  # through the progress output: wrapped on a terminal
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
    """The lines said when ``fit`` ends: why it stopped, the best epoch, the test figures, the
    report to open and the run folder."""
    from traincraft.callbacks.epoch_line import wrap
    from traincraft.formatting import format_figure

    results_file = run_dir / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    lines = [f"stopped: {history.stop_reason} after {trainer.state.epoch} epochs, {trainer.state.step} steps, {seconds:.1f} s"]
    if history.best:
        best = history.best
        averaged = any(type(c).__name__ == "SWA" for c in trainer.callbacks)  # SWA's average goes first
        held = " (the model holds its weights)" if trainer.keeps_best and not averaged else ""
        lines.append(f"best:    epoch {best['epoch']}, {best['monitor']} "
                     f"{format_figure(best['monitor'], best['value'])}{held}")
    test = {k: v for k, v in (results.get("test") or {}).items() if isinstance(v, (int, float))}  # scalars
    if test:
        width = shutil.get_terminal_size().columns if sys.stderr.isatty() else None
        lines.extend(wrap(["test:  ", *(f"{k} {format_figure(k, v)}" for k, v in test.items())], width))
    report = run_dir / "report.html"
    if report.is_file():
        lines.append(f"report:  {report}")
    lines.append(f"files:   {run_dir}")
    print("\n".join(lines), file=sys.stderr)
