"""How a batch becomes a loss: dict batches (Hugging Face's ``{"input_ids", ..., "labels"}``),
models that return a dict or an object with ``logits`` and ``loss``, the model's own loss
(``loss=None``), and ``Trainer.compute_loss`` as the one override point. Each checked against a
hand-written loop doing the same arithmetic."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

import traincraft as tc

N, D, C = 40, 5, 3


def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, D, generator=g)
    mask = (torch.rand(N, D, generator=g) > 0.2).float()
    y = (x * mask).sum(1).gt(0).long() + (x[:, 0] > 1).long()
    return x, mask, y


class HFStyle(nn.Module):
    """A model in Hugging Face's manner: keyword inputs, the labels optional, a dict out."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(D, C)

    def forward(self, input_ids, attention_mask, labels=None):
        logits = self.linear(input_ids * attention_mask)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


@dataclass
class Output:
    logits: torch.Tensor
    loss: torch.Tensor | None = None


class ObjectOut(HFStyle):
    """The same, returning an object with attributes (as transformers' ModelOutput has)."""

    def forward(self, input_ids, attention_mask, labels=None):
        out = super().forward(input_ids, attention_mask, labels)
        return Output(out["logits"], out.get("loss"))


class Dicts(Dataset):
    def __init__(self) -> None:
        self.x, self.mask, self.y = data()

    def __len__(self) -> int:
        return N

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "attention_mask": self.mask[i], "labels": self.y[i]}


def hand_written(batch_size: int, epochs: int) -> tuple[nn.Module, list[float]]:
    """SGD over the data in order, the loss the model returns; the epoch's sample-weighted mean."""
    torch.manual_seed(0)
    model = HFStyle()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, mask, y = data()
    means = []
    for _ in range(epochs):
        total = 0.0
        for start in range(0, N, batch_size):
            sl = slice(start, start + batch_size)
            loss = model(x[sl], mask[sl], labels=y[sl])["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(y[sl])
        means.append(total / N)
    return model, means


def trainer(model_class=HFStyle, **kwargs) -> tc.Trainer:
    torch.manual_seed(0)
    kwargs = {"loss": None, "optimizer": "sgd", "lr": 0.1, "batch_size": 16, "max_epochs": 3,
              "data": {"shuffle": False}, "progress": False, "seed": 0, **kwargs}
    return tc.Trainer(model_class(), **kwargs)


@pytest.mark.parametrize("source", ["dataset", "dataloader", "tensors", "object output"])
def test_a_model_that_returns_its_loss_trains_as_the_hand_written_loop(source):
    expected_model, expected_means = hand_written(batch_size=16, epochs=3)
    x, mask, y = data()
    given = {
        "dataset": lambda: Dicts(),
        "dataloader": lambda: DataLoader(Dicts(), batch_size=16, shuffle=False),
        "tensors": lambda: {"input_ids": x, "attention_mask": mask, "labels": y},
        "object output": lambda: Dicts(),
    }[source]()
    fit = trainer(ObjectOut if source == "object output" else HFStyle, metrics=["accuracy"])
    history = fit.fit(given)
    for ours, theirs in zip(fit.model.state_dict().values(), expected_model.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    assert [row["train_loss"] for row in history.epochs] == pytest.approx(expected_means, rel=1e-6)
    # The metrics compare the logits with the labels, exactly over the samples.
    with torch.no_grad():
        correct = (expected_model(x, mask)["logits"].argmax(1) == y).float().mean().item()
    assert fit.evaluate(given)["accuracy"] == pytest.approx(correct, abs=1e-7)


def test_a_given_loss_uses_the_logits_and_the_model_gets_no_labels_it_does_not_take():
    class NoLabels(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(D, C)

        def forward(self, input_ids, attention_mask):  # no labels: they are not passed
            return {"logits": self.linear(input_ids * attention_mask)}

    fit = trainer(NoLabels, loss="cross_entropy")
    fit.fit(Dicts())
    expected_model, _ = hand_written(batch_size=16, epochs=3)
    for ours, theirs in zip(fit.model.state_dict().values(), expected_model.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)


def test_another_target_key():
    x, mask, y = data()
    fit = trainer(loss="cross_entropy", data={"shuffle": False, "target_key": "label"})
    fit.fit({"input_ids": x, "attention_mask": mask, "label": y})
    expected_model, _ = hand_written(batch_size=16, epochs=3)
    torch.testing.assert_close(fit.model.linear.weight, expected_model.linear.weight, rtol=0, atol=1e-6)


def test_compute_loss_is_the_one_override_point_for_training_and_evaluation():
    """A two-output model with a target per output: the subclass says how they combine."""

    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Linear(D, 8)
            self.classes, self.value = nn.Linear(8, C), nn.Linear(8, 1)

        def forward(self, x):
            h = torch.relu(self.body(x))
            return self.classes(h), self.value(h).squeeze(1)

    class Trainer(tc.Trainer):
        def compute_loss(self, inputs, target):
            class_logits, value = self.forward(inputs)
            loss = F.cross_entropy(class_logits, target["label"]) + 0.5 * F.mse_loss(value, target["value"])
            return loss, class_logits, target["label"]

    x, _, y = data()
    value = x.sum(1)
    torch.manual_seed(0)
    fit = Trainer(TwoHeads(), optimizer="sgd", lr=0.1, batch_size=8, max_epochs=2, metrics=["accuracy"],
                  data={"shuffle": False}, progress=False, seed=0)
    history = fit.fit((x, {"label": y, "value": value}), val=(x, {"label": y, "value": value}))
    torch.manual_seed(0)
    model = TwoHeads()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        for start in range(0, N, 8):
            sl = slice(start, start + 8)
            logits, v = model(x[sl])
            loss = F.cross_entropy(logits, y[sl]) + 0.5 * F.mse_loss(v, value[sl])
            opt.zero_grad()
            loss.backward()
            opt.step()
    for ours, theirs in zip(fit.model.state_dict().values(), model.state_dict().values()):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
    with torch.no_grad():
        logits, v = model(x)
        val_loss = (F.cross_entropy(logits, y) + 0.5 * F.mse_loss(v, value)).item()
        accuracy = (logits.argmax(1) == y).float().mean().item()
    # Validation went through compute_loss too: every batch holds 8 samples, so the
    # sample-weighted mean equals the loss over the whole set.
    assert history.epochs[-1]["val_loss"] == pytest.approx(val_loss, rel=1e-5)
    assert history.epochs[-1]["val_accuracy"] == pytest.approx(accuracy, abs=1e-7)


def test_loss_none_with_a_model_that_returns_no_loss_is_one_line():
    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(D, C)

        def forward(self, input_ids, attention_mask):
            return self.linear(input_ids)

    with pytest.raises(tc.TraincraftError) as caught:
        trainer(Plain).fit(Dicts())
    assert str(caught.value) == (
        "loss=None trains on the loss the model returns, but it returned no loss (output "
        "float32[16, 3]): return a scalar under 'loss' (a dict, or an object with .loss; for a Hugging "
        "Face model, pass the labels), or give the trainer a loss"
    )


def test_a_dict_of_tensors_without_its_target_is_one_line():
    x, mask, _ = data()
    with pytest.raises(tc.TraincraftError) as caught:
        trainer(loss="cross_entropy").fit({"input_ids": x, "attention_mask": mask})
    assert str(caught.value) == (
        "train: a dict of tensors holds its target under 'labels', and this one has only "
        "'input_ids', 'attention_mask'; name the target's key with data={'target_key': ...}"
    )


class InWorkers(Dicts):
    """Refuses to load in the main process: the trainer must use worker processes."""

    def __getitem__(self, i):
        assert torch.utils.data.get_worker_info() is not None, "loaded in the main process"
        return super().__getitem__(i)


def test_a_dataset_given_in_python_loads_in_workers_in_the_same_order():
    in_workers = trainer(data={"shuffle": True, "num_workers": 2})
    in_workers.fit(InWorkers())
    shuffled_in_main = trainer(data={"shuffle": True})
    shuffled_in_main.fit(Dicts())
    for a, b in zip(in_workers.model.state_dict().values(), shuffled_in_main.model.state_dict().values()):
        assert torch.equal(a, b)  # the trainer's seeded order, whoever loads the samples
