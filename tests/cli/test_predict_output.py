"""What traincraft predict writes (traincraft.predictions): stdout for --output -, a row number or
the input's id on every row, and figures that read back as the model gave them."""

import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from traincraft.cli import main
from traincraft.predictions import predict_rows

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_recipes import fit  # noqa: E402

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    code, run_dir = fit(tmp_path_factory.mktemp("predict"))
    assert code == 0
    return run_dir


def write_inputs(path, run_dir, ids=None):
    names = json.loads((run_dir / "data.json").read_text())["feature_names"]
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*names, *(["id"] if ids else [])])
        for i, row in enumerate(ROWS):
            writer.writerow([*row, *([ids[i]] if ids else [])])
    return path


def expected_probabilities(run_dir):
    """The oracle: the run's model on the inputs scaled as data.json says, in float32."""
    import traincraft as tc
    from traincraft.datasets import Scaler

    info = json.loads((run_dir / "data.json").read_text())
    x = Scaler.from_dict(info["scaler"]).transform(torch.tensor(ROWS, dtype=torch.float32))
    with torch.no_grad():
        return tc.load_model(run_dir)(x).softmax(dim=1)


def test_predict_to_stdout_with_row_numbers_and_full_precision(run_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = write_inputs(tmp_path / "in.csv", run_dir)
    capsys.readouterr()
    assert main(["predict", str(run_dir), "--input", str(source), "--output", "-"]) == 0
    out, err = capsys.readouterr()
    assert not (tmp_path / "-").exists()
    assert err.strip() == "wrote 3 predictions to stdout"
    rows = list(csv.DictReader(io.StringIO(out)))
    names = json.loads((run_dir / "data.json").read_text())["class_names"]
    assert [r["row"] for r in rows] == ["0", "1", "2"]
    written = torch.tensor([[float(r[f"prob_{n}"]) for n in names] for r in rows], dtype=torch.float32)
    expected = expected_probabilities(run_dir)
    assert torch.equal(written, expected)  # 9 significant digits give float32 back exactly
    assert [r["prediction"] for r in rows] == [names[i] for i in expected.argmax(dim=1).tolist()]


def test_an_id_column_of_the_input_leads_the_output(run_dir, tmp_path, capsys):
    source = write_inputs(tmp_path / "in.csv", run_dir, ids=["x-17", "007", "a b"])
    out = tmp_path / "out.csv"
    assert main(["predict", str(run_dir), "--input", str(source), "--output", str(out)]) == 0
    rows = list(csv.reader(out.open()))
    assert rows[0][0] == "id" and [r[0] for r in rows[1:]] == ["x-17", "007", "a b"]  # as written


def test_arrays_get_row_numbers_and_the_same_figures_as_csv(run_dir, tmp_path):
    np.save(tmp_path / "x.npy", np.array(ROWS))  # float64: read as float32, as the CSV and training
    write_inputs(tmp_path / "in.csv", run_dir)
    for name in ("x.npy", "in.csv"):
        assert main(["predict", str(run_dir), "--input", str(tmp_path / name), "--output", str(tmp_path / f"{name}.out")]) == 0
    assert (tmp_path / "x.npy.out").read_text() == (tmp_path / "in.csv.out").read_text()


class Echo:
    """A trainer stand-in whose prediction is the last value of each window, as float32."""

    def predict(self, inputs):
        return inputs[:, -1, :].to(torch.float32) / 3


def test_a_forecast_row_is_the_last_input_row_of_its_window(tmp_path, capsys):
    info = {"task": "forecast", "input_shape": [3, 1], "feature_names": ["y"], "target_names": ["y"],
            "scaler": {"kind": "none"}}
    series = torch.arange(6, dtype=torch.float32).reshape(6, 1)
    assert predict_rows(Echo(), info, series, None) == 4
    assert capsys.readouterr().out == "row,y\n2,0.666666687\n3,1\n4,1.33333337\n5,1.66666663\n"
    assert predict_rows(Echo(), info, series, None, ids=list("abcdef")) == 4
    assert capsys.readouterr().out.splitlines()[:2] == ["id,y", "c,0.666666687"]
    # each figure reads back as the float32 the model gave (6 digits, 0.666667, would not)
    assert [np.float32(float(v)) for v in ("0.666666687", "1.33333337")] == [np.float32(2) / 3, np.float32(4) / 3]
    assert np.float32(float("0.666667")) != np.float32(2) / 3


def test_predict_output_mistakes(run_dir, tmp_path, capsys):
    source = write_inputs(tmp_path / "in.csv", run_dir)
    assert main(["predict", str(run_dir), "--input", str(source), "--output", str(tmp_path / "no" / "o.csv")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --output {tmp_path / 'no' / 'o.csv'}: the folder {tmp_path / 'no'} does not exist"
