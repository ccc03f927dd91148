"""Plots in plots/, summary.json, steps.csv and the self-contained report.html of a run."""

from __future__ import annotations

import base64
import csv
import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import torch
from torch import nn

import traincraft as tc
from traincraft.cli import main
from traincraft.report import (
    RunReport,
    build_report,
    lr_figure,
    metric_names,
    stop_marker,
)

PNG = b"\x89PNG\r\n\x1a\n"
CHROMIUM = Path("/usr/bin/chromium")


def report_main(argv):
    """``traincraft report ...`` as the command line runs it (under its error policy)."""
    return main(["report", *argv])


def data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 3, generator=g)
    y = (X[:, 0] - 2 * X[:, 1] > 0).long()
    return (X[:64], y[:64]), (X[64:], y[64:])


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))


def train(run_dir, *, max_epochs=4, callbacks=(), **kwargs):
    kwargs = {
        "loss": "cross_entropy", "metrics": ["accuracy"], "optimizer": "sgd", "momentum": 0.9,
        "lr": 0.1, "batch_size": 16, "max_epochs": max_epochs, "seed": 0, "device": "cpu",
        "progress": False, "run_dir": run_dir, "clip_grad_norm": 100.0,
        "schedule": "cosine", **kwargs,
    }
    momentum = kwargs.pop("momentum")
    kwargs["optimizer"] = {"name": kwargs["optimizer"], "momentum": momentum}
    trainer = tc.Trainer(model(), callbacks=[*callbacks, RunReport(run_dir)], **kwargs)
    return trainer


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run that early stopping ends at epoch 2 (nothing counts as an improvement after epoch 1)."""
    run_dir = tmp_path_factory.mktemp("run")
    stop = tc.EarlyStopping(patience=1, min_delta=1e9, verbose=False)
    trainer = train(run_dir, max_epochs=6, callbacks=[stop])
    train_data, val_data = data()
    history = trainer.fit(train_data, val=val_data)
    return run_dir, trainer, history


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- the files


def test_fit_writes_plots_summary_and_steps(stopped_run):
    run_dir, trainer, history = stopped_run
    assert history.stop_reason == "early_stopping" and len(history) == 2
    plots = {p.name for p in (run_dir / "plots").iterdir()}
    assert plots == {"loss.png", "accuracy.png", "lr.png", "grad_norm.png"}
    for name in plots:
        assert (run_dir / "plots" / name).read_bytes().startswith(PNG)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["stop_reason"] == "early_stopping"
    assert summary["epochs"] == 2 and summary["steps"] == 8 == trainer.state.step
    assert "best" not in summary  # best.json holds it, with the best weights
    assert json.loads((run_dir / "best.json").read_text()) == {
        "epoch": 1, "step": 4, "monitor": "val_loss", "value": history[0]["val_loss"]}
    # seconds is rounded to the millisecond: the rate lies within what that rounding allows
    low, high = summary["seconds"] - 0.0005, summary["seconds"] + 0.0005
    assert 8 / high - 0.001 <= summary["steps_per_second"] <= 8 / max(low, 1e-9) + 0.001
    assert (run_dir / "report.html").is_file()


def test_steps_csv_holds_the_lr_of_every_step_as_torch_schedules_it(stopped_run):
    run_dir, _, _ = stopped_run
    rows = read_csv(run_dir / "steps.csv")
    # torch's own scheduler, stepped once per optimizer step over the planned run (6 epochs × 4)
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=24)
    expected = []
    for _ in range(8):
        expected.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    lr_columns = [c for c in rows[0] if c.startswith("lr/")]
    assert lr_columns  # one per parameter group (decay and no-decay)
    for column in lr_columns:
        assert [float(r[column]) for r in rows] == pytest.approx(expected, rel=1e-12)
    assert [float(r["momentum"]) for r in rows] == [0.9] * 8


def test_the_report_is_one_self_contained_page(stopped_run):
    run_dir, _, history = stopped_run
    page = (run_dir / "report.html").read_text()
    checker = StrictHTML()
    checker.feed(page)
    checker.close()
    assert checker.stack == [] and checker.errors == []
    plots = sorted(p.name for p in (run_dir / "plots").iterdir())
    assert len(checker.images) == len(plots) == 4
    for src in checker.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG)
    # The embedded images are exactly the files in plots/.
    embedded = sorted(base64.b64decode(s.split(",", 1)[1]) for s in checker.images)
    assert embedded == sorted((run_dir / "plots" / p).read_bytes() for p in plots)
    assert no_external_reference(page)
    assert "early_stopping" in page and "best epoch" in page
    assert f"{history[0]['val_loss']:.4g}" in page  # four significant digits


class StrictHTML(HTMLParser):
    """Every element closed in order; collects the images' sources and any script or link."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self):
        super().__init__()
        self.stack, self.errors, self.images = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "link", "iframe", "object", "embed"):
            self.errors.append(f"<{tag}>")
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()


def no_external_reference(page: str) -> bool:
    without_images = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    return re.search(r"https?:|//|@import|url\(", without_images, flags=re.IGNORECASE) is None


def test_report_main_rebuilds_the_same_page_from_the_files_alone(stopped_run, tmp_path, capsys):
    run_dir, _, _ = stopped_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    original = (copy / "report.html").read_text()
    shutil.rmtree(copy / "plots")
    (copy / "report.html").unlink()
    assert report_main([str(copy)]) == 0
    rebuilt = (copy / "report.html").read_text()
    # Same content but the folder shown in the header (and its name as the title, with no recipe).
    rebuilt = rebuilt.replace(str(copy), "RUN").replace(copy.name, "NAME")
    assert rebuilt == original.replace(str(run_dir), "RUN").replace(run_dir.name, "NAME")
    assert {p.name for p in (copy / "plots").iterdir()} == {"loss.png", "accuracy.png", "lr.png", "grad_norm.png"}
    assert "report:" in capsys.readouterr().err


def test_a_recipe_run_report_has_the_recipe_environment_and_test_metrics(tmp_path):
    recipe = {
        "name": "iris-report", "data": {"dataset": "iris", "split": {"val": 0.2, "test": 0.2}, "batch_size": 16},
        "model": {"name": "mlp", "hidden_sizes": [8]}, "optimizer": {"name": "adamw", "lr": 0.01},
        "train": {"max_epochs": 2}, "metrics": ["accuracy"],
    }
    run_dir = tmp_path / "run"
    trainer = tc.Trainer.from_recipe(recipe, run_dir=run_dir, progress=False, checkpoint=False)
    trainer.fit()
    build_report(run_dir)  # again, now that results.json holds the test figures
    page = (run_dir / "report.html").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    assert "<h1>iris-report</h1>" in page
    assert f"{100 * results['test']['accuracy']:.2f}%" in page  # a rate, as a percentage
    assert "dataset: iris" in page  # the recipe, as written
    assert torch.__version__ in page  # the environment
    assert no_external_reference(page)


def test_a_resumed_run_keeps_the_whole_lr_curve(tmp_path):
    train_data, val_data = data()
    whole = train(tmp_path / "whole", max_epochs=4)
    whole.fit(train_data, val=val_data)
    first = train(tmp_path / "parts", max_epochs=2)
    first.fit(train_data, val=val_data)
    second = train(tmp_path / "parts", max_epochs=4)
    second.fit(train_data, val=val_data, resume=tmp_path / "parts")
    # The planned length differs (2 then 4 epochs), so compare the step column and its length.
    rows_whole = read_csv(tmp_path / "whole" / "steps.csv")
    rows_parts = read_csv(tmp_path / "parts" / "steps.csv")
    assert [r["step"] for r in rows_parts] == [r["step"] for r in rows_whole] == [str(i) for i in range(1, 17)]
    summary = json.loads((tmp_path / "parts" / "summary.json").read_text())
    assert summary["steps"] == 16 and summary["epochs"] == 4


# --------------------------------------------------------------------------- figures


def test_history_plot_marks_the_best_epoch_and_the_early_stop(stopped_run):
    _, _, history = stopped_run
    fig = history.plot()
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "accuracy", "gradient norm"]
    loss_ax = fig.axes[0]
    labels = [line.get_label() for line in loss_ax.get_lines()]
    assert {"train_loss", "val_loss", "best epoch 1", "stopped (early_stopping)"} <= set(labels)
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    assert list(lines["best epoch 1"].get_xdata()) == [1, 1]
    assert list(lines["stopped (early_stopping)"].get_xdata()) == [2, 2]
    assert list(lines["val_loss"].get_ydata()) == [row["val_loss"] for row in history]
    assert [ax.get_title() for ax in history.plot(metrics=[]).axes] == ["loss", "gradient norm"]


def test_metric_names_and_stop_marker():
    columns = ["epoch", "step", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
               "train_loss/mse", "val_f1", "grad_norm", "seconds"]
    assert metric_names(columns) == ["accuracy", "loss/mse", "f1"]
    assert stop_marker("early_stopping", 7) == (7, "stopped (early_stopping)")
    assert stop_marker("max_epochs", 7) is None and stop_marker("max_steps", 7) is None
    assert stop_marker(None, 7) is None


def test_lr_figure_shows_momentum_only_when_it_changes():
    steps = {"step": [1.0, 2.0, 3.0], "lr/0": [0.1, 0.2, 0.3], "lr/1": [0.1, 0.2, 0.3]}
    constant = lr_figure({**steps, "momentum": [0.9, 0.9, 0.9]})
    assert len(constant.axes) == 1
    assert len(constant.axes[0].get_lines()) == 1  # two groups with equal LRs: one line
    cycled = lr_figure({**steps, "lr/1": [0.01, 0.02, 0.03], "momentum": [0.95, 0.9, 0.85]}, steps_per_epoch=2)
    assert len(cycled.axes[0].get_lines()) == 2
    assert list(cycled.axes[1].get_lines()[0].get_ydata()) == [0.95, 0.9, 0.85]
    assert lr_figure({"step": []}) is None


def test_importing_the_report_module_loads_no_matplotlib():
    code = "import sys, traincraft.report, traincraft.history; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_failed_run_still_gets_its_report_and_the_error_is_kept(tmp_path):
    class Boom(tc.Callback):
        def on_epoch_end(self, trainer):
            if trainer.state.epoch == 2:
                raise RuntimeError("boom")

    trainer = train(tmp_path, max_epochs=4, callbacks=[Boom()])
    train_data, val_data = data()
    with pytest.raises(RuntimeError, match="boom"):
        trainer.fit(train_data, val=val_data)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["stop_reason"] == "error" and summary["steps"] == 8
    assert (tmp_path / "report.html").is_file()


# --------------------------------------------------------------------------- in a browser


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (apt-get install chromium)")
def test_the_report_renders_in_headless_chromium_with_its_plots(stopped_run, tmp_path):
    from PIL import Image

    run_dir, _, _ = stopped_run
    shot = tmp_path / "shot.png"
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run",
         f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2000",
         (run_dir / "report.html").resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    image = Image.open(shot).convert("RGB")
    assert image.size[0] >= 1000  # the window (or its device-pixel multiple)
    pixels = list(image.getdata())
    assert len(set(pixels)) > 50  # not a blank page
    # matplotlib's first colour (tab:blue, the train curves) is on screen: the plots rendered.
    blue = sum(1 for r, g, b in pixels if abs(r - 31) < 25 and abs(g - 119) < 25 and abs(b - 180) < 25)
    assert blue > 50, blue  # curves drawn (a page without plots has none)


def test_recording_the_steps_reads_nothing_from_the_device(tmp_path, monkeypatch):
    """As many host reads with RunReport (whose report is written at the end) as without it."""
    import types

    from traincraft import step

    # The non-finite check reads the sums every 0.5 s of wall time: a clock that stands still
    # keeps its reads the same in both runs however loaded the machine is.
    monkeypatch.setattr(step, "time", types.SimpleNamespace(monotonic=lambda: 0.0))
    counts = {}
    originals = {name: getattr(torch.Tensor, name) for name in ("item", "__float__", "tolist", "cpu")}

    def counted(name):
        def read(self, *args, **kwargs):
            counts[name] = counts.get(name, 0) + 1
            return originals[name](self, *args, **kwargs)
        return read

    def reads(callbacks, run_dir):
        counts.clear()
        trainer = tc.Trainer(model(), loss="cross_entropy", batch_size=8, max_epochs=2, seed=0, device="cpu",
                             progress=False, run_dir=run_dir, checkpoint=False, callbacks=callbacks)
        train_data, _ = data()
        try:
            for name in originals:
                setattr(torch.Tensor, name, counted(name))
            trainer.fit(train_data)
        finally:
            for name, original in originals.items():
                setattr(torch.Tensor, name, original)
        return dict(counts)

    with_report, without = reads([RunReport(tmp_path / "b")], tmp_path / "b"), reads([], tmp_path / "a")
    assert with_report == without
    assert len(read_csv(tmp_path / "b" / "steps.csv")) == 16
