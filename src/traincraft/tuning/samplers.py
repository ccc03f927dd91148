"""Optuna samplers and pruners by name (``tune.sampler``, ``tune.pruner``).

Optuna is imported when one is built, so that the tune section can check the names of a recipe
without it.

Example:
    >>> build_sampler({"name": "tpe", "n_startup_trials": 5}, dims, seed=0)
    >>> build_pruner("median")
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from traincraft.errors import TraincraftError
from traincraft.registry import Registry, split_spec

if TYPE_CHECKING:
    from traincraft.tuning.section import Dimension

__all__ = ["PRUNERS", "SAMPLERS", "build_pruner", "build_sampler"]


def _tpe(**kwargs: Any) -> Any:
    import optuna

    return optuna.samplers.TPESampler(**kwargs)


def _random(**kwargs: Any) -> Any:
    import optuna

    return optuna.samplers.RandomSampler(**kwargs)


def _grid(search_space: Mapping[str, Sequence[Any]], **kwargs: Any) -> Any:
    import optuna

    class LoopGridSampler(optuna.samplers.GridSampler):
        # Optuna's grid sampler ends the study from after_trial with study.stop(), which only
        # works inside study.optimize; our worker loop counts the grid's points itself.
        def after_trial(self, *args: Any, **kw: Any) -> None:
            return None

    return LoopGridSampler(search_space, **kwargs)


def _cmaes(**kwargs: Any) -> Any:
    import importlib.util

    import optuna

    if importlib.util.find_spec("cmaes") is None:
        raise TraincraftError("sampler 'cmaes' needs the cmaes package: pip install cmaes")
    return optuna.samplers.CmaEsSampler(**kwargs)


def _median(**kwargs: Any) -> Any:
    import optuna

    return optuna.pruners.MedianPruner(**kwargs)


def _hyperband(**kwargs: Any) -> Any:
    import optuna

    return optuna.pruners.HyperbandPruner(**kwargs)


def _no_pruner() -> Any:
    import optuna

    return optuna.pruners.NopPruner()


SAMPLERS = Registry("sampler")
SAMPLERS.add("tpe", _tpe, doc="tree-structured Parzen estimator (Optuna's default)")
SAMPLERS.add("random", _random, doc="independent uniform draws")
SAMPLERS.add("grid", _grid, doc="every combination of finite values, in random order")
SAMPLERS.add("cmaes", _cmaes, aliases=["cma_es", "cma"], doc="CMA-ES (needs the cmaes package)")

PRUNERS = Registry("pruner")
PRUNERS.add("median", _median, doc="stop a trial worse than the median of earlier ones at an epoch")
PRUNERS.add("hyperband", _hyperband, doc="Hyperband over epochs")
PRUNERS.add("none", _no_pruner, aliases=["nop", "off"], doc="never prune")


def build_sampler(
    spec: str | Mapping[str, Any],
    dimensions: Mapping[str, Dimension],
    *,
    seed: int | None = None,
    parallel: bool = False,
) -> Any:
    """An Optuna sampler from a name or ``{"name": ..., **kwargs}``.

    Args:
        spec: ``tpe``, ``random``, ``grid`` or ``cmaes``, or a dict with the class's arguments.
        dimensions: the search space (the grid sampler's values come from it).
        seed: the sampler's seed (a key ``seed`` in ``spec`` wins).
        parallel: several workers share the study: TPE then assumes the running trials'
            points are taken (``constant_liar``) unless ``spec`` says otherwise.

    Example:
        >>> build_sampler({"name": "tpe", "n_startup_trials": 5}, dims, seed=0)
    """
    name, kwargs = split_spec(spec, "sampler")
    name = SAMPLERS.canonical(name)
    kwargs.setdefault("seed", seed)
    if name == "grid":
        kwargs["search_space"] = {key: d.grid() for key, d in dimensions.items()}
    if name == "tpe" and parallel:
        kwargs.setdefault("constant_liar", True)
    with _quiet_warnings():
        try:
            return SAMPLERS.create({"name": name, **kwargs})
        except ValueError as err:
            raise TraincraftError(f"sampler {name!r}: {err}") from err


def build_pruner(spec: str | Mapping[str, Any], *, max_epochs: int | None = None) -> Any:
    """An Optuna pruner from a name or ``{"name": ..., **kwargs}``; steps are epochs.

    Hyperband's ``max_resource`` defaults to the recipe's ``train.max_epochs``.

    Example:
        >>> build_pruner({"name": "median", "n_startup_trials": 3, "n_warmup_steps": 2})
    """
    name, kwargs = split_spec(spec, "pruner")
    name = PRUNERS.canonical(name)
    if name == "hyperband" and max_epochs is not None:
        kwargs.setdefault("max_resource", int(max_epochs))
    try:
        return PRUNERS.create({"name": name, **kwargs})
    except ValueError as err:
        raise TraincraftError(f"pruner {name!r}: {err}") from err


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    # Optuna marks some arguments and every matplotlib plot as experimental, once per call.
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        yield
