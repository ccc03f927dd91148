"""Tests for traincraft.models: built-in models, user classes, the output scaling layer, errors."""

from __future__ import annotations

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


def test_lstm_parameter_count_matches_torch():
    model = models.build({"name": "lstm", "hidden_size": 7}, input_shape=(9, 3), output_size=2)
    reference = nn.LSTM(3, 7, batch_first=True)
    assert n_params(model) == n_params(reference) + 7 * 2 + 2


# --------------------------------------------------------------------------------------------
# Overrides


@pytest.mark.parametrize("key", ["num_classes", "out_features"])
def test_output_override(key):
    model = models.build({"name": "cnn", key: 4}, input_shape=(1, 8, 8), output_size=10)
    assert model.head.out_features == 4


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
