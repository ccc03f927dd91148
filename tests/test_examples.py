"""Every example runs (with few epochs)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from traincraft.cli import main

EXAMPLES = Path(__file__).parents[1] / "examples"


# finetune.yaml starts from the weights of a digits_0_4.yaml run, digit_images.yaml from the images
# digit_images.py writes: tested below, after those.
STANDALONE = sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name not in ("finetune.yaml", "digit_images.yaml"))


@pytest.mark.parametrize("name", STANDALONE)
def test_recipe_example_trains(name, tmp_path):
    run_dir = tmp_path / "run"
    code = main(["fit", str(EXAMPLES / name), "train.max_epochs=2", "--run-dir", str(run_dir), "--no-progress"])
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 2 and results["test"]["loss"] == results["test"]["loss"]  # not NaN


def test_python_example_runs():
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "python_api.py"), "--max-epochs", "3"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "test: {'loss':" in result.stdout and "'accuracy':" in result.stdout


def test_finetune_example_starts_from_the_digits_0_4_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # the recipe names runs/digits-0-4, from where traincraft runs
    pretrain = tmp_path / "runs" / "digits-0-4" / "20260101-000000"
    assert main(["fit", str(EXAMPLES / "digits_0_4.yaml"), "train.max_epochs=2", "--run-dir", str(pretrain),
                 "--no-progress"]) == 0
    run_dir = tmp_path / "finetuned"
    code = main(["fit", str(EXAMPLES / "finetune.yaml"), "train.max_epochs=3", "--run-dir", str(run_dir),
                 "--no-progress"])
    assert code == 0
    err = capsys.readouterr().err
    assert f"init_from {Path('runs/digits-0-4/20260101-000000/best.safetensors')}: loaded 14 of 16 tensors" in err
    assert "skipped (kept their initial values): head.weight, head.bias" in err
    assert "Unfroze 3 tensors" in err and "(unfreeze[0]); LR × 0.1" in err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 3 and 0.0 <= results["test"]["accuracy"] <= 1.0


def test_the_image_folder_example_trains_on_the_folder_its_script_writes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TRAINCRAFT_CACHE", str(tmp_path / "cache"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    made = subprocess.run([sys.executable, str(EXAMPLES / "digit_images.py")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "wrote 1797 images in 10 class folders under digit-images/train"
    run_dir = tmp_path / "run"
    assert main(["fit", str(EXAMPLES / "digit_images.yaml"), "train.max_epochs=2", "--run-dir", str(run_dir),
                 "--no-progress"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["epochs"] == 2 and 0.0 <= results["test"]["accuracy"] <= 1.0
    assert (run_dir / "plots" / "augment.png").is_file()
    assert len(list((tmp_path / "cache" / "images").glob("*.npy"))) == 1
