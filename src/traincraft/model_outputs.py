"""What a model returns, read the same way everywhere: a tensor, a tuple or list of them (a
multi-output model), or a dict or an object with ``logits`` and perhaps ``loss`` (Hugging Face's
``ModelOutput`` is both).

The prediction (what the loss and the metrics compare with the target) is the tensor, the tuple,
or the ``logits``; the model's own loss is its ``loss``, used when the trainer is given no loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from traincraft.errors import TraincraftError


def prediction(output: Any) -> Any:
    """The prediction in a model's output (see the module's docstring)."""
    if isinstance(output, torch.Tensor):
        return output  # the common case, first
    if isinstance(output, Mapping):
        if "logits" in output:
            return output["logits"]
        return {key: value for key, value in output.items() if key != "loss"} or None
    logits = getattr(output, "logits", None)
    return logits if logits is not None else output


def own_loss(output: Any) -> torch.Tensor:
    """The loss a model returned (``output["loss"]`` or ``output.loss``): the mean over the
    batch's samples, a scalar.

    Raises:
        TraincraftError: the model returned no loss (then the trainer needs ``loss=``).
    """
    loss = output.get("loss") if isinstance(output, Mapping) else getattr(output, "loss", None)
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        from traincraft.data import describe

        got = "no loss" if loss is None else f"loss {describe(loss)}"
        raise TraincraftError(
            f"loss=None trains on the loss the model returns, but it returned {got} (output "
            f"{describe(output)}): return a scalar under 'loss' (a dict, or an object with .loss; "
            "for a Hugging Face model, pass the labels), or give the trainer a loss"
        )
    return loss
