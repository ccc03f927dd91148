"""RunningMeans: sample-weighted sums of named scalars (losses, penalties), kept on the device."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch


class RunningMeans:
    """Sample-weighted sums of named scalars (losses, penalties, gradient norms), kept on the
    device: exact epoch means, no host sync per step.

    Values are added in groups of ``GROUP`` (one stacked sum instead of a kernel per step); the
    grouping depends only on how many values were added, and a state dict keeps a group under
    way as it is, so a resumed run rounds its sums exactly as an uninterrupted one.

    Example:
        >>> means = RunningMeans(torch.device("cpu"))
        >>> means.add("loss", batch_loss, samples=len(batch))
        >>> means.means(prefix="train_")
        {'train_loss': 0.4}
    """

    GROUP = 64

    def __init__(self, device: torch.device):
        self.dtype = torch.float32 if device.type == "mps" else torch.float64
        self.device = device
        self._sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}
        self._held: dict[str, list[tuple[torch.Tensor, int]]] = {}

    @property
    def sums(self) -> dict[str, torch.Tensor]:
        """The sums so far, held values included (new tensors: reading changes no grouping, so
        a progress refresh at any moment leaves the figures bit for bit the same)."""
        return {name: self._total(name) for name in self._sums}

    def _total(self, name: str) -> torch.Tensor:
        part = self._held_sum(name)
        return self._sums[name] if part is None else self._sums[name] + part

    def reset(self) -> None:
        self._sums.clear()
        self.counts.clear()
        self._held.clear()

    def add(self, name: str, value: torch.Tensor, samples: int) -> None:
        held = self._held.get(name)
        if held is None:
            self._sums[name] = torch.zeros((), dtype=self.dtype, device=value.device)
            self.counts[name] = 0
            held = self._held[name] = []
        held.append((value.detach(), samples))
        self.counts[name] += samples
        if len(held) >= self.GROUP:
            self._flush(name)

    def _flush(self, name: str) -> None:
        part = self._held_sum(name)
        if part is not None:  # out of place: evaluation's sums are inference-mode tensors
            self._sums[name] = self._sums[name] + part
            self._held[name].clear()

    def _held_sum(self, name: str) -> torch.Tensor | None:
        held = self._held.get(name)
        if not held:
            return None
        values = torch.stack([v.reshape(()) for v, _ in held])
        counts = [n for _, n in held]
        if all(n == counts[0] for n in counts):  # equal batches: one kernel
            return torch.sum(values, dtype=self.dtype) * counts[0]
        weights = torch.tensor(counts, dtype=self.dtype, device=values.device)
        return (values.to(self.dtype) * weights).sum()

    def sync(self, reduce_fn: Callable[[list[torch.Tensor]], Any]) -> None:
        """Sum every process's sums and counts in place, once, right before ``means()``.

        ``reduce_fn`` gets the sums and a tensor of the counts in one list (see
        :meth:`MetricSet.sync`). Every process must hold the same names.
        """
        for name in self._held:
            self._flush(name)  # at the epoch's end, where every run flushes
        sums = self._sums
        if not sums:
            return
        names = sorted(sums)  # the same order on every process
        first = sums[names[0]]
        counts = torch.tensor([self.counts[name] for name in names], dtype=torch.int64, device=first.device)
        reduce_fn([*(sums[name] for name in names), counts])
        self.counts.update(zip(names, counts.tolist()))

    def state_dict(self) -> dict[str, Any]:
        return {
            "sums": {k: v.detach().cpu() for k, v in self._sums.items()},
            "counts": dict(self.counts),
            # The group under way, as it is: one stacked read per name.
            "held": {
                k: [torch.stack([v.reshape(()) for v, _ in held]).cpu(), [n for _, n in held]]
                for k, held in self._held.items() if held
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._sums = {k: v.to(self.device, self.dtype) for k, v in state["sums"].items()}
        self.counts = dict(state["counts"])
        held = state.get("held", {})
        self._held = {k: [] for k in self._sums}
        for name, (values, counts) in held.items():
            self._held[name] = [(v.to(self.device), int(n)) for v, n in zip(values, counts)]

    def mean(self, name: str) -> float:
        count = self.counts.get(name, 0)
        return float(self._total(name)) / count if count else math.nan

    def means(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}{name}": self.mean(name) for name in self._sums}
