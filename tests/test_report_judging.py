"""The report judges the model: predictions.npz written at the end of fit, the confusion matrix
and per-class table (scikit-learn as the oracle), residuals, forecasts, figures formatted for
people, the recipe as written, a data summary, escaping, and the page as Chromium renders it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import traincraft as tc
from traincraft import judging
from traincraft.cli import main
from traincraft.report import build_report, epoch_figure, wants_log_axis
from traincraft.report_format import figure_text, shown_path
from traincraft.run import load_model, load_run, prepare_data

CHROMIUM = Path("/usr/bin/chromium")
sklearn_metrics = pytest.importorskip("sklearn.metrics")


def fit(recipe: dict, run_dir: Path) -> Path:
    trainer = tc.Trainer.from_recipe(recipe, run_dir=run_dir, progress=False)
    trainer.fit()
    return run_dir


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory) -> Path:
    """The quickstart's data and model, small and short."""
    recipe = {
        "name": "digits-judged", "seed": 0,
        "data": {"dataset": "digits", "split": {"val": 0.1, "test": 0.2}, "scale": "minmax", "batch_size": 64},
        "model": {"name": "cnn", "channels": [8, 16]}, "optimizer": {"name": "adamw", "lr": 3e-3},
        "train": {"max_epochs": 2}, "metrics": ["accuracy"],
    }
    return fit(recipe, tmp_path_factory.mktemp("digits") / "run")


@pytest.fixture(scope="module")
def diabetes_run(tmp_path_factory) -> Path:
    recipe = {
        "name": "diabetes-judged", "seed": 0,
        "data": {"dataset": "diabetes", "split": {"val": 0.15, "test": 0.15}, "scale": "standard", "batch_size": 32},
        "model": {"name": "mlp", "hidden_sizes": [16]}, "optimizer": {"name": "adamw", "lr": 3e-3},
        "loss": "mse", "train": {"max_epochs": 3}, "metrics": ["mae", "r2"],
    }
    return fit(recipe, tmp_path_factory.mktemp("diabetes") / "run")


def page_of(run_dir: Path) -> str:
    return (run_dir / "report.html").read_text(encoding="utf-8")


def saved(run_dir: Path) -> dict:
    arrays = judging.load_predictions(run_dir)
    assert arrays is not None
    return arrays


# --------------------------------------------------------------------------- what is judged


def test_the_saved_predictions_are_the_run_models_on_its_test_split(digits_run):
    arrays = saved(digits_run)
    recipe, _ = load_run(digits_run)
    data = prepare_data(recipe)
    x, y = data.test
    with torch.no_grad():
        probs = load_model(digits_run)(x).softmax(dim=1)
    assert str(arrays["split"]) == "test" and str(arrays["task"]) == "classification"
    assert np.array_equal(arrays["target"], y.numpy())
    assert np.array_equal(arrays["predicted"], probs.argmax(dim=1).numpy())
    np.testing.assert_allclose(arrays["confidence"], probs.max(dim=1).values.numpy(), rtol=1e-5)
    assert np.array_equal(arrays["index"], data.indices["test"].numpy())
    # The accuracy it implies is the test accuracy results.json holds.
    results = json.loads((digits_run / "results.json").read_text())
    assert (arrays["target"] == arrays["predicted"]).mean() == pytest.approx(results["test"]["accuracy"], abs=1e-9)


def test_the_confusion_matrix_and_the_per_class_table_are_scikit_learns(digits_run):
    arrays = saved(digits_run)
    target, predicted = arrays["target"], arrays["predicted"]
    matrix = judging.confusion_matrix(target, predicted, 10)
    assert np.array_equal(matrix, sklearn_metrics.confusion_matrix(target, predicted, labels=range(10)))
    table = judging.per_class(matrix)
    expected = sklearn_metrics.precision_recall_fscore_support(target, predicted, labels=range(10), zero_division=np.nan)
    for ours, theirs in zip((table["precision"], table["recall"], table["f1"], table["support"]), expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, equal_nan=True)
    page = page_of(digits_run)
    for i in range(10):  # each class's row, as percentages
        row = (f"<tr><td>{i}</td><td class=\"num\">{100 * table['precision'][i]:.2f}%</td>"
               f"<td class=\"num\">{100 * table['recall'][i]:.2f}%</td>")
        assert row in page


@pytest.mark.parametrize("seed", range(4))
def test_undefined_rates_and_averages_are_as_scikit_learn_has_them(seed):
    rng = np.random.default_rng(seed)
    classes = 6
    target = rng.choice(classes - 1, size=50, p=[0.5, 0.3, 0.1, 0.07, 0.03])  # class 5 never occurs
    predicted = np.where(rng.random(50) < 0.6, target, rng.choice([0, 1, 5], size=50))  # 2..4 rarely predicted
    table = judging.per_class(judging.confusion_matrix(target, predicted, classes))
    expected = sklearn_metrics.precision_recall_fscore_support(target, predicted, labels=range(classes),
                                                               zero_division=np.nan)
    for ours, theirs in zip((table["precision"], table["recall"], table["f1"], table["support"]), expected):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, equal_nan=True)
    averages = judging.averages(table)
    for name, average in (("macro avg", "macro"), ("weighted avg", "weighted")):
        p, r, f, _ = sklearn_metrics.precision_recall_fscore_support(
            target, predicted, labels=range(classes), zero_division=np.nan, average=average)
        assert [averages[name][k] for k in ("precision", "recall", "f1")] == pytest.approx([p, r, f], rel=1e-12)


def test_targets_outside_the_classes_are_left_out_of_the_matrix():
    matrix = judging.confusion_matrix(np.array([0, 1, -100, 1]), np.array([0, 0, 1, 1]), 2)
    assert matrix.tolist() == [[1, 0], [1, 1]]


def test_the_most_confident_mistakes_come_first():
    target = np.array([0, 1, 2, 0, 1, 2, 0])
    predicted = np.array([0, 2, 2, 1, 0, 1, 1])
    confidence = np.array([0.99, 0.6, 0.9, 0.8, 0.6, 0.95, 0.5], dtype=np.float32)
    rows = judging.confident_mistakes(target, predicted, confidence, 4)
    assert rows.tolist() == [5, 3, 1, 4]  # 0.95, 0.8, then the tie at 0.6 in row order


def test_class_decisions_read_logits_binary_columns_and_one_hot_targets():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.5, 3.0]])
    target, predicted, confidence = judging.class_decisions(logits, torch.tensor([0, 1]))
    assert predicted.tolist() == [0, 2] and target.tolist() == [0, 1]
    np.testing.assert_allclose(confidence, logits.softmax(dim=1).max(dim=1).values.numpy(), rtol=1e-6)
    _, predicted, confidence = judging.class_decisions(torch.tensor([[1.5], [-0.5]]), torch.tensor([1, 1]))
    assert predicted.tolist() == [1, 0]
    np.testing.assert_allclose(confidence, [torch.sigmoid(torch.tensor(1.5)).item(),
                                            1 - torch.sigmoid(torch.tensor(-0.5)).item()], rtol=1e-6)
    _, predicted, _ = judging.class_decisions(torch.tensor([0.7, 0.2]), torch.tensor([1, 0]), probabilities=True)
    assert predicted.tolist() == [1, 0]  # probabilities: positive above 0.5
    one_hot = torch.eye(3)[[2, 0]]
    assert judging.class_decisions(logits, one_hot)[0].tolist() == [2, 0]
    assert judging.class_decisions(torch.zeros(2, 3, 4, 4), torch.zeros(2, 4, 4)) is None  # a segmentation map


def test_regression_errors_are_scikit_learns(diabetes_run):
    arrays = saved(diabetes_run)
    t, p = arrays["target"][:, 0].astype(np.float64), arrays["predicted"][:, 0].astype(np.float64)
    (row,) = judging.regression_errors(arrays["target"], arrays["predicted"])
    assert row["mae"] == pytest.approx(sklearn_metrics.mean_absolute_error(t, p), rel=1e-12)
    assert row["rmse"] == pytest.approx(np.sqrt(sklearn_metrics.mean_squared_error(t, p)), rel=1e-12)
    assert row["r2"] == pytest.approx(sklearn_metrics.r2_score(t, p), rel=1e-12)
    assert row["median_abs"] == pytest.approx(sklearn_metrics.median_absolute_error(t, p), rel=1e-12)
    assert row["max_abs"] == pytest.approx(sklearn_metrics.max_error(t, p), rel=1e-12)
    assert row["bias"] == pytest.approx(float(np.mean(t - p)), rel=1e-12)
    results = json.loads((diabetes_run / "results.json").read_text())
    assert row["mae"] == pytest.approx(results["test"]["mae"], rel=1e-5)
    # The model's own predictions, rebuilt from the run folder.
    recipe, _ = load_run(diabetes_run)
    x, y = prepare_data(recipe).test
    with torch.no_grad():
        np.testing.assert_allclose(arrays["predicted"], load_model(diabetes_run)(x).numpy(), rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(arrays["target"], y.numpy())


def test_forecasts_are_drawn_at_the_time_they_forecast():
    index = np.array([10, 11, 12, 13])
    series = np.arange(100, dtype=np.float64) * 2.0
    target = np.stack([series[index + h] for h in range(3)], axis=1)  # (4 windows, horizon 3)
    predicted = target + np.array([0.5, 1.0, 1.5])
    drawn = judging.forecast_series(target, predicted, index)
    assert drawn["horizon"] == 3
    assert drawn["time"].tolist() == list(range(10, 16))  # the last window covers 13..15
    assert drawn["actual"].tolist() == series[10:16].tolist()
    assert drawn["forecast_time"].tolist() == index.tolist()
    # forecasts[h][i] forecasts time index[i] + h: the actual value there plus its offset.
    for h in range(3):
        assert drawn["forecasts"][h].tolist() == (series[index + h] + 0.5 * (h + 1)).tolist()
    # Two series in a window: column h·2 + j; the first series is drawn.
    two = np.repeat(target, 2, axis=1) * np.tile([1.0, -1.0], 3)
    assert judging.forecast_series(two, two, index, series=2)["actual"].tolist() == series[10:16].tolist()


def test_a_forecast_run_overlays_its_one_step_and_horizon_forecasts(tmp_path):
    recipe = {
        "name": "sunspots-judged", "seed": 0,
        "data": {"dataset": "sunspots", "task": "forecast", "lookback": 12, "horizon": 3,
                 "split": {"val": 0.15, "test": 0.15}, "scale": "standard", "batch_size": 32},
        "model": {"name": "mlp", "hidden_sizes": [8]}, "loss": "mse", "train": {"max_epochs": 2}, "metrics": ["mae"],
    }
    run_dir = fit(recipe, tmp_path / "run")
    arrays = saved(run_dir)
    assert arrays["target"].shape == arrays["predicted"].shape == (len(arrays["index"]), 3)
    assert np.all(np.diff(arrays["index"]) == 1)  # consecutive windows of the test years
    page = page_of(run_dir)
    assert (run_dir / "plots" / "forecast.png").is_file()
    assert "1 step ahead" in page and "3 steps ahead" in page and "forecast windows" in page


# --------------------------------------------------------------------------- the page


def test_the_page_summarises_the_data_and_shows_the_recipe_as_written(digits_run):
    page = page_of(digits_run)
    info = json.loads((digits_run / "data.json").read_text())
    assert "64 (pixel_0_0 … pixel_7_7)" in page
    assert "pixel_3_3" not in page and "pixel_0_1" not in page  # not 64 names
    recipe, _ = load_run(digits_run)
    x, y = prepare_data(recipe).test
    assert info["class_counts"]["test"] == torch.bincount(y, minlength=10).tolist()
    assert f"test {len(y):,}" in page
    given, resolved = re.findall(r"<pre>(.*?)</pre>", page, flags=re.DOTALL)
    assert "max_epochs: 2" in given and "null" not in given and "patience" not in given
    assert "null" in resolved  # the resolved recipe, every default, one click away
    assert re.search(r"<details><summary>The resolved recipe[^<]*</summary>\s*<pre>", page)
    assert "_base_dir" not in page


def test_no_path_of_this_machine_is_on_the_page(digits_run):
    page = page_of(digits_run)
    assert str(digits_run) not in page and str(digits_run.parent) not in page
    assert not re.search(r"(/tmp/|/home/|/root/|/Users/|[A-Z]:\\)", page)


def test_paths_are_shown_relative_to_the_recipe_or_shortened():
    assert shown_path("/home/ann/proj/data/x.csv", "/home/ann/proj") == "data/x.csv"
    assert shown_path("/mnt/shared/data/x.csv", "/home/ann/proj") == "…/data/x.csv"
    assert shown_path("data/x.csv", "/home/ann") == "data/x.csv"
    assert shown_path("C:\\Users\\ann\\x.csv") == "…/ann/x.csv"


def test_figures_are_formatted_for_people():
    assert figure_text("val_accuracy", 0.997214) == "99.72%"
    assert figure_text("f1", 1.0) == "100.00%"
    assert figure_text("val_loss", 0.5748913) == "0.5749"
    assert figure_text("test_mse", 2900.123) == "2900"
    assert figure_text("lr", 1.01419e-05) == "1.014e-05"
    assert figure_text("loss/dice", 0.25) == "0.25"  # a loss term, not a rate
    assert figure_text("r2", 0.47661) == "0.4766" and figure_text("epoch", 12.0) == "12"
    assert figure_text("val_loss", float("nan")) == "—"


@pytest.mark.parametrize(("values", "log"), [
    ([3000.0, 900.0, 300.0, 200.0, 150.0], True),  # more than a decade
    ([2.06, 1.2, 0.8, 0.68, 0.64, 0.61, 0.6, 0.59, 0.58, 0.575, 0.573, 0.571], True),  # a first epoch far above
    ([1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7], False),  # a steady fall reads well on a linear axis
    ([0.5, -0.1, 0.2], False),  # not all positive
    ([2.0, 1.0], False),  # too few
])
def test_the_loss_gets_a_log_axis_when_its_range_calls_for_it(values, log):
    assert wants_log_axis(values) is log
    # Beside a validation curve that starts lower: each curve's own first epochs are left out.
    val = [v * 0.9 for v in values]
    assert wants_log_axis(values, val) is log
    columns = {"epoch": [float(i + 1) for i in range(len(values))], "train_loss": values, "val_loss": val}
    fig = epoch_figure(columns, ["train_loss", "val_loss"], title="loss")
    assert fig.axes[0].get_yscale() == ("log" if log else "linear")
    assert fig.axes[0].get_title() == ("loss (log scale)" if log else "loss")


def test_hostile_class_names_and_recipe_strings_are_escaped(tmp_path):
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    names = ["<script>alert(1)</script>".replace("/", ""), "$x$ & \"q\"", "<b>bold"]
    for level, name in zip((40, 120, 200), names):
        (root / name).mkdir(parents=True)
        for i in range(10):
            Image.fromarray(np.clip(rng.normal(level, 30, (10, 10, 3)), 0, 255).astype(np.uint8)).save(
                root / name / f"{i}.png")
    recipe = {
        "name": "<img src=x onerror=alert(1)>", "seed": 0,
        "data": {"dataset": {"images": str(root), "image_size": 8, "channels": 3, "cache": str(tmp_path / "cache")},
                 "split": {"val": 0.2, "test": 0.3}, "batch_size": 8},
        "model": {"name": "cnn", "channels": [4]}, "train": {"max_epochs": 1}, "metrics": ["accuracy"],
    }
    run_dir = fit(recipe, tmp_path / "run")
    page = page_of(run_dir)
    assert "<script" not in page.lower() and "<img src=x" not in page and "<b>bold" not in page
    assert "&lt;script&gt;alert(1)&lt;script&gt;" in page and "&lt;b&gt;bold" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "$x$ &amp; &quot;q&quot;" in page
    assert str(tmp_path) not in page
    arrays = saved(run_dir)
    wrong = int((arrays["target"] != arrays["predicted"]).sum())
    assert len(arrays["images"]) == min(wrong, judging.MISTAKE_IMAGES)
    assert arrays["images"].dtype == np.uint8 and arrays["images"].shape[1:] == (8, 8, 3)
    if wrong:  # the grid is drawn, with the class names as text (no mathtext)
        assert (run_dir / "plots" / "mistakes.png").is_file()


def test_the_mistake_images_are_the_inputs_of_the_most_confident_mistakes(digits_run):
    arrays = saved(digits_run)
    rows = judging.confident_mistakes(arrays["target"], arrays["predicted"], arrays["confidence"],
                                      judging.MISTAKE_IMAGES)
    assert arrays["image_rows"].tolist() == rows.tolist()
    recipe, _ = load_run(digits_run)
    x, _ = prepare_data(recipe).test
    from traincraft.image_grid import displayable

    assert np.array_equal(arrays["images"], displayable(x[torch.from_numpy(rows)], stretch=True))


def test_the_report_is_rebuilt_from_the_run_folder_alone(digits_run, tmp_path):
    copy = tmp_path / "elsewhere"
    shutil.copytree(digits_run, copy)
    original = page_of(copy)
    shutil.rmtree(copy / "plots")
    (copy / "report.html").unlink()
    assert main(["report", str(copy)]) == 0
    assert page_of(copy).replace("run elsewhere", "run run") == original
    assert {"confusion.png", "mistakes.png"} <= {p.name for p in (copy / "plots").iterdir()}


def test_a_damaged_predictions_file_leaves_a_note_and_the_rest_of_the_page(digits_run, tmp_path):
    copy = tmp_path / "damaged"
    shutil.copytree(digits_run, copy)
    (copy / judging.PREDICTIONS).write_bytes(b"PK\x03\x04 not a zip")
    build_report(copy)
    page = page_of(copy)
    assert "predictions.npz is damaged" in page and "<h2>Training curves</h2>" in page
    assert str(tmp_path) not in page


def test_a_run_without_predictions_has_no_judging_section(digits_run, tmp_path):
    copy = tmp_path / "older"
    shutil.copytree(digits_run, copy)
    (copy / judging.PREDICTIONS).unlink()
    build_report(copy)
    page = page_of(copy)
    assert "How the model does" not in page and "<h2>Training curves</h2>" in page


# --------------------------------------------------------------------------- in a browser


def screenshot(page: Path, shot: Path, profile: Path) -> Image.Image:
    subprocess.run(
        [str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
         f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1200,3000", page.resolve().as_uri()],
        check=True, capture_output=True, timeout=120,
    )
    return Image.open(shot).convert("RGB")


def count_near(image: Image.Image, colour: tuple[int, int, int], tolerance: int = 20) -> int:
    pixels = np.asarray(image, dtype=np.int16)
    return int((np.abs(pixels - np.array(colour)).max(axis=2) < tolerance).sum())


@pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium is not installed (apt-get install chromium)")
@pytest.mark.parametrize("which", ["digits", "diabetes"])
def test_the_judged_report_renders_in_headless_chromium(which, digits_run, diabetes_run, tmp_path):
    run_dir = digits_run if which == "digits" else diabetes_run
    image = screenshot(run_dir / "report.html", tmp_path / "shot.png", tmp_path / "profile")
    assert image.size[0] >= 1200 and image.size[1] >= 3000  # the window (or a device-pixel multiple)
    pixels = np.asarray(image)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 200  # not a blank page
    assert (pixels.min(axis=2) < 100).mean() > 0.005  # text and figures drawn, not a white page
    if which == "digits":  # the confusion matrix's darkest blue (the diagonal)
        assert count_near(image, (8, 48, 107), 25) > 500
    else:  # the scatter of predicted against actual (tab:blue, alpha 0.7 on white)
        assert count_near(image, (98, 158, 199), 30) > 100
