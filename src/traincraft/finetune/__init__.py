"""Fine-tuning: start from trained weights, freeze, unfreeze on a schedule, layer-wise LRs.

* :mod:`~traincraft.finetune.weights`: :func:`load_initial_weights` copies the tensors of a run
  folder or a weights file into a model whose head may differ, and says in one line what it
  loaded and what it left alone.
* :mod:`~traincraft.finetune.freezing`: :class:`Freezer` freezes parameters by glob patterns,
  keeps their batch-norm layers in eval mode, and unfreezes them later.
* :mod:`~traincraft.finetune.blocks`: :func:`model_blocks`, and :func:`layer_decay_rules` /
  :func:`lr_mult_rules` that write ``param_groups`` rules for :func:`traincraft.optim.build`.
* :mod:`~traincraft.finetune.plan`: :class:`UnfreezePlan` (when which parameters join training)
  and :class:`Finetuning`, the trainer's ``init_from=`` / ``finetune=`` settings.

Example:
    >>> report = load_initial_weights(model, "runs/pretrain/20261121-101500")
    >>> freezer = Freezer(model, ["conv*"])
    >>> rules = layer_decay_rules(model, 0.7, skip_frozen=True)
    >>> opt = optim.build("adamw", model, lr=1e-3, param_groups=rules)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Names load on first use: importing one of the submodules (the model registry loads
# finetune.weights) runs this file without loading the others.
_EXPORTS = {
    "Finetuning": "plan", "UnfreezeEvent": "plan", "UnfreezePlan": "plan",
    "Freezer": "freezing", "kept_in_eval": "freezing",
    "LoadReport": "weights", "load_initial_weights": "weights",
    "layer_decay_rules": "blocks", "lr_mult_rules": "blocks", "model_blocks": "blocks",
}

__all__ = [
    "Finetuning", "Freezer", "LoadReport", "UnfreezeEvent", "UnfreezePlan", "kept_in_eval",
    "layer_decay_rules", "load_initial_weights", "lr_mult_rules", "model_blocks",
]

if TYPE_CHECKING:
    from traincraft.finetune.blocks import layer_decay_rules, lr_mult_rules, model_blocks
    from traincraft.finetune.freezing import Freezer, kept_in_eval
    from traincraft.finetune.plan import Finetuning, UnfreezeEvent, UnfreezePlan
    from traincraft.finetune.weights import LoadReport, load_initial_weights


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'traincraft.finetune' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"traincraft.finetune.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value
