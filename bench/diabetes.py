"""The diabetes example against the baselines it names: test MSE, median over seeds.

    python bench/diabetes.py [--seeds 0 1 2 3 4] [--set key=value ...]

For each seed the recipe (examples/diabetes.yaml, ``seed=<seed>``) is split by traincraft's own
``prepare_data``, so every model below is scored on the same test rows as the recipe:

- traincraft: the recipe, trained as ``traincraft fit`` trains it;
- linear regression (scikit-learn), fitted on the training rows, and on training + validation;
- RidgeCV (scikit-learn, its own cross-validated alpha), on training + validation;
- a hand-written MLP: 10-64-1 ReLU, Adam at 1e-3, batches of 32, MSE on the standardised target,
  early stopping on the validation rows (patience 30, best weights restored), at most 500
  epochs.

Then the split the figures quoted for this data set come from (scikit-learn's
``train_test_split(test_size=0.2, random_state=42)``: linear regression 2900.19), with the same
models (no validation rows there: the MLP keeps its weights after 200 epochs). Writes the tables
to bench/results/diabetes.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import numpy as np

RECIPE = Path(__file__).parents[1] / "examples" / "diabetes.yaml"
RESULTS = Path(__file__).parent / "results"


def mse(prediction, target) -> float:
    return float(np.mean((np.asarray(prediction).ravel() - np.asarray(target).ravel()) ** 2))


def hand_mlp(train, val, test, *, seed: int, max_epochs: int = 500, patience: int = 30) -> float:
    """The MLP a tutorial writes, with the care it should have: standardised target, early stopping
    on the validation rows with the best weights restored (with no ``val``, the last weights)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    x, y = (torch.as_tensor(np.asarray(a), dtype=torch.float32) for a in train)
    y = y.reshape(-1, 1)
    mean, std = y.mean(), y.std()
    model = nn.Sequential(nn.Linear(x.shape[1], 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def predict(inputs):
        with torch.no_grad():
            return model(torch.as_tensor(np.asarray(inputs), dtype=torch.float32)) * std + mean

    best, best_state, waited = float("inf"), None, 0
    for _ in range(max_epochs):
        model.train()
        for rows in torch.randperm(len(x)).split(32):
            loss = nn.functional.mse_loss(model(x[rows]), (y[rows] - mean) / std)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if val is None:
            continue
        model.eval()
        score = mse(predict(val[0]), val[1])
        if score < best:
            best, best_state, waited = score, copy.deepcopy(model.state_dict()), 0
        else:
            waited += 1
            if waited >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return mse(predict(test[0]), test[1])


def linear_models(train, val, test) -> dict[str, float]:
    from sklearn.linear_model import LinearRegression, RidgeCV

    x, y = (np.asarray(a) for a in train)
    scores = {"linear regression (train)": mse(LinearRegression().fit(x, y.ravel()).predict(test[0]), test[1])}
    if val is not None:
        x = np.concatenate([x, np.asarray(val[0])])
        y = np.concatenate([y, np.asarray(val[1])])
        scores["linear regression (train + val)"] = mse(
            LinearRegression().fit(x, y.ravel()).predict(test[0]), test[1]
        )
    ridge = RidgeCV(alphas=np.logspace(-3, 3, 61)).fit(x, y.ravel())
    scores["RidgeCV (train + val)" if val is not None else "RidgeCV (train)"] = mse(ridge.predict(test[0]), test[1])
    return scores


def recipe_split(seed: int, overrides: list[str]) -> dict[str, float]:
    """Every model on the recipe's own split for ``seed``."""
    import torch

    import traincraft as tc
    from traincraft.run import prepare_data

    recipe = tc.load_recipe(RECIPE, overrides=[f"seed={seed}", *overrides])
    data = prepare_data(recipe)
    parts = [tuple(t.numpy() for t in part) for part in (data.train, data.val, data.test)]
    started = time.perf_counter()
    trainer = tc.Trainer.from_recipe(recipe, progress=False)
    trainer.fit()
    seconds = time.perf_counter() - started
    # The trainer split the data again from the same seed: the same test rows.
    assert torch.equal(trainer.data.indices["test"], data.indices["test"])
    x_test, y_test = trainer.data.test
    return {
        "traincraft (examples/diabetes.yaml)": mse(trainer.predict(x_test).numpy(), y_test.numpy()),
        **linear_models(*parts),
        "hand-written MLP": hand_mlp(*parts, seed=seed),
        "_seconds": seconds,
        "_sizes": tuple(len(part[1]) for part in parts),
    }


def reference_split(seed: int, overrides: list[str]) -> dict[str, float]:
    """The models on scikit-learn's ``train_test_split(test_size=0.2, random_state=42)``, where
    the quoted figures come from; traincraft trains the recipe's model and settings through its
    Python API on those rows (inputs standardised on the training rows, as the recipe does)."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    import traincraft as tc
    from traincraft import models
    from traincraft.run import trainer_kwargs

    x, y = load_diabetes(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.2, random_state=42)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    y_train, y_test = y_train.reshape(-1, 1), y_test.reshape(-1, 1)
    recipe = tc.load_recipe(RECIPE, overrides=[f"seed={seed}", *overrides])
    model = models.build(
        {"name": recipe.model.name, **recipe.model.kwargs()}, input_shape=(x.shape[1],), output_size=1,
        target_stats=([float(y_train.mean())], [float(y_train.std())]),
    )
    trainer = tc.Trainer(model, **trainer_kwargs(recipe), progress=False)
    trainer.fit((x_train.astype(np.float32), y_train.astype(np.float32)))
    prediction = trainer.predict(x_test.astype(np.float32)).numpy()
    train, test = (x_train, y_train), (x_test, y_test)
    return {
        "traincraft (examples/diabetes.yaml)": mse(prediction, y_test),
        **linear_models(train, None, test),
        "hand-written MLP (200 epochs)": hand_mlp(train, None, test, seed=seed, max_epochs=200),
    }


def table(title: str, runs: dict[int, dict[str, float]]) -> list[str]:
    seeds = list(runs)
    names = [name for name in runs[seeds[0]] if not name.startswith("_")]
    lines = [
        f"| {title} | " + " | ".join(f"seed {s}" for s in seeds) + " | median |",
        "|---|" + "---:|" * (len(seeds) + 1),
    ]
    for name in names:
        scores = [runs[s][name] for s in seeds]
        lines.append(f"| {name} | " + " | ".join(f"{v:.0f}" for v in scores) + f" | {statistics.median(scores):.0f} |")
    return lines


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="recipe overrides")
    args = parser.parse_args()
    torch.set_num_threads(1)  # a small model: more threads only add contention
    own = {}
    for seed in args.seeds:
        own[seed] = recipe_split(seed, args.set)
        shown = ", ".join(f"{k} {v:.0f}" for k, v in own[seed].items() if not k.startswith("_"))
        print(f"seed {seed}: {shown} ({own[seed]['_seconds']:.1f} s)", flush=True)
    print("the same models on scikit-learn's split (random_state=42) ...", flush=True)
    reference = {seed: reference_split(seed, args.set) for seed in args.seeds}
    seconds = statistics.median(r["_seconds"] for r in own.values())
    train, val, test = own[args.seeds[0]]["_sizes"]
    lines = [
        "# Diabetes: the example against its baselines",
        "",
        f"Test MSE (lower is better), `python bench/diabetes.py{' --set ' + ' '.join(args.set) if args.set else ''}`.",
        "",
        "On the recipe's own split (`traincraft.run.prepare_data`, seed = the recipe's `seed`:",
        f"{train} training, {val} validation and {test} test rows):",
        "",
        *table("recipe split", own),
        "",
        f"The recipe trains in {seconds:.1f} s (median, one thread).",
        "",
        "On scikit-learn's `train_test_split(test_size=0.2, random_state=42)` (353 training, 89 test",
        "rows), where the figures usually quoted for this data set come from; the seed is the",
        "models' only:",
        "",
        *table("sklearn split 42", reference),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "diabetes.md").write_text(text)


if __name__ == "__main__":
    main()
