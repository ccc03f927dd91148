"""Muon for the hidden weight matrices, AdamW for every other parameter, as one optimizer.

Muon orthogonalises the update of a 2-D weight matrix; its authors train the input embedding,
the output layer and every gain, bias and norm with AdamW. ``optimizer: muon`` does that split:

* **Muon** takes each 2-D parameter that is neither an ``nn.Embedding``/``nn.EmbeddingBag``
  weight nor the weight of the model's last ``nn.Linear`` (the head);
* **AdamW** (torch's, fused where torch has the kernel) takes everything else: biases, norms,
  embeddings, the head, convolution kernels.

Both follow the same learning rate: Muon's ``adjust_lr_fn`` defaults to ``"match_rms_adamw"``
(its update is scaled to AdamW's RMS), so one ``lr`` and one schedule serve the two; parameter
group rules (``lr_mult``, weight decay, no decay on biases and norms) apply to both halves.
``{"name": "muon", "others": null}`` is plain Muon, which refuses any parameter that is not 2-D.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

#: Keyword arguments that belong to AdamW (given as ``adamw_betas``, ...), not to Muon.
ADAMW_KEYS = ("betas", "eps", "amsgrad")


def hidden_matrices(model: nn.Module) -> set[int]:
    """The ids of the parameters Muon takes: 2-D, not an embedding, not the last Linear's."""
    excluded: set[int] = set()
    last_linear = None
    for module in model.modules():
        if isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            excluded.update(id(p) for p in module.parameters(recurse=False))
        if isinstance(module, nn.Linear):
            last_linear = module
    if last_linear is not None:
        excluded.add(id(last_linear.weight))
    return {id(p) for p in model.parameters() if p.ndim == 2 and id(p) not in excluded}


def split_groups(groups: list[dict[str, Any]], muon_ids: set[int]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Each parameter group cut in two (same options): its Muon part and its AdamW part."""
    muon, adamw = [], []
    for group in groups:
        names = group.get("param_names", [None] * len(group["params"]))
        for side, keep in ((muon, True), (adamw, False)):
            chosen = [(p, n) for p, n in zip(group["params"], names) if (id(p) in muon_ids) == keep]
            if chosen:
                part = {**group, "params": [p for p, _ in chosen]}
                if "param_names" in group:
                    part["param_names"] = [n for _, n in chosen]
                side.append(part)
    return muon, adamw


class MuonAdamW(torch.optim.Optimizer):
    """Muon and AdamW as one optimizer: ``param_groups`` are the two optimizers' own groups (so
    schedules, LR rules and unfreezing act on both), ``step``, ``zero_grad`` and the state dict
    cover both.

    Example:
        >>> opt = MuonAdamW(torch.optim.Muon(matrices, lr=0.02), torch.optim.AdamW(others, lr=0.02))
    """

    def __init__(self, muon: torch.optim.Optimizer | None, adamw: torch.optim.Optimizer | None):
        self.parts = [part for part in (muon, adamw) if part is not None]
        self.muon, self.adamw = muon, adamw
        params = [p for part in self.parts for g in part.param_groups for p in g["params"]]
        self._ready = False
        super().__init__(params, dict(self.parts[0].defaults))  # hooks and bookkeeping
        self.param_groups = [g for part in self.parts for g in part.param_groups]
        self._ready = True

    @property
    def state(self) -> dict[Any, Any]:  # type: ignore[override]
        merged: dict[Any, Any] = {}
        for part in getattr(self, "parts", []):
            merged.update(part.state)
        return merged

    @state.setter
    def state(self, value: Any) -> None:  # the base class's __init__ sets an empty one
        pass

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for part in self.parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not self._ready:  # the base class's __init__
            super().add_param_group(param_group)
            return
        muon_ids = {id(p) for p in param_group["params"] if p.ndim == 2} if self.muon is not None else set()
        muon, adamw = split_groups([param_group], muon_ids)
        for target, groups in ((self.muon, muon), (self.adamw, adamw)):
            for group in groups:
                if target is None:
                    raise ValueError("plain Muon takes 2-D weight matrices only")
                target.add_param_group(group)
        self.param_groups = [g for part in self.parts for g in part.param_groups]

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        saved = state_dict["parts"]
        if len(saved) != len(self.parts):
            raise ValueError(f"the state holds {len(saved)} optimizers, this one {len(self.parts)}")
        for part, state in zip(self.parts, saved):
            part.load_state_dict(state)
        self.param_groups = [g for part in self.parts for g in part.param_groups]

    def __iter__(self) -> Iterator[torch.optim.Optimizer]:
        return iter(self.parts)
