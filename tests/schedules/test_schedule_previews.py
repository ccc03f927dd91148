"""preview, key_points and plot: a schedule's LRs without training."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from traincraft import schedules
from traincraft.errors import TraincraftError

ROOT = Path(__file__).resolve().parents[2]


def test_preview_rows_and_max_steps() -> None:
    rows = schedules.preview({"name": "linear"}, 4, 5, base_lrs=(1.0, 0.5), max_steps=10)
    assert len(rows) == 11 and all(len(r) == 2 for r in rows)
    assert rows[0] == [1.0, 0.5] and rows[10] == [0.0, 0.0]  # "whole run" is the 10 steps
    with pytest.raises(TraincraftError, match="steps_per_epoch and epochs > 0"):
        schedules.preview("cosine", 0, 5)


def test_preview_plateau_metrics_must_cover_the_epochs() -> None:
    with pytest.raises(TraincraftError, match="has 2 values but the preview spans 4 epochs"):
        schedules.preview("plateau", 5, 4, metrics=[1.0, 2.0])
    # without metrics plateau never cuts
    assert schedules.preview({"name": "plateau", "patience": 0}, 5, 4) == [[1.0]] * 21


def test_key_points() -> None:
    spec = {
        "name": "multistep",
        "milestones": ["3ep", "6ep"],
        "gamma": 0.5,
        "warmup": "1ep",
        "cooldown": "1ep",
    }
    points = schedules.key_points(spec, 10, 10, base_lr=0.2)
    assert points == [
        ("start", 0, pytest.approx(0.002)),
        ("end of warm-up", 10, 0.2),
        ("milestone", 40, 0.1),  # milestones count from the end of the warm-up
        ("milestone", 70, 0.05),
        ("start of cool-down", 90, 0.05),
        ("end", 100, 0.0),
    ]
    onecycle = schedules.key_points({"name": "onecycle", "max_lr": 1.0}, 10, 10)
    assert onecycle[1] == ("milestone", 29, 1.0)  # torch's peak: step pct_start·total - 1
    cuts = schedules.key_points(
        {"name": "plateau", "patience": 0, "factor": 0.5}, 5, 4, metrics=[1.0, 2.0, 0.5, 0.7]
    )
    assert cuts == [("start", 0, 1.0), ("milestone", 10, 0.5), ("end", 20, 0.25)]


def test_plot_writes_a_png(tmp_path: Path) -> None:
    rows = schedules.preview({"name": "cosine", "warmup": 5}, 10, 4, base_lrs=(1.0, 0.5))
    path = tmp_path / "out" / "lr.png"
    fig = schedules.plot(rows, steps_per_epoch=10, title="cosine", path=path, labels=["a", "b"])
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert [line.get_label() for line in ax.get_lines()] == ["a", "b"]
    assert list(ax.get_lines()[1].get_ydata()) == [r[1] for r in rows]
    assert ax.get_title() == "cosine"
    single = schedules.plot([r[0] for r in rows])
    assert len(single.axes[0].get_lines()) == 1
    assert not list(tmp_path.glob("out/.*"))  # no temporary file left behind


def test_docs_show_every_schedule() -> None:
    path = ROOT / "docs" / "make_schedule_plots.py"
    spec = importlib.util.spec_from_file_location("make_schedule_plots", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    shown = {example["spec"]["name"] for example in module.EXAMPLES.values()}
    assert set(schedules.names()) <= shown
    page = (ROOT / "docs" / "schedules.md").read_text()
    for name in module.EXAMPLES:
        assert f"img/schedules/{name}.png" in page
        assert module.snippet(name) in page  # the snippet beside the plot is what drew it
        assert (ROOT / "docs" / "img" / "schedules" / f"{name}.png").is_file()
