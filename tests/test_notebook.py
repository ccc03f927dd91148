"""A real Jupyter kernel (nbclient + ipykernel) runs a notebook that trains and plots: the bar is
tqdm's notebook widget (or, without ipywidgets, an HTML <progress> display), each epoch's line is
plain text, and ``history.plot()`` and the schedule plot are pictures in a fresh kernel."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (test extra: notebook-test)")
nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (test extra: notebook-test)")
pytest.importorskip("ipykernel", reason="ipykernel is not installed (test extra: notebook-test)")

SRC = Path(__file__).parents[1] / "src"
PNG = b"\x89PNG\r\n\x1a\n"
WIDGET = "application/vnd.jupyter.widget-view+json"

SETUP = f"""
import sys
sys.path.insert(0, {str(SRC)!r})
import torch
import traincraft as tc

def train(epochs=2):
    torch.manual_seed(0)
    X = torch.randn(96, 4)
    y = (X[:, 0] > X[:, 1]).long()
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    trainer = tc.Trainer(model, loss="cross_entropy", metrics=["accuracy"], max_epochs=epochs,
                         batch_size=16, seed=0, device="cpu", callbacks=[tc.EarlyStopping(patience=5)])
    return trainer.fit((X[:64], y[:64]), val=(X[64:], y[64:]))
"""
WIDGET_FIT = "history = train()"
HTML_FIT = """
sys.modules["ipywidgets"] = None   # as if ipywidgets were not installed
again = train()
"""
HISTORY_PLOT = "history.plot()"
SCHEDULE_PLOT = 'tc.schedules.plot(tc.schedules.preview({"name": "cosine", "warmup": 2}, 4, 3), steps_per_epoch=4)'


class RecordingClient(nbclient.NotebookClient):
    """nbclient as it is, keeping every message the kernel sent (a display updated in place
    ends as its last state in the notebook)."""

    def process_message(self, msg, cell, cell_index):
        self.messages.append((cell_index, msg["msg_type"], msg["content"]))
        return super().process_message(msg, cell, cell_index)


@pytest.fixture(scope="module")
def executed():
    """The notebook, run once in a fresh kernel (bounded: 120 s per cell, 60 s to start)."""
    cells = [SETUP, WIDGET_FIT, HISTORY_PLOT, SCHEDULE_PLOT, HTML_FIT]
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])
    client = RecordingClient(notebook, timeout=120, startup_timeout=60, kernel_name="python3")
    client.messages = []
    try:
        with client.setup_kernel():
            for index, cell in enumerate(notebook.cells):
                client.execute_cell(cell, index)
    except nbclient.exceptions.CellExecutionError:
        raise
    except Exception as err:  # no kernel could start here: nothing to test
        pytest.skip(f"a Jupyter kernel could not start: {type(err).__name__}: {err}")
    notebook.messages = client.messages
    return notebook


def outputs(cell, kind):
    return [o for o in cell.outputs if o.output_type == kind]


def text(cell, name="stdout"):
    return "".join(o.text for o in outputs(cell, "stream") if o.name == name)


def test_the_bar_is_tqdm_notebook_widget_and_each_epoch_a_plain_line(executed):
    cell = executed.cells[1]
    widgets = [o for o in outputs(cell, "display_data") if WIDGET in o.data]
    assert len(widgets) == 2  # one bar per epoch
    said = text(cell).splitlines()
    assert said[0].startswith("Training on cpu: 58 trainable parameters")
    lines = said[1:]
    assert [line.split("  ")[0].rsplit(" ", 1)[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]  # then its time
    assert all(line.split("  ")[1].startswith("val_loss ") and "val_accuracy" in line for line in lines)
    assert "\r" not in text(cell, "stderr")  # no terminal bar written as text


def test_without_ipywidgets_the_bar_is_an_html_progress_display(executed):
    cell = executed.cells[4]
    assert all(WIDGET not in o.data for o in outputs(cell, "display_data"))
    shown = [c["data"]["text/html"] for i, kind, c in executed.messages
             if i == 4 and kind in ("display_data", "update_display_data")]
    bars = [html for html in shown if "<progress" in html]
    assert bars and any('value="4" max="4"' in html for html in bars)  # it moved to the end
    assert [o.data["text/html"] for o in outputs(cell, "display_data")] == ["", ""]  # emptied at each epoch's end
    assert [line.split("  ")[0].rsplit(" ", 1)[0] for line in text(cell).splitlines()[1:]] == ["epoch 1/2", "epoch 2/2"]


@pytest.mark.parametrize("index", [2, 3], ids=["history.plot", "schedules.plot"])
def test_plots_are_pictures_in_a_fresh_kernel(executed, index):
    (result,) = outputs(executed.cells[index], "execute_result")
    assert base64.b64decode(result.data["image/png"]).startswith(PNG)
