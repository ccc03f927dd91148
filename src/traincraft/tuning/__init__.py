"""Hyperparameter search with Optuna (the module's code lives in :mod:`traincraft.tuning.study`)."""

from traincraft.tuning.study import *  # noqa: F403
from traincraft.tuning.study import __all__, _trial_label  # noqa: F401
