"""Monitor: the one improvement test shared by early stopping, checkpoints and plateau schedules."""

from __future__ import annotations

import math

import pytest

from traincraft.callbacks.monitor import Monitor, format_value, infer_mode
from traincraft.errors import TraincraftError

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        ("loss", "min"),
        ("val_loss", "min"),
        ("train_loss", "min"),
        ("test_nll_loss", "min"),
        ("val_mae", "min"),
        ("val_mse", "min"),
        ("val_rmse", "min"),
        ("val_mape", "min"),
        ("val_error", "min"),
        ("top1_error", "min"),
        ("val_perplexity", "min"),
        ("val_ppl", "min"),
        ("val_dice_loss", "min"),  # "loss" wins over "dice"
        ("VAL_LOSS", "min"),
        ("val_accuracy", "max"),
        ("val_acc", "max"),
        ("top5_acc", "max"),
        ("val_f1", "max"),
        ("macro_f1", "max"),
        ("val_r2", "max"),
        ("val_precision", "max"),
        ("average_precision", "max"),
        ("val_recall", "max"),
        ("val_auc", "max"),
        ("roc_auc", "max"),
        ("val_auroc", "max"),
        ("val_iou", "max"),
        ("miou", "max"),
        ("val_dice_score", "max"),
        ("jaccard", "max"),
        ("val_psnr", "max"),
        ("neg_mean_squared_error", "max"),  # scikit-learn's negated scorers flip
        ("val_neg_log_loss", "max"),
        ("neg_accuracy", "min"),
    ],
)
def test_infer_mode_table(name: str, mode: str) -> None:
    assert infer_mode(name) == mode


@pytest.mark.parametrize("name", ["xyz", "val_xyz", "throughput", "val_"])
def test_infer_mode_unknown_name_asks_for_mode(name: str) -> None:
    with pytest.raises(TraincraftError) as err:
        infer_mode(name)
    assert str(err.value) == (
        f"cannot tell whether {name!r} should go up or down: set mode='min' or mode='max'"
    )


def test_monitor_infers_mode_and_starts_at_worst() -> None:
    loss, acc = Monitor("val_loss"), Monitor("val_accuracy")
    assert (loss.mode, loss.best) == ("min", INF)
    assert (acc.mode, acc.best) == ("max", -INF)
    assert Monitor("val_loss", mode="auto").mode == "min"
    assert Monitor("val_custom", mode="MAX").mode == "max"
    with pytest.raises(TraincraftError, match="cannot tell whether 'val_custom'"):
        Monitor("val_custom")


def test_bad_arguments_are_refused_with_one_line() -> None:
    with pytest.raises(TraincraftError) as err:
        Monitor("val_loss", mode="maximum")
    assert str(err.value) == "mode must be one of 'min', 'max', got 'maximum' (did you mean 'max'?)"
    with pytest.raises(TraincraftError, match=r"min_delta must be a finite number >= 0, got -0\.1"):
        Monitor("val_loss", min_delta=-0.1)
    with pytest.raises(TraincraftError, match="min_delta must be"):
        Monitor("val_loss", min_delta=NAN)
    with pytest.raises(TraincraftError, match="min_delta_mode must be one of 'abs', 'rel', got 'pct'"):
        Monitor("val_loss", min_delta_mode="pct")


def test_improvement_is_strict() -> None:
    m = Monitor("val_loss")
    assert m.update(1.0)
    assert not m.is_improvement(1.0)
    assert m.is_improvement(math.nextafter(1.0, 0.0))
    a = Monitor("val_acc")
    assert a.update(0.5)
    assert not a.is_improvement(0.5)
    assert a.is_improvement(math.nextafter(0.5, 1.0))


# Deltas and bests are dyadic, so the thresholds below are exact in binary floating point.
@pytest.mark.parametrize(
    ("mode", "delta_mode", "best", "delta", "threshold"),
    [
        ("min", "abs", 1.0, 0.25, 0.75),  # best - d
        ("min", "abs", -1.0, 0.25, -1.25),
        ("max", "abs", 1.0, 0.25, 1.25),  # best + d
        ("max", "abs", -1.0, 0.25, -0.75),
        ("min", "rel", 2.0, 0.25, 1.5),  # best - |best| d
        ("min", "rel", -2.0, 0.25, -2.5),  # stays "lower" for a negative best
        ("max", "rel", 2.0, 0.25, 2.5),  # best + |best| d
        ("max", "rel", -2.0, 0.25, -1.5),
        ("min", "rel", 0.0, 0.25, 0.0),
    ],
)
def test_min_delta_threshold(
    mode: str, delta_mode: str, best: float, delta: float, threshold: float
) -> None:
    m = Monitor("val_loss", mode=mode, min_delta=delta, min_delta_mode=delta_mode)
    assert m.update(best)
    better = -math.inf if mode == "min" else math.inf
    worse = -better
    # exactly on the threshold is not enough; one ulp beyond it is
    assert not m.is_improvement(threshold)
    assert m.is_improvement(math.nextafter(threshold, better))
    assert not m.is_improvement(math.nextafter(threshold, worse))
    assert not m.update(threshold)
    assert m.best == best


def test_first_finite_value_improves_even_with_relative_delta() -> None:
    # inf - |inf| * d is nan; the first finite value must still count
    for mode in ("min", "max"):
        m = Monitor("val_loss", mode=mode, min_delta=0.5, min_delta_mode="rel")
        assert m.update(1e30)
        assert m.best == 1e30


@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_is_never_an_improvement(value: float) -> None:
    for name in ("val_loss", "val_acc"):
        m = Monitor(name)
        assert not m.update(value)
        assert m.best == (INF if name == "val_loss" else -INF)
        m.update(0.5)
        assert not m.update(value)
        assert m.best == 0.5


def test_update_tracks_the_best_of_a_sequence() -> None:
    m = Monitor("val_loss", min_delta=0.01)
    flags = [m.update(v) for v in [0.5, 0.495, 0.48, 0.6, 0.4699, 0.47]]
    assert flags == [True, False, True, False, True, False]
    assert m.best == 0.4699
    m.reset()
    assert m.best == INF


def test_value_from_reads_the_figure() -> None:
    m = Monitor("val_loss")
    assert m.value_from({"train_loss": 2.0, "val_loss": 0.25}) == 0.25
    assert isinstance(m.value_from({"val_loss": 1}), float)


def test_value_from_missing_name_lists_reported_figures() -> None:
    m = Monitor("val_los", mode="min")
    with pytest.raises(TraincraftError) as err:
        m.value_from({"train_loss": 1.0, "val_loss": 0.5, "val_accuracy": 0.9})
    assert str(err.value) == (
        "monitor 'val_los' is not among the reported figures "
        "(did you mean 'val_loss', 'train_loss'?); "
        "reported: train_loss, val_accuracy, val_loss"
    )


def test_value_from_without_validation_figures_says_so() -> None:
    m = Monitor("val_loss")
    with pytest.raises(TraincraftError) as err:
        m.value_from({"train_loss": 1.0})
    assert str(err.value) == (
        "monitor 'val_loss' is not among the reported figures; reported: train_loss "
        "(give validation data, or monitor 'train_loss')"
    )
    with pytest.raises(TraincraftError, match="no figures were reported"):
        m.value_from({})


def test_state_dict_round_trip() -> None:
    m = Monitor("val_loss", min_delta=0.1)
    m.update(0.75)
    state = m.state_dict()
    assert state == {
        "monitor": "val_loss",
        "mode": "min",
        "min_delta": 0.1,
        "min_delta_mode": "abs",
        "best": 0.75,
    }
    fresh = Monitor("val_loss", min_delta=0.1)
    fresh.load_state_dict(state)
    assert fresh.best == 0.75
    assert fresh.is_improvement(0.6) == m.is_improvement(0.6) is True
    assert fresh.is_improvement(0.7) == m.is_improvement(0.7) is False


def test_load_state_dict_refuses_another_monitor_or_mode() -> None:
    state = Monitor("val_loss").state_dict()
    with pytest.raises(TraincraftError, match="monitors 'val_loss' \\(min\\) but this run"):
        Monitor("val_acc").load_state_dict(state)
    with pytest.raises(TraincraftError, match="use the same monitor and mode"):
        Monitor("val_loss", mode="max").load_state_dict(state)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.4211, "0.4211"),
        (0.40157, "0.4016"),
        (2.0, "2.0000"),
        (-1.5, "-1.5000"),
        (0.0, "0.0000"),
        (INF, "inf"),
        (-INF, "-inf"),
        (NAN, "nan"),
        (0.0000123456, "1.235e-05"),
        (0.001, "0.0010"),
    ],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text
