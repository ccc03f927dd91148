"""Samplers and pruners by name."""

import pytest

optuna = pytest.importorskip("optuna")

from traincraft.errors import TraincraftError  # noqa: E402
from traincraft.tuning.samplers import build_pruner, build_sampler  # noqa: E402
from traincraft.tuning.section import Dimension  # noqa: E402


def test_samplers_and_pruners_by_name():
    dims = {"x": Dimension.parse("x", {"choice": [1, 2]})}
    assert isinstance(build_sampler("tpe", dims, seed=0), optuna.samplers.TPESampler)
    assert isinstance(build_sampler({"name": "random"}, dims), optuna.samplers.RandomSampler)
    assert isinstance(build_sampler("grid", dims), optuna.samplers.GridSampler)
    assert isinstance(build_pruner("hyperband", max_epochs=9), optuna.pruners.HyperbandPruner)
    assert isinstance(
        build_pruner({"name": "median", "n_startup_trials": 2}), optuna.pruners.MedianPruner
    )
    assert isinstance(build_pruner("none"), optuna.pruners.NopPruner)
    with pytest.raises(TraincraftError, match="pruner 'median'"):
        build_pruner({"name": "median", "n_startup": 2})
    try:
        import cmaes  # noqa: F401
    except ImportError:
        with pytest.raises(TraincraftError, match="pip install cmaes"):
            build_sampler("cmaes", dims)
