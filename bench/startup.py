"""Start-up cost: what ``import traincraft`` adds to ``import torch``, and ``traincraft --help``.

    python bench/startup.py [--repeats 10]

Every figure comes from fresh interpreters (``python -c ...``), the cases interleaved, medians
over the repeats. Two ways of measuring the import, because they answer different questions:

* whole process: the wall time of ``python -c "import torch; import traincraft"`` minus that of
  ``python -c "import torch"`` (what a user waits for, noise of process start-up included);
* in process: ``time.perf_counter()`` around the traincraft import, after ``import torch``.

``traincraft --help`` is timed through the installed console script, and a separate interpreter
reports which heavy modules the help, ``import traincraft`` and ``import traincraft.trainer`` load.
Budgets (from the speed issue): ``import traincraft`` adds at most 0.25 s to ``import torch``;
``traincraft --help`` takes at most 0.5 s and imports no torch. The table is written to
``bench/results/startup.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
IMPORT_BUDGET_S = 0.25
HELP_BUDGET_S = 0.5
HEAVY = (
    "torch",
    "numpy",
    "matplotlib",
    "optuna",
    "tensorboard",
    "sklearn",
    "statsmodels",
    "scipy",
    "pandas",
    "pydantic",
    "yaml",
    "tqdm",
    "safetensors",
)

# What each process runs; "added by traincraft" rows are differences against "import torch".
PROCESSES = {
    "python (no imports)": "pass",
    "import torch": "import torch",
    "import torch; import traincraft": "import torch; import traincraft",
    "import torch; from traincraft import Trainer": "import torch; from traincraft import Trainer",
    "… + load_recipe (pydantic, yaml)": (
        "import torch; from traincraft import Trainer, load_recipe; load_recipe('quickstart')"
    ),
}

# In one process, after import torch: seconds spent importing what follows.
IN_PROCESS = {
    "import traincraft": "import traincraft",
    "from traincraft import Trainer": "from traincraft import Trainer",
    "from traincraft import Trainer, load_recipe": "from traincraft import Trainer, load_recipe",
    # What `traincraft fit` does: the start-up objects frozen from the garbage collector first.
    "… as `traincraft fit` imports it (gc.freeze after torch)": (
        "import gc; gc.freeze(); from traincraft import Trainer, load_recipe"
    ),
}

MODULES_PROBE = """
import json, sys
what = sys.argv[1]
if what == "help":
    import contextlib, io
    from traincraft.cli import main
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["--help"])
        except SystemExit:
            pass
elif what == "import":
    import traincraft
else:
    import traincraft.trainer
heavy = sys.argv[2].split(",")
print(json.dumps(sorted(m for m in heavy if m in sys.modules)))
"""


def wall(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def in_process(statement: str) -> float:
    code = (
        f"import time, torch\nt = time.perf_counter()\n{statement}\nprint(time.perf_counter() - t)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(out.stdout.strip())


def help_command() -> list[str]:
    """The installed console script next to this interpreter, else ``python -m traincraft``."""
    script = Path(sys.executable).with_name("traincraft")
    if script.is_file() or shutil.which("traincraft"):
        return [str(script) if script.is_file() else "traincraft", "--help"]
    return [sys.executable, "-m", "traincraft", "--help"]


def loaded_modules(what: str) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", MODULES_PROBE, what, ",".join(HEAVY)],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def measure(repeats: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Interleaved: every case once per round, one warm-up round left out (disk cache)."""
    processes: dict[str, list[float]] = {name: [] for name in [*PROCESSES, "traincraft --help"]}
    imports: dict[str, list[float]] = {name: [] for name in IN_PROCESS}
    for round_ in range(repeats + 1):
        for name, code in PROCESSES.items():
            seconds = wall([sys.executable, "-c", code])
            if round_:
                processes[name].append(seconds)
        seconds = wall(help_command())
        if round_:
            processes["traincraft --help"].append(seconds)
        for name, statement in IN_PROCESS.items():
            seconds = in_process(statement)
            if round_:
                imports[name].append(seconds)
        print(f"  round {round_ + 1}/{repeats + 1} done", file=sys.stderr, flush=True)
    return processes, imports


def report(processes: dict[str, list[float]], imports: dict[str, list[float]], repeats: int) -> str:
    med = {name: statistics.median(times) for name, times in processes.items()}
    torch_s = med["import torch"]
    lines = [
        "# traincraft start-up",
        "",
        f"python {platform.python_version()}, {os.cpu_count()} CPUs; {repeats} interleaved rounds "
        "after 1 warm-up, medians; each figure a fresh interpreter.",
        "",
        "| process | wall (s) | added to import torch (s) |",
        "|---|---:|---:|",
    ]
    for name, seconds in med.items():
        added = f"{seconds - torch_s:+.3f}" if name.startswith(("import torch;", "…")) else ""
        lines.append(f"| `{name}` | {seconds:.3f} | {added} |")
    lines += ["", "| after import torch, in process | seconds |", "|---|---:|"]
    for name, times in imports.items():
        lines.append(f"| `{name}` | {statistics.median(times):.3f} |")
    help_s = med["traincraft --help"]
    trainer_added = statistics.median(imports["from traincraft import Trainer"])
    recipe_added = statistics.median(imports["… as `traincraft fit` imports it (gc.freeze after torch)"])
    modules = {what: loaded_modules(what) for what in ("help", "import", "trainer")}
    help_ok = help_s <= HELP_BUDGET_S and "torch" not in modules["help"]
    lines += [
        "",
        "Heavy modules loaded: `traincraft --help`: "
        f"{', '.join(modules['help']) or 'none'}; `import traincraft`: "
        f"{', '.join(modules['import']) or 'none'}; `import traincraft.trainer`: "
        f"{', '.join(modules['trainer'])}.",
        "",
        f"Budgets: `import traincraft` (with the Trainer) adds {trainer_added:.3f} s to "
        "import torch "
        f"(≤ {IMPORT_BUDGET_S} s: {'ok' if trainer_added <= IMPORT_BUDGET_S else 'OVER'}), "
        f"{recipe_added:.3f} s with the recipe loader as `traincraft fit` imports it (pydantic, "
        f"yaml; {'ok' if recipe_added <= IMPORT_BUDGET_S else 'OVER'}); "
        f"`traincraft --help` takes {help_s:.3f} s without torch "
        f"(≤ {HELP_BUDGET_S} s, no torch: {'ok' if help_ok else 'OVER'}).",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--output", type=Path, default=RESULTS / "startup.md")
    args = parser.parse_args()
    processes, imports = measure(args.repeats)
    text = report(processes, imports, args.repeats)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    print(f"wrote {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
