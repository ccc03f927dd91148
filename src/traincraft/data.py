"""Anything -> batches of ``(inputs, target)``.

Three sources, one interface (:class:`Batches`):

* tensors / numpy arrays / ``TensorDataset`` -> :class:`TensorBatches`: the data lives on the
  device once, and a batch is an index slice of it. No per-sample collate: this is why training
  from tensors is about twice as fast as the DataLoader loop the tutorials teach.
* any map-style ``Dataset`` -> :class:`DatasetBatches`: a ``DataLoader`` over our own batch order.
* a ``DataLoader`` -> :class:`LoaderBatches`: used as it is.

The order of an epoch is a pure function of ``(seed, epoch)``, so a resumed run finds the exact
next batch by index arithmetic, and several processes agree on it without talking.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from traincraft.errors import DataError, TraincraftError

Inputs = Any  # a Tensor, a tuple of Tensors (model(*inputs)) or a dict of Tensors (model(**inputs))
Batch = tuple[Inputs, Any]

#: Where a dict batch holds its target, unless told otherwise (Hugging Face's convention).
TARGET_KEY = "labels"

ACCEPTED = (
    "a tuple (X, y) of tensors or numpy arrays (X may itself be a tuple or a dict of them), "
    "a dict of them with the target under 'labels', a torch Dataset yielding (inputs, target) "
    "or dicts, or a DataLoader"
)


# ----------------------------------------------------------------------------- tensors


def as_tensor(value: Any, what: str) -> torch.Tensor:
    """A tensor from a tensor or array; float64 becomes float32 (models are float32 by default)."""
    if isinstance(value, np.ndarray):
        if value.dtype == object or value.dtype.kind in "USV":
            raise DataError(f"{what}: numpy array of dtype {value.dtype} (not numbers); convert it to "
                            "numbers first (class names: map them to 0..C-1)")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise DataError(f"{what}: expected a tensor or numpy array, got {type(value).__name__}")
    if value.dtype == torch.float64:
        value = value.float()
    return value


def map_tensors(fn: Any, obj: Any) -> Any:
    """Apply ``fn`` to every tensor inside a tensor, tuple, list or dict."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(map_tensors(fn, v) for v in obj)
    return obj


def first_tensor(obj: Any) -> torch.Tensor | None:
    """The first tensor inside ``obj`` (depth first), or None."""
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (tuple, list)) else ()
    for value in values:
        found = first_tensor(value)
        if found is not None:
            return found
    return None


def num_samples(obj: Any) -> int:
    """Samples in a batch: the leading dimension of its first tensor (0 when there is none)."""
    tensor = first_tensor(obj)
    return 0 if tensor is None or tensor.ndim == 0 else int(tensor.shape[0])


def to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor of a batch to ``device`` (asynchronously from pinned memory on CUDA)."""
    if isinstance(obj, torch.Tensor) and obj.device == device:
        return obj  # the common case, without the call
    non_blocking = device.type == "cuda"
    return map_tensors(lambda t: t.to(device, non_blocking=non_blocking), obj)


def describe(obj: Any) -> str:
    """``float32[64, 1, 8, 8]``-style description of the tensors in a batch, for error messages."""
    if isinstance(obj, torch.Tensor):
        return f"{str(obj.dtype).removeprefix('torch.')}{list(obj.shape)}"
    if isinstance(obj, Mapping):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, (tuple, list)):
        return "(" + ", ".join(describe(v) for v in obj) + ")"
    return type(obj).__name__


def _inputs_as_tensors(inputs: Any, what: str) -> Any:
    if isinstance(inputs, Mapping):
        return {k: as_tensor(v, f"{what}[{k!r}]") for k, v in inputs.items()}
    if isinstance(inputs, (tuple, list)):
        return tuple(as_tensor(v, f"{what}[{i}]") for i, v in enumerate(inputs))
    return as_tensor(inputs, what)


def _leading_sizes(obj: Any) -> list[int]:
    sizes: list[int] = []
    map_tensors(lambda t: sizes.append(int(t.shape[0]) if t.ndim else 0), obj)
    return sizes


# ----------------------------------------------------------------------------- order


def epoch_order(n: int, epoch: int, *, shuffle: bool, seed: int) -> torch.Tensor:
    """The sample order of ``epoch``: a seeded permutation that depends only on (seed, epoch)."""
    if not shuffle:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(_mix(seed, epoch))
    return torch.randperm(n, generator=generator)


def _mix(seed: int, epoch: int) -> int:
    # A distinct, reproducible 63-bit stream per (seed, epoch) pair.
    return (seed * 1_000_003 + epoch * 7919 + 0x5EED) % (2**63 - 1)


def shard(order: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """This process's share of ``order``: every ``world_size``-th index from ``rank``.

    Each sample belongs to exactly one process: nothing is padded or repeated. Together, the
    ``b``-th batches of all processes hold the same samples as the ``b``-th batch of one process
    with ``world_size`` times the batch size.
    """
    return order if world_size == 1 else order[rank::world_size]


def shard_counts(n: int, world_size: int) -> list[int]:
    """Samples of each process when ``n`` samples are sharded over ``world_size`` processes."""
    return [len(range(rank, n, world_size)) for rank in range(world_size)]


@dataclass(frozen=True)
class ShardSizes:
    """Real samples per training batch under several processes, known without talking.

    Every process takes the same number of batches (DDP all-reduces at every step). Shards differ
    by at most one sample, so a process may have one sample fewer in its last batch, or, when its
    shard ends exactly on a batch boundary, a last batch with no sample of its own: it then feeds
    one stand-in sample whose weight is 0 (``local`` says 0), so that it still joins the step.

    Attributes:
        local: this process's real samples in each batch of an epoch.
        total: every process's real samples together, per batch.
        world_size: the number of processes.

    Example:
        >>> sizes = ShardSizes.of(n=101, batch_size=16, rank=1, world_size=2)
        >>> sizes.local[-1], sizes.total[-1]     # rank 0 has 51 samples, rank 1 has 50
        (2, 5)
    """

    local: list[int]
    total: list[int]
    world_size: int

    @classmethod
    def of(cls, n: int, batch_size: int, rank: int, world_size: int, drop_last: bool = False) -> ShardSizes:
        counts = shard_counts(n, world_size)
        # drop_last drops the batches the largest shard cannot fill; a shard one sample shorter
        # keeps its last, one sample shorter batch (see shard_batches).
        return cls._of(counts, batch_size, rank, _num_batches(counts[0], batch_size, drop_last))

    @classmethod
    def of_counts(cls, counts: Sequence[int], batch_size: int, rank: int, drop_last: bool = False) -> ShardSizes:
        """The sizes when process ``r`` holds ``counts[r]`` samples: its own share (traincraft's
        shards, or data each process loaded itself, ``data={"sharded": True}``). Every process
        takes as many batches as the one with the most; a process with fewer feeds stand-ins.

        Example:
            >>> ShardSizes.of_counts([40, 25], batch_size=16, rank=1).local   # 3 steps for both
            [16, 9, 0]
        """
        if drop_last:  # each process drops its own last, partial batch
            counts = [count - count % batch_size for count in counts]
        return cls._of(counts, batch_size, rank, max(_num_batches(count, batch_size, False) for count in counts))

    @classmethod
    def _of(cls, counts: Sequence[int], batch_size: int, rank: int, batches: int) -> ShardSizes:
        per_batch = [_batch_sizes(count, batch_size, batches=batches) for count in counts]
        return cls(per_batch[rank], [sum(sizes) for sizes in zip(*per_batch)], len(counts))

    def window_total(self, start: int, accumulate: int) -> int:
        """Real samples of every process in the accumulation window that starts at batch ``start``."""
        return sum(self.total[start : start + accumulate])


def _num_batches(samples: int, batch_size: int, drop_last: bool) -> int:
    return samples // batch_size if drop_last else math.ceil(samples / batch_size)


def _batch_sizes(samples: int, batch_size: int, batches: int) -> list[int]:
    return [max(0, min(batch_size, samples - b * batch_size)) for b in range(batches)]


def shard_batches(order: torch.Tensor, batch_size: int, rank: int, world_size: int, *,
                  equal_steps: bool, drop_last: bool = False) -> list[torch.Tensor]:
    """This process's index batches of one epoch, from the epoch's ``order`` of all samples.

    ``equal_steps`` (training): as many batches as the process with the most samples, a batch
    with no real sample holding one stand-in (see :class:`ShardSizes`). Without it (evaluation):
    this process's samples, each exactly once.
    """
    mine = shard(order, rank, world_size)
    most = math.ceil(len(order) / world_size) if equal_steps else len(mine)
    count = _num_batches(most, batch_size, drop_last)
    batches = [mine[b * batch_size : (b + 1) * batch_size] for b in range(count)]
    # A stand-in keeps this process in the step; its weight is 0 (ShardSizes.local).
    return [batch if len(batch) else order[:1] for batch in batches]


# ----------------------------------------------------------------------------- batches


class Batches:
    """An epoch-indexed source of ``(inputs, target)`` batches."""

    batch_size: int

    def __len__(self) -> int:
        """Batches per epoch for this process."""
        raise NotImplementedError

    @property
    def num_samples(self) -> int:
        raise NotImplementedError

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """The batches of ``epoch`` from batch index ``start`` on."""
        raise NotImplementedError

    def batch_sizes(self, epoch: int) -> list[int] | None:
        """Samples in each batch of ``epoch``, when known without loading (None otherwise)."""
        return None

    def shard_sizes(self) -> ShardSizes | None:
        """Real samples per batch of this process and of all (training under several processes)."""
        return None


class IndexedBatches(Batches):
    """Batches of a source whose samples are numbered 0..n-1: each epoch's seeded order,
    sharded across processes (under several, ``equal_steps`` gives every process the same number
    of batches, see :class:`ShardSizes`). Subclasses say how a batch of indices becomes a batch."""

    def _index(self, n: int, batch_size: int, *, shuffle: bool, seed: int, drop_last: bool, rank: int,
               world_size: int, equal_steps: bool) -> None:
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size, self.equal_steps = rank, world_size, equal_steps
        self._n = n
        self._sizes = _local_sizes(n, batch_size, rank, world_size, equal_steps, drop_last)
        self._own: ShardSizes | None = None  # data of this process's own, aligned with the others'

    def align(self, counts: Sequence[int], rank: int) -> None:
        """This process's data is its own share (``data={"sharded": True}``) and process ``r``
        holds ``counts[r]`` samples: take as many batches as the process with the most, stand-ins
        of weight 0 after this one's own (see :class:`ShardSizes`)."""
        self._own = ShardSizes.of_counts(counts, self.batch_size, rank, self.drop_last)
        self._sizes = list(self._own.local)

    @property
    def num_samples(self) -> int:
        return self._n

    def __len__(self) -> int:
        return len(self._sizes)

    def batch_sizes(self, epoch: int) -> list[int]:
        """This process's real samples in each batch (0 for a stand-in batch)."""
        return list(self._sizes)

    def shard_sizes(self) -> ShardSizes | None:
        if self._own is not None:
            return self._own
        return _shard_sizes(self._n, self.batch_size, self.rank, self.world_size, self.equal_steps, self.drop_last)

    def index_batches(self, epoch: int, device: torch.device | None = None) -> list[torch.Tensor]:
        """This process's batches of sample indices in ``epoch``."""
        order = epoch_order(self._n, epoch, shuffle=self.shuffle, seed=self.seed)
        if device is not None:
            order = order.to(device)
        batches = shard_batches(order, self.batch_size, self.rank, self.world_size, equal_steps=self.equal_steps,
                                drop_last=self.drop_last)
        if self._own is not None:  # its own data: stand-ins where the others have more batches
            batches += [order[:1]] * (len(self._own.local) - len(batches))
        return batches


class TensorBatches(IndexedBatches):
    """Batches sliced out of in-memory tensors (moved once to the training device).

    Under several processes (``world_size`` > 1) each process takes its shard of every epoch's
    order; ``equal_steps`` (training) gives every process the same number of batches (see
    :class:`ShardSizes`), without it (evaluation) each sample is taken exactly once.

    Example:
        >>> batches = TensorBatches(X, y, batch_size=64, shuffle=True, seed=0)
        >>> for inputs, target in batches.epoch(0): ...
    """

    def __init__(
        self,
        inputs: Inputs,
        target: Any,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        equal_steps: bool = False,
    ):
        self.inputs, self.target = inputs, target
        n = num_samples(target) if target is not None else num_samples(inputs)
        self._index(n, batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank,
                    world_size=world_size, equal_steps=equal_steps)

    def to(self, device: torch.device) -> TensorBatches:
        self.inputs = to_device(self.inputs, device)
        self.target = to_device(self.target, device)
        return self

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        bs = self.batch_size
        if not self.shuffle and self.world_size == 1 and self._own is None:
            for b in range(start, len(self)):  # contiguous slices: views, no copy
                piece = slice(b * bs, (b + 1) * bs)
                take = lambda t, piece=piece: t[piece]  # noqa: E731
                yield map_tensors(take, self.inputs), map_tensors(take, self.target)
            return
        batches = self.index_batches(epoch, first_tensor(self.inputs).device)  # type: ignore[union-attr]
        inputs, target = self.inputs, self.target
        if isinstance(inputs, torch.Tensor) and isinstance(target, torch.Tensor):  # the usual case
            for index in batches[start:]:
                yield inputs.index_select(0, index), target.index_select(0, index)
            return
        for index in batches[start:]:
            take = lambda t, index=index: t.index_select(0, index)  # noqa: E731
            yield map_tensors(take, inputs), map_tensors(take, target)


def _local_sizes(n: int, batch_size: int, rank: int, world_size: int, equal_steps: bool,
                 drop_last: bool) -> list[int]:
    """This process's real samples per batch (0 for a stand-in batch)."""
    if world_size > 1 and equal_steps:
        return ShardSizes.of(n, batch_size, rank, world_size, drop_last).local
    mine = len(range(rank, n, world_size))
    return _batch_sizes(mine, batch_size, _num_batches(mine, batch_size, drop_last))


def _shard_sizes(n: int, batch_size: int, rank: int, world_size: int, equal_steps: bool,
                 drop_last: bool) -> ShardSizes | None:
    if world_size == 1 or not equal_steps:
        return None
    return ShardSizes.of(n, batch_size, rank, world_size, drop_last)


class _OrderSampler(torch.utils.data.Sampler):
    """Index batches computed beforehand (so a DataLoader follows our seeded, resumable order)."""

    def __init__(self, batches: list[list[int]]):
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)


class DatasetBatches(IndexedBatches):
    """A map-style ``Dataset`` batched by a ``DataLoader`` that follows our epoch order (sharded
    like :class:`TensorBatches` under several processes)."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        equal_steps: bool = False,
        num_workers: int = 0,
        collate_fn: Any = None,
        pin_memory: bool = False,
        worker_init_fn: Any = None,
        target_key: str = TARGET_KEY,
        persistent_workers: bool = False,
    ):
        self.dataset, self.target_key = dataset, target_key
        self._index(len(dataset), batch_size, shuffle=shuffle, seed=seed, drop_last=drop_last,  # type: ignore[arg-type]
                    rank=rank, world_size=world_size, equal_steps=equal_steps)
        self.loader_kwargs: dict[str, Any] = {"num_workers": num_workers, "pin_memory": pin_memory}
        if collate_fn is not None:
            self.loader_kwargs["collate_fn"] = collate_fn
        if num_workers:
            self.loader_kwargs["worker_init_fn"] = WorkerIgnoringSignals(worker_init_fn)
        self.persistent = bool(num_workers and persistent_workers)
        self._kept: tuple[DataLoader, _OrderSampler] | None = None  # the persistent workers' loader

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        # The loader's seeds (its workers') come from (seed, epoch), not from torch's global
        # generator. Workers hand out batches in turn, each drawing from its own generator: a
        # resume replays the epoch's first batches through them (exact augmentation); without
        # workers the draws are the main process's, restored with the checkpoint.
        replay = start if self.loader_kwargs["num_workers"] else 0
        batches = [batch.tolist() for batch in self.index_batches(epoch)[start - replay :]]
        if self.persistent:
            return _started(self._persistent_loader(batches, _mix(self.seed, epoch)), replay, self.target_key)
        generator = torch.Generator().manual_seed(_mix(self.seed, epoch))
        loader = DataLoader(self.dataset, batch_sampler=_OrderSampler(batches), generator=generator,
                            **self.loader_kwargs)
        return _started(loader, replay, self.target_key)

    def _persistent_loader(self, batches: list[list[int]], seed: int) -> DataLoader:
        """One loader whose workers live across epochs. Each epoch's batches carry the seed
        torch would have drawn for fresh workers, and a worker reseeds itself (and runs the
        ``worker_init_fn`` again) when the seed changes: the draws are those of fresh workers."""
        drawn = torch.empty((), dtype=torch.int64).random_(generator=torch.Generator().manual_seed(seed))
        keyed = [[(int(drawn.item()), i) for i in batch] for batch in batches]
        if self._kept is None:
            sampler = _OrderSampler(keyed)
            loader = DataLoader(_EpochSeeded(self.dataset, self.loader_kwargs["worker_init_fn"]),  # type: ignore[arg-type]
                                batch_sampler=sampler, generator=torch.Generator().manual_seed(seed),
                                persistent_workers=True, **self.loader_kwargs)
            self._kept = (loader, sampler)
        loader, sampler = self._kept
        sampler.batches = keyed
        return loader


class _EpochSeeded(Dataset):
    """A Dataset read with ``(epoch seed, index)`` keys by persistent workers: at a key of a new
    epoch, the worker seeds ``random``, torch and numpy as torch seeds a fresh worker
    (``base_seed + worker id``) and runs the ``worker_init_fn`` again."""

    def __init__(self, dataset: Dataset, worker_init_fn: Any):
        self.dataset, self.worker_init_fn = dataset, worker_init_fn
        self.seeded: int | None = None

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int]]) -> list[Any]:
        base_seed = keys[0][0]
        info = torch.utils.data.get_worker_info()
        if info is not None:
            if self.seeded is None:
                self.seeded = info.seed - info.id  # torch seeded this worker for the first epoch
            if base_seed != self.seeded:
                _seed_worker(base_seed, info.id)
                self.worker_init_fn(info.id)
                self.seeded = base_seed
        indices = [index for _, index in keys]
        getitems = getattr(self.dataset, "__getitems__", None)
        return list(getitems(indices)) if getitems is not None else [self.dataset[i] for i in indices]


def _seed_worker(base_seed: int, worker_id: int) -> None:
    """What torch's worker loop does first: ``random``, torch and numpy seeded from the base seed."""
    import random

    from torch.utils.data._utils.worker import _generate_state

    seed = base_seed + worker_id
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(_generate_state(base_seed, worker_id))


class LoaderBatches(Batches):
    """A user's ``DataLoader``, used as it is (its sampler's ``set_epoch`` is called each epoch).

    A mid-epoch resume has to iterate past the batches already seen: a DataLoader cannot be
    indexed. Give tensors or a Dataset for index-arithmetic resume.
    """

    def __init__(self, loader: DataLoader, target_key: str = TARGET_KEY):
        self.loader, self.target_key = loader, target_key
        self.batch_size = loader.batch_size or 1
        self._own: ShardSizes | None = None  # this process's own share, aligned with the others'

    def own_samples(self) -> int | None:
        """Samples the loader yields per epoch, when known without loading: a plain batch
        sampler over a sampler with a length (a ``DistributedSampler``'s share included)."""
        from torch.utils.data import BatchSampler

        batch_sampler, sampler = self.loader.batch_sampler, self.loader.sampler
        if type(batch_sampler) is not BatchSampler or self.loader.batch_size is None:
            return None
        try:
            return len(sampler)  # type: ignore[arg-type]
        except TypeError:
            return None

    def align(self, counts: Sequence[int], rank: int) -> None:
        """As :meth:`IndexedBatches.align`: stand-ins after this loader's own batches."""
        self._own = ShardSizes.of_counts(counts, self.batch_size, rank, bool(self.loader.drop_last))

    def batch_sizes(self, epoch: int) -> list[int] | None:
        return list(self._own.local) if self._own is not None else None

    def shard_sizes(self) -> ShardSizes | None:
        return self._own

    @property
    def num_samples(self) -> int:
        try:
            return len(self.loader.dataset)  # type: ignore[arg-type]
        except TypeError:
            return 0

    def __len__(self) -> int:
        if self._own is not None:
            return len(self._own.local)
        try:
            return len(self.loader)
        except TypeError:
            return 0  # an iterable dataset of unknown length

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        for candidate in (getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None)):
            if hasattr(candidate, "set_epoch"):
                candidate.set_epoch(epoch)
        batches = self._started(start)
        if self._own is None:
            return batches
        real = sum(1 for size in self._own.local if size)
        return self._padded(batches, stand_ins=len(self._own.local) - max(start, real))

    def _started(self, start: int) -> Iterator[Batch]:
        loader = self.loader
        if loader.num_workers and not isinstance(loader.worker_init_fn, WorkerIgnoringSignals):
            given = loader.worker_init_fn  # the user's, called first thing in every worker
            loader.worker_init_fn = WorkerIgnoringSignals(given)
            try:
                return _started(loader, start, self.target_key)
            finally:
                loader.worker_init_fn = given
        return _started(loader, start, self.target_key)

    def _padded(self, batches: Iterator[Batch], stand_ins: int) -> Iterator[Batch]:
        """The loader's batches, then ``stand_ins`` batches of one sample (weight 0: see
        :class:`ShardSizes`) so that this process takes as many steps as the others."""
        first: Batch | None = None
        for batch in batches:
            if first is None:
                first = batch
            yield batch
        if stand_ins <= 0:
            return
        if first is None:  # resumed past this loader's own batches
            first = next(self._started(0))
        one = map_tensors(lambda t: t[:1], first)
        for _ in range(stand_ins):
            yield one


def _started(loader: DataLoader, skip: int, target_key: str = TARGET_KEY) -> Iterator[Batch]:
    """The loader's iterator, made now (it draws its seeds, starts its workers) with its first
    ``skip`` batches consumed now; the rest is read as it is iterated."""
    iterator = iter(loader)
    for _ in range(skip):
        if next(iterator, _END) is _END:
            break
    return (split_batch(batch, target_key) for batch in iterator)


_END: Any = object()


class WorkerIgnoringSignals:
    """A DataLoader ``worker_init_fn`` that makes a worker ignore Ctrl-C and SIGTERM (then
    calls the given one): a signal sent to the whole process group (a terminal's Ctrl-C, Slurm's
    scancel, systemd) reaches the workers too, and a worker that dies of it makes the loader
    raise in the main process before the trainer's graceful stop is done. The main process shuts
    its workers down as usual."""

    def __init__(self, then: Any = None):
        self.then = then

    def __call__(self, worker_id: int) -> None:
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.then is not None:
            self.then(worker_id)


def split_batch(batch: Any, target_key: str = TARGET_KEY) -> Batch:
    """``(inputs, target)`` from what a Dataset or DataLoader yields: a pair, a tuple (the last
    item the target), or a dict (its ``target_key`` the target, None when it has none; the other
    keys the inputs, passed as ``model(**inputs)``)."""
    if isinstance(batch, Mapping):
        inputs = {key: value for key, value in batch.items() if key != target_key}
        return inputs, batch.get(target_key)
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        inputs = batch[0] if len(batch) == 2 else tuple(batch[:-1])
        return inputs, batch[-1]
    raise DataError(
        f"each batch must be (inputs, target) or a dict; got {describe(batch)}. "
        "Return a pair or a dict from your Dataset's __getitem__"
    )


def batch_samples(inputs: Any, target: Any) -> int:
    """Samples in a batch: its target's leading size, or its inputs' when it has no target."""
    return num_samples(target if target is not None else inputs)


# ----------------------------------------------------------------------------- several processes


def fingerprint(batches: Batches, own: bool = False) -> tuple[int | None, str | None]:
    """``(samples, digest)`` of the data behind ``batches``, compared between processes: they
    must all hold the same data, unless each holds its own share (``own``: the samples are then
    this process's). The digest covers the shapes, types and up to 16 evenly spaced rows of
    in-memory tensors (None for a Dataset: reading its samples may cost, or draw random numbers).

    Example:
        >>> fingerprint(TensorBatches(torch.zeros(5, 2), torch.ones(5), batch_size=2))[0]
        5
    """
    if isinstance(batches, LoaderBatches):
        return (batches.own_samples() if own else batches.num_samples), None
    if not isinstance(batches, TensorBatches):
        return batches.num_samples, None
    import hashlib

    digest = hashlib.sha256()
    n = batches.num_samples
    rows = torch.linspace(0, n - 1, min(n, 16)).round().long()

    def add(tensor: torch.Tensor) -> None:
        digest.update(f"{tensor.dtype}{list(tensor.shape)}".encode())
        picked = tensor.index_select(0, rows.to(tensor.device)).reshape(len(rows), -1)
        digest.update(picked.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())

    map_tensors(add, (batches.inputs, batches.target))
    return n, digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- entry points


def make_batches(
    data: Any,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    equal_steps: bool = False,
    what: str = "data",
    target_key: str = TARGET_KEY,
    num_workers: int = 0,
    pin_memory: bool = False,
    persistent_workers: bool = False,
) -> Batches:
    """Turn what a user passed (see :data:`ACCEPTED`) into :class:`Batches`. A dict of tensors
    or arrays holds its target under ``target_key``; so do the dict batches of a Dataset. A
    Dataset is loaded by ``num_workers`` worker processes (``pin_memory`` for CUDA), kept
    across epochs when ``persistent_workers``.

    Under several processes (``world_size`` > 1) tensors and Datasets are sharded; a DataLoader
    with the default samplers is rebuilt over its dataset so that it is sharded too (see
    :func:`sharded_loader`). ``equal_steps``: training data, where every process must take the
    same number of batches.
    """
    kwargs = dict(shuffle=shuffle, seed=seed, drop_last=drop_last, rank=rank, world_size=world_size,
                  equal_steps=equal_steps)
    if isinstance(data, DataLoader):
        if world_size == 1:
            return LoaderBatches(data, target_key)
        return sharded_loader(data, what=what, target_key=target_key, **kwargs)
    if hasattr(data, "as_batches"):  # data that makes its own batches (a memory-mapped split)
        return data.as_batches(batch_size, **kwargs)
    if isinstance(data, Mapping):
        data = _dict_as_pair(data, target_key, what)
    if isinstance(data, TensorDataset):
        tensors = data.tensors
        inputs = tensors[0] if len(tensors) == 2 else tuple(tensors[:-1])
        data = (inputs, tensors[-1])
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], Dataset):
        inputs, target = pair_as_tensors(data, what)
        _check_shardable(num_samples(target), world_size, what)
        return TensorBatches(inputs, target, batch_size, **kwargs)
    if isinstance(data, Dataset):
        if not hasattr(data, "__len__"):
            raise DataError(f"{what}: an iterable Dataset has no length; wrap it in a DataLoader")
        if len(data) == 0:  # type: ignore[arg-type]
            raise DataError(f"{what}: the Dataset is empty")
        _check_shardable(len(data), world_size, what)  # type: ignore[arg-type]
        return DatasetBatches(data, batch_size, target_key=target_key, num_workers=num_workers,
                              pin_memory=pin_memory, persistent_workers=persistent_workers, **kwargs)
    raise DataError(f"{what}: unsupported type {_type_name(data)}; accepted: {ACCEPTED}")


def _dict_as_pair(data: Mapping[str, Any], target_key: str, what: str) -> tuple[dict[str, Any], Any]:
    """``{"input_ids": X, "attention_mask": M, "labels": y}`` as ``(inputs, target)``."""
    if target_key not in data:
        raise DataError(
            f"{what}: a dict of tensors holds its target under {target_key!r}, and this one has only "
            f"{', '.join(map(repr, data))}; name the target's key with data={{'target_key': ...}}"
        )
    inputs = {key: value for key, value in data.items() if key != target_key}
    if not inputs:
        raise DataError(f"{what}: the dict holds only its target {target_key!r}, no inputs")
    return inputs, data[target_key]


def sharded_loader(loader: DataLoader, *, what: str, shuffle: bool, target_key: str = TARGET_KEY,
                   **kwargs: Any) -> DatasetBatches:
    """A DataLoader turned into sharded :class:`DatasetBatches` for several processes.

    Its dataset, batch size, ``drop_last``, ``collate_fn``, workers and pinning are kept; it is
    shuffled when it was built with ``shuffle=True``. A sampler of its own (a
    ``DistributedSampler`` included, which repeats samples to even out the shards) cannot be
    sharded exactly and is refused with the fix.
    """
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

    plain = (
        isinstance(loader.sampler, (RandomSampler, SequentialSampler))
        and type(loader.batch_sampler) is BatchSampler
        and loader.batch_size is not None
    )
    if not plain or not hasattr(loader.dataset, "__len__"):
        raise DataError(
            f"{what}: under several processes traincraft shards the data itself, so a DataLoader "
            f"with a {type(loader.sampler).__name__} or an iterable dataset cannot be used; pass "
            "the Dataset (or tensors) instead, or a DataLoader built with shuffle=True/False only; "
            "when each process's loader holds its own share, say so: data={'sharded': True}"
        )
    _check_shardable(len(loader.dataset), kwargs["world_size"], what)  # type: ignore[arg-type]
    kwargs["drop_last"] = loader.drop_last
    return DatasetBatches(
        loader.dataset, int(loader.batch_size), shuffle=isinstance(loader.sampler, RandomSampler),
        num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn, target_key=target_key, **kwargs,
    )


def _check_shardable(n: int, world_size: int, what: str) -> None:
    # Every process needs a sample of its own: its figures are summed with the others'.
    if n < world_size:
        raise DataError(
            f"{what}: {n} samples for {world_size} processes; every process needs at least one "
            "sample: use fewer processes or more data"
        )


def pair_as_tensors(data: tuple[Any, Any], what: str) -> tuple[Inputs, torch.Tensor]:
    """Validate and convert an ``(X, y)`` pair: tensors, equal lengths, not empty."""
    inputs = _inputs_as_tensors(data[0], f"{what} inputs")
    target = _inputs_as_tensors(data[1], f"{what} target")  # a tensor, or a dict/tuple of them (several outputs)
    sizes = _leading_sizes(inputs)
    n = num_samples(target)
    if not sizes:
        raise DataError(f"{what}: the inputs hold no tensor")
    if n == 0 or 0 in sizes:
        raise DataError(f"{what}: empty data (inputs {describe(inputs)}, target {describe(target)})")
    if any(s != n for s in sizes):
        raise DataError(
            f"{what}: inputs and target have different numbers of samples: "
            f"inputs {describe(inputs)}, target {describe(target)}"
        )
    _check_finite(inputs, f"{what} inputs")
    _check_finite(target, f"{what} target")
    return inputs, target


def _check_finite(obj: Any, what: str) -> None:
    """NaN or inf in the data is named here, not found later as a non-finite loss."""
    tensors: list[torch.Tensor] = []
    map_tensors(tensors.append, obj)
    for tensor in tensors:
        if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
            continue
        bad = ~torch.isfinite(tensor.reshape(len(tensor), -1) if tensor.ndim else tensor.reshape(1, 1))
        rows = bad.any(1).nonzero().flatten()
        raise DataError(
            f"{what}: {int(bad.sum()):,} values are NaN or inf, in {len(rows):,} samples (the first: "
            f"sample {int(rows[0])}); remove or impute them before training"
        )


def make_predict_batches(data: Any, *, batch_size: int) -> Batches:
    """Batches for ``predict``: inputs alone (tensor, array, tuple, dict), a Dataset or a DataLoader."""
    if isinstance(data, (DataLoader, Dataset)):
        return make_batches(data, batch_size=batch_size, shuffle=False, seed=0, what="predict data")
    if isinstance(data, (torch.Tensor, np.ndarray, Mapping)) or (
        isinstance(data, tuple) and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in data)
    ):
        inputs = _inputs_as_tensors(data, "predict inputs")
        if num_samples(inputs) == 0:
            raise DataError(f"predict inputs: empty data ({describe(inputs)})")
        _check_finite(inputs, "predict inputs")
        return TensorBatches(inputs, None, batch_size)
    raise DataError(
        f"predict data: unsupported type {_type_name(data)}; accepted: a tensor or numpy array "
        "(or a tuple/dict of them), a Dataset or a DataLoader"
    )


def split_off(data: Any, fraction: float, *, seed: int) -> tuple[Any, Any]:
    """Carve a seeded validation share off the training data: ``(train, val)``."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"val_split must be between 0 and 1, got {fraction}")
    if isinstance(data, DataLoader):
        raise DataError("val_split cannot split a DataLoader: pass val= explicitly")
    if isinstance(data, TensorDataset):
        data = (data.tensors[0] if len(data.tensors) == 2 else tuple(data.tensors[:-1]), data.tensors[-1])
    if isinstance(data, tuple) and len(data) == 2 and not isinstance(data[0], Dataset):
        inputs, target = pair_as_tensors(data, "train")
        n = num_samples(target)
    elif isinstance(data, Dataset):
        n = len(data)  # type: ignore[arg-type]
    else:
        raise DataError(f"train: unsupported type {_type_name(data)}; accepted: {ACCEPTED}")
    n_val = round(n * fraction)
    if n_val == 0 or n_val == n:
        raise DataError(f"val_split={fraction} of {n} samples leaves an empty split")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_mix(seed, -1)))
    val_index, train_index = order[:n_val].sort().values, order[n_val:].sort().values
    if isinstance(data, Dataset):
        return Subset(data, train_index.tolist()), Subset(data, val_index.tolist())
    pick = lambda index: (  # noqa: E731
        map_tensors(lambda t: t[index], inputs), target[index]
    )
    return pick(train_index), pick(val_index)


def _type_name(data: Any) -> str:
    if isinstance(data, Sequence) and not isinstance(data, str):
        return f"{type(data).__name__} of {len(data)} items"
    return type(data).__name__


def concatenate(outputs: list[Any]) -> Any:
    """Batches of model outputs (tensors, or dicts/tuples of them) joined along the batch."""
    if not outputs:
        return torch.empty(0)
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    if isinstance(first, dict):
        return {k: torch.cat([o[k] for o in outputs]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(torch.cat([o[i] for o in outputs]) for i in range(len(first)))
    raise TraincraftError(f"predict: cannot concatenate model outputs of type {type(first).__name__}")
