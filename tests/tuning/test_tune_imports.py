"""The tuning package's imports: no cycle through it or the recipe, counting the imports inside
functions too (those under ``if TYPE_CHECKING:`` aside), and nothing heavy where the recipe or
the command's parser needs the package."""

import ast
import json
import subprocess
import sys
from pathlib import Path

import traincraft

SRC = Path(traincraft.__file__).parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking(test: ast.expr) -> bool:
    return getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


def _imported(path: Path, name: str) -> set[str]:
    """Every module ``path`` imports, wherever the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child.test):
                for statement in child.orelse:
                    visit(statement)
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parts = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


def _graph() -> dict[str, set[str]]:
    """Module -> the traincraft modules importing it runs (a submodule runs its packages too)."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        edges = set()
        for target in _imported(path, name):
            parts = target.split(".")
            for i in range(1, len(parts) + 1):
                module = ".".join(parts[:i])
                if module in modules and module != name:
                    edges.add(module)
        graph[name] = edges
    return graph


def _cycle_from(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A path of imports from ``start`` back to it, or None."""
    stack, seen = [(start, [start])], set()
    while stack:
        node, path = stack.pop()
        for nxt in sorted(graph[node]):
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_no_import_cycle_goes_through_the_tuning_package_or_the_recipe():
    graph = _graph()
    watched = sorted(
        m for m in graph if m.startswith("traincraft.tuning") or m == "traincraft.recipe"
    )
    assert "traincraft.tuning.section" in watched and "traincraft.tuning.study" in watched
    cycles = [" -> ".join(c) for m in watched if (c := _cycle_from(graph, m))]
    assert not cycles, "\n".join(cycles)


def test_the_recipe_and_the_tune_parser_load_neither_optuna_nor_torch_nor_the_study():
    probe = (
        "import json, sys\n"
        "import traincraft.recipe\n"
        "from traincraft.cli.tune import _parser\n"
        "_parser().format_help()\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded = set(json.loads(result.stdout))
    assert not loaded & {"torch", "optuna", "numpy", "traincraft.tuning.study"}
    tuning = sorted(m for m in loaded if m.startswith("traincraft.tuning."))
    assert tuning == [
        "traincraft.tuning.samplers",
        "traincraft.tuning.section",
    ]
