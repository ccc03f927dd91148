"""Tests of the optimizer registry and parameter groups (traincraft.optim)."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from torch import nn

from traincraft import optim
from traincraft.errors import TraincraftError, UnknownNameError


class Net(nn.Module):
    """Linear, BatchNorm1d, LayerNorm with a 2-D weight, Embedding and a loose 1-D parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 3))  # 1-D, not a bias, not a norm
        self.embed = nn.Embedding(10, 8)
        self.fc1 = nn.Linear(8, 8)
        self.bn = nn.BatchNorm1d(8)
        self.ln = nn.LayerNorm((2, 4))  # 2-D weight: excluded for being a norm, not for its ndim
        self.head = nn.Linear(8, 3)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(self.bn(self.embed(idx))))
        h = self.ln(h.view(-1, 2, 4)).view(-1, 8)
        return self.head(h) * self.scale


# named_parameters() order: the module's own parameter first, then the children in order.
ALL = [
    "scale",
    "embed.weight",
    "fc1.weight",
    "fc1.bias",
    "bn.weight",
    "bn.bias",
    "ln.weight",
    "ln.bias",
    "head.weight",
    "head.bias",
]
DECAY = ["embed.weight", "fc1.weight", "head.weight"]
NO_DECAY = ["scale", "fc1.bias", "bn.weight", "bn.bias", "ln.weight", "ln.bias", "head.bias"]


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    net = Net()
    with torch.no_grad():  # non-trivial norm parameters, so their updates are visible
        net.ln.weight.uniform_(0.5, 1.5)
        net.bn.bias.uniform_(-0.5, 0.5)
    return net


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 10, (16,), generator=g), torch.randint(0, 3, (16,), generator=g)


def train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    for i in range(steps):
        idx, y = batch(i)
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(idx), y).backward()
        optimizer.step()


def summary(groups: list[dict]) -> list[tuple]:
    """(name, param_names, lr, weight_decay) of each group, for exact comparison."""
    return [(g["name"], g["param_names"], g["lr"], g.get("weight_decay")) for g in groups]


def assert_each_trainable_once(model: nn.Module, groups: list[dict]) -> None:
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = [p for g in groups for p in g["params"]]
    assert len(grouped) == len(trainable)
    assert {id(p) for p in grouped} == {id(p) for p in trainable}
    # param_names line up with params
    named = dict(model.named_parameters())
    for g in groups:
        assert len(g["param_names"]) == len(g["params"])
        assert all(named[n] is p for n, p in zip(g["param_names"], g["params"]))


# ------------------------------------------------------------------------------------ names


EXPECTED_NAMES = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "adamax": torch.optim.Adamax,
    "nadam": torch.optim.NAdam,
    "radam": torch.optim.RAdam,
    "asgd": torch.optim.ASGD,
    "rprop": torch.optim.Rprop,
    "sparse_adam": torch.optim.SparseAdam,
    "lbfgs": torch.optim.LBFGS,
}
for _name, _attr in (("adafactor", "Adafactor"), ("muon", "Muon")):
    if hasattr(torch.optim, _attr):
        EXPECTED_NAMES[_name] = getattr(torch.optim, _attr)


def test_names_are_the_snake_case_torch_names():
    assert optim.names() == sorted(EXPECTED_NAMES)
    for name, cls in EXPECTED_NAMES.items():
        assert optim.OPTIMIZERS.entry(name).factory is cls


def test_every_torch_optim_class_has_a_name():
    classes = {
        obj
        for obj in vars(torch.optim).values()
        if inspect.isclass(obj)
        and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
    }
    named = {optim.OPTIMIZERS.entry(name).factory for name in optim.names()}
    missing = sorted(cls.__name__ for cls in classes - named)
    assert not missing, f"torch.optim classes without a traincraft name: {missing}"


@pytest.mark.parametrize("cls", sorted(set(EXPECTED_NAMES.values()), key=lambda c: c.__name__))
def test_torch_class_name_resolves_too(cls):
    assert optim.OPTIMIZERS.entry(cls.__name__).factory is cls


def test_unknown_name_suggests_close_names():
    with pytest.raises(UnknownNameError) as info:
        optim.build("adamm", make_net())
    message = str(info.value)
    assert "'adamm'" in message
    assert "'adam'" in message and "'adamw'" in message


def test_unknown_name_far_from_all_lists_them():
    with pytest.raises(UnknownNameError, match="valid names: .*sgd"):
        optim.build("zzzzzz", make_net())


def test_lbfgs_trains_exactly_like_torchs_closure_loop():
    import traincraft as tc

    g = torch.Generator().manual_seed(0)
    X = torch.randn(64, 4, generator=g)
    y = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]]) + 0.1 * torch.randn(64, 1, generator=g)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    reference = copy.deepcopy(model)
    trainer = tc.Trainer(model, loss="mse", optimizer={"name": "lbfgs", "max_iter": 5, "history_size": 4},
                         lr=0.5, batch_size=16, accumulate=2, max_epochs=2, shuffle=False, progress=False,
                         clip_grad_norm=10.0, seed=0, decay_exclude=None)
    history = trainer.fit((X, y))
    # torch's loop: each step's closure back-propagates the window (two batches of 16) as one mean
    opt = torch.optim.LBFGS(reference.parameters(), lr=0.5, max_iter=5, history_size=4)
    epoch_losses = []
    for _ in range(2):
        before = []
        for start in range(0, 64, 32):
            xb, yb = X[start:start + 32], y[start:start + 32]
            with torch.no_grad():
                before.append(nn.functional.mse_loss(reference(xb), yb) * 32)

            def closure(xb=xb, yb=yb):
                opt.zero_grad()
                loss = sum(nn.functional.mse_loss(reference(xb[i:i + 16]), yb[i:i + 16]) * 0.5 for i in (0, 16))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(reference.parameters(), 10.0)
                return loss

            opt.step(closure)
        epoch_losses.append(float(sum(before) / 64))
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the epoch's train_loss: the loss of each window at the weights before its step
    assert [row["train_loss"] for row in history.epochs] == pytest.approx(epoch_losses, rel=1e-5)
    assert trainer.state.step == 4


def test_lbfgs_with_fp16_is_one_line():
    import traincraft as tc

    with pytest.raises(TraincraftError, match="re-evaluates the loss inside its step.*use precision bf16 or 32"):
        tc.Trainer(make_net(), loss="mse", optimizer="lbfgs", precision="fp16", progress=False)


# ----------------------------------------------------------------------- groups and decay


def test_auto_decay_exclude_groups():
    groups = optim.param_groups(make_net(), lr=0.5, weight_decay=0.05)
    assert summary(groups) == [
        ("default", DECAY, 0.5, 0.05),
        ("default/no_decay", NO_DECAY, 0.5, 0.0),
    ]
    for g in groups:
        assert g["initial_lr"] == 0.5 and g["lr_mult"] == 1.0


@pytest.mark.parametrize(
    "norm",
    [
        nn.BatchNorm2d(3),
        nn.InstanceNorm1d(3, affine=True),
        nn.GroupNorm(1, 3),
        nn.LayerNorm((3, 2)),
        nn.RMSNorm((3, 2)),
        nn.SyncBatchNorm(3),
    ],
    ids=lambda m: type(m).__name__,
)
def test_every_norm_layer_parameter_is_excluded(norm):
    model = nn.Sequential(nn.Linear(2, 3, bias=False), norm)
    groups = optim.param_groups(model, lr=1.0, weight_decay=0.1)
    norm_names = [f"1.{n}" for n, _ in norm.named_parameters()]
    assert summary(groups) == [
        ("default", ["0.weight"], 1.0, 0.1),
        ("default/no_decay", norm_names, 1.0, 0.0),
    ]


def test_decay_exclude_patterns_exclude_exactly_those():
    groups = optim.param_groups(
        make_net(), lr=1.0, weight_decay=0.1, decay_exclude=["*.bias", "embed.*"]
    )
    assert summary(groups) == [
        ("default", ["scale", "fc1.weight", "bn.weight", "ln.weight", "head.weight"], 1.0, 0.1),
        (
            "default/no_decay",
            ["embed.weight", "fc1.bias", "bn.bias", "ln.bias", "head.bias"],
            1.0,
            0.0,
        ),
    ]


def test_decay_exclude_single_glob_and_auto_plus_patterns():
    one = optim.param_groups(make_net(), lr=1.0, weight_decay=0.1, decay_exclude="head.*")
    assert [g["param_names"] for g in one] == [
        [n for n in ALL if not n.startswith("head.")],
        ["head.weight", "head.bias"],
    ]
    both = optim.param_groups(
        make_net(), lr=1.0, weight_decay=0.1, decay_exclude=["auto", "embed.*"]
    )
    assert [g["param_names"] for g in both] == [
        ["fc1.weight", "head.weight"],
        ["scale", "embed.weight", *NO_DECAY[1:]],
    ]


@pytest.mark.parametrize("exclude", [None, []])
def test_decay_exclude_nothing_gives_one_group(exclude):
    groups = optim.param_groups(make_net(), lr=1.0, weight_decay=0.1, decay_exclude=exclude)
    assert summary(groups) == [("default", ALL, 1.0, 0.1)]


def test_decay_exclude_pattern_matching_nothing_is_an_error():
    with pytest.raises(TraincraftError, match=r"decay_exclude pattern '\*\.bais'"):
        optim.param_groups(make_net(), lr=1.0, weight_decay=0.1, decay_exclude=["*.bais"])


def test_weight_decay_none_uses_the_class_default():
    # Oracle: the default torch itself stores when the class is built without weight_decay.
    for name, cls in [("adamw", torch.optim.AdamW), ("sgd", torch.optim.SGD)]:
        expected = cls([nn.Parameter(torch.zeros(1))]).defaults["weight_decay"]
        opt = optim.build(name, make_net())
        # nothing decays (SGD's default is 0): one group instead of a decay/no-decay pair
        assert [g["weight_decay"] for g in opt.param_groups] == ([expected, 0.0] if expected else [0.0])
        assert opt.defaults["weight_decay"] == expected
    assert torch.optim.AdamW([nn.Parameter(torch.zeros(1))]).defaults["weight_decay"] == 0.01


def test_param_groups_without_weight_decay_leave_it_to_the_optimizer():
    groups = optim.param_groups(make_net(), lr=1e-3, weight_decay=None)
    assert "weight_decay" not in groups[0] and groups[1]["weight_decay"] == 0.0
    opt = torch.optim.AdamW(groups)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]


def test_rules_lr_mult_explicit_lr_and_weight_decay():
    rules = [
        {"params": "fc1.*", "lr_mult": 0.25},
        {"params": ["head.*"], "lr": 0.01, "weight_decay": 0.0},
    ]
    groups = optim.param_groups(make_net(), lr=0.5, weight_decay=0.1, param_groups=rules)
    assert summary(groups) == [
        ("fc1.*", ["fc1.weight"], 0.125, 0.1),
        ("fc1.*/no_decay", ["fc1.bias"], 0.125, 0.0),
        ("head.*", ["head.weight"], 0.01, 0.0),
        ("head.*/no_decay", ["head.bias"], 0.01, 0.0),
        ("default", ["embed.weight"], 0.5, 0.1),
        ("default/no_decay", ["scale", "bn.weight", "bn.bias", "ln.weight", "ln.bias"], 0.5, 0.0),
    ]
    assert [g["lr_mult"] for g in groups] == [0.25, 0.25, 0.02, 0.02, 1.0, 1.0]
    assert all(g["initial_lr"] == g["lr"] for g in groups)


def test_first_matching_rule_wins_and_empty_groups_are_dropped():
    rules = [
        {"params": "*.weight", "lr_mult": 2.0},
        {"params": "head.*", "lr_mult": 3.0, "name": "head"},
    ]
    model = make_net()
    groups = optim.param_groups(model, lr=1.0, weight_decay=0.1, param_groups=rules)
    assert summary(groups) == [
        ("*.weight", ["embed.weight", "fc1.weight", "head.weight"], 2.0, 0.1),
        ("*.weight/no_decay", ["bn.weight", "ln.weight"], 2.0, 0.0),
        ("head/no_decay", ["head.bias"], 3.0, 0.0),
        ("default/no_decay", ["scale", "fc1.bias", "bn.bias", "ln.bias"], 1.0, 0.0),
    ]
    assert_each_trainable_once(model, groups)


def test_rule_keys_go_to_the_optimizer_group():
    rules = [{"params": "head.*", "momentum": 0.5}]
    opt = optim.build({"name": "sgd", "momentum": 0.9}, make_net(), lr=0.1, param_groups=rules)
    assert {g["name"]: g["momentum"] for g in opt.param_groups} == {
        "head.*": 0.5,
        "head.*/no_decay": 0.5,
        "default": 0.9,
        "default/no_decay": 0.9,
    }


def test_frozen_parameters_are_left_out():
    model = make_net()
    model.embed.requires_grad_(False)
    model.bn.weight.requires_grad_(False)
    opt = optim.build("adamw", model, weight_decay=0.1)
    assert summary(opt.param_groups) == [
        ("default", ["fc1.weight", "head.weight"], 1e-3, 0.1),
        (
            "default/no_decay",
            ["scale", "fc1.bias", "bn.bias", "ln.weight", "ln.bias", "head.bias"],
            1e-3,
            0.0,
        ),
    ]
    assert_each_trainable_once(model, opt.param_groups)


def test_tied_parameter_appears_once():
    model = nn.Sequential(nn.Embedding(5, 4), nn.Linear(4, 5))
    model[1].weight = model[0].weight  # (5, 4) both ways: weight tying
    groups = optim.param_groups(model, lr=1.0, weight_decay=0.1)
    assert summary(groups) == [
        ("default", ["0.weight"], 1.0, 0.1),
        ("default/no_decay", ["1.bias"], 1.0, 0.0),
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"decay_exclude": None},
        {"decay_exclude": ["embed.*", "*.bias"]},
        {"param_groups": [{"params": "bn.*"}, {"params": ["head.*", "fc1.*"], "lr_mult": 0.1}]},
        {"param_groups": [{"params": "*"}]},
    ],
)
def test_every_trainable_parameter_in_exactly_one_group(kwargs):
    model = make_net()
    model.ln.requires_grad_(False)
    groups = optim.param_groups(model, lr=1e-3, weight_decay=0.1, **kwargs)
    assert_each_trainable_once(model, groups)
    assert all(g["params"] for g in groups)
    assert "ln.weight" not in [n for g in groups for n in g["param_names"]]


def test_model_without_trainable_parameters_is_an_error():
    model = make_net().requires_grad_(False)
    with pytest.raises(TraincraftError, match="no trainable parameter"):
        optim.build("adamw", model)
    with pytest.raises(TraincraftError, match="no trainable parameter"):
        optim.param_groups(nn.ReLU(), lr=1.0, weight_decay=0.0)


# ------------------------------------------------------------------------------ rule errors


def test_rule_pattern_matching_nothing_names_it_and_suggests():
    model = nn.ModuleDict({"backbone": nn.Linear(2, 2), "head": nn.Linear(2, 1)})
    with pytest.raises(TraincraftError) as info:
        optim.build("adamw", model, param_groups=[{"params": "backbne.*", "lr_mult": 0.1}])
    message = str(info.value)
    assert "param_groups[0] pattern 'backbne.*' matches no trainable parameter" in message
    assert "did you mean 'backbone.*'" in message
    assert "backbone.weight" in message  # a few real names


def test_rule_matching_only_frozen_parameters_says_so():
    model = make_net()
    model.embed.requires_grad_(False)
    with pytest.raises(TraincraftError, match=r"'embed\.\*' matches only frozen.*embed\.weight"):
        optim.param_groups(model, lr=1.0, weight_decay=0.0, param_groups=[{"params": "embed.*"}])


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"lr_mult": 0.1}, "must be a dict with a 'params' key"),
        ("head.*", "must be a dict with a 'params' key"),
        ({"params": 3}, r"params must be a glob"),
        ({"params": []}, r"params must be a glob"),
        ({"params": "head.*", "lr": 0.1, "lr_mult": 0.5}, "both 'lr' and 'lr_mult'"),
        ({"params": "head.*", "initial_lr": 0.1}, "set by traincraft"),
        ({"params": "head.*", "lr": "1e-3"}, "must be a number, got '1e-3'"),
    ],
)
def test_malformed_rules(rule, message):
    with pytest.raises(TraincraftError, match=message):
        optim.param_groups(make_net(), lr=1.0, weight_decay=0.0, param_groups=[rule])


def test_duplicate_group_names_are_an_error():
    rules = [{"params": "fc1.*", "name": "a"}, {"params": "head.*", "name": "a"}]
    with pytest.raises(TraincraftError, match="two groups are named 'a'"):
        optim.param_groups(make_net(), lr=1.0, weight_decay=0.0, param_groups=rules)


def test_rule_key_unknown_to_the_class_is_an_error():
    rules = [{"params": "head.*", "momentun": 0.5}]
    with pytest.raises(TraincraftError, match=r"'sgd' has no argument 'momentun'.*'momentum'"):
        optim.build("sgd", make_net(), param_groups=rules)
    with pytest.raises(TraincraftError, match=r"'adam' has no argument 'momentum'"):
        optim.build("adam", make_net(), param_groups=[{"params": "head.*", "momentum": 0.5}])


# ------------------------------------------------------------------------------------ specs


def test_dict_spec_keys_go_to_the_class_and_override_lr_and_decay():
    spec = {"name": "sgd", "momentum": 0.9, "nesterov": True, "lr": 0.2, "weight_decay": 0.3}
    opt = optim.build(spec, make_net(), lr=0.5, weight_decay=0.1)
    assert isinstance(opt, torch.optim.SGD)
    assert summary(opt.param_groups) == [
        ("default", DECAY, 0.2, 0.3),
        ("default/no_decay", NO_DECAY, 0.2, 0.0),
    ]
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True
    assert opt.defaults["lr"] == 0.2


def test_bad_keyword_names_the_optimizer_and_the_key():
    with pytest.raises(TraincraftError) as info:
        optim.build({"name": "sgd", "momentun": 0.9}, make_net())
    assert (
        str(info.value) == "optimizer 'sgd' has no argument 'momentun' (did you mean 'momentum'?)"
    )
    with pytest.raises(TraincraftError, match=r"'adamw' has no argument 'zzz'; its arguments are"):
        optim.build({"name": "adamw", "zzz": 1}, make_net())


def test_invalid_value_from_torch_becomes_a_traincraft_error():
    with pytest.raises(TraincraftError, match=r"optimizer 'adam': Invalid beta parameter"):
        optim.build({"name": "adam", "betas": (1.5, 0.9)}, make_net())
    with pytest.raises(TraincraftError, match="lr must be a number, got '1e-3'"):
        optim.build("adam", make_net(), lr="1e-3")


def test_weight_decay_on_an_optimizer_without_it_is_an_error():
    with pytest.raises(TraincraftError, match="'rprop' has no weight decay"):
        optim.build("rprop", make_net(), weight_decay=0.1)
    with pytest.raises(TraincraftError, match="'rprop' has no weight decay"):
        optim.build("rprop", make_net(), param_groups=[{"params": "head.*", "weight_decay": 0.1}])
    opt = optim.build("rprop", make_net())  # None: nothing to decide
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0]  # nothing decays: one group


def test_class_and_import_path_specs():
    by_class = optim.build({"name": torch.optim.RMSprop, "alpha": 0.9}, make_net())
    assert type(by_class) is torch.optim.RMSprop and by_class.defaults["alpha"] == 0.9
    by_path = optim.build({"name": "torch.optim:Adamax", "eps": 1e-6}, make_net())
    assert type(by_path) is torch.optim.Adamax and by_path.defaults["eps"] == 1e-6
    with pytest.raises(TraincraftError, match="not a torch.optim.Optimizer subclass"):
        optim.build("torch.nn:Linear", make_net())


def test_callable_spec_gets_the_param_groups():
    seen = []

    def factory(groups):
        seen.append(groups)
        return torch.optim.AdamW(groups, betas=(0.8, 0.9))

    model = make_net()
    rules = [{"params": "head.*", "lr_mult": 0.5}]
    opt = optim.build(factory, model, lr=0.1, weight_decay=0.2, param_groups=rules)
    expected = optim.param_groups(model, lr=0.1, weight_decay=0.2, param_groups=rules)
    assert summary(seen[0]) == summary(expected)
    assert [g["name"] for g in opt.param_groups] == [g["name"] for g in expected]
    assert opt.param_groups[0]["params"][0] is model.head.weight
    assert opt.defaults["betas"] == (0.8, 0.9)


def test_callable_spec_must_return_an_optimizer():
    with pytest.raises(TraincraftError, match="returned list, not a torch.optim.Optimizer"):
        optim.build(lambda groups: groups, make_net())


def test_spec_of_the_wrong_type_is_an_error():
    with pytest.raises(TraincraftError, match="must be a name or a dict"):
        optim.build(3, make_net())  # type: ignore[arg-type]
    with pytest.raises(TraincraftError, match="needs a 'name' key"):
        optim.build({"lr": 0.1}, make_net())


def test_plain_muon_refuses_non_matrix_parameters_by_name():
    with pytest.raises(TraincraftError, match=r"'muon' trains 2-D weight matrices only.*'scale'"):
        optim.build({"name": "muon", "others": None}, make_net())


# ------------------------------------------------------------------- steps against torch

# name, class, keyword arguments; built by hand with the same groups, compared bitwise.
STEP_CASES = [
    ("sgd", torch.optim.SGD, {"momentum": 0.9, "nesterov": True}),
    ("adam", torch.optim.Adam, {"amsgrad": True}),
    ("adamw", torch.optim.AdamW, {}),
    ("rmsprop", torch.optim.RMSprop, {"momentum": 0.5, "centered": True}),
    ("adagrad", torch.optim.Adagrad, {}),
    ("adadelta", torch.optim.Adadelta, {}),
    ("adamax", torch.optim.Adamax, {}),
    ("nadam", torch.optim.NAdam, {}),
    ("radam", torch.optim.RAdam, {}),
    ("asgd", torch.optim.ASGD, {"t0": 1.0}),
    ("adafactor", getattr(torch.optim, "Adafactor", None), {}),
]
# Classes with a fused CPU kernel, where build() must choose it (and the oracle uses it too).
FUSED_ON_CPU = {"sgd", "adam", "adamw", "adagrad"}


@pytest.mark.parametrize(("name", "cls", "kwargs"), STEP_CASES, ids=[c[0] for c in STEP_CASES])
def test_step_equals_torch_class_built_by_hand(name, cls, kwargs):
    if cls is None:
        pytest.skip(f"torch {torch.__version__} has no {name}")
    model = make_net()
    reference = copy.deepcopy(model)
    opt = optim.build({"name": name, **kwargs}, model, lr=0.01, weight_decay=0.05)

    params = dict(reference.named_parameters())
    extra = {"fused": True} if name in FUSED_ON_CPU else {}
    by_hand = cls(
        [
            {"params": [params[n] for n in DECAY], "weight_decay": 0.05},
            {"params": [params[n] for n in NO_DECAY], "weight_decay": 0.0},
        ],
        lr=0.01,
        **kwargs,
        **extra,
    )
    assert bool(opt.defaults.get("fused")) is (name in FUSED_ON_CPU)
    train(model, opt)
    train(reference, by_hand)
    for (n, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.equal(a, b), n
        assert not torch.equal(a, make_net().get_parameter(n)), f"{n} did not move"


def test_rprop_step_equals_torch():
    model = make_net()
    reference = copy.deepcopy(model)
    opt = optim.build({"name": "rprop", "etas": (0.4, 1.3)}, model, lr=0.01)
    train(model, opt)
    train(reference, torch.optim.Rprop(reference.parameters(), lr=0.01, etas=(0.4, 1.3)))
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch without Muon")
def test_muon_steps_hidden_matrices_and_adamw_the_rest_like_torch():
    import traincraft as tc
    from traincraft.muon import MuonAdamW

    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(8, 6), nn.LayerNorm(6), nn.Tanh(),
                          nn.Linear(6, 6), nn.Tanh(), nn.Linear(6, 3))
    reference = copy.deepcopy(model)
    opt = optim.build("muon", model, lr=0.02, decay_exclude=None)
    assert isinstance(opt, MuonAdamW)
    hidden = [reference[2].weight, reference[5].weight]  # not the embedding, not the head
    rest = [p for p in reference.parameters() if all(p is not h for h in hidden)]
    muon = torch.optim.Muon(hidden, lr=0.02, adjust_lr_fn="match_rms_adamw")
    adamw = torch.optim.AdamW(rest, lr=0.02, weight_decay=0.1, fused=True)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    for i in range(3):
        x = torch.randint(0, 10, (8, 2), generator=torch.Generator().manual_seed(i))
        for model_, steps in ((model, [opt]), (reference, [muon, adamw])):
            for o in steps:
                o.zero_grad()
            model_(x).square().mean().backward()
            for o in steps:
                o.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        assert torch.equal(a, b)
    # through the trainer: a schedule moves both halves, a checkpoint resumes both
    t = tc.Trainer(copy.deepcopy(reference), loss="mse", optimizer="muon", lr=0.02, max_epochs=1,
                   schedule="cosine", progress=False)
    X, y = torch.randint(0, 10, (32, 2)), torch.randn(32, 3)
    t.fit((X, y))
    state = t.optimizer.state_dict()
    assert len(state["parts"]) == 2 and all(g["lr"] == t.optimizer.param_groups[0]["lr"] for g in t.optimizer.param_groups)
    t.optimizer.load_state_dict(state)


def test_sparse_adam_step_equals_torch():
    torch.manual_seed(0)
    model = nn.Embedding(10, 4, sparse=True)
    reference = copy.deepcopy(model)
    opt = optim.build("sparse_adam", model, lr=0.1)
    by_hand = torch.optim.SparseAdam(reference.parameters(), lr=0.1)
    for model_, opt_ in ((model, opt), (reference, by_hand)):
        for i in range(3):
            opt_.zero_grad()
            model_(torch.tensor([i, i + 1])).sum().backward()
            opt_.step()
    assert torch.equal(model.weight, reference.weight)


# ---------------------------------------------------------------------------- fused choice


def test_fused_adamw_matches_the_plain_one():
    model = make_net()
    plain_model = copy.deepcopy(model)
    fused = optim.build("adamw", model, lr=0.01, weight_decay=0.1)
    plain = optim.build({"name": "adamw", "fused": False}, plain_model, lr=0.01, weight_decay=0.1)
    assert all(g["fused"] is True for g in fused.param_groups)
    assert all(g["fused"] is False for g in plain.param_groups)
    train(model, fused, steps=5)
    train(plain_model, plain, steps=5)
    for (n, a), b in zip(model.named_parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=n)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "adagrad"])
def test_fused_is_chosen_on_cpu(name):
    assert optim.build(name, make_net()).defaults["fused"] is True
    assert optim.build(name, make_net().double()).defaults["fused"] is True


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"name": "adamw", "fused": False}, {"fused": False, "foreach": None}),
        ({"name": "adamw", "foreach": False}, {"fused": None, "foreach": False}),
        ({"name": "adamw", "foreach": True}, {"fused": None, "foreach": True}),
        ({"name": "adam", "differentiable": True}, {"fused": None, "foreach": None}),
    ],
)
def test_user_choice_of_fused_or_foreach_is_kept(spec, expected):
    opt = optim.build(spec, make_net())
    assert {k: opt.defaults[k] for k in expected} == expected


def test_fused_not_chosen_where_torch_has_no_kernel():
    assert "fused" not in optim.build("rmsprop", make_net()).defaults
    # A rule that picks foreach for one group is the user's choice too.
    opt = optim.build("adamw", make_net(), param_groups=[{"params": "head.*", "foreach": False}])
    assert all(not g["fused"] for g in opt.param_groups)
    # Complex parameters have no fused kernel.
    complex_model = nn.Linear(2, 2, dtype=torch.complex64)
    assert optim.build("adam", complex_model).defaults["fused"] is None
    # Integer-free but sparse gradients: fused SGD refuses them, the for-loop SGD takes them.
    sparse = nn.Embedding(10, 4, sparse=True)
    opt = optim.build("sgd", sparse, lr=0.1)
    assert not opt.defaults["fused"]
    sparse(torch.tensor([1, 2])).sum().backward()
    opt.step()


# ---------------------------------------------------------------- schedulers and state


def test_torch_scheduler_reads_initial_lr_of_each_group():
    rules = [{"params": "head.*", "lr_mult": 0.5}]
    opt = optim.build("sgd", make_net(), lr=0.5, param_groups=rules)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step)
    opt.step()
    scheduler.step()
    scheduler.step()
    assert [g["lr"] for g in opt.param_groups] == [0.0625, 0.0625, 0.125, 0.125]
    assert [g["initial_lr"] for g in opt.param_groups] == [0.25, 0.25, 0.5, 0.5]


def test_state_dict_round_trip_keeps_group_names():
    model = make_net()
    opt = optim.build("adamw", model, lr=0.01)
    train(model, opt, steps=2)
    state = opt.state_dict()
    assert [g["name"] for g in state["param_groups"]] == ["default", "default/no_decay"]
    assert [g["param_names"] for g in state["param_groups"]] == [DECAY, NO_DECAY]
    fresh = optim.build("adamw", model, lr=0.01)
    fresh.load_state_dict(state)
    for p in model.parameters():
        torch.testing.assert_close(
            fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"], rtol=0, atol=0
        )


def test_zero_weight_decay_makes_one_group_with_every_parameter():
    net = make_net()
    opt = optim.build("adam", net, weight_decay=0.0)
    assert len(opt.param_groups) == 1
    assert opt.param_groups[0]["param_names"] == [n for n, p in net.named_parameters() if p.requires_grad]


def test_sparse_adam_on_dense_gradients_is_refused_when_built():
    model = nn.Sequential(nn.Embedding(10, 4, sparse=True), nn.Linear(4, 1))
    with pytest.raises(TraincraftError, match=r"'sparse_adam' needs sparse gradients.*but '1.weight' gets dense ones"):
        optim.build("sparse_adam", model, lr=0.1)
    with pytest.raises(TraincraftError, match=r"'0.weight' gets dense ones"):
        optim.build("sparse_adam", nn.Sequential(nn.Embedding(10, 4)), lr=0.1)
