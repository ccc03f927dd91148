"""``traincraft schedule``: a recipe's learning-rate schedule, without training.

Building the parser (and ``--help``) imports neither torch nor the schedule machinery: they are
imported inside the functions that run the command. :func:`preview_main` parses and runs; a user
mistake raises :class:`~traincraft.errors.TraincraftError`, which the command line's error policy
reports as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traincraft.cli.policy import own_parser
from traincraft.errors import TraincraftError

if TYPE_CHECKING:
    from traincraft.schedules.plan import ScheduleSpec


def preview_main(argv: Sequence[str] | None = None) -> int:
    """``traincraft schedule RECIPE [key=value ...] [--steps-per-epoch N] [--epochs N]
    [--plot lr.png] [--csv lr.csv] [--metric FILE]``: a recipe's LRs, without training.

    Prints the LR at the start, the end of the warm-up, each milestone and the end; writes the
    plot and the CSV (``step,epoch,lr,lr/<group>...``) when asked. Returns the exit code (0).

    Raises:
        TraincraftError: a user mistake; the command line's error policy turns it into one line
            on stderr and exit code 2 (``--debug``: the traceback).
    """
    args = _preview_parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    return _preview_command(args)


def _preview_parser() -> argparse.ArgumentParser:
    parser = own_parser(
        "schedule", "show a recipe's learning-rate schedule without training",
        "example:\n  traincraft schedule recipe.yaml --plot lr.png", recipe="a recipe file or template name",
    )
    parser.add_argument(
        "--steps-per-epoch", type=int, help="default: counted from the recipe's data"
    )
    parser.add_argument("--epochs", type=int, help="default: the recipe's train.max_epochs")
    parser.add_argument("--plot", metavar="PNG", help="write the plot here")
    parser.add_argument("--csv", metavar="CSV", help="write step,epoch,lr,lr/<group> here")
    parser.add_argument(
        "--metric", metavar="FILE", help="plateau: one monitored value per line, per epoch"
    )
    return parser


def _preview_command(args: argparse.Namespace) -> int:
    from traincraft.recipe import load_recipe
    from traincraft.schedules import key_points, plot, preview

    recipe = load_recipe(args.recipe, overrides=list(args.overrides))
    spec = _recipe_schedule(recipe)
    spe = (
        args.steps_per_epoch
        if args.steps_per_epoch is not None
        else _recipe_steps_per_epoch(recipe)
    )
    epochs = args.epochs if args.epochs is not None else int(recipe.train.max_epochs)
    max_steps = getattr(recipe.train, "max_steps", None)
    names_, base_lrs = _recipe_groups(recipe)
    metrics = _read_metric_file(args.metric) if args.metric else None
    rows = preview(spec, spe, epochs, base_lrs=base_lrs, metrics=metrics, max_steps=max_steps)
    points = key_points(
        spec, spe, epochs, base_lr=base_lrs[0], metrics=metrics, max_steps=max_steps
    )
    print(_describe(spec, spe, epochs, len(rows) - 1))
    print(_table(points, spe))
    if args.plot:
        plot(rows, steps_per_epoch=spe, title=_title(spec), path=args.plot, labels=names_)
        print(f"plot: {args.plot}")
    if args.csv:
        _write_csv(args.csv, rows, spe, names_)
        print(f"csv: {args.csv}")
    return 0


def _recipe_schedule(recipe: Any) -> ScheduleSpec:
    spec = getattr(recipe, "schedule", None)
    if spec is not None and hasattr(spec, "model_dump"):  # a pydantic section
        extra = getattr(spec, "model_extra", None) or {}
        spec = {**{k: v for k, v in spec.model_dump().items() if v is not None}, **extra}
    return spec


def _recipe_steps_per_epoch(recipe: Any) -> int:
    from traincraft import durations
    from traincraft.run import prepare_data

    data = prepare_data(recipe)
    from traincraft.datasets import split_size

    return durations.steps_for_samples(split_size(data.train), batch_size=int(recipe.data.batch_size),
                                       accumulate=int(recipe.train.accumulate))


def _recipe_groups(recipe: Any) -> tuple[list[str], list[float]]:
    """Group names and base LRs as the optimizer will have them: rules first, then the rest."""
    lr = float(recipe.optimizer.lr)
    names_, lrs = [], []
    for i, rule in enumerate(getattr(recipe.optimizer, "param_groups", None) or []):
        patterns = rule.get("params", f"rule{i}")
        names_.append(
            str(rule.get("name", patterns if isinstance(patterns, str) else ",".join(patterns)))
        )
        lrs.append(float(rule["lr"]) if "lr" in rule else lr * float(rule.get("lr_mult", 1.0)))
    return [*names_, "default"], [*lrs, lr]


def _read_metric_file(path: str) -> list[float]:
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise TraincraftError(f"--metric {path}: cannot read it ({err.strerror})") from None
    values = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            values.append(float(line))
        except ValueError:
            raise TraincraftError(
                f"--metric {path}, line {number}: {line.strip()!r} is not a number; "
                "write one value per line, one line per epoch"
            ) from None
    return values


def _title(spec: ScheduleSpec) -> str:
    if spec is None:
        return "constant"
    if isinstance(spec, str):
        return spec
    if isinstance(spec, Mapping):
        return str(spec.get("name", "schedule"))
    return getattr(spec, "__name__", "schedule")


def _describe(spec: ScheduleSpec, spe: int, epochs: int, total: int) -> str:
    return (
        f"schedule {_title(spec)}: {epochs} epochs × {spe} steps per epoch = {total} "
        "optimizer steps"
    )


_TABLE_ROWS = 24  # a cyclic schedule of short cycles has thousands of turning points


def _table(points: list[tuple[str, int, float]], spe: int) -> str:
    shown: list[tuple[str, int, float] | None] = list(points)
    if len(points) > _TABLE_ROWS:
        half = _TABLE_ROWS // 2
        shown = [*points[:half], None, *points[-half:]]
    lines = [f"{'point':<20}{'step':>8}{'epoch':>9}  lr"]
    for row in shown:
        if row is None:
            lines.append(f"... {len(points) - _TABLE_ROWS} more")
            continue
        what, s, lr = row
        lines.append(f"{what:<20}{s:>8}{s / spe:>9.2f}  {lr:.4g}")
    return "\n".join(lines)


def _write_csv(path: str, rows: list[list[float]], spe: int, group_names: list[str]) -> None:
    from traincraft.files import atomic_write_text

    header = ["step", "epoch", "lr", *(f"lr/{n}" for n in group_names)]
    lines = [",".join(header)]
    for s, row in enumerate(rows):
        lines.append(",".join([str(s), repr(s / spe), repr(row[0]), *(repr(v) for v in row)]))
    atomic_write_text(path, "\n".join(lines) + "\n")
