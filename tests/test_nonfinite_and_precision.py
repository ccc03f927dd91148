"""fp16 skipped steps, non-finite policies, gradient-norm logging, compile."""

import warnings

import pytest
import torch
from torch import nn

import traincraft as tc
from traincraft import schedules
from traincraft.step import NonFiniteError


class Amplify(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``factor`` (an fp16 overflow, loss finite)."""

    @staticmethod
    def forward(ctx, x, factor):
        ctx.factor = factor
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.factor, None


class Spiky(nn.Module):
    """An MLP whose ``bad``-th training forward calls (counted from 1) go wrong: ``value`` nan/inf
    multiplies the output, ``"overflow"`` multiplies only the gradient by 1e30."""

    def __init__(self, bad=(), value=float("nan")):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
        self.bad, self.value, self.calls = set(bad), value, 0

    def forward(self, x):
        out = self.net(x)
        if not self.training:
            return out
        self.calls += 1
        if self.calls in self.bad:
            return Amplify.apply(out, 1e30) if self.value == "overflow" else out * self.value
        return out


class LRs(tc.Callback):
    def __init__(self):
        self.lrs = []

    def on_before_step(self, trainer):
        self.lrs.append(trainer.optimizer.param_groups[0]["lr"])


def data(n=40):
    g = torch.Generator().manual_seed(0)
    X = torch.randn(n, 3, generator=g)
    return X, X.sum(1, keepdim=True)


def trainer(bad=(), value=float("nan"), **kwargs):
    kwargs.setdefault("max_epochs", 2)
    return tc.Trainer(Spiky(bad, value), loss="mse", lr=0.01, batch_size=5, progress=False, seed=0,
                      device="cpu", **kwargs)


def test_fp16_overflow_skips_the_step_without_advancing_counters_or_schedule():
    spec = {"name": "linear", "start_factor": 1.0, "end_factor": 0.0}
    runs = {}
    for bad in ((), (9,)):
        lrs = LRs()
        t = trainer(bad=bad, value="overflow", precision="fp16", schedule=spec, callbacks=[lrs])
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "lr_scheduler.step() before optimizer.step()", nothing
            t.fit(data())
        runs[bad] = (t, lrs.lrs)
    (clean, _), (spiked, spiked_lrs) = runs[()], runs[(9,)]
    # GradScaler starts at 2**16, which a small model's gradients overflow in fp16: a few windows
    # are skipped in both runs; the injected overflow skips exactly one more.
    assert spiked.state.skipped_steps == clean.state.skipped_steps + 1
    assert spiked.state.step == clean.state.step - 1 == 16 - spiked.state.skipped_steps
    # every window used the LR of the optimizer steps taken so far: skipped ones repeat it
    expected = [row[0] for row in schedules.preview(spec, steps_per_epoch=8, epochs=2, base_lrs=[0.01])]
    distinct = [lr for i, lr in enumerate(spiked_lrs) if i == 0 or lr != spiked_lrs[i - 1]]
    assert distinct == pytest.approx(expected[: spiked.state.step + 1][: len(distinct)])
    assert len(spiked_lrs) == 16 and len(distinct) == spiked.state.step
    assert all(torch.isfinite(p).all() for p in spiked.model.parameters())


def test_fp16_clipping_sees_unscaled_gradients():
    X = torch.randn(5, 3).repeat(8, 1)  # identical batches: every window has the same gradient
    y = X.sum(1, keepdim=True)
    first = {}

    class FirstTaken(tc.Callback):
        def on_step_end(self, trainer):
            first.setdefault(trainer.stepper.precision, trainer.stepper.grad_norm.item())

    for precision in ("32", "fp16"):
        trainer(precision=precision, clip_grad_norm=1e9, max_epochs=1, shuffle=False,
                callbacks=[FirstTaken()]).fit((X, y))
    # the first step taken sees the initial weights in both runs (fp16 only skipped before it)
    assert first["fp16"] == pytest.approx(first["32"], rel=1e-2)  # fp16 rounding, not a factor 65536


def test_grad_norm_is_the_epoch_mean_of_the_pre_clipping_norms():
    seen = []

    class Record(tc.Callback):
        def on_before_step(self, trainer):
            seen.append(trainer.stepper.grad_norm.item())

    t = trainer(clip_grad_norm=0.1, max_epochs=1, callbacks=[Record()])
    t.fit(data())
    assert t.history[0]["grad_norm"] == pytest.approx(sum(seen) / len(seen), rel=1e-9)
    assert max(seen) > 0.1  # clipping had work to do; the logged norm is the one before it


def test_raise_names_the_epoch_the_steps_and_the_parameters():
    t = trainer(bad={4})
    with pytest.raises(NonFiniteError, match=r"non-finite loss in epoch 1, between optimizer steps 1 and 8; "
                                             r"parameters now non-finite: net.0.weight"):
        t.fit(data())


def test_skip_drops_the_bad_step_and_carries_on():
    t = trainer(bad={4}, on_nonfinite="skip")
    history = t.fit(data())
    assert t.state.skipped_steps == 1 and t.state.step == 15
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
    assert history[1]["train_loss"] == history[1]["train_loss"]  # epoch 2 is clean


def test_rollback_restores_the_last_good_weights_and_lowers_the_lr():
    snapshots = {}

    class Keep(tc.Callback):
        def on_step_end(self, trainer):
            snapshots[trainer.state.step] = {k: v.clone() for k, v in trainer.model.state_dict().items()}

        def on_before_step(self, trainer):
            if trainer.state.rollbacks and "after" not in snapshots:
                snapshots["after"] = {k: v.clone() for k, v in trainer.model.state_dict().items()}
                snapshots["lr"] = trainer.optimizer.param_groups[0]["lr"]

    t = trainer(bad={6}, on_nonfinite="rollback", rollback_every=2, callbacks=[Keep()])
    t.fit(data())
    assert t.state.rollbacks == 1 and t.state.skipped_steps == 1
    # the 6th window failed after step 5; the last snapshot was taken at step 4: the next step
    # starts again from step 4's weights, with half the learning rate
    assert all(torch.equal(snapshots["after"][k], snapshots[4][k]) for k in snapshots[4])
    assert snapshots["lr"] == pytest.approx(0.005)


def test_rollback_gives_up_after_max_rollbacks():
    t = trainer(bad=set(range(3, 100)), on_nonfinite="rollback", max_rollbacks=2)
    with pytest.raises(NonFiniteError, match="after 2 rollbacks \\(max_rollbacks=2\\)"):
        t.fit(data())


def test_a_bad_policy_name_is_refused():
    with pytest.raises(tc.TraincraftError, match="on_nonfinite must be one of raise, skip, rollback"):
        trainer(on_nonfinite="ignore")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fp16_on_cuda_trains():
    t = tc.Trainer(Spiky(), loss="mse", precision="fp16", device="cuda", progress=False, seed=0, max_epochs=2)
    t.fit(data())
    assert t.stepper.scaler is not None and all(torch.isfinite(p).all() for p in t.model.parameters())


def test_compile_trains_and_saves_plain_keys(tmp_path):
    t = trainer(compile=True, max_epochs=1, run_dir=tmp_path)
    t.fit(data(10))
    assert t.forward_model is not t.model
    from traincraft.checkpoint import load_weights

    assert all("_orig_mod" not in k for k in load_weights(tmp_path / "best.safetensors"))


def test_fp16_on_a_cpu_says_it_is_slow(capsys):
    import traincraft as tc

    tc.Trainer(torch.nn.Linear(2, 1), loss="mse", precision="fp16", device="cpu", progress=False)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: precision fp16 on a CPU runs 12-50x slower" in err
    tc.Trainer(torch.nn.Linear(2, 1), loss="mse", precision="bf16", device="cpu", progress=False)
    assert capsys.readouterr().err == ""


def test_rollback_after_an_unfreeze_goes_back_to_weights_with_every_group():
    finetune = {"freeze": ["net.0.*"], "unfreeze": [{"at": "1ep", "params": ["net.0.*"], "lr_mult": 0.1}]}
    t = trainer(bad={12}, on_nonfinite="rollback", rollback_every=100, finetune=finetune, max_epochs=3)
    t.fit(data())
    assert t.state.rollbacks == 1 and len(t.optimizer.param_groups) > 1
    assert all(torch.isfinite(p).all() for p in t.model.parameters())
