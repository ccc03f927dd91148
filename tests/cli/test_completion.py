"""Shell completion (traincraft.cli.completion): the script that `traincraft completion bash`
prints, sourced into a real bash and asked as bash asks at a Tab; zsh's and fish's answers
through argcomplete's environment; and the override completions themselves."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from traincraft.cli.completion import overrides, recipe_keys

SRC = Path(__file__).parents[2] / "src"

# Bash's side of a Tab: COMP_LINE, COMP_POINT, COMP_WORDS, COMP_CWORD, then the function the
# script registered with `complete -F`; COMPREPLY printed one per line after a marker.
ASK = r'''
source "$SCRIPT"
for line in "$@"; do
    COMP_LINE="$line"; COMP_POINT=${#line}
    read -ra COMP_WORDS <<< "$line"
    [[ "$line" == *" " ]] && COMP_WORDS+=("")
    COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
    COMPREPLY=()
    _python_argcomplete traincraft
    echo "@@ $line"
    printf '%s\n' "${COMPREPLY[@]}"
done
'''


@pytest.fixture(scope="module")
def shell(tmp_path_factory):
    """A folder with a `traincraft` on PATH, a cache folder and the bash script."""
    root = tmp_path_factory.mktemp("completion")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    command = bin_dir / "traincraft"
    command.write_text(f"#!/bin/sh\nexec {sys.executable} -m traincraft \"$@\"\n")
    command.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(SRC), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "XDG_CACHE_HOME": str(root / "cache")}
    env.pop("_ARGCOMPLETE", None)
    work = root / "work"
    (work / "runs" / "quickstart").mkdir(parents=True)
    (work / "recipe.yaml").write_text("name: x\n")
    (work / "records.txt").write_text("")
    script = subprocess.run(["traincraft", "completion", "bash"], env=env, capture_output=True, text=True,
                            check=True).stdout
    (root / "traincraft.bash").write_text(script)
    env["SCRIPT"] = str(root / "traincraft.bash")
    return env, work


def bash_completions(shell, *lines):
    env, work = shell
    result = subprocess.run(["bash", "-c", ASK, "ask", *lines], env=env, cwd=work, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answers, current = {}, None
    for line in result.stdout.splitlines():
        if line.startswith("@@ "):
            current = line[3:]
            answers[current] = []
        elif line:
            answers[current].append(line.strip())
    return answers


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completes_commands_options_names_keys_and_folders(shell):
    asked = {
        "traincraft ": None,
        "traincraft fi": ["fit"],
        "traincraft init di": ["diabetes"],
        "traincraft list sch": ["schedules"],
        "traincraft completion ": ["bash", "zsh", "fish"],
        "traincraft export runs --format ": ["safetensors", "pt"],
        "traincraft fit quickstart loss=cross_ent": ["cross_entropy"],
        "traincraft fit quickstart optimizer.na": ["optimizer.name="],
        "traincraft fit quickstart optimizer.name=adam": ["adam", "adamax", "adamw"],
        "traincraft fit quickstart data.task=reg": ["regression"],
        "traincraft fit quickstart ~early_stopping.pat": ["~early_stopping.patience"],
        "traincraft fit rec": ["recipe.yaml"],
        "traincraft fit quickstart rec": ["recipe.yaml"],  # several recipes compose
        "traincraft fit quickstart loss=mse rec": [],  # after an override, overrides only
        "traincraft config quickstart optimizer.na": ["optimizer.name="],
        "traincraft fit recipe.yaml --run": ["--run-dir"],
        "traincraft evaluate ru": ["runs/"],
        # the commands with parsers of their own
        "traincraft tune --tri": ["--trials"],
        "traincraft schedule quickstart schedule=onec": ["onecycle"],
        "traincraft lr-find quickstart --rule ": ["valley", "steepest"],
        "traincraft show-batch recipe.yaml --split ": ["train", "val", "test"],
        "traincraft report ru": ["runs/"],
    }
    answers = bash_completions(shell, *asked)
    commands = set(answers["traincraft "])
    assert {"fit", "resume", "evaluate", "predict", "export", "init", "list", "schema", "completion", "schedule",
            "tune", "report", "lr-find", "show-batch"} <= commands
    for line, expected in asked.items():
        if expected is not None:
            assert answers[line] == expected, line


@pytest.mark.parametrize("shell_name, fit_line", [
    ("fish", "fit\ttrain from a recipe (no recipe: the quickstart)"),
    ("zsh", "fit:train from a recipe (no recipe: the quickstart)"),
])
def test_zsh_and_fish_get_their_own_format(shell, shell_name, fit_line):
    env, work = shell
    line = "traincraft f"
    ask = {**env, "_ARGCOMPLETE": "1", "_ARGCOMPLETE_SHELL": shell_name, "COMP_LINE": line,
           "COMP_POINT": str(len(line)), "_ARGCOMPLETE_IFS": "\n", "_ARGCOMPLETE_SUPPRESS_SPACE": "1"}
    if shell_name == "fish":
        ask["_ARGCOMPLETE_DFS"] = "\t"
    result = subprocess.run(["bash", "-c", "traincraft 8>&1 9>/dev/null 1>/dev/null 2>/dev/null"], env=ask, cwd=work,
                            capture_output=True, text=True, timeout=60)
    assert result.stdout.split("\n") == [fit_line]


def test_the_scripts_name_the_command(shell):
    env, _ = shell
    for name, mark in (("zsh", "#compdef traincraft"), ("fish", "complete --command traincraft")):
        script = subprocess.run(["traincraft", "completion", name], env=env, capture_output=True, text=True,
                                check=True).stdout
        assert mark in script
    bad = subprocess.run(["traincraft", "completion", "tcsh"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "invalid choice: 'tcsh'" in bad.stderr


def test_a_tab_imports_no_torch_once_the_names_are_cached(shell):
    env, _ = shell  # the fixture's `traincraft completion bash` wrote the cache
    probe = "import sys; from traincraft.cli.completion import names; n = names(); print('torch' in sys.modules, 'adamw' in n['optimizers'])"
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]


KNOWN = {"keys": ["data.dataset", "data.task", "loss", "metrics", "optimizer", "optimizer.lr", "optimizer.name"],
         "choices": {"data.task": ["classification", "regression"]},
         "losses": ["cross_entropy", "mse"], "optimizers": ["adam", "adamw", "sgd"], "metrics": ["accuracy", "mae"],
         "datasets": ["digits", "iris"]}


@pytest.mark.parametrize("prefix, expected", [
    ("", [f"{k}=" for k in KNOWN["keys"]]),
    ("optimizer.", ["optimizer.lr=", "optimizer.name="]),
    ("optimizer=ad", ["optimizer=adam", "optimizer=adamw"]),
    ("optimizer.name=s", ["optimizer.name=sgd"]),
    ("metrics=", ["metrics=[accuracy]", "metrics=[mae]"]),
    ("data.task=c", ["data.task=classification"]),
    ("data.dataset=i", ["data.dataset=iris"]),
    ("optimizer.lr=", []),  # a number: nothing to offer
    ("nothing", []),
    ("~opt", ["~optimizer", "~optimizer.lr", "~optimizer.name"]),
    ("+loss=m", ["+loss=mse"]),
])
def test_override_completions(prefix, expected):
    assert overrides(prefix, KNOWN) == expected


def test_recipe_keys_follow_the_schema():
    from traincraft.recipe import Recipe

    keys, choices = recipe_keys(Recipe)
    assert {"optimizer.lr", "train.max_epochs", "early_stopping.patience", "data.split.val", "schedule"} <= set(keys)
    assert choices["data.task"] == ["classification", "regression", "forecast"]
    assert choices["train.precision"] == ["32", "bf16", "fp16"]
    assert choices["early_stopping.restore_best"] == ["true", "false"]
    assert choices["logging"] == ["[csv]", "[tensorboard]", "[mlflow]"]  # a list's items


def test_every_command_with_a_parser_of_its_own_is_completed():
    from traincraft.cli import PASSTHROUGH
    from traincraft.cli.completion import OWN_PARSERS

    assert set(OWN_PARSERS) == set(PASSTHROUGH)
