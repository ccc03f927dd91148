"""Several processes: torchrun's process group, DistributedDataParallel, reductions, stopping together.

torchrun (or ``traincraft fit --nproc N``, which calls torch's own launcher) starts one process per
device and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``. The
Trainer reads them (:func:`join`): with ``WORLD_SIZE`` above 1 it joins the process group (nccl on
CUDA, gloo on the CPU), takes the GPU of its ``LOCAL_RANK``, and wraps the model in
``DistributedDataParallel`` (:func:`wrap_model`) for the training forward passes only.

What holds under several processes, and where it is done:

* data: each process takes every ``world_size``-th sample of the epoch's seeded order
  (:func:`traincraft.data.shard_batches`); training gives every process the same number of steps,
  evaluation takes each sample exactly once.
* gradients: each micro-batch is weighted by its real samples and the window divided by the
  window's samples over all processes (known by arithmetic, no message), so that DDP's average is
  the exact mean over the global batch, uneven last batch included (:class:`~traincraft.step.Stepper`).
* figures: loss and metric sums and counts are summed over the processes once per epoch
  (:func:`reduce_figures`): every process sees the same figures, so early stopping, plateau
  schedules and checkpoints decide the same everywhere.
* stopping: a stop asked on one process (a signal, a callback) is agreed on by all of them
  (:class:`StopVote`) so that none waits forever on the others.
* files: only rank 0 writes; checkpoints hold the plain model and every process's random state.

Example:
    >>> # torchrun --nproc-per-node 2 train.py   (train.py builds a Trainer as usual)
    >>> trainer = Trainer(model, loss="mse", batch_size=32)   # 32 per process: global batch 64
    >>> trainer.fit((X, y), val=(X_val, y_val))
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from traincraft.errors import TraincraftError

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel

    from traincraft.metrics import MetricSet, RunningMeans
    from traincraft.state import TrainState

#: Seconds a process waits for the others (to join, in a collective) before it gives up.
DEFAULT_TIMEOUT = 300.0
#: What torchrun sets for each process.
ENVIRONMENT = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(TraincraftError, RuntimeError):
    """Several processes could not start or go on together (a process died, a port is taken, ...)."""


@dataclass(frozen=True)
class World:
    """Where this process stands among the others.

    Attributes:
        rank: this process's number, 0 to ``world_size - 1``; rank 0 writes the files.
        world_size: the number of processes (1: no process group, no DDP).
        local_rank: this process's number on its machine (which GPU it takes).
        device: the device this process trains on.
    """

    device: torch.device
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


# ----------------------------------------------------------------------------- joining


def launched_world_size() -> int:
    """``WORLD_SIZE`` from the environment torchrun sets (1 when it is not set)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"WORLD_SIZE={value!r} in the environment is not a number") from None


def join(device: torch.device, *, timeout: float = DEFAULT_TIMEOUT) -> World:
    """This process's :class:`World`, joining the process group torchrun describes when needed.

    A process group initialised beforehand (by the user, with options of their own) is used as it
    is. Without one and with ``WORLD_SIZE`` at most 1, nothing happens: one process, ``device``.

    Args:
        device: the device asked for; ``cuda`` without an index becomes ``cuda:LOCAL_RANK``.
        timeout: seconds to wait for the other processes, to join and in every collective.

    Example:
        >>> world = join(torch.device("cpu"), timeout=60)   # under torchrun --nproc-per-node 2
        >>> world.rank, world.world_size
        (0, 2)
    """
    import torch.distributed as dist

    if not timeout > 0:
        raise DistributedError(f"dist_timeout must be > 0 seconds, got {timeout}")
    initialised = dist.is_available() and dist.is_initialized()
    size = dist.get_world_size() if initialised else launched_world_size()
    if size <= 1:
        return World(device=device)
    if not dist.is_available():
        raise DistributedError("WORLD_SIZE > 1 but this build of torch has no torch.distributed")
    if not initialised:
        _require_environment()
    rank = dist.get_rank() if initialised else int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = process_device(device, local_rank)
    if not initialised:
        _init_process_group(device, rank, size, timeout)
    if "group" not in _CONTROL:  # once per process
        atexit.register(_leave, destroy=not initialised)  # a group the user made stays theirs
    _control_group(timeout)
    return World(device=device, rank=rank, world_size=size, local_rank=local_rank)


def backend_for(device: torch.device) -> str:
    """nccl for CUDA devices, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def process_device(device: torch.device, local_rank: int) -> torch.device:
    """The device of the process with ``local_rank``: its own GPU, or the CPU."""
    if device.type == "cuda":
        if device.index is None:
            count = torch.cuda.device_count()
            if local_rank >= count:
                raise DistributedError(
                    f"LOCAL_RANK {local_rank} but torch sees {count} GPU(s) on this machine: start at "
                    "most one process per GPU (torchrun --nproc-per-node, traincraft fit --nproc)"
                )
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        return device
    if device.type != "cpu":
        raise DistributedError(
            f"several processes train on CUDA (nccl) or on the CPU (gloo), not on {device.type}: "
            "set the device to cpu (recipe train.device, Trainer(device=...))"
        )
    return device


def _require_environment() -> None:
    needed = ("RANK", "MASTER_ADDR", "MASTER_PORT")
    missing = [key for key in needed if key not in os.environ]
    if missing:
        raise DistributedError(
            f"WORLD_SIZE is set but {', '.join(missing)} not: start the processes with torchrun "
            "(or traincraft fit --nproc N), which sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT"
        )


def _init_process_group(device: torch.device, rank: int, size: int, timeout: float) -> None:
    import torch.distributed as dist

    started = time.monotonic()
    try:
        dist.init_process_group(
            backend_for(device), rank=rank, world_size=size, timeout=datetime.timedelta(seconds=timeout)
        )
    except Exception as err:  # noqa: BLE001 - every way of failing to join gets one line
        raise _join_error(err, size, timeout, time.monotonic() - started) from err


def _leave(destroy: bool) -> None:
    """At exit, while Python is whole: gloo's worker threads release each finished collective a
    moment after it returns, and a tensor released once the interpreter shuts down aborts the
    process ("terminate called without an active exception"). Give them that moment, then
    leave the group."""
    import torch.distributed as dist

    time.sleep(0.05)
    if destroy and dist.is_initialized():
        with contextlib.suppress(Exception):
            dist.destroy_process_group()
    _CONTROL.clear()


def _join_error(err: Exception, size: int, timeout: float, elapsed: float) -> DistributedError:
    """One line for a failure to join. Only a wait as long as the timeout is blamed on processes
    that did not come; anything sooner (a refused or reset connection, gloo's own connect
    timeout on a restart) is reported as what it is."""
    text = str(err)
    where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    if "EADDRINUSE" in text or "address already in use" in text.lower():
        return DistributedError(
            f"MASTER_PORT {os.environ.get('MASTER_PORT')} is in use by another program or run: choose "
            "another port (traincraft fit --master-port, torchrun --master-port)"
        )
    if ("timed out" in text.lower() or "timeout" in text.lower()) and elapsed >= 0.9 * timeout:
        return DistributedError(
            f"not all {size} processes joined at {where} within dist_timeout={timeout:g} s: check that "
            "every process was started with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE"
        )
    return DistributedError(
        f"could not join the {size} processes at {where} (after {elapsed:.1f} s of dist_timeout={timeout:g} s): "
        f"{_first_line(text)}"
    )


_CONTROL: dict[str, Any] = {}


def _control_group(timeout: float) -> Any:
    """A gloo group for small host-side messages (stop votes, objects): under nccl they then
    cost no GPU synchronisation. The default group when it is gloo already."""
    import torch.distributed as dist

    if "group" not in _CONTROL:
        if dist.get_backend() == "gloo":
            _CONTROL["group"] = None
        else:
            _CONTROL["group"] = dist.new_group(backend="gloo", timeout=datetime.timedelta(seconds=timeout))
    return _CONTROL["group"]


def control_group() -> Any:
    """The group of :func:`_control_group` (None: the default group)."""
    return _CONTROL.get("group")


# ----------------------------------------------------------------------------- the model


def split_wrapper(model: nn.Module) -> tuple[nn.Module, DistributedDataParallel | None]:
    """``(plain module, DDP)`` for a model the user wrapped in DDP already (its options kept);
    ``(model, None)`` otherwise."""
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return model.module, model
    return model, None


def convert_sync_batchnorm(model: nn.Module, world: World) -> nn.Module:
    """Batch-norm layers turned into ``SyncBatchNorm`` (statistics over the global batch).

    One process: the model as it is (nothing to synchronise, so a recipe written for several GPUs
    still runs on a laptop). Several processes need CUDA: torch's SyncBatchNorm runs on GPUs only.

    Example:
        >>> model = convert_sync_batchnorm(model, world)
    """
    if not world.distributed:
        return model
    if world.device.type != "cuda":
        raise DistributedError(
            "sync_batchnorm needs CUDA devices (torch's SyncBatchNorm runs on GPUs only); on the CPU "
            "each process normalises over its own batch: set sync_batchnorm to false"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model)


def wrap_model(model: nn.Module, world: World) -> DistributedDataParallel:
    """``model`` in ``DistributedDataParallel`` on this process's device (rank 0's weights are
    broadcast to every process when it is built)."""
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [world.device.index] if world.device.type == "cuda" else None
    try:
        return DistributedDataParallel(model, device_ids=device_ids)
    except (RuntimeError, ValueError) as err:
        raise DistributedError(f"DistributedDataParallel refused the model: {_first_line(str(err))}") from err


# ----------------------------------------------------------------------------- reductions


def all_reduce_sum(tensors: Sequence[torch.Tensor]) -> None:
    """Sum ``tensors`` over every process, in place: one all-reduce per dtype and device."""
    import torch.distributed as dist

    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    # Sums made during evaluation are inference tensors: only inference mode may update them.
    with torch.inference_mode(any(t.is_inference() for t in tensors)), torch.no_grad():
        for group in groups.values():
            flat = torch.cat([t.detach().reshape(-1) for t in group])
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
            offset = 0
            for tensor in group:
                tensor.copy_(flat[offset : offset + tensor.numel()].view_as(tensor))
                offset += tensor.numel()


def all_gather_cat(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor concatenated along dim 0 over every process, in rank order; the processes'
    lengths may differ (every sample's scores for AUROC). One read of the lengths, then one
    all-gather per tensor, padded to the longest."""
    import torch.distributed as dist

    world = dist.get_world_size()
    with torch.inference_mode(any(t.is_inference() for t in tensors)), torch.no_grad():
        lengths = torch.tensor([t.shape[0] for t in tensors], dtype=torch.int64, device=tensors[0].device)
        every = [torch.empty_like(lengths) for _ in range(world)]
        dist.all_gather(every, lengths)
        table = torch.stack(every).tolist()  # [rank][tensor]
        gathered = []
        for i, tensor in enumerate(tensors):
            longest = max(row[i] for row in table)
            pad = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
            parts = [tensor.new_empty((longest, *tensor.shape[1:])) for _ in range(world)]
            dist.all_gather(parts, torch.cat([tensor.detach(), pad]).contiguous())
            gathered.append(torch.cat([part[: row[i]] for part, row in zip(parts, table)]))
    return gathered


def start_sum(tensor: torch.Tensor) -> Callable[[], torch.Tensor]:
    """Start summing ``tensor`` over every process, in place, without waiting; returns the
    function that waits for the sum and gives it (a ratio loss's window denominator: the sum runs
    while the window's last backward computes)."""
    import torch.distributed as dist

    work = dist.all_reduce(tensor, op=dist.ReduceOp.SUM, async_op=True)

    def wait() -> torch.Tensor:
        work.wait()
        return tensor

    return wait


def reduce_figures(means: RunningMeans, metrics: MetricSet) -> None:
    """Sum an epoch's loss sums, counts and metric accumulators over every process, in place,
    once, right before they are read: every process then computes the same figures (the ranking
    metrics gather every process's scores instead)."""
    means.sync(all_reduce_sum)
    metrics.sync(all_reduce_sum, all_gather_cat)


def all_gather_objects(obj: Any) -> list[Any]:
    """``obj`` of every process, in rank order (pickled; for small, rare messages)."""
    import torch.distributed as dist

    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, obj, group=control_group())
    return gathered


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=control_group())
    return box[0]


@torch.no_grad()
def broadcast_weights(module: nn.Module) -> None:
    """Rank 0's weights and buffers copied into ``module`` on every process."""
    import torch.distributed as dist

    for tensor in module.state_dict().values():
        dist.broadcast(tensor, src=0)


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process."""
    import torch.distributed as dist

    value = torch.tensor([int(flag)], dtype=torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MIN, group=control_group())
    return bool(value[0])


# ----------------------------------------------------------------------------- the data


def agree_on_data(world: World, train: Any, others: dict[str, Any], *, sharded: bool) -> None:
    """Every process holds the same data, or (``sharded``) each its own share; one small
    all-gather at the start, before any step, so that a mismatch is one clear line instead of
    a silently halved data set or a collective that never matches.

    With ``sharded``, the training batches learn the other processes' sample counts
    (:meth:`~traincraft.data.IndexedBatches.align`): every process then takes as many steps as
    the one with the most, and the window's samples over all processes stay known.

    Args:
        train: this process's training :class:`~traincraft.data.Batches` (None: none).
        others: evaluation batches by what they are (``{"val": ...}``; None values are skipped).
    """
    from traincraft.data import fingerprint

    named = {what: batches for what, batches in {"train": train, **others}.items() if batches is not None}
    everyone = all_gather_objects({what: fingerprint(batches, own=sharded) for what, batches in named.items()})
    for what in sorted(set().union(*everyone)):  # every process checks the same, and fails alike
        batches = named.get(what)
        prints = [None if seen.get(what) is None else tuple(seen[what]) for seen in everyone]
        if sharded:
            _check_own_shares(what, prints)
            if batches is train:
                batches.align([count for count, _ in prints], world.rank)
        elif len(set(prints)) > 1:
            raise _different_data(what, prints)


def _different_data(what: str, prints: list[Any]) -> TraincraftError:
    from traincraft.errors import DataError

    if None in prints:
        return DataError(f"{what}: some processes were given no {what} data and others were: give it to every process")
    counts = [count for count, _ in prints]
    if len(set(counts)) > 1:
        held = ", ".join(f"rank {rank}: {count}" for rank, count in enumerate(counts))
        found = f"the processes hold different numbers of samples ({held})"
    else:
        found = f"the processes hold different samples ({counts[0]} each)"
    return DataError(
        f"{what}: {found}. traincraft shards the data itself, so every process must be given the same "
        "data; when each process loads its own share (per-process files, a DistributedSampler), say so: "
        "Trainer(data={'sharded': True})"
    )


def _check_own_shares(what: str, prints: list[Any]) -> None:
    from traincraft.errors import DataError

    if None in prints:
        raise DataError(f"{what}: some processes were given no {what} data and others were: give it to every process")
    if any(count is None for count, _ in prints):
        raise DataError(
            f"{what}: with data sharded, each process's number of samples must be known beforehand: pass a "
            "Dataset or tensors, or a DataLoader with a plain batch size and a sampler with a length"
        )
    digests = {digest for _, digest in prints}
    if len(prints) > 1 and len(digests) == 1 and None not in digests:
        raise DataError(
            f"{what}: data is marked sharded but every process holds the same {prints[0][0]} samples; "
            "leave data={'sharded': True} out and traincraft shards them (or give each process its own share)"
        )


# ----------------------------------------------------------------------------- stopping together


class StopVote:
    """Makes every process stop after the same optimizer step.

    DDP all-reduces gradients at every step: a process that stops alone leaves the others
    waiting. So a stop asked on one process only (Ctrl-C or SIGTERM reaching it first, a callback
    deciding from its own data) is not acted on at once: it is put to a vote.

    * At vote steps, each process sends its flag in a non-blocking all-reduce (MAX) of two
      integers on the host, and reads the previous vote's result: a stop asked before vote step
      ``v`` takes effect on every process after the next vote step. No host-device
      synchronisation.
    * Votes are :attr:`interval` steps apart, an interval the processes agree on in the vote
      itself (each proposes as many steps as fit in :attr:`target_seconds` by its own clock; the
      smallest proposal wins): a vote costs about 0.25 ms under gloo, 10-20% of a small model's
      step when taken at every step, and a stop still takes effect within about
      ``2 × target_seconds`` (or two steps, when a step takes longer).
    * At the end of an epoch's training loop, before ``on_epoch_end`` and after it, the vote is
      blocking: a stop asked there takes effect right away, on every process.

    Stops every process reaches by itself at the same point (``max_steps``, ``max_epochs``, early
    stopping on figures that are the same everywhere) go through the same vote and lose nothing.

    Example:
        >>> vote = StopVote()
        >>> vote.after_step(trainer.state)   # in the loop, after each optimizer step
        >>> vote.settle(trainer.state)       # at the agreement points of an epoch
    """

    #: Seconds of training between two votes the processes aim for.
    target_seconds = 0.02
    #: The most steps between two votes.
    max_interval = 64

    def __init__(self) -> None:
        # [stop flag, -proposed interval] on the host: one MAX reduces both (no device sync to read it).
        self.flag = torch.zeros(2, dtype=torch.int64)
        self.work: Any = None  # the all-reduce in flight
        self.requested: str | None = None  # this process's own stop request, not agreed yet
        self.agreed = False
        self.interval = 1  # steps between votes, agreed by all
        self.next_vote: int | None = None  # the step after which the next vote is due
        self._since: tuple[int, float] | None = None  # (step, clock) at the last vote

    def request(self, reason: str) -> None:
        """This process asks to stop (the first reason is kept)."""
        if self.requested is None:
            self.requested = reason

    def after_step(self, state: TrainState) -> None:
        """Non-blocking, at vote steps: exchange the flag, act on the previous vote's result."""
        if self.agreed:
            return
        if self.next_vote is not None and state.step < self.next_vote:
            self._take_local(state)
            return
        self._take_local(state)
        if self._finish():
            self._adopt(state)
            return
        self._start(state.step)
        self.next_vote = state.step + self.interval

    def settle(self, state: TrainState) -> None:
        """Blocking: every request so far is known to every process when it returns."""
        if self.agreed:
            return
        self._take_local(state)
        asked = self._finish()
        if not asked:
            self._start(state.step)
            asked = self._finish()
        if asked:
            self._adopt(state)
        else:
            self.next_vote = state.step + self.interval

    def _take_local(self, state: TrainState) -> None:
        # A stop this process reached on its own waits for the vote, so the loop goes on for now.
        if state.should_stop:
            self.request(state.stop_reason or "stopped")
            state.should_stop, state.stop_reason = False, None

    def _proposal(self, step: int) -> int:
        """The interval this process proposes: as many steps as fit in ``target_seconds``."""
        now = time.perf_counter()
        since, self._since = self._since, (step, now)
        if since is None or step <= since[0]:
            return self.interval
        per_step = (now - since[1]) / (step - since[0])
        if per_step <= 0:
            return self.max_interval
        return max(1, min(self.max_interval, int(self.target_seconds / per_step)))

    def _start(self, step: int) -> None:
        import torch.distributed as dist

        self.flag[0] = 1 if self.requested is not None else 0
        self.flag[1] = -self._proposal(step)
        self.work = dist.all_reduce(self.flag, op=dist.ReduceOp.MAX, group=control_group(), async_op=True)

    def _finish(self) -> bool:
        if self.work is None:
            return False
        self.work.wait()
        self.work = None
        self.interval = max(1, int(-self.flag[1]))  # the smallest proposal: the same everywhere
        return bool(self.flag[0])

    def abandon(self) -> None:
        """After a failure: wait for the exchange in flight (it ends, with an error, within the
        timeout), so that no collective outlives the training loop."""
        work, self.work = self.work, None
        if work is not None:
            with contextlib.suppress(Exception):
                work.wait()

    def _adopt(self, state: TrainState) -> None:
        reasons = all_gather_objects(self.requested)
        self.agreed = True
        state.should_stop = True
        state.stop_reason = next((reason for reason in reasons if reason), "stopped")


# ----------------------------------------------------------------------------- failures


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` says that another process is gone or did not answer in time."""
    import torch.distributed as dist

    if isinstance(err, TraincraftError):
        return False  # already one clear line
    if isinstance(err, getattr(dist, "DistError", ())):
        return True
    # gloo raises plain RuntimeErrors from inside DDP's backward and the collectives.
    text = str(err).lower()
    markers = ("connection closed", "connection reset", "timed out", "timeout", "pair closure",
               "broken pipe", "nccl communicator", "gloo")
    return isinstance(err, RuntimeError) and any(marker in text for marker in markers)


@contextlib.contextmanager
def failures_explained(world: World, timeout: float, vote: StopVote | None = None) -> Iterator[None]:
    """Turn the error a lost process causes in the others into one clear line."""
    try:
        yield
    except BaseException as err:
        if vote is not None:
            vote.abandon()
        if not world.distributed or not is_collective_failure(err):
            raise
        raise DistributedError(
            f"rank {world.rank} of {world.world_size}: lost contact with the other processes (one of "
            f"them stopped, died, or did not answer within dist_timeout={timeout:g} s); "
            f"{_first_line(str(err))}"
        ) from err


@contextlib.contextmanager
def collective_call(world: World, timeout: float, call: str, alone: str) -> Iterator[None]:
    """A call that every process must make (``evaluate()``): when another process does not
    take part, one line that says so and how to call it on one process (``alone``), not gloo's
    own message."""
    try:
        yield
    except BaseException as err:
        if not world.distributed or not is_collective_failure(err):
            raise
        raise DistributedError(
            f"rank {world.rank} of {world.world_size}: {call} under several processes is collective, and "
            f"the other processes did not take part within dist_timeout={timeout:g} s (they left, or are "
            f"elsewhere): call it on every process, or {alone} on one process alone; "
            f"{_first_line(str(err))}"
        ) from err


def finish_together(world: World, timeout: float) -> None:
    """Every process has reached the end of ``fit`` within ``timeout`` seconds of the others, or
    an error names those that did not: a process hung after the last collective (in a callback,
    writing a file) would otherwise keep the job alive for ever."""
    if not world.distributed:
        return
    import torch.distributed as dist

    try:
        dist.monitored_barrier(group=_control_group(timeout), timeout=datetime.timedelta(seconds=timeout),
                               wait_all_ranks=True)
    except RuntimeError as err:
        raise DistributedError(
            f"rank {world.rank} of {world.world_size}: not every process reached the end of the run within "
            f"dist_timeout={timeout:g} s (one of them hangs or died after training); {_first_line(str(err))}"
        ) from err


def _first_line(text: str) -> str:
    """The first sentence of torch's message, without the source location gloo puts first."""
    line = next((part.strip() for part in text.splitlines() if part.strip()), text)
    line = re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", line)
    line = line.split(". ")[0].rstrip(".")
    return line if len(line) <= 300 else line[:297] + "..."


# ----------------------------------------------------------------------------- launching


def usable_cores() -> int:
    """The CPU cores this process may run on (a container's or taskset's limit, not the machine's)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def check_nproc(nproc: int, device_type: str) -> None:
    """``--nproc`` between 1 and one process per GPU (CUDA) or per CPU core."""
    if nproc < 1:
        raise DistributedError(f"--nproc must be at least 1, got {nproc}")
    if device_type == "cuda":
        count = torch.cuda.device_count()
        if nproc > count:
            raise DistributedError(
                f"--nproc {nproc}, but torch sees {count} GPU(s): one process per GPU, so at most {count}"
            )
        return
    cores = usable_cores()
    if nproc > cores:
        raise DistributedError(
            f"--nproc {nproc}, but this machine has {cores} CPU cores: each process needs one, so at most {cores}"
        )


def check_port(port: int) -> None:
    """A clear error when ``port`` cannot be listened on (another run or program holds it)."""
    if not 0 < port < 65536:
        raise DistributedError(f"--master-port must be between 1 and 65535, got {port}")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("", port))
        except OSError as err:
            raise DistributedError(
                f"--master-port {port} is in use ({err.strerror}): choose another port, or leave "
                "--master-port out to take a free one"
            ) from None


def check_nodes(nnodes: int, node_rank: int, master_addr: str | None) -> None:
    """``--nnodes``, ``--node-rank`` and ``--master-addr`` that fit together."""
    if nnodes < 1:
        raise DistributedError(f"--nnodes must be at least 1, got {nnodes}")
    if not 0 <= node_rank < nnodes:
        raise DistributedError(f"--node-rank must be between 0 and {nnodes - 1} (--nnodes {nnodes}), got {node_rank}")
    if nnodes > 1 and not master_addr:
        raise DistributedError(
            "--nnodes needs --master-addr: the address of the machine started with --node-rank 0, the same on every machine"
        )
    if nnodes == 1 and master_addr:
        raise DistributedError("--master-addr is for several machines: give --nnodes too (one machine needs no address)")


def processes_per_node(world_size: int, nnodes: int) -> int:
    """The processes each of ``nnodes`` machines starts for ``world_size`` in all."""
    if world_size % nnodes:
        raise DistributedError(
            f"the run was trained by {world_size} processes, which {nnodes} machines cannot share equally: "
            "give --nproc (processes per machine) and --nnodes that multiply to that number"
        )
    return world_size // nnodes


def launch(command: Sequence[str], *, nproc: int, master_port: int | None = None, debug: bool = False,
           nnodes: int = 1, node_rank: int = 0, master_addr: str | None = None) -> int:
    """Run ``python -m traincraft COMMAND`` in ``nproc`` local processes through torch's launcher.

    ``torch.distributed.run`` (torchrun) starts the processes with their environment and, when one
    fails, stops the others. Without ``master_port`` a free port is taken (torchrun's standalone
    rendezvous). Each process gets ``OMP_NUM_THREADS`` = cores / processes unless it is set.
    With ``nnodes`` above 1 the same call runs on every machine, each with its ``node_rank``;
    they meet at ``master_addr:master_port`` (29500 unless given; torchrun's static rendezvous).

    Returns:
        0, 130 after Ctrl-C (the processes save a checkpoint first), or the failed process's exit
        code after printing one line that names each failed rank.

    Example:
        >>> launch(["fit", "recipe.yaml", "--run-dir", "runs/a"], nproc=2)
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nnodes > 1:
        port = 29500 if master_port is None else master_port
        if node_rank == 0 and _is_local(str(master_addr)):
            check_port(port)
        rendezvous = ["--nnodes", str(nnodes), "--node-rank", str(node_rank), "--master-addr", str(master_addr),
                      "--master-port", str(port)]
    elif master_port is not None:
        check_port(master_port)
        rendezvous = ["--nnodes", "1", "--master-addr", "127.0.0.1", "--master-port", str(master_port)]
    else:
        rendezvous = ["--standalone"]
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, usable_cores() // nproc)))
    if not debug:  # torchrun's own log lines repeat what the one line below says
        for name in list(logging.Logger.manager.loggerDict):
            if name.startswith("torch.distributed.elastic"):
                logging.getLogger(name).setLevel(logging.CRITICAL)
    args = parse_args([*rendezvous, "--nproc-per-node", str(nproc), "--max-restarts", "0",
                       "--module", "traincraft", *command])
    try:
        run(args)
    except ChildFailedError as err:
        print(f"error: {describe_failures(err.failures)}", file=sys.stderr)
        codes = [f.exitcode for f in err.failures.values() if f.exitcode > 0]
        return codes[0] if codes else 1
    except SignalException:
        return 130  # Ctrl-C: the processes have said what they saved; nothing to add
    return 0


def _is_local(host: str) -> bool:
    """Whether ``host`` names this machine (then its port can be checked before starting)."""
    try:
        address = socket.gethostbyname(host)
        return address.startswith("127.") or address in {"0.0.0.0", socket.gethostbyname(socket.gethostname())}
    except OSError:
        return False


def describe_failures(failures: dict[int, Any]) -> str:
    """One line: how each failed process ended, the one that ended first named first."""
    import signal

    def how(failure: Any) -> str:
        if failure.exitcode < 0:
            with contextlib.suppress(ValueError):
                return f"was killed by {signal.Signals(-failure.exitcode).name}"
            return f"was killed by signal {-failure.exitcode}"
        return f"exited with code {failure.exitcode}"

    def cause_first(item: tuple[int, Any]) -> tuple[int, int, int]:
        # Killed by a signal (not torchrun's SIGTERM to the survivors): most likely the cause;
        # then the processes that failed; last those torchrun stopped.
        code = item[1].exitcode
        kind = 2 if code == -signal.SIGTERM else 1 if code >= 0 else 0
        return kind, item[1].timestamp, item[0]

    ordered = sorted(failures.items(), key=cause_first)
    parts = [f"rank {rank} {how(failure)}" for rank, failure in ordered]
    return "training stopped: " + "; ".join(parts) + " (each process's own message, if any, is above)"
