"""The report's judgement of the model, by task, from the run's ``predictions.npz``
(:mod:`traincraft.judging`): classification — the confusion matrix (counts and normalised), the
per-class precision/recall/F1/support table, the most confident mistakes (a grid of them for
images); regression — predicted against actual, residuals against predicted, the distribution of
the errors; forecasting — the test series with its forecasts overlaid.

``figures(run)`` draws the figures (file stem -> Figure); ``section(run, figure_html)`` writes the
page's section, placing each figure with ``figure_html(stem)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from traincraft import judging
from traincraft.report_format import e, grid_table, label, new_figure, percent, significant

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from traincraft.report import RunFiles

#: Figures drawn across the whole page rather than in the two-column grid.
WIDE = ("confusion", "mistakes", "forecast")
#: Rows of the most-confident-mistakes table.
MISTAKE_ROWS = 10


def figures(run: RunFiles) -> dict[str, Figure]:
    """The judging figures of a run (none without predictions)."""
    saved = run.predictions
    if not saved:
        return {}
    task = str(saved["task"])
    if task == "classification":
        names = class_names(run)
        matrix = judging.confusion_matrix(saved["target"], saved["predicted"], len(names))
        drawn = {"confusion": confusion_figure(matrix, names)}
        if "images" in saved and len(saved["images"]):
            drawn["mistakes"] = mistakes_figure(saved, names)
        return drawn
    if task == "forecast":
        return {"forecast": forecast_figure(saved, run.data)}
    return regression_figures(saved, run.data)


def section(run: RunFiles, figure_html: Callable[[str], str]) -> list[str]:
    """The HTML of the judging section (empty without predictions)."""
    if run.predictions_note:
        return ["<h2>How the model does</h2>", f'<p class="muted">{e(run.predictions_note)}</p>']
    saved = run.predictions
    if not saved:
        return []
    split = {"test": "test", "val": "validation"}.get(str(saved["split"]), str(saved["split"]))
    n = len(saved["target"])
    task = str(saved["task"])
    what = "forecast windows" if task == "forecast" else "samples"
    parts = [f"<h2>How the model does on the {e(split)} split</h2>",
             f'<p class="muted">{n:,} {what}, predicted with the final weights (predictions.npz).</p>']
    if task == "classification":
        return parts + _classification(run, figure_html)
    if task == "forecast":
        return parts + _forecast(run, figure_html)
    return parts + _regression(run, figure_html)


# --------------------------------------------------------------------------- classification


def class_names(run: RunFiles) -> list[str]:
    saved = run.predictions or {}
    count = int(run.data.get("num_classes") or 0)
    names = [str(n) for n in run.data.get("class_names") or []]
    largest = int(max(saved["target"].max(initial=-1), saved["predicted"].max(initial=-1))) + 1 if saved else 0
    count = max(count, len(names), largest)
    return names + [str(i) for i in range(len(names), count)]


def _classification(run: RunFiles, figure_html: Callable[[str], str]) -> list[str]:
    saved = run.predictions or {}
    names = class_names(run)
    matrix = judging.confusion_matrix(saved["target"], saved["predicted"], len(names))
    table = judging.per_class(matrix)
    right, total = int(np.trace(matrix)), int(matrix.sum())
    parts = [f"<p>Accuracy <b>{e(percent(right / total if total else float('nan')))}</b>: "
             f"{right:,} right, {total - right:,} wrong.{_weakest(table, names)}</p>"]
    rows = [[names[i], percent(table["precision"][i]), percent(table["recall"][i]), percent(table["f1"][i]),
             f"{int(table['support'][i]):,}"] for i in range(len(names))]
    support = f"{int(table['support'].sum()):,}"
    for name, avg in judging.averages(table).items():
        rows.append([name, percent(avg["precision"]), percent(avg["recall"]), percent(avg["f1"]), support])
    per_class = grid_table(["class", "precision", "recall", "F1", "support"], rows)
    if len(names) > 30:
        per_class = f"<details><summary>{len(names)} classes</summary>{per_class}</details>"
    parts += ["<h3>Per class</h3>", per_class, "<h3>Confusion matrix</h3>", figure_html("confusion")]
    mistakes = judging.confident_mistakes(saved["target"], saved["predicted"], saved["confidence"], MISTAKE_ROWS)
    parts.append("<h3>Most confident mistakes</h3>")
    if not len(mistakes):
        return [*parts, "<p>None: every prediction is right.</p>"]
    if "images" in saved and len(saved["images"]):
        parts.append(figure_html("mistakes"))
    index = saved["index"]
    mistake_rows = [[f"{int(index[r])}", names[int(saved["target"][r])], names[int(saved["predicted"][r])],
                     percent(float(saved["confidence"][r]), 1)] for r in mistakes]
    parts += ['<p class="muted">The wrong predictions the model was surest of; "sample" is the position in '
              "the data source.</p>",
              grid_table(["sample", "true class", "predicted", "confidence"], mistake_rows, numeric_from=3)]
    return parts


def _weakest(table: dict[str, np.ndarray], names: list[str], count: int = 3) -> str:
    f1 = table["f1"]
    order = [i for i in np.argsort(np.where(np.isnan(f1), np.inf, f1), kind="stable") if not np.isnan(f1[i])]
    if len(order) < 2 or f1[order[0]] == 1.0:
        return ""
    weakest = ", ".join(f"{names[i]} ({percent(f1[i], 1)})" for i in order[:count] if f1[i] < 1.0)
    return f" Lowest F1: {e(weakest)}."


def confusion_figure(matrix: np.ndarray, names: list[str]) -> Figure:
    """Counts and the share of each true class (rows sum to 100%) side by side."""
    from matplotlib.ticker import PercentFormatter

    k = len(names)
    longest = max((len(label(n, 12)) for n in names), default=1)
    # Two square panels side by side: the page's width sets their size; long names need room.
    fig = new_figure(10.4, 4.6 + 0.07 * max(0, longest - 2))
    counts_ax, share_ax = fig.subplots(1, 2)
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(totals > 0, matrix / totals, np.nan)
    for ax, values, title, fmt in (
        (counts_ax, matrix.astype(float), "counts", lambda v: f"{int(v)}"),
        (share_ax, share, "share of each true class", lambda v: f"{100 * v:.0f}"),
    ):
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=np.nanmax(values) if np.isfinite(values).any() else 1)
        ax.set_title(title)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
        step = max(1, -(-k // 30))  # at most 30 labels per axis
        ticks = list(range(0, k, step))
        ax.set_xticks(ticks, [label(names[i], 12) for i in ticks], rotation=90 if k > 8 else 0)
        ax.set_yticks(ticks, [label(names[i], 12) for i in ticks])
        if k <= 20:
            top = np.nanmax(values) if np.isfinite(values).any() else 1
            size = 10 if k <= 10 else 8
            for (r, c), v in np.ndenumerate(values):
                if np.isfinite(v) and (v > 0 or r == c):
                    ax.text(c, r, fmt(v), ha="center", va="center", fontsize=size,
                            color="white" if v > 0.55 * top else "black")
        colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
        if ax is share_ax:
            colorbar.ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    return fig


def mistakes_figure(saved: dict[str, np.ndarray], names: list[str], columns: int = 8) -> Figure:
    """The images the model got wrong with the highest confidence, each with its true and its
    predicted class."""
    images, rows = saved["images"], saved["image_rows"]
    count = len(images)
    columns = min(columns, count)
    lines = -(-count // columns)
    fig = new_figure(10.4 * columns / 8 if count < 8 else 10.4, 1.75 * lines + 0.2)
    axes = fig.subplots(lines, columns, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, image, row in zip(axes.flat, images, rows):
        gray = image.shape[2] == 1
        ax.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None, vmin=0, vmax=255,
                  interpolation="nearest")
        true, predicted = names[int(saved["target"][row])], names[int(saved["predicted"][row])]
        ax.set_title(f"true {label(true, 10)}\npredicted {label(predicted, 10)}\n"
                     f"{100 * float(saved['confidence'][row]):.0f}% sure", fontsize=9)
    return fig


# --------------------------------------------------------------------------- regression


def _target_names(data: dict[str, Any], width: int) -> list[str]:
    names = [str(n) for n in data.get("target_names") or []]
    return names if len(names) == width else [f"output {i}" for i in range(width)]


def regression_figures(saved: dict[str, np.ndarray], data: dict[str, Any]) -> dict[str, Figure]:
    """Predicted against actual, residuals against predicted, and the residuals' histogram
    (at most six outputs, one colour each)."""
    target, predicted = saved["target"], saved["predicted"]
    names = _target_names(data, target.shape[1])[:6]
    residual = target - predicted  # actual - predicted
    several = len(names) > 1
    drawn: dict[str, Figure] = {}

    fig = new_figure(5.2, 4.4)
    ax = fig.add_subplot()
    for j, name in enumerate(names):
        ax.scatter(target[:, j], predicted[:, j], s=14, alpha=0.7, label=label(name) if several else None)
    low, high = float(np.nanmin([target[:, :6].min(), predicted[:, :6].min()])), float(
        np.nanmax([target[:, :6].max(), predicted[:, :6].max()]))
    ax.plot([low, high], [low, high], color="0.3", linestyle="--", linewidth=1, label="predicted = actual")
    ax.set_xlabel("actual")
    ax.set_ylabel("predicted")
    ax.set_title("predicted against actual")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, alpha=0.3)
    ax.legend()
    drawn["predicted_vs_actual"] = fig

    fig = new_figure(5.2, 4.4)
    ax = fig.add_subplot()
    for j, name in enumerate(names):
        ax.scatter(predicted[:, j], residual[:, j], s=14, alpha=0.7, label=label(name) if several else None)
    ax.axhline(0, color="0.3", linestyle="--", linewidth=1)
    ax.set_xlabel("predicted")
    ax.set_ylabel("residual (actual − predicted)")
    ax.set_title("residuals against predicted")
    ax.grid(True, alpha=0.3)
    if several:
        ax.legend()
    drawn["residuals"] = fig

    fig = new_figure(5.2, 4.0)
    ax = fig.add_subplot()
    bins = int(min(40, max(10, np.sqrt(len(residual)))))
    for j, name in enumerate(names):
        ax.hist(residual[:, j], bins=bins, alpha=0.6 if several else 0.85, edgecolor="white",
                label=label(name) if several else None)
    ax.axvline(0, color="0.3", linestyle="--", linewidth=1)
    ax.set_xlabel("residual (actual − predicted)")
    ax.set_ylabel("samples")
    ax.set_title("distribution of the errors")
    ax.grid(True, alpha=0.3)
    if several:
        ax.legend()
    drawn["errors"] = fig
    return drawn


def _error_rows(target: np.ndarray, predicted: np.ndarray, names: list[str]) -> list[list[str]]:
    return [[name, significant(s["mae"]), significant(s["rmse"]), significant(s["r2"]), significant(s["bias"]),
             significant(s["median_abs"]), significant(s["max_abs"])]
            for name, s in zip(names, judging.regression_errors(target, predicted))]


ERROR_HEAD = ["MAE", "RMSE", "R²", "mean residual", "median |error|", "largest |error|"]


def _regression(run: RunFiles, figure_html: Callable[[str], str]) -> list[str]:
    saved = run.predictions or {}
    target, predicted = saved["target"], saved["predicted"]
    names = _target_names(run.data, target.shape[1])
    return [grid_table(["output", *ERROR_HEAD], _error_rows(target, predicted, names)),
            '<p class="muted">Residuals are actual − predicted, in the target\'s units.</p>',
            '<div class="plots">', figure_html("predicted_vs_actual"), figure_html("residuals"),
            figure_html("errors"), _largest_errors(saved, names), "</div>"]


def _largest_errors(saved: dict[str, np.ndarray], names: list[str]) -> str:
    """The samples with the largest absolute errors (summed over the outputs)."""
    target, predicted, index = saved["target"], saved["predicted"], saved["index"]
    error = np.abs(target - predicted).sum(axis=1)
    worst = np.lexsort((np.arange(len(error)), -error))[:MISTAKE_ROWS]
    j = 0  # the first output's values, beside the summed error
    rows = [[f"{int(index[r])}", significant(float(target[r, j])), significant(float(predicted[r, j])),
             significant(float(target[r, j] - predicted[r, j]))] for r in worst]
    head = ["sample", f"actual {names[j]}", "predicted", "residual"]
    return ('<div><h3>Largest errors</h3><p class="muted">"sample" is the position in the data source.</p>'
            f"{grid_table(head, rows)}</div>")


# --------------------------------------------------------------------------- forecasting


def _forecast_shape(saved: dict[str, np.ndarray], data: dict[str, Any]) -> tuple[list[str], int]:
    width = saved["target"].shape[1]
    names = [str(n) for n in data.get("target_names") or []] or ["series"]
    series = len(names) if width % len(names) == 0 else 1
    return names[:series], series


def forecast_figure(saved: dict[str, np.ndarray], data: dict[str, Any]) -> Figure:
    """The first predicted series over the judged split, its one-step forecasts and (for a
    longer horizon) the forecasts of the horizon's last step, each drawn at the time it forecasts."""
    names, series = _forecast_shape(saved, data)
    drawn = judging.forecast_series(saved["target"], saved["predicted"], saved["index"], series)
    fig = new_figure(10.4, 4.2)
    ax = fig.add_subplot()
    ax.plot(drawn["time"], drawn["actual"], color="black", linewidth=1.6, marker="." if len(drawn["time"]) < 120 else None,
            label="actual")
    ax.plot(drawn["forecast_time"], drawn["forecasts"][0], color="tab:orange", linewidth=1.6, label="one step ahead")
    horizon = drawn["horizon"]
    if horizon > 1:
        ax.plot(drawn["forecast_time"] + horizon - 1, drawn["forecasts"][-1], color="tab:green", linewidth=1.4,
                linestyle="--", label=f"{horizon} steps ahead")
    ax.set_xlabel("time step (position in the series)")
    ax.set_ylabel(label(names[0], 30))
    ax.set_title(f"{label(names[0], 30)}: the forecasts against what happened")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return fig


def _forecast(run: RunFiles, figure_html: Callable[[str], str]) -> list[str]:
    saved = run.predictions or {}
    names, series = _forecast_shape(saved, run.data)
    horizon = saved["target"].shape[1] // series
    columns = [f"{name}, {h + 1} step{'s' if h else ''} ahead" if series > 1 else f"{h + 1} step{'s' if h else ''} ahead"
               for h in range(horizon) for name in names]
    return [figure_html("forecast"),
            grid_table(["forecast", *ERROR_HEAD], _error_rows(saved["target"], saved["predicted"], columns)),
            '<p class="muted">Residuals are actual − predicted, in the series\' units.</p>']
