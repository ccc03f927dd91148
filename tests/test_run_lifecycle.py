"""A run's life from outside: one folder per run, a finished run stays finished, a folder that
stands alone, damage detected, files rebuilt, leftovers removed, a full or read-only disk."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import traincraft as tc
from traincraft.checkpoint import CheckpointError, load_checkpoint, load_weights
from traincraft.cli import main
from traincraft.errors import TraincraftError
from traincraft.run import default_run_dir
from traincraft.runfolder import clean_leftovers

sys.path.insert(0, str(Path(__file__).parent))
from cli_recipes import IRIS as CLI_IRIS  # noqa: E402
from cli_recipes import write_recipe as recipe_file  # noqa: E402

IRIS = {**CLI_IRIS, "name": "iris-life", "seed": 0}


def cli_fit(tmp_path, *args, recipe=IRIS, run="run"):
    run_dir = tmp_path / run
    code = main(["fit", str(recipe_file(tmp_path, recipe)), *args, "--run-dir", str(run_dir), "--no-progress"])
    return code, run_dir


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 4, generator=g)
    y = X @ torch.tensor([[1.0], [-1.0], [0.5], [2.0]])
    return (X[:48], y[:48]), (X[48:], y[48:])


def trainer(run_dir, **kwargs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 1))
    options = dict(loss="mse", lr=1e-2, batch_size=8, max_epochs=3, run_dir=run_dir, seed=0, progress=False)
    return tc.Trainer(model, **{**options, **kwargs})


# ----------------------------------------------------------------------------- one run, one folder


def test_runs_started_in_the_same_second_get_a_folder_each(tmp_path):
    recipe = tc.load_recipe(IRIS)
    folders = [default_run_dir(recipe, root=tmp_path) for _ in range(4)]
    assert len(set(folders)) == 4 and all(f.is_dir() and not any(f.iterdir()) for f in folders)


def test_a_folder_holding_a_run_is_refused_unless_overwritten(tmp_path, capsys):
    code, run_dir = cli_fit(tmp_path, "checkpoint.every_n_steps=2")
    assert code == 0 and list((run_dir / "checkpoints").glob("step-*.ckpt"))
    old_steps = sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.ckpt"))
    capsys.readouterr()
    assert cli_fit(tmp_path, "train.max_epochs=1")[0] == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already holds a run" in err and "--overwrite" in err
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("step-*.ckpt")) == old_steps  # untouched
    assert cli_fit(tmp_path, "train.max_epochs=1", "--overwrite")[0] == 0
    # the old run's files are gone: only the new run's one epoch (6 steps) is kept
    assert [p.name for p in (run_dir / "checkpoints").glob("step-*.ckpt")] == ["step-00000006.ckpt"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["state"]["epoch"] == 1
    # Python: the same rule
    (train, val) = data()
    with pytest.raises(TraincraftError, match="already holds a run"):
        trainer(run_dir).fit(train, val=val)
    assert trainer(run_dir).fit(train, val=val, overwrite=True).stop_reason == "max_epochs"


def test_resume_refuses_a_checkpoint_of_another_recipe(tmp_path):
    code, run_dir = cli_fit(tmp_path)
    assert code == 0
    # recipe.yaml swapped behind the run's back: the checkpoint's own recipe decides
    changed = {**IRIS, "optimizer": {"name": "adamw", "lr": 0.5}}
    with pytest.raises(CheckpointError, match=r"optimizer.lr: 0.01 -> 0.5"):
        tc.Trainer.from_recipe(changed, run_dir=run_dir, progress=False, resuming=True).fit(resume=run_dir)
    longer = {**IRIS, "train": {"max_epochs": 4}}  # raising the limits is the same run
    history = tc.Trainer.from_recipe(longer, run_dir=run_dir, progress=False, resuming=True).fit(resume=run_dir)
    assert len(history.epochs) == 4


# ----------------------------------------------------------------------------- a finished run


def test_a_finished_run_is_not_trained_again(tmp_path, capsys):
    code, run_dir = cli_fit(tmp_path)
    assert code == 0
    files = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["resume", str(run_dir), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "the run is finished (max_epochs at epoch 3" in err and err.count("\n") == 1
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == files
    # Python: the same run, nothing rewritten, no epoch added
    again = tc.Trainer.from_recipe(IRIS, run_dir=run_dir, progress=False, resuming=True)
    assert len(again.fit(resume=run_dir).epochs) == 3 and again.state.step == load_checkpoint(
        run_dir / "checkpoints" / "last.ckpt")["state"]["step"]
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == files


def test_a_run_killed_during_its_end_finishes_only_that(tmp_path, capsys):
    code, run_dir = cli_fit(tmp_path)
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    rows = (run_dir / "metrics.csv").read_text()
    # As if killed while evaluating the test split: the final checkpoint, no results, no mark.
    for name in ("results.json", "report.html", "checkpoints/finished.json"):
        (run_dir / name).unlink()
    assert main(["resume", str(run_dir), "--no-progress"]) == 0
    assert "ended (max_epochs at epoch 3" in capsys.readouterr().err
    assert json.loads((run_dir / "results.json").read_text()) == results
    assert (run_dir / "report.html").is_file() and (run_dir / "metrics.csv").read_text() == rows


# ----------------------------------------------------------------------------- a folder that stands alone


def test_evaluate_and_resume_never_read_what_the_run_started_from(tmp_path, capsys):
    code, base = cli_fit(tmp_path, "train.max_epochs=4", run="base")
    assert code == 0
    finetuned = {**IRIS, "name": "iris-ft", "finetune": {"init_from": str(base)}}
    code, run_dir = cli_fit(tmp_path, "checkpoint.every_n_steps=2", recipe=finetuned, run="ft")
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())["test"]
    shutil.rmtree(base)  # the pretrained weights are gone: the run folder is enough
    capsys.readouterr()
    assert main(["evaluate", str(run_dir), "--split", "test"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == results["accuracy"] and evaluated["loss"] == pytest.approx(results["loss"], abs=1e-6)
    out = tmp_path / "pred.csv"
    features = tmp_path / "x.csv"
    features.write_text("sepal length (cm),sepal width (cm),petal length (cm),petal width (cm)\n5.1,3.5,1.4,0.2\n")
    assert main(["predict", str(run_dir), "--input", str(features), "--output", str(out)]) == 0
    assert main(["resume", str(run_dir), "train.max_epochs=4", "--no-progress"]) == 0


# ----------------------------------------------------------------------------- damage, rebuilt files


def flip_a_bit_in(path: Path, tensor_bytes: bytes) -> None:
    data = bytearray(path.read_bytes())
    at = data.find(tensor_bytes)
    assert at >= 0, "the tensor's bytes are not in the file"
    data[at + len(tensor_bytes) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_in_tensor_data_is_detected(tmp_path, capsys):
    (train, val) = data()
    t = trainer(tmp_path, checkpoint={"every_n_steps": 2, "keep_last": 2}, max_epochs=2)
    t.fit(train, val=val)
    weight = t.model[0].weight.detach().contiguous().numpy().tobytes()
    last = tmp_path / "checkpoints" / "last.ckpt"
    flip_a_bit_in(last, weight)
    with pytest.raises(CheckpointError, match=r"last.ckpt is damaged: the bytes of its tensor"):
        load_checkpoint(last)
    messages = []
    resumed = trainer(tmp_path, checkpoint={"every_n_steps": 2, "keep_last": 2}, max_epochs=2)
    resumed.log = messages.append
    resumed.fit(train, val=val, resume=tmp_path)
    assert any("last.ckpt is damaged" in m and "resuming from" in m for m in messages)
    best = tmp_path / "best.safetensors"
    saved = load_weights(best)
    flip_a_bit_in(best, saved["0.weight"].numpy().tobytes())
    with pytest.raises(CheckpointError, match=r"best.safetensors is damaged: the bytes of 0.weight"):
        load_weights(best)


def test_missing_mirrors_are_rebuilt_from_the_checkpoint(tmp_path, capsys):
    code, run_dir = cli_fit(tmp_path, "train.max_epochs=2")
    assert code == 0
    best, rows = load_weights(run_dir / "best.safetensors"), (run_dir / "metrics.csv").read_text()
    best_json = json.loads((run_dir / "best.json").read_text())
    # As a SIGKILL before the mirrors reached the disk would leave it
    for name in ("best.safetensors", "best.json", "metrics.csv"):
        (run_dir / name).unlink()
    model = tc.load_model(run_dir)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in best.items())
    assert json.loads((run_dir / "best.json").read_text())["epoch"] == best_json["epoch"]
    (run_dir / "best.safetensors").unlink()
    capsys.readouterr()
    assert main(["evaluate", str(run_dir)]) == 0
    assert "best.safetensors, best.json again from the run's checkpoint" in capsys.readouterr().err
    assert main(["resume", str(run_dir), "train.max_epochs=3", "--no-progress"]) == 0
    assert (run_dir / "metrics.csv").read_text().startswith(rows)


def test_resume_removes_the_leftovers_of_killed_writers(tmp_path):
    code, run_dir = cli_fit(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    leftovers = [run_dir / "checkpoints" / f".last.ckpt.{pid}-3.tmp", run_dir / f".best.json.{pid}-0.tmp"]
    for path in leftovers:
        path.write_bytes(b"x" * 100)
    mine = run_dir / f".metrics.csv.{os.getppid()}-0.tmp"  # a live process's: kept
    mine.write_bytes(b"x")
    assert main(["resume", str(run_dir), "train.max_epochs=4", "--no-progress"]) == 0
    assert not any(p.exists() for p in leftovers) and mine.exists()
    assert clean_leftovers(run_dir, everyone=True) == [mine]


# ----------------------------------------------------------------------------- order of saving


def test_checkpoints_hold_every_update_of_their_step_whatever_the_order(tmp_path):
    (train, val) = data()
    taken = {}

    class Spy(tc.Callback):  # listed before everything: sees the checkpoint's content afterwards
        def on_step_end(self, trainer):
            taken[trainer.state.step] = trainer

    ema = tc.EMA(decay=0.9)
    keeper = tc.Checkpoint(tmp_path, every_n_steps=3, keep_last=10)
    t = trainer(tmp_path, callbacks=[keeper, Spy(), ema], max_epochs=2)
    t.fit(train, val=val)
    state = load_checkpoint(tmp_path / "checkpoints" / "step-00000003.ckpt")
    assert state["callbacks"]["EMA"]["updates"] == 3  # the average took step 3 before it was saved


def test_an_interrupted_run_saves_its_live_weights_whatever_the_order(tmp_path):
    (train, val) = data()
    stopper = tc.EarlyStopping(patience=10)

    class CtrlC(tc.Callback):
        def on_step_end(self, trainer):
            if trainer.state.step == 9:
                trainer.state.request_stop("interrupted")
                self.live = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    ctrl_c = CtrlC()
    # The user's Checkpoint listed after EarlyStopping, which puts the best weights back at the end
    t = trainer(tmp_path, callbacks=[stopper, ctrl_c, tc.Checkpoint(tmp_path)], max_epochs=5)
    messages = []
    t.log = messages.append
    t.fit(train, val=val)
    saved = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["model"]
    assert all(torch.equal(saved[k], v) for k, v in ctrl_c.live.items())
    assert any(f"resume with: trainer.fit(..., resume={str(tmp_path)!r})" in m for m in messages)


def test_resume_auto_starts_then_continues(tmp_path):
    (train, val) = data()
    first = trainer(tmp_path, max_epochs=2)
    assert len(first.fit(train, val=val, resume="auto").epochs) == 2  # nothing there: starts
    second = trainer(tmp_path, max_epochs=4)
    assert len(second.fit(train, val=val, resume="auto").epochs) == 4  # continues
    reference = trainer(tmp_path / "ref", max_epochs=4)
    reference.fit(train, val=val)
    assert all(torch.equal(a, b) for a, b in zip(second.model.state_dict().values(),
                                                 reference.model.state_dict().values()))
    with pytest.raises(TraincraftError, match='resume="auto"'):
        trainer(None).fit(train, val=val, resume="auto")


# ----------------------------------------------------------------------------- a full or read-only disk


@pytest.fixture
def small_disk(tmp_path, request):
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    size = getattr(request, "param", "300k")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


BIG = {**IRIS, "model": {"name": "mlp", "hidden_sizes": [96, 96]}, "train": {"max_epochs": 30},
       "early_stopping": None, "checkpoint": {"keep_last": 1}}


def test_a_full_disk_is_one_line_and_the_previous_checkpoint_survives(small_disk, tmp_path, capsys):
    code = main(["fit", str(recipe_file(tmp_path, BIG)), "--run-dir", str(small_disk / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[-1].startswith("error: cannot write ") and "No space left on device" in err[-1]
    assert f"{small_disk / 'run'}" in err[-1] and " free" in err[-1] and "needs" in err[-1]
    assert not any("Traceback" in line for line in err)
    state = load_checkpoint(small_disk / "run" / "checkpoints" / "last.ckpt")  # intact, loadable
    assert state["state"]["epoch"] >= 1
    assert not list((small_disk / "run").rglob("*.tmp"))


@pytest.mark.parametrize("small_disk", ["8m"], indirect=True)
def test_a_read_only_folder_is_one_line(small_disk, tmp_path, capsys):
    code, run_dir = cli_fit(tmp_path)
    shutil.copytree(run_dir, small_disk / "run")
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    code = main(["resume", str(small_disk / "run"), "train.max_epochs=5", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: ") and "Read-only file system" in err[-1], err
    assert not any("Traceback" in line for line in err)


# ----------------------------------------------------------------------------- signals to a process group

GROUP_SCRIPT = """
import sys, time, torch
import traincraft as tc
from torch.utils.data import DataLoader, Dataset

class Noisy(Dataset):
    def __len__(self):
        return 256
    def __getitem__(self, i):
        x = torch.full((4,), float(i % 7)) + torch.randn(4)
        return x, x.sum(0, keepdim=True)

class Slow(tc.Callback):
    def on_step_end(self, trainer):
        time.sleep(0.02)

if __name__ == "__main__":
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    loader = DataLoader(Noisy(), batch_size=8, shuffle=True, num_workers=2)
    trainer = tc.Trainer(model, loss="mse", max_epochs=50, run_dir=sys.argv[1], seed=0, progress=False,
                         checkpoint={"every_n_steps": 5}, callbacks=[Slow()])
    history = trainer.fit(loader)
    sys.exit(130 if history.stop_reason in ("terminated", "interrupted") else 0)
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_signal_to_the_whole_process_group_stops_gracefully_with_loader_workers(tmp_path, sig):
    import signal
    import time

    script = tmp_path / "train.py"
    script.write_text(GROUP_SCRIPT)
    run_dir = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir)], env=env, start_new_session=True,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (run_dir / "checkpoints" / "last.ckpt").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint to wait for"
            time.sleep(0.02)
        os.killpg(proc.pid, getattr(signal, sig))  # the main process and its DataLoader workers
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "Traceback" not in err and "worker" not in err.lower(), err
    assert proc.returncode == 130, err
    state = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert state["state"]["stop_reason"] == {"SIGTERM": "terminated", "SIGINT": "interrupted"}[sig]
    assert "resume with: trainer.fit(..., resume=" in err


def test_a_second_ctrl_c_in_the_middle_of_a_step_saves_nothing_half_done(tmp_path):
    (train, val) = data()

    class SecondCtrlC(tc.Callback):
        def on_before_step(self, trainer):  # gradients computed, the update not made yet
            if trainer.state.step == 7:
                trainer.state.request_stop("interrupted")  # the first Ctrl-C ...
                raise KeyboardInterrupt  # ... and the second, at once

    options = dict(checkpoint={"every_n_steps": 3}, max_epochs=4)
    with pytest.raises(KeyboardInterrupt):
        trainer(tmp_path / "a", callbacks=[SecondCtrlC()], **options).fit(train, val=val)
    assert load_checkpoint(tmp_path / "a" / "checkpoints" / "last.ckpt")["state"]["step"] == 6  # the last whole one
    resumed = trainer(tmp_path / "a", **options)
    resumed.fit(train, val=val, resume=tmp_path / "a")
    whole = trainer(tmp_path / "b", **options)
    whole.fit(train, val=val)
    assert all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()))
    kept = [p.name for p in (tmp_path / "a" / "checkpoints").glob("step-*.ckpt")]
    assert sorted(kept) == sorted(p.name for p in (tmp_path / "b" / "checkpoints").glob("step-*.ckpt"))


def test_resuming_another_models_checkpoint_is_one_line(tmp_path):
    (train, val) = data()
    trainer(tmp_path, max_epochs=1).fit(train, val=val)
    other = tc.Trainer(nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 1)), loss="mse", run_dir=tmp_path,
                       progress=False)
    with pytest.raises(CheckpointError, match=r"last.ckpt holds the weights of another model: 2 missing "
                                              r"\(2.weight, 2.bias\); 2 unexpected \(3.weight, 3.bias\); 2 of another "
                                              r"shape \(0.weight \[8, 4\] vs \[5, 4\]; 0.bias \[8\] vs \[5\]\)$"):
        other.fit(train, val=val, resume=tmp_path)


# ----------------------------------------------------------------------------- code a run folder names

TINY_NET = '''
import torch
class TinyNet(torch.nn.Module):
    def __init__(self, input_shape, output_size):
        super().__init__()
        self.layer = torch.nn.Linear(input_shape[0], output_size)
    def forward(self, x):
        return self.layer(x)
'''


def test_a_run_folder_from_elsewhere_runs_no_code_unless_trusted(tmp_path, capsys, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    (home / "mynets.py").write_text(TINY_NET)
    monkeypatch.chdir(home)
    monkeypatch.syspath_prepend(str(home))
    recipe = {**IRIS, "model": {"name": "mynets:TinyNet"}, "train": {"max_epochs": 1}}
    assert main(["fit", str(recipe_file(home, recipe)), "--run-dir", "runs/mine", "--no-progress"]) == 0
    assert main(["evaluate", "runs/mine"]) == 0  # made here: no question asked
    shared = tmp_path / "downloads" / "run"
    shutil.copytree(home / "runs" / "mine", shared)
    capsys.readouterr()
    for argv in (["evaluate", str(shared)], ["resume", str(shared), "train.max_epochs=2", "--no-progress"],
                 ["predict", str(shared), "--input", "x.csv", "--output", "p.csv"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "names code to import and run (mynets:TinyNet)" in err and "--trust-code" in err
    with pytest.raises(TraincraftError, match="trust_code=True"):
        tc.load_model(shared)
    assert main(["evaluate", str(shared), "--trust-code"]) == 0
    assert isinstance(tc.load_model(shared, trust_code=True), nn.Module)


@pytest.mark.parametrize("name", ["os:system", "subprocess:run", "builtins:eval", "shutil.rmtree"])
def test_the_standard_library_is_never_a_model_or_a_data_set(tmp_path, name):
    from traincraft.registry import import_object

    with pytest.raises(TraincraftError, match="names Python's standard library"):
        import_object(name, "model")
    with pytest.raises(TraincraftError, match="standard library"):
        tc.Trainer.from_recipe({**IRIS, "data": {"dataset": name.replace(".", ":")}}, progress=False)


def test_a_frozen_run_with_a_new_head_resumes_with_the_same_trainable_tensors(tmp_path, capsys):
    code, base = cli_fit(tmp_path, "train.max_epochs=2", run="base")
    assert code == 0
    finetuned = {**IRIS, "name": "iris-head", "finetune": {"init_from": str(base), "skip": ["head.*"],
                                                         "freeze": ["*"]}}
    code, run_dir = cli_fit(tmp_path, "train.max_epochs=2", recipe=finetuned, run="ft")
    assert code == 0
    assert json.loads((run_dir / "data.json").read_text())["not_loaded"] == ["head.bias", "head.weight"]
    shutil.rmtree(base)  # the resume never reads it: which tensors were new is in data.json
    resumed = tc.Trainer.from_recipe({**finetuned, "train": {"max_epochs": 3}}, run_dir=run_dir, progress=False,
                                     resuming=True)
    assert sorted(n for n, p in resumed.model.named_parameters() if p.requires_grad) == ["head.bias", "head.weight"]
    assert len(resumed.fit(resume=run_dir).epochs) == 3


def test_resuming_a_finished_run_says_so_unless_there_is_work_to_do(tmp_path, capsys):
    code, run_dir = cli_fit(tmp_path)
    assert code == 0
    recipe = recipe_file(tmp_path, IRIS, "again.yaml")
    capsys.readouterr()
    for argv in (["resume", str(run_dir), "--no-progress"],
                 ["fit", str(recipe), "--run-dir", str(run_dir), "--resume", "auto", "--no-progress"],
                 ["fit", str(recipe), "--resume", str(run_dir), "--no-progress"]):
        assert main(argv) == 0
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "the run is finished (max_epochs at epoch 3" in err, (argv, err)
    (run_dir / "metrics.csv").unlink()  # a file to rebuild: the resume has work to do
    assert main(["resume", str(run_dir), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "Wrote metrics.csv again" in err and (run_dir / "metrics.csv").is_file()
    assert main(["resume", str(run_dir), "train.max_epochs=4", "--no-progress"]) == 0  # raised limits: trains
    assert "stopped: max_epochs after 4 epochs" in capsys.readouterr().err


def test_a_flipped_bit_outside_the_tensors_is_detected_too(tmp_path):
    (train, val) = data()
    trainer(tmp_path, max_epochs=2).fit(train, val=val)
    last = tmp_path / "checkpoints" / "last.ckpt"
    state = load_checkpoint(last)
    loss = state["history"]["epochs"][0]["val_loss"]
    import struct

    raw = bytearray(last.read_bytes())
    at = raw.find(struct.pack(">d", loss))  # pickle stores floats big-endian
    assert at >= 0
    raw[at + 1] ^= 0x01
    last.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"last.ckpt is damaged: its history, counters or settings do not match"):
        load_checkpoint(last)
