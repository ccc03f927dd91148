"""Tests for traincraft.finetune: initial weights, freezing, layer-wise learning rates."""

from __future__ import annotations

import copy
import pickle
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from traincraft import models, optim
from traincraft.checkpoint import CheckpointError, plain_state_dict, save_checkpoint, save_weights
from traincraft.errors import TraincraftError
from traincraft.finetune import (
    Freezer,
    kept_in_eval,
    layer_decay_rules,
    load_initial_weights,
    lr_mult_rules,
    model_blocks,
)

CNN_SPEC = {"name": "cnn", "channels": [4, 8], "hidden": 16}
HEAD_KEYS = ["head.weight", "head.bias"]


def tiny_cnn(classes: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return models.build(CNN_SPEC, input_shape=(1, 8, 8), output_size=classes)


def clone_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def wrapped(model: nn.Module) -> nn.Module:
    """A module whose state-dict keys read ``module._orig_mod.<key>`` (DDP around compile)."""
    outer, inner = nn.Module(), nn.Module()
    inner._orig_mod = model
    outer.module = inner
    return outer


def assert_backbone_loaded(dst: nn.Module, src: nn.Module, head_before: dict[str, torch.Tensor]):
    src_state = src.state_dict()
    for key, value in dst.state_dict().items():
        if key in HEAD_KEYS:
            assert torch.equal(value, head_before[key]), key
        else:
            assert torch.equal(value, src_state[key]), key


class Refused:
    """Not a tensor: a weights-only load must refuse a file that pickles it."""


# --------------------------------------------------------------------------------------------
# load_initial_weights


def test_pt_state_dict_with_wrapper_prefixes_loads_all_but_the_new_head(tmp_path):
    src, dst = tiny_cnn(5, seed=1), tiny_cnn(3, seed=2)
    path = tmp_path / "pretrained.pt"
    torch.save(wrapped(src).state_dict(), path)
    assert next(iter(torch.load(path))).startswith("module._orig_mod.")
    head_before = clone_state(dst)

    report = load_initial_weights(dst, path)

    assert_backbone_loaded(dst, src, head_before)
    keys = list(dst.state_dict())
    assert report.loaded == [k for k in keys if k not in HEAD_KEYS]
    assert report.missing == [] and report.unexpected == []
    assert report.mismatched == [("head.weight", (5, 16), (3, 16)), ("head.bias", (5,), (3,))]
    assert report.summary() == (
        f"init_from {path}: loaded {len(keys) - 2} of {len(keys)} tensors; new (kept their "
        "initial values): head.weight, head.bias; shape differs: head.weight (5, 16) in file vs "
        "(3, 16) in model, head.bias (5) in file vs (3) in model"
    )


def test_loading_keeps_parameter_identity_dtype_and_the_optimizer_link(tmp_path):
    src, dst = tiny_cnn(3, seed=1), tiny_cnn(3, seed=2).double()
    path = save_weights(src, tmp_path / "w.safetensors")
    params = list(dst.parameters())
    opt = torch.optim.SGD(params, lr=0.1)

    report = load_initial_weights(dst, path, strict=True)

    assert report.complete
    assert all(a is b for a, b in zip(params, dst.parameters()))
    assert opt.param_groups[0]["params"][0] is dst.conv1[0].weight
    for key, value in dst.state_dict().items():
        assert value.dtype == (
            torch.int64 if key.endswith("num_batches_tracked") else torch.float64
        )
        assert torch.equal(value, src.state_dict()[key].to(value.dtype))
    assert dst.conv1[0].weight.requires_grad


def test_safetensors_with_prefixed_keys(tmp_path):
    from safetensors.torch import save_file

    src, dst = tiny_cnn(5, seed=1), tiny_cnn(4, seed=2)
    state = {f"module.{k}": v.contiguous() for k, v in src.state_dict().items()}
    save_file(state, str(tmp_path / "w.safetensors"))
    head_before = clone_state(dst)
    report = load_initial_weights(dst, tmp_path / "w.safetensors")
    assert_backbone_loaded(dst, src, head_before)
    assert [k for k, _, _ in report.mismatched] == HEAD_KEYS


def test_traincraft_checkpoint_uses_its_model_entry(tmp_path):
    src, dst = tiny_cnn(5, seed=1), tiny_cnn(3, seed=2)
    opt = torch.optim.SGD(src.parameters(), lr=0.1)
    # Shaped like Trainer.state_dict(): the weights under "model", beside the rest of the run.
    state = {
        "traincraft": "0.1.0",
        "seed": 0,
        "model": plain_state_dict(wrapped(src)),
        "optimizer": opt.state_dict(),
        "state": {"epoch": 3, "step": 30},
        "rng": {},
    }
    path = save_checkpoint(state, tmp_path / "last.ckpt")
    head_before = clone_state(dst)
    report = load_initial_weights(dst, path)
    assert_backbone_loaded(dst, src, head_before)
    assert report.source == str(path)


def test_other_libraries_ckpt_files_are_read_like_state_dicts(tmp_path):
    src, dst = tiny_cnn(3, seed=1), tiny_cnn(3, seed=2)
    torch.save({"state_dict": src.state_dict(), "epoch": 4, "global_step": 40}, tmp_path / "l.ckpt")
    assert load_initial_weights(dst, tmp_path / "l.ckpt", strict=True).complete
    assert torch.equal(dst.conv2[0].weight, src.conv2[0].weight)


def test_run_folder_uses_best_safetensors(tmp_path):
    best, last, dst = tiny_cnn(3, seed=1), tiny_cnn(3, seed=3), tiny_cnn(3, seed=2)
    save_weights(best, tmp_path / "best.safetensors")
    save_checkpoint({"model": plain_state_dict(last)}, tmp_path / "checkpoints" / "last.ckpt")
    report = load_initial_weights(dst, tmp_path)
    assert report.source == str(tmp_path / "best.safetensors")
    assert all(torch.equal(v, best.state_dict()[k]) for k, v in dst.state_dict().items())


def test_run_folder_without_best_uses_the_newest_good_checkpoint(tmp_path):
    kept, dst = tiny_cnn(3, seed=1), tiny_cnn(3, seed=2)
    folder = tmp_path / "checkpoints"
    save_checkpoint({"model": plain_state_dict(kept)}, folder / "step-00000010.ckpt")
    (folder / "last.ckpt").write_bytes(b"truncated")
    report = load_initial_weights(dst, tmp_path)
    assert report.source == str(folder / "step-00000010.ckpt")
    assert all(torch.equal(v, kept.state_dict()[k]) for k, v in dst.state_dict().items())


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_pt_wrappers_are_unwrapped(tmp_path, wrapper):
    src, dst = tiny_cnn(3, seed=1), tiny_cnn(3, seed=2)
    torch.save({wrapper: src.state_dict(), "epoch": 7}, tmp_path / "w.pth")
    report = load_initial_weights(dst, tmp_path / "w.pth", strict=True)
    assert report.complete
    assert torch.equal(dst.head.weight, src.head.weight)


def test_buffers_are_loaded_too(tmp_path):
    src, dst = tiny_cnn(3, seed=1), tiny_cnn(3, seed=2)
    src.train()
    src(torch.randn(8, 1, 8, 8))  # running statistics move away from their initial values
    torch.save(src.state_dict(), tmp_path / "w.bin")
    load_initial_weights(dst, tmp_path / "w.bin")
    assert torch.equal(dst.conv1[1].running_mean, src.conv1[1].running_mean)
    assert int(dst.conv1[1].num_batches_tracked) == 1


def test_missing_and_unexpected_keys_are_reported_and_truncated(tmp_path):
    src, dst = tiny_cnn(3, seed=1), tiny_cnn(3, seed=2)
    state = {k: v for k, v in src.state_dict().items() if not k.startswith("hidden.")}
    state.update({f"extra{i}": torch.zeros(1) for i in range(7)})
    torch.save(state, tmp_path / "w.pt")
    report = load_initial_weights(dst, tmp_path / "w.pt")
    assert report.missing == ["hidden.0.weight", "hidden.0.bias"]
    assert report.unexpected == [f"extra{i}" for i in range(7)]
    assert torch.equal(dst.hidden[0].weight, tiny_cnn(3, seed=2).hidden[0].weight)
    assert report.summary().endswith(
        "new (kept their initial values): hidden.0.weight, hidden.0.bias; unexpected (ignored): "
        "extra0, extra1, extra2, extra3, extra4 and 2 more"
    )


def test_strict_raises_one_line_and_loads_nothing(tmp_path):
    src, dst = tiny_cnn(5, seed=1), tiny_cnn(3, seed=2)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    before = clone_state(dst)
    with pytest.raises(CheckpointError) as info:
        load_initial_weights(dst, tmp_path / "w.pt", strict=True)
    message = str(info.value)
    assert "\n" not in message
    assert "shape differs: head.weight (5, 16) in file vs (3, 16) in model" in message
    assert "strict" in message
    assert all(torch.equal(v, before[k]) for k, v in dst.state_dict().items())


def test_skip_leaves_matching_tensors_alone_even_when_strict(tmp_path):
    src, dst = tiny_cnn(5, seed=1), tiny_cnn(3, seed=2)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    head_before = clone_state(dst)
    report = load_initial_weights(dst, tmp_path / "w.pt", strict=True, skip=["head.*"])
    assert report.skipped == HEAD_KEYS and report.mismatched == [] and report.complete
    assert_backbone_loaded(dst, src, head_before)
    assert "skipped (kept their initial values): head.weight, head.bias" in report.summary()
    with pytest.raises(CheckpointError, match=r"skip pattern 'haed\.\*' matches no weight name"):
        load_initial_weights(dst, tmp_path / "w.pt", skip="haed.*")


@pytest.mark.parametrize("name", ["w.pt", "w.safetensors", "w.ckpt", "w.bin"])
def test_corrupt_files_raise_one_line(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError) as info:
        load_initial_weights(tiny_cnn(3), path)
    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_files_with_python_objects_are_refused(tmp_path):
    torch.save({"weight": torch.zeros(2), "extra": Refused()}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"was refused: it holds Python objects"):
        load_initial_weights(tiny_cnn(3), tmp_path / "w.pt")


def test_no_matching_name_raises_even_when_not_strict(tmp_path):
    torch.save(
        {"encoder.weight": torch.zeros(3), "encoder.bias": torch.zeros(3)}, tmp_path / "w.pt"
    )
    with pytest.raises(CheckpointError) as info:
        load_initial_weights(tiny_cnn(3), tmp_path / "w.pt")
    assert str(info.value) == (
        f"init_from {tmp_path / 'w.pt'}: no tensor name matches the model; first file keys: "
        "encoder.weight, encoder.bias; first model keys: conv1.0.weight, conv1.1.weight, "
        "conv1.1.bias, conv1.1.running_mean, conv1.1.running_var, ..."
    )


def test_only_shape_mismatches_raise_too(tmp_path):
    torch.save({"head.weight": torch.zeros(7, 16), "head.bias": torch.zeros(7)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match=r"loaded 0 of .* no tensor could be loaded"):
        load_initial_weights(tiny_cnn(3), tmp_path / "w.pt")


def test_bad_sources(tmp_path):
    with pytest.raises(CheckpointError, match=r"init_from: .*nope\.pt not found"):
        load_initial_weights(tiny_cnn(3), tmp_path / "nope.pt")
    (tmp_path / "w.txt").write_text("hello")
    with pytest.raises(CheckpointError, match=r"is not a weights file"):
        load_initial_weights(tiny_cnn(3), tmp_path / "w.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"holds neither best\.safetensors nor a checkpoint"):
        load_initial_weights(tiny_cnn(3), tmp_path / "empty")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"holds a list, not a state dict"):
        load_initial_weights(tiny_cnn(3), tmp_path / "list.pt")
    # The runs of a recipe that has not run yet: say which recipe writes them.
    with pytest.raises(CheckpointError, match=r"runs/pretrain not found .*train that run first: "
                                              r"`traincraft fit` of a recipe with name: pretrain"):
        load_initial_weights(tiny_cnn(3), tmp_path / "runs" / "pretrain")
    save_checkpoint({"optimizer": {}}, tmp_path / "no_model.ckpt")
    with pytest.raises(CheckpointError, match=r"a checkpoint without model weights"):
        load_initial_weights(tiny_cnn(3), tmp_path / "no_model.ckpt")


# --------------------------------------------------------------------------------------------
# Freezer


def batches(n: int = 4, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 1, 8, 8, generator=gen), torch.randint(0, 3, (8,), generator=gen))
        for _ in range(n)
    ]


def train_steps(model: nn.Module, steps: int = 3) -> None:
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for x, y in batches(steps):
        model.train()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_frozen_parameters_and_their_batch_norm_statistics_do_not_change():
    model = tiny_cnn(3)
    freezer = Freezer(model, ["conv1", "conv2"])
    before = clone_state(model)
    train_steps(model)
    after = model.state_dict()
    for key, value in after.items():
        if key.startswith(("conv1.", "conv2.")):
            assert torch.equal(value, before[key]), key  # weights, running stats, num_batches
        elif not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            assert not torch.equal(value, before[key]), key
    assert freezer.frozen_names() == [
        "conv1.0.weight",
        "conv1.1.bias",
        "conv1.1.weight",
        "conv2.0.weight",
        "conv2.1.bias",
        "conv2.1.weight",
    ]
    assert freezer.held_norms() == ["conv1.1", "conv2.1"]
    assert freezer.summary() == (
        "froze 6 tensors (348 parameters) in conv1, conv2; 2 batch-norm layers kept in eval mode"
    )


def test_freezing_through_the_trainer(tmp_path):
    from traincraft import Trainer

    model = tiny_cnn(3)
    Freezer(model, "conv*")
    before = clone_state(model)
    x = torch.cat([b[0] for b in batches()])
    y = torch.cat([b[1] for b in batches()])
    trainer = Trainer(
        model,
        loss="cross_entropy",
        optimizer="sgd",
        lr=0.5,
        max_epochs=1,
        batch_size=8,
        progress=False,
        device="cpu",
        seed=0,
    )
    trainer.fit((x, y))
    after = model.state_dict()
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("conv"))
    assert not torch.equal(after["head.weight"], before["head.weight"])


def test_train_bn_lets_statistics_move_but_keeps_the_weights():
    model = tiny_cnn(3)
    freezer = Freezer(model, ["conv1", "conv2"], train_bn=True)
    before = clone_state(model)
    train_steps(model)
    after = model.state_dict()
    assert torch.equal(after["conv1.1.weight"], before["conv1.1.weight"])
    assert not torch.equal(after["conv1.1.running_mean"], before["conv1.1.running_mean"])
    assert int(after["conv1.1.num_batches_tracked"]) == 3
    assert freezer.held_norms() == []
    assert model.conv1[1].training


def test_frozen_batch_norm_stays_in_eval_through_train_calls_and_copies():
    model = tiny_cnn(3)
    Freezer(model, ["conv1"])
    bn = model.conv1[1]
    for mode in (True, False, True):
        model.train(mode)
        assert not bn.training and model.conv2[1].training == mode
    bn.train()
    assert not bn.training
    assert kept_in_eval(bn) and not kept_in_eval(model.conv2[1])

    twin = copy.deepcopy(model)
    twin.train()
    assert not twin.conv1[1].training and twin.conv2[1].training
    assert kept_in_eval(twin.conv1[1])
    twin.conv1[1].train()  # the copy's hook works on the copy, not on the original
    model.eval()
    assert model.conv2[1].training is False and twin.conv2[1].training is True

    averaged = AveragedModel(model)
    averaged.train()
    assert not averaged.module.conv1[1].training and averaged.module.conv2[1].training

    restored = pickle.loads(pickle.dumps(model))
    restored.train()
    assert not restored.conv1[1].training and restored.conv2[1].training


def test_unfreeze_returns_new_parameters_in_model_order_and_releases_batch_norm():
    model = tiny_cnn(3)
    freezer = Freezer(model, ["conv1", "conv2"])
    model.train()
    newly = freezer.unfreeze(["conv2", "conv1.1"])
    assert [n for n, _ in newly] == [
        "conv1.1.weight",
        "conv1.1.bias",
        "conv2.0.weight",
        "conv2.1.weight",
        "conv2.1.bias",
    ]
    params = dict(model.named_parameters())
    assert all(p is params[n] and p.requires_grad for n, p in newly)
    assert freezer.frozen_names() == ["conv1.0.weight"]
    assert model.conv1[1].training and model.conv2[1].training  # released at once
    assert not kept_in_eval(model.conv1[1])
    model.eval()
    assert not model.conv1[1].training
    model.train()
    assert model.conv1[1].training
    assert freezer.unfreeze("conv2") == []
    with pytest.raises(TraincraftError, match=r"unfreeze pattern 'cnv2' matches no parameter"):
        freezer.unfreeze("cnv2")
    assert freezer.summary() == "froze 1 tensor (36 parameters) in conv1"


def test_unfreeze_in_eval_mode_keeps_the_layer_in_eval():
    model = tiny_cnn(3).eval()
    freezer = Freezer(model, "conv1")
    freezer.unfreeze("conv1")
    assert not model.conv1[1].training and not kept_in_eval(model.conv1[1])


def test_parameter_globs_and_partly_frozen_batch_norm():
    model = tiny_cnn(3)
    freezer = Freezer(model, "*.bias")
    assert freezer.frozen_names() == ["conv1.1.bias", "conv2.1.bias", "head.bias", "hidden.0.bias"]
    assert freezer.held_norms() == []  # the norms' weights still train
    model.train()
    assert model.conv1[1].training


def test_batch_norm_without_affine_parameters_is_held_when_its_module_is_matched():
    torch.manual_seed(0)
    model = nn.Sequential(
        OrderedDict(
            body=nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6, affine=False)),
            head=nn.Linear(6, 2),
        )
    )
    freezer = Freezer(model, "body")
    assert freezer.held_norms() == ["body.1"]
    model.train()
    model(torch.randn(5, 4))
    assert int(model.body[1].num_batches_tracked) == 0
    assert freezer.unfreeze("body") == [
        ("body.0.weight", model.body[0].weight),
        ("body.0.bias", model.body[0].bias),
    ]
    assert freezer.held_norms() == [] and model.body[1].training


def test_patterns_that_match_nothing_name_the_parameters():
    with pytest.raises(TraincraftError) as info:
        Freezer(tiny_cnn(3), ["conv1", "cnv2"])
    message = str(info.value)
    assert message.startswith(
        "freeze pattern 'cnv2' matches no parameter or module (did you mean 'conv2'"
    )
    assert "parameter names look like: conv1.0.weight, conv1.1.weight" in message
    with pytest.raises(TraincraftError, match=r"freeze needs a glob or a list of globs"):
        Freezer(tiny_cnn(3), [])


def test_freezer_state_round_trip():
    model = tiny_cnn(3)
    freezer = Freezer(model, ["conv1", "conv2"])
    freezer.unfreeze("conv2")
    state = freezer.state_dict()
    assert state == {"frozen": ["conv1.0.weight", "conv1.1.bias", "conv1.1.weight"], "norms": []}

    fresh = tiny_cnn(3)
    again = Freezer(fresh, ["conv1", "conv2"])
    again.load_state_dict(state)
    assert [n for n, p in fresh.named_parameters() if not p.requires_grad] == [
        "conv1.0.weight",
        "conv1.1.weight",
        "conv1.1.bias",
    ]
    assert again.held_norms() == ["conv1.1"]
    with pytest.raises(TraincraftError, match=r"does not have: nope"):
        again.load_state_dict({"frozen": ["nope"]})


# --------------------------------------------------------------------------------------------
# Blocks and layer decay


class Stage(nn.Sequential):
    def __init__(self, cin: int, cout: int):
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
        )


class ResNetShaped(nn.Module):
    """torchvision's ResNet layout: conv1, bn1, relu, maxpool, layer1..layer4, avgpool, fc."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1, self.layer2 = Stage(4, 4), Stage(4, 8)
        self.layer3, self.layer4 = Stage(8, 8), Stage(8, 8)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TimmShaped(nn.Module):
    """A ViT-like layout with timm's group_matcher (a final norm joins the last block)."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.patch_embed = nn.Linear(4, 4)
        self.blocks = nn.Sequential(*[nn.Linear(4, 4) for _ in range(3)])
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 2)

    def group_matcher(self, coarse: bool = False):
        return dict(
            stem=r"^cls_token|pos_embed|patch_embed",
            blocks=[(r"^blocks\.(\d+)", None), (r"^norm", (99999,))],
        )


def lrs_by_block(opt: torch.optim.Optimizer) -> dict[str, float]:
    out: dict[str, float] = {}
    for group in opt.param_groups:
        name = group["name"].removesuffix("/no_decay")
        assert out.setdefault(name, group["lr"]) == group["lr"]
    return out


@pytest.mark.parametrize(
    ("spec", "shape", "blocks"),
    [
        (CNN_SPEC, (1, 8, 8), ["conv1", "conv2", "hidden", "head"]),
        (
            {"name": "mlp", "hidden_sizes": [8, 8, 8]},
            (5,),
            ["hidden1", "hidden2", "hidden3", "head"],
        ),
        ({"name": "gru", "hidden_size": 4, "batch_norm": True}, (6, 2), ["rnn", "norm", "head"]),
    ],
)
def test_layer_decay_on_built_in_models_is_exact(spec, shape, blocks):
    model = models.build(spec, input_shape=shape, output_size=3)
    decay, lr = 0.7, 0.3
    rules = layer_decay_rules(model, decay)
    n = len(blocks)
    assert [r["name"] for r in rules] == [f"layer_decay/{b}" for b in blocks]
    assert [r["params"] for r in rules] == [[f"{b}.*"] for b in blocks]
    opt = optim.build("sgd", model, lr=lr, param_groups=rules)
    assert lrs_by_block(opt) == {
        f"layer_decay/{b}": lr * decay ** (n - 1 - i) for i, b in enumerate(blocks)
    }
    grouped = {id(p) for g in opt.param_groups for p in g["params"]}
    assert grouped == {id(p) for p in model.parameters()}


def test_layer_decay_base_mult_and_each_block_is_decay_times_the_next():
    model = tiny_cnn(3)
    rules = layer_decay_rules(model, 0.5, base_mult=2.0)
    assert [r["lr_mult"] for r in rules] == [0.25, 0.5, 1.0, 2.0]


def test_blocks_of_wrapped_models_carry_the_wrapper_prefix():
    scaled_builtin = models.build(
        "mlp", input_shape=(3,), output_size=1, target_stats=([1.0], [2.0])
    )
    assert model_blocks(scaled_builtin) == [
        ("hidden1", ["hidden1.*"]),
        ("hidden2", ["hidden2.*"]),
        ("head", ["head.*"]),
    ]
    scaled_user = models.build(
        ResNetShaped, input_shape=(3, 8, 8), output_size=1, target_stats=([0.0], [1.0])
    )
    assert isinstance(scaled_user, models.ScaledModel)
    blocks = model_blocks(scaled_user)
    assert blocks[0] == ("stem", ["model.conv1.*", "model.bn1.*"])
    assert blocks[-1] == ("fc", ["model.fc.*"])
    opt = optim.build("sgd", scaled_user, lr=1.0, param_groups=layer_decay_rules(scaled_user, 0.5))
    assert lrs_by_block(opt)["layer_decay/stem"] == 0.5**5


def test_layer_decay_on_a_resnet_shaped_model():
    model = ResNetShaped()
    blocks = model_blocks(model)
    names = ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]
    assert blocks == [
        ("stem", ["conv1.*", "bn1.*"]),
        *[(f"layer{i}", [f"layer{i}.*"]) for i in range(1, 5)],
        ("fc", ["fc.*"]),
    ]
    decay, lr = 0.8, 0.01
    opt = optim.build("adamw", model, lr=lr, param_groups=layer_decay_rules(model, decay))
    assert lrs_by_block(opt) == {
        f"layer_decay/{b}": lr * decay ** (5 - i) for i, b in enumerate(names)
    }
    by_param = {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}
    assert by_param["bn1.bias"] == lr * decay**5 and by_param["layer3.1.weight"] == lr * decay**2


def test_features_and_classifier_children_are_blocks():
    model = nn.Sequential(
        OrderedDict(
            features=nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Conv2d(2, 2, 3)),
            avgpool=nn.AdaptiveAvgPool2d(1),
            classifier=nn.Sequential(nn.Flatten(), nn.Linear(2, 3)),
        )
    )
    assert model_blocks(model) == [
        ("features.0", ["features.0.*"]),
        ("features.2", ["features.2.*"]),
        ("classifier", ["classifier.*"]),
    ]


def test_timm_group_matcher_grouping():
    model = TimmShaped()
    assert model_blocks(model) == [
        ("stem", ["cls_token", "patch_embed.weight", "patch_embed.bias"]),
        ("blocks.0", ["blocks.0.weight", "blocks.0.bias"]),
        ("blocks.1", ["blocks.1.weight", "blocks.1.bias"]),
        ("blocks.2", ["blocks.2.weight", "blocks.2.bias", "norm.weight", "norm.bias"]),
        ("head", ["head.weight", "head.bias"]),
    ]
    opt = optim.build("sgd", model, lr=1.0, param_groups=layer_decay_rules(model, 0.5))
    by_param = {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}
    assert by_param["cls_token"] == 0.5**4 and by_param["norm.weight"] == 0.5
    assert by_param["head.bias"] == 1.0


def test_fallback_uses_children_with_parameters_and_root_parameters_first():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(1))
            self.encoder = nn.Linear(2, 2)
            self.act = nn.ReLU()
            self.decoder = nn.Linear(2, 2)

    assert model_blocks(Net()) == [
        ("root", ["scale"]),
        ("encoder", ["encoder.*"]),
        ("decoder", ["decoder.*"]),
    ]


def test_skip_frozen_drops_rules_of_frozen_blocks_only():
    model = tiny_cnn(3)
    Freezer(model, ["conv1", "conv2"])
    rules = layer_decay_rules(model, 0.5, skip_frozen=True)
    assert [(r["name"], r["lr_mult"]) for r in rules] == [
        ("layer_decay/hidden", 0.5),
        ("layer_decay/head", 1.0),
    ]
    optim.build("sgd", model, lr=0.1, param_groups=rules)  # no rule matches only frozen ones


@pytest.mark.parametrize("decay", [0.0, -0.5, 1.5])
def test_layer_decay_out_of_range(decay):
    with pytest.raises(TraincraftError, match=r"layer_decay must be in \(0, 1\]"):
        layer_decay_rules(tiny_cnn(3), decay)


def test_lr_mult_rules_and_their_priority_over_layer_decay():
    model = tiny_cnn(3)
    rules = lr_mult_rules({"conv1.0.*": 0.1, "head.bias": 2.0})
    assert rules == [
        {"params": ["conv1.0.*"], "lr_mult": 0.1, "name": "lr_mult/conv1.0.*"},
        {"params": ["head.bias"], "lr_mult": 2.0, "name": "lr_mult/head.bias"},
    ]
    # The first rule that matches a parameter takes it: lr_mult rules go first.
    opt = optim.build("sgd", model, lr=1.0, param_groups=rules + layer_decay_rules(model, 0.5))
    by_param = {n: g["lr"] for g in opt.param_groups for n in g["param_names"]}
    assert by_param["conv1.0.weight"] == 0.1 and by_param["head.bias"] == 2.0
    assert (
        by_param["head.weight"] == 1.0
        and by_param["conv1.1.weight"] == 0.125
        and by_param["conv2.0.weight"] == 0.25
    )


def test_lr_mult_rules_errors():
    with pytest.raises(TraincraftError, match=r"lr_mult must be a mapping"):
        lr_mult_rules([("conv*", 0.1)])
    with pytest.raises(TraincraftError, match=r"a number in quotes is text: write 1e-3 without quotes"):
        lr_mult_rules({"conv*": "1e-3"})
    with pytest.raises(TraincraftError, match=r"must be a finite number >= 0"):
        lr_mult_rules({"conv*": -1})


def test_lightning_and_tutorial_checkpoints_load_without_renaming(tmp_path):
    import traincraft as tc
    from traincraft.finetune.weights import load_initial_weights

    torch.manual_seed(0)
    source = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    lightning = {"epoch": 3, "global_step": 40, "pytorch-lightning_version": "2.4.0",
                 "state_dict": {f"model.{k}": v for k, v in source.state_dict().items()},
                 "optimizer_states": [], "lr_schedulers": []}
    torch.save(lightning, tmp_path / "lightning.ckpt")
    tutorial = {"epoch": 3, "model_state_dict": source.state_dict(), "optimizer_state_dict": {}, "loss": 0.5}
    torch.save(tutorial, tmp_path / "tutorial.pt")
    for name, note in (("lightning.ckpt", "(its keys without 'model.')"), ("tutorial.pt", "")):
        target = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        report = load_initial_weights(target, tmp_path / name)
        assert report.complete and note in report.summary(), report.summary()
        assert all(torch.equal(a, b) for a, b in zip(target.state_dict().values(), source.state_dict().values()))
    # explicit: the file's 'model.0' is the model's 'encoder.0'
    class Wrapped(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))

    wrapped = Wrapped()
    spec = {"path": str(tmp_path / "lightning.ckpt"), "map": {"model.": "encoder."}}
    t = tc.Trainer(wrapped, loss="mse", init_from=spec, progress=False)
    assert torch.equal(wrapped.encoder[0].weight, source[0].weight)
    assert "renamed: 'model.' -> 'encoder.'" in t.finetuning.messages[0]


@pytest.mark.parametrize("channels", [1, 2, 4])
def test_a_first_convolution_is_adapted_to_the_images_channels(tmp_path, channels):
    from traincraft import models
    from traincraft.checkpoint import save_weights
    from traincraft.finetune.weights import load_initial_weights

    torch.manual_seed(0)
    rgb = models.build({"name": "cnn", "channels": [4, 8]}, input_shape=(3, 8, 8), output_size=5)
    save_weights(rgb, tmp_path / "rgb.safetensors")
    grey = models.build({"name": "cnn", "channels": [4, 8]}, input_shape=(channels, 8, 8), output_size=5)
    report = load_initial_weights(grey, tmp_path / "rgb.safetensors")
    source = rgb.state_dict()
    (key, was, now), = report.adapted
    assert (was, now) == (3, channels) and report.complete and f"{key} (3 -> {channels} input channels)" in report.summary()
    expected = source[key].sum(1, keepdim=True) if channels == 1 else \
        source[key].repeat(1, 2, 1, 1)[:, :channels] * (3 / channels)
    assert torch.equal(grey.state_dict()[key], expected)
    # a grey image (R = G = B) through the adapted kernel gives what the RGB kernel gave
    if channels == 1:
        x = torch.rand(2, 1, 8, 8)
        first = [m for m in grey.modules() if isinstance(m, nn.Conv2d)][0]
        first_rgb = [m for m in rgb.modules() if isinstance(m, nn.Conv2d)][0]
        torch.testing.assert_close(first(x), first_rgb(x.repeat(1, 3, 1, 1)))
