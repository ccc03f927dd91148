"""The fenced code blocks of the documentation, each with its page and line, its kind, and the
``docs-test`` comments written before it. Shared by tests/test_docs_blocks.py (every block run)
and tests/test_recipe_schema.py (every recipe block through the JSON schema).

Comments a page may hold for its blocks (invisible where the page is rendered):

- ``<!-- docs-test: skip (reason) -->`` on a line of its own right before a block: the block is not run; the reason
  is required and shown as the skip's reason.
- ``<!-- docs-test: setup`` ... ``-->``: Python code run before the next block, in the page's
  namespace and working folder: the small data and the names (``model``, ``X``, ...) that the
  page's blocks take as given.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
MINIMAL = {"data": {"dataset": "iris"}, "model": "mlp"}

PYTHON = {"python", "py", "python3"}
YAML = {"yaml", "yml"}
SHELL = {"bash", "sh", "shell", "console", "zsh", "shell-session"}

_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_COMMENT = re.compile(r"^ {0,3}<!--\s*docs-test:\s*(?P<what>skip|setup)\b(?P<rest>.*?)-->", re.S | re.M)
_SKIP_REASON = re.compile(r"^\s*\((?P<reason>.+)\)\s*$", re.S)
_NAMED_FILE = re.compile(r"^#\s*(?P<name>[\w.-]+\.ya?ml)\b")


@dataclass
class Block:
    path: str  # relative to the repository: "docs/recipes.md"
    line: int  # the opening fence's line, from 1
    lang: str  # the info string's first word, lower case ("" for none)
    text: str
    skip: str | None = None  # the reason of a docs-test skip
    setup: list[tuple[int, str]] = field(default_factory=list)  # (line, code) run before it
    problem: str | None = None  # a docs-test comment written wrongly

    @property
    def id(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def kind(self) -> str:
        """python, yaml, shell, or output (not run): an untagged block is shell when every
        line is a ``traincraft`` command or a comment, output otherwise."""
        if self.lang in PYTHON:
            return "python"
        if self.lang in YAML:
            return "yaml"
        if self.lang in SHELL:
            return "shell"
        if self.lang == "":
            lines = [line.strip() for line in self.text.splitlines() if line.strip()]
            if lines and all(line.startswith(("traincraft ", "#")) for line in lines) and any(
                    line.startswith("traincraft ") for line in lines):
                return "shell"
        return "output"

    @property
    def file_name(self) -> str | None:
        """A YAML block that starts with ``# NAME.yaml`` is that file of the page's examples."""
        match = _NAMED_FILE.match(self.text)
        return match["name"] if match else None


def doc_pages() -> list[Path]:
    """README.md, docs/*.md and examples/README.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]


def page_blocks(path: Path, text: str | None = None) -> list[Block]:
    """The fenced blocks of one Markdown page (CommonMark fences: ``` or ~~~, indented up to
    three spaces, closed by the same character at least as often), in order."""
    text = path.read_text(encoding="utf-8") if text is None else text
    name = path.relative_to(ROOT).as_posix() if path.is_absolute() and ROOT in path.parents else str(path)
    lines = text.splitlines()
    blocks: list[Block] = []
    pending_setup: list[tuple[int, str]] = []
    pending_skip: str | None = None
    problem: str | None = None
    prose: list[str] = []
    prose_start = 1
    number = 0
    while number < len(lines):
        opening = _FENCE.match(lines[number])
        if not opening or (opening["fence"][0] == "`" and "`" in opening["info"]):
            number += 1
            continue
        # The prose since the last block: its docs-test comments belong to this block.
        prose = lines[prose_start - 1:number]
        pending_setup, pending_skip, problem = _directives(prose, prose_start)
        indent, fence = len(opening["indent"]), opening["fence"]
        closing = re.compile(rf"^ {{0,3}}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        end = number + 1
        while end < len(lines) and not closing.match(lines[end]):
            end += 1
        body = [_dedent(line, indent) for line in lines[number + 1:end]]
        info = opening["info"].strip().split()
        blocks.append(Block(name, number + 1, info[0].lower() if info else "", "\n".join(body) + "\n",
                            skip=pending_skip, setup=pending_setup, problem=problem))
        number = end + 1
        prose_start = number + 1
    return blocks


def _dedent(line: str, indent: int) -> str:
    spaces = len(line) - len(line.lstrip(" "))
    return line[min(spaces, indent):]


def _directives(prose: list[str], first_line: int) -> tuple[list[tuple[int, str]], str | None, str | None]:
    """The setup code and the skip reason that comments in ``prose`` give the next block; a
    problem when a comment is written wrongly (a skip without a reason, or not right before)."""
    text = "\n".join(prose)
    setup: list[tuple[int, str]] = []
    skip = problem = None
    for match in _COMMENT.finditer(text):
        line = first_line + text.count("\n", 0, match.start())
        if match["what"] == "setup":
            code = match["rest"]
            setup.append((line + 1 if code.startswith("\n") else line, code.lstrip("\n")))
            continue
        reason = _SKIP_REASON.match(match["rest"])
        if not reason:
            problem = f"line {line}: write the skip's reason: <!-- docs-test: skip (why) -->"
        elif text[match.end():].strip():
            problem = f"line {line}: a docs-test skip goes right before its block"
        else:
            skip = " ".join(reason["reason"].split())
    return setup, skip, problem


def all_blocks() -> list[Block]:
    return [block for page in doc_pages() if page.is_file() for block in page_blocks(page)]


def recipe_documents(block: Block) -> list[dict[str, Any]]:
    """The recipes a YAML block shows, one per YAML document (``---`` between alternatives): a
    whole one (data and model) as it is, a part of one (a schedule, a loss) on top of
    :data:`MINIMAL`, keys of one section (``unfreeze:`` of ``finetune:``) inside that section.

    Raises:
        ValueError: the block is no recipe (not YAML, or keys that are no recipe's).
    """
    import yaml

    from traincraft.errors import TraincraftError
    from traincraft.recipe import Recipe, section_model
    from traincraft.recipe_yaml import load_yaml

    recipes = []
    for number, document in enumerate(re.split(r"(?m)^---\s*$", block.text)):
        try:
            raw = load_yaml(document)
        except (yaml.YAMLError, TraincraftError) as err:
            raise ValueError(f"YAML document {number + 1} of the block: {_first_line(err)}") from None
        if not isinstance(raw, dict) or not raw:
            raise ValueError("not a recipe: expected a mapping of recipe keys")
        if set(raw) <= set(Recipe.model_fields):
            recipes.append(raw if "data" in raw and "model" in raw else {**MINIMAL, **raw})
            continue
        sections = [name for name in Recipe.model_fields
                    if (model := section_model([name])) is not None and set(raw) <= set(model.model_fields)]
        if len(sections) != 1:
            unknown = sorted(set(raw) - set(Recipe.model_fields))
            raise ValueError(f"not a recipe: {', '.join(map(repr, unknown))} "
                             f"{'is no recipe key' if len(unknown) == 1 else 'are no recipe keys'}"
                             " (mark a block that is no recipe with <!-- docs-test: skip (why) -->)")
        recipes.append({**MINIMAL, sections[0]: raw})
    return recipes


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
