"""Several processes: sharding, exact gradients and figures, stopping together, files, failures.

Most checks need no process group: sharding arithmetic, the stepper's ``no_sync`` and divisor,
sums reduced in place, messages. Three launches of two CPU processes (gloo) cover the rest:
``tests/distributed_worker.py`` under torchrun (equivalence with one process, identical
parameters after every step, exact counts, one gradient all-reduce per accumulation window,
the command line under torchrun, a stop asked on one process only, a hang past the timeout),
then ``traincraft fit --nproc 2`` resuming the interrupted run (compared bitwise with the
uninterrupted one), then ``--nproc 2`` with a process that dies.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

from traincraft import distributed, judging, losses
from traincraft.checkpoint import CheckpointError, load_checkpoint
from traincraft.data import (
    DatasetBatches,
    ShardSizes,
    TensorBatches,
    epoch_order,
    make_batches,
    shard_batches,
)
from traincraft.errors import DataError
from traincraft.metrics import RunningMeans
from traincraft.step import Stepper

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import distributed_worker as worker  # noqa: E402

LAUNCH_TIMEOUT = 240  # a hang fails the test instead of blocking CI


# ----------------------------------------------------------------------------- sharding


@pytest.mark.parametrize("n, batch, world", [(101, 16, 2), (97, 16, 2), (33, 16, 2), (10, 3, 4), (64, 8, 2)])
def test_training_shards_together_are_the_single_process_batches(n: int, batch: int, world: int) -> None:
    order = epoch_order(n, 3, shuffle=True, seed=7)
    one = shard_batches(order, batch * world, 0, 1, equal_steps=True)
    shards = [shard_batches(order, batch, r, world, equal_steps=True) for r in range(world)]
    sizes = [ShardSizes.of(n, batch, r, world) for r in range(world)]
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == len(one)  # the same steps everywhere
    for b, whole in enumerate(one):
        real = [s[b][: sizes[r].local[b]] for r, s in enumerate(shards)]
        assert sorted(torch.cat(real).tolist()) == sorted(whole.tolist())  # the same samples, once
        assert sizes[0].total[b] == len(whole)
        assert all(len(s[b]) == max(1, sizes[r].local[b]) for r, s in enumerate(shards))


def test_a_shard_that_ends_on_a_batch_boundary_gets_a_stand_in_of_weight_zero() -> None:
    # 33 samples, 2 processes: rank 0 has 17 (16 + 1), rank 1 has 16 (one full batch, then none).
    sizes = ShardSizes.of(33, 16, rank=1, world_size=2)
    assert sizes.local == [16, 0] and sizes.total == [32, 1]
    assert sizes.window_total(0, 2) == 33 and sizes.window_total(1, 2) == 1
    batches = TensorBatches(torch.randn(33, 2), torch.arange(33), 16, shuffle=True, rank=1, world_size=2,
                            equal_steps=True)
    assert [len(t) for _, t in batches.epoch(0)] == [16, 1] and batches.batch_sizes(0) == [16, 0]


def test_each_process_gets_a_new_order_every_epoch_and_evaluation_counts_each_sample_once() -> None:
    data = (torch.randn(9, 2), torch.arange(9))
    kwargs = dict(batch_size=4, shuffle=True, seed=3, world_size=2, equal_steps=True)
    ranks = [make_batches(data, rank=r, **kwargs) for r in (0, 1)]
    epochs = [[torch.cat([t for _, t in b.epoch(e)]).tolist() for b in ranks] for e in (0, 1)]
    assert epochs[0][0] != epochs[1][0] and epochs[0][1] != epochs[1][1]  # set_epoch never forgotten
    for rank0, rank1 in epochs:  # 5 and 4 samples: rank 1's second batch is a stand-in
        assert sorted(rank0 + rank1[:-1]) == list(range(9))
    data = (torch.randn(11, 2), torch.arange(11))
    evals = [make_batches(data, batch_size=4, shuffle=False, seed=0, rank=r, world_size=2) for r in (0, 1)]
    assert sorted(t for b in evals for _, y in b.epoch(0) for t in y.tolist()) == list(range(11))
    assert [len(b) for b in evals] == [2, 2] and [b.batch_sizes(0) for b in evals] == [[4, 2], [4, 1]]


def test_a_dataset_and_a_plain_dataloader_shard_like_tensors() -> None:
    X, y = torch.randn(9, 2), torch.arange(9)
    tensors = make_batches((X, y), batch_size=2, shuffle=True, seed=1, rank=1, world_size=2, equal_steps=True)
    dataset = make_batches(TensorDatasetNoSlicing(X, y), batch_size=2, shuffle=True, seed=1, rank=1,
                           world_size=2, equal_steps=True)
    loader = make_batches(DataLoader(TensorDataset(X, y), batch_size=2, shuffle=True), batch_size=99,
                          shuffle=False, seed=1, rank=1, world_size=2, equal_steps=True)
    assert isinstance(dataset, DatasetBatches) and isinstance(loader, DatasetBatches) and loader.shuffle
    expected = [t.tolist() for _, t in tensors.epoch(2)]
    assert [t.tolist() for _, t in dataset.epoch(2)] == expected == [t.tolist() for _, t in loader.epoch(2)]


class TensorDatasetNoSlicing(torch.utils.data.Dataset):
    def __init__(self, X: torch.Tensor, y: torch.Tensor):
        self.X, self.y = X, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.X[i], self.y[i]


def test_data_that_cannot_be_sharded_exactly_gets_one_clear_line() -> None:
    data = TensorDataset(torch.randn(8, 2), torch.arange(8))
    sampled = DataLoader(data, batch_size=2, sampler=DistributedSampler(data, num_replicas=2, rank=0))
    with pytest.raises(DataError, match="val: under several processes traincraft shards the data itself, so a "
                                        "DataLoader with a DistributedSampler .* pass the Dataset"):
        make_batches(sampled, batch_size=2, shuffle=False, seed=0, rank=0, world_size=2, what="val")
    with pytest.raises(DataError, match="val: 1 samples for 2 processes; every process needs at least one"):
        make_batches((torch.randn(1, 2), torch.arange(1)), batch_size=2, shuffle=False, seed=0, rank=0,
                     world_size=2, what="val")


# ----------------------------------------------------------------------------- the step


class FakeDDP:
    """Records which micro-batches ran under no_sync."""

    def __init__(self) -> None:
        self.inside = False

    @contextlib.contextmanager
    def no_sync(self):
        self.inside = True
        try:
            yield
        finally:
            self.inside = False


def test_only_the_last_micro_batch_of_a_window_all_reduces() -> None:
    param = nn.Parameter(torch.zeros(1))
    stepper = Stepper(torch.optim.SGD([param], lr=0.1), [param], device=torch.device("cpu"), accumulate=3)
    ddp = FakeDDP()
    stepper.distribute(ddp, 2, all_true=lambda flag: flag)
    synced = []
    for index in range(7):  # windows of 3, 3 and the epoch's last 1
        with stepper.micro_batch(last_of_epoch=index == 6):
            synced.append(not ddp.inside)
            stepper.backward((param * 0 + 1).sum(), samples=1)
        if stepper.window_full() or index == 6:
            stepper.prepare()
            stepper.step()
    assert synced == [False, False, True, False, False, True, True]


def test_the_window_is_divided_by_its_samples_over_all_processes() -> None:
    # Rank 0 of 2 holds 3 of the window's 5 samples; DDP averages over 2 processes, so rank 0's
    # part of the mean is (3 · its mean gradient) / (5 / 2), and 2 processes give Σ / 5.
    param = nn.Parameter(torch.zeros(1))
    stepper = Stepper(torch.optim.SGD([param], lr=1.0), [param], device=torch.device("cpu"))
    stepper.distribute(None, 2, all_true=lambda flag: flag)
    stepper.window_total = 5
    stepper.backward((param - 2.0).sum(), samples=3)  # gradient 1 per sample
    stepper.prepare()
    assert param.grad.item() == pytest.approx(3 / 2.5)


def test_running_means_sum_their_sums_and_counts_over_processes() -> None:
    means = RunningMeans(torch.device("cpu"))
    means.add("loss", torch.tensor(2.0), samples=3)
    means.add("grad_norm", torch.tensor(1.0), samples=1)

    def other_process_had_the_same(tensors):  # what an all-reduce over two equal processes gives
        for t in tensors:
            t.mul_(2)

    means.sync(other_process_had_the_same)
    assert means.counts == {"loss": 6, "grad_norm": 2} and means.mean("loss") == 2.0


# ----------------------------------------------------------------------------- settings, messages


def test_one_process_needs_no_process_group_and_keeps_its_batch_norm() -> None:
    assert distributed.launched_world_size() == 1
    model = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4))
    from traincraft import Trainer

    trainer = Trainer(model, loss="mse", sync_batchnorm=True, progress=False, dist_timeout=5)
    assert trainer.world_size == 1 and trainer.ddp is None and isinstance(trainer.model[1], nn.BatchNorm1d)


def test_sync_batchnorm_converts_on_cuda_and_is_refused_on_the_cpu() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(2, 1))
    weight = model[1].weight
    cuda = distributed.World(device=torch.device("cuda", 0), rank=0, world_size=2)
    converted = distributed.convert_sync_batchnorm(model, cuda)
    assert isinstance(converted[1], nn.SyncBatchNorm) and converted[1].weight is weight
    cpu = distributed.World(device=torch.device("cpu"), rank=0, world_size=2)
    with pytest.raises(distributed.DistributedError, match="sync_batchnorm needs CUDA devices"):
        distributed.convert_sync_batchnorm(nn.BatchNorm1d(2), cpu)


def test_the_recipe_keys_reach_the_trainer() -> None:
    from traincraft.recipe import load_recipe
    from traincraft.run import trainer_kwargs

    recipe = load_recipe("regression", ["train.sync_batchnorm=true", "train.dist_timeout=30"])
    kwargs = trainer_kwargs(recipe)
    assert kwargs["processes"] == {"sync_batchnorm": True, "timeout": 30.0}


def test_a_checkpoint_resumes_only_with_as_many_processes_as_wrote_it() -> None:
    from traincraft import Trainer

    trainer = Trainer(nn.Linear(2, 1), loss="mse", progress=False, max_epochs=1)
    trainer.fit((torch.randn(8, 2), torch.randn(8, 1)))
    state = {**trainer.state_dict(), "world_size": 2}
    with pytest.raises(CheckpointError, match="written by 2 process.* resume with 2 .*--nproc 2"):
        trainer.load_state_dict(state)


def test_a_lost_process_is_reported_in_one_line() -> None:
    world = distributed.World(device=torch.device("cpu"), rank=0, world_size=2)
    gloo = "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer [127.0.0.1]:9. More."
    with pytest.raises(distributed.DistributedError) as caught:
        with distributed.failures_explained(world, timeout=7):
            raise RuntimeError(gloo)
    assert str(caught.value) == (
        "rank 0 of 2: lost contact with the other processes (one of them stopped, died, or did not "
        "answer within dist_timeout=7 s); Connection closed by peer [127.0.0.1]:9"
    )
    failures = {0: SimpleNamespace(exitcode=1, timestamp=5), 1: SimpleNamespace(exitcode=-9, timestamp=5)}
    assert distributed.describe_failures(failures) == (
        "training stopped: rank 1 was killed by SIGKILL; rank 0 exited with code 1 "
        "(each process's own message, if any, is above)"
    )


# ----------------------------------------------------------------------------- two processes


def write_recipe(folder: Path, model: str, rows: int = 100) -> Path:
    """A small regression CSV and a recipe training on it (absolute paths: resumable anywhere)."""
    g = torch.Generator().manual_seed(2)
    X = torch.randn(rows, 3, generator=g)
    y = X @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(rows, generator=g)
    lines = ["a,b,c,y"] + [",".join(f"{v:.6f}" for v in [*x.tolist(), t]) for x, t in zip(X, y.tolist())]
    (folder / "data.csv").write_text("\n".join(lines) + "\n")
    recipe = folder / f"{model.split(':')[-1].lower()}.yaml"
    recipe.write_text(
        f"name: tiny\nseed: 0\n"
        f"data: {{dataset: {folder / 'data.csv'}, target: y, task: regression, batch_size: 4, "
        f"split: {{val: 0.2, test: 0.2}}}}\n"
        f"model: {{name: '{model}'}}\nloss: mse\nschedule: {{name: cosine, warmup: 3}}\n"
        f"train: {{max_epochs: 3, device: cpu, dist_timeout: 20}}\ncheckpoint: {{every_n_steps: 5}}\n"
        f"metrics: [mae]\n"
    )
    return recipe


def environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in distributed.ENVIRONMENT}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(argv: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, *argv], cwd=cwd, env=environment(), capture_output=True,
                          text=True, timeout=LAUNCH_TIMEOUT)
    return done, time.monotonic() - started


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> SimpleNamespace:
    """The worker's run under torchrun: what each process saw, and where."""
    out = tmp_path_factory.mktemp("two")
    recipe = write_recipe(out, "distributed_worker:StopMLP")
    done, _ = run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   str(TESTS / "distributed_worker.py"), "suite", str(out), str(recipe)], cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1)]
    return SimpleNamespace(out=out, recipe=recipe, ranks=ranks, stderr=done.stderr)


def one_process(batch_size: int, data: str = "tensors") -> tuple[dict, list[dict]]:
    train, val = worker.regression_data()
    trainer = worker.equivalence_trainer(batch_size, 1, progress=False)
    history = trainer.fit(train, val=val)
    return trainer.model.state_dict(), worker.plain_rows(history)


def assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol)


def test_two_processes_of_16_train_like_one_of_32(two_processes) -> None:
    weights, rows = one_process(worker.GLOBAL_BATCH)
    for case in ("tensors", "dataset", "accumulate"):  # 2 × 16 from tensors, from a Dataset; 2 × 8 × 2
        assert_same_weights(torch.load(two_processes.out / f"{case}.pt"), weights, atol=1e-5)
    for seen in two_processes.ranks:
        for case in ("tensors", "accumulate"):
            got = seen["equivalence"][case]["rows"]
            for mine, single in zip(got, rows, strict=True):
                # Each sample counted once: 101 training samples, 5 validation samples.
                assert mine["train_count"] == 101 and mine["val_count"] == 5
                assert mine["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)
                assert mine["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)
    assert "global batch 32 = 16 per process × 2 processes × accumulate 1" in two_processes.stderr


def test_metrics_over_two_uneven_shards_equal_scikit_learn_on_the_whole_set(two_processes) -> None:
    from sklearn import metrics as skm

    logits, target, pred, y = worker.metric_data()
    probs, predicted = logits.softmax(1).numpy(), logits.argmax(1).numpy()
    expected = {
        "auroc": skm.roc_auc_score(target, probs, multi_class="ovr"),
        "average_precision": skm.average_precision_score(target, probs, average="macro"),
        "mcc": skm.matthews_corrcoef(target, predicted),
        "balanced_accuracy": skm.balanced_accuracy_score(target, predicted),
        "mape": skm.mean_absolute_percentage_error(y, pred),
        "explained_variance": skm.explained_variance_score(y, pred),
        "r2": skm.r2_score(y, pred),
    }
    confusion = skm.confusion_matrix(target, predicted).tolist()
    for seen in two_processes.ranks:
        figures = {**seen["metrics"]["classification"]["figures"], **seen["metrics"]["regression"]["figures"]}
        assert {k: figures[k] for k in expected} == pytest.approx(expected, abs=1e-12)
        assert seen["metrics"]["classification"]["tables"]["confusion_matrix"] == confusion
        assert [r["support"] for r in seen["metrics"]["classification"]["tables"]["per_class"]] == [sum(r) for r in confusion]


def test_every_process_holds_the_same_weights_and_figures_after_every_step(two_processes) -> None:
    first, second = (seen["equivalence"]["tensors"] for seen in two_processes.ranks)
    assert len(first["hashes"]) == worker.EPOCHS * 4  # ceil(ceil(101 / 2) / 16) = 4 steps per epoch
    assert first["hashes"] == second["hashes"]
    assert first["rows"] == second["rows"]  # early stopping and plateaus decide alike everywhere


def test_accumulation_all_reduces_once_per_optimizer_step(two_processes) -> None:
    for seen in two_processes.ranks:
        acc = seen["equivalence"]["accumulate"]
        assert acc["buckets"] == 1 and acc["steps"] == worker.EPOCHS * 4  # 7 micro-batches -> 4 steps
        assert acc["allreduce_calls"] == acc["steps"]  # not once per micro-batch (21)


def test_under_torchrun_the_command_line_agrees_on_the_folder_and_only_rank_0_writes(two_processes) -> None:
    first, second = (seen["cli"] for seen in two_processes.ranks)
    assert first["full_exit"] == second["full_exit"] == 0
    assert first["folders"] == second["folders"] and len(first["folders"]) == 1
    assert first["files_written"] > 5 and second["files_written"] == 0
    folder = two_processes.out / first["folders"][0]
    state = load_checkpoint(folder / "checkpoints" / "last.ckpt")
    assert not [k for k in state["model"] if k.startswith("module.")]  # the plain model
    assert state["world_size"] == 2 and len(state["processes"]) == 2
    results = json.loads((folder / "results.json").read_text())
    assert results["stop_reason"] == "max_epochs" and set(results["test"]) == {"loss", "mae"}
    # Rank 0 alone predicts the whole test split for the report (not its shard of it).
    predictions = judging.load_predictions(folder)
    sizes = json.loads((folder / "data.json").read_text())["sizes"]
    assert predictions is not None and len(predictions["target"]) == sizes["test"]


def test_a_stop_asked_on_one_process_stops_both_after_the_same_step(two_processes) -> None:
    first, second = (seen["cli"] for seen in two_processes.ranks)
    assert first["interrupted_exit"] == second["interrupted_exit"] == 130
    state = load_checkpoint(two_processes.out / "interrupted" / "checkpoints" / "last.ckpt")
    # SIGINT reached rank 0 in its 11th training forward (step 11), in epoch 2 (8 steps per
    # epoch: 60 samples, 30 per process, batches of 4). Both stopped after the same step, at the
    # next vote (votes are some milliseconds apart) or at the latest at the epoch's end.
    step = state["state"]["step"]
    assert 11 <= step <= 16 and state["state"]["batch_in_epoch"] == step - 8
    assert state["state"]["stop_reason"] == "interrupted"
    assert first["stopped_at"] == second["stopped_at"] == step


def test_resuming_under_two_processes_continues_exactly(two_processes) -> None:
    out = two_processes.out
    done, _ = run(["-m", "traincraft", "fit", str(two_processes.recipe), "--resume", "interrupted",
                   "--nproc", "2", "--no-progress"], cwd=out)
    assert done.returncode == 0, done.stderr[-3000:]
    step = two_processes.ranks[0]["cli"]["stopped_at"]
    assert f"Resuming from interrupted/checkpoints/last.ckpt: epoch 2, batch {step - 8}, step {step}" in done.stderr
    full = out / two_processes.ranks[0]["cli"]["folders"][0]
    resumed, uninterrupted = (load_checkpoint(f / "checkpoints" / "last.ckpt") for f in (out / "interrupted", full))
    for key, value in uninterrupted["model"].items():  # dropout, shuffling, warm-up: bitwise
        assert torch.equal(resumed["model"][key], value), key
    read = lambda folder: [line.rsplit(",", 1)[0] for line in (folder / "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert "seconds" in (full / "metrics.csv").read_text().splitlines()[0].rsplit(",", 1)[1]
    assert read(out / "interrupted") == read(full)


def summed_loss_reference(case: str, chunks: int) -> tuple[dict, float, float]:
    """torch on the 40 samples: one SGD step on the loss of ``chunks`` equal batches, weighted by
    their samples (1: the whole as one batch), and the loss of the whole before and after."""
    spec, targets = worker.SUMMED_LOSSES[case]
    X, y = worker.summed_loss_data(targets)
    model, loss_fn = worker.summed_loss_model(), losses.build(spec)
    with torch.no_grad():
        before = loss_fn(model(X), y)
    sum(loss_fn(model(Xc), yc) / chunks for Xc, yc in zip(X.chunk(chunks), y.chunk(chunks))).backward()
    with torch.no_grad():
        for param in model.parameters():
            param -= 0.5 * param.grad
        after = loss_fn(model(X), y)
    return model.state_dict(), float(before), float(after)


@pytest.mark.parametrize("case", list(worker.SUMMED_LOSSES))
def test_losses_that_are_not_a_per_sample_mean_train_on_two_processes_like_one_batch(two_processes, case) -> None:
    saved = torch.load(two_processes.out / f"summed-{case}.pt")
    # A ratio is exact over an accumulation window too (2 × 10 × 2); a set loss (a dice over the
    # batch) is the sample-weighted mean of the window's global micro-batches, 0-19 and 20-39.
    set_loss = case in ("dice", "terms")
    for run, chunks in (("step", 1), ("accumulate", 2 if set_loss else 1)):
        weights, before, after = summed_loss_reference(case, chunks)
        assert_same_weights(saved[run]["weights"], weights, atol=1e-6)  # 2 × 20 = 1 × 40
        # The figures: the 40 samples as one batch, in batches of 20 or 7 per process.
        assert saved[run]["train_loss"] == pytest.approx(before, rel=1e-6)
        assert saved[run]["evaluate"] == pytest.approx(after, rel=1e-6)
        assert saved[run]["evaluate_7"] == pytest.approx(after, rel=1e-6)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices (nccl)")
def test_two_gpus_train_like_one(tmp_path) -> None:
    script = tmp_path / "gpu.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(TESTS)!r})\n"
        "import distributed_worker as w\n"
        "train, val = w.regression_data()\n"
        "t = w.equivalence_trainer(16, 1, progress=False, device='cuda', sync_batchnorm=True)\n"
        "t.fit(train, val=val)\n"
        "assert t.world.device.index == t.rank and t.ddp is not None\n"
        f"torch.save({{k: v.cpu() for k, v in t.model.state_dict().items()}}, {str(tmp_path)!r} + f'/gpu-{{t.rank}}.pt')\n"
    )
    done, _ = run(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script)], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    weights, _ = one_process(worker.GLOBAL_BATCH)
    assert_same_weights(torch.load(tmp_path / "gpu-0.pt"), weights, atol=1e-4)
    assert_same_weights(torch.load(tmp_path / "gpu-1.pt"), torch.load(tmp_path / "gpu-0.pt"), atol=0)
