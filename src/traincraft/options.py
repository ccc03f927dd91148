"""The Trainer's arguments, grouped by the part that owns them.

Common knobs are flat arguments of :class:`~traincraft.trainer.Trainer`; the rest are dicts of
their owner's keyword arguments, and the owner's signature holds the defaults (nothing here or
in the Trainer repeats them)::

    optimizer  {name, weight_decay, decay_exclude, param_groups, **the class's}   optim.build
    data       {val_split, shuffle, target_key, augment, normalize, num_workers,  DataOptions
                pin_memory, persistent_workers, sharded}
    step       {accumulate, precision, clip_grad_norm, clip_norm_type,            step.Stepper
                clip_grad_value}
               {compile, deterministic, gc_every}                                 Runtime
    nonfinite  "raise" | "skip" | "rollback" | {policy, every, lr_factor,         step.NonFinitePolicy
                max_rollbacks}
    penalty    {l1, l2, exclude}                                                  penalties.Penalty
    processes  {sync_batchnorm, timeout}                                          Processes
    finetune   {init_from, freeze, unfreeze, gradual, lr_mult, layer_decay, ...}  finetune.Finetuning
    ema, swa, checkpoint                                                          their callbacks

The flat names of earlier releases (``accumulate=2``, ``weight_decay=0.01``, ``on_nonfinite=``,
...) still work for this release, each with a ``DeprecationWarning`` naming its new place.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from traincraft.errors import (
    TraincraftError,
    accepted_keys,
    check_keys,
    check_positive,
    check_whole,
    did_you_mean,
)

#: Old flat ``Trainer`` argument -> (its group, its key there).
DEPRECATED: dict[str, tuple[str, str]] = {
    "weight_decay": ("optimizer", "weight_decay"),
    "decay_exclude": ("optimizer", "decay_exclude"),
    "param_groups": ("optimizer", "param_groups"),
    "val_split": ("data", "val_split"),
    "shuffle": ("data", "shuffle"),
    "accumulate": ("step", "accumulate"),
    "precision": ("step", "precision"),
    "clip_grad_norm": ("step", "clip_grad_norm"),
    "clip_norm_type": ("step", "clip_norm_type"),
    "clip_grad_value": ("step", "clip_grad_value"),
    "compile": ("step", "compile"),
    "deterministic": ("step", "deterministic"),
    "gc_every": ("step", "gc_every"),
    "on_nonfinite": ("nonfinite", "policy"),
    "rollback_every": ("nonfinite", "every"),
    "rollback_lr_factor": ("nonfinite", "lr_factor"),
    "max_rollbacks": ("nonfinite", "max_rollbacks"),
    "l1": ("penalty", "l1"),
    "l2": ("penalty", "l2"),
    "penalty_exclude": ("penalty", "exclude"),
    "init_from": ("finetune", "init_from"),
    "sync_batchnorm": ("processes", "sync_batchnorm"),
    "dist_timeout": ("processes", "timeout"),
    "schedule_interval": ("schedule", "interval"),
    "report": ("loggers", "report"),
}

#: The optimizer group's keys that ``optim.build`` takes itself (the others go to the class).
OPTIMIZER_BUILD_KEYS = ("weight_decay", "decay_exclude", "param_groups")


@dataclass
class DataOptions:
    """How the Trainer batches the data it is given.

    Args:
        val_split: share of the training data held out for validation when ``fit`` gets no ``val``.
        shuffle: reshuffle the training data every epoch (seeded).
        target_key: where a dict batch (or a dict of tensors) holds its target; the other keys
            are the model's inputs, passed as ``model(**inputs)`` (the target too, under this
            name, when the model's ``forward`` takes it: a model that computes its own loss).
        augment: image augmentations for training batches, on the device (kornia; see
            :mod:`traincraft.augment`): ``[{"name": "horizontal_flip"}, ...]``.
        normalize: per-channel ``{"mean": [...], "std": [...]}`` (``[0, 1]`` units) or
            ``"imagenet"``. uint8 image batches become floats in ``[0, 1]`` first.
        num_workers: worker processes loading a ``Dataset`` given to ``fit``/``evaluate`` (in
            the trainer's seeded order; a ``DataLoader`` keeps its own).
        pin_memory: page-locked batches of a ``Dataset``, for faster copies to a GPU.
        persistent_workers: keep the worker processes from one epoch to the next (no start-up
            per epoch); each epoch's draws are still those of fresh workers (exact resume).
        sharded: under several processes, the data each process is given is its own share
            (per-process files, a ``DataLoader`` with a ``DistributedSampler``): it is not
            sharded again, every process takes as many steps as the one with the most samples,
            and the figures are summed over all (``docs/distributed.md``). Without it, every
            process must be given the same data (checked at the start).
    """

    val_split: float | None = None
    shuffle: bool = True
    target_key: str = "labels"
    augment: list[Any] | None = None
    normalize: Any = None
    num_workers: int = 0
    pin_memory: bool = False
    persistent_workers: bool = True
    sharded: bool = False


@dataclass
class Runtime:
    """How the steps run, besides the step's own arithmetic (:class:`~traincraft.step.Stepper`).

    Args:
        compile: run the forward pass through ``torch.compile`` (saved weights keep plain keys).
        deterministic: use torch's deterministic algorithms.
        gc_every: Python's automatic garbage collection is off during ``fit``; its young
            generations are collected every ``gc_every`` optimizer steps and after each epoch
            (collections then never land in the middle of a step, nor on one process of several
            at a time). None leaves the automatic collection on.
    """

    compile: bool = False
    deterministic: bool = False
    gc_every: int | None = 1000

    def __post_init__(self) -> None:
        if self.gc_every is not None:
            check_positive(gc_every=self.gc_every)
            self.gc_every = int(self.gc_every)


@dataclass
class Processes:
    """Several processes (torchrun).

    Args:
        sync_batchnorm: turn batch-norm layers into ``SyncBatchNorm`` (CUDA): statistics over
            the global batch.
        timeout: seconds a process waits for the others (to join, in a collective) before it
            stops with an error, e.g. when another process died.
    """

    sync_batchnorm: bool = False
    timeout: float = 300.0


@dataclass
class Settings:
    """The Trainer's grouped arguments, each in the form its owner takes."""

    optimizer: Any
    optimizer_args: dict[str, Any]
    schedule: Any
    schedule_interval: str | None
    data: DataOptions
    stepper_args: dict[str, Any]
    runtime: Runtime
    nonfinite: dict[str, Any]
    penalty: dict[str, Any]
    processes: Processes
    finetune: dict[str, Any]
    loggers: list[Any] = field(default_factory=list)
    report: bool = False


def settings(
    *, optimizer: Any, schedule: Any, data: Any, step: Any, nonfinite: Any, penalty: Any, processes: Any,
    finetune: Any, loggers: Any, deprecated: Mapping[str, Any],
) -> Settings:
    """The groups as given, the deprecated flat names moved in, each group checked against its
    owner's keys (one line with the closest key for a typo)."""
    from traincraft.penalties import Penalty
    from traincraft.step import NonFinitePolicy, Stepper

    groups: dict[str, Any] = {
        "optimizer": _dict(optimizer, "optimizer", "name"), "schedule": schedule, "data": _dict(data, "data"),
        "step": _dict(step, "step"), "nonfinite": _dict(nonfinite, "nonfinite", "policy"),
        "penalty": _dict(penalty, "penalty"), "processes": _dict(processes, "processes"),
        "finetune": _dict(finetune, "finetune"), "loggers": _list(loggers),
    }
    interval, report = None, False
    for name, value in deprecated.items():
        if name not in DEPRECATED:
            raise TraincraftError(f"Trainer() got an unknown argument {name!r}{did_you_mean(name, [*ARGUMENTS, *DEPRECATED])}")
        group, key = DEPRECATED[name]
        hint = {"report": "loggers=[..., 'report']", "schedule_interval": "schedule={'name': fn, 'interval': ...}"}
        new = hint.get(name, f"{group}={{{key!r}: ...}}")
        warnings.warn(f"Trainer({name}=...) is deprecated: write {new}", DeprecationWarning, stacklevel=3)
        if name == "report":
            report = bool(value)
        elif name == "schedule_interval":
            interval = value
        else:
            groups[group][key] = value
    spec, interval = _schedule_parts(groups["schedule"], interval)
    optimizer_spec, optimizer_args = _optimizer_parts(groups["optimizer"])
    report = report or any(_is_report(item) for item in groups["loggers"])
    stepper_keys = [k for k in accepted_keys(Stepper) if k not in ("optimizer", "params", "device", "on_nonfinite")]
    runtime_keys = accepted_keys(Runtime)
    check_keys("step", groups["step"], [*stepper_keys, *runtime_keys])
    check_keys("nonfinite", groups["nonfinite"], accepted_keys(NonFinitePolicy))
    check_keys("penalty", groups["penalty"], [k for k in accepted_keys(Penalty) if k != "model"])
    check_keys("processes", groups["processes"], accepted_keys(Processes))
    check_keys("data", groups["data"], accepted_keys(DataOptions))
    step_args = groups["step"]
    return Settings(
        optimizer=optimizer_spec, optimizer_args=optimizer_args, schedule=spec, schedule_interval=interval,
        data=DataOptions(**groups["data"]),
        stepper_args={k: v for k, v in step_args.items() if k in stepper_keys},
        runtime=Runtime(**{k: v for k, v in step_args.items() if k in runtime_keys}),
        nonfinite=groups["nonfinite"], penalty=groups["penalty"], processes=Processes(**groups["processes"]),
        finetune=groups["finetune"], loggers=[item for item in groups["loggers"] if not _is_report(item)],
        report=report,
    )


def check_limits(*, max_epochs: Any, max_steps: Any, batch_size: Any, lr: Any, seed: Any, accumulate: Any) -> None:
    """The Trainer's counts are whole and positive (``max_epochs=1.5`` is refused, not trained as
    1), its LR positive, its seed within torch's range."""
    check_whole(max_epochs=max_epochs, batch_size=batch_size, max_steps=max_steps, accumulate=accumulate)
    check_positive(max_epochs=max_epochs, batch_size=batch_size, lr=lr)
    if max_steps is not None:
        check_positive(max_steps=max_steps)
    if seed is not None:
        check_whole(seed=seed)
        if not 0 <= int(seed) < 2**63:
            raise TraincraftError(f"seed must be between 0 and 2**63 - 1, got {seed}")


#: The Trainer's own arguments (for did-you-mean on a typo).
ARGUMENTS = ("loss", "optimizer", "lr", "schedule", "metrics", "max_epochs", "max_steps", "batch_size",
             "callbacks", "seed", "device", "run_dir", "progress", "data", "step", "nonfinite", "penalty",
             "processes", "finetune", "ema", "swa", "checkpoint", "loggers")


def _dict(value: Any, what: str, name_key: str | None = None) -> dict[str, Any]:
    """A group as a new dict: None is empty; a bare value is its name (``"sgd"``, ``"skip"``)."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if name_key is not None:
        return {name_key: value}
    raise TraincraftError(f"{what} must be a dict of its keyword arguments, got {value!r}")


def _list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, (str, Mapping)) else list(value)


def _is_report(item: Any) -> bool:
    return isinstance(item, str) and item.strip().lower() == "report"


def _optimizer_parts(group: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """``optim.build``'s own keys apart from the spec (a name, the class's keys, or a callable)."""
    args = {key: group.pop(key) for key in OPTIMIZER_BUILD_KEYS if key in group}
    name = group.get("name", "adamw")
    if set(group) <= {"name"}:
        return name, args  # a bare name (or a class, a function): as it is
    if not isinstance(name, str):  # a class or a callable, with the class's own keys
        extra = {k: v for k, v in group.items() if k != "name"}
        if extra and callable(name) and not isinstance(name, type):
            raise TraincraftError(f"optimizer: keys {sorted(extra)} go with a name or a class, not a function")
        return ({"name": name, **extra} if extra else name), args
    return {"name": name, **{k: v for k, v in group.items() if k != "name"}}, args


def _schedule_parts(spec: Any, interval: str | None) -> tuple[Any, str | None]:
    """A torch scheduler you bring may say its interval: ``{"name": fn, "interval": "epoch"}``."""
    if isinstance(spec, Mapping) and callable(spec.get("name")) and not isinstance(spec.get("name"), str):
        extra = {k: v for k, v in spec.items() if k not in ("name", "interval")}
        if extra:
            raise TraincraftError(f"schedule: a function building a torch scheduler takes only 'interval', got {sorted(extra)}")
        return spec["name"], spec.get("interval", interval)
    return spec, interval
