"""Plots and the HTML report of a run.

At the end of ``fit``, :class:`RunReport` writes into the run folder::

    steps.csv      the learning rate of every optimizer step (per parameter group), and the momentum
    summary.json   stop reason, epochs, steps, seconds, steps per second (the best epoch: best.json)
    plots/         loss.png, one png per metric, lr.png, grad_norm.png (when recorded)
    report.html    one self-contained page: summary, test metrics, plots, recipe, environment

Everything the report shows comes from the files of the run folder, so ``traincraft report
RUN_DIR`` rebuilds ``plots/`` and ``report.html`` from them alone. matplotlib is imported only when
a figure is drawn.

Example:
    >>> trainer = Trainer(model, loss="mse", run_dir="runs/a", callbacks=[RunReport("runs/a")])
    >>> trainer.fit((X, y), val=(Xv, yv))          # runs/a/report.html, runs/a/plots/*.png
    >>> build_report("runs/a")                      # the same, from the files alone
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import re
import time
from array import array
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traincraft.callbacks.base import Callback
from traincraft.errors import TraincraftError
from traincraft.files import atomic_write, atomic_write_text

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from traincraft.trainer import Trainer

__all__ = [
    "RunFiles",
    "RunReport",
    "build_report",
    "epoch_figure",
    "history_figure",
    "load_run_files",
    "lr_figure",
    "metric_names",
    "render_html",
    "stop_marker",
    "write_plots",
]

# Stop reasons that are the planned end of a run: nothing to mark on the curves.
PLANNED_STOPS = ("max_epochs", "max_steps")


# --------------------------------------------------------------------------- the callback


class RunReport(Callback):
    """Records the LR of every optimizer step; at the end of ``fit`` writes ``steps.csv``,
    ``summary.json``, ``plots/`` and ``report.html`` into ``folder``.

    Per step it keeps only plain floats read from the optimizer's parameter groups (no tensor is
    read). Its records are part of the checkpoint, so a resumed run has the whole LR curve.

    Args:
        folder: the run folder (the one holding ``metrics.csv``).

    Example:
        >>> trainer = Trainer(model, loss="mse", run_dir="runs/a", callbacks=[RunReport("runs/a")])
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.group_names: list[str] = []
        self.steps = array("q")
        self.lrs: list[array] = []  # one column per parameter group
        self.momenta = array("d")
        self.seconds_before = 0.0  # time spent in earlier sessions of a resumed run
        self._pending: tuple[list[float], float | None] | None = None
        self._started = time.perf_counter()
        self._loaded = False

    def on_fit_start(self, trainer: Trainer) -> None:
        if not self._loaded:  # a new run, not the continuation of a saved one
            self.group_names, self.steps, self.lrs = [], array("q"), []
            self.momenta, self.seconds_before = array("d"), 0.0
        self._loaded = False
        self._started = time.perf_counter()

    def on_before_step(self, trainer: Trainer) -> None:
        # The LRs this step uses, as the trainer records them (the schedule moves them on right
        # after the step), and the momentum it cycles.
        self._pending = (list(trainer.state.lrs), _momentum(trainer.optimizer.param_groups[0]))

    def on_step_end(self, trainer: Trainer) -> None:
        if self._pending is None:
            return
        lrs, momentum = self._pending
        self._pending = None
        if not self.lrs:
            groups = trainer.optimizer.param_groups
            self.group_names = [str(g.get("name", i)) for i, g in enumerate(groups)]
            self.lrs = [array("d") for _ in groups]
        self.steps.append(trainer.state.step)
        for column, lr in zip(self.lrs, lrs):
            column.append(lr)
        if momentum is not None:
            self.momenta.append(momentum)

    def on_fit_end(self, trainer: Trainer) -> None:
        if not trainer.is_main_process or trainer.run_complete:
            return
        if not trainer.history.epochs:
            trainer.log("no epoch finished: no report (it is built at the end of a run with epochs)")
            return
        if trainer.state.stop_reason is not None:
            self.write(trainer)
            return
        # An exception ends this run: the report still helps to see why, but must not hide it.
        try:
            self.write(trainer)
        except Exception as err:  # noqa: BLE001
            trainer.log(f"could not write the report: {type(err).__name__}: {err}")

    def write(self, trainer: Trainer) -> Path:
        """Write steps.csv and summary.json, then the plots and report.html."""
        atomic_write_text(self.folder / "steps.csv", self.steps_csv())
        atomic_write_text(self.folder / "summary.json", json.dumps(self.summary(trainer), indent=2))
        return build_report(self.folder)

    def seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self._started

    def summary(self, trainer: Trainer) -> dict[str, Any]:
        state, seconds = trainer.state, self.seconds()
        history = trainer.history
        return {
            "stop_reason": state.stop_reason or "error",
            "epochs": state.epoch,
            "steps": state.step,
            "skipped_steps": state.skipped_steps,
            "seconds": round(seconds, 3),
            "steps_per_second": round(state.step / seconds, 3) if seconds > 0 else None,
            "last_epoch": int(history.epochs[-1]["epoch"]) if history.epochs else None,
            "steps_per_epoch": state.steps_per_epoch,
            "device": str(trainer.device),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def steps_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        momentum = len(self.momenta) == len(self.steps) and len(self.steps) > 0
        writer.writerow(["step", *(f"lr/{n}" for n in self.group_names), *(["momentum"] if momentum else [])])
        for i, step in enumerate(self.steps):
            row: list[Any] = [step, *(repr(c[i]) for c in self.lrs)]
            writer.writerow(row + ([repr(self.momenta[i])] if momentum else []))
        return buffer.getvalue()

    def state_dict(self) -> dict[str, Any]:
        return {
            "group_names": list(self.group_names),
            "steps": list(self.steps),
            "lrs": [list(c) for c in self.lrs],
            "momenta": list(self.momenta),
            "seconds": self.seconds(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.group_names = list(state["group_names"])
        self.steps = array("q", state["steps"])
        self.lrs = [array("d", c) for c in state["lrs"]]
        self.momenta = array("d", state["momenta"])
        self.seconds_before = float(state["seconds"])
        self._loaded = True


def _plain(value: Any) -> float:
    # LRs are Python floats; a tensor LR (capturable optimizers) is read as it is.
    return value if isinstance(value, float) else float(value)


def _momentum(group: dict[str, Any]) -> float | None:
    if "momentum" in group:
        return _plain(group["momentum"])
    betas = group.get("betas")
    return _plain(betas[0]) if betas else None


# --------------------------------------------------------------------------- the run's files


@dataclass
class RunFiles:
    """What a run folder holds, read back (every part optional but the folder)."""

    folder: Path
    columns: dict[str, list[float]] = field(default_factory=dict)  # metrics.csv
    steps: dict[str, list[float]] = field(default_factory=dict)  # steps.csv
    summary: dict[str, Any] = field(default_factory=dict)  # summary.json
    results: dict[str, Any] = field(default_factory=dict)  # results.json
    best: dict[str, Any] | None = None  # summary's best, else results', else best.json
    recipe: str | None = None  # recipe.yaml: the resolved recipe, every default filled in
    given_recipe: str | None = None  # recipe.given.yaml: the keys the recipe set, as written
    env: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    predictions: dict[str, Any] | None = None  # predictions.npz's arrays (traincraft.judging)
    predictions_note: str | None = None  # why predictions.npz could not be read


def load_run_files(folder: str | Path) -> RunFiles:
    """Read a run folder's files for the report.

    Raises:
        TraincraftError: the folder does not exist or has no metrics.csv.
    """
    from traincraft import files

    files.wait()  # the run's own files, when this process wrote them
    folder = Path(folder)
    if not folder.is_dir():
        raise TraincraftError(f"run folder {folder} not found")
    if not (folder / "metrics.csv").is_file():
        raise TraincraftError(
            f"{folder} is not a run folder with results: metrics.csv is missing (is training "
            "finished, or did it stop before the first epoch ended?)"
        )
    run = RunFiles(folder, columns=_read_csv(folder / "metrics.csv"))
    if (folder / "steps.csv").is_file():
        run.steps = _read_csv(folder / "steps.csv")
    run.summary = _read_json(folder / "summary.json")
    run.results = _read_json(folder / "results.json")
    run.env = _read_json(folder / "env.json")
    run.data = _read_json(folder / "data.json")
    # best.json is the one file of the best; older run folders had it in summary/results too.
    # An SWA run's best.json names the average, no epoch of the curves.
    best = _read_json(folder / "best.json")
    run.best = (None if best.get("swa") else best or run.summary.get("best") or run.results.get("best") or None)
    if (folder / "recipe.yaml").is_file():
        run.recipe = (folder / "recipe.yaml").read_text(encoding="utf-8")
    if (folder / "recipe.given.yaml").is_file():
        run.given_recipe = (folder / "recipe.given.yaml").read_text(encoding="utf-8")
    from traincraft.judging import load_predictions

    try:
        run.predictions = load_predictions(folder)
    except TraincraftError as err:  # the rest of the page still helps
        run.predictions_note = str(err).replace(str(folder), folder.name)
    return run


def _read_csv(path: Path) -> dict[str, list[float]]:
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    names = list(rows[0]) if rows else []
    return {n: [_number(row.get(n)) for row in rows] for n in names}


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise TraincraftError(f"{path} is not valid JSON ({err.msg}, line {err.lineno})") from err
    return value if isinstance(value, dict) else {}


# --------------------------------------------------------------------------- figures

NOT_METRICS = {"epoch", "step", "seconds", "lr", "momentum", "grad_norm"}


def metric_names(columns: Sequence[str]) -> list[str]:
    """Figures recorded per epoch besides the loss, in order of first appearance:
    ``train_accuracy``/``val_accuracy`` give ``accuracy``; loss terms give ``loss/<term>``."""
    names: dict[str, None] = {}
    for column in columns:
        for prefix in ("train_", "val_"):
            if column.startswith(prefix) and column[len(prefix) :] != "loss":
                names[column[len(prefix) :]] = None
    return list(names)


def stop_marker(stop_reason: str | None, last_epoch: int | None) -> tuple[int, str] | None:
    """``(epoch, label)`` where training stopped before its planned end, else None."""
    if stop_reason is None or stop_reason in PLANNED_STOPS or last_epoch is None:
        return None
    return last_epoch, f"stopped ({stop_reason})"


def _new_figure(width: float, height: float) -> Figure:
    from traincraft.report_format import new_figure

    return new_figure(width, height)


def wants_log_axis(*curves: Sequence[float]) -> bool:
    """Whether curves (one value per epoch each) read better on a log axis: their values are
    positive and either span more than a decade, or the epochs after each curve's first quarter
    would take less than a quarter of a linear axis and at least half as much again on a log
    one (first epochs far above the rest)."""
    values = [v for curve in curves for v in curve if math.isfinite(v)]
    tails = [v for curve in curves for v in list(curve)[max(1, len(curve) // 4):] if math.isfinite(v)]
    if len(values) < 3 or not tails or min(values) <= 0:
        return False
    low, high = min(values), max(values)
    if high / low >= 10:
        return True
    if high == low:
        return False
    linear = (max(tails) - min(tails)) / (high - low)
    log = math.log(max(tails) / min(tails)) / math.log(high / low)
    return linear < 0.25 and log >= 1.5 * linear


def _log_axis(ax: Axes, values: list[float]) -> None:
    """A log y axis labelled with plain numbers (0.6, 0.8, 1, 2), not powers of ten: every
    minor tick within a decade or so, only the 2s and 5s over a wider range."""
    from matplotlib.ticker import FuncFormatter

    ax.set_yscale("log")
    decades = math.log10(max(values) / min(values))

    def plain(value: float, _: Any = None) -> str:
        text = f"{value:.3g}"
        return f"{value:,.0f}" if "e+" in text else text  # 2,000 rather than 2e+03

    def minor(value: float, _: Any) -> str:
        mantissa = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
        return plain(value) if decades < 1.2 or mantissa in (2, 5) else ""

    ax.yaxis.set_major_formatter(FuncFormatter(plain))
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _epoch_axes(
    ax: Axes,
    columns: dict[str, list[float]],
    names: Sequence[str],
    *,
    title: str,
    best: dict[str, Any] | None,
    stop: tuple[int, str] | None,
) -> None:
    from traincraft.report_format import is_rate

    epochs = columns.get("epoch") or list(range(1, len(next(iter(columns.values()), [])) + 1))
    drawn: list[list[float]] = []
    for name in names:
        if name in columns:
            ax.plot(epochs, columns[name], label=name, linewidth=1.6, marker="." if len(epochs) < 30 else None)
            drawn.append(columns[name])
    if best and best.get("epoch") is not None:
        ax.axvline(best["epoch"], color="tab:green", linestyle=":", linewidth=1.5,
                   label=f"best epoch {best['epoch']}")
        monitor = best.get("monitor")
        if monitor in names and best.get("value") is not None:
            ax.plot([best["epoch"]], [best["value"]], "o", color="tab:green", markersize=7)
    if stop is not None:
        ax.axvline(stop[0], color="tab:red", linestyle="--", linewidth=1.2, label=stop[1])
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
    if any(is_rate(n) for n in names):
        ax.yaxis.set_major_formatter(PercentFormatter(xmax=1))
    elif wants_log_axis(*drawn):
        _log_axis(ax, [v for curve in drawn for v in curve if math.isfinite(v)])
        title += " (log scale)"
    ax.set_xlabel("epoch")
    ax.set_title(title)
    ax.grid(True, which="both" if ax.get_yscale() == "log" else "major", alpha=0.3)
    ax.legend()


def epoch_figure(
    columns: dict[str, list[float]],
    names: Sequence[str],
    *,
    title: str,
    best: dict[str, Any] | None = None,
    stop: tuple[int, str] | None = None,
) -> Figure:
    """One panel of the ``names`` columns against the epoch, best epoch and stop marked.

    Example:
        >>> fig = epoch_figure(history.as_dict(), ["train_loss", "val_loss"], title="loss",
        ...                    best=history.best, stop=(12, "stopped (early_stopping)"))
    """
    fig = _new_figure(5.2, 3.6)
    _epoch_axes(fig.add_subplot(), columns, names, title=title, best=best, stop=stop)
    return fig


def lr_figure(
    steps: dict[str, list[float]], *, steps_per_epoch: int | None = None
) -> Figure | None:
    """The LR of every optimizer step (one line per distinct group), and the momentum below it
    when it changes. ``steps`` holds ``step``, ``lr/<group>`` and perhaps ``momentum`` columns;
    None when it holds no step."""
    x = steps.get("step") or []
    if not x:
        return None
    series: dict[str, list[float]] = {}
    for name, values in steps.items():
        if name.startswith("lr/") and values not in series.values():  # groups with equal LRs: one line
            series[name] = values
    momentum = steps.get("momentum") or []
    show_momentum = len(set(momentum)) > 1
    fig = _new_figure(5.2, 5.0 if show_momentum else 3.6)
    axes = fig.subplots(2 if show_momentum else 1, 1, sharex=True, squeeze=False)[:, 0]
    for name, values in series.items():
        axes[0].plot(x, values, label=name if len(series) > 1 else "lr", linewidth=1.4)
    axes[0].set_ylabel("learning rate")
    axes[0].set_title("learning rate per optimizer step")
    if len(series) > 1:
        axes[0].legend()
    if show_momentum:
        axes[1].plot(x, momentum, color="tab:purple", linewidth=1.4)
        axes[1].set_ylabel("momentum")
    axes[-1].set_xlabel("optimizer step")
    if steps_per_epoch:
        spe = float(steps_per_epoch)
        top = axes[0].secondary_xaxis("top", functions=(lambda s: s / spe, lambda e: e * spe))
        top.set_xlabel("epoch")
    for ax in axes:
        ax.grid(True, alpha=0.3)
    return fig


def run_figures(run: RunFiles) -> dict[str, Figure]:
    """Every figure of a run, by file stem: loss, one per metric, lr, grad_norm, then those that
    judge the model (:mod:`traincraft.report_judging`) when the run saved its predictions."""
    columns, summary = run.columns, run.summary
    last = int(columns["epoch"][-1]) if columns.get("epoch") else None
    stop = stop_marker(summary.get("stop_reason") or run.results.get("stop_reason"), last)
    figures: dict[str, Figure] = {}
    if "train_loss" in columns or "val_loss" in columns:
        figures["loss"] = epoch_figure(columns, ["train_loss", "val_loss"], title="loss",
                                       best=run.best, stop=stop)
    for name in metric_names(list(columns)):
        figures[_file_stem(name)] = epoch_figure(
            columns, [f"train_{name}", f"val_{name}"], title=name, best=run.best, stop=stop
        )
    lr = lr_figure(run.steps, steps_per_epoch=summary.get("steps_per_epoch"))
    if lr is not None:
        figures["lr"] = lr
    if "grad_norm" in columns:
        figures["grad_norm"] = epoch_figure(
            columns, ["grad_norm"], title="gradient norm (epoch mean, before clipping)",
            best=None, stop=stop,
        )
    from traincraft import report_judging

    figures.update(report_judging.figures(run))
    return figures


def history_figure(
    columns: dict[str, list[float]],
    metrics: Sequence[str] | None = None,
    *,
    best: dict[str, Any] | None = None,
    stop_reason: str | None = None,
) -> Figure:
    """Loss, each metric and the gradient norm side by side (what ``History.plot`` draws)."""
    names = metric_names(list(columns)) if metrics is None else list(metrics)
    panels = [("loss", ["train_loss", "val_loss"])]
    panels += [(m, [f"train_{m}", f"val_{m}"]) for m in names]
    if "grad_norm" in columns:
        panels.append(("gradient norm", ["grad_norm"]))
    last = int(columns["epoch"][-1]) if columns.get("epoch") else None
    stop = stop_marker(stop_reason, last)
    fig = _new_figure(4.8 * len(panels), 3.6)
    for ax, (title, pair) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        _epoch_axes(ax, columns, pair, title=title, best=best if title != "gradient norm" else None, stop=stop)
    return fig


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "metric"


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def write_plots(folder: str | Path) -> dict[str, Path]:
    """Draw every figure of a run folder into its ``plots/`` folder; returns ``{stem: path}``."""
    run = load_run_files(folder)
    return {stem: path for stem, (path, _) in _write_pngs(run).items()}


def _write_pngs(run: RunFiles) -> dict[str, tuple[Path, bytes]]:
    pngs: dict[str, tuple[Path, bytes]] = {}
    for stem, fig in run_figures(run).items():
        data = _png(fig)
        path = run.folder / "plots" / f"{stem}.png"
        atomic_write(path, lambda handle, data=data: handle.write(data))
        pngs[stem] = (path, data)
    return pngs


# --------------------------------------------------------------------------- the HTML page


def build_report(folder: str | Path, output: str | Path | None = None) -> Path:
    """Write ``plots/*.png`` and ``report.html`` (or ``output``) from a run folder's files.

    Example:
        >>> build_report("runs/quickstart/20261121-101500")
        PosixPath('runs/quickstart/20261121-101500/report.html')
    """
    run = load_run_files(folder)
    pngs = _write_pngs(run)
    page = render_html(run, {stem: data for stem, (_, data) in pngs.items()})
    return atomic_write_text(Path(output) if output else run.folder / "report.html", page)


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1100px;
padding:24px;color:#1d1d1f;background:#fff;line-height:1.4}
h1{font-size:1.6em;margin:0 0 4px}h2{font-size:1.25em;border-bottom:1px solid #ddd;padding-bottom:4px;
margin-top:36px}h3{font-size:1.05em;margin:20px 0 6px}.muted{color:#666}
table{border-collapse:collapse;margin:8px 0}
td,th{border:1px solid #ddd;padding:4px 10px;text-align:left;font-variant-numeric:tabular-nums}
th{background:#f5f5f7}.num{text-align:right}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 14px;min-width:120px}
.card .v{font-size:1.35em;font-weight:600;font-variant-numeric:tabular-nums}.card .k{color:#555;font-size:.85em}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(500px,1fr));gap:14px;margin:10px 0}
figure{margin:0 0 10px;border:1px solid #eee;padding:6px}figure img{max-width:100%;height:auto;display:block;margin:0 auto}
.plots figure.wide{grid-column:1/-1}
pre{background:#f5f5f7;padding:12px;overflow-x:auto;font-size:.9em}
details summary{cursor:pointer;margin:8px 0;color:#0a58ca}
@media print{.plots{display:block}figure{break-inside:avoid}}
"""


def render_html(run: RunFiles, pngs: dict[str, bytes]) -> str:
    """The report page: inline CSS, images as ``data:`` URIs, no script, no external reference."""
    from traincraft import report_judging
    from traincraft.report_format import figure_text

    name = _recipe_name(run.recipe) or run.folder.name
    shown: set[str] = set()

    def figure_html(stem: str) -> str:
        if stem not in pngs:
            return ""
        shown.add(stem)
        return _figure(stem, pngs[stem], wide=stem in report_judging.WIDE)

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(name)} — traincraft report</title>",
        f"<style>{CSS}</style></head><body>",
        f"<h1>{_e(name)}</h1>",
        f'<p class="muted">{_e(_byline(run))}</p>',
    ]
    test = run.results.get("test")
    if isinstance(test, dict) and test:
        cards = "".join(f'<div class="card"><div class="v">{_e(figure_text(k, v))}</div>'
                        f'<div class="k">test {_e(k)}</div></div>' for k, v in test.items())
        parts.append(f'<div class="cards">{cards}</div>')
    parts += ["<h2>Summary</h2>", _table(_summary_rows(run))]
    parts += report_judging.section(run, figure_html)
    curves = [stem for stem in pngs if stem not in shown and stem not in report_judging.WIDE]
    curves = [stem for stem in curves if stem not in ("predicted_vs_actual", "residuals", "errors")]
    if curves:
        parts += ["<h2>Training curves</h2>", '<div class="plots">', *(figure_html(s) for s in curves), "</div>"]
    if run.columns.get("epoch"):
        last = {k: v[-1] for k, v in run.columns.items()}
        parts += ["<h3>Last epoch</h3>", _table([(k, figure_text(k, v)) for k, v in last.items()])]
    if run.columns:
        parts += ["<details><summary>Every epoch (metrics.csv)</summary>", _column_table(run.columns), "</details>"]
    parts += _recipe_section(run)
    if run.data:
        parts += ["<h2>Data</h2>", *_data_section(run.data)]
    if run.env:
        parts += ["<h2>Environment</h2>", _table([(k, _fmt(v)) for k, v in run.env.items()])]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _figure(stem: str, data: bytes, *, wide: bool = False) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    size = _png_size(data)
    dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
    caption = stem.replace("_", " ")
    opening = '<figure class="wide">' if wide else "<figure>"
    return f'{opening}<img alt="{_e(caption)}"{dims} src="{uri}"></figure>'


def _png_size(data: bytes) -> tuple[int, int] | None:
    # The IHDR chunk: width and height, big-endian, at bytes 16..24.
    if len(data) < 24 or not data.startswith(b"\x89PNG"):
        return None
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _byline(run: RunFiles) -> str:
    parts = [f"run {run.folder.name}"]
    finished = run.summary.get("finished")
    if finished:
        parts.append(f"finished {str(finished)[:16].replace('T', ' ')}")
    if run.env.get("traincraft"):
        parts.append(f"traincraft {run.env['traincraft']}")
    return " · ".join(parts)


def _summary_rows(run: RunFiles) -> list[tuple[str, str]]:
    from traincraft.report_format import figure_text, significant

    s, r = run.summary, run.results
    rows: list[tuple[str, Any]] = [("stop reason", s.get("stop_reason") or r.get("stop_reason"))]
    rows.append(("epochs", s.get("epochs", r.get("epochs", len(run.columns.get("epoch", []))))))
    rows.append(("optimizer steps", s.get("steps", r.get("steps"))))
    if s.get("skipped_steps"):
        rows.append(("skipped steps", s["skipped_steps"]))
    best = run.best
    if best and best.get("epoch") is not None:
        monitor = str(best.get("monitor"))
        rows.append(("best epoch", f"{best['epoch']} ({monitor} {figure_text(monitor, best.get('value'))})"))
    if s.get("seconds") is not None:
        rows.append(("total time", _duration(float(s["seconds"]))))
    if s.get("steps_per_second") is not None:
        rows.append(("steps per second", significant(float(s["steps_per_second"]), 3)))
    rows.append(("device", s.get("device") or run.env.get("device")))
    return [(k, _fmt(v)) for k, v in rows if v is not None]


def _recipe_section(run: RunFiles) -> list[str]:
    """What the recipe's author wrote (``recipe.given.yaml``; for older runs the resolved recipe
    without its empty keys), and the resolved recipe one click away; no path of this machine."""
    if not run.recipe and not run.given_recipe:
        return []

    resolved = _yaml_mapping(run.recipe)
    base = resolved.pop("_base_dir", None)
    base = str(base) if base else None
    if run.given_recipe is not None:
        given, what = _yaml_mapping(run.given_recipe), "the keys the recipe set"
    else:
        given, what = _without_empty(resolved), "the resolved recipe without its empty keys"
    from traincraft.recipe_yaml import dump_yaml
    from traincraft.report_format import without_paths

    def dump(value: dict[str, Any]) -> str:
        return dump_yaml(without_paths(value, base), flow=None)

    parts = ["<h2>Recipe</h2>", f'<p class="muted">{_e(what)}; every other key has its default.</p>',
             f"<pre>{_e(dump(given))}</pre>"]
    if resolved:
        parts += ["<details><summary>The resolved recipe (every default filled in: recipe.yaml)</summary>",
                  f"<pre>{_e(dump(resolved))}</pre></details>"]
    return parts


def _yaml_mapping(text: str | None) -> dict[str, Any]:
    import yaml

    from traincraft.errors import TraincraftError
    from traincraft.recipe_yaml import load_yaml

    try:
        value = load_yaml(text or "")
    except (yaml.YAMLError, TraincraftError):
        return {}
    return value if isinstance(value, dict) else {}


def _without_empty(value: Any) -> Any:
    if isinstance(value, dict):
        kept = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v not in (None, {}, [])}
    return value


def _data_section(data: dict[str, Any]) -> list[str]:
    """A summary of data.json: task, samples per split, input shape and feature count, classes
    (with their counts per split), targets; not every feature's name."""
    from traincraft.report_format import grid_table, significant

    rows: list[tuple[str, str]] = []
    task = data.get("task")
    rows.append(("task", str(task)))
    sizes = data.get("sizes") or {}
    if sizes:
        rows.append(("samples", " · ".join(f"{k} {int(v):,}" for k, v in sizes.items() if v)))
    shape = data.get("input_shape")
    if shape:
        rows.append(("one input", " × ".join(str(d) for d in shape)))
    features = [str(f) for f in data.get("feature_names") or []]
    if features:
        named = ", ".join(features) if len(features) <= 12 else f"{features[0]} … {features[-1]}"
        what = "input series" if task == "forecast" else "features"
        rows.append((what, f"{len(features):,} ({named})"))
    if task == "forecast" and shape:
        targets = max(1, len(data.get("target_names") or [1]))
        rows.append(("lookback", str(shape[0])))
        rows.append(("horizon", str(max(1, int(data.get("output_size") or 1) // targets))))
    classes = [str(c) for c in data.get("class_names") or []]
    if classes:
        named = ", ".join(classes) if len(classes) <= 20 else ", ".join(classes[:10]) + ", …"
        rows.append(("classes", f"{len(classes):,} ({named})"))
    elif data.get("target_names"):
        rows.append(("targets", ", ".join(str(t) for t in data["target_names"])))
    stats = data.get("target_stats")
    if stats and len(stats) == 2 and task != "classification":
        pairs = [f"{significant(m)} ± {significant(s)}" for m, s in zip(stats[0], stats[1])]
        rows.append(("target mean ± std (train)", ", ".join(pairs)))
    normalize = data.get("normalize")
    if isinstance(normalize, dict) and normalize.get("mean"):
        rows.append(("pixel mean / std (train)", f"{_fmt_list(normalize['mean'])} / {_fmt_list(normalize.get('std'))}"))
    parts = [_table(rows)]
    counts = data.get("class_counts")
    if classes and isinstance(counts, dict) and counts:
        splits = list(counts)
        table = grid_table(["class", *splits], [[c, *(f"{counts[s][i]:,}" for s in splits)]
                                                 for i, c in enumerate(classes)])
        parts.append(f"<details{' open' if len(classes) <= 12 else ''}><summary>samples per class and split"
                     f"</summary>{table}</details>")
    return parts


def _fmt_list(values: Any) -> str:
    from traincraft.report_format import significant

    return ", ".join(significant(float(v), 3) for v in values or [])


def _table(rows: Sequence[tuple[str, str]]) -> str:
    from traincraft.report_format import table

    return table(rows)


def _column_table(columns: dict[str, list[float]]) -> str:
    from traincraft.report_format import figure_text

    names = list(columns)
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    rows = "".join(
        "<tr>" + "".join(f"<td>{_e(figure_text(n, columns[n][i]))}</td>" for n in names) + "</tr>"
        for i in range(len(columns[names[0]]))
    )
    return f"<table><tr>{head}</tr>{rows}</table>"


def _fmt(value: Any) -> str:
    from traincraft.report_format import text

    return text(value)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours} h {minutes:02d} min {secs:02.0f} s"
    return f"{minutes} min {secs:04.1f} s" if minutes else f"{secs:.1f} s"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _recipe_name(text: str | None) -> str | None:
    match = re.search(r"^name:\s*(.+?)\s*$", text or "", flags=re.MULTILINE)
    return match.group(1).strip("'\"") if match else None
