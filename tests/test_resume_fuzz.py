"""Kill-and-resume fuzz, the small fixed version: interrupt a real training process at fixed
steps (SIGKILL after step K, SIGINT, SIGTERM, a SIGKILL during the resume itself), resume it,
and compare everything it leaves (final weights, full trainer state, history, metrics.csv, best
weights) bitwise with an uninterrupted run of the same configuration.

The worker is tests/fuzz_worker.py; the comparison and the process driving are in
tests/fuzz_compare.py. The long random version is bench/resume_fuzz.py.

Every worker process starts Python, torch and traincraft (about 3-4 s, mostly torch's own
imports), so the module-scoped fixture runs the selected cases' processes two at a time in the
background, the references first; each test waits for its own case.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
from fuzz_compare import Interrupt, Outcome, compare_runs, run_reference, run_scenario

PAUSE = 0.04  # seconds before each optimizer step in the signal cases: ~1.2 s of training

# case id -> (config, interruptions in turn; after the last one the run is resumed to its end).
# The kills after step K flush the files already queued first: the checkpoint a resume finds does
# not depend on the writer thread's progress (the bench also kills without that).
# Steps per epoch are 6 in every configuration used here (see fuzz_worker.build).
CASES: dict[str, tuple[str, list[Interrupt]]] = {
    # epoch checkpoints: mid-epoch 2 (back to the end of epoch 1); just after epoch 2's checkpoint
    "tensors-die8": ("tensors", [Interrupt("die", flush=True, step=8)]),
    "tensors-die13": ("tensors", [Interrupt("die", flush=True, step=13)]),
    # every 3 steps: step 12 is epoch 2's last (a checkpoint before its validation); the
    # mid-epoch kill of this configuration (step 7) is the first of the last case
    "tensors-steps-die12": ("tensors-steps", [Interrupt("die", flush=True, step=12)]),
    "dataset-die12": ("dataset", [Interrupt("die", flush=True, step=12)]),
    "loader-die10": ("loader", [Interrupt("die", flush=True, step=10)]),  # resumes mid-epoch (checkpoint 8)
    "ema-die11": ("ema", [Interrupt("die", flush=True, step=11)]),
    "swa-die20": ("swa", [Interrupt("die", flush=True, step=20)]),  # averaging began at step 15
    "tensors-sigint": ("tensors", [Interrupt("sigint", trigger="checkpoint", pause=PAUSE)]),
    "dataset-sigint": ("dataset", [Interrupt("sigint", trigger="checkpoint", pause=PAUSE)]),
    "ema-sigterm": ("ema", [Interrupt("sigterm", trigger="checkpoint", pause=PAUSE)]),
    # killed after step 7, the resume killed after step 17, resumed again
    "tensors-steps-die7-resume-die17": (
        "tensors-steps", [Interrupt("die", flush=True, step=7), Interrupt("die", flush=True, step=17)]
    ),
}
TIMEOUT = 300  # seconds a test waits for its case (its processes have 120 s each)


class Fuzz:
    """The references and cases, run in the background two processes at a time."""

    def __init__(self, base: Path, cases: list[str]):
        self.base = base
        self.pool = ThreadPoolExecutor(max_workers=2)
        configs = sorted({CASES[case][0] for case in cases})
        self.refs: dict[str, Future] = {
            config: self.pool.submit(run_reference, config, base / f"ref-{config}") for config in configs
        }
        self.cases: dict[str, Future] = {
            case: self.pool.submit(run_scenario, CASES[case][0], base / case, CASES[case][1], None)
            for case in cases
        }

    def reference(self, config: str) -> tuple[Path, Outcome]:
        return self.base / f"ref-{config}", self.refs[config].result(timeout=TIMEOUT)

    def case(self, case: str) -> tuple[Path, Outcome]:
        return self.base / case, self.cases[case].result(timeout=TIMEOUT)


@pytest.fixture(scope="module")
def fuzz(request, tmp_path_factory):
    # Only the cases this session selected (pytest -k ...) are run.
    selected = [
        item.callspec.params["case"] for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec") and "case" in item.callspec.params
    ]
    runner = Fuzz(tmp_path_factory.mktemp("resume-fuzz"), selected or list(CASES))
    yield runner
    runner.pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("case", list(CASES))
def test_an_interrupted_then_resumed_run_ends_bitwise_identical(fuzz, case):
    config, interrupts = CASES[case]
    ref_dir, ref = fuzz.reference(config)
    assert ref.identical, f"the reference run of {config} failed:\n{ref.log()}\n{ref.summary(5)}"
    run_dir, outcome = fuzz.case(case)
    log = outcome.log()
    assert not outcome.problems, "\n".join([log, *outcome.problems])
    assert not outcome.restarted, f"no checkpoint on disk to resume from:\n{log}"
    # every interruption happened (none came after the end), and each later run resumed
    assert len(outcome.attempts) == len(interrupts) + 1, log
    assert all("Resuming from" in a.stderr_tail for a in outcome.attempts[1:]), log
    differences = compare_runs(ref_dir, run_dir)
    assert differences == [], "\n".join([log, f"{len(differences)} differences:", *differences[:30]])
