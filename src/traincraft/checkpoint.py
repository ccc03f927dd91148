"""Checkpoints: atomic saves, safe loads, unwrapped keys.

A training checkpoint (``.ckpt``) holds only tensors and plain Python types and is read with
``torch.load(weights_only=True)``: a file that carries any other pickle payload is refused before
the payload can run. Weights-only files are ``.safetensors``.

Every tensor's bytes carry a CRC32, checked on load: a flipped bit in a tensor's data (media
damage, a bad copy) is an error naming the file, never wrong weights loaded in silence. In a
``.ckpt`` the checksums are a list under ``__crc32__`` (tensors in the order of a depth-first
walk); in a ``.safetensors`` file they are its metadata ``traincraft_crc32`` (name -> CRC32).

Small tensors (under ``PACK_BELOW`` bytes: optimizer steps, biases, sums, random states) are
stored together, one buffer per dtype, each replaced by ``{"__packed__": [dtype, offset, shape]}``:
torch.save spends about 20 µs on every tensor whatever its size, which made a small model's
checkpoint cost milliseconds. :func:`load_checkpoint` puts them back, each in its own storage.
"""

from __future__ import annotations

import json
import math
import pickle
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from traincraft import files
from traincraft.errors import TraincraftError, first_line
from traincraft.files import atomic_write

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
FORMAT = 2  # 2: small tensors packed; 1 (read too): every tensor on its own
PACK_BELOW = 1 << 16  # bytes
PACKED = "__packed__"


class CheckpointError(TraincraftError):
    """A checkpoint that cannot be used: missing, damaged, unsafe, or from another run."""


def unwrap_key(key: str) -> str:
    """Strip the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes from a key."""
    changed = True
    while changed:
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix) :], True
    return key


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and persistent buffers themselves (not copies), by unwrapped
    state-dict key; a tied tensor appears under each of its names."""
    return {
        unwrap_key(k): v
        for k, v in model.state_dict(keep_vars=True).items()
        if isinstance(v, torch.Tensor)
    }


def mismatch(model: nn.Module, saved: dict[str, Any]) -> str | None:
    """How saved weights fail to fit ``model`` (keys missing, unexpected, of another shape), in a
    few words; None when they fit."""
    own = {unwrap_key(k): tuple(v.shape) for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}
    theirs = {unwrap_key(k): tuple(v.shape) for k, v in saved.items() if isinstance(v, torch.Tensor)}
    parts = []
    for what, names in (("missing", [k for k in own if k not in theirs]),
                        ("unexpected", [k for k in theirs if k not in own])):
        if names:
            parts.append(f"{len(names)} {what} ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    shapes = [f"{k} {list(theirs[k])} vs {list(own[k])}" for k in own if k in theirs and theirs[k] != own[k]]
    if shapes:
        parts.append(f"{len(shapes)} of another shape ({'; '.join(shapes[:2])}{'; ...' if len(shapes) > 2 else ''})")
    return "; ".join(parts) or None


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights with wrapper prefixes removed, detached, on the CPU."""
    return {
        unwrap_key(k): v.detach().to("cpu")
        for k, v in model.state_dict().items()
        if isinstance(v, torch.Tensor)
    }


def save_weights(
    model: nn.Module, path: str | Path, *, background: bool = False, at_most_every: float | None = None
) -> Path:
    """Write the model's weights as ``.safetensors``, atomically (``background``,
    ``at_most_every``: see :func:`traincraft.files.atomic_write`)."""
    return save_weights_dict(plain_state_dict(model), path, background=background, at_most_every=at_most_every)


def save_weights_dict(
    weights: dict[str, torch.Tensor], path: str | Path, *, background: bool = False,
    at_most_every: float | None = None,
) -> Path:
    """Write a dict of tensors as ``.safetensors`` with the CRC32 of each, atomically."""
    tensors = {unwrap_key(k): v.detach().to("cpu").contiguous() for k, v in weights.items()}
    # safetensors refuses tensors that share memory; clone those (tied weights).
    seen: set[int] = set()
    for key, value in tensors.items():
        pointer = value.untyped_storage().data_ptr()
        if pointer in seen and value.numel():
            tensors[key] = value.clone()
        seen.add(pointer)
    if at_most_every is not None:  # serialized later, if this version is the one written
        tensors = stage(tensors)
        return atomic_write(path, lambda handle: handle.write(_safetensors_bytes(tensors)),
                            at_most_every=at_most_every)
    data = _safetensors_bytes(tensors)
    return atomic_write(path, lambda handle: handle.write(data), background=background)


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    sums = {name: crc32(tensor) for name, tensor in tensors.items()}
    return save(tensors, metadata={CRC_METADATA: json.dumps(sums, separators=(",", ":"))})


CRC_METADATA = "traincraft_crc32"
CRC_KEY = "__crc32__"


def crc32(tensor: torch.Tensor) -> int:
    """The CRC32 of a CPU tensor's bytes."""
    flat = tensor.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return 0
    return zlib.crc32(flat.view(torch.uint8).numpy())


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """Read weights from ``.safetensors`` (or the model part of a ``.ckpt``), keys unwrapped."""
    path = Path(path)
    files.wait()  # a file this process has just written is in place
    if not path.is_file():
        raise CheckpointError(f"weights file {path} not found")
    if path.suffix == ".ckpt":
        return {unwrap_key(k): v for k, v in load_checkpoint(path)["model"].items()}
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable .safetensors file ({err})") from err
    if CRC_METADATA in metadata:  # files of other tools (or older ones) have none to check
        try:
            sums = json.loads(metadata[CRC_METADATA])
        except ValueError:
            raise CheckpointError(f"{path} is damaged: its checksums are unreadable") from None
        bad = [name for name, tensor in tensors.items() if sums.get(name) != crc32(tensor)]
        if bad or set(sums) != set(tensors):
            raise CheckpointError(f"{path} is damaged: the bytes of {', '.join(bad[:3]) or 'its tensor list'} "
                                  "do not match their checksums")
    return {unwrap_key(k): v for k, v in tensors.items()}


def save_checkpoint(
    state: dict[str, Any], path: str | Path, *, then: Any = None, background: bool = False
) -> Path:
    """Write a training checkpoint atomically (temporary file, flush, fsync, rename); ``then``
    runs once it is in place; ``background``: see :func:`traincraft.files.atomic_write`."""
    return atomic_write(
        path, lambda handle: torch.save(pack({"format": FORMAT, **state}), handle), then=then, background=background
    )


def pack(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` with its small CPU tensors moved into one flat buffer per dtype (under the key
    ``__packed__``), each replaced by a reference; larger tensors stay as they are."""
    parts: dict[str, list[torch.Tensor]] = {}
    sizes: dict[str, int] = {}

    def walk(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            if obj.device.type != "cpu" or obj.layout != torch.strided or obj.is_quantized \
                    or obj.nbytes >= PACK_BELOW or obj.dtype not in _PACKABLE:
                return obj
            name = _PACKABLE[obj.dtype]
            offset = sizes.get(name, 0)
            parts.setdefault(name, []).append(obj.detach().reshape(-1))
            sizes[name] = offset + obj.numel()
            return {PACKED: [name, offset, list(obj.shape)]}
        if isinstance(obj, dict):
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(walk(v) for v in obj)
        return obj

    packed = walk(state)
    packed[PACKED] = {name: torch.cat(tensors) for name, tensors in parts.items()}
    packed[CRC_KEY] = [crc32(tensor) for tensor in _tensors_in_order(packed)]
    packed[STRUCTURE_KEY] = _structure_crc(packed)
    return packed


STRUCTURE_KEY = "__structure_crc32__"


def _structure_crc(state: dict[str, Any]) -> int:
    """The CRC32 of everything but the tensors' bytes (the history, counters, settings, every
    key and shape), from its repr with each tensor replaced by its dtype and shape."""

    def skeleton(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return ("tensor", str(obj.dtype), tuple(obj.shape))
        if isinstance(obj, dict):
            return {k: skeleton(v) for k, v in obj.items() if k not in (CRC_KEY, STRUCTURE_KEY)}
        if isinstance(obj, (list, tuple)):
            return type(obj)(skeleton(v) for v in obj)
        return obj

    return zlib.crc32(repr(skeleton(state)).encode())


def _tensors_in_order(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor of a nested structure, depth first (the checksums' order)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            if key != CRC_KEY:
                yield from _tensors_in_order(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors_in_order(value)


def verify(state: dict[str, Any], path: Path) -> None:
    """Check a loaded checkpoint's tensors, and the rest of it, against the checksums it was
    written with."""
    sums = state.pop(CRC_KEY, None)
    structure = state.pop(STRUCTURE_KEY, None)
    if structure is not None and _structure_crc(state) != structure:
        raise CheckpointError(f"{path} is damaged: its history, counters or settings do not match their checksum")
    if sums is None:
        return  # written before checksums
    tensors = list(_tensors_in_order(state))
    if len(tensors) != len(sums):
        raise CheckpointError(f"{path} is damaged: it holds {len(tensors)} tensors, its checksums {len(sums)}")
    for index, (tensor, expected) in enumerate(zip(tensors, sums)):
        if crc32(tensor.cpu()) != expected:
            raise CheckpointError(f"{path} is damaged: the bytes of its tensor #{index} "
                                  f"({str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)}) "
                                  "do not match their checksum")


def unpack(state: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`pack`: every reference replaced by its tensor (a copy of its own)."""
    buffers = state.pop(PACKED, None)
    if buffers is None:
        return state  # format 1

    def walk(obj: Any) -> Any:
        if isinstance(obj, dict):
            ref = obj.get(PACKED)
            if ref is not None and len(obj) == 1:
                name, offset, shape = ref
                count = math.prod(shape)
                return buffers[name][offset : offset + count].view(shape).clone()
            return {k: walk(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(walk(v) for v in obj)
        return obj

    return walk(state)


_PACKABLE = {
    dtype: str(dtype).removeprefix("torch.")
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16, torch.int64, torch.int32,
                  torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64, torch.complex128)
}


def stage(obj: Any) -> Any:
    """A copy of ``obj`` whose tensors are detached CPU copies, never aliases of live tensors."""
    if isinstance(obj, torch.Tensor):
        # clone() is a plain memcpy; to(copy=True) takes torch's parallel copy path, which stalls
        # when the machine's cores are busy.
        return obj.detach().clone() if obj.device.type == "cpu" else obj.detach().to("cpu")
    if isinstance(obj, dict):
        return {k: stage(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(stage(v) for v in obj)
    return obj


def torch_load_safely(path: Path, what: str = "") -> Any:
    """``torch.load(weights_only=True)`` with one line for what it refuses or cannot read
    (never torch's advice to load with ``weights_only=False``: not for a file that failed this)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "Unsupported global" in text or "GLOBAL" in text:
            raise CheckpointError(
                f"{what}{path} was refused: it holds Python objects other than tensors and plain types, "
                "which could run code when loaded; save tensors (model.state_dict()) or a .safetensors file"
            ) from None
        if "weights only load failed" in text.lower():  # a raw pickle, another format, garbled bytes
            raise CheckpointError(
                f"{what}{path} is damaged, or not a torch.save file of tensors and plain types (a raw "
                "pickle?): it was not loaded; save tensors with torch.save, or a .safetensors file"
            ) from None
        raise CheckpointError(f"{what}{path} is damaged (truncated or garbled): {first_line(err)}") from None
    except Exception as err:  # noqa: BLE001  (garbled bytes fail anywhere inside torch.load)
        raise CheckpointError(f"{what}{path} is damaged (truncated or garbled): {first_line(err)}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely; a damaged or unsafe file gets a clear error naming it."""
    path = Path(path)
    files.wait()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    state = torch_load_safely(path)
    if not isinstance(state, dict) or state.get("format") not in (1, FORMAT):
        raise CheckpointError(f"{path} is not a traincraft training checkpoint")
    verify(state, path)
    try:
        return unpack(state)
    except (KeyError, ValueError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path} is damaged (its packed tensors do not add up): {err}") from None


def checkpoint_candidates(folder: Path) -> list[Path]:
    """The checkpoints of a run folder, newest first: ``last.ckpt``, then the kept step/epoch ones."""
    folder = folder / "checkpoints" if (folder / "checkpoints").is_dir() else folder
    kept = sorted(folder.glob("step-*.ckpt"), reverse=True)
    last = folder / "last.ckpt"
    return ([last] if last.is_file() else []) + kept


def find_resume_checkpoint(source: str | Path, warn: Any = print) -> tuple[Path, dict[str, Any]]:
    """The newest good checkpoint of a run folder (or the file given), and its content.

    A damaged newest checkpoint is reported through ``warn`` and the next kept one is used.
    """
    source = Path(source)
    if source.is_file():
        return source, load_checkpoint(source)
    if not source.is_dir():
        raise CheckpointError(f"resume: {source} is neither a checkpoint file nor a run folder")
    candidates = checkpoint_candidates(source)
    if not candidates:
        raise CheckpointError(f"resume: {source} holds no checkpoint (checkpoints/last.ckpt is missing)")
    problems = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        for problem in problems:
            warn(f"warning: {problem}; resuming from {path} instead")
        return path, state
    raise CheckpointError("resume: no usable checkpoint: " + "; ".join(problems))
