"""The tutorials' fine-tuning for real: torchvision and timm models from local weights, frozen
but for a new head, on images of another channel count. These run in the vision environment
(``make test-vision``: the full torch build with torchvision and timm); elsewhere they skip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

from traincraft import load_model  # noqa: E402
from traincraft.checkpoint import load_weights  # noqa: E402
from traincraft.cli import main  # noqa: E402
from traincraft.finetune.weights import load_initial_weights  # noqa: E402


@pytest.fixture(scope="module")
def resnet18_weights(tmp_path_factory) -> Path:
    """A torchvision ResNet-18's state dict with 1000 classes and 3-channel input, saved the way
    the tutorials save weights (a .pth of model.state_dict())."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("pretrained") / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return path


def test_resnet_from_local_weights_frozen_with_a_new_head(tmp_path, resnet18_weights, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    pretrained = torch.load(resnet18_weights, weights_only=True)
    recipe = {
        "name": "digits-resnet", "seed": 0,
        "data": {"dataset": "digits", "split": {"val": 0.1, "test": 0.2}, "scale": "minmax", "batch_size": 64},
        "model": {"name": "torchvision:resnet18", "weights": str(resnet18_weights)},
        "loss": "cross_entropy",
        "optimizer": {"name": "adamw", "lr": 1.0e-2},
        "finetune": {"freeze": ["*"]},  # everything the weights gave; the new head (fc) trains
        "train": {"max_epochs": 3},
        "metrics": ["accuracy"],
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["fit", "recipe.yaml", "--run-dir", "run", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "adapted to the images' channels: conv1.weight (3 -> 1 input channels)" in err
    assert "trainable as new (not loaded by init_from): fc.weight, fc.bias" in err
    trained = load_weights(tmp_path / "run" / "checkpoints" / "last.ckpt")
    # frozen: bitwise the pretrained weights (the first convolution summed over R, G, B)
    assert torch.equal(trained["conv1.weight"], pretrained["conv1.weight"].sum(1, keepdim=True))
    for key in ("layer1.0.conv1.weight", "layer4.1.bn2.weight", "layer4.1.bn2.running_mean"):
        assert torch.equal(trained[key], pretrained[key]), key
    assert trained["fc.weight"].shape == (10, 512)
    results = json.loads((tmp_path / "run" / "results.json").read_text())["test"]
    assert results["accuracy"] > 0.3  # frozen random features, a trained linear head: well above chance
    # the run folder stands alone: the pretrained file moved away, evaluate gives results.json
    shutil.move(str(resnet18_weights), str(tmp_path / "elsewhere.pth"))
    try:
        capsys.readouterr()
        assert main(["evaluate", "run"]) == 0
        evaluated = json.loads(capsys.readouterr().out)
        assert evaluated["accuracy"] == results["accuracy"]
        model = load_model("run")
        assert isinstance(model, torchvision.models.ResNet) and model.conv1.in_channels == 1
    finally:
        shutil.move(str(tmp_path / "elsewhere.pth"), str(resnet18_weights))


@pytest.mark.parametrize("channels", [1, 4])
def test_timm_in_chans_from_three_channel_weights(tmp_path, channels):
    torch.manual_seed(0)
    rgb = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    torch.save(rgb.state_dict(), tmp_path / "rgb.pth")
    from traincraft import models

    model = models.build({"name": "timm:resnet18", "weights": str(tmp_path / "rgb.pth")},
                         input_shape=(channels, 16, 16), output_size=7)
    first = model.conv1.weight.detach()
    expected = rgb.conv1.weight.sum(1, keepdim=True) if channels == 1 else \
        rgb.conv1.weight.repeat(1, 2, 1, 1)[:, :channels] * (3 / channels)
    assert torch.equal(first, expected.detach())
    assert model(torch.rand(2, channels, 16, 16)).shape == (2, 7)


def test_torchvision_for_four_channels_adapts_its_first_convolution(tmp_path, resnet18_weights):
    from traincraft import models

    model = models.build({"name": "torchvision:resnet18"}, input_shape=(4, 16, 16), output_size=3)
    report = load_initial_weights(model, resnet18_weights)
    assert [a[:3] for a in report.adapted] == [("conv1.weight", 3, 4)]
    assert model(torch.rand(2, 4, 16, 16)).shape == (2, 3)
