"""traincraft tune under torchrun: refused in one line per process, before any trial."""

import os
import subprocess
import sys

import pytest
import yaml

pytest.importorskip("optuna")

from tune_helpers import recipe  # noqa: E402

LAUNCH_TIMEOUT = 240  # a hang fails the test instead of blocking CI


def test_tune_under_torchrun_is_refused_before_any_trial(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe({"optimizer.lr": {"loguniform": [1.0e-3, 1.0e-1]}}, trials=2)))
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "traincraft", "tune", str(path), "--study-dir", str(tmp_path / "study"), "--no-progress"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT,
    )
    assert done.returncode != 0
    refusals = [line for line in done.stderr.splitlines() if line.startswith("error: rank ")]
    assert sorted(line[:14] for line in refusals) == ["error: rank 0:", "error: rank 1:"], done.stderr[-3000:]
    for line in refusals:
        assert "traincraft tune does not run under torchrun (WORLD_SIZE=2)" in line
        assert "--workers K on one machine" in line and "--storage postgresql://" in line
    assert not list((tmp_path / "study").glob("trial-*"))
