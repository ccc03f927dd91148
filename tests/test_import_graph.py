"""Which modules importing traincraft loads: the import graph, not times.

Each check runs in a fresh interpreter, since this test process has imported everything already.
``import traincraft`` loads no torch at all (its names load on first use), the command line's help
loads neither torch nor any optional package, and the trainer loads torch but none of the packages
that only some features need. The modules of traincraft import one another without a cycle.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

SRC = Path(__file__).parents[1] / "src"

OPTIONAL = ("matplotlib", "optuna", "tensorboard", "mlflow", "sklearn", "statsmodels")
NOT_FOR_TRAINING = (*OPTIONAL, "scipy", "pandas")
TRAINING_NAMES = ("Trainer", "EarlyStopping", "ProgressBar", "CSVLogger", "History", "TrainState")

PROBE = """
import json, sys
loaded = []
for step in json.loads(sys.argv[1]):
    exec(step)
    loaded.append(sorted({name.partition(".")[0] for name in sys.modules}))
print(json.dumps(loaded))
"""

HELP = """
import contextlib, io
from traincraft.cli import main
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main({argv!r})
    except SystemExit as stop:
        assert stop.code == 0, stop.code
"""


def top_level_modules_after(*steps: str) -> list[set[str]]:
    """Run ``steps`` in order in a fresh interpreter; the top-level modules loaded after each."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(steps)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return [set(names) for names in json.loads(result.stdout)]


def test_import_traincraft_loads_no_torch() -> None:
    (loaded,) = top_level_modules_after("import traincraft")
    assert "traincraft" in loaded
    heavy = loaded & {"torch", "numpy", *OPTIONAL}
    assert not heavy, f"import traincraft loaded {sorted(heavy)}"


def subcommands() -> list[str]:
    import argparse

    from traincraft.cli import build_parser

    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return sorted(action.choices)


def test_command_line_help_loads_no_torch_nor_optional_packages() -> None:
    # One interpreter for all, so modules accumulate.
    names = sorted(subcommands())
    commands = [["--help"], ["--version"], *([name, "--help"] for name in names)]
    assert ["fit", "--help"] in commands and ["tune", "--help"] in commands
    after = top_level_modules_after(*(HELP.format(argv=argv) for argv in commands))
    torch_loaded_by = None
    for argv, loaded in zip(commands, after, strict=True):
        if "torch" in loaded and torch_loaded_by is None:
            torch_loaded_by = argv
        heavy = loaded & set(OPTIONAL)
        assert not heavy, f"traincraft {' '.join(argv)} loaded {sorted(heavy)}"
    assert torch_loaded_by is None, torch_loaded_by


def test_the_trainer_loads_torch_and_nothing_only_some_features_need() -> None:
    (loaded,) = top_level_modules_after("import traincraft.trainer")
    assert "torch" in loaded
    extra = loaded & set(NOT_FOR_TRAINING)
    assert not extra, f"import traincraft.trainer loaded {sorted(extra)}"


def test_public_training_names_load_nothing_only_some_features_need() -> None:
    after = top_level_modules_after(*(f"from traincraft import {name}" for name in TRAINING_NAMES))
    for name, loaded in zip(TRAINING_NAMES, after, strict=True):
        extra = loaded & set(NOT_FOR_TRAINING)
        assert not extra, f"from traincraft import {name} loaded {sorted(extra)}"


def test_every_public_name_loads_no_optional_package() -> None:
    # Recipes, losses, metrics, optimizers, schedules, built-in datasets and models: scikit-learn,
    # statsmodels and matplotlib wait until a data set or a plot is asked for.
    (loaded,) = top_level_modules_after(
        "import traincraft\nfor name in traincraft.__all__:\n    getattr(traincraft, name)"
    )
    extra = loaded & set(OPTIONAL)
    assert not extra, f"the public names loaded {sorted(extra)}"


# --------------------------------------------------------------------------- import cycles


def module_files() -> dict[str, Path]:
    """Every module of the traincraft package by its dotted name (a package by its own name)."""
    files = {}
    for path in sorted((SRC / "traincraft").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


def _under_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def import_statements(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement of a module, at module level and inside functions alike (a lazy
    import closes a cycle at run time as well), except those under ``if TYPE_CHECKING:``."""
    pending = [tree]
    while pending:
        node = pending.pop()
        if _under_type_checking(node):
            pending.extend(node.orelse)  # type: ignore[attr-defined]
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        pending.extend(ast.iter_child_nodes(node))


def import_graph() -> tuple[dict[str, dict[str, list[int]]], dict[str, Path]]:
    """``{module: {imported module: [line, ...]}}`` within traincraft, and the modules' files.

    ``from traincraft.x import name`` imports the module ``traincraft.x.name`` when there is one,
    else ``traincraft.x``. Importing ``traincraft.a.b`` imports the package ``traincraft.a`` too,
    except a package that holds the importing module itself: Python ran that one before the
    importing module, so the import adds nothing. The names that ``traincraft/__init__.py`` loads
    on first use are no import statements, so they add no edges.
    """
    files = module_files()
    graph: dict[str, dict[str, list[int]]] = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in import_statements(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the package, up level - 1
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, *([base] if base else [])])
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for target in targets:
                parts = target.split(".")
                if parts[0] != "traincraft":
                    continue
                for depth in range(1, len(parts) + 1):
                    imported = ".".join(parts[:depth])
                    holds_importer = module == imported or module.startswith(imported + ".")
                    if imported not in files or imported == module or (depth < len(parts) and holds_importer):
                        continue
                    graph.setdefault(module, {}).setdefault(imported, []).append(node.lineno)
    return graph, files


def strongly_connected(graph: dict[str, dict[str, list[int]]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of two or more modules that import one another in a cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def shortest_cycle(graph: dict[str, dict[str, list[int]]], group: list[str]) -> list[str]:
    """One shortest cycle through the group's first module, for the message."""
    start, members = group[0], set(group)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph.get(node, {})):
                if target == start:
                    return [*paths[node], start]
                if target in members and target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    return group


def test_no_import_cycle_at_run_time() -> None:
    graph, files = import_graph()
    assert "traincraft.cli" in graph and "traincraft.trainer" in graph  # the graph was read
    groups = strongly_connected(graph)
    lines = []
    for group in groups:
        lines.append(f"cycle among {len(group)} modules: {', '.join(group)}")
        lines.append("  e.g. " + " -> ".join(shortest_cycle(graph, group)))
        for module in group:
            for target, at in sorted(graph[module].items()):
                if target in group:
                    where = ", ".join(f"{files[module].relative_to(SRC)}:{line}" for line in sorted(set(at)))
                    lines.append(f"  {module} -> {target}  ({where})")
    assert not groups, "import cycles at run time:\n" + "\n".join(lines)


def test_the_library_does_not_import_the_command_line() -> None:
    graph, files = import_graph()
    offending = {
        f"{module} -> {target} ({files[module].relative_to(SRC)}:{min(at)})"
        for module, targets in graph.items()
        for target, at in targets.items()
        if (target == "traincraft.cli" or target.startswith("traincraft.cli."))
        and not (module == "traincraft.cli" or module.startswith("traincraft.cli."))
        and module != "traincraft.__main__"
    }
    assert not offending, sorted(offending)
