"""Augmentation and normalisation per batch, on the device: kornia's draws, seeded; training
batches only; and a run interrupted mid-epoch resumes to the same weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import traincraft as tc
from traincraft.augment import IMAGENET, BatchTransform

kornia_augmentation = pytest.importorskip("kornia.augmentation")

AUGMENT = [{"name": "random_resized_crop", "size": [8, 8], "scale": [0.6, 1.0]}, {"name": "horizontal_flip"},
           {"name": "color_jitter", "brightness": 0.2, "p": 0.5}]


def pixels(n: int = 48, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
    return x, (x.float().mean((1, 2, 3)) > 127).long()


def test_the_batch_is_what_kornia_and_the_formula_give():
    x, _ = pixels(16)
    transform = BatchTransform(AUGMENT, normalize=IMAGENET)
    torch.manual_seed(3)
    ours = transform(x, training=True)
    K = kornia_augmentation
    oracle = K.AugmentationSequential(K.RandomResizedCrop((8, 8), scale=(0.6, 1.0)), K.RandomHorizontalFlip(),
                                      K.ColorJitter(brightness=0.2, p=0.5))
    torch.manual_seed(3)
    expected = oracle(x.float() / 255)
    mean, std = torch.tensor(IMAGENET["mean"]).view(1, 3, 1, 1), torch.tensor(IMAGENET["std"]).view(1, 3, 1, 1)
    torch.testing.assert_close(ours, (expected - mean) / std, rtol=0, atol=0)
    # Not training: converted and normalised, never augmented.
    torch.testing.assert_close(transform(x, training=False), (x.float() / 255 - mean) / std, rtol=0, atol=0)


@pytest.mark.parametrize("augment, message", [
    ([{"name": "horizontl_flip"}], "unknown augmentation 'horizontl_flip' (did you mean 'horizontal_flip'"),
    ([{"name": "horizontal_flip", "prob": 0.5}], "augment[0] (horizontal_flip): unknown key 'prob'; accepted: p, p_batch, same_on_batch, keepdim"),
    ([{"size": [8, 8]}], "augment[0] must be a name or {name: ..., ...}, got {'size': [8, 8]}"),
])
def test_a_wrong_augmentation_is_one_line(augment, message):
    with pytest.raises(tc.TraincraftError) as caught:
        tc.Trainer(nn.Linear(2, 1), loss="mse", progress=False, data={"augment": augment})
    assert str(caught.value).startswith(message)


def test_normalize_with_the_wrong_channel_count_is_one_line():
    transform = BatchTransform(normalize={"mean": [0.5], "std": [0.2]})
    with pytest.raises(tc.TraincraftError, match="normalize has 1 channel statistics and the images 3 channels"):
        transform(pixels(4)[0], training=False)


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))


class StopAt(tc.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer) -> None:
        if trainer.state.step == self.step:  # as Ctrl-C does: stop after this step
            trainer.state.should_stop, trainer.state.stop_reason = True, "interrupted"


def fit(run_dir, callbacks=(), resume=None) -> tc.Trainer:
    trainer = tc.Trainer(model(), loss="cross_entropy", batch_size=8, max_epochs=3, seed=0, progress=False,
                         run_dir=run_dir, callbacks=list(callbacks),
                         data={"augment": AUGMENT, "normalize": IMAGENET})
    trainer.fit(pixels(), val=pixels(16, seed=1), resume=resume)
    return trainer


def test_augmented_training_is_repeatable_and_resumes_mid_epoch_to_the_same_weights(tmp_path):
    whole = fit(tmp_path / "a")
    again = fit(tmp_path / "b")
    fit(tmp_path / "c", callbacks=[StopAt(9)])  # mid-epoch 2 (6 steps per epoch)
    resumed = fit(tmp_path / "c", resume=tmp_path / "c")
    for a, b, c in zip(whole.model.state_dict().values(), again.model.state_dict().values(),
                       resumed.model.state_dict().values()):
        assert torch.equal(a, b) and torch.equal(a, c)
    assert [r["val_loss"] for r in whole.history.epochs] == [r["val_loss"] for r in resumed.history.epochs]
    # Validation is not augmented: evaluating twice gives the same figures.
    assert whole.evaluate(pixels(16, seed=1)) == whole.evaluate(pixels(16, seed=1))
