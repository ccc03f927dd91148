"""Errors a user can meet, each carrying one line that says what was wrong, where, and the fix.

The command line prints ``str(error)`` of a :class:`TraincraftError` and exits 2; anything else is
a bug in traincraft or in the user's model and keeps its traceback.
"""

from __future__ import annotations

import difflib
import numbers
import os
import re
from collections.abc import Iterable
from typing import Any


class TraincraftError(Exception):
    """A mistake in what the user gave us (data, recipe, arguments): shown as one line."""


class UnknownNameError(TraincraftError, ValueError):
    """A name that is not in a registry (loss, optimizer, metric, model, dataset, ...)."""


class DataError(TraincraftError, ValueError):
    """Data of a type we do not accept, empty data, missing columns, non-numeric values."""


class ShapeError(TraincraftError, ValueError):
    """A prediction and a target whose shapes do not fit together."""


class ModelError(TraincraftError, RuntimeError):
    """The user's model raised inside its forward pass; the message adds the batch's shapes."""


def closest(name: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The ``n`` choices most like ``name``, best first.

    difflib's ``get_close_matches`` breaks ties in reverse alphabetical order, so "adamm" would
    get 'radam' and 'nadam' before 'adamw'; a longer common prefix is the better tie-break.
    """
    key = str(name).strip().lower().replace("-", "_")
    scored = []
    for choice in set(choices):
        ratio = difflib.SequenceMatcher(None, key, choice.lower()).ratio()
        if ratio >= 0.5:
            prefix = len(os.path.commonprefix([key, choice.lower()]))
            scored.append((-ratio, -prefix, choice))
    return [choice for _, _, choice in sorted(scored)[:n]]


def did_you_mean(name: str, choices: Iterable[str], n: int = 3) -> str:
    """Return ``" (did you mean 'a', 'b'?)"`` for the closest choices, or ``""`` when none is close."""
    close = closest(name, choices, n)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> UnknownNameError:
    """The error for an unknown ``name`` of ``kind``, naming the closest valid names."""
    choices = sorted(choices)
    hint = did_you_mean(name, choices)
    if not hint:
        hint = f"; valid names: {', '.join(choices)}"
    return UnknownNameError(f"unknown {kind} {name!r}{hint}")


def expect_number(value: Any, what: str) -> float:
    """``value`` as a float, or an error naming ``what``.

    Text is not a number, even text that reads as one (``"1e-3"`` in quotes): say so instead of
    failing deep inside a formula.
    """
    if not is_number(value):
        raise TraincraftError(f"{what} must be a number, got {value!r} ({type(value).__name__}){number_hint(value)}")
    return float(value)


def is_number(value: Any) -> bool:
    """A real number, not a bool (YAML's ``true`` is no 1)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def number_hint(value: Any) -> str:
    """For a value that is not a number: how to write it as one, when it is text that reads as
    a number (``"1e-3"`` in quotes), else nothing."""
    if isinstance(value, str):
        try:
            float(value.strip())
        except ValueError:
            return ""
        return f"; a number in quotes is text: write {value.strip()} without quotes"
    return ""


def expect_choice(what: str, value: Any, choices: tuple[str, ...]) -> str:
    """``value`` (lower-cased) if it is one of ``choices``, else an error with did-you-mean."""
    key = str(value).strip().lower()
    if key not in choices:
        options = ", ".join(repr(c) for c in choices)
        raise TraincraftError(f"{what} must be one of {options}, got {value!r}{did_you_mean(key, choices)}")
    return key


def first_line(err: BaseException) -> str:
    """An error's first non-empty line, for a one-line message: without terminal colour codes
    (torch adds some), cut to 200 characters; the error's type when it says nothing."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    line = next((part.strip() for part in text.splitlines() if part.strip()), type(err).__name__)
    return line if len(line) <= 200 else line[:197] + "..."


def check_whole(**values: Any) -> None:
    """Counts are whole numbers: ``max_epochs=1.5`` is refused, not trained as 1."""
    for name, value in values.items():
        if value is None:
            continue
        whole = isinstance(value, numbers.Integral) or (isinstance(value, float) and value.is_integer())
        if isinstance(value, bool) or not whole:
            raise TraincraftError(f"{name} must be a whole number, got {value!r}")


def check_positive(**values: float) -> None:
    """Each value is > 0, or an error naming it."""
    for name, value in values.items():
        if not value > 0:
            raise TraincraftError(f"{name} must be > 0, got {value}")


def accepted_keys(owner: Any) -> list[str]:
    """The keyword arguments a class or function takes (``self`` and positional-only left out)."""
    import inspect

    return [name for name, p in inspect.signature(owner).parameters.items()
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def check_keys(what: str, given: Iterable[str], accepted: Iterable[str]) -> None:
    """Every key is accepted, or one line naming the closest accepted ones."""
    accepted = list(accepted)
    for key in given:
        if key not in accepted:
            hint = did_you_mean(key, accepted) or f"; accepted: {', '.join(accepted)}"
            raise TraincraftError(f"{what}: unknown key {key!r}{hint}")
