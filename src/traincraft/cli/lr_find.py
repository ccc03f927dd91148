"""``traincraft lr-find RECIPE``: the learning-rate range test (:func:`traincraft.lr_finder.lr_find`)
on a recipe's model and data, and ``--apply``, which writes the suggestion into the recipe file's
``optimizer.lr`` without touching the rest of it. torch is imported only by the command."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from traincraft.cli.policy import own_parser
from traincraft.errors import TraincraftError
from traincraft.files import atomic_write_text

# --------------------------------------------------------------------------- the command


def lr_find_main(argv: Sequence[str] | None = None) -> int:
    """``traincraft lr-find RECIPE [key=value ...] [--start-lr] [--end-lr] [--steps] [--plot PNG]
    [--apply [--rule valley|steepest]]``: the range test on a recipe's model and data.

    Returns the exit code; a mistake raises a ``TraincraftError`` for the command line's error
    policy to report.
    """
    return _command(_parser().parse_intermixed_args(list(sys.argv[1:] if argv is None else argv)))


def _parser() -> argparse.ArgumentParser:
    parser = own_parser(
        "lr-find", "find a learning rate for a recipe with the range test (nothing is trained for good)",
        "examples:\n  traincraft lr-find recipe.yaml\n  traincraft lr-find recipe.yaml --apply",
        recipe="a recipe file or template name",
    )
    parser.add_argument("--start-lr", type=float, default=1e-7)
    parser.add_argument("--end-lr", type=float, default=10.0)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--plot", metavar="PNG", default="lr_find.png", help="default: lr_find.png")
    parser.add_argument("--no-plot", action="store_true", help="write no plot")
    parser.add_argument("--apply", action="store_true", help="write the suggestion into the recipe file's optimizer.lr")
    parser.add_argument("--rule", choices=["valley", "steepest"], default="valley",
                        help="which suggestion --apply writes (default: valley)")
    return parser


def _command(args: argparse.Namespace) -> int:
    from traincraft.lr_finder import lr_find
    from traincraft.recipe import load_recipe
    from traincraft.trainer import Trainer

    if args.apply and not Path(args.recipe).is_file():
        raise TraincraftError(
            f"--apply writes into a recipe file, and {args.recipe!r} is not one: "
            f"traincraft init {args.recipe} -o recipe.yaml writes one"
        )
    recipe = load_recipe(args.recipe, list(args.overrides))
    trainer = Trainer.from_recipe(recipe, progress=False, checkpoint=False)
    result = lr_find(trainer, start_lr=args.start_lr, end_lr=args.end_lr, steps=args.steps)
    print(f"range test: {len(result.lrs)} steps from {args.start_lr:.1e}, stopped: {result.stop_reason}")
    print(f"steepest descent: {_rate(result.suggestion)}")
    print(f"valley:           {_rate(result.valley)}")
    print(f"recipe's lr:      {recipe.optimizer.lr:.2e}")
    if not args.no_plot:
        result.plot(args.plot)
        print(f"plot: {args.plot}")
    if args.apply:
        chosen = result.valley if args.rule == "valley" else result.suggestion
        if chosen is None:
            raise TraincraftError("the range test took too few steps to suggest a rate: raise --steps or --end-lr")
        path, value = apply_lr(args.recipe, chosen)
        print(f"wrote optimizer.lr: {value} ({args.rule}) into {path}")
    return 0


def _rate(value: float | None) -> str:
    return "none (too few steps)" if value is None else f"{value:.2e}"


# --------------------------------------------------------------------------- the recipe's lr


def set_recipe_lr(text: str, value: str) -> str:
    """The recipe text with ``optimizer.lr`` set to ``value`` (YAML text), the rest untouched.

    Handles a block section (``optimizer:`` then indented keys), a flow mapping on one line
    (``optimizer: {name: adamw, lr: 1e-3}``), a bare name (``optimizer: adamw``) and no section.

    Raises:
        TraincraftError: the section has a form this edit does not handle.
    """
    lines = text.splitlines(keepends=True)
    index = next((i for i, line in enumerate(lines) if re.match(r"optimizer\s*:", line)), None)
    if index is None:
        return text + ("" if not text or text.endswith("\n") else "\n") + f"optimizer: {{lr: {value}}}\n"
    head = re.match(r"(optimizer\s*:[ \t]*)([^#\n]*?)([ \t]*#[^\n]*)?(\r?\n)?$", lines[index])
    if head is None:
        raise TraincraftError("cannot read the recipe's optimizer: line")
    key, rest, comment, newline = head.group(1), head.group(2), head.group(3) or "", head.group(4) or ""
    if rest.startswith("{"):
        if not rest.endswith("}"):
            raise TraincraftError("the recipe's optimizer mapping spans several lines")
        lines[index] = key + _set_in_flow(rest, value) + comment + newline
    elif rest:
        lines[index] = f"{key}{{name: {rest}, lr: {value}}}{comment}{newline}"
    else:
        _set_in_block(lines, index, value)
    return "".join(lines)


def _set_in_flow(mapping: str, value: str) -> str:
    found = re.search(r"(?<![\w.])(lr\s*:\s*)([^,}\s]+)", mapping)
    if found:
        return mapping[: found.start(2)] + value + mapping[found.end(2) :]
    inner = mapping[1:-1].strip()
    return f"{{{inner}, lr: {value}}}" if inner else f"{{lr: {value}}}"


def _set_in_block(lines: list[str], index: int, value: str) -> None:
    body = []
    for i in range(index + 1, len(lines)):
        stripped = lines[i].strip()
        if stripped and not stripped.startswith("#") and not lines[i][0].isspace():
            break  # the next top-level key
        body.append(i)
    keyed = [i for i in body if lines[i].strip() and not lines[i].strip().startswith("#")]
    if not keyed:
        lines.insert(index + 1, f"  lr: {value}\n")
        return
    indent = re.match(r"[ \t]*", lines[keyed[0]]).group(0)  # type: ignore[union-attr]
    for i in keyed:
        found = re.match(rf"({re.escape(indent)}lr\s*:\s*)([^#\s]+)(.*)$", lines[i], flags=re.DOTALL)
        if found:
            lines[i] = found.group(1) + value + found.group(3)
            return
    after = next((i for i in keyed if re.match(rf"{re.escape(indent)}name\s*:", lines[i])), index)
    lines.insert(after + 1, f"{indent}lr: {value}\n")


def apply_lr(path: str | Path, lr: float) -> tuple[Path, str]:
    """Write ``lr`` (two significant digits) into the recipe file's ``optimizer.lr``, keeping
    its comments and layout; the edit is checked by reading the file back. Returns the path and
    the value written."""
    from traincraft.recipe import load_yaml

    path = Path(path)
    text = path.read_text(encoding="utf-8")
    value = f"{lr:.1e}"  # a dot and a signed exponent: a float for YAML 1.1 readers too (PyYAML's)
    new = set_recipe_lr(text, value)
    before, after = load_yaml(text) or {}, load_yaml(new) or {}
    optimizer = before.get("optimizer")
    expected = dict(before)
    expected["optimizer"] = {**({"name": optimizer} if isinstance(optimizer, str) else optimizer or {}),
                             "lr": float(value)}
    if after != expected:
        raise TraincraftError(
            f"could not edit {path} safely: set optimizer.lr: {value} in it by hand"
        )
    atomic_write_text(path, new)
    return path, value
