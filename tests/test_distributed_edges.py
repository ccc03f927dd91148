"""Several processes at their edges: data each process loads itself, SIGTERM to every process,
the stop vote's spacing, resuming with the recorded number of processes, two machines, and the
errors of joining, resuming and evaluating that must be one clear line.

The checks that need no process group run in this process; four launches of two CPU processes
(gloo) cover the rest, each bounded by ``LAUNCH_TIMEOUT``.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import traincraft as tc
from traincraft import distributed
from traincraft.checkpoint import load_checkpoint
from traincraft.cli import main as cli_main
from traincraft.data import LoaderBatches, ShardSizes, TensorBatches, make_batches
from traincraft.errors import DataError
from traincraft.stopping import REPEAT_SECONDS, SignalRule

TESTS = Path(__file__).parent
sys.path.insert(0, str(TESTS))
import distributed_edges_worker as worker  # noqa: E402
from test_distributed import LAUNCH_TIMEOUT, environment, write_recipe  # noqa: E402

# ----------------------------------------------------------------------------- signals


def test_signals_delivered_twice_stop_once_and_only_a_later_ctrl_c_aborts() -> None:
    rule = SignalRule()
    assert rule.decide(signal.SIGTERM, now=0.0) == "stop"
    assert rule.decide(signal.SIGTERM, now=0.001) == "ignore"  # forwarded by torchrun: no abort
    assert rule.decide(signal.SIGTERM, now=50.0) == "ignore"  # SIGTERM never aborts
    assert rule.decide(signal.SIGINT, now=50.5) == "ignore"  # the first Ctrl-C: a stop is under way
    assert rule.decide(signal.SIGINT, now=50.5 + REPEAT_SECONDS / 2) == "ignore"  # the same one, forwarded
    assert rule.decide(signal.SIGINT, now=50.5 + REPEAT_SECONDS) == "abort"  # pressed again
    rule = SignalRule()
    assert [rule.decide(signal.SIGINT, now=t) for t in (0.0, 0.01, 2.0)] == ["stop", "ignore", "abort"]


def test_sigterm_twice_in_one_step_stops_after_it_and_saves(tmp_path: Path) -> None:
    class TermTwice(tc.Callback):  # what every worker of a job that pkill or scancel stops receives
        def on_before_step(self, trainer):
            if trainer.state.step == 4:
                signal.raise_signal(signal.SIGTERM)
                signal.raise_signal(signal.SIGTERM)

    X = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    trainer = tc.Trainer(nn.Linear(3, 1), loss="mse", batch_size=8, max_epochs=3, run_dir=tmp_path / "run",
                         progress=False, seed=0, callbacks=[TermTwice()])
    history = trainer.fit((X, X.sum(1, keepdim=True)))  # not a KeyboardInterrupt: no abort
    assert history.stop_reason == "terminated" and trainer.state.step == 5  # the step under way, finished
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert state["state"]["step"] == 5 and state["state"]["stop_reason"] == "terminated"


# ----------------------------------------------------------------------------- data of each process's own


def test_own_shares_of_different_sizes_take_the_same_steps_with_stand_ins() -> None:
    first, second = (ShardSizes.of_counts([40, 25], batch_size=16, rank=r) for r in (0, 1))
    assert first.local == [16, 16, 8] and second.local == [16, 9, 0] and first.total == second.total == [32, 25, 8]
    assert ShardSizes.of_counts([40, 25], 16, rank=1, drop_last=True).local == [16, 0]  # 2 full batches at most
    assert ShardSizes.of(101, 16, rank=1, world_size=2) == ShardSizes.of_counts([51, 50], 16, rank=1)
    batches = TensorBatches(torch.randn(25, 2), torch.arange(25), 16, shuffle=True, seed=3)
    batches.align([40, 25], rank=1)
    got = [t.tolist() for _, t in batches.epoch(1)]
    assert len(batches) == 3 and batches.batch_sizes(1) == [16, 9, 0] and len(got[2]) == 1  # one stand-in
    assert sorted(got[0] + got[1]) == list(range(25))  # its own samples, each once: not sharded again
    assert [t.tolist() for _, t in batches.epoch(1, start=1)] == got[1:]  # a mid-epoch resume


def test_a_distributed_sampler_loader_is_used_as_it_is_and_padded_to_the_others_steps() -> None:
    data = TensorDataset(torch.randn(9, 2), torch.arange(9))
    loader = DataLoader(data, batch_size=2, sampler=DistributedSampler(data, num_replicas=3, rank=2, shuffle=False))
    batches = make_batches(loader, batch_size=99, shuffle=False, seed=0)  # each process's own: not rebuilt
    assert isinstance(batches, LoaderBatches) and batches.own_samples() == 3
    batches.align([5, 3, 3], rank=2)
    assert len(batches) == 3 and batches.shard_sizes().local == [2, 1, 0]
    assert [t.tolist() for _, t in batches.epoch(0)] == [[2, 5], [8], [2]]  # a stand-in of weight 0 last
    assert [t.tolist() for _, t in batches.epoch(0, start=2)] == [[2]]


def agree(monkeypatch, per_rank: list, sharded: bool, rank: int = 0) -> None:
    """``agree_on_data`` as process ``rank`` runs it, the others' data given."""
    from traincraft.data import fingerprint

    monkeypatch.setattr(distributed, "all_gather_objects",
                        lambda mine: [{"train": fingerprint(b, own=sharded)} for b in per_rank])
    world = distributed.World(device=torch.device("cpu"), rank=rank, world_size=len(per_rank))
    distributed.agree_on_data(world, per_rank[rank], {}, sharded=sharded)


def tensors(n: int, seed: int) -> TensorBatches:
    g = torch.Generator().manual_seed(seed)
    return TensorBatches(torch.randn(n, 3, generator=g), torch.randn(n, generator=g), 8)


def test_processes_given_different_data_stop_with_one_line(monkeypatch) -> None:
    with pytest.raises(DataError, match=r"^train: the processes hold different numbers of samples \(rank 0: 40, "
                                        r"rank 1: 25\)\. traincraft shards the data itself.*data=\{'sharded': True\}"):
        agree(monkeypatch, [tensors(40, 0), tensors(25, 1)], sharded=False)
    with pytest.raises(DataError, match=r"^train: the processes hold different samples \(40 each\)"):
        agree(monkeypatch, [tensors(40, 0), tensors(40, 1)], sharded=False)
    agree(monkeypatch, [tensors(40, 0), tensors(40, 0)], sharded=False)  # the same data: sharded by traincraft
    with pytest.raises(DataError, match="data is marked sharded but every process holds the same 40 samples"):
        agree(monkeypatch, [tensors(40, 0), tensors(40, 0)], sharded=True)
    own = tensors(25, 1)
    agree(monkeypatch, [tensors(40, 0), own], sharded=True, rank=1)
    assert own.batch_sizes(0) == [8, 8, 8, 1, 0]  # aligned with rank 0's five batches


# ----------------------------------------------------------------------------- joining, resuming


def test_a_quick_failure_to_join_reports_its_cause_not_the_timeout(monkeypatch) -> None:
    import torch.distributed as dist

    def refused(*args, **kwargs):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:144] Connect timeout [127.0.0.1]:4567. x")

    monkeypatch.setattr(dist, "init_process_group", refused)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "4567")
    with pytest.raises(distributed.DistributedError) as caught:
        distributed._init_process_group(torch.device("cpu"), 1, 2, timeout=300)
    message = str(caught.value)
    assert message.startswith("could not join the 2 processes at 127.0.0.1:4567 (after 0.0 s of dist_timeout=300 s): "
                              "Connect timeout [127.0.0.1]:4567"), message


def run_folder_of_two_processes(folder: Path) -> Path:
    """A run folder whose checkpoint two processes wrote (as far as the command line reads it)."""
    from traincraft.recipe import load_recipe

    folder.mkdir()
    (folder / "recipe.yaml").write_text(load_recipe("regression", ["train.device=cpu"]).to_yaml())
    (folder / "checkpoints").mkdir()
    torch.save({"format": 2, "world_size": 2, "state": {"step": 3}}, folder / "checkpoints" / "last.ckpt")
    return folder


def test_resume_takes_the_number_of_processes_from_the_checkpoint(tmp_path, monkeypatch, capsys) -> None:
    import traincraft.cli.fit as fit

    if distributed.usable_cores() < 2:
        pytest.skip("needs 2 CPU cores")
    launched = []
    monkeypatch.setattr(fit, "launch_processes", lambda command, args: launched.append((command, args.nproc)) or 0)
    folder = run_folder_of_two_processes(tmp_path / "run")
    assert cli_main(["resume", str(folder)]) == 0
    assert launched == [(["resume", str(folder)], 2)]
    assert "Resuming with 2 process(es), as the run was trained (2 in all)" in capsys.readouterr().err
    assert cli_main(["resume", str(folder), "--nnodes", "2", "--master-addr", "127.0.0.1"]) == 0
    assert launched[-1][1] == 1  # one per machine
    assert cli_main(["resume", str(folder), "--nnodes", "3", "--master-addr", "127.0.0.1"]) == 2
    assert "the run was trained by 2 processes, which 3 machines cannot share equally" in capsys.readouterr().err


def test_the_options_for_several_machines_are_checked_first(capsys) -> None:
    assert cli_main(["fit", "regression", "--nnodes", "2"]) == 2
    assert "error: --nnodes needs --master-addr" in capsys.readouterr().err
    assert cli_main(["fit", "regression", "--nnodes", "2", "--node-rank", "2", "--master-addr", "h"]) == 2
    assert "error: --node-rank must be between 0 and 1 (--nnodes 2), got 2" in capsys.readouterr().err
    assert cli_main(["fit", "regression", "train.device=cpu", "--nnodes", "2", "--master-addr", "127.0.0.1"]) == 2
    assert "error: --nnodes needs --run-dir: the same run folder on every machine" in capsys.readouterr().err


# ----------------------------------------------------------------------------- two processes


def launch(argv: list[str], cwd: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, env={**environment(), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(*processes: subprocess.Popen) -> list[tuple[int, str]]:
    try:
        done = [(p.communicate(timeout=LAUNCH_TIMEOUT)[1], p.returncode) for p in processes]
    finally:
        for p in processes:
            p.kill()
    return [(code, err) for err, code in done]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def own_shares(tmp_path_factory) -> tuple[dict, dict, Path]:
    out = tmp_path_factory.mktemp("shards")
    [(code, err)] = finish(launch(["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                                   str(TESTS / "distributed_edges_worker.py"), "shards", str(out)], cwd=out))
    assert code == 0, err[-3000:]
    first, second = (json.loads((out / f"shards-rank-{r}.json").read_text()) for r in (0, 1))
    return first, second, out


def test_data_that_differs_between_processes_is_named_on_every_one(own_shares) -> None:
    for seen in own_shares[:2]:
        assert seen["unsharded"].startswith("DataError: train: the processes hold different numbers of samples "
                                            "(rank 0: 40, rank 1: 25)"), seen["unsharded"]


def test_own_shares_train_like_one_process_over_the_same_global_batches(own_shares) -> None:
    first, second, out = own_shares
    X0, y0 = worker.share(0)
    X1, y1 = worker.share(1)
    X, y = torch.cat([X0, X1]), torch.cat([y0, y1])
    # The b-th global batch: rank 0's b-th 16 samples and rank 1's (40 and 25 samples: 3 steps).
    groups = [[*range(0, 16), *range(40, 56)], [*range(16, 32), *range(56, 65)], [*range(32, 40)]]
    loader = DataLoader(TensorDataset(X, y), batch_sampler=groups)
    one = worker.trainer(data={"shuffle": False})
    history = one.fit(loader, val=(X, y))
    for key, value in one.model.state_dict().items():
        torch.testing.assert_close(torch.load(out / "sharded.pt")[key], value, rtol=0, atol=1e-6)
    expected = worker.rows(history)
    for seen in (first, second):
        assert seen["steps"] == 2 * 3
        for mine, single in zip(seen["rows"], expected, strict=True):
            assert mine["train_count"] == mine["val_count"] == 65  # each sample once, no stand-in
            assert mine["train_loss"] == pytest.approx(single["train_loss"], rel=1e-5)
            assert mine["val_loss"] == pytest.approx(single["val_loss"], rel=1e-5)
        assert seen["evaluate"]["count"] == 65
        assert seen["evaluate"]["loss"] == pytest.approx(one.evaluate((X, y))["loss"], rel=1e-5)


def test_evaluate_on_one_process_alone_says_so_and_local_works(own_shares) -> None:
    first, _, _ = own_shares
    assert first["alone"].startswith("DistributedError: rank 0 of 2: evaluate() under several processes is "
                                     "collective, and the other processes did not take part"), first["alone"]
    assert "evaluate(data, local=True) on one process alone" in first["alone"]
    assert first["local"]["count"] == 40  # its own share, alone


def test_sigterm_to_every_process_stops_after_the_same_step_saves_and_exits_130(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, "distributed_edges_worker:TermMLP")
    log = tmp_path / "forwards.log"
    [(code, err)] = finish(launch(["-m", "traincraft", "fit", str(recipe), "--run-dir", "run", "--nproc", "2",
                                   "--no-progress"], cwd=tmp_path, TERM_LOG=str(log)))
    assert code == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert state["state"]["stop_reason"] == "terminated"
    steps = {rank: 0 for rank in "01"}
    for rank, calls in (line.split() for line in log.read_text().splitlines()):
        steps[rank] = max(steps[rank], int(calls))
    # Signalled in step 7 of 8 (epoch 1): both finish the same step, no later than the epoch's end.
    assert steps["0"] == steps["1"] == state["state"]["step"] and 7 <= steps["0"] <= 8
    assert "terminated: what was done so far is in run" in err


def test_two_machines_train_and_a_resume_without_a_shared_folder_stops_both_at_once(tmp_path: Path) -> None:
    port = free_port()
    nodes = [launch(["-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
                     "--master-addr", "127.0.0.1", "--master-port", str(port),
                     str(TESTS / "distributed_edges_worker.py"), "nodes", str(tmp_path)], cwd=tmp_path)
             for node in (0, 1)]
    for code, err in finish(*nodes):
        assert code == 0, err[-3000:]
    first, second = (json.loads((tmp_path / f"nodes-rank-{r}.json").read_text()) for r in (0, 1))
    assert first["trained"] == second["trained"] and first["trained"]["epoch"] == 2
    assert load_checkpoint(tmp_path / "shared-run" / "checkpoints" / "last.ckpt")["world_size"] == 2
    for seen in (first, second):  # both at once, not after dist_timeout, and not blaming the addresses
        assert seen["resume"].startswith("CheckpointError: rank 1 (on "), seen["resume"]
        assert "cannot resume: resume: " in seen["resume"] and "empty-folder-of-node-1 is neither a checkpoint " \
            "file nor a run folder" in seen["resume"]
        assert "keep the run folder on a file system they share" in seen["resume"]


def test_two_machines_from_the_command_line(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path, "distributed_worker:StopMLP")
    port = free_port()
    nodes = [launch(["-m", "traincraft", "fit", str(recipe), "train.max_epochs=1", "--run-dir", "run", "--nnodes", "2",
                     "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
                     "--no-progress"], cwd=tmp_path) for node in (0, 1)]
    for code, err in finish(*nodes):
        assert code == 0, err[-3000:]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert state["world_size"] == 2 and state["state"]["stop_reason"] == "max_epochs"
    assert json.loads((tmp_path / "run" / "results.json").read_text())["stop_reason"] == "max_epochs"
