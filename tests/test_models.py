"""Tests for traincraft.models: built-in models, user classes, the output scaling layer, errors."""

from __future__ import annotations

import sys
import types
import warnings

import pytest
import torch
from torch import nn

from traincraft import models
from traincraft.errors import ShapeError, TraincraftError, UnknownNameError


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count(module: nn.Module, kind: type[nn.Module]) -> int:
    return sum(isinstance(m, kind) for m in module.modules())


# --------------------------------------------------------------------------------------------
# User classes, referenced as f"{__name__}:Name"


class PlainNet(nn.Module):
    """Takes neither input_shape nor output_size."""

    def __init__(self, in_f: int, out_f: int = 2):
        super().__init__()
        self.fc = nn.Linear(in_f, out_f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class ShapedNet(nn.Module):
    """Asks for both by name."""

    def __init__(self, input_shape: tuple[int, ...], output_size: int, width: int = 4):
        super().__init__()
        self.input_shape = input_shape
        self.output_size = output_size
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(input_shape[-1], width), nn.ReLU())
        self.fc = nn.Linear(width, output_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class OutputOnlyNet(nn.Module):
    def __init__(self, output_size: int):
        super().__init__()
        self.output_size = output_size


class KwargsNet(nn.Module):
    """``**kwargs`` is not a parameter named input_shape: it receives only the spec's keys."""

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs


class FailingNet(nn.Module):
    def __init__(self, size: int = 3):
        super().__init__()
        raise ValueError(f"size {size} is too small")


def not_a_module(size: int = 3) -> dict:
    return {"size": size}


NOT_CALLABLE = 42


# --------------------------------------------------------------------------------------------
# Names and shapes


def test_names():
    assert models.names() == ["cnn", "gru", "linear", "lstm", "mlp"]


@pytest.mark.parametrize(
    ("spec", "input_shape", "output_size"),
    [
        ("linear", (10,), 3),
        ("linear", (1, 8, 8), 10),
        ("mlp", (10,), 1),
        ("mlp", (1, 8, 8), 10),
        ("mlp", (24, 2), 4),
        ({"name": "mlp", "hidden_sizes": [], "dropout": 0.2}, (5,), 2),
        ("cnn", (1, 8, 8), 10),
        ("cnn", (3, 16, 12), 5),
        ("cnn", (8, 8), 10),  # (H, W): one channel
        ("cnn", (64,), 10),  # a square length: 8×8, one channel
        ("cnn", (2, 1, 1), 3),  # too small to pool
        ({"name": "cnn", "channels": [4, 4, 4], "hidden": None}, (1, 5, 7), 2),
        ("lstm", (24, 1), 1),
        ("lstm", (24, 3), 2),
        ("lstm", (24,), 1),  # (T,): one feature per step
        ("gru", (12, 4), 6),
        ({"name": "gru", "bidirectional": True, "num_layers": 2}, (7, 2), 3),
    ],
)
def test_output_shape(spec, input_shape, output_size):
    model = models.build(spec, input_shape=input_shape, output_size=output_size)
    model.eval()
    out = model(torch.randn(5, *input_shape))
    assert out.shape == (5, output_size)


def test_names_are_case_insensitive():
    model = models.build("MLP", input_shape=(4,), output_size=2)
    assert isinstance(model, models.MLP)


def test_input_shape_accepts_lists_and_ints():
    assert models.build("linear", input_shape=[2, 3], output_size=1).head.in_features == 6
    assert models.build("linear", input_shape=7, output_size=1).head.in_features == 7


def test_recurrent_takes_sequences_of_other_lengths():
    model = models.build("lstm", input_shape=(24, 2), output_size=1)
    assert model(torch.randn(3, 50, 2)).shape == (3, 1)


# --------------------------------------------------------------------------------------------
# Structure


def test_mlp_parameter_count_matches_hand_count():
    model = models.build({"name": "mlp", "hidden_sizes": [5, 4]}, input_shape=(10,), output_size=3)
    assert n_params(model) == (10 * 5 + 5) + (5 * 4 + 4) + (4 * 3 + 3)


def test_mlp_with_batch_norm_drops_the_redundant_linear_bias():
    model = models.build(
        {"name": "mlp", "hidden_sizes": [5, 4], "batch_norm": True},
        input_shape=(10,),
        output_size=3,
    )
    # Linear weights (no bias), BatchNorm weight + bias, head weight + bias.
    assert n_params(model) == (10 * 5 + 2 * 5) + (5 * 4 + 2 * 4) + (4 * 3 + 3)
    assert model.hidden1[0].bias is None


def test_linear_parameter_count():
    model = models.build("linear", input_shape=(1, 8, 8), output_size=10)
    assert n_params(model) == 64 * 10 + 10


def test_mlp_dropout_and_batch_norm_options():
    plain = models.build("mlp", input_shape=(6,), output_size=2)
    assert count(plain, nn.Dropout) == 0
    assert count(plain, nn.BatchNorm1d) == 0
    assert count(plain, nn.ReLU) == 2
    full = models.build(
        {"name": "mlp", "hidden_sizes": [8, 8, 8], "dropout": 0.3, "batch_norm": True},
        input_shape=(6,),
        output_size=2,
    )
    assert [m.p for m in full.modules() if isinstance(m, nn.Dropout)] == [0.3, 0.3, 0.3]
    assert count(full, nn.BatchNorm1d) == 3
    # Order inside a hidden layer: Linear -> BatchNorm1d -> activation -> Dropout.
    assert [type(m) for m in full.hidden2] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("relu", nn.ReLU),
        ("gelu", nn.GELU),
        ("silu", nn.SiLU),
        ("tanh", nn.Tanh),
        ("leaky_relu", nn.LeakyReLU),
        ("elu", nn.ELU),
        ("sigmoid", nn.Sigmoid),
    ],
)
def test_activation_by_name(name, kind):
    model = models.build(
        {"name": "mlp", "hidden_sizes": [3], "activation": name}, input_shape=(2,), output_size=1
    )
    assert isinstance(model.hidden1[1], kind)


def test_activation_with_arguments():
    model = models.build(
        {
            "name": "mlp",
            "hidden_sizes": [3],
            "activation": {"name": "leaky_relu", "negative_slope": 0.2},
        },
        input_shape=(2,),
        output_size=1,
    )
    assert model.hidden1[1].negative_slope == 0.2


def test_cnn_options():
    default = models.build("cnn", input_shape=(1, 8, 8), output_size=10)
    assert count(default, nn.BatchNorm2d) == 2
    assert [m.p for m in default.modules() if isinstance(m, nn.Dropout)] == [0.25]
    assert count(default, nn.MaxPool2d) == 2
    assert all(m.bias is None for m in default.modules() if isinstance(m, nn.Conv2d))
    bare = models.build(
        {"name": "cnn", "batch_norm": False, "dropout": 0.0, "activation": "gelu"},
        input_shape=(1, 8, 8),
        output_size=10,
    )
    assert count(bare, nn.BatchNorm2d) == 0
    assert count(bare, nn.Dropout) == 0
    assert count(bare, nn.GELU) == 3
    assert all(m.bias is not None for m in bare.modules() if isinstance(m, nn.Conv2d))


def test_cnn_pools_only_while_the_image_is_large_enough():
    # 4×4 -> 2×2 -> 1×1, then no more pooling.
    model = models.build(
        {"name": "cnn", "channels": [2, 2, 2, 2]}, input_shape=(1, 4, 4), output_size=2
    )
    pools = [count(getattr(model, f"conv{i}"), nn.MaxPool2d) for i in range(1, 5)]
    assert pools == [1, 1, 0, 0]


def test_cnn_parameter_count_matches_hand_count():
    model = models.build(
        {"name": "cnn", "channels": [4, 6], "kernel_size": 3, "hidden": 5},
        input_shape=(2, 8, 8),
        output_size=3,
    )
    conv1 = 2 * 4 * 9 + 2 * 4  # no conv bias with batch norm; BN weight + bias
    conv2 = 4 * 6 * 9 + 2 * 6
    hidden = 6 * 5 + 5  # global average pooling leaves 6 features
    head = 5 * 3 + 3
    assert n_params(model) == conv1 + conv2 + hidden + head


def test_cnn_reshapes_flat_square_inputs_like_images():
    flat = models.build("cnn", input_shape=(64,), output_size=10)
    image = models.build("cnn", input_shape=(1, 8, 8), output_size=10)
    image.load_state_dict(flat.state_dict())
    flat.eval()
    image.eval()
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(flat(x.reshape(3, 64)), image(x))


def test_blocks_are_ordered_and_cover_every_parameter():
    cases = {
        "mlp": ((6,), ["hidden1", "hidden2", "head"]),
        "cnn": ((64,), ["conv1", "conv2", "hidden", "head"]),
        "lstm": ((24, 1), ["rnn", "head"]),
        "linear": ((6,), ["head"]),
    }
    for name, (shape, block_names) in cases.items():
        model = models.build(name, input_shape=shape, output_size=2)
        assert list(model.block_names) == block_names
        assert model.blocks == [getattr(model, n) for n in block_names]
        assert sum(n_params(b) for b in model.blocks) == n_params(model)


def test_print_is_readable():
    text = repr(models.build("mlp", input_shape=(3,), output_size=2))
    assert text.startswith("MLP(")
    assert "(hidden1): Sequential(" in text
    assert "(head): Linear(in_features=64, out_features=2, bias=True)" in text


def test_slicing_gives_the_body_as_a_plain_sequential():
    model = models.build("mlp", input_shape=(3,), output_size=2)
    body = model[:-1]
    assert type(body) is nn.Sequential
    assert list(body._modules) == ["flatten", "hidden1", "hidden2"]
    x = torch.randn(4, 3)
    torch.testing.assert_close(model.head(body(x)), model(x))


# --------------------------------------------------------------------------------------------
# Recurrent models


def test_bidirectional_lstm_concatenates_both_final_states():
    torch.manual_seed(0)
    model = models.build(
        {"name": "lstm", "hidden_size": 5, "bidirectional": True}, input_shape=(6, 2), output_size=3
    )
    assert model.head.in_features == 10
    x = torch.randn(4, 6, 2)
    seq, _ = model.rnn.rnn(x)  # (N, T, 2H): forward then backward halves
    # Forward direction ends at the last step, backward direction at the first.
    last = torch.cat([seq[:, -1, :5], seq[:, 0, 5:]], dim=1)
    torch.testing.assert_close(model(x), model.head(last))


def test_unidirectional_gru_uses_the_last_step_of_the_top_layer():
    torch.manual_seed(0)
    model = models.build(
        {"name": "gru", "hidden_size": 4, "num_layers": 2}, input_shape=(5, 3), output_size=2
    )
    x = torch.randn(2, 5, 3)
    seq, _ = model.rnn.rnn(x)
    torch.testing.assert_close(model(x), model.head(seq[:, -1]))


def test_recurrent_dropout_between_layers_only_when_stacked():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns about dropout on a single layer
        single = models.build({"name": "lstm", "dropout": 0.3}, input_shape=(8, 1), output_size=1)
    assert single.rnn.rnn.dropout == 0.0
    assert single.dropout.p == 0.3
    assert list(single.block_names) == ["rnn", "head"]
    stacked = models.build(
        {"name": "lstm", "dropout": 0.3, "num_layers": 2}, input_shape=(8, 1), output_size=1
    )
    assert stacked.rnn.rnn.dropout == 0.3
    none = models.build("gru", input_shape=(8, 1), output_size=1)
    assert count(none, nn.Dropout) == 0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_batch_norm_on_the_final_state(cell, bidirectional):
    torch.manual_seed(0)
    spec = {"name": cell, "hidden_size": 4, "batch_norm": True, "dropout": 0.25,
            "bidirectional": bidirectional}
    model = models.build(spec, input_shape=(6, 2), output_size=3)
    width = 8 if bidirectional else 4
    assert list(model._modules) == ["rnn", "norm", "dropout", "head"]
    assert list(model.block_names) == ["rnn", "norm", "head"]
    assert isinstance(model.norm, nn.BatchNorm1d) and model.norm.num_features == width
    assert model.dropout.p == 0.25 and model.head.in_features == width
    assert sum(n_params(b) for b in model.blocks) == n_params(model)

    x, y = torch.randn(5, 6, 2), torch.randint(0, 3, (5,))
    model.eval()
    # Eval mode: the norm uses its running statistics (initially mean 0, variance 1).
    state = model.rnn(x)
    expected = model.head(state / torch.sqrt(torch.tensor(1.0 + model.norm.eps)))
    torch.testing.assert_close(model(x), expected)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = model(x)
    assert out.shape == (5, 3)
    nn.functional.cross_entropy(out, y).backward()
    optimizer.step()
    after = model.state_dict()
    for key in ("norm.weight", "norm.running_mean", "head.weight", "rnn.rnn.weight_ih_l0"):
        assert not torch.equal(after[key], before[key]), key
    assert int(after["norm.num_batches_tracked"]) == 1


def test_recurrent_without_batch_norm_has_no_norm():
    model = models.build("gru", input_shape=(6, 2), output_size=1)
    assert count(model, nn.BatchNorm1d) == 0 and "norm" not in model._modules


def test_lstm_parameter_count_matches_torch():
    model = models.build({"name": "lstm", "hidden_size": 7}, input_shape=(9, 3), output_size=2)
    reference = nn.LSTM(3, 7, batch_first=True)
    assert n_params(model) == n_params(reference) + 7 * 2 + 2


# --------------------------------------------------------------------------------------------
# Overrides


@pytest.mark.parametrize("key", ["num_classes", "out_features"])
@pytest.mark.parametrize(
    ("name", "shape"),
    [("linear", (6,)), ("mlp", (6,)), ("cnn", (1, 8, 8)), ("lstm", (5, 2)), ("gru", (5, 2))],
)
def test_output_override(key, name, shape):
    model = models.build({"name": name, key: 4}, input_shape=shape, output_size=10)
    assert model.head.out_features == 4
    model.eval()
    assert model(torch.randn(3, *shape)).shape == (3, 4)


def test_output_override_sets_the_number_of_target_stats():
    model = models.build(
        {"name": "mlp", "num_classes": 2}, input_shape=(3,), output_size=5,
        target_stats=([1.0, 2.0], [3.0, 4.0]),
    )
    assert model.scale.mean.tolist() == [1.0, 2.0]


def test_input_overrides():
    mlp = models.build({"name": "mlp", "in_features": 12}, input_shape=(10,), output_size=2)
    assert mlp.hidden1[0].in_features == 12
    lstm = models.build({"name": "lstm", "input_size": 3}, input_shape=(24, 1), output_size=1)
    assert lstm.rnn.rnn.input_size == 3


def test_output_overrides_that_disagree():
    with pytest.raises(
        TraincraftError, match=r"model 'mlp': num_classes and out_features disagree"
    ):
        models.build(
            {"name": "mlp", "num_classes": 3, "out_features": 4}, input_shape=(2,), output_size=3
        )


def test_cnn_rejects_an_input_size_override():
    with pytest.raises(
        TraincraftError, match=r"model 'cnn': 'in_features'/'input_size' do not apply"
    ):
        models.build({"name": "cnn", "in_features": 9}, input_shape=(1, 8, 8), output_size=2)


# --------------------------------------------------------------------------------------------
# Output scaling


def test_target_stats_adds_a_fixed_affine_output_layer():
    torch.manual_seed(0)
    model = models.build(
        "linear", input_shape=(3,), output_size=2, target_stats=([10.0, -2.0], [4.0, 0.0])
    )
    state = model.state_dict()
    assert torch.equal(state["scale.mean"], torch.tensor([10.0, -2.0]))
    assert torch.equal(state["scale.std"], torch.tensor([4.0, 1.0]))  # zero std -> 1
    assert {name for name, _ in model.named_parameters()} == {"head.weight", "head.bias"}
    assert list(model.block_names) == ["head"]

    x = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 0.5]])
    raw = x @ model.head.weight.detach().T + model.head.bias.detach()
    expected = torch.stack([raw[:, 0] * 4.0 + 10.0, raw[:, 1] * 1.0 - 2.0], dim=1)
    torch.testing.assert_close(model(x), expected)


def test_target_stats_survive_a_state_dict_round_trip():
    stats = ([50.0], [40.0])
    source = models.build("lstm", input_shape=(24, 1), output_size=1, target_stats=stats)
    target = models.build("lstm", input_shape=(24, 1), output_size=1, target_stats=([0.0], [1.0]))
    target.load_state_dict(source.state_dict())
    assert torch.equal(target.scale.mean, torch.tensor([50.0]))
    assert torch.equal(target.scale.std, torch.tensor([40.0]))
    x = torch.randn(2, 24, 1)
    torch.testing.assert_close(target(x), source(x))


def test_target_stats_are_not_trained():
    model = models.build("mlp", input_shape=(3,), output_size=1, target_stats=([5.0], [2.0]))
    model(torch.randn(4, 3)).sum().backward()
    assert not model.scale.mean.requires_grad
    assert n_params(model) == n_params(models.build("mlp", input_shape=(3,), output_size=1))


def test_target_stats_length_must_match_outputs():
    with pytest.raises(
        TraincraftError, match="target_stats has 2 values .* the model has 3 outputs"
    ):
        models.build("mlp", input_shape=(3,), output_size=3, target_stats=([0, 0], [1, 1]))
    with pytest.raises(TraincraftError, match="mean has 2 values but std has 1"):
        models.build("mlp", input_shape=(3,), output_size=2, target_stats=([0, 0], [1]))
    with pytest.raises(TraincraftError, match="must be finite"):
        models.build("mlp", input_shape=(3,), output_size=1, target_stats=([float("nan")], [1]))


def test_target_stats_on_a_user_model_wrap_it():
    model = models.build(
        {"name": f"{__name__}:PlainNet", "in_f": 3},
        input_shape=(3,),
        output_size=2,
        target_stats=([1.0, 2.0], [3.0, 4.0]),
    )
    assert isinstance(model, models.ScaledModel)
    assert set(model.state_dict()) == {
        "model.fc.weight",
        "model.fc.bias",
        "scale.mean",
        "scale.std",
    }
    x = torch.randn(5, 3)
    torch.testing.assert_close(
        model(x), model.model(x) * torch.tensor([3.0, 4.0]) + torch.tensor([1.0, 2.0])
    )


# --------------------------------------------------------------------------------------------
# The user's own class


def test_user_class_without_shape_parameters():
    model = models.build(
        {"name": f"{__name__}:PlainNet", "in_f": 3, "out_f": 5}, input_shape=(3,), output_size=2
    )
    assert isinstance(model, PlainNet)
    assert (model.fc.in_features, model.fc.out_features) == (3, 5)


def test_user_class_with_shape_parameters():
    model = models.build(
        {"name": f"{__name__}:ShapedNet", "width": 7}, input_shape=(4,), output_size=3
    )
    assert model.input_shape == (4,)
    assert model.output_size == 3
    assert model(torch.randn(2, 4)).shape == (2, 3)


def test_user_class_receives_only_the_names_it_declares():
    only_output = models.build(f"{__name__}:OutputOnlyNet", input_shape=(4,), output_size=9)
    assert only_output.output_size == 9
    kwargs = models.build(
        {"name": f"{__name__}:KwargsNet", "a": 1}, input_shape=(4,), output_size=9
    )
    assert kwargs.kwargs == {"a": 1}


def test_user_spec_keys_win_over_the_data_shapes():
    model = models.build(
        {"name": f"{__name__}:ShapedNet", "output_size": 6}, input_shape=(4,), output_size=3
    )
    assert model.output_size == 6


def test_user_class_by_dotted_path_and_by_object():
    dotted = models.build(f"{__name__}.ShapedNet", input_shape=(4,), output_size=3)
    assert isinstance(dotted, ShapedNet)
    direct = models.build(ShapedNet, input_shape=(4,), output_size=3)
    assert direct.output_size == 3
    ready = PlainNet(2)
    assert models.build(ready, input_shape=(2,), output_size=2) is ready


# --------------------------------------------------------------------------------------------
# Errors


def test_unknown_model_name():
    with pytest.raises(UnknownNameError, match=r"unknown model 'mpl' \(did you mean 'mlp'"):
        models.build("mpl", input_shape=(3,), output_size=2)


def test_unknown_argument_names_model_and_key():
    with pytest.raises(
        TraincraftError,
        match=r"model 'mlp': unknown argument 'hiden_sizes' \(did you mean 'hidden_sizes'",
    ):
        models.build({"name": "mlp", "hiden_sizes": [3]}, input_shape=(3,), output_size=2)


def test_unknown_activation():
    with pytest.raises(
        UnknownNameError, match=r"model 'cnn': unknown activation 'rellu' \(did you mean 'relu'"
    ):
        models.build({"name": "cnn", "activation": "rellu"}, input_shape=(1, 8, 8), output_size=2)


@pytest.mark.parametrize(
    ("spec", "key"),
    [
        ({"name": "mlp", "hidden_sizes": [3, -1]}, "'hidden_sizes' must be positive integers"),
        ({"name": "mlp", "hidden_sizes": 16}, "'hidden_sizes' must be positive integers"),
        ({"name": "mlp", "dropout": 1.5}, r"'dropout' must be in \[0, 1\)"),
        ({"name": "cnn", "channels": [0]}, "'channels' must be positive integers"),
        ({"name": "lstm", "hidden_size": 0}, "'hidden_size' must be positive integers"),
        ({"name": "mlp", "num_classes": 0}, "'output_size' must be positive integers"),
    ],
)
def test_bad_values(spec, key):
    shape = (1, 8, 8) if spec["name"] == "cnn" else (8, 8)
    with pytest.raises(TraincraftError, match=rf"model '{spec['name']}': {key}"):
        models.build(spec, input_shape=shape, output_size=2)


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (10,)])
def test_cnn_wrong_input_shape(shape):
    with pytest.raises(ShapeError, match=r"model 'cnn': .*\(C, H, W\)"):
        models.build("cnn", input_shape=shape, output_size=2)


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_recurrent_wrong_input_shape(name):
    with pytest.raises(ShapeError, match=rf"model '{name}': expects one sample of shape \(T, F\)"):
        models.build(name, input_shape=(2, 3, 4), output_size=1)


@pytest.mark.parametrize("shape", [(), (3, 0), ("a",), (-1,)])
def test_bad_input_shape(shape):
    with pytest.raises(ShapeError, match="input_shape must be one sample's shape"):
        models.build("mlp", input_shape=shape, output_size=1)


def test_spec_dict_without_name():
    with pytest.raises(TraincraftError, match="needs a 'name' key"):
        models.build({"hidden_sizes": [3]}, input_shape=(3,), output_size=1)


def test_user_import_failures_name_the_path():
    with pytest.raises(TraincraftError, match=r"model 'no_such_pkg_xyz:Net': cannot import module"):
        models.build("no_such_pkg_xyz:Net", input_shape=(3,), output_size=1)
    with pytest.raises(TraincraftError, match=rf"model '{__name__}:Missing': module .* has no"):
        models.build(f"{__name__}:Missing", input_shape=(3,), output_size=1)
    with pytest.raises(TraincraftError, match=rf"model '{__name__}:NOT_CALLABLE' is a int"):
        models.build(f"{__name__}:NOT_CALLABLE", input_shape=(3,), output_size=1)


def test_user_class_bad_arguments():
    path = f"{__name__}:PlainNet"
    with pytest.raises(
        TraincraftError, match=rf"model '{path}': unknown argument 'in_ff' \(did you mean 'in_f'"
    ):
        models.build({"name": path, "in_ff": 3}, input_shape=(3,), output_size=1)
    with pytest.raises(
        TraincraftError, match=rf"model '{path}': missing a required argument: 'in_f'"
    ):
        models.build(path, input_shape=(3,), output_size=1)


def test_user_class_failures():
    with pytest.raises(
        TraincraftError, match=r"FailingNet': construction failed: size 1 is too small"
    ):
        models.build({"name": f"{__name__}:FailingNet", "size": 1}, input_shape=(3,), output_size=1)
    with pytest.raises(
        TraincraftError, match=r"not_a_module' returned a dict, not a torch.nn.Module"
    ):
        models.build(f"{__name__}:not_a_module", input_shape=(3,), output_size=1)


# --------------------------------------------------------------------------------------------
# A short training sanity check


def test_cnn_loss_decreases_on_a_tiny_batch():
    torch.manual_seed(0)
    model = models.build("cnn", input_shape=(1, 8, 8), output_size=3)
    x = torch.randn(16, 1, 8, 8)
    y = torch.arange(16) % 3
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    losses = []
    for _ in range(20):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        final = loss_fn(model(x), y).item()
    assert final < 0.5 * losses[0]


def test_user_class_object_inside_a_dict_spec():
    model = models.build({"name": PlainNet, "in_f": 3, "out_f": 4}, input_shape=(3,), output_size=1)
    assert model.fc.out_features == 4


# --------------------------------------------------------------------------------------------
# torchvision and timm models, through stand-ins for their APIs (the packages are not needed:
# torchvision.models.get_model / list_models / get_model_builder, timm.create_model / list_models)


class TinyResNet(nn.Module):
    """torchvision's ResNet layout at toy size; builders take ``num_classes``."""

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, num_classes)

    def forward(self, x):
        x = self.layer1(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TinyTimmNet(nn.Module):
    """A timm-style model: ``in_chans``, ``num_classes``, ``drop_rate`` and a group matcher."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        self.stem = nn.Conv2d(in_chans, 4, 3, padding=1)
        self.blocks = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
        self.drop_rate = drop_rate
        self.head = nn.Linear(4, num_classes)

    def group_matcher(self, coarse: bool = False):
        return dict(stem=r"^stem", blocks=r"^blocks\.(\d+)")

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


@pytest.fixture
def torchvision_calls(monkeypatch):
    """A stand-in ``torchvision``; returns the list of (builder, keyword arguments) calls."""
    calls: list[tuple[str, dict]] = []

    def resnet18(*, weights=None, progress=True, **kwargs):
        calls.append(("resnet18", {"weights": weights, "progress": progress, **kwargs}))
        assert weights is None, "would download"
        return TinyResNet(**kwargs)

    def fasterrcnn_resnet50_fpn(*, weights=None, progress=True, num_classes=None,
                                weights_backbone="IMAGENET1K_V1", **kwargs):
        calls.append(("fasterrcnn_resnet50_fpn", {"weights": weights, "num_classes": num_classes,
                                                  "weights_backbone": weights_backbone, **kwargs}))
        assert weights is None and weights_backbone is None, "would download"
        return TinyResNet(num_classes=num_classes or 91)

    registry = {"resnet18": resnet18, "resnet34": resnet18,
                "fasterrcnn_resnet50_fpn": fasterrcnn_resnet50_fpn}

    def get_model_builder(name):
        name = name.lower()
        if name not in registry:
            raise ValueError(f"Unknown model {name}")
        return registry[name]

    tv_models = types.ModuleType("torchvision.models")
    tv_models.list_models = lambda module=None: sorted(registry)
    tv_models.get_model_builder = get_model_builder
    tv_models.get_model = lambda name, **config: get_model_builder(name)(**config)
    torchvision = types.ModuleType("torchvision")
    torchvision.models = tv_models
    monkeypatch.setitem(sys.modules, "torchvision", torchvision)
    monkeypatch.setitem(sys.modules, "torchvision.models", tv_models)
    return calls


@pytest.fixture
def timm_calls(monkeypatch):
    """A stand-in ``timm``; returns the list of create_model calls."""
    calls: list[tuple[str, dict]] = []

    def tinynet(pretrained=False, pretrained_cfg=None, pretrained_cfg_overlay=None, **kwargs):
        assert not pretrained, "would download"
        return TinyTimmNet(**kwargs)

    registry = {"tinynet": tinynet, "tinynet_large": tinynet}

    def create_model(model_name, pretrained=False, pretrained_cfg=None,
                     pretrained_cfg_overlay=None, checkpoint_path="", **kwargs):
        calls.append((model_name, {"pretrained": pretrained, **kwargs}))
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        name, _, tag = model_name.partition(".")
        if name not in registry:
            raise RuntimeError(f"Unknown model ({name})")
        return registry[name](pretrained=pretrained, pretrained_cfg=tag or pretrained_cfg, **kwargs)

    timm = types.ModuleType("timm")
    timm.create_model = create_model
    timm.list_models = lambda filter="", module="", pretrained=False, **kw: sorted(registry)
    monkeypatch.setitem(sys.modules, "timm", timm)
    return calls


def test_torchvision_model_gets_the_output_size_and_no_weights(torchvision_calls):
    model = models.build("torchvision:resnet18", input_shape=(3, 8, 8), output_size=7)
    assert torchvision_calls == [("resnet18", {"weights": None, "progress": True, "num_classes": 7})]
    assert isinstance(model, TinyResNet) and model.fc.out_features == 7
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 7)


def test_torchvision_spec_keys_and_overrides(torchvision_calls):
    model = models.build(
        {"name": "torchvision:ResNet18", "num_classes": 4}, input_shape=(3, 8, 8), output_size=7
    )
    assert model.fc.out_features == 4
    models.build({"name": "torchvision:fasterrcnn_resnet50_fpn", "min_size": 64},
                 input_shape=(3, 8, 8), output_size=3)
    assert torchvision_calls[-1] == ("fasterrcnn_resnet50_fpn", {
        "weights": None, "num_classes": 3, "weights_backbone": None, "min_size": 64})


def test_torchvision_errors(torchvision_calls):
    with pytest.raises(
        UnknownNameError,
        match=r"^model 'torchvision:resnet19': unknown torchvision model 'resnet19' \(did you mean 'resnet18'",
    ):
        models.build("torchvision:resnet19", input_shape=(3, 8, 8), output_size=2)
    grey = models.build("torchvision:resnet18", input_shape=(1, 8, 8), output_size=2)  # its first conv replaced
    first = next(m for m in grey.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 1 and grey(torch.rand(2, 1, 8, 8)).shape == (2, 2)
    with pytest.raises(TraincraftError, match=r"'pretrained' would download weights"):
        models.build({"name": "torchvision:resnet18", "pretrained": True},
                     input_shape=(3, 8, 8), output_size=2)
    with pytest.raises(TraincraftError, match=r"weights 'DEFAULT' names weights to download"):
        models.build({"name": "torchvision:resnet18", "weights": "DEFAULT"},
                     input_shape=(3, 8, 8), output_size=2)
    with pytest.raises(TraincraftError, match=r"'torchvision:resnet18': construction failed: .*colour"):
        models.build({"name": "torchvision:resnet18", "colour": 3}, input_shape=(3, 8, 8), output_size=2)
    assert all(call[1]["weights"] is None for call in torchvision_calls)


@pytest.mark.parametrize(
    ("name", "modules", "package"),
    [("torchvision:resnet18", ["torchvision", "torchvision.models"], "torchvision"),
     ("timm:resnet18", ["timm"], "timm")],
)
def test_missing_vision_package_says_how_to_install_it(monkeypatch, name, modules, package):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(TraincraftError) as info:
        models.build(name, input_shape=(3, 8, 8), output_size=2)
    assert str(info.value) == f"model {name!r} needs {package}: pip install 'traincraft[vision]'"


def test_local_weights_are_loaded_into_an_external_model_with_a_new_head(torchvision_calls, tmp_path):
    torch.manual_seed(1)
    pretrained = TinyResNet()  # an ImageNet-sized head: 1000 classes
    torch.save(pretrained.state_dict(), tmp_path / "resnet.pth")
    lines: list[str] = []
    torch.manual_seed(2)
    model = models.build({"name": "torchvision:resnet18", "weights": str(tmp_path / "resnet.pth")},
                         input_shape=(3, 8, 8), output_size=5, log=lines.append)
    torch.manual_seed(2)
    fresh = TinyResNet(num_classes=5)
    for key, value in model.state_dict().items():
        source = fresh if key.startswith("fc.") else pretrained
        assert torch.equal(value, source.state_dict()[key]), key
    assert lines == [
        f"model 'torchvision:resnet18' weights {tmp_path / 'resnet.pth'}: loaded 12 of 14 tensors; "
        "new (kept their initial values): fc.weight, fc.bias; shape differs: fc.weight (1000, 4) "
        "in file vs (5, 4) in model, fc.bias (1000) in file vs (5) in model"
    ]
    assert torchvision_calls[-1][1]["weights"] is None  # the library never saw the path

    lines.clear()
    torch.manual_seed(2)
    rebuilt = models.build({"name": "torchvision:resnet18", "weights": str(tmp_path / "none.pth")},
                           input_shape=(3, 8, 8), output_size=5, init_weights=False, log=lines.append)
    assert lines == [] and torch.equal(rebuilt.conv1.weight, fresh.conv1.weight)


def test_timm_model_gets_classes_channels_and_no_pretrained_weights(timm_calls):
    gray = models.build("timm:tinynet", input_shape=(1, 8, 8), output_size=3)
    assert timm_calls[-1] == ("tinynet", {"pretrained": False, "num_classes": 3, "in_chans": 1})
    assert gray.stem.in_channels == 1 and gray(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    models.build({"name": "timm:tinynet.a1_in1k", "drop_rate": 0.1}, input_shape=(3, 8, 8),
                 output_size=4)
    assert timm_calls[-1] == ("tinynet.a1_in1k", {"pretrained": False, "num_classes": 4,
                                                   "drop_rate": 0.1})
    models.build({"name": "timm:tinynet", "in_chans": 2}, input_shape=(1, 8, 8), output_size=4)
    assert timm_calls[-1][1]["in_chans"] == 2  # the spec's own key wins


def test_timm_errors(timm_calls, tmp_path):
    with pytest.raises(UnknownNameError, match=r"unknown timm model 'tinnynet' \(did you mean 'tinynet'"):
        models.build("timm:tinnynet", input_shape=(3, 8, 8), output_size=2)
    with pytest.raises(TraincraftError, match=r"Hugging Face Hub would be downloaded"):
        models.build("timm:hf-hub:org/tinynet", input_shape=(3, 8, 8), output_size=2)
    with pytest.raises(TraincraftError, match=r"'pretrained' would download weights"):
        models.build({"name": "timm:tinynet", "pretrained": True}, input_shape=(3, 8, 8), output_size=2)
    with pytest.raises(TraincraftError, match=r"rather than 'checkpoint_path'"):
        models.build({"name": "timm:tinynet", "checkpoint_path": str(tmp_path / "w.pth")},
                     input_shape=(3, 8, 8), output_size=2)
    assert timm_calls == []


def test_timm_model_with_local_weights_and_target_stats(timm_calls, tmp_path):
    from traincraft.checkpoint import save_weights

    torch.manual_seed(0)
    source = TinyTimmNet(num_classes=10)
    save_weights(source, tmp_path / "tiny.safetensors")
    lines: list[str] = []
    model = models.build({"name": "timm:tinynet", "weights": str(tmp_path / "tiny.safetensors")},
                         input_shape=(3, 8, 8), output_size=1, target_stats=([5.0], [2.0]),
                         log=lines.append)
    assert isinstance(model, models.ScaledModel)
    assert torch.equal(model.model.stem.weight, source.stem.weight)
    assert "new (kept their initial values): head.weight, head.bias" in lines[0]
