"""Freezing by glob patterns, with batch-norm layers held in eval mode, and unfreezing."""

from __future__ import annotations

import fnmatch
import functools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from traincraft.errors import TraincraftError, did_you_mean
from traincraft.finetune.patterns import listing as _listing

# --------------------------------------------------------------------------------------------
# Freezing


def _stay_in_eval(module: nn.Module, mode: bool = True) -> nn.Module:
    """``module.train(mode)`` for a frozen batch-norm layer: always eval mode."""
    return nn.Module.train(module, False)


def kept_in_eval(module: nn.Module) -> bool:
    """True when a :class:`Freezer` holds ``module`` (a batch-norm layer) in eval mode.

    Works on deep copies as well (``AveragedModel``): code that recomputes batch-norm statistics
    should leave these layers alone, their statistics are the pretrained ones.

    Example:
        >>> [name for name, m in model.named_modules() if kept_in_eval(m)]
        ['conv1.1']
    """
    hook = module.__dict__.get("train")
    return isinstance(hook, functools.partial) and hook.func is _stay_in_eval


def _hold_in_eval(module: nn.Module) -> None:
    # An instance attribute shadows nn.Module.train, so every parent's .train() (which calls
    # child.train(mode)) leaves the layer in eval mode. A partial of a module-level function
    # survives copy.deepcopy (it is rebound to the copy) and pickling.
    object.__setattr__(module, "train", functools.partial(_stay_in_eval, module))
    nn.Module.train(module, False)


def _release(module: nn.Module, mode: bool) -> None:
    if kept_in_eval(module):
        object.__delattr__(module, "train")
    nn.Module.train(module, mode)


class Freezer:
    """Freeze parameters matched by glob patterns; unfreeze them later.

    A pattern is an ``fnmatch`` glob on parameter names (``"backbone.*"``, ``"*.bias"``) or on
    module names (``"conv1"``, ``"layer1"``): a parameter is frozen when its name matches, or
    when one of the modules that hold it does. Frozen parameters get ``requires_grad=False``.

    A batch-norm layer whose parameters are all frozen (or, without affine parameters, whose
    module is matched) stays in eval mode through every later ``.train()`` call, so that its
    running statistics keep their pretrained values; ``train_bn=True`` lets such layers update
    their statistics (their affine parameters stay frozen).

    Args:
        model: the model (patterns use the names of ``model.named_parameters()``).
        patterns: one glob or a list of globs.
        train_bn: let frozen batch-norm layers update their running statistics.
        keep: parameter names no pattern freezes (the fine-tuning plan passes the weights that
            ``init_from`` did not load: a new head would otherwise stay random).

    Raises:
        TraincraftError: a pattern matches no parameter and no batch-norm layer.

    Example:
        >>> freezer = Freezer(model, ["conv1", "conv2"])
        >>> freezer.summary()
        'froze 6 tensors (18,816 parameters) in conv1, conv2; 2 batch-norm layers kept in eval mode'
        >>> newly = freezer.unfreeze("conv2")  # then: optimizer.add_param_group(...)
    """

    def __init__(self, model: nn.Module, patterns: str | Sequence[str], *, train_bn: bool = False,
                 keep: Iterable[str] = ()):
        if not isinstance(model, nn.Module):
            raise TraincraftError(f"freeze needs a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.train_bn = bool(train_bn)
        self._frozen: set[str] = set()  # parameter names this freezer froze
        self._covered_norms: set[str] = set()  # affine-free batch-norm layers matched by name
        self._held: dict[str, nn.Module] = {}  # batch-norm layers now kept in eval mode
        chosen = _check_patterns(patterns, "freeze")
        params = dict(model.named_parameters())
        keep = set(keep)
        self.kept: list[str] = []  # matched by a pattern, but trainable: weights init_from did not load
        for pattern in chosen:
            matched = self._parameters_matching(pattern, "freeze")
            self.kept += [n for n in matched if n in keep and n not in self.kept]
            names = [n for n in matched if n not in keep]
            for name in names:
                params[name].requires_grad_(False)
            self._frozen.update(names)
        self._covered_norms = {
            name for name, m in self._norms() if not _has_params(m) and _covered(name, chosen)
        }
        self._refresh_norms()

    # -- public -----------------------------------------------------------------------------

    def unfreeze(self, patterns: str | Sequence[str]) -> list[tuple[str, nn.Parameter]]:
        """Make the frozen parameters matched by ``patterns`` trainable again.

        Their batch-norm layers are released: they follow the model's mode from now on (and
        take ``model.training`` at once).

        Returns:
            The ``(name, parameter)`` pairs that became trainable, in model order; empty when all
            matched parameters were trainable already. Add them to the optimizer (for example
            ``optimizer.add_param_group({"params": [p for _, p in pairs], "lr": ...})``).

        Raises:
            TraincraftError: a pattern matches no parameter and no batch-norm layer.

        Example:
            >>> [name for name, _ in freezer.unfreeze("conv2")]
            ['conv2.0.weight', 'conv2.1.weight', 'conv2.1.bias']
        """
        chosen = _check_patterns(patterns, "unfreeze")
        matched: set[str] = set()
        for pattern in chosen:
            matched.update(self._parameters_matching(pattern, "unfreeze"))
        newly = [
            (name, p)
            for name, p in self.model.named_parameters()
            if name in matched and not p.requires_grad
        ]
        for _, p in newly:
            p.requires_grad_(True)
        self._frozen -= matched
        self._covered_norms = {n for n in self._covered_norms if not _covered(n, chosen)}
        self._refresh_norms()
        return newly

    def frozen_names(self) -> list[str]:
        """The names of the parameters this freezer froze that are still frozen, sorted."""
        params = dict(self.model.named_parameters())
        return sorted(n for n in self._frozen if n in params and not params[n].requires_grad)

    def held_norms(self) -> list[str]:
        """The names of the batch-norm layers now kept in eval mode, in model order."""
        return [name for name, _ in self._norms() if name in self._held]

    def summary(self) -> str:
        """One line: what is frozen and which batch-norm layers are kept in eval mode."""
        params = dict(self.model.named_parameters())
        names = self.frozen_names()
        if not names:
            line = "nothing frozen"
        else:
            count = sum(params[n].numel() for n in names)
            places = list(dict.fromkeys(n.split(".", 1)[0] for n in _model_order(names, params)))
            tensors = "tensor" if len(names) == 1 else "tensors"
            line = f"froze {len(names)} {tensors} ({count:,} parameters) in {_listing(places)}"
        kept = [n for n in self.kept if params[n].requires_grad]
        if kept:
            line += f"; trainable as new (not loaded by init_from): {_listing(kept)}"
        if self._held:
            layers = "layer" if len(self._held) == 1 else "layers"
            line += f"; {len(self._held)} batch-norm {layers} kept in eval mode"
        elif self.train_bn and names and any(True for _ in self._norms()):
            line += "; batch-norm layers update their statistics (train_bn)"
        return line

    def state_dict(self) -> dict[str, Any]:
        """The frozen parameter names and matched affine-free batch-norm layers."""
        return {"frozen": self.frozen_names(), "norms": sorted(self._covered_norms)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Freeze exactly ``state["frozen"]`` (among this model's parameters), as saved."""
        params = dict(self.model.named_parameters())
        frozen = set(state.get("frozen", []))
        unknown = sorted(frozen - set(params))
        if unknown:
            raise TraincraftError(
                f"freeze state names parameters this model does not have: {_listing(unknown)}"
            )
        for name in self._frozen - frozen:
            params[name].requires_grad_(True)
        for name in frozen:
            params[name].requires_grad_(False)
        self._frozen = frozen
        modules = dict(self.model.named_modules())
        self._covered_norms = {n for n in state.get("norms", []) if n in modules}
        self._refresh_norms()

    # -- internals --------------------------------------------------------------------------

    def _norms(self) -> Iterable[tuple[str, nn.Module]]:
        return ((n, m) for n, m in self.model.named_modules() if isinstance(m, _BatchNorm))

    def _parameters_matching(self, pattern: str, where: str) -> list[str]:
        names = [n for n, _ in self.model.named_parameters() if _covered(n, [pattern])]
        if not names and not any(_covered(n, [pattern]) for n, _ in self._norms()):
            raise _no_match(where, pattern, self.model)
        return names

    def _refresh_norms(self) -> None:
        """Hold the batch-norm layers that should stay in eval mode, release the others."""
        for name, module in self._norms():
            if self._should_hold(name, module):
                if name not in self._held:
                    _hold_in_eval(module)
                    self._held[name] = module
            elif name in self._held:
                del self._held[name]
                _release(module, self.model.training)

    def _should_hold(self, name: str, module: nn.Module) -> bool:
        if self.train_bn:
            return False
        own = [(f"{name}.{local}", p) for local, p in module.named_parameters(recurse=False)]
        if own:
            return all(n in self._frozen and not p.requires_grad for n, p in own)
        return name in self._covered_norms


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters(recurse=False))


def _covered(name: str, patterns: Sequence[str]) -> bool:
    """Whether ``name`` or one of its enclosing modules (``a``, ``a.b`` for ``a.b.c``) matches."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatchcase(p, pattern) for p in prefixes for pattern in patterns)


def _check_patterns(patterns: Any, where: str) -> list[str]:
    if isinstance(patterns, str):
        patterns = [patterns]
    if (
        isinstance(patterns, Sequence)
        and patterns
        and all(isinstance(p, str) and p for p in patterns)
    ):
        return list(patterns)
    raise TraincraftError(
        f"{where} needs a glob or a list of globs on parameter or module names (such as "
        f"'backbone.*' or 'conv1'), got {patterns!r}"
    )


def _no_match(where: str, pattern: str, model: nn.Module) -> TraincraftError:
    names = [n for n, _ in model.named_parameters()]
    modules = [n for n, _ in model.named_modules() if n]
    candidates = sorted(set(modules) | {f"{m}.*" for m in modules} | set(names))
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return TraincraftError(
        f"{where} pattern {pattern!r} matches no parameter or module"
        f"{did_you_mean(pattern, candidates)}; parameter names look like: {shown or '(none)'}"
    )


def _model_order(names: Iterable[str], params: Mapping[str, nn.Parameter]) -> list[str]:
    chosen = set(names)
    return [n for n in params if n in chosen]


