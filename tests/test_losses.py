"""Tests of the loss registry, our dice/focal/tversky, weighted terms and target alignment."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.loss import _Loss

from traincraft import losses
from traincraft.errors import ShapeError, TraincraftError, UnknownNameError

LN3 = math.log(3.0)

# Keyword arguments a loss cannot be built without.
REQUIRED_ARGS = {"linear_cross_entropy": {"in_features": 4, "num_classes": 3}}
# Deprecated torch classes that are drop-in subclasses of a registered one: the alias to use.
DEPRECATED_DROP_INS = {"NLLLoss2d": "nll2d"}


def _torch_loss_classes() -> set[type]:
    found = set()
    for namespace in (vars(nn), vars(torch.nn.modules.loss)):
        for name, obj in namespace.items():
            if isinstance(obj, type) and issubclass(obj, _Loss) and not name.startswith("_"):
                found.add(obj)
    return found


def _built_class(name: str) -> type:
    module = losses.build({"name": name, **REQUIRED_ARGS.get(name, {})})
    return type(getattr(module, "loss", module))  # MultiInputLoss wraps the torch module


# ------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------


def test_every_torch_loss_class_has_a_registered_name():
    registered = {_built_class(name) for name in losses.names()}
    missing = []
    for cls in _torch_loss_classes():
        if cls in registered:
            continue
        alias = DEPRECATED_DROP_INS.get(cls.__name__)
        if alias and alias in losses.aliases() and issubclass(cls, _built_class(alias)):
            continue
        missing.append(cls.__name__)
    assert not missing, f"torch losses without a name: {sorted(missing)}"


def test_names_are_sorted_canonical_and_cover_the_documented_list():
    names = losses.names()
    assert names == sorted(names)
    expected = {
        "l1", "mse", "cross_entropy", "ctc", "nll", "poisson_nll", "gaussian_nll", "kl_div",
        "bce", "bce_with_logits", "margin_ranking", "hinge_embedding", "multilabel_margin",
        "huber", "smooth_l1", "soft_margin", "multilabel_soft_margin", "cosine_embedding",
        "multi_margin", "triplet_margin", "triplet_margin_with_distance", "dice", "focal",
        "tversky",
    }
    assert expected <= set(names)
    assert all(name == name.lower() and "-" not in name for name in names)


def test_aliases_point_at_canonical_names():
    table = losses.aliases()
    assert set(table.values()) <= set(losses.names())
    assert not set(table) & set(losses.names())
    assert table["mae"] == "l1"
    assert table["ce"] == "cross_entropy"
    assert table["l2"] == "mse"
    assert table["mse_loss"] == "mse"
    assert table["bce_logits"] == "bce_with_logits"


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        ("MSE", nn.MSELoss),
        ("Cross-Entropy", nn.CrossEntropyLoss),
        ("CrossEntropy", nn.CrossEntropyLoss),
        ("CrossEntropyLoss", nn.CrossEntropyLoss),
        ("BCE-with-logits", nn.BCEWithLogitsLoss),
        ("mae", nn.L1Loss),
        ("SmoothL1", nn.SmoothL1Loss),
        ("TripletMarginWithDistance", nn.TripletMarginWithDistanceLoss),
    ],
)
def test_names_are_case_insensitive_and_accept_dashes_and_torch_spellings(spec, cls):
    assert _built_class(spec) is cls


def test_unknown_name_raises_with_the_closest_names():
    with pytest.raises(UnknownNameError) as info:
        losses.build("msee")
    assert isinstance(info.value, ValueError)
    assert "'mse'" in str(info.value)
    with pytest.raises(UnknownNameError):
        losses.build({"name": "crossentropi", "label_smoothing": 0.1})


# ------------------------------------------------------------------------------------------
# dict specs, reductions
# ------------------------------------------------------------------------------------------


def test_dict_spec_passes_keyword_arguments():
    torch.manual_seed(0)
    pred, target = torch.randn(6, 3), torch.randn(6, 3) * 3
    huber = losses.build({"name": "huber", "delta": 0.5})
    assert huber.delta == 0.5
    assert torch.equal(huber(pred, target), nn.HuberLoss(delta=0.5)(pred, target))
    logits, labels = torch.randn(6, 4), torch.randint(0, 4, (6,))
    ce = losses.build({"name": "ce", "label_smoothing": 0.1})
    expected = nn.CrossEntropyLoss(label_smoothing=0.1)(logits, labels)
    assert torch.equal(ce(logits, labels), expected)
    assert not torch.equal(expected, nn.CrossEntropyLoss()(logits, labels))


def test_class_weights_from_a_list_become_a_tensor():
    torch.manual_seed(1)
    logits, labels = torch.randn(8, 3), torch.randint(0, 3, (8,))
    expected = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5]))(logits, labels)
    for key in ("weight", "class_weight"):
        loss_fn = losses.build({"name": "cross_entropy", key: [1, 2, 0.5]})
        assert torch.allclose(loss_fn(logits, labels), expected, rtol=0, atol=1e-7)
    pos = losses.build({"name": "bce_with_logits", "pos_weight": [3.0]})
    x, y = torch.randn(8, 1), torch.randint(0, 2, (8, 1)).float()
    assert torch.equal(pos(x, y), nn.BCEWithLogitsLoss(pos_weight=torch.tensor([3.0]))(x, y))


def test_wrong_keyword_names_the_loss_and_the_key():
    with pytest.raises(TraincraftError) as info:
        losses.build({"name": "huber", "delt": 0.5})
    message = str(info.value)
    assert "'huber'" in message and "'delt'" in message and "'delta'" in message
    with pytest.raises(TraincraftError, match="'focal'.*'beta'"):
        losses.build({"name": "focal", "beta": 1.0})


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_reductions_other_than_the_mean_are_rejected(reduction):
    with pytest.raises(TraincraftError, match="mean") as info:
        losses.build({"name": "mse", "reduction": reduction})
    assert reduction in str(info.value) and "'mse'" in str(info.value)
    with pytest.raises(TraincraftError, match="mean"):
        losses.build([{"name": "l1"}, {"name": "focal", "reduction": reduction}])
    with pytest.raises(TraincraftError, match="mean"):
        losses.build(nn.L1Loss(reduction=reduction))


@pytest.mark.skipif(not hasattr(nn, "LinearCrossEntropyLoss"), reason="older torch")
def test_linear_cross_entropy_needs_its_sizes():
    with pytest.raises(TraincraftError, match="linear_cross_entropy"):
        losses.build("linear_cross_entropy")
    torch.manual_seed(14)
    loss_fn = losses.build({"name": "linear_cross_entropy", "in_features": 4, "num_classes": 3})
    features, labels = torch.randn(5, 4), torch.randint(0, 3, (5,))
    expected = F.cross_entropy(features @ loss_fn.linear.weight.T, labels)
    assert torch.allclose(loss_fn(features, labels), expected, rtol=0, atol=1e-5)


def test_legacy_size_average_is_rejected():
    with pytest.raises(TraincraftError, match="size_average"):
        losses.build({"name": "mse", "size_average": False})


def test_kl_div_defaults_to_batchmean_and_accepts_mean():
    torch.manual_seed(2)
    log_p = torch.randn(5, 4).log_softmax(1)
    q = torch.randn(5, 4).softmax(1)
    kl = losses.build("kl_div")
    assert kl.reduction == "batchmean"
    assert torch.allclose(kl(log_p, q), (q * (q.log() - log_p)).sum() / 5)
    assert losses.build({"name": "kl_div", "reduction": "mean"}).reduction == "mean"


# ------------------------------------------------------------------------------------------
# modules, callables, import paths
# ------------------------------------------------------------------------------------------


def test_modules_are_returned_as_is_and_callables_are_wrapped():
    module = nn.SmoothL1Loss(beta=0.3)
    assert losses.build(module) is module
    pred, target = torch.tensor([0.0, 1.0, 4.0]), torch.tensor([1.0, 1.0, 1.0])

    def squared(p, t):
        return ((p - t) ** 2).mean()

    wrapped = losses.build(squared)
    assert isinstance(wrapped, nn.Module)
    assert torch.equal(wrapped(pred, target), torch.tensor(10.0 / 3))
    assert isinstance(losses.build(nn.MSELoss), nn.MSELoss)


def test_import_paths_build_classes_and_functions():
    assert isinstance(losses.build("torch.nn:MSELoss"), nn.MSELoss)
    huber = losses.build({"name": "torch.nn:HuberLoss", "delta": 2.0})
    assert isinstance(huber, nn.HuberLoss) and huber.delta == 2.0
    l1 = losses.build("torch.nn.functional:l1_loss")
    pred, target = torch.tensor([0.0, 3.0]), torch.tensor([1.0, 1.0])
    assert torch.equal(l1(pred, target), torch.tensor(1.5))
    with pytest.raises(TraincraftError, match="mean"):
        losses.build({"name": "torch.nn:L1Loss", "reduction": "sum"})


# ------------------------------------------------------------------------------------------
# weighted lists
# ------------------------------------------------------------------------------------------


def test_weighted_list_sums_terms_and_keeps_unweighted_detached_values():
    torch.manual_seed(3)
    pred = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 4))
    loss_fn = losses.build(
        [{"name": "cross_entropy", "weight": 1.0}, {"name": "dice", "weight": 0.5, "smooth": 1}]
    )
    assert isinstance(loss_fn, losses.WeightedLoss)
    ce = F.cross_entropy(pred, target)
    dice = losses.DiceLoss(smooth=1.0)(pred, target)
    total = loss_fn(pred, target)
    assert torch.allclose(total, ce + 0.5 * dice, rtol=0, atol=1e-6)
    assert list(loss_fn.last_terms) == ["cross_entropy", "dice"]
    assert torch.allclose(loss_fn.last_terms["cross_entropy"], ce, rtol=0, atol=1e-6)
    assert torch.allclose(loss_fn.last_terms["dice"], dice, rtol=0, atol=1e-6)
    assert not any(v.requires_grad for v in loss_fn.last_terms.values())
    total.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_weighted_list_defaults_weight_to_one_and_numbers_repeated_names():
    pred, target = torch.tensor([0.0, 2.0]), torch.tensor([1.0, 1.0])
    loss_fn = losses.build(["mse", {"name": "l2", "weight": 3.0}, {"name": "mse"}, "l1"])
    assert loss_fn.term_names == ("mse", "mse_2", "mse_3", "l1")
    assert loss_fn.weights == (1.0, 3.0, 1.0, 1.0)
    assert torch.equal(loss_fn(pred, target), torch.tensor(1.0 + 3.0 + 1.0 + 1.0))
    assert torch.equal(loss_fn.last_terms["mse_2"], torch.tensor(1.0))


def test_weighted_list_class_weight_and_bad_terms():
    torch.manual_seed(4)
    logits, labels = torch.randn(6, 2), torch.randint(0, 2, (6,))
    loss_fn = losses.build([{"name": "ce", "weight": 2.0, "class_weight": [1.0, 4.0]}])
    expected = 2 * F.cross_entropy(logits, labels, weight=torch.tensor([1.0, 4.0]))
    assert torch.allclose(loss_fn(logits, labels), expected, rtol=0, atol=1e-6)
    with pytest.raises(TraincraftError):
        losses.build([])
    with pytest.raises(TraincraftError, match="weight"):
        losses.build([{"name": "mse", "weight": "heavy"}])


# ------------------------------------------------------------------------------------------
# torch losses with other signatures
# ------------------------------------------------------------------------------------------


def _ctc_case():
    torch.manual_seed(5)
    log_probs = torch.randn(6, 2, 4).log_softmax(2)
    input_lengths = torch.tensor([6, 5])
    targets = torch.tensor([[1, 2, 3], [2, 2, 0]])
    target_lengths = torch.tensor([3, 2])
    expected = nn.CTCLoss(blank=0)(log_probs, targets, input_lengths, target_lengths)
    return "ctc", {}, (log_probs, input_lengths), (targets, target_lengths), expected


def _pair_case(name, cls, shape):
    torch.manual_seed(6)
    x1, x2 = torch.randn(shape), torch.randn(shape)
    y = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    return name, {"margin": 0.2}, (x1, x2), y, cls(margin=0.2)(x1, x2, y)


def _gaussian_case():
    torch.manual_seed(7)
    mean, var, target = torch.randn(5, 2), torch.rand(5, 2) + 0.1, torch.randn(5, 2)
    expected = nn.GaussianNLLLoss(full=True)(mean, target, var)
    return "gaussian_nll", {"full": True}, (mean, var), target, expected


def _triplet_case(name, kwargs, torch_loss):
    torch.manual_seed(8)
    triple = (torch.randn(5, 4), torch.randn(5, 4), torch.randn(5, 4))
    return name, kwargs, triple, None, torch_loss(*triple)


CONVENTION_CASES = [
    _pair_case("margin_ranking", nn.MarginRankingLoss, (5,)),
    _pair_case("cosine_embedding", nn.CosineEmbeddingLoss, (5, 3)),
    _gaussian_case(),
    _triplet_case("triplet_margin", {"margin": 0.5}, nn.TripletMarginLoss(margin=0.5)),
    _triplet_case(
        "triplet_margin_with_distance",
        {"distance_function": "torch.nn.functional:cosine_similarity", "margin": 0.3},
        nn.TripletMarginWithDistanceLoss(distance_function=F.cosine_similarity, margin=0.3),
    ),
    _ctc_case(),
]


@pytest.mark.parametrize(
    ("name", "kwargs", "pred", "target", "expected"),
    CONVENTION_CASES,
    ids=[case[0] for case in CONVENTION_CASES],
)
def test_multi_input_losses_match_torch_called_directly(name, kwargs, pred, target, expected):
    loss_fn = losses.build({"name": name, **kwargs})
    assert torch.allclose(loss_fn(pred, target), expected, rtol=0, atol=1e-6)
    assert losses.target_adapter(loss_fn, pred, target)(pred, target) is target


def test_multi_input_losses_say_what_the_model_must_return():
    loss_fn = losses.build("margin_ranking")
    with pytest.raises(ShapeError, match=r"\(x1, x2\)"):
        loss_fn(torch.randn(5), torch.ones(5))
    with pytest.raises(ShapeError, match="3 values"):
        loss_fn((torch.randn(5),) * 3, torch.ones(5))
    with pytest.raises(ShapeError, match="target_lengths"):
        losses.build("ctc")((torch.randn(6, 2, 4), torch.tensor([6, 6])), torch.ones(2, 3))


# ------------------------------------------------------------------------------------------
# focal
# ------------------------------------------------------------------------------------------


def test_focal_with_gamma_zero_is_cross_entropy():
    torch.manual_seed(9)
    logits, labels = torch.randn(16, 5), torch.randint(0, 5, (16,))
    focal = losses.build({"name": "focal", "gamma": 0.0})
    assert torch.allclose(focal(logits, labels), F.cross_entropy(logits, labels), rtol=0, atol=1e-6)
    # segmentation shapes with ignored pixels
    pred, mask = torch.randn(2, 3, 5, 5), torch.randint(0, 3, (2, 5, 5))
    mask[0, :2] = -100
    assert torch.allclose(focal(pred, mask), F.cross_entropy(pred, mask), rtol=0, atol=1e-6)


def test_focal_with_gamma_zero_is_bce_with_logits():
    torch.manual_seed(10)
    logits, labels = torch.randn(12, 3), torch.randint(0, 2, (12, 3)).float()
    focal = losses.FocalLoss(gamma=0.0)
    expected = F.binary_cross_entropy_with_logits(logits, labels)
    assert torch.allclose(focal(logits, labels), expected, rtol=0, atol=1e-6)


def test_focal_binary_by_hand():
    # p = sigmoid(logit) = 0.5 and 0.75; targets 1 and 0; gamma 2; alpha 0.25.
    logits, target = torch.tensor([0.0, LN3]), torch.tensor([1.0, 0.0])
    first = 0.25 * (1 - 0.5) ** 2 * math.log(2)  # p_t = 0.5, alpha_t = alpha
    second = 0.75 * (1 - 0.25) ** 2 * math.log(4)  # p_t = 1 - 0.75, alpha_t = 1 - alpha
    focal = losses.build({"name": "focal", "gamma": 2.0, "alpha": 0.25})
    assert focal(logits, target).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_focal_multiclass_with_per_class_alpha_by_hand():
    # softmax rows: (0.5, 0.5) and (0.75, 0.25); targets 0 and 1.
    logits, target = torch.tensor([[0.0, 0.0], [LN3, 0.0]]), torch.tensor([0, 1])
    first = 0.2 * (1 - 0.5) ** 2 * math.log(2)
    second = 0.8 * (1 - 0.25) ** 2 * math.log(4)
    focal = losses.build({"name": "focal", "gamma": 2, "alpha": [0.2, 0.8]})
    assert focal(logits, target).item() == pytest.approx((first + second) / 2, rel=1e-6)


def test_focal_gradient_is_finite_for_confident_predictions():
    for gamma in (0.5, 2.0):
        logits = torch.tensor([[60.0, -60.0], [-60.0, 60.0]], requires_grad=True)
        losses.FocalLoss(gamma=gamma)(logits, torch.tensor([0, 1])).backward()
        assert torch.isfinite(logits.grad).all()
        binary = torch.tensor([40.0, -40.0], requires_grad=True)
        losses.FocalLoss(gamma=gamma)(binary, torch.tensor([1.0, 0.0])).backward()
        assert torch.isfinite(binary.grad).all()


# ------------------------------------------------------------------------------------------
# dice, tversky
# ------------------------------------------------------------------------------------------


def test_dice_multiclass_by_hand():
    logits, target = torch.tensor([[0.0, 0.0], [LN3, 0.0]]), torch.tensor([0, 1])
    # class 0: p = (0.5, 0.75), g = (1, 0): TP 0.5, sum p 1.25, sum g 1
    # class 1: p = (0.5, 0.25), g = (0, 1): TP 0.25, sum p 0.75, sum g 1
    dice0 = (2 * 0.5 + 1) / (1.25 + 1 + 1)
    dice1 = (2 * 0.25 + 1) / (0.75 + 1 + 1)
    value = losses.build({"name": "dice", "smooth": 1.0})(logits, target)
    assert value.item() == pytest.approx(1 - (dice0 + dice1) / 2, rel=1e-6)


def test_dice_per_sample_by_hand():
    logits, target = torch.tensor([[0.0, 0.0], [LN3, 0.0]]), torch.tensor([0, 1])
    scores = [
        (2 * 0.5 + 1) / (0.5 + 1 + 1),  # sample 0, class 0
        (0 + 1) / (0.5 + 0 + 1),  # sample 0, class 1
        (0 + 1) / (0.75 + 0 + 1),  # sample 1, class 0
        (2 * 0.25 + 1) / (0.25 + 1 + 1),  # sample 1, class 1
    ]
    value = losses.DiceLoss(per_sample=True)(logits, target)
    assert value.item() == pytest.approx(1 - sum(scores) / 4, rel=1e-6)


def test_dice_binary_by_hand():
    # sigmoid: 0.5, 0.75, 0.25; target 1, 1, 0: TP 1.25, sum p 1.5, sum g 2
    logits, target = torch.tensor([[0.0], [LN3], [-LN3]]), torch.tensor([[1.0], [1.0], [0.0]])
    for smooth in (0.0, 1.0):
        expected = 1 - (2 * 1.25 + smooth) / (1.5 + 2 + smooth)
        value = losses.DiceLoss(smooth=smooth)(logits, target)
        assert value.item() == pytest.approx(expected, rel=1e-6)


def test_dice_ignores_ignore_index():
    torch.manual_seed(11)
    logits, target = torch.randn(6, 3), torch.randint(0, 3, (6,))
    padded = torch.cat([target, torch.tensor([-100, -100])])
    extra = torch.cat([logits, torch.randn(2, 3)])
    dice = losses.DiceLoss()
    assert torch.allclose(dice(extra, padded), dice(logits, target), rtol=0, atol=1e-6)


def test_tversky_by_hand():
    logits, target = torch.tensor([[0.0], [LN3], [-LN3]]), torch.tensor([[1.0], [1.0], [0.0]])
    tp, fp, fn = 1.25, 1.5 - 1.25, 2 - 1.25
    tversky = losses.build({"name": "tversky", "alpha": 0.3, "beta": 0.7, "smooth": 0.0})
    assert tversky(logits, target).item() == pytest.approx(1 - tp / (tp + 0.3 * fp + 0.7 * fn))
    smooth = losses.TverskyLoss(alpha=0.3, beta=0.7, smooth=1.0)(logits, target)
    expected = 1 - (2 * tp + 1) / (2 * tp + 2 * 0.3 * fp + 2 * 0.7 * fn + 1)
    assert smooth.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("per_sample", [False, True])
def test_tversky_with_equal_halves_is_dice(per_sample):
    torch.manual_seed(12)
    multi = (torch.randn(3, 4, 5, 5), torch.randint(0, 4, (3, 5, 5)))
    binary = (torch.randn(3, 2, 5), torch.randint(0, 2, (3, 2, 5)).float())
    for smooth in (0.5, 1.0):
        dice = losses.DiceLoss(smooth=smooth, per_sample=per_sample)
        tversky = losses.TverskyLoss(0.5, 0.5, smooth=smooth, per_sample=per_sample)
        for pred, target in (multi, binary):
            assert torch.allclose(tversky(pred, target), dice(pred, target), rtol=0, atol=1e-6)


def test_segmentation_losses_reject_shapes_that_fit_neither_form():
    for name in ("dice", "focal", "tversky"):
        with pytest.raises(ShapeError, match=name):
            losses.build(name)(torch.randn(4, 3), torch.randn(4, 2))
        with pytest.raises(ShapeError, match="integer"):
            losses.build(name)(torch.randn(4, 3), torch.rand(4))


# ------------------------------------------------------------------------------------------
# target_adapter
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["mse", "l1", "huber", "smooth_l1", "bce_with_logits"])
def test_elementwise_aligns_n1_with_n_both_ways(name):
    torch.manual_seed(13)
    loss_fn = losses.build(name)
    pred, target = torch.randn(8, 1), torch.rand(8)
    adapt = losses.target_adapter(loss_fn, pred, target)
    assert adapt(pred, target).shape == (8, 1)
    expected = loss_fn(pred.view(-1), target)
    assert torch.allclose(loss_fn(pred, adapt(pred, target)), expected, rtol=0, atol=1e-7)
    # a smaller last batch
    assert adapt(pred[:3], target[:3]).shape == (3, 1)
    # and the other way round
    adapt = losses.target_adapter(loss_fn, pred.view(-1), target.view(-1, 1))
    assert adapt(pred[:5].view(-1), target[:5].view(-1, 1)).shape == (5,)


def test_elementwise_mse_avoids_the_silent_broadcast():
    pred, target = torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([1.0, 2.0, 3.0])
    loss_fn = losses.build("mse")
    adapt = losses.target_adapter(loss_fn, pred, target)
    assert loss_fn(pred, adapt(pred, target)).item() == 0.0
    with pytest.warns(UserWarning):  # what .squeeze()-less tutorials hit: a (3, 3) broadcast
        hidden = F.mse_loss(pred, target)
    assert hidden.item() == pytest.approx(4 / 3)


def test_equal_shapes_get_the_identity_function():
    pred, target = torch.randn(4, 2), torch.randn(4, 2)
    adapt = losses.target_adapter(losses.build("mse"), pred, target)
    assert adapt(pred, target) is target


@pytest.mark.parametrize(
    ("pred_shape", "target_shape"),
    [((32, 3), (32,)), ((32, 1), (16, 2)), ((4, 2), (2, 4)), ((32,), (31,))],
)
def test_elementwise_mismatch_raises_with_both_shapes(pred_shape, target_shape):
    with pytest.raises(ShapeError) as info:
        losses.target_adapter(
            losses.build("mse"), torch.randn(pred_shape), torch.randn(target_shape)
        )
    message = str(info.value)
    assert message.startswith(
        f"loss 'mse': prediction shape {pred_shape} and target shape {target_shape} do not match;"
    )


def test_elementwise_casts_integer_targets_to_the_prediction_dtype():
    pred, labels = torch.randn(6, 1), torch.randint(0, 2, (6,))
    loss_fn = losses.build("bce_with_logits")
    adapt = losses.target_adapter(loss_fn, pred, labels)
    adapted = adapt(pred, labels)
    assert adapted.dtype == torch.float32 and adapted.shape == (6, 1)
    expected = F.binary_cross_entropy_with_logits(pred, labels.float().view(6, 1))
    assert torch.equal(loss_fn(pred, adapted), expected)
    double = losses.target_adapter(loss_fn, pred.double(), labels)(pred.double(), labels)
    assert double.dtype == torch.float64
    # half-precision predictions (autocast): float32 targets, not a lossy cast
    half = losses.target_adapter(loss_fn, pred.bfloat16(), labels)(pred.bfloat16(), labels)
    assert half.dtype == torch.float32
    bools = losses.target_adapter(losses.build("bce"), pred.sigmoid(), labels.bool())
    assert bools(pred, labels.bool()).dtype == torch.float32


def test_gaussian_nll_compares_the_mean_with_the_target():
    mean, var, target = torch.randn(8, 1), torch.ones(8, 1), torch.randn(8)
    loss_fn = losses.build("gaussian_nll")
    adapt = losses.target_adapter(loss_fn, (mean, var), target)
    expected = nn.GaussianNLLLoss()(mean.view(-1), target, var.view(-1))
    assert torch.allclose(loss_fn((mean, var), adapt((mean, var), target)), expected)
    with pytest.raises(ShapeError, match="gaussian_nll"):
        losses.target_adapter(loss_fn, (torch.randn(8, 2), var), target)


def test_class_index_targets_pass_and_n1_is_aligned():
    logits = torch.randn(8, 3)
    labels = torch.randint(0, 3, (8,))
    for name in ("cross_entropy", "nll", "multi_margin", "focal", "dice", "tversky"):
        loss_fn = losses.build(name)
        assert losses.target_adapter(loss_fn, logits, labels)(logits, labels) is labels
        adapt = losses.target_adapter(loss_fn, logits, labels.view(8, 1).int())
        adapted = adapt(logits[:5], labels[:5].view(5, 1).int())
        assert adapted.shape == (5,) and adapted.dtype == torch.int64
        assert torch.equal(adapted, labels[:5])


def test_class_index_segmentation_masks_with_a_channel_are_aligned():
    pred, mask = torch.randn(2, 4, 6, 6), torch.randint(0, 4, (2, 1, 6, 6), dtype=torch.uint8)
    loss_fn = losses.build(["cross_entropy", "dice"])
    adapt = losses.target_adapter(loss_fn, pred, mask)
    adapted = adapt(pred, mask)
    assert adapted.shape == (2, 6, 6) and adapted.dtype == torch.int64
    expected = F.cross_entropy(pred, mask.squeeze(1).long())
    assert torch.allclose(loss_fn.terms[0](pred, adapted), expected)


def test_cross_entropy_accepts_probabilities_of_the_prediction_shape():
    logits, probs = torch.randn(4, 3), torch.rand(4, 3).softmax(1)
    assert losses.target_adapter(losses.build("ce"), logits, probs)(logits, probs) is probs
    with pytest.raises(ShapeError, match="integer"):
        losses.target_adapter(losses.build("nll"), logits, probs)
    with pytest.raises(ShapeError, match=r"\.long\(\)"):
        losses.target_adapter(losses.build("ce"), logits, torch.tensor([0.0, 1.0, 2.0, 1.0]))


@pytest.mark.parametrize("pred_shape", [(8,), (8, 1)])
def test_class_loss_with_one_output_suggests_bce_with_logits(pred_shape):
    with pytest.raises(ShapeError, match="bce_with_logits") as info:
        losses.target_adapter(
            losses.build("cross_entropy"), torch.randn(pred_shape), torch.randint(0, 2, (8,))
        )
    assert "num_classes" in str(info.value) and str(pred_shape) in str(info.value)


def test_class_index_mismatch_raises():
    with pytest.raises(ShapeError, match=r"'cross_entropy'.*\(8, 3\).*\(4,\)"):
        losses.target_adapter(losses.build("ce"), torch.randn(8, 3), torch.randint(0, 3, (4,)))
    with pytest.raises(ShapeError):
        losses.target_adapter(
            losses.build("ce"), torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 5, 4))
        )


def test_segmentation_losses_pick_their_form_from_the_shapes():
    # one output channel with an integer mask: the binary (sigmoid) form
    pred, mask = torch.randn(2, 1, 4, 4), torch.randint(0, 2, (2, 4, 4))
    for name in ("dice", "focal", "tversky"):
        loss_fn = losses.build(name)
        adapted = losses.target_adapter(loss_fn, pred, mask)(pred, mask)
        assert adapted.shape == (2, 1, 4, 4) and adapted.dtype == torch.float32
        assert torch.isfinite(loss_fn(pred, adapted))
    expected = F.binary_cross_entropy_with_logits(pred, mask.unsqueeze(1).float())
    focal = losses.FocalLoss(gamma=0)
    adapt = losses.target_adapter(focal, pred, mask)
    assert torch.allclose(focal(pred, adapt(pred, mask)), expected, rtol=0, atol=1e-6)
    with pytest.raises(ShapeError, match="'dice'.*integer"):
        losses.target_adapter(losses.build("dice"), torch.randn(4, 3), torch.rand(4))
    with pytest.raises(ShapeError, match="'focal'"):
        losses.target_adapter(losses.build("focal"), torch.randn(4, 2), torch.rand(4, 3))


def test_weighted_lists_check_only_when_all_terms_agree():
    pred, target = torch.randn(6, 1), torch.randn(6)
    elementwise = losses.build(["mse", {"name": "l1", "weight": 0.1}])
    assert losses.target_adapter(elementwise, pred, target)(pred, target).shape == (6, 1)
    with pytest.raises(ShapeError, match="'mse \\+ l1'"):
        losses.target_adapter(elementwise, torch.randn(6, 2), target)
    mixed = losses.build(["mse", losses.build(lambda p, t: (p - t).abs().mean())])
    assert losses.target_adapter(mixed, pred, target)(pred, target) is target


def test_user_callables_and_other_losses_get_the_identity():
    pred, target = torch.randn(6, 2), torch.randn(6)
    custom = losses.build(lambda p, t: p.mean() - t.mean())
    assert losses.target_adapter(custom, pred, target)(pred, target) is target
    assert losses.target_adapter(F.mse_loss, pred, target)(pred, target) is target
    multilabel = losses.build("multilabel_margin")
    labels = torch.tensor([[0, 1], [1, -1], [0, -1], [1, 0], [0, -1], [1, -1]])
    assert losses.target_adapter(multilabel, pred, labels)(pred, labels) is labels


# ------------------------------------------------------------------------------------------
# takes_probabilities
# ------------------------------------------------------------------------------------------


def test_takes_probabilities():
    assert losses.takes_probabilities("bce")
    assert losses.takes_probabilities(nn.BCELoss())
    assert losses.takes_probabilities(["bce", {"name": "binary_cross_entropy", "weight": 2}])
    assert not losses.takes_probabilities("bce_with_logits")
    assert not losses.takes_probabilities(["bce", "dice"])
    assert not losses.takes_probabilities("mse")
    assert not losses.takes_probabilities(lambda p, t: (p - t).mean())


@pytest.mark.parametrize("shape", [(8, 1), (8,)])
def test_cross_entropy_on_one_output_is_refused_not_zero(shape):
    loss_fn = losses.build("cross_entropy")
    pred, target = torch.randn(*shape), torch.randn(*shape) * 10
    with pytest.raises(ShapeError, match=r"one output per sample, and a softmax over one class is always 1.*'mse'"):
        losses.target_adapter(loss_fn, pred, target)


def test_cross_entropy_from_the_command_line_on_a_regression_target_is_one_line(tmp_path, capsys):
    from traincraft.cli import main

    code = main(["fit", "regression", "loss=cross_entropy", "train.max_epochs=1", "--run-dir", str(tmp_path / "r"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: loss 'cross_entropy': prediction shape") and "always 1" in err[-1]
