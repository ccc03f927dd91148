"""traincraft export (traincraft.export): a run's weights as a file that a bare torch.load or
safetensors reads, equal to the run's own."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from traincraft.checkpoint import load_checkpoint, load_weights
from traincraft.cli import main

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_recipes import fit  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    code, run_dir = fit(tmp_path_factory.mktemp("export"))
    assert code == 0
    return run_dir


def equal(a, b):
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_is_not_a_plain_state_dict(run_dir):
    # What export is for: torch.load reads the checkpoint, but small tensors are packed references.
    raw = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert any(isinstance(v, dict) and "__packed__" in v for v in raw["model"].values())


@pytest.mark.parametrize("fmt, name", [("pt", "model.pt"), ("safetensors", "model.safetensors")])
def test_export_writes_the_best_weights_as_a_plain_file(run_dir, capsys, fmt, name):
    assert main(["export", str(run_dir), "--format", fmt]) == 0
    path = run_dir / name
    assert capsys.readouterr().err.strip() == f"wrote {path} (best weights of {run_dir})"
    read = torch.load(path, weights_only=True) if fmt == "pt" else load_file(str(path))
    assert equal(read, load_weights(run_dir / "best.safetensors"))
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in read)  # model.state_dict()'s names


def test_export_of_the_last_checkpoint_and_a_format_from_the_name(run_dir, tmp_path):
    out = tmp_path / "last.pth"
    assert main(["export", str(run_dir), "--weights", "last", "-o", str(out)]) == 0
    read = torch.load(out, weights_only=True)
    assert equal(read, load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["model"])
    # each tensor is its own storage: the file holds no more than the weights
    assert all(t.untyped_storage().nbytes() == t.nbytes for t in read.values())


def test_export_of_a_folder_of_runs_takes_the_newest(run_dir, tmp_path, capsys):
    out = tmp_path / "w.safetensors"
    assert main(["export", str(run_dir.parent), "-o", str(out)]) == 0
    assert f"using the newest, {run_dir}" in capsys.readouterr().err
    assert equal(load_file(str(out)), load_weights(run_dir / "best.safetensors"))


@pytest.mark.parametrize("args, message", [
    (["--format", "pt", "-o", "{tmp}/w.safetensors"],
     "--output {tmp}/w.safetensors names a safetensors file, but --format is pt: name it w.pt"),
    (["-o", "{tmp}"], "--output {tmp} is a folder: give a file name, e.g. {tmp}/model.safetensors"),
    (["-o", "{tmp}/no/w.pt"], "--output {tmp}/no/w.pt: the folder {tmp}/no does not exist"),
])
def test_export_mistakes_get_one_line(run_dir, tmp_path, capsys, args, message):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["export", str(run_dir), *args]) == 2
    assert capsys.readouterr().err.strip() == "error: " + message.replace("{tmp}", str(tmp_path))


def test_export_of_a_run_without_weights(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "data.json").write_text("{}")  # a run that ended before its first epoch
    assert main(["export", str(run)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: weights file {run / 'best.safetensors'} not found: the run saved no weights, "
        "and no checkpoint to rebuild them from")
    assert main(["export", str(run), "--weights", "last"]) == 2
    assert "holds no checkpoint" in capsys.readouterr().err


def test_the_documented_way_to_unpack_a_checkpoint_without_traincraft(run_dir, monkeypatch):
    docs = (Path(__file__).parents[2] / "docs" / "checkpoints.md").read_text()
    after = docs[docs.index("Without traincraft at all"):]
    code = after[after.index("```python\n") + len("```python\n"):after.index("```\n", after.index("```python\n") + 3)]
    code = code.replace("runs/quickstart/20261121-101500/", "")  # the page's run folder: this test's
    monkeypatch.chdir(run_dir)
    scope = {}
    exec(code, scope)  # noqa: S102  (the docs' own snippet, on this run's checkpoint)
    assert equal(scope["weights"], load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["model"])
