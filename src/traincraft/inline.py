"""Figures that a notebook shows inline by themselves.

A bare ``matplotlib.figure.Figure`` (no pyplot, so no window and no global state) is shown by
Jupyter as text, ``<Figure size 960x360 with 2 Axes>``, until something has switched matplotlib's
inline backend on (``%matplotlib inline``, or importing pyplot). :func:`inline` gives a figure
a ``_repr_png_``, which IPython asks every object for: the figure then shows as a picture in a
fresh kernel, once, and nothing changes anywhere else (a script never calls it).

Example:
    >>> fig = inline(Figure())      # the last expression of a cell: shown as a PNG
"""

from __future__ import annotations

import io
from typing import Any

#: The resolution of the inline picture, in dots per inch.
DPI = 100


def inline(fig: Any) -> Any:
    """``fig`` with a ``_repr_png_`` method (IPython's rich display); returns ``fig``."""

    def _repr_png_() -> bytes:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
        return buffer.getvalue()

    fig._repr_png_ = _repr_png_
    return fig
