"""Recipes: the YAML layer over the Python API.

Every key maps to a ``Trainer`` argument or a builder's argument; nothing is possible in a recipe
that is impossible in Python. Unknown keys are errors (with did-you-mean), so a typo never
silently falls back to a default.

Numbers are read as YAML 1.2 and Python read them (:mod:`traincraft.recipe_yaml`); overrides and
several recipe files combine as :mod:`traincraft.overrides` says. A number is a number: text where
a number belongs (``lr: "1e-3"``, ``max_epochs: "3"``) is an error, as in the JSON schema.

Example:
    >>> recipe = load_recipe(["base.yaml", "small.yaml"], overrides=["optimizer.lr=3e-4"])
    >>> trainer = Trainer.from_recipe(recipe)
    >>> trainer.fit()
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from traincraft.errors import did_you_mean
from traincraft.overrides import apply_override, apply_overrides, merge, set_key
from traincraft.recipe_yaml import (
    MAX_VALUES,
    RecipeError,
    dump_yaml,
    load_yaml,
    whole_floats_as_ints,
)
from traincraft.tuning.section import TuneSection

__all__ = [
    "MAX_VALUES", "TEMPLATES", "TRAIN_GROUPS", "Recipe", "RecipeError", "apply_override", "apply_overrides",
    "base_dir", "changed_keys", "json_schema", "load_recipe", "load_yaml", "read_raw", "section_model",
    "set_key", "template_names", "validate",
]

TEMPLATES = Path(__file__).parent / "templates"


class Section(BaseModel):
    # strict: a number is a number ("3" is not 3, true is not 1), as the JSON schema says.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True)

    @model_validator(mode="before")
    @classmethod
    def _whole_numbers(cls, values: Any) -> Any:
        return whole_floats_as_ints(cls, values)


class SplitSection(Section):
    """Shares of the whole data held out for validation and test."""

    val: float = Field(0.15, ge=0, lt=1)
    test: float = Field(0.15, ge=0, lt=1)


class DataSection(Section):
    dataset: str | dict[str, Any] = Field(
        description="built-in name | path to .csv/.npz/.pt | 'package.module:function' | "
        "{images: folder | {train, val, test} | list.csv, image_size, channels, resize, cache}"
    )
    task: Literal["classification", "regression", "forecast"] | None = None
    target: str | list[str] | None = Field(None, description="CSV target column(s)")
    features: list[str] | None = Field(None, description="CSV input columns (default: all others)")
    lookback: int | None = Field(None, gt=0, description="forecast: window length")
    horizon: int = Field(1, gt=0, description="forecast: steps ahead")
    split: SplitSection = Field(default_factory=SplitSection)
    scale: Literal["standard", "minmax", "none"] = "standard"
    batch_size: int = Field(32, gt=0)
    classes: list[int | str] | None = Field(
        None, description="classification: keep only these classes, numbered 0..k-1 in this order"
    )
    args: dict[str, Any] | None = Field(
        None, description="keyword arguments of a dataset named 'package.module:Name' (a function or a Dataset class)"
    )
    num_workers: int = Field(0, ge=0, description="worker processes loading a Dataset of your own")
    pin_memory: bool = Field(False, description="page-locked batches of a Dataset of your own, for a GPU")
    persistent_workers: bool = Field(True, description="keep the workers from one epoch to the next")
    augment: list[str | dict[str, Any]] | None = Field(
        None, description="image augmentations of training batches, on the device (kornia): [{name: horizontal_flip}, ...]"
    )
    normalize: Literal["dataset", "imagenet", "none"] | dict[str, list[float]] | None = Field(
        None, description="images: per-channel normalisation; default 'dataset' (the train split's statistics)"
    )


class ModelSection(BaseModel):
    """``name`` plus the builder's keyword arguments (checked by the builder)."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(description="built-in model name, 'torchvision:NAME', 'timm:NAME' or 'package.module:Class'")

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class OptimizerSection(BaseModel):
    """``name``, ``lr``, ``weight_decay`` and the optimizer class's own keyword arguments."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float | None = Field(None, ge=0)
    decay_exclude: str | list[str] | None = "auto"
    param_groups: list[dict[str, Any]] | None = None

    def kwargs(self) -> dict[str, Any]:
        return dict(self.model_extra or {})

    def group(self) -> dict[str, Any]:
        """The Trainer's ``optimizer=`` group (``lr`` goes apart)."""
        return {"name": self.name, "weight_decay": self.weight_decay, "decay_exclude": self.decay_exclude,
                "param_groups": self.param_groups, **self.kwargs()}


#: The ``train:`` keys that each Trainer group takes, under its own name there.
TRAIN_GROUPS: dict[str, dict[str, str]] = {
    "step": {"accumulate": "accumulate", "precision": "precision", "clip_grad_norm": "clip_grad_norm",
             "clip_norm_type": "clip_norm_type", "clip_grad_value": "clip_grad_value", "compile": "compile",
             "deterministic": "deterministic", "gc_every": "gc_every"},
    "nonfinite": {"on_nonfinite": "policy", "rollback_every": "every", "rollback_lr_factor": "lr_factor",
                  "max_rollbacks": "max_rollbacks"},
    "penalty": {"l1": "l1", "l2": "l2", "penalty_exclude": "exclude"},
    "processes": {"sync_batchnorm": "sync_batchnorm", "dist_timeout": "timeout"},
    "data": {"shuffle": "shuffle"},
}


class TrainSection(Section):
    max_epochs: int = Field(10, gt=0)
    max_steps: int | None = Field(None, gt=0)
    accumulate: int = Field(1, ge=1)
    precision: Literal["32", "bf16", "fp16"] = "32"
    clip_grad_norm: float | None = Field(None, gt=0)
    clip_norm_type: float = 2.0
    clip_grad_value: float | None = Field(None, gt=0)
    l1: float = Field(0.0, ge=0)
    l2: float = Field(0.0, ge=0)
    penalty_exclude: str | list[str] | None = "auto"
    on_nonfinite: Literal["raise", "skip", "rollback"] = "raise"
    rollback_every: int = Field(100, ge=1)
    rollback_lr_factor: float = Field(0.5, gt=0)
    max_rollbacks: int = Field(3, ge=0)
    compile: bool = False
    shuffle: bool = True
    device: str = "auto"
    deterministic: bool = False
    gc_every: int | None = Field(1000, ge=1, description="optimizer steps between collections of Python's young garbage (automatic collection off during fit); null: automatic")
    sync_batchnorm: bool = Field(False, description="several processes on CUDA: batch norm over the global batch")
    dist_timeout: float = Field(300.0, gt=0, description="seconds a process waits for the others before an error")

    @field_validator("precision", mode="before", json_schema_input_type=Literal["32", "bf16", "fp16", 32])
    @classmethod
    def _precision_as_text(cls, value: Any) -> Any:
        whole = isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
        return str(int(value)) if whole else value

    def groups(self) -> dict[str, dict[str, Any]]:
        """The Trainer's ``step``, ``nonfinite``, ``penalty``, ``processes`` and ``data`` groups."""
        return {group: {name: getattr(self, key) for key, name in keys.items()} for group, keys in TRAIN_GROUPS.items()}


class EarlyStoppingSection(Section):
    monitor: str = "val_loss"
    mode: Literal["min", "max"] | None = None
    patience: int = Field(10, ge=1)
    min_delta: float = Field(0.0, ge=0)
    min_delta_mode: Literal["abs", "rel"] = "abs"
    start_from: int = Field(0, ge=0)
    check_finite: bool = True
    stopping_threshold: float | None = None
    divergence_threshold: float | None = None
    baseline: float | None = None
    restore_best: bool = True
    verbose: bool = True


class CheckpointSection(Section):
    every_n_epochs: int = Field(1, ge=1)
    every_n_steps: int | None = Field(None, ge=1)
    keep_last: int = Field(2, ge=1)
    save_top_k: int = Field(0, ge=0)
    monitor: str | None = None
    mode: Literal["min", "max"] | None = None


class UnfreezeItem(Section):
    at: int | str = Field(description="when: optimizer steps, '2ep' or '25%'")
    params: str | list[str] = Field(description="globs on parameter or module names")
    lr_mult: float | None = Field(None, gt=0, description="the new groups' LR multiplier")


class GradualSection(Section):
    groups: list[str | list[str]] = Field(description="globs per group, output side first")
    every: int | str = Field(description="time between two unfreezings")
    start: int | str | None = Field(None, description="the first unfreezing (default: every)")
    lr_mult: float | list[float] | None = None


class InitFrom(Section):
    """``init_from`` with its keys renamed: ``prefix`` stripped from the file's keys, ``map``
    turning file prefixes into model prefixes."""

    path: str
    prefix: str | None = None
    map: dict[str, str] = Field(default_factory=dict)


class FinetuneSection(Section):
    """Start from trained weights, freeze, unfreeze on a schedule, discriminative LRs."""

    init_from: str | InitFrom | None = Field(
        None, description="run folder, .safetensors, .ckpt or .pt state dict; or {path, prefix, map}"
    )
    strict: bool = False
    skip: list[str] = Field(default_factory=list, description="globs of weights not to load (a new head)")
    freeze: list[str] = Field(default_factory=list, description="globs on parameter or module names")
    train_bn: bool = False
    unfreeze: list[UnfreezeItem] = Field(default_factory=list)
    gradual: GradualSection | None = None
    lr_mult: dict[str, float] | None = None
    layer_decay: float | None = Field(None, gt=0, le=1)

    def kwargs(self) -> dict[str, Any]:
        """The trainer's ``finetune=`` argument (init_from goes separately)."""
        values = self.model_dump(exclude={"init_from"}, exclude_none=True)
        if self.gradual is not None:
            values["gradual"] = self.gradual.model_dump(exclude_none=True)
        values["unfreeze"] = [item.model_dump(exclude_none=True) for item in self.unfreeze]
        return values


class EMASection(Section):
    decay: float = Field(0.999, ge=0, lt=1)
    warmup: bool = True
    every: int = Field(1, ge=1)
    evaluate: bool = True


class SWASection(Section):
    start: int | str = "75%"
    lr: float | None = Field(None, gt=0)
    anneal: int | str = 0
    anneal_strategy: Literal["cos", "linear"] = "cos"
    update_bn: bool = True


class Recipe(Section):
    """A training recipe. ``traincraft schema`` prints its JSON schema."""

    name: str = "run"
    seed: int = Field(0, ge=0, lt=2**63)
    data: DataSection
    model: ModelSection
    loss: str | dict[str, Any] | list[str | dict[str, Any]] | None = Field(
        "cross_entropy", description="a loss name, {name, ...}, weighted terms; null: the loss the model returns"
    )
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    train: TrainSection = Field(default_factory=TrainSection)
    schedule: str | dict[str, Any] | None = Field(
        None, description="learning-rate schedule: a name or {name, warmup, cooldown, ...}; see docs/schedules.md"
    )
    early_stopping: EarlyStoppingSection | None = None
    finetune: FinetuneSection | None = None
    ema: EMASection | None = None
    swa: SWASection | None = None
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    tune: TuneSection | None = None
    metrics: list[str | dict[str, Any]] = Field(default_factory=list)
    logging: list[Literal["csv", "tensorboard", "mlflow"] | dict[str, Any]] = Field(
        default_factory=lambda: ["csv"], description="csv (always written), tensorboard, mlflow"
    )
    _base_dir: str | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _folder_name(cls, value: str) -> str:
        # The run folder is runs/<name>/<time>: the name must stay a folder name under runs/.
        if not value.strip() or value.strip() in (".", "..") or any(c in value for c in "/\\\0:"):
            raise ValueError("a run name is a plain folder name (no '/', '\\', ':', not empty, not '..')")
        return value

    @field_validator("optimizer", mode="before", json_schema_input_type=str | OptimizerSection)
    @classmethod
    def _optimizer_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    @field_validator("model", mode="before", json_schema_input_type=str | ModelSection)
    @classmethod
    def _model_name(cls, value: Any) -> Any:
        return {"name": value} if isinstance(value, str) else value

    def fingerprint(self) -> str:
        """A hash of the resolved recipe (kept in checkpoints)."""
        import hashlib

        return hashlib.sha256(self.to_yaml().encode()).hexdigest()[:16]

    def to_yaml(self) -> str:
        """The resolved recipe, every default filled in: ``traincraft fit`` on it repeats the run."""
        return dump_yaml(self.model_dump(mode="json"))


# ----------------------------------------------------------------------------- loading


def load_recipe(
    source: str | Path | dict[str, Any] | Sequence[str | Path | dict[str, Any]] | None = None,
    overrides: Sequence[str] = (),
) -> Recipe:
    """Read a recipe from a file, a built-in template name, or a dict (or several, composed in
    order), and apply overrides.

    Args:
        source: a YAML path, a template name (``"quickstart"``, ``"sunspots"``, ...), a dict, or
            None for the quickstart; or a list of them, each merged into the ones before it,
            section by section (later values win; see :func:`traincraft.overrides.merge`).
            Relative paths resolve against the first file's folder.
        overrides: ``"key.path=value"`` strings (the value is read as YAML), ``"+key=value"``
            (adds a key that is not there), ``"~key"`` (deletes one); see
            :mod:`traincraft.overrides`.

    Raises:
        RecipeError: one line naming the key path, the value and the fix.
    """
    return validate(*given_recipe(source, overrides))


def given_recipe(
    source: str | Path | dict[str, Any] | Sequence[str | Path | dict[str, Any]] | None = None,
    overrides: Sequence[str] = (),
) -> tuple[dict[str, Any], str]:
    """What the recipe files and overrides say, merged, before validation and defaults; and
    where it came from (for messages)."""
    sources = list(source) if isinstance(source, (list, tuple)) else [source]
    if not sources:
        sources = [None]
    raw, origin = read_raw(sources[0])
    for later in sources[1:]:
        more, where = read_raw(later)
        more.pop("_base_dir", None)  # relative paths resolve against the first file's folder
        raw, origin = merge(raw, more), f"{origin} + {where}"
    apply_overrides(raw, [str(override) for override in overrides])
    return raw, origin


def read_raw(source: str | Path | dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """The recipe as a plain dict, and where it came from (for messages)."""
    if source is None:
        source = "quickstart"
    if isinstance(source, dict):
        return _deep_copy(source), "recipe"
    path = Path(source)
    if not path.is_file():
        template = template_file(str(source))
        if template is not None and path.suffix == "":
            path = template
        else:
            names = template_names()
            hint = did_you_mean(str(source), names) or f"; built-in templates: {', '.join(names)}"
            raise RecipeError(f"recipe file {str(source)!r} not found{hint}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise RecipeError(f"recipe {path} is not a text file (not UTF-8): give a YAML recipe") from None
    except OSError as err:
        raise RecipeError(f"recipe {path} cannot be read: {err.strerror or err}") from None
    try:
        raw = load_yaml(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"recipe {path}:{where} is not valid YAML ({getattr(err, 'problem', err)})") from err
    except RecipeError as err:
        raise RecipeError(f"recipe {path}: {err}") from None
    if not isinstance(raw, dict):
        raise RecipeError(f"recipe {path}: expected a mapping of sections, got {type(raw).__name__}")
    if "_base_dir" not in raw:
        raw["_base_dir"] = str(path.parent.resolve())
    elif path.name == "recipe.yaml" and (path.parent / "data.json").is_file():
        from traincraft.run_paths import run_base_dir  # a run folder that may have moved

        raw["_base_dir"] = run_base_dir(path.parent, raw["_base_dir"], raw)
    else:
        # Only the recipe a run folder holds says where its relative paths resolve (run.py).
        raise RecipeError(f"recipe {path}: _base_dir is written by traincraft into a run folder's "
                          "recipe.yaml, not set by a recipe; remove it")
    return raw, str(path)


def template_names() -> list[str]:
    return sorted(p.stem for p in TEMPLATES.glob("*.yaml"))


def validate(raw: dict[str, Any], origin: str = "recipe") -> Recipe:
    """Validate a raw dict, turning pydantic's report into one clear line."""
    raw = dict(raw)
    base_dir = raw.pop("_base_dir", None)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise RecipeError(_first_error(err, raw, origin)) from None
    recipe._base_dir = base_dir
    return recipe


def base_dir(recipe: Recipe) -> Path | None:
    """The folder of the recipe file (relative data paths resolve against it)."""
    value = recipe._base_dir
    return Path(value) if value else None


#: Template names under the name of their copy in examples/ (examples/diabetes.yaml is the
#: regression template).
TEMPLATE_ALIASES = {"diabetes": "regression"}


def template_file(name: str) -> Path | None:
    """The built-in template called ``name`` (or one of :data:`TEMPLATE_ALIASES`); None if none."""
    name = TEMPLATE_ALIASES.get(name, name)
    path = TEMPLATES / f"{name}.yaml"
    return path if "/" not in name and "\\" not in name and path.is_file() else None


def _first_error(err: ValidationError, raw: dict[str, Any], origin: str) -> str:
    problem = err.errors()[0]
    location = [str(p) for p in problem["loc"]]
    path = ".".join(location)
    kind = problem["type"]
    if kind == "extra_forbidden":
        parent = section_model(location[:-1])
        valid = list(parent.model_fields) if parent else []
        hint = did_you_mean(location[-1], valid) or (f"; valid keys: {', '.join(valid)}" if valid else "")
        return f"recipe error at {path}: unknown key{hint}"
    if kind == "missing":
        return f"recipe error at {path}: this key is required ({origin})"
    message = problem["msg"].replace("Input should be", "must be").replace("Value error, ", "")
    return f"recipe error at {path}: {message}, got {_short(problem.get('input'))}"


def _short(value: Any, limit: int = 120) -> str:
    """A value's repr for a one-line message, cut (a huge or self-expanding value stays short)."""
    import reprlib

    shorter = reprlib.Repr()
    shorter.maxlevel, shorter.maxlist, shorter.maxdict, shorter.maxstring, shorter.maxother = 3, 6, 6, 60, 60
    text = shorter.repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def section_model(location: list[str]) -> type[BaseModel] | None:
    """The section model at ``location`` (keys from the top) in the recipe schema; None for a
    plain value or a key the schema does not have."""
    model: type[BaseModel] = Recipe
    for part in location:
        field = model.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        candidates = getattr(annotation, "__args__", (annotation,))
        sub = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if sub is None:
            return None
        model = sub
    return model


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


def changed_keys(
    old: Recipe | dict[str, Any], new: Recipe | dict[str, Any]
) -> dict[str, tuple[Any, Any]]:
    """``{"optimizer.lr": (0.001, 0.0003), ...}``: every leaf that differs between two recipes
    (``Recipe`` objects, or resolved recipes as plain data: ``recipe.model_dump(mode="json")``)."""
    changes: dict[str, tuple[Any, Any]] = {}

    def walk(a: Any, b: Any, path: str) -> None:
        if isinstance(a, dict) and isinstance(b, dict):
            for key in sorted(set(a) | set(b)):
                walk(a.get(key), b.get(key), f"{path}.{key}" if path else key)
        elif a != b:
            changes[path] = (a, b)

    def plain(recipe: Recipe | dict[str, Any]) -> Any:
        return recipe.model_dump(mode="json") if isinstance(recipe, Recipe) else recipe

    walk(plain(old), plain(new), "")
    return changes


def json_schema() -> dict[str, Any]:
    """The JSON schema of a recipe, for editors: it accepts what :func:`load_recipe` accepts, and
    types ``loss`` and ``schedule`` by their registries (names, and each name's arguments)."""
    from traincraft.recipe_schema import with_registries

    return with_registries(Recipe.model_json_schema())
