"""Kill-and-resume fuzz, the long version (run by hand; a measurement, never a failing build).

    python bench/resume_fuzz.py [--runs N] [--seed S] [--out bench/results/resume_fuzz.md]
                                [--jobs 2] [--configs tensors ema ...] [--kinds sigint ...] [--keep DIR]

Every configuration of tests/fuzz_worker.py is run once uninterrupted (the reference), then
``--runs`` times interrupted and resumed, spread over the configurations and these kinds of
interruption (the parameters drawn from ``--seed``):

  die             SIGKILL of itself right after optimizer step K (K over the whole run; half of
                  them first wait for the files already queued, half not)
  sigkill         SIGKILL from outside at a random time (with a pause before each step, so the
                  process is mid-training or mid-write)
  sigint          SIGINT at a random time: stops after the step, saves, exits 130
  sigterm         the same with SIGTERM
  double-sigint   two SIGINTs 20 ms apart: the second aborts at once; the run then resumes from
                  the newest checkpoint on disk
  kill-in-resume  killed after step K, then the resume is SIGKILLed at a random time, then resumed

After the last interruption the run is resumed to its end and compared bitwise with the reference
(tests/fuzz_compare.py: final weights, full trainer state, history, metrics.csv, best weights).
A resume that finds no checkpoint on disk starts afresh (counted as "restarted").

Prints and writes a markdown table (rows: configuration, columns: kind, cells: identical/total)
and the failing cases with their first differences. Exit code 0 always; the totals are printed.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from fuzz_compare import SRC, Interrupt, Outcome, compare_runs, run_reference, run_scenario  # noqa: E402
from fuzz_worker import CONFIGS  # noqa: E402

KINDS = ("die", "sigkill", "sigint", "sigterm", "double-sigint", "kill-in-resume")
PAUSES = (0.02, 0.04)  # seconds before each optimizer step in the runs killed by time


@dataclass
class Case:
    number: int
    config: str
    kind: str
    interrupts: list[Interrupt]
    outcome: Outcome | None = None
    seconds: float = 0.0

    def label(self) -> str:
        return " → ".join(i.label() for i in self.interrupts)


def run_shape(ref_dir: Path) -> tuple[int, int]:
    """(total optimizer steps, steps per epoch) of a finished reference run."""
    rows = json.loads((ref_dir / "history.json").read_text())["rows"]
    return int(rows[-1]["step"]), int(rows[0]["step"])


def draw_case(number: int, config: str, kind: str, total: int, rng: random.Random) -> Case:
    def timed(kind: str, steps_left: int) -> Interrupt:
        pause = rng.choice(PAUSES)
        # from fit() starting to about the last step (each step takes its pause and a few ms)
        delay = 0.0 if rng.random() < 0.1 else rng.uniform(0.0, steps_left * (pause + 0.003))
        return Interrupt(kind, trigger="started", delay=delay, pause=pause)

    if kind == "die":
        interrupts = [Interrupt("die", step=rng.randint(1, total - 1), flush=rng.random() < 0.5)]
    elif kind == "kill-in-resume":
        first = rng.randint(1, total - 2)
        interrupts = [Interrupt("die", step=first, flush=rng.random() < 0.5), timed("sigkill", total - first)]
    else:
        interrupts = [timed(kind, total)]
    return Case(number, config, kind, interrupts)


def draw_cases(runs: int, configs: list[str], kinds: list[str], totals: dict[str, int], seed: int) -> list[Case]:
    """``runs`` cases, cycling over every (configuration, kind) cell before any repeats."""
    rng = random.Random(seed)
    cells = [(config, kind) for kind in kinds for config in configs]
    order = list(range(len(cells)))
    cases = []
    for number in range(runs):
        if number % len(cells) == 0:
            rng.shuffle(order)
        config, kind = cells[order[number % len(cells)]]
        cases.append(draw_case(number, config, kind, totals[config], rng))
    return cases


def describe_source() -> str:
    """Which library ran: the commit and whether src/ had uncommitted changes."""
    if Path(SRC).resolve() != (ROOT / "src").resolve():
        return "the library named by TRAINCRAFT_SRC (not this checkout's src/)"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "library src/"
    changed = f", with uncommitted changes in {len(dirty.splitlines())} file(s) of src/" if dirty else ""
    return f"library src/ at commit {head}{changed}"


def table(cases: list[Case], configs: list[str], kinds: list[str]) -> list[str]:
    lines = ["| config | " + " | ".join(kinds) + " | all |", "|---|" + "---:|" * (len(kinds) + 1)]
    for config in configs:
        cells = []
        for kind in [*kinds, None]:
            done = [c for c in cases if c.config == config and (kind is None or c.kind == kind) and c.outcome]
            same = sum(c.outcome.identical for c in done)
            cells.append(f"{same}/{len(done)}" if done else "–")
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    cells = []
    for kind in [*kinds, None]:
        done = [c for c in cases if (kind is None or c.kind == kind) and c.outcome]
        cells.append(f"**{sum(c.outcome.identical for c in done)}/{len(done)}**")
    lines.append("| **all** | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=144, help="interrupted runs (default 144: 3 per cell)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "resume_fuzz.md")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes at a time")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folders here")
    args = parser.parse_args()

    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="resume-fuzz-")) if args.keep is None else args.keep
    base.mkdir(parents=True, exist_ok=True)
    source = describe_source()
    print(f"resume fuzz: {args.runs} runs, seed {args.seed}, {args.jobs} at a time; {source}; folders in {base}",
          flush=True)
    lock = threading.Lock()
    try:
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            refs = {config: pool.submit(run_reference, config, base / f"ref-{config}") for config in args.configs}
            totals, broken = {}, {}
            for config, future in refs.items():
                outcome = future.result()
                if outcome.identical:
                    totals[config] = run_shape(base / f"ref-{config}")[0]
                else:
                    broken[config] = outcome.summary(3)
                    print(f"reference {config} FAILED: {broken[config]}", flush=True)
            configs = [c for c in args.configs if c in totals]
            cases = draw_cases(args.runs, configs, args.kinds, totals, args.seed) if configs else []
            print(f"references done in {time.monotonic() - started:.0f} s: "
                  + ", ".join(f"{c} {totals[c]} steps" for c in configs), flush=True)

            def run(case: Case) -> Case:
                t0 = time.monotonic()
                case.outcome = run_scenario(case.config, base / f"case-{case.number:03d}", case.interrupts, None)
                if not case.outcome.problems or case.outcome.attempts[-1].rc == 0:
                    case.outcome.differences = compare_runs(base / f"ref-{case.config}",
                                                            base / f"case-{case.number:03d}")
                case.seconds = time.monotonic() - t0
                return case

            futures = [pool.submit(run, case) for case in cases]
            for done, future in enumerate(as_completed(futures), 1):
                case = future.result()
                verdict = "identical" if case.outcome.identical else "DIFFERENT: " + case.outcome.summary(2)
                with lock:
                    print(f"[{done}/{len(cases)}] #{case.number} {case.config} {case.kind} "
                          f"({case.label()}; {case.seconds:.1f} s): {verdict}"[:400], flush=True)
    finally:
        if args.keep is None:
            shutil.rmtree(base, ignore_errors=True)

    elapsed = time.monotonic() - started
    same = sum(c.outcome.identical for c in cases)
    restarted = sum(c.outcome.restarted for c in cases)
    uninterrupted = sum(any("ended before the signal" in a.note for a in c.outcome.attempts) for c in cases)
    lines = [
        "# Kill-and-resume fuzz",
        "",
        f"`python bench/resume_fuzz.py --runs {args.runs} --seed {args.seed}`: {len(cases)} interrupted runs, "
        f"{args.jobs} at a time, {elapsed:.0f} s; {source}.",
        "",
        "Each cell: runs whose resumed end is bitwise identical to the uninterrupted reference / runs.",
        "",
        *table(cases, configs, args.kinds),
        "",
        f"{same}/{len(cases)} identical. {restarted} resume(s) found no checkpoint and started afresh; "
        f"{uninterrupted} signal(s) came after the run had ended (those runs count, uninterrupted).",
    ]
    if broken:
        lines += ["", "References that failed (their configurations were left out):", ""]
        lines += [f"- {config}: {why}" for config, why in broken.items()]
    failing = [c for c in cases if not c.outcome.identical]
    if failing:
        lines += ["", "## Failing cases", ""]
        for case in sorted(failing, key=lambda c: (c.config, c.kind, c.number)):
            resumes = "; ".join(a.describe() for a in case.outcome.attempts)
            first = [*case.outcome.problems, *case.outcome.differences][:3]
            more = len(case.outcome.problems) + len(case.outcome.differences) - len(first)
            lines.append(f"- #{case.number} **{case.config} / {case.kind}**: {resumes}")
            lines += [f"  - `{line[:300]}`" for line in first]
            if more > 0:
                lines.append(f"  - … {more} more")
    text = "\n".join(lines) + "\n"
    print("\n" + text, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"TOTAL: {same}/{len(cases)} identical ({len(cases) - same} different); written to {args.out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
