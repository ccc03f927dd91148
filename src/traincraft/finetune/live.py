"""Unfreezing during a run: the plan's events applied to the live optimizer and schedule.

An event makes its parameters trainable, adds them to the optimizer as new parameter groups
(split by the same rules as the first groups: decay exemption, ``param_groups``, ``lr_mult``,
layer decay), hands those groups to the schedule, which owns their learning rate from then on,
and tells the trainer its trainable parameters changed (the penalty, DDP and the non-finite
policy's snapshot follow).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from traincraft import optim

if TYPE_CHECKING:
    from traincraft.trainer import Trainer


def unfreeze_due(trainer: Trainer) -> float:
    """Apply the events due at the trainer's step; the step of the next one (inf when none)."""
    plan = trainer.finetuning.plan
    for event in plan.pop_due(trainer.state.step):
        apply_event(trainer, event, quiet=False)
    return plan.next_step


def unfreeze_until(trainer: Trainer, done: int) -> float:
    """Apply the plan's first ``done`` events, quietly: a resumed run's optimizer had their
    groups (the plan was resolved when the run was set up). The next event's step."""
    plan = trainer.finetuning.plan
    while plan.done < done:
        plan.done += 1
        apply_event(trainer, plan.events[plan.done - 1], quiet=True)
    return plan.next_step


def apply_event(trainer: Trainer, event: Any, quiet: bool) -> None:
    """Make ``event``'s parameters trainable: new groups in the live optimizer and schedule."""
    named = trainer.finetuning.unfreeze(event.params)
    if not named:
        return
    optimizer = trainer.optimizer
    defaults = optimizer.defaults  # the optimizer's own base LR and decay
    groups = optim.added_groups(
        trainer.model, named, lr=defaults["lr"], weight_decay=defaults.get("weight_decay"),
        decay_exclude=trainer.decay_exclude, param_groups=trainer.group_rules,
        lr_mult=event.lr_mult, prefix=event.label,
    )
    for group in groups:
        optimizer.add_param_group(group)
        if trainer.schedule is not None:
            trainer.schedule.add_group(optimizer.param_groups[-1])
    trainer.stepper.params.extend(p for _, p in named)
    trainer.parameters_changed()
    if not quiet:
        count = sum(p.numel() for _, p in named)
        mults = sorted({g["lr_mult"] for g in groups})
        trainer.log(
            f"Unfroze {len(named)} tensors ({count:,} parameters) matching "
            f"{', '.join(event.params)} after step {trainer.state.step} ({event.label}); "
            f"LR × {', '.join(f'{m:g}' for m in mults)}"
        )
