"""The trainer's overhead: traincraft against hand-written loops and peers, per optimizer step.

    python bench/overhead.py [--repeats 9] [--only mlp cnn lstm] [--progress tty|plain]

Three workloads, each timed in this one process, the cases interleaved (A B C D, A B C D, ...)
after one untimed warm-up round, one thread (``torch.set_num_threads(1)``):

* ``mlp``: an MLP 32-64-1, batch 64, Adam, MSE, on synthetic regression data. Cases: a
  hand-written DataLoader loop, a hand-written tensor-slicing loop, traincraft given the same
  DataLoader, traincraft given the tensors, a DataLoader loop with torch's default (not fused)
  Adam, and Lightning, Accelerate and Keras (torch backend) when they are installed. traincraft
  runs with its defaults on: progress bar, a metric (mae), EarlyStopping and a run folder
  (metrics.csv, the checkpoint of each epoch, the best weights).
* ``cnn``: the quickstart recipe (digits, small CNN, AdamW, cosine with warm-up, clipping).
* ``lstm``: the sunspots recipe (2-layer LSTM, Adam, smooth L1, clipping).
  For both, the data and the model come from ``traincraft.run.prepare_data``/``build_model``, and
  the hand-written loop does the same work as the trainer: same optimizer and parameter groups,
  schedule, clipping, loss, train and validation figures, best-weights snapshot, a line per epoch.

A time is the wall time of the call that trains (``fit``, or the loop), divided by the optimizer
steps it took: set-up (model, optimizer, trainer, loaders) is left out, validation and everything
done per epoch are in. The CPU time of the process is recorded beside it. Per case, the table
gives the medians over the repeats, and ratios as the median over the rounds of the ratio within
each round (the runs of one round are seconds apart, so a change of the machine's load between
rounds cancels out). Every run's output (progress bars, epoch lines, peers' logs) goes to one
sink: by default a null stream that says it is a terminal, so that the bars really render
(``--progress plain``: a plain null stream, one line per epoch). The table is written to
``bench/results/overhead.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import inspect
import io
import logging
import math
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

RESULTS = Path(__file__).parent / "results"
SEED = 0

# The budgets of the speed issue: traincraft's median µs per step over the hand-written loop's.
BUDGETS = {
    ("mlp", "traincraft, DataLoader"): ("hand-written DataLoader loop", 1.05),
    ("mlp", "traincraft, tensors"): ("hand-written tensor loop", 1.10),
    ("cnn", "traincraft"): ("hand-written loop, same work", 1.02),
    ("lstm", "traincraft"): ("hand-written loop, same work", 1.02),
}


# ----------------------------------------------------------------------------- plumbing


class NullTerminal(io.TextIOBase):
    """A sink for everything a run prints. ``tty=True`` makes it claim to be a terminal, so tqdm
    (and Lightning's and Keras's bars) format and write every refresh; the bytes are dropped."""

    def __init__(self, tty: bool):
        self.tty = tty

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        return len(text)

    def isatty(self) -> bool:
        return self.tty


@dataclass
class Outcome:
    """What one timed run reports: optimizer steps taken and its last validation loss; for
    traincraft, the seconds its epochs' training and validation took (the history's "seconds")."""

    steps: int
    val_loss: float
    epoch_seconds: float | None = None
    outside_seconds: float | None = None  # set by measure(): the run's time outside those


@dataclass
class Case:
    """One way of training. ``prepare()`` does the untimed set-up and returns the timed call."""

    name: str
    prepare: Callable[[], Callable[[], Outcome]]
    note: str = ""
    seconds_per_step: list[float] = field(default_factory=list)
    cpu_seconds_per_step: list[float] = field(default_factory=list)
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def median_us(self) -> float:
        """Median wall time per optimizer step, in µs: what the budgets are about."""
        return statistics.median(self.seconds_per_step) * 1e6

    @property
    def median_cpu_us(self) -> float:
        """Median CPU time of this process per step, in µs: less disturbed by other jobs on the
        machine, but blind to waiting (fsync, sleeping)."""
        return statistics.median(self.cpu_seconds_per_step) * 1e6

    def ratio(self, reference: Case, cpu: bool = False) -> float:
        """Median over the rounds of this case's time over ``reference``'s in the same round.

        Runs of one round follow each other within seconds, so a change in the machine's load
        between rounds cancels out of each ratio.
        """
        mine = self.cpu_seconds_per_step if cpu else self.seconds_per_step
        theirs = reference.cpu_seconds_per_step if cpu else reference.seconds_per_step
        return statistics.median(a / b for a, b in zip(mine, theirs, strict=True))


@contextlib.contextmanager
def quiet(sink: NullTerminal) -> Iterator[None]:
    """Everything printed, warned or logged during a run goes to ``sink`` (or nowhere)."""
    # Logging handlers hold the stream they were created with, so they are switched off instead.
    logging.disable(logging.CRITICAL)
    try:
        with (
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def measure(cases: list[Case], repeats: int, sink: NullTerminal, warmup: int = 1) -> None:
    """Run every case ``warmup + repeats`` times, interleaved; keep the timed ones."""
    for round_ in range(warmup + repeats):
        for case in cases:
            with quiet(sink):
                run = case.prepare()
                gc.collect()
                started, cpu_started = time.perf_counter(), time.process_time()
                outcome = run()
                seconds = time.perf_counter() - started
                cpu_seconds = time.process_time() - cpu_started
            torch.set_num_threads(1)  # in case a peer changed it
            if round_ >= warmup:
                case.seconds_per_step.append(seconds / outcome.steps)
                case.cpu_seconds_per_step.append(cpu_seconds / outcome.steps)
                if outcome.epoch_seconds is not None:
                    outcome.outside_seconds = seconds - outcome.epoch_seconds
                case.outcomes.append(outcome)
        print(f"  round {round_ + 1}/{warmup + repeats} done", file=sys.stderr, flush=True)


def fresh_dir(root: Path, name: str) -> Path:
    folder = root / name
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def traincraft_outcome(trainer: Any, history: Any) -> Outcome:
    seconds = sum(row["seconds"] for row in history.epochs)
    return Outcome(trainer.state.step, history[-1]["val_loss"], epoch_seconds=seconds)


def traincraft_checkpoint_kwargs() -> dict[str, Any]:
    """CHECKPOINT-EACH-EPOCH HOOK. The trainer writes a full checkpoint at every epoch end when it
    has a run folder and takes a ``checkpoint`` argument (its default is on). Versions without
    that argument write only metrics.csv and the final weights; :func:`checkpointing` says which
    one was measured, and the result file records it."""
    from traincraft import Trainer

    if "checkpoint" in inspect.signature(Trainer).parameters:
        return {"checkpoint": True}
    return {}


def checkpointing() -> bool:
    return bool(traincraft_checkpoint_kwargs())


# ----------------------------------------------------------------------------- hand-written pieces


def split_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on matrices and kernels only; biases and norm scales (ndim <= 1) exempt."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]


def warmup_cosine(step: int, base: float, total: int, warmup: int, eta_min: float) -> float:
    """The LR of optimizer step ``step`` (from 0): linear warm-up, then cosine to ``eta_min``."""
    if step < warmup:
        # a straight line from 1% of the base LR up to it
        return base * (0.01 + 0.99 * step / warmup)
    # cosine from the base LR down to eta_min at the last step
    progress = (step - warmup) / max(1, total - warmup)
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * progress)) / 2


def batches_of(
    x: torch.Tensor, y: torch.Tensor, size: int, order: torch.Tensor | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Index slices of in-memory tensors, in ``order`` (None: as they are)."""
    for start in range(0, len(x), size):
        if order is None:
            yield x[start : start + size], y[start : start + size]
        else:
            index = order[start : start + size]
            yield x.index_select(0, index), y.index_select(0, index)


# ----------------------------------------------------------------------------- mlp workload


@dataclass
class MLPConfig:
    train_samples: int = 16384
    val_samples: int = 4096
    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3


def mlp_data(cfg: MLPConfig) -> tuple[torch.Tensor, ...]:
    """A smooth nonlinear target of 32 features plus noise (float32, seeded)."""
    g = torch.Generator().manual_seed(SEED)
    n = cfg.train_samples + cfg.val_samples
    x = torch.randn(n, 32, generator=g)
    w = torch.randn(32, 1, generator=g) / math.sqrt(32)
    y = torch.sin(2 * x @ w) + 0.1 * torch.randn(n, 1, generator=g)
    t = cfg.train_samples
    return x[:t].contiguous(), y[:t].contiguous(), x[t:].contiguous(), y[t:].contiguous()


def mlp_model() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 1))


def mlp_loaders(data: tuple[torch.Tensor, ...], cfg: MLPConfig) -> tuple[DataLoader, DataLoader]:
    x, y, xv, yv = data
    generator = torch.Generator().manual_seed(SEED)
    train = DataLoader(
        TensorDataset(x, y), batch_size=cfg.batch_size, shuffle=True, generator=generator
    )
    return train, DataLoader(TensorDataset(xv, yv), batch_size=cfg.batch_size)


def adam(model: nn.Module, lr: float, fused: bool = True) -> torch.optim.Optimizer:
    # traincraft picks fused Adam on the CPU; the reference loops use the same kernel, so that the
    # comparison measures the loop and not the optimizer.
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused or None)


def epoch_line(epoch: int, train_loss: float, val_loss: float) -> str:
    """The line a hand-written loop prints after each epoch."""
    return f"epoch {epoch + 1} train_loss {train_loss:.4f} val_loss {val_loss:.4f}"


def mlp_validate(model: nn.Module, batches: Any) -> float:
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64), 0
    with torch.inference_mode():
        for xb, yb in batches:
            total += nn.functional.mse_loss(model(xb), yb) * len(xb)
            count += len(xb)
    model.train()
    return float(total) / count


def hand_loader_case(
    data: tuple[torch.Tensor, ...], cfg: MLPConfig, fused: bool = True
) -> Callable[[], Callable[[], Outcome]]:
    def prepare() -> Callable[[], Outcome]:
        model, (train, val) = mlp_model(), mlp_loaders(data, cfg)
        optimizer, loss_fn = adam(model, cfg.lr, fused), nn.MSELoss()

        def run() -> Outcome:
            steps = 0
            for epoch in range(cfg.epochs):
                model.train()
                total = torch.zeros((), dtype=torch.float64)
                for xb, yb in train:
                    loss = loss_fn(model(xb), yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach() * len(xb)
                    steps += 1
                val_loss = mlp_validate(model, val)
                print(epoch_line(epoch, float(total) / cfg.train_samples, val_loss))
            return Outcome(steps, val_loss)

        return run

    return prepare


def hand_tensor_case(
    data: tuple[torch.Tensor, ...], cfg: MLPConfig
) -> Callable[[], Callable[[], Outcome]]:
    x, y, xv, yv = data

    def prepare() -> Callable[[], Outcome]:
        model = mlp_model()
        optimizer, loss_fn = adam(model, cfg.lr), nn.MSELoss()
        generator = torch.Generator().manual_seed(SEED)

        def run() -> Outcome:
            steps = 0
            for epoch in range(cfg.epochs):
                model.train()
                total = torch.zeros((), dtype=torch.float64)
                order = torch.randperm(len(x), generator=generator)
                for xb, yb in batches_of(x, y, cfg.batch_size, order):
                    loss = loss_fn(model(xb), yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += loss.detach() * len(xb)
                    steps += 1
                val_loss = mlp_validate(model, batches_of(xv, yv, cfg.batch_size, None))
                print(epoch_line(epoch, float(total) / cfg.train_samples, val_loss))
            return Outcome(steps, val_loss)

        return run

    return prepare


def traincraft_mlp_case(
    data: tuple[torch.Tensor, ...], cfg: MLPConfig, root: Path, loader: bool
) -> Callable[[], Callable[[], Outcome]]:
    from traincraft import EarlyStopping, Trainer

    def prepare() -> Callable[[], Outcome]:
        trainer = Trainer(
            mlp_model(),
            loss="mse",
            optimizer="adam",
            lr=cfg.lr,
            metrics=["mae"],
            max_epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            # patience = epochs: every run trains all epochs, so that all cases do equal work
            callbacks=[EarlyStopping(patience=cfg.epochs)],
            seed=SEED,
            device="cpu",
            run_dir=fresh_dir(root, f"tc-{'loader' if loader else 'tensors'}"),
            **traincraft_checkpoint_kwargs(),
        )
        if loader:
            train, val = mlp_loaders(data, cfg)
        else:
            train, val = (data[0], data[1]), (data[2], data[3])

        def run() -> Outcome:
            history = trainer.fit(train, val=val)
            return traincraft_outcome(trainer, history)

        return run

    return prepare


def lightning_case(
    data: tuple[torch.Tensor, ...], cfg: MLPConfig, root: Path
) -> Callable[[], Callable[[], Outcome]]:
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping

    class Regressor(L.LightningModule):
        def __init__(self, model: nn.Module):
            super().__init__()
            self.model = model

        def training_step(self, batch: Any, index: int) -> torch.Tensor:
            x, y = batch
            loss = nn.functional.mse_loss(self.model(x), y)
            self.log("train_loss", loss, on_epoch=True, prog_bar=True)
            return loss

        def validation_step(self, batch: Any, index: int) -> None:
            x, y = batch
            pred = self.model(x)
            self.log("val_loss", nn.functional.mse_loss(pred, y), prog_bar=True)
            self.log("val_mae", nn.functional.l1_loss(pred, y))

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return adam(self.model, cfg.lr)

    def prepare() -> Callable[[], Outcome]:
        module = Regressor(mlp_model())
        train, val = mlp_loaders(data, cfg)
        # Lightning's defaults: progress bar, a logger (CSV without tensorboard), a checkpoint
        # each epoch, the model summary and two sanity-check validation batches.
        trainer = L.Trainer(
            max_epochs=cfg.epochs,
            accelerator="cpu",
            devices=1,
            default_root_dir=fresh_dir(root, "lightning"),
            callbacks=[EarlyStopping(monitor="val_loss", patience=cfg.epochs)],
        )

        def run() -> Outcome:
            trainer.fit(module, train, val)
            return Outcome(trainer.global_step, float(trainer.callback_metrics["val_loss"]))

        return run

    return prepare


def accelerate_case(
    data: tuple[torch.Tensor, ...], cfg: MLPConfig
) -> Callable[[], Callable[[], Outcome]]:
    from accelerate import Accelerator

    def prepare() -> Callable[[], Outcome]:
        accelerator = Accelerator(cpu=True)
        model = mlp_model()
        train, val = mlp_loaders(data, cfg)
        model, optimizer, train, val = accelerator.prepare(model, adam(model, cfg.lr), train, val)

        def run() -> Outcome:
            steps = 0
            for epoch in range(cfg.epochs):
                model.train()
                total = torch.zeros((), dtype=torch.float64)
                for xb, yb in train:
                    loss = nn.functional.mse_loss(model(xb), yb)
                    optimizer.zero_grad(set_to_none=True)
                    accelerator.backward(loss)
                    optimizer.step()
                    total += loss.detach() * len(xb)
                    steps += 1
                val_loss = mlp_validate(model, val)
                accelerator.print(epoch_line(epoch, float(total) / cfg.train_samples, val_loss))
            return Outcome(steps, val_loss)

        return run

    return prepare


def keras_case(
    data: tuple[torch.Tensor, ...], cfg: MLPConfig, root: Path
) -> Callable[[], Callable[[], Outcome]]:
    import keras

    x, y, xv, yv = (t.numpy() for t in data)

    def prepare() -> Callable[[], Outcome]:
        keras.utils.set_random_seed(SEED)
        model = keras.Sequential(
            [keras.Input((32,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)]
        )
        model.compile(optimizer=keras.optimizers.Adam(cfg.lr), loss="mse", metrics=["mae"])
        folder = fresh_dir(root, "keras")
        folder.mkdir(parents=True)
        callbacks = [
            keras.callbacks.EarlyStopping(patience=cfg.epochs, restore_best_weights=True),
            keras.callbacks.ModelCheckpoint(
                str(folder / "last.weights.h5"), save_weights_only=True
            ),
            keras.callbacks.CSVLogger(str(folder / "metrics.csv")),
        ]

        def run() -> Outcome:
            history = model.fit(
                x,
                y,
                batch_size=cfg.batch_size,
                epochs=cfg.epochs,
                validation_data=(xv, yv),
                callbacks=callbacks,
                verbose=1,
            )
            epochs = len(history.history["loss"])
            return Outcome(
                epochs * math.ceil(len(x) / cfg.batch_size), history.history["val_loss"][-1]
            )

        return run

    return prepare


def peer_available(module: str) -> str | None:
    """None when ``module`` can be used here, else why not."""
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed"
    if module == "keras":
        os.environ.setdefault("KERAS_BACKEND", "torch")
        if os.environ["KERAS_BACKEND"] != "torch":
            return f"KERAS_BACKEND is {os.environ['KERAS_BACKEND']!r}, not 'torch'"
    return None


def mlp_cases(cfg: MLPConfig, root: Path) -> list[Case]:
    data = mlp_data(cfg)
    cases = [
        Case("hand-written DataLoader loop", hand_loader_case(data, cfg), "fused Adam"),
        Case("hand-written tensor loop", hand_tensor_case(data, cfg), "index slicing, fused Adam"),
        Case(
            "traincraft, DataLoader",
            traincraft_mlp_case(data, cfg, root, loader=True),
            f"defaults on; {run_folder_note()}",
        ),
        Case(
            "traincraft, tensors",
            traincraft_mlp_case(data, cfg, root, loader=False),
            f"defaults on; {run_folder_note()}",
        ),
        Case(
            "hand-written DataLoader loop, torch's default Adam",
            hand_loader_case(data, cfg, fused=False),
            "what the tutorials write",
        ),
    ]
    peers = {
        "lightning": (
            "Lightning",
            lambda: lightning_case(data, cfg, root),
            "its defaults + EarlyStopping",
        ),
        "accelerate": (
            "Accelerate",
            lambda: accelerate_case(data, cfg),
            "DataLoader loop via Accelerator",
        ),
        "keras": (
            "Keras (torch backend)",
            lambda: keras_case(data, cfg, root),
            "arrays; EarlyStopping, ModelCheckpoint, CSVLogger",
        ),
    }
    for module, (name, build, note) in peers.items():
        reason = peer_available(module)
        if reason is None:
            try:
                cases.append(Case(name, build(), note))
                continue
            except Exception as err:  # noqa: BLE001 - a broken peer install is skipped, not fatal
                reason = f"{type(err).__name__}: {err}"
        print(f"skipping {name}: {reason}", file=sys.stderr)
        SKIPPED.append(f"{name}: {reason}")
    return cases


SKIPPED: list[str] = []


# ----------------------------------------------------------------------------- recipe workloads


@dataclass
class RecipeWork:
    """A recipe and what the hand-written loop needs to know to do the same work."""

    template: str
    epochs: int
    loss: nn.Module
    metrics: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]]  # per-batch sums
    optimizer: str  # "adam" or "adamw"
    schedule: dict[str, Any] | None


def classification_sums(pred: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
    return [(pred.argmax(1) == target).sum()]


def regression_sums(pred: torch.Tensor, target: torch.Tensor) -> list[torch.Tensor]:
    diff = pred.double() - target.double()
    return [diff.abs().sum(), diff.square().sum()]


WORKLOADS = {
    "cnn": RecipeWork(
        "quickstart",
        8,
        nn.CrossEntropyLoss(label_smoothing=0.1),
        classification_sums,
        "adamw",
        {"warmup": 0.05, "eta_min": 1e-5},
    ),
    "lstm": RecipeWork("sunspots", 30, nn.SmoothL1Loss(), regression_sums, "adam", None),
}


def recipe_for(work: RecipeWork) -> Any:
    import traincraft as tc

    # Every run trains all epochs (patience = epochs), on the CPU, so that all cases do equal work.
    return tc.load_recipe(
        work.template,
        overrides=[
            f"train.max_epochs={work.epochs}",
            f"early_stopping.patience={work.epochs}",
            "train.device=cpu",
        ],
    )


def hand_recipe_case(work: RecipeWork) -> Callable[[], Callable[[], Outcome]]:
    from traincraft.run import build_model, data_info, prepare_data
    from traincraft.seeding import seed_everything

    recipe = recipe_for(work)
    data = prepare_data(recipe)
    info = data_info(data)

    def prepare() -> Callable[[], Outcome]:
        seed_everything(recipe.seed)  # the same initial weights as Trainer.from_recipe
        return HandLoop(work, recipe, build_model(recipe, info), data).run

    return prepare


class HandLoop:
    """What a careful engineer writes by hand for a recipe: the trainer's work, nothing more."""

    def __init__(self, work: RecipeWork, recipe: Any, model: nn.Module, data: Any):
        self.work, self.model = work, model
        (self.x, self.y), (self.xv, self.yv) = data.train, data.val
        o = recipe.optimizer
        optimizer_class = torch.optim.AdamW if work.optimizer == "adamw" else torch.optim.Adam
        self.optimizer = optimizer_class(split_groups(model, o.weight_decay), lr=o.lr, fused=True)
        self.base_lr = o.lr
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.clip = recipe.train.clip_grad_norm
        self.min_delta = recipe.early_stopping.min_delta
        self.batch_size = recipe.data.batch_size
        self.total_steps = work.epochs * math.ceil(len(self.x) / self.batch_size)
        self.generator = torch.Generator().manual_seed(recipe.seed)
        self.step = 0

    def set_lr(self) -> None:
        if self.work.schedule is None:
            return
        warmup = round(self.work.schedule["warmup"] * self.total_steps)
        lr = warmup_cosine(
            self.step, self.base_lr, self.total_steps, warmup, self.work.schedule["eta_min"]
        )
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_step(self, loss: torch.Tensor) -> None:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.set_lr()

    def epoch_figures(self, batches: Any, train: bool) -> list[float]:
        """Loss and metric sums over the epoch's samples, on the device; read once at the end."""
        sums: list[torch.Tensor] = []
        count = 0
        for xb, yb in batches:
            pred = self.model(xb)
            loss = self.work.loss(pred, yb)
            if train:
                self.train_step(loss)
            parts = [loss.detach() * len(xb), *self.work.metrics(pred.detach(), yb)]
            if not sums:
                sums = [torch.zeros((), dtype=torch.float64) for _ in parts]
            for total, part in zip(sums, parts, strict=True):
                total += part
            count += len(xb)
        return [float(s) / count for s in sums]

    def run(self) -> Outcome:
        best, snapshot = math.inf, None
        self.set_lr()
        for epoch in range(self.work.epochs):
            self.model.train()
            order = torch.randperm(len(self.x), generator=self.generator)
            train = self.epoch_figures(
                batches_of(self.x, self.y, self.batch_size, order), train=True
            )
            self.model.eval()
            with torch.inference_mode():
                val = self.epoch_figures(
                    batches_of(self.xv, self.yv, self.batch_size, None), train=False
                )
            if val[0] < best - self.min_delta:  # early stopping's improvement test
                best = val[0]
                snapshot = {
                    k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()
                }
            print(f"epoch {epoch + 1} train {train} val {val}")
        if snapshot is not None:
            self.model.load_state_dict(snapshot)  # what restore_best does at the end
        return Outcome(self.step, val[0])


def traincraft_recipe_case(
    work: RecipeWork, root: Path | None
) -> Callable[[], Callable[[], Outcome]]:
    from traincraft import Trainer

    recipe = recipe_for(work)

    def prepare() -> Callable[[], Outcome]:
        run_dir = fresh_dir(root, f"tc-{work.template}") if root is not None else None
        trainer = Trainer.from_recipe(recipe, run_dir=run_dir, progress=True)

        def run() -> Outcome:
            history = trainer.fit()
            return traincraft_outcome(trainer, history)

        return run

    return prepare


def recipe_cases(key: str, root: Path) -> list[Case]:
    work = WORKLOADS[key]
    return [
        Case(
            "hand-written loop, same work",
            hand_recipe_case(work),
            "tensor slicing, fused optimizer",
        ),
        Case(
            "traincraft",
            traincraft_recipe_case(work, None),
            "from_recipe, progress on, no run folder",
        ),
        Case("traincraft, run folder", traincraft_recipe_case(work, root), run_folder_note(recipe=True)),
    ]


def run_folder_note(recipe: bool = False) -> str:
    """What traincraft's run folder holds in the version measured (``from_recipe`` also writes
    the report and evaluates the test split with the best weights)."""
    from traincraft import Trainer

    parts = ["metrics.csv", "a checkpoint each epoch" if checkpointing() else "", "best weights"]
    report = inspect.signature(Trainer).parameters.get("report")
    if recipe or (report is not None and report.default is True):  # off by default in Python
        parts.append("plots and report.html at the end")
    if recipe:
        parts.append("the test split evaluated")
    return "+ run folder: " + ", ".join(p for p in parts if p)


# ----------------------------------------------------------------------------- report


def budget_cell(key: str, case: Case, by_name: dict[str, Case]) -> str:
    if (key, case.name) not in BUDGETS:
        return ""
    reference, limit = BUDGETS[(key, case.name)]
    wall, cpu = case.ratio(by_name[reference]), case.ratio(by_name[reference], cpu=True)
    verdict = "ok" if wall <= limit else "OVER"
    return f"≤ {limit:.2f} × {reference}: {wall:.3f} wall, {cpu:.3f} CPU: **{verdict}**"


def outside_cell(case: Case) -> str:
    """Median ms per fit spent outside the epochs' training and validation (traincraft only)."""
    outside = [o.outside_seconds for o in case.outcomes if o.outside_seconds is not None]
    return f"{statistics.median(outside) * 1e3:.0f}" if outside else ""


def table(key: str, cases: list[Case]) -> list[str]:
    by_name = {c.name: c for c in cases}
    first = cases[0]
    lines = [
        f"| {key} | µs/step wall | µs/step CPU | × first, wall | × first, CPU | budget | steps "
        "| ms/fit outside train+val | val_loss | notes |",
        "|---|---:|---:|---:|---:|---|---:|---:|---:|---|",
    ]
    for case in cases:
        val = statistics.median(o.val_loss for o in case.outcomes)
        lines.append(
            f"| {case.name} | {case.median_us:.0f} | {case.median_cpu_us:.0f} "
            f"| {case.ratio(first):.2f} | {case.ratio(first, cpu=True):.2f} "
            f"| {budget_cell(key, case, by_name)} | {case.outcomes[0].steps} "
            f"| {outside_cell(case)} | {val:.4f} | {case.note} |"
        )
    return lines


def header(args: argparse.Namespace, cfg: MLPConfig) -> list[str]:
    sink = (
        "a null stream that claims to be a terminal (bars render)"
        if args.progress == "tty"
        else "a plain null stream"
    )
    mlp = (
        f"mlp: {cfg.train_samples} train / {cfg.val_samples} val samples, batch {cfg.batch_size}, "
        f"{cfg.epochs} epochs ({cfg.train_samples // cfg.batch_size} steps per epoch)"
    )
    recipes = "; ".join(f"{k}: {w.template}, {w.epochs} epochs" for k, w in WORKLOADS.items())
    return [
        "# traincraft overhead per optimizer step",
        "",
        f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs, 1 thread; {args.repeats} interleaved repeats after 1 warm-up, "
        "medians.",
        f"Progress output to {sink}. traincraft checkpoint each epoch: "
        f"{'yes' if checkpointing() else 'no (not in this version)'}.",
        f"{mlp}. {recipes}.",
        "",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--only", nargs="+", choices=["mlp", "cnn", "lstm"], default=["mlp", "cnn", "lstm"]
    )
    parser.add_argument("--progress", choices=["tty", "plain"], default="tty")
    parser.add_argument("--train-samples", type=int, default=MLPConfig.train_samples)
    parser.add_argument("--epochs", type=int, default=MLPConfig.epochs)
    parser.add_argument("--output", type=Path, default=RESULTS / "overhead.md")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = MLPConfig(train_samples=args.train_samples, epochs=args.epochs)
    sink = NullTerminal(tty=args.progress == "tty")
    lines = header(args, cfg)
    with tempfile.TemporaryDirectory(prefix="traincraft-bench-") as tmp:
        root = Path(tmp)
        for key in args.only:
            print(f"{key}:", file=sys.stderr, flush=True)
            cases = mlp_cases(cfg, root) if key == "mlp" else recipe_cases(key, root)
            measure(cases, args.repeats, sink)
            lines += [*table(key, cases), ""]
            print("\n".join(table(key, cases)) + "\n", flush=True)
    if SKIPPED:
        lines += ["Skipped: " + "; ".join(SKIPPED), ""]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append(f"Peak resident memory of the whole benchmark process: {peak:.0f} MiB.")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
