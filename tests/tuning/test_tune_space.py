"""The search space against the recipe: every mistake is found before any trial runs."""

import pytest

optuna = pytest.importorskip("optuna")

from tune_helpers import recipe  # noqa: E402

from traincraft.errors import TraincraftError  # noqa: E402
from traincraft.tuning.study import tune  # noqa: E402


@pytest.mark.parametrize(
    ("key", "spec", "expected"),
    [
        ("optimizer.lrr", {"choice": [0.01]}, "no argument 'lrr' (did you mean 'lr'"),
        (
            "data.batchsize",
            {"choice": [8]},
            "data has no key 'batchsize' (did you mean 'batch_size'",
        ),
        ("model.hiden_sizes", {"choice": [[8]]}, "unknown argument 'hiden_sizes'"),
        (
            "trian.max_epochs",
            {"int": [1, 3]},
            "the recipe has no key 'trian' (did you mean 'train'",
        ),
        ("train.max_epochs.x", {"int": [1, 3]}, "train.max_epochs is 3, not a section"),
        ("tune.trials", {"int": [1, 3]}, "the tune section itself cannot be searched"),
        ("data.batch_size", {"choice": [16, 0]}, "tune.space 'data.batch_size' = 0"),
        ("model.activation", {"choice": ["relu", "gelux"]}, "unknown activation 'gelux'"),
    ],
)
def test_a_bad_space_key_or_value_fails_before_any_trial(tmp_path, key, spec, expected):
    with pytest.raises(TraincraftError, match="tune.space") as caught:
        tune(recipe({key: spec}), study_dir=tmp_path, plots=False)
    assert expected in str(caught.value)
    assert not (tmp_path / "study.journal").exists()
    assert not list(tmp_path.glob("trial-*"))
