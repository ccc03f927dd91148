"""Train a classifier on scikit-learn's breast-cancer data with the Python API alone.

    python examples/python_api.py [--max-epochs N]
"""

import argparse

import torch
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

import traincraft as tc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-epochs", type=int, default=100)
    args = parser.parse_args()

    X, y = load_breast_cancer(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, stratify=y, random_state=0)
    scaler = StandardScaler().fit(X_train)  # fitted on the training split only
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)

    torch.manual_seed(0)  # the model's initial weights
    model = torch.nn.Sequential(
        torch.nn.Linear(30, 32), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(32, 2)
    )
    trainer = tc.Trainer(
        model,
        loss="cross_entropy",
        optimizer={"name": "adamw", "weight_decay": 1e-4}, lr=1e-3,
        metrics=["accuracy", "f1_macro"],
        max_epochs=args.max_epochs, batch_size=32,
        data={"val_split": 0.15},             # seeded, carved from the training data
        callbacks=[tc.EarlyStopping(monitor="val_loss", patience=10, verbose=False)],
        seed=0,
    )
    history = trainer.fit((X_train, y_train))  # numpy arrays: float64 becomes float32
    print("best:", history.best, "stopped:", history.stop_reason)
    print("test:", trainer.evaluate((X_test, y_test)))
    probabilities = trainer.predict(X_test).softmax(dim=1)
    print("first test sample: P(benign) =", round(probabilities[0, 1].item(), 4))


if __name__ == "__main__":
    main()
