"""Hyperparameter search with Optuna: the recipe's ``tune:`` section, ``traincraft tune``,
``tc.tune``.

Every trial is an ordinary run of the recipe with the sampled values filled in, in its own run
folder under the study's folder. The monitored figure is reported to Optuna after every epoch so
that a pruner can stop bad trials early; the trial's value is the best figure of its epochs (the
one early stopping restores). The study lives in a storage that several worker processes share,
so running again continues it up to the requested number of trials.

Study folder (``runs/<recipe name>-tune/`` unless given)::

    study.journal              Optuna's journal file: the study itself (unless --storage)
    trial-<n>/                 each trial's run folder (recipe.yaml, metrics.csv, ...; the best
                               trial's also best.safetensors)
    trials.csv                 one row per trial: state, value, sampled values, error
    best.yaml                  the recipe the best trial trained with: ``traincraft fit best.yaml``
    history.png, importances.png, parallel_coordinates.png

The package::

    section.py    the recipe's tune: section (TuneSection), the searched keys (Dimension), the
                  time limit; imports nothing of traincraft.recipe, which imports it
    samplers.py   samplers and pruners by name
    space.py      the space against the recipe: reading the section, filling in values, checks
    trial.py      one trial: fit it, report its figure each epoch, tell the study how it ended
    recipes.py    the recipes a study keeps: its base recipe (checked when it is continued) and
                  each trial's own (best.yaml is written from the best trial's)
    storages.py   the study's storage: a journal file, or a database URL with heartbeats
    lost.py       workers that went away: their running trials failed and queued again
    study.py      the study, its workers, Ctrl-C, and tune()
    outputs.py    trials.csv, best.yaml, the plots, the summary

``traincraft tune`` itself (its parser and handler) is in :mod:`traincraft.cli.tune`.

Names are loaded on first use, so that importing ``traincraft.tuning.section`` (as the recipe
does) loads neither Optuna nor torch nor the recipe.

Example:
    >>> study = tc.tune("recipe.yaml", trials=40)
    >>> study.best_value, study.best_params
    (0.0712, {'optimizer.lr': 0.0031, 'model.dropout': 0.12})
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "Dimension": "section",
    "TuneSection": "section",
    "TuneSectionError": "section",
    "parse_time_limit": "section",
    "PRUNERS": "samplers",
    "SAMPLERS": "samplers",
    "build_pruner": "samplers",
    "build_sampler": "samplers",
    "check_key": "space",
    "check_space": "space",
    "read_section": "space",
    "recipe_with": "space",
    "set_value": "space",
    "MetricNotReported": "trial",
    "check_base": "recipes",
    "best_recipe": "outputs",
    "summarize": "outputs",
    "write_best_yaml": "outputs",
    "write_plots": "outputs",
    "write_trials_csv": "outputs",
    "tune": "study",
}

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "Dimension",
    "MetricNotReported",
    "TuneSection",
    "TuneSectionError",
    "best_recipe",
    "build_pruner",
    "check_base",
    "build_sampler",
    "check_key",
    "check_space",
    "parse_time_limit",
    "read_section",
    "recipe_with",
    "set_value",
    "summarize",
    "tune",
    "write_best_yaml",
    "write_plots",
    "write_trials_csv",
]

if TYPE_CHECKING:
    from traincraft.tuning.outputs import (
        best_recipe,
        summarize,
        write_best_yaml,
        write_plots,
        write_trials_csv,
    )
    from traincraft.tuning.recipes import check_base
    from traincraft.tuning.samplers import PRUNERS, SAMPLERS, build_pruner, build_sampler
    from traincraft.tuning.section import Dimension, TuneSection, TuneSectionError, parse_time_limit
    from traincraft.tuning.space import check_key, check_space, read_section, recipe_with, set_value
    from traincraft.tuning.study import tune
    from traincraft.tuning.trial import MetricNotReported


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'traincraft.tuning' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"traincraft.tuning.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
