"""How the report shows things to people: figures as percentages or significant digits, escaped
HTML tables, paths without the machine's folders, bare matplotlib figures.

Example:
    >>> figure_text("val_accuracy", 0.997214), figure_text("val_loss", 0.5748913)
    ('99.72%', '0.5749')
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from pathlib import PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

from traincraft import formatting

if TYPE_CHECKING:
    from matplotlib.figure import Figure

def is_rate(name: str) -> bool:
    """Whether the figure ``name`` (``val_accuracy``, ``f1``, ``loss/dice``) is a rate: the one
    rule of :func:`traincraft.formatting.is_rate`."""
    return formatting.is_rate(name)


def significant(value: float, digits: int = 4) -> str:
    """``value`` with ``digits`` significant digits (``0.5749``, ``2900``, ``1.014e-05``); a
    page shows NaN as ``—`` and whole numbers whole."""
    if not math.isfinite(value):
        return "—" if math.isnan(value) else ("∞" if value > 0 else "−∞")
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return formatting.significant(value, digits)


def percent(value: float, decimals: int = 2) -> str:
    """A rate as a percentage: ``0.997214`` -> ``99.72%``; NaN -> ``—``."""
    return "—" if not math.isfinite(value) else formatting.percent(value, decimals)


def figure_text(name: str, value: Any) -> str:
    """A reported figure as a person reads it: rates as percentages, anything else with four
    significant digits, whole numbers as they are."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return text(value)
    if isinstance(value, int):
        return str(value)
    return percent(value) if is_rate(name) else significant(value)


def text(value: Any) -> str:
    """Any value of the run's JSON files as short text (floats with four significant digits)."""
    if isinstance(value, float):
        return significant(value)
    if isinstance(value, (list, tuple)):
        return ", ".join(text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {text(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def e(value: Any) -> str:
    """Text escaped for HTML (quotes included)."""
    return html.escape(str(value), quote=True)


def table(rows: Sequence[tuple[Any, Any]]) -> str:
    """A two-column table of (name, text) rows, escaped."""
    body = "".join(f"<tr><th>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def grid_table(head: Sequence[Any], rows: Sequence[Sequence[Any]], *, numeric_from: int = 1) -> str:
    """A table with a header row; columns from ``numeric_from`` on are right-aligned numbers."""
    def cell(i: int, value: Any, tag: str) -> str:
        return f'<{tag} class="num">{e(value)}</{tag}>' if i >= numeric_from else f"<{tag}>{e(value)}</{tag}>"

    header = "".join(cell(i, h, "th") for i, h in enumerate(head))
    body = "".join("<tr>" + "".join(cell(i, v, "td") for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{header}</tr>{body}</table>"


def is_absolute(value: str) -> bool:
    return value.startswith(("/", "~", "\\\\")) or PureWindowsPath(value).drive != ""


def shown_path(value: str, base: str | None = None) -> str:
    """A path as the page shows it: relative to ``base`` (the recipe's folder) when inside it,
    else its last two parts after ``…/``; the machine's folders stay off the page."""
    if not is_absolute(value):
        return value
    path = PurePosixPath(value.replace("\\", "/"))
    if base:
        try:
            return str(path.relative_to(PurePosixPath(base.replace("\\", "/"))))
        except ValueError:
            pass
    return "…/" + "/".join(path.parts[-2:])


def without_paths(value: Any, base: str | None = None) -> Any:
    """``value`` (a recipe's plain data) with every absolute path shortened by :func:`shown_path`."""
    if isinstance(value, dict):
        return {k: without_paths(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v, base) for v in value]
    return shown_path(value, base) if isinstance(value, str) else value


def label(value: Any, width: int = 18) -> str:
    """Text for a matplotlib label: cut to ``width`` characters, ``$`` kept literal (no mathtext)."""
    value = str(value)
    if len(value) > width:
        value = value[: width - 1] + "…"
    return value.replace("$", r"\$")


def new_figure(width: float, height: float) -> Figure:
    """A bare Figure on an Agg canvas: no window, no pyplot state, shown inline by notebooks."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig
