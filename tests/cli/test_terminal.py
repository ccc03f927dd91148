"""``traincraft fit`` in a real terminal (tmux) at 80, 100 and 160 columns, read off the screen:
every epoch's validation figures are on it, and no line is longer than the terminal."""

from __future__ import annotations

import csv
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from traincraft.formatting import format_figure

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")

SRC = Path(__file__).parents[2] / "src"
WIDTHS = (80, 100, 160)
EPOCHS = 3
TIMEOUT = 120  # seconds for the three runs together


def write_recipe(folder: Path) -> Path:
    """A small classification run (an .npz file: no data set package to import)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 4)).astype("float32")
    np.savez(folder / "points.npz", X=X, y=(X[:, 0] > X[:, 1]).astype("int64"))
    recipe = {
        "name": "terminal", "seed": 0,
        "data": {"dataset": str(folder / "points.npz"), "task": "classification", "batch_size": 16,
                 "split": {"val": 0.2, "test": 0.2}},
        "model": {"name": "mlp", "hidden_sizes": [16]},
        "optimizer": {"name": "adamw", "lr": 0.01},
        "train": {"max_epochs": EPOCHS},
        "early_stopping": {"patience": 1},
        "metrics": ["accuracy"],
    }
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    """The three runs side by side (one tmux server of our own), each screen once it ended."""
    folder = tmp_path_factory.mktemp("tmux")
    socket = str(folder / "socket")
    recipe = write_recipe(folder)
    env = {**os.environ, "PYTHONPATH": str(SRC), "TERM": "xterm-256color"}

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-S", socket, *args], check=True, capture_output=True, text=True,
                              env=env, timeout=30).stdout

    runs = {}
    try:
        for width in WIDTHS:
            run_dir = folder / f"run{width}"
            command = (f"{sys.executable} -m traincraft fit {recipe} --run-dir {run_dir}; "
                       f"echo $? > {folder / f'rc{width}'}; sleep 600")
            tmux("new-session", "-d", "-s", f"w{width}", "-x", str(width), "-y", "50",
                 "env", f"PYTHONPATH={SRC}", "bash", "-c", command)
            runs[width] = run_dir
        deadline = time.monotonic() + TIMEOUT
        while not all((folder / f"rc{w}").exists() for w in WIDTHS) and time.monotonic() < deadline:
            time.sleep(0.2)
        found = {}
        for width, run_dir in runs.items():
            rc = folder / f"rc{width}"
            assert rc.exists(), f"traincraft fit did not end within {TIMEOUT} s at {width} columns"
            screen = tmux("capture-pane", "-p", "-t", f"w{width}")
            assert rc.read_text().strip() == "0", screen
            found[width] = (screen.rstrip("\n").splitlines(), run_dir)
        return found
    finally:
        subprocess.run(["tmux", "-S", socket, "kill-server"], capture_output=True, env=env, timeout=30)


def epoch_blocks(lines: list[str]) -> dict[int, str]:
    """Each epoch's line with its continuation lines (indented), joined by two spaces."""
    blocks: dict[int, list[str]] = {}
    current = None
    for line in lines:
        if line.startswith("epoch "):
            current = int(line.split()[1].split("/")[0])
            blocks[current] = [line]
        elif current is not None and line.startswith("    "):
            blocks[current].append(line.strip())
        else:
            current = None
    return {epoch: "  ".join(parts) for epoch, parts in blocks.items()}


@pytest.mark.parametrize("width", WIDTHS)
def test_every_epoch_shows_its_validation_figures_and_no_line_is_cut(screens, width):
    lines, run_dir = screens[width]
    # A line as long as the terminal is one the terminal broke: every line is shorter.
    assert all(len(line) < width for line in lines), "\n".join(lines)
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    blocks = epoch_blocks(lines)
    assert sorted(blocks) == list(range(1, EPOCHS + 1)), "\n".join(lines)
    for row in rows:
        block = blocks[int(row["epoch"])]
        fields = block.split("  ")
        assert re.fullmatch(rf"epoch {row['epoch']}/{EPOCHS} [0-9.]+s", fields[0])  # the epoch and its time
        # The monitored figure first, then the other validation figures, then training's.
        assert fields[1].startswith(f"val_loss {format_figure('val_loss', float(row['val_loss']))}")
        assert fields[2] == f"val_accuracy {format_figure('val_accuracy', float(row['val_accuracy']))}"
        assert fields[3] == f"train_loss {format_figure('train_loss', float(row['train_loss']))}"
        assert sum(f.startswith("lr ") for f in fields) == 1
    # Wrapped between fields at this width, kept whole at 160.
    wrapped = any(line.startswith("    ") and not line.startswith("     ") for line in lines)
    assert wrapped == (width < 160)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_end_names_the_report_and_words_are_never_split(screens, width):
    lines, run_dir = screens[width]
    assert f"report:  {run_dir / 'report.html'}" in lines or width < len(f"report:  {run_dir}/report.html") + 1
    text = " ".join(line.strip() for line in lines)
    assert "steps per epoch, up to 3 epochs" in text  # the start line wraps between words
    assert "stopped: max_epochs after 3 epochs" in text or "stopped: early_stopping" in text
