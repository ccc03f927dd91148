"""Data larger than memory: ``.npy`` inputs kept on disk and read batch by batch.

The same holds for a cache of decoded images too large to hold in memory
(:mod:`traincraft.images`): its splits are :class:`OnDisk` rows until they are batched.

``dataset: {inputs: x.npy, targets: y.npy}`` keeps the inputs on disk: each batch reads its rows
with ``os.preadv`` (sorted, so the reads go forward through the file) into the batch's own
buffer. Nothing of the file is mapped into the process: reading a memory map instead makes each
page fault map a whole page-cache folio (up to 2 MiB), so one batch of 512 random rows of 4 KiB
took 425 MiB of resident memory on this machine. The operating system's page cache keeps what
fits, outside the process. The file's header is read through a read-only map (its shape, dtype,
offset). The targets (one value or a few per sample) are read into memory; splits are lists of
rows, never copies of the inputs.

The inputs are used as they are stored (``data.scale`` must be ``none``): scale them before
saving them, as a data set of this size is usually prepared once.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traincraft.data import Batch, IndexedBatches
from traincraft.errors import DataError


class OnDisk:
    """Rows of a ``.npy`` file kept on disk: indexing selects rows (nothing is read); reading
    happens in ``np.asarray`` (with :func:`read_rows`) or batch by batch once it is a split.
    Splitting and filtering code written for arrays (``x[rows]``, ``x[mask]``, ``len``,
    ``x.shape``) works on it unchanged."""

    def __init__(self, inputs: np.ndarray, rows: np.ndarray | None = None):
        self.inputs = inputs  # np.memmap of the whole file
        self.rows = np.arange(len(inputs), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.inputs.shape[1:])

    @property
    def dtype(self) -> np.dtype:
        return self.inputs.dtype

    def __getitem__(self, index: Any) -> OnDisk:
        return OnDisk(self.inputs, self.rows[index])

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        fd = os.open(self.inputs.filename, os.O_RDONLY)
        try:
            out = read_rows(fd, self.inputs, self.rows)
        finally:
            os.close(fd)
        return out if dtype is None else out.astype(dtype, copy=False)


@dataclass
class MappedSplit:
    """A split of a memory-mapped data set: the map, the rows of this split, their targets."""

    inputs: np.ndarray  # np.memmap (N, ...) of the whole file
    targets: torch.Tensor  # (len(rows), ...) in memory
    rows: np.ndarray  # int64, sorted: which rows of the map

    def __len__(self) -> int:
        return len(self.rows)

    def as_batches(self, batch_size: int, **kwargs: Any) -> MappedBatches:
        """What :func:`traincraft.data.make_batches` makes of it."""
        return MappedBatches(self, batch_size, **kwargs)

    def inputs_at(self, index: Any) -> torch.Tensor:
        """The inputs of the split's samples at ``index`` (positions in the split), read now."""
        return torch.from_numpy(np.asarray(OnDisk(self.inputs, self.rows[index])))


def inputs_at(split: Any, index: Any) -> torch.Tensor:
    """The inputs at ``index`` of a split held in memory (``(inputs, targets)``) or on disk."""
    if isinstance(split, MappedSplit):
        return split.inputs_at(np.asarray(index))
    return split[0][torch.as_tensor(index)]


def open_inputs(path: Path) -> np.ndarray:
    """The ``.npy`` file as a read-only memory map, with a clear error for anything else."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise DataError(f"inputs {path}: not a readable .npy file ({err})") from None
    if not isinstance(array, np.memmap) or array.dtype.kind not in "biuf" or array.ndim < 2:
        raise DataError(f"inputs {path}: need a numeric array of shape (samples, ...), got {array.dtype} {array.shape}")
    return array


class MappedBatches(IndexedBatches):
    """Batches read from a :class:`MappedSplit`, in the seeded order of each epoch (sharded like
    in-memory tensors under several processes)."""

    def __init__(self, split: MappedSplit, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, equal_steps: bool = False):
        self.split = split
        self._index(len(split), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank,
                    world_size=world_size, equal_steps=equal_steps)

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        return self._gathered(self.index_batches(epoch)[start:])

    def _gathered(self, batches: list[torch.Tensor]) -> Iterator[Batch]:
        split = self.split
        fd = os.open(split.inputs.filename, os.O_RDONLY)
        try:
            for index in batches:
                rows = split.rows[index.numpy()]
                yield torch.from_numpy(read_rows(fd, split.inputs, rows)), split.targets.index_select(0, index)
        finally:
            os.close(fd)


def read_rows(fd: int, inputs: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``inputs[rows]`` read from the file (``fd``) with one ``preadv`` per row, in file order."""
    shape, dtype = inputs.shape[1:], inputs.dtype
    size = int(np.prod(shape)) * dtype.itemsize
    out = np.empty((len(rows), *shape), dtype=dtype)
    flat = memoryview(out).cast("B")  # the rows' bytes, one after another
    for position in np.argsort(rows, kind="stable"):  # forward through the file
        offset = inputs.offset + int(rows[position]) * size
        start = int(position) * size
        if os.preadv(fd, [flat[start:start + size]], offset) != size:
            raise OSError(f"{inputs.filename}: short read at row {int(rows[position])} (the file was truncated?)")
    return out
