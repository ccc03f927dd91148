"""The JSON schema (traincraft schema) and the runtime agree: every example, template and doc
recipe passes both, and forms that one accepts the other accepts, forms one rejects the other
rejects (the runtime: load_recipe, then the loss and schedule built as the trainer builds them)."""

import sys
from pathlib import Path

import jsonschema
import pytest
import torch

from traincraft import losses, schedules
from traincraft.errors import TraincraftError
from traincraft.recipe import Recipe, json_schema, load_recipe, load_yaml
from traincraft.recipe_schema import loose_name

sys.path.insert(0, str(Path(__file__).parent))
from doc_blocks import MINIMAL, ROOT, all_blocks, recipe_documents  # noqa: E402


@pytest.fixture(scope="module")
def validator():
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def recipe_files():
    return sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("src/traincraft/templates/*.yaml")])


def doc_recipes():
    """Every recipe of the ```yaml blocks of README.md and docs/*.md, as tests/doc_blocks.py
    reads them: a whole one as it is, a part of one on top of a minimal recipe. Blocks that are
    no recipe are tests/test_docs_blocks.py's to report."""
    found = []
    for block in all_blocks():
        if block.kind != "yaml" or block.skip:
            continue
        try:
            recipes = recipe_documents(block)
        except ValueError:
            continue
        found += [pytest.param(raw, id=block.id if len(recipes) == 1 else f"{block.id}#{number}")
                  for number, raw in enumerate(recipes)]
    return found


def test_the_docs_hold_recipes_to_check():
    assert len(doc_recipes()) >= 20 and len(recipe_files()) >= 8


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_example_and_template_passes_schema_and_runtime(validator, path):
    assert [e.message for e in validator.iter_errors(load_yaml(path.read_text()))] == []
    assert isinstance(load_recipe(path), Recipe)


@pytest.mark.parametrize("raw", doc_recipes())
def test_every_doc_recipe_passes_schema_and_runtime(validator, raw):
    assert [e.message for e in validator.iter_errors(raw)] == []
    assert runtime_accepts(raw)


def runtime_accepts(raw):
    try:
        recipe = load_recipe(raw)
        if recipe.loss is not None:
            losses.build(recipe.loss)
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
        schedules.build(recipe.schedule, optimizer, steps_per_epoch=10, total_steps=100)
    except TraincraftError:
        return False
    return True


BOTH_ACCEPT = [
    {"model": "mlp"},
    {"optimizer": "sgd"},
    {"optimizer": {"name": "adam", "lr": 3e-4, "eps": 1e-8, "betas": [0.9, 0.99]}},
    {"tune": {"timeout": "30m", "space": {"optimizer.lr": {"loguniform": [1e-4, 1e-2]}}}},
    {"tune": {"timeout": 90, "direction": "max", "metric": "val_accuracy", "space": {"seed": {"int": [0, 3]}}}},
    {"train": {"precision": 32, "max_epochs": 1e3, "clip_grad_norm": 1}},
    {"train": {"precision": "bf16"}},
    {"schedule": "cosine"},
    {"schedule": "CosineAnnealingLR"},
    {"schedule": "one-cycle"},
    {"schedule": {"name": "cosine", "eta_min": 1e-6, "warmup": "5%", "interval": "Step"}},
    {"schedule": {"name": "step", "step_size": "3ep", "gamma": 0.5}},
    {"schedule": {"name": "onecycle", "max_lr": [0.1], "pct_start": 0.25}},
    {"schedule": {"name": "plateau", "factor": 0.5, "cooldown": 2}},
    {"schedule": None},
    {"loss": "Cross-Entropy"},
    {"loss": {"name": "focal", "gamma": 2e0}},
    {"loss": {"name": "cross_entropy", "class_weight": [1, 2, 1], "label_smoothing": 0.1}},
    {"loss": [{"name": "cross_entropy", "weight": 1.0}, {"name": "dice", "weight": 0.5}, "focal"]},
    {"loss": None},
]

BOTH_REJECT = [
    {"model": None},
    {"train": {"max_epochs": "3"}},
    {"train": {"max_epochs": 2.5}},
    {"train": {"compile": 1}},
    {"train": {"precision": 16}},
    {"optimizer": {"lr": "1e-3"}},
    {"train": {"max_epoch": 3}},
    {"tune": {"timeout": "soon", "space": {"seed": {"int": [0, 3]}}}},
    {"schedule": "cosin"},
    {"schedule": "step"},  # step needs step_size
    {"schedule": {"name": "cosine", "eta_minn": 0}},
    {"schedule": {"name": "cosine", "eta_min": "1e-6"}},
    {"loss": "cross_entropi"},
    {"loss": {"name": "focal", "gamma": "abc"}},
    {"loss": {"name": "huber", "deltaa": 1.0}},
    {"loss": {"name": "cross_entropy", "reduction": "sum"}},
    {"loss": []},
]


@pytest.mark.parametrize("part", BOTH_ACCEPT, ids=str)
def test_forms_the_runtime_accepts_the_schema_accepts(validator, part):
    raw = {**MINIMAL, **part}
    assert runtime_accepts(raw)
    assert [e.message for e in validator.iter_errors(raw)] == []


@pytest.mark.parametrize("part", BOTH_REJECT, ids=str)
def test_forms_the_runtime_rejects_the_schema_rejects(validator, part):
    raw = {**MINIMAL, **part}
    assert not runtime_accepts(raw)
    assert list(validator.iter_errors(raw))


def test_names_of_your_own_are_accepted_by_the_schema(validator):
    for part in ({"loss": "mylosses:Smooth"}, {"loss": {"name": "mylosses:Smooth", "beta": 2}},
                 {"model": {"name": "mynets:Net", "width": 3}}):
        assert [e.message for e in validator.iter_errors({**MINIMAL, **part})] == []


def test_loss_and_schedule_are_typed_by_their_registries():
    schema = json_schema()
    assert set(schedules.names()) <= set(schema["$defs"]["Schedule"]["anyOf"][0]["properties"]["name"]["anyOf"][0]["enum"]) | {
        s["title"] for s in schema["$defs"]["Schedule"]["anyOf"]}
    titles = {s["title"]: s for s in schema["$defs"]["Schedule"]["anyOf"]}
    assert set(titles) == set(schedules.names())
    cosine = titles["cosine"]["properties"]
    assert {"T_max", "eta_min", "warmup", "cooldown", "interval"} <= set(cosine)
    assert titles["step"]["required"] == ["name", "step_size"]
    assert "step" not in schema["$defs"]["ScheduleName"]["anyOf"][0]["enum"]
    loss_titles = {s.get("title"): s for s in schema["$defs"]["Loss"]["anyOf"]}
    assert set(losses.names()) <= set(loss_titles)
    assert loss_titles["focal"]["properties"]["gamma"] == {"type": "number"}
    assert loss_titles["huber"]["additionalProperties"] is False


def test_a_loose_name_matches_as_registries_read_names():
    import re as regex

    pattern = regex.compile(loose_name(["cross_entropy", "ce"])["anyOf"][1]["pattern"])
    for text in ("cross_entropy", "Cross-Entropy", " CE ", "CROSS_ENTROPY"):
        assert pattern.match(text)
    for text in ("cross_entropyx", "crossentropy", "c"):
        assert not pattern.match(text)
