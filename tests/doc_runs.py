"""Running the documentation's code blocks (tests/doc_blocks.py finds them), each by its kind:

- python: a page's blocks run in order, in one namespace and one working folder of the page's
  own; a block that only states a call's signature (``f(a, *, b=1) -> R``) is compared with the
  real signature.
- yaml: every recipe through ``traincraft config``, then its loss, schedule, metrics and optimizer
  built as the trainer builds them (what ``config`` does not check). A block that starts with
  ``# NAME.yaml`` is also written to the page's folder as NAME.yaml, for the blocks after it.
- shell: every ``traincraft`` command line; the cheap ones (``init``, ``list``, ``config``,
  ``schema``, ``export``, ``completion``, ``--help``) run for real in the page's folder, the others are parsed as the
  command line parses them, and a command on a recipe file that is there (or a template, or an
  example) has its recipe and overrides resolved with ``traincraft config``.

A failure is one line: ``docs/page.md:LINE: what went wrong``.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
import io
import os
import re
import shlex
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from doc_blocks import ROOT, Block, _first_line, page_blocks, recipe_documents

RUN_FOR_REAL = {"init", "list", "config", "schema", "export", "completion"}
RECIPE_COMMANDS = {"fit", "tune", "lr-find", "schedule", "show-batch"}


class BlockFailed(Exception):
    """A block does not do what its page says; the message is one line."""


@dataclass
class Page:
    """A page's working folder and Python namespace, and the blocks of it run so far."""

    path: Path
    folder: Path
    namespace: dict[str, Any] = field(default_factory=dict)
    done: dict[int, str | None] = field(default_factory=dict)  # line -> error (None: passed)


class Pages:
    """One :class:`Page` per documentation page, made on first use, removed by :meth:`close`."""

    def __init__(self) -> None:
        self.pages: dict[str, Page] = {}
        self.root = Path(tempfile.mkdtemp(prefix="traincraft-docs-"))
        self.registries = _registries()

    def run(self, block: Block) -> None:
        """Run ``block`` after every block before it on its page (so that a block selected on
        its own finds the names and files that those made)."""
        page = self.page(block.path)
        for earlier in page_blocks(ROOT / block.path):
            if earlier.line == block.line:
                break
            if earlier.line not in page.done:
                page.done[earlier.line] = _outcome(page, earlier)
            # A Python block goes on from the names the page's Python blocks before it made.
            if page.done[earlier.line] and earlier.kind == block.kind == "python":
                raise BlockFailed(f"{block.id}: not run: an earlier block of the page failed ({earlier.id})")
        page.done[block.line] = error = _outcome(page, block)
        if error:
            raise BlockFailed(f"{block.id}: {error}")

    def page(self, path: str) -> Page:
        if path not in self.pages:
            folder = self.root / re.sub(r"\W", "_", path)
            folder.mkdir()
            # The examples, as on a checkout: `traincraft fit examples/finetune.yaml` works.
            shutil.copytree(ROOT / "examples", folder / "examples")
            self.pages[path] = Page(ROOT / path, folder)
        return self.pages[path]

    def close(self) -> None:
        """Remove the pages' folders and undo what their blocks did to this process: names
        added to traincraft's registries, modules imported from the folders, open figures."""
        for registry, (entries, aliases) in self.registries.items():
            registry._entries, registry._aliases = entries, aliases
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(str(self.root)):
                del sys.modules[name]
        if "matplotlib.pyplot" in sys.modules:
            sys.modules["matplotlib.pyplot"].close("all")
        shutil.rmtree(self.root, ignore_errors=True)


def _registries() -> dict[Any, tuple[dict[str, Any], dict[str, str]]]:
    """Every registry of traincraft, with copies of its names (a page may add its own)."""
    import importlib

    from traincraft.registry import Registry

    for module in ("losses", "optim", "models", "datasets", "loggers", "metrics", "schedules"):
        importlib.import_module(f"traincraft.{module}")
    found = {obj for name, module in list(sys.modules.items()) if name.startswith("traincraft.")
             for obj in list(vars(module).values()) if isinstance(obj, Registry)}
    return {obj: (dict(obj._entries), dict(obj._aliases)) for obj in found}


def _outcome(page: Page, block: Block) -> str | None:
    """None when the block ran as its page says, else the first line of what went wrong."""
    if block.problem:
        return block.problem
    cwd, path = os.getcwd(), list(sys.path)
    os.chdir(page.folder)
    sys.path.insert(0, str(page.folder))
    try:
        for line, code in block.setup:
            _run_python(page, code, line, block.path)
        if block.skip is None and block.kind in RUNNERS:
            RUNNERS[block.kind](page, block)
        return None
    except BlockFailed as err:
        return str(err)
    except BaseException as err:  # noqa: BLE001 (a block's own failure, reported as one line)
        if isinstance(err, KeyboardInterrupt):
            raise
        return _error_line(err, block.path)
    finally:
        os.chdir(cwd)
        sys.path[:] = path


def _error_line(err: BaseException, page_path: str) -> str:
    """``line N: Type: first line`` with the page's line where the error came from."""
    frames = [frame for frame in traceback.extract_tb(err.__traceback__) if frame.filename == page_path]
    where = f"line {frames[-1].lineno}: " if frames else ""
    return f"{where}{type(err).__name__}: {_first_line(err)}"


# --- python -------------------------------------------------------------------------------------

def run_python(page: Page, block: Block) -> None:
    try:
        _run_python(page, block.text, block.line + 1, block.path)
    except SyntaxError:
        signature = _signature(block.text)
        if signature is None:
            raise
        _check_signature(page, *signature)


def _run_python(page: Page, code: str, first_line: int, filename: str) -> None:
    """Run ``code`` in the page's namespace, its line numbers those of the page, every training
    in it bounded to :data:`MAX_EPOCHS`."""
    compiled = compile("\n" * (first_line - 1) + code, filename, "exec")
    with _quiet(), _bounded_trainings():
        exec(compiled, page.namespace)  # noqa: S102 (the documentation's own code)


MAX_EPOCHS = 2


@contextlib.contextmanager
def _bounded_trainings():
    """Trainers made meanwhile train at most :data:`MAX_EPOCHS` epochs (a page's 100 epochs
    show how to call; the calls are what is tested)."""
    from traincraft.trainer import Trainer

    real = Trainer.__init__

    def bounded(self: Any, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        self.max_epochs = min(self.max_epochs, MAX_EPOCHS)

    Trainer.__init__ = bounded
    try:
        yield
    finally:
        Trainer.__init__ = real


_SIGNATURE = re.compile(r"^(?P<name>[A-Za-z_][\w.]*)\((?P<params>.*)\)\s*(->.*)?$", re.S)


def _signature(text: str) -> tuple[str, ast.arguments] | None:
    """``name(params) -> R`` as (name, parsed parameters); None for anything else."""
    code = "\n".join(line.split("#")[0].rstrip() for line in text.strip().splitlines())
    match = _SIGNATURE.match(code)
    if not match:
        return None
    try:
        tree = ast.parse(f"def f({match['params']}): pass")
    except SyntaxError:
        return None
    return match["name"], tree.body[0].args


def _check_signature(page: Page, name: str, shown: ast.arguments) -> None:
    """The signature the page shows is the function's: the same parameters, in order, of the
    same kind, with the same defaults."""
    try:
        function = eval(name, page.namespace)  # noqa: S307 (a dotted name the page imported)
    except Exception as err:
        raise BlockFailed(f"signature of {name}: {name} is not there ({_first_line(err)})") from None
    real = list(inspect.signature(function).parameters.values())
    positional = shown.posonlyargs + shown.args
    defaults = [None] * (len(positional) - len(shown.defaults)) + list(shown.defaults)
    doc = [(a.arg, "positional", d) for a, d in zip(positional, defaults)]
    if shown.vararg:
        doc.append((shown.vararg.arg, "*", None))
    doc += [(a.arg, "keyword", d) for a, d in zip(shown.kwonlyargs, shown.kw_defaults)]
    if shown.kwarg:
        doc.append((shown.kwarg.arg, "**", None))
    kinds = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.KEYWORD_ONLY: "keyword",
             inspect.Parameter.VAR_KEYWORD: "**"}
    have = [(p.name, kinds.get(p.kind, "positional"), p.default) for p in real]
    if [(n, k) for n, k, _ in doc] != [(n, k) for n, k, _ in have]:
        raise BlockFailed(f"signature of {name}: the page shows ({_params_text(doc)}), "
                          f"the code has ({_params_text(have)})")
    for (param, _, shown_default), (_, _, default) in zip(doc, have):
        if shown_default is None:
            if default is not inspect.Parameter.empty:
                raise BlockFailed(f"signature of {name}: {param} has the default {default!r}, not shown")
            continue
        try:
            value = ast.literal_eval(shown_default)
        except ValueError:
            continue  # an expression (a name): shown, not compared
        if value != default or type(value) is not type(default):
            raise BlockFailed(f"signature of {name}: {param}={ast.unparse(shown_default)} on the page, "
                              f"{param}={default!r} in the code")


def _params_text(params: list[tuple[str, str, Any]]) -> str:
    words: list[str] = []
    for name, kind, _ in params:
        if kind == "keyword" and not any(word.startswith("*") for word in words):
            words.append("*")
        words.append({"*": "*", "**": "**"}.get(kind, "") + name)
    return ", ".join(words)


# --- yaml ---------------------------------------------------------------------------------------

def run_yaml(page: Page, block: Block) -> None:
    try:
        recipes = recipe_documents(block)
    except ValueError as err:
        raise BlockFailed(str(err)) from None
    if block.file_name:
        (page.folder / block.file_name).write_text(block.text)
    from traincraft.recipe_yaml import dump_yaml

    for number, raw in enumerate(recipes):
        path = page.folder / f".block-{block.line}-{number}.yaml"
        path.write_text(dump_yaml(raw))
        try:
            _cli(["config", str(path)])
            _build_parts(path)
        finally:
            path.unlink()


def _build_parts(path: Path) -> None:
    """What the trainer builds from a recipe before any data: loss, schedule, metrics, optimizer."""
    import torch

    from traincraft import losses, metrics, optim, schedules
    from traincraft.errors import TraincraftError
    from traincraft.recipe import load_recipe

    recipe = load_recipe(path)
    try:
        if recipe.loss is not None:
            losses.build(recipe.loss)
        metrics.MetricSet(recipe.metrics)
        o = recipe.optimizer  # param_groups name a model's parameters: not checked without one
        optimizer = optim.build({"name": o.name, **o.kwargs()}, torch.nn.Linear(2, 2), lr=o.lr,
                                weight_decay=o.weight_decay, decay_exclude=o.decay_exclude)
        schedules.build(recipe.schedule, optimizer, steps_per_epoch=10, total_steps=100)
    except TraincraftError as err:
        if "is not installed" in str(err):  # an extra this machine lacks: the recipe is right
            return
        raise BlockFailed(f"error: {_first_line(err)}") from None


# --- shell --------------------------------------------------------------------------------------

def run_shell(page: Page, block: Block) -> None:
    for line, program, words, output in _commands(block.text, block.line):
        try:
            if program == "make":
                _check_make_targets(words)
            else:
                _run_command(page, words, output)
        except BlockFailed as err:
            raise BlockFailed(f"line {line}: {program} {' '.join(words)}: {err}") from None


def _commands(text: str, fence_line: int) -> list[tuple[int, str, list[str], str | None]]:
    """The ``traincraft`` and ``make`` commands of a shell block: (line on the page, the
    program, its arguments, the file that ``>`` sends its output to). Lines of other programs
    are not checked."""
    found: list[tuple[int, str, list[str], str | None]] = []
    lines = text.splitlines()
    number = 0
    while number < len(lines):
        start, line = number, lines[number]
        while line.rstrip().endswith("\\") and number + 1 < len(lines):
            number += 1
            line = line.rstrip()[:-1] + " " + lines[number]
        number += 1
        line = re.sub(r"^\s*\$\s+", "", line)
        # $(traincraft ...) inside a line: a command of its own.
        for inner in re.findall(r"\$\((traincraft\s[^()]*)\)", line):
            found.append((fence_line + start + 1, "traincraft", shlex.split(inner)[1:], None))
        line = re.sub(r"\$\([^()]*\)", "SUBSTITUTED", line)
        try:
            words = shlex.split(line, comments=True)
        except ValueError as err:
            raise BlockFailed(f"line {fence_line + start + 1}: not a shell line ({err})") from None
        for part in _split_on(words, {"&&", "||", ";", "|", "&"}):
            output = None
            if ">" in part:
                at = part.index(">")
                part, output = part[:at], (part[at + 1:] or [None])[0]
            if part[:1] == ["make"]:
                found.append((fence_line + start + 1, "make", part[1:], output))
            for index, word in enumerate(part):
                if word == "traincraft" and (index == 0 or part[index - 1] == "-m"):
                    found.append((fence_line + start + 1, "traincraft", part[index + 1:], output))
                    break
    return found


def _split_on(words: list[str], separators: set[str]) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for word in words:
        if word in separators:
            parts.append([])
        else:
            parts[-1].append(word)
    return [part for part in parts if part]


def _check_make_targets(targets: list[str]) -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in targets:
        if "=" not in target and not re.search(rf"(?m)^{re.escape(target)}\s*:", makefile):
            raise BlockFailed(f"the Makefile has no target {target!r}")


def _run_command(page: Page, args: list[str], output: str | None) -> None:
    from traincraft.cli import PASSTHROUGH

    command = args[0] if args else ""
    if not args or command in RUN_FOR_REAL or "--help" in args or "-h" in args or "--version" in args:
        out = _cli(args)
        if output and not output.startswith(("/", "~")):  # a file of the page's folder
            (page.folder / output).write_text(out)
        return
    if command in PASSTHROUGH:
        _parse_own(command, args[1:])
    else:
        _parse_main(args)
    if command in RECIPE_COMMANDS:
        recipes, overrides = _recipe_and_overrides(args[1:])
        if recipes and all(_is_recipe(name) for name in recipes):
            _cli(["config", *recipes, *overrides])


def _recipe_and_overrides(args: list[str]) -> tuple[list[str], list[str]]:
    """The recipes (the positional arguments before the first override) and the overrides of a
    command line, its options left out (an option's value too: ``--nproc 2``)."""
    recipes: list[str] = []
    overrides: list[str] = []
    skip_next = False
    for arg in args:
        if skip_next:
            skip_next = False
        elif arg.startswith("-"):
            skip_next = "=" not in arg and arg.lstrip("-") in _VALUED_OPTIONS
        elif "=" in arg or arg.startswith(("~", "+")):
            overrides.append(arg)
        elif not overrides:
            recipes.append(arg)
    return recipes, overrides


# Options of the recipe commands that take a value (so that the value is no recipe).
_VALUED_OPTIONS = {"run-dir", "resume", "nproc", "nnodes", "node-rank", "master-addr", "master-port",
                   "trials", "workers", "storage", "study", "study-dir", "steps", "start-lr", "end-lr",
                   "plot", "rule", "steps-per-epoch", "epochs", "csv", "metric", "split", "output",
                   "count", "seed", "rows", "max-restarts", "nproc-per-node"}


def _is_recipe(name: str) -> bool:
    from traincraft.recipe import template_names

    return Path(name).is_file() or name in template_names()


def _cli(args: list[str]) -> str:
    """Run ``traincraft ARGS`` in this process; its standard output, or BlockFailed with the
    error line it printed."""
    from traincraft.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
    if code:
        raise BlockFailed(_last_error(err.getvalue()) or f"exit code {code}")
    return out.getvalue()


def _last_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    return (errors or lines or [""])[-1].strip()


def _parse_main(args: list[str]) -> None:
    """``traincraft ARGS`` parsed as the command line parses it, the command not run."""
    import traincraft.cli as cli

    def parsed_only(command: Any, *, debug: bool) -> int:
        return 0

    real = cli.run_reporting_errors
    cli.run_reporting_errors = parsed_only
    try:
        _cli(args)
    finally:
        cli.run_reporting_errors = real


def _parse_own(command: str, args: list[str]) -> None:
    """A command with a parser of its own: its arguments parsed by that parser."""
    import argparse
    import importlib

    from traincraft.cli import PASSTHROUGH
    from traincraft.cli.spelling import OVERRIDE_COMMANDS, dashed_overrides

    if command in OVERRIDE_COMMANDS:
        args = dashed_overrides(args)
    module = importlib.import_module(PASSTHROUGH[command].partition(":")[0])
    builders = [function for name, function in vars(module).items()
                if name.endswith("parser") and callable(function)
                and inspect.signature(function).return_annotation in ("argparse.ArgumentParser", argparse.ArgumentParser)]
    if len(builders) != 1:
        raise BlockFailed(f"cannot find the parser of traincraft {command} to check the line")
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            builders[0]().parse_intermixed_args(args)
        except SystemExit as exit:
            if exit.code:
                raise BlockFailed(_last_error(err.getvalue())) from None


@contextlib.contextmanager
def _quiet():
    """A block's printing (progress bars, summaries) is not the test's output."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


RUNNERS = {"python": run_python, "yaml": run_yaml, "shell": run_shell}
