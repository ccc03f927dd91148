"""Fine-tuning inside the trainer: freezing, unfreezing on a schedule, layer decay, EMA, SWA."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from traincraft import Callback, Trainer, schedules
from traincraft.callbacks.ema import EMA
from traincraft.callbacks.swa import swa_lr
from traincraft.checkpoint import save_weights
from traincraft.errors import TraincraftError
from traincraft.finetune.plan import UnfreezePlan

STEPS_PER_EPOCH = 4  # 64 samples, batch 16



class Net(nn.Module):
    """A body with batch norm and a head: the usual shape of a fine-tuned model."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU())
        self.mid = nn.Linear(8, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.mid(self.body(x))))


def data(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(n, 1, generator=g)
    return x, y


def net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net()


def trainer(model: nn.Module, **kwargs) -> Trainer:
    args = dict(loss="mse", lr=0.01, batch_size=16, max_epochs=4, seed=0, progress=False)
    args.update(kwargs)
    return Trainer(model, **args)


class Recorder(Callback):
    """Copies of chosen tensors and the optimizer's groups after every optimizer step."""

    def __init__(self, names: tuple[str, ...] = ()):
        self.names = names
        self.steps: list[dict] = []

    def on_step_end(self, trainer: Trainer) -> None:
        tensors = dict(trainer.model.state_dict())
        self.steps.append({
            "step": trainer.state.step,
            "groups": len(trainer.optimizer.param_groups),
            "lrs": [g["lr"] for g in trainer.optimizer.param_groups],
            **{n: tensors[n].detach().clone() for n in self.names},
        })


class StopAfterTwoEpochs(Callback):
    """Ctrl-C at the end of the second epoch (a run a callback ends on purpose stays ended)."""

    def on_epoch_end(self, trainer: Trainer) -> None:
        if trainer.state.epoch == 2:
            trainer.state.request_stop("interrupted")


def stopped_and_resumed(tmp_path, **kwargs) -> Trainer:
    """A run stopped after two epochs (its checkpoint written), then resumed to the end."""
    first = trainer(net(), run_dir=tmp_path, callbacks=[StopAfterTwoEpochs()], **kwargs)
    first.fit(data())
    assert first.state.epoch == 2
    resumed = trainer(net(), run_dir=tmp_path, **kwargs)
    resumed.fit(data(), resume=tmp_path)
    return resumed


# ----------------------------------------------------------------------------- freezing


def test_frozen_parameters_and_batch_norm_statistics_stay_bitwise_unchanged():
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    t = trainer(model, finetune={"freeze": ["body.*"]})
    t.fit(data())
    after = model.state_dict()
    for key in ("body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias",
                "body.1.running_mean", "body.1.running_var", "body.1.num_batches_tracked"):
        assert torch.equal(after[key], before[key]), key
    assert not torch.equal(after["head.weight"], before["head.weight"])
    assert not torch.equal(after["mid.weight"], before["mid.weight"])
    frozen = {id(p) for p in model.body.parameters()}
    assert all(id(p) not in frozen for g in t.optimizer.param_groups for p in g["params"])


def test_train_bn_lets_frozen_batch_norm_update_its_statistics():
    model = net()
    before = model.body[1].running_mean.clone()
    trainer(model, finetune={"freeze": ["body.*"], "train_bn": True}).fit(data())
    assert not torch.equal(model.body[1].running_mean, before)
    assert model.body[1].num_batches_tracked.item() == 4 * STEPS_PER_EPOCH


# ----------------------------------------------------------------------------- unfreezing


def test_unfreezing_after_two_epochs_adds_a_group_whose_parameters_then_change():
    model = net()
    start = model.body[0].weight.detach().clone()
    rec = Recorder(("body.0.weight",))
    t = trainer(model, finetune={"freeze": ["body.*"],
                                 "unfreeze": [{"at": "2ep", "params": "body.*", "lr_mult": 0.1}]},
                callbacks=[rec])
    t.fit(data())
    at = 2 * STEPS_PER_EPOCH
    for row in rec.steps:  # recorded after each step's unfreezing, if any
        assert row["groups"] == (2 if row["step"] < at else 4)  # + body's decay and no-decay groups
        assert torch.equal(row["body.0.weight"], start) == (row["step"] <= at)
    added = t.optimizer.param_groups[2:]
    assert [g["name"] for g in added] == ["unfreeze[0]/default", "unfreeze[0]/default/no_decay"]
    assert all(g["lr"] == pytest.approx(0.001) and g["lr_mult"] == 0.1 for g in added)
    names = [n for g in added for n in g["param_names"]]
    assert sorted(names) == sorted(f"body.{n}" for n, _ in model.body.named_parameters())
    # Batch norm leaves eval mode once its layer is unfrozen: its statistics move again.
    assert model.body[1].num_batches_tracked.item() == 2 * STEPS_PER_EPOCH


def test_an_added_group_follows_the_schedule_at_its_own_ratio():
    model = net()
    rec = Recorder()
    t = trainer(model, schedule={"name": "cosine", "warmup": 2},
                finetune={"freeze": ["body.*"],
                          "unfreeze": [{"at": 5, "params": ["body.0.*"], "lr_mult": 0.25}]},
                callbacks=[rec])
    t.fit(data())
    # An oracle: the same schedule on a plain optimizer of one group.
    probe = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    oracle = schedules.build({"name": "cosine", "warmup": 2}, probe, steps_per_epoch=STEPS_PER_EPOCH,
                             total_steps=4 * STEPS_PER_EPOCH)
    oracle.start()
    for row in rec.steps:
        oracle.step_end(row["step"])
        expected = oracle.lrs()[0]
        assert row["lrs"][0] == pytest.approx(expected, rel=1e-12)
        if row["step"] >= 5:
            assert row["lrs"][1] == row["lrs"][0]  # head.bias: the no-decay half of the first rule
            assert row["lrs"][2:] == pytest.approx([0.25 * expected] * 2, rel=1e-12, abs=1e-15)


def test_gradual_unfreezing_unfreezes_one_group_after_another():
    model = net()
    rec = Recorder()
    t = trainer(model, finetune={"freeze": ["body.*", "mid.*"],
                                 "gradual": {"groups": ["mid.*", "body.*"], "every": "1ep"}},
                callbacks=[rec])
    t.fit(data())
    counts = {row["step"]: row["groups"] for row in rec.steps}
    # head's decay and no-decay groups, then two more for mid, then two for body
    assert counts[STEPS_PER_EPOCH - 1] == 2
    assert counts[STEPS_PER_EPOCH] == counts[2 * STEPS_PER_EPOCH - 1] == 4
    assert counts[2 * STEPS_PER_EPOCH] == 6
    assert [e.step for e in t.finetuning.plan.events] == [STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH]


def test_resume_after_unfreezing_is_exact(tmp_path):
    finetune = {"freeze": ["body.*"], "unfreeze": [{"at": "1ep", "params": "body.*", "lr_mult": 0.5}]}
    kwargs = dict(finetune=finetune, schedule="cosine", max_epochs=4, weight_decay=0.01)
    whole = trainer(net(), **kwargs)
    whole.fit(data())
    resumed = stopped_and_resumed(tmp_path, **kwargs)
    assert len(resumed.optimizer.param_groups) == len(whole.optimizer.param_groups) == 4
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_unfreeze_plan_errors_name_the_key():
    with pytest.raises(TraincraftError, match=r"unfreeze\[0\]: unknown key 'lr_mul'.*lr_mult"):
        UnfreezePlan(unfreeze=[{"at": 1, "params": "x", "lr_mul": 0.1}])
    with pytest.raises(TraincraftError, match="needs 'at'"):
        UnfreezePlan(unfreeze=[{"params": "x"}])
    with pytest.raises(TraincraftError, match="gradual.lr_mult has 1 values for 2 groups"):
        UnfreezePlan(gradual={"groups": ["a", "b"], "every": 1, "lr_mult": [0.1]})
    with pytest.raises(TraincraftError, match="need finetune.freeze"):
        trainer(net(), finetune={"unfreeze": [{"at": 1, "params": "body.*"}]})
    with pytest.raises(TraincraftError, match="finetune: unknown key 'frezee'.*freeze"):
        trainer(net(), finetune={"frezee": ["body.*"]})


def test_a_torch_scheduler_refuses_groups_added_mid_run():
    t = trainer(net(), schedule=lambda opt: torch.optim.lr_scheduler.StepLR(opt, 2),
                finetune={"freeze": ["body.*"], "unfreeze": [{"at": 1, "params": "body.*"}]})
    with pytest.raises(TraincraftError, match="cannot take"):
        t.fit(data())


# ----------------------------------------------------------------------------- layer decay


def test_layer_decay_gives_each_earlier_block_the_next_ones_lr_times_the_factor():
    from traincraft.models import MLP

    torch.manual_seed(0)
    model = MLP(6, 1, hidden_sizes=[8, 8, 8])
    t = trainer(model, lr=0.1, finetune={"layer_decay": 0.5})
    lrs = {}
    for group in t.optimizer.param_groups:
        for name in group["param_names"]:
            lrs[name.split(".")[0]] = group["lr"]
    assert lrs == {"hidden1": 0.1 * 0.5**3, "hidden2": 0.1 * 0.5**2, "hidden3": 0.1 * 0.5, "head": 0.1}


def test_layer_decay_multiplier_serves_a_block_unfrozen_later():
    from traincraft.models import MLP

    torch.manual_seed(0)
    model = MLP(6, 1, hidden_sizes=[8, 8])
    t = trainer(model, lr=0.1, max_epochs=2,
                finetune={"layer_decay": 0.5, "freeze": ["hidden1.*"],
                          "unfreeze": [{"at": "1ep", "params": "hidden1.*"}]})
    assert not any(n.startswith("hidden1") for g in t.optimizer.param_groups for n in g["param_names"])
    t.fit(data())
    added = [g for g in t.optimizer.param_groups if g["name"].startswith("unfreeze[0]")]
    assert added and all(g["lr"] == pytest.approx(0.1 * 0.25) for g in added)


# ----------------------------------------------------------------------------- EMA


def test_ema_equals_a_hand_computed_average():
    model = net()
    names = tuple(k for k, v in model.state_dict().items())
    rec = Recorder(names)
    ema = EMA(decay=0.9, warmup=True, evaluate=False)
    start = {k: v.double() if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    trainer(model, callbacks=[rec], ema=ema).fit(data())
    expected = start
    for n, row in enumerate(rec.steps, start=1):
        d = min(0.9, (1 + n) / (10 + n))
        expected = {
            k: (d * expected[k] + (1 - d) * row[k].double()) if v.is_floating_point() else row[k]
            for k, v in expected.items()
        }
    assert ema.updates == len(rec.steps) == 4 * STEPS_PER_EPOCH
    for k, v in expected.items():
        if v.is_floating_point():
            torch.testing.assert_close(ema.shadow[k].double(), v, rtol=1e-5, atol=1e-6, msg=k)
        else:  # num_batches_tracked: copied, not averaged
            assert torch.equal(ema.shadow[k], v), k
    # evaluate=False: the model keeps its live weights.
    assert torch.equal(model.head.weight, rec.steps[-1]["head.weight"])


def test_ema_every_n_steps_and_without_warmup():
    model = net()
    rec = Recorder(("head.weight",))
    ema = EMA(decay=0.5, warmup=False, every=2, evaluate=False)
    start = model.head.weight.detach().clone()
    trainer(model, callbacks=[rec], ema=ema, max_epochs=1).fit(data())
    expected = start
    for row in rec.steps:
        if row["step"] % 2 == 0:
            expected = 0.5 * expected + 0.5 * row["head.weight"]
    assert ema.updates == STEPS_PER_EPOCH // 2
    torch.testing.assert_close(ema.shadow["head.weight"], expected)


def test_validation_and_final_weights_are_the_emas_when_it_evaluates():
    model = net()
    x, y = data()
    val = data(32, seed=1)
    ema = EMA(decay=0.8)
    t = trainer(model, ema=ema)
    history = t.fit((x, y), val=val)
    for k, v in model.state_dict().items():  # the model ends with the average
        assert torch.equal(v, ema.shadow[k]), k
    assert history.epochs[-1]["val_loss"] == pytest.approx(t.evaluate(val)["loss"], rel=1e-6)


def test_best_weights_kept_by_early_stopping_are_the_emas(tmp_path):
    from traincraft import EarlyStopping
    from traincraft.checkpoint import load_weights

    model = net()
    ema = EMA(decay=0.8)
    t = trainer(model, ema=ema, run_dir=tmp_path, report=False,
                callbacks=[EarlyStopping(patience=50, restore_best=True)])
    val = data(32, seed=1)
    history = t.fit(data(), val=val)
    best = min(history.epochs, key=lambda r: r["val_loss"])
    assert t.evaluate(val)["loss"] == pytest.approx(best["val_loss"], rel=1e-6)
    saved = load_weights(tmp_path / "best.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(saved[k], v), k


def test_ema_resumes_exactly(tmp_path):
    kwargs = dict(ema={"decay": 0.9}, max_epochs=4)
    whole = trainer(net(), **kwargs)
    whole.fit(data())
    resumed = stopped_and_resumed(tmp_path, **kwargs)
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


# ----------------------------------------------------------------------------- SWA


@pytest.mark.parametrize("strategy", ["cos", "linear"])
def test_swa_learning_rates_match_torch_swalr(strategy):
    from torch.optim.swa_utils import SWALR

    model = net()
    rec = Recorder()
    t = trainer(model, max_epochs=6, callbacks=[rec],
                swa={"start": "2ep", "lr": 0.002, "anneal": 5, "anneal_strategy": strategy})
    t.fit(data())
    start = 2 * STEPS_PER_EPOCH
    probe = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.01)
    oracle = SWALR(probe, swa_lr=0.002, anneal_epochs=5, anneal_strategy=strategy)
    for row in rec.steps:
        if row["step"] < start:
            assert row["lrs"][0] == 0.01
            continue
        assert row["lrs"][0] == pytest.approx(probe.param_groups[0]["lr"], rel=1e-12), row["step"]
        probe.step()  # no gradient: only keeps the scheduler from warning
        oracle.step()
    assert swa_lr(0, 1.0, 0.0, 4, "cos") == 1.0 and swa_lr(4, 1.0, 0.0, 4, "cos") == 0.0


def test_swa_averages_epoch_end_weights_and_recomputes_batch_norm():
    from torch.optim.swa_utils import update_bn

    class EpochWeights(Callback):
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def on_epoch_end(self, trainer: Trainer) -> None:
            self.rows.append({k: v.detach().clone() for k, v in trainer.model.named_parameters()})

    model = net()
    seen = EpochWeights()
    x, y = data()
    t = trainer(model, max_epochs=5, callbacks=[seen], swa={"start": "3ep", "lr": 0.005}, shuffle=False)
    t.fit((x, y))
    averaged = seen.rows[2:]  # the epochs ending at steps >= 3 epochs
    for name, param in model.named_parameters():
        expected = sum(row[name] for row in averaged) / len(averaged)
        torch.testing.assert_close(param, expected, msg=name)
    # The batch-norm statistics are those torch's update_bn computes for these weights.
    oracle = net()
    oracle.load_state_dict(model.state_dict())
    loader = [x[i : i + 16] for i in range(0, 64, 16)]
    update_bn(loader, oracle)
    torch.testing.assert_close(model.body[1].running_mean, oracle.body[1].running_mean)
    torch.testing.assert_close(model.body[1].running_var, oracle.body[1].running_var)


def test_swa_refuses_early_stopping_that_restores_best_weights():
    from traincraft import EarlyStopping

    t = trainer(net(), swa={"start": 2}, callbacks=[EarlyStopping(restore_best=True)])
    with pytest.raises(TraincraftError, match="restore_best: false"):
        t.fit(data(), val=data(16, seed=2))


def test_swa_writes_the_averaged_model_as_best(tmp_path):
    from traincraft.checkpoint import load_weights

    model = net()
    t = trainer(model, run_dir=tmp_path, report=False, max_epochs=4, swa={"start": "50%"})
    t.fit(data(), val=data(32, seed=1))
    saved = load_weights(tmp_path / "best.safetensors")
    for k, v in model.state_dict().items():
        assert torch.equal(saved[k], v), k
    import json

    best = json.loads((tmp_path / "best.json").read_text())
    assert best["swa"] is True and best["epochs_averaged"] == 3  # from step 8: epochs 2, 3 and 4
    assert best["val_loss"] == pytest.approx(t.evaluate(data(32, seed=1))["loss"], rel=1e-6)
    assert math.isfinite(best["val_loss"])


def test_ema_of_a_model_with_tied_weights_averages_and_swaps_the_weight_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encode = nn.Linear(6, 6, bias=False)
            self.decode = nn.Linear(6, 6, bias=False)
            self.decode.weight = self.encode.weight  # one tensor, two names
            self.head = nn.Linear(6, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.decode(self.encode(x)))

    torch.manual_seed(0)
    model = Tied()
    ema = EMA(decay=0.5, warmup=False)
    t = trainer(model, ema=ema, max_epochs=1)
    t.fit(data(), val=data(16, seed=3))
    assert list(ema.shadow) == ["encode.weight", "head.weight", "head.bias"]
    assert torch.equal(model.encode.weight, ema.shadow["encode.weight"])  # the model ends on the EMA
    assert model.decode.weight is model.encode.weight


@pytest.mark.parametrize("start", ["200%", 1000, "9ep"])
def test_swa_that_could_never_start_is_refused(start):
    with pytest.raises(TraincraftError, match=r"swa.start .* after the run's last step \(16\): averaging would never start"):
        trainer(net(), max_epochs=4, swa={"start": start}).fit(data())


def test_freeze_everything_but_the_new_head(tmp_path):
    source = net()
    save_weights(source, tmp_path / "pretrained.safetensors")
    model = net()
    model.head = nn.Linear(model.head.in_features, 5)  # a new head: another number of classes
    t = trainer(model, init_from=tmp_path / "pretrained.safetensors", finetune={"freeze": ["*"]})
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == ["head.bias", "head.weight"]
    assert any("trainable as new (not loaded by init_from): head.weight, head.bias" in m
               or "trainable as new (not loaded by init_from): head.bias, head.weight" in m
               for m in t.finetuning.messages), t.finetuning.messages
    with pytest.raises(TraincraftError, match=r"freezes every parameter, leaving nothing to train"):
        trainer(net(), finetune={"freeze": ["*"]})
