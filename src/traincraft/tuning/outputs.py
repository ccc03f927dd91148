"""What a study leaves in its folder, and what it prints at the end: ``trials.csv``,
``best.yaml``, the plots and the summary.

Example:
    >>> write_trials_csv(study, "runs/iris-tune/trials.csv", ["optimizer.lr"])
    >>> print(summarize(study, "runs/iris-tune"))
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traincraft.callbacks.monitor import format_value
from traincraft.files import atomic_write_text
from traincraft.recipe_yaml import dump_yaml
from traincraft.tuning.recipes import TRIAL_ATTR
from traincraft.tuning.section import _copy
from traincraft.tuning.space import set_value
from traincraft.tuning.trial import _one_line, _trial_label

if TYPE_CHECKING:
    import optuna

__all__ = ["best_recipe", "summarize", "write_best_yaml", "write_plots", "write_trials_csv"]


PLOTS = ("history.png", "importances.png", "parallel_coordinates.png")
# Parameter importances compare complete trials; with fewer they are noise.
MIN_TRIALS_FOR_IMPORTANCES = 4


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def write_trials_csv(study: optuna.Study, path: str | Path, keys: Sequence[str] = ()) -> Path:
    """``trials.csv``: number, state, value, best_epoch, epochs, seconds, one column per
    searched key (the recipe values), error, run_dir."""
    trials = study.get_trials(deepcopy=False)
    seen = {k: None for t in trials for k in t.user_attrs.get("values", t.params)}
    columns = [*keys, *sorted(k for k in seen if k not in keys)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        [
            "number",
            "state",
            "value",
            "best_epoch",
            "epochs",
            "seconds",
            *columns,
            "error",
            "run_dir",
        ]
    )
    for t in trials:
        attrs = t.user_attrs
        values = attrs.get("values", t.params)
        seconds = t.duration.total_seconds() if t.duration is not None else ""
        writer.writerow(
            [
                t.number,
                _trial_label(t),
                "" if t.value is None else repr(float(t.value)),
                attrs.get("best_epoch", ""),
                attrs.get("epochs", ""),
                f"{seconds:.3f}" if seconds != "" else "",
                *(_cell(values[k]) if k in values else "" for k in columns),
                attrs.get("error", ""),
                attrs.get("run_dir", ""),
            ]
        )
    return atomic_write_text(path, buffer.getvalue())


def _cell(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


def best_recipe(raw: Mapping[str, Any], values: Mapping[str, Any], folder: Path) -> dict[str, Any]:
    """The recipe with ``values`` filled in, as a plain dict to write into ``folder``.

    A relative data file path is rewritten relative to ``folder``, so that the file still
    points at the data from where it is written.
    """
    recipe = _copy(dict(raw))
    base_dir = recipe.pop("_base_dir", None)
    recipe.pop("tune", None)
    for key, value in values.items():
        set_value(recipe, key, value)
    data = recipe.get("data")
    if base_dir and isinstance(data, dict) and isinstance(data.get("dataset"), str):
        source = Path(data["dataset"])
        if not source.is_absolute() and (Path(base_dir) / source).is_file():
            target = Path(base_dir) / source
            try:
                data["dataset"] = os.path.relpath(target, folder.resolve())
            except ValueError:  # another drive
                data["dataset"] = str(target)
    return recipe


def write_best_yaml(study: optuna.Study, raw: Mapping[str, Any], folder: Path) -> Path | None:
    """``best.yaml``: the recipe the best trial trained with (kept in the trial); for a trial
    of a study that kept none, ``raw`` with the trial's values. None when no trial completed."""
    try:
        best = study.best_trial
    except ValueError:
        return None
    own = best.user_attrs.get(TRIAL_ATTR)
    if isinstance(own, dict):
        recipe = best_recipe(own, {}, folder)
    else:
        recipe = best_recipe(raw, best.user_attrs.get("values", best.params), folder)
    metric = study.user_attrs.get("metric", "value")
    header = (
        f"# The best trial of study {study.study_name!r}: trial {best.number}, {metric} "
        f"{format_value(best.value)}.\n"  # type: ignore[arg-type]
        f"# Train it again with: traincraft fit {folder / 'best.yaml'}\n"
    )
    text = header + dump_yaml(recipe)  # read back as written: a name '1e5' stays text
    return atomic_write_text(folder / "best.yaml", text)


def write_plots(study: optuna.Study, folder: Path, keys: Sequence[str]) -> list[Path]:
    """Optimisation history, parameter importances (with at least two searched keys and
    enough complete trials) and parallel coordinates, as PNG files. A plot that cannot be
    drawn is skipped with a line on stderr: the study matters more than its pictures."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return []
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    metric = str(study.user_attrs.get("metric", "value"))
    params = [k for k in keys if any(k in t.params for t in complete)]
    drawings: list[tuple[str, Any]] = [
        ("history.png", lambda: plots.plot_optimization_history(study, target_name=metric))
    ]
    if len(params) >= 2 and len(complete) >= MIN_TRIALS_FOR_IMPORTANCES:
        drawings.append(
            (
                "importances.png",
                lambda: plots.plot_param_importances(study, params=params, target_name=metric),
            )
        )
    if params and len(complete) >= 2:  # one line has no spread to show
        drawings.append(
            (
                "parallel_coordinates.png",
                lambda: plots.plot_parallel_coordinate(study, params=params, target_name=metric),
            )
        )
    written = []
    for name, draw in drawings:
        try:
            with warnings.catch_warnings():
                # Experimental-API notices, and matplotlib's about axes of a single value.
                warnings.simplefilter("ignore")
                axes = draw()
            figure = getattr(axes, "figure", None) or axes.flat[0].figure
            figure.savefig(folder / name, dpi=100, bbox_inches="tight")
            plt.close(figure)
            written.append(folder / name)
        except Exception as err:  # noqa: BLE001
            print(f"tune: could not draw {name}: {_one_line(err)}", file=sys.stderr)
    return written


def summarize(study: optuna.Study, study_dir: str | Path | None = None) -> str:
    """A few lines: trials by state, the best trial and its values, where the files are.

    Example:
        >>> print(summarize(study, "runs/iris-tune"))
        study 'iris': 20 trials (14 complete, 5 pruned, 1 failed)
        best:  trial 7, val_loss 0.0712
               optimizer.lr = 0.003102
        files: runs/iris-tune (best.yaml: traincraft fit runs/iris-tune/best.yaml)
        weights: runs/iris-tune/trial-7/best.safetensors (traincraft evaluate runs/iris-tune/trial-7)
    """
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for trial in trials:
        label = _trial_label(trial)
        counts[label] = counts.get(label, 0) + 1
    order = (
        "complete", "pruned", "failed", "interrupted", "abandoned", "skipped", "running", "waiting"
    )
    states = ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s))
    lines = [
        f"study {study.study_name!r}: {len(trials)} trials" + (f" ({states})" if states else "")
    ]
    metric = study.user_attrs.get("metric", "value")
    best: optuna.trial.FrozenTrial | None
    try:
        best = study.best_trial
    except ValueError:
        best = None
        lines.append("best:  no trial completed")
    else:
        shown = format_value(best.value)  # type: ignore[arg-type]
        lines.append(f"best:  trial {best.number}, {metric} {shown}")
        for key, value in best.user_attrs.get("values", best.params).items():
            lines.append(f"       {key} = {_short(value)}")
    if study_dir is not None:
        folder = Path(study_dir)
        best_file = folder / "best.yaml"
        again = f" (best.yaml: traincraft fit {best_file})" if best_file.is_file() else ""
        lines.append(f"files: {folder}{again}")
        best_run = folder / f"trial-{best.number}" if best is not None else None
        if best_run is not None and (best_run / "best.safetensors").is_file():
            lines.append(f"weights: {best_run / 'best.safetensors'} (traincraft evaluate {best_run})")
    return "\n".join(lines)
