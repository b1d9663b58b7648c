"""Recipes: typed YAML files with `extends:` inheritance and `key.path=value` overrides.

A recipe is validated whole before any work starts, so a typo costs a second, not a training
run. Unknown keys, wrong types and missing files are reported with the recipe file, the dotted
key path and, where one is close, a "did you mean" suggestion.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from nlptasks.config import Section, SectionT, explain
from nlptasks.errors import RecipeError, did_you_mean
from nlptasks.tasks import TASKS

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


class _RecipeLoader(yaml.SafeLoader):
    """Safe YAML where only true/false are booleans (YAML 1.2): `eval_strategy: no` means the word, not false."""


_BOOL_TAG = "tag:yaml.org,2002:bool"
_RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RecipeLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_RecipeLoader)  # noqa: S506 - a SafeLoader subclass


class DataConfig(Section):
    name: str | None = None
    """Catalog dataset name (`conll2003`, `sst2`, ...); local files below take precedence."""
    train_name: str | None = None
    """Catalog dataset whose train split replaces `name`'s (SimCSE: Wikipedia sentences, scored on STS-B)."""
    train_file: Path | None = None
    """A local file (JSON Lines, JSON, CSV/TSV, CoNLL columns) for the train split; replaces `name`'s files."""
    validation_file: Path | None = None
    """A local file for the validation split; unset with `train_file`: held out of train (`validation_fraction`)."""
    test_file: Path | None = None
    """A local file for the test split."""
    txt_format: Literal["conll", "lines"] = "conll"
    """How `.txt` files read: CoNLL columns, or `lines` of plain text, one input each (other suffixes: by suffix)."""
    text_column: str | None = None
    """Column holding the input (the task's default when unset: `text` or `tokens`)."""
    label_column: str | None = None
    """Column holding the target (the task's default when unset: `label` or `ner_tags`)."""
    columns: dict[str, str] = {}
    """Renames from the file's columns to the task's, e.g. `{sentence1: text, sentence2: text_pair}`."""
    max_train_samples: int | None = Field(default=None, gt=0)
    """Train on the first this many training examples only (quick runs)."""
    max_eval_samples: int | None = Field(default=None, gt=0)
    """Score the first this many examples of each evaluated split only."""
    max_length: int = Field(default=128, gt=8)
    """Longest input in tokens; longer inputs are split into overlapping windows, never cut."""
    stride: int = Field(default=32, ge=0)
    """Tokens shared by consecutive windows of one long input."""
    validation_fraction: float = Field(default=0.1, gt=0, lt=1)
    """Share of train held out for validation when the data has no validation split."""
    split_seed: int = 42
    """Seed of the held-out validation split (and of the packaged data's splits)."""
    bad_rows: Literal["error", "skip"] = "error"
    """A row failing the task's checks stops the run, naming file, line and field; `skip` logs it, leaves it
    out and counts it (`data_skipped_rows` in the metrics and summary). Unreadable files still stop the run."""

    @field_validator("train_file", "validation_file", "test_file")
    @classmethod
    def _file_exists(cls, path: Path | None) -> Path | None:
        if path is not None and not path.is_file():
            raise ValueError(f"file not found: {path}")
        return path


class TrainConfig(Section):
    epochs: float = Field(default=3.0, gt=0)
    max_steps: int = -1
    """Stop after this many optimizer steps; -1 means run `epochs` epochs."""
    batch_size: int = Field(default=32, gt=0)
    """Training examples per step and process."""
    eval_batch_size: int = Field(default=128, gt=0)
    """Examples per evaluation or generation batch."""
    gradient_accumulation_steps: int = Field(default=1, gt=0)
    """Batches whose gradients add up to one optimizer step."""
    learning_rate: float = Field(default=5e-5, gt=0)
    """The peak learning rate (after warm-up)."""
    head_learning_rate: float | None = Field(default=None, gt=0)
    """Peak rate of the weights a pretrained model starts without (its task head; a tagger's character CNN and
    CRF), which learn from nothing and want larger steps than the pretrained encoder; unset: `learning_rate`."""
    weight_decay: float = Field(default=0.01, ge=0)
    """Decoupled weight decay (AdamW) or L2 (Adafactor, SGD)."""
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1)
    """Share of the steps over which the rate rises from 0 to `learning_rate`."""
    lr_scheduler: str = "linear"
    """A transformers `SchedulerType`; `warmup_stable_decay` holds the rate, then decays it over `decay_ratio`."""
    decay_ratio: float = Field(default=0.1, gt=0, le=1)
    """Share of the steps `warmup_stable_decay` spends decaying the rate to 0 (cosine), at the end of training."""
    optimizer: Literal["adamw", "sgd", "adafactor"] = "adamw"
    """`sgd`: plain SGD without momentum (the classic RNN setting); `adafactor`: T5's own optimizer, each
    weight's step `learning_rate` times its RMS (for Transformers trained from scratch, whose tied embedding
    AdamW grows too slowly; T5's relative step is this at 1e-2 with the `constant` schedule up to step 10,000)."""
    max_grad_norm: float = Field(default=1.0, ge=0)
    """Gradients are rescaled to at most this norm before each step; 0 turns clipping off (the norm is still logged)."""
    seed: int = 42
    """Seed of initialisation, dropout and batch order: the same seed reproduces a run."""
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    """`auto` picks bf16 where the CPU or GPU computes it natively (faster, at bf16's rounding)."""
    group_by_length: bool = True
    """Batch inputs of similar length together so dynamic padding wastes little compute."""
    eval_strategy: Literal["epoch", "steps", "no"] = "epoch"
    """When validation is scored during training (and checkpoints saved); `no`: once, after training."""
    eval_steps: int | None = Field(default=None, gt=0)
    """With `eval_strategy: steps`: every this many optimizer steps."""
    metric_for_best_model: str | None = None
    """Validation metric that picks the checkpoint kept; the task's main metric when unset."""
    early_stopping_patience: int | None = Field(default=None, gt=0)
    """Stop after this many evaluations without a better validation metric (unset: never)."""
    logging_steps: int = Field(default=50, gt=0)
    """Log the training loss, rate and gradient norm every this many steps."""
    save_total_limit: int = Field(default=2, gt=0)
    """Checkpoints kept (the best one is always among them)."""
    resume: bool = True
    """Continue from the last checkpoint in the run directory when one exists."""
    num_workers: int = Field(default=0, ge=0)
    """Data loader worker processes (0: batches are made in the training process)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass: less memory for about a third more time."""
    compile: bool = False
    """Train and evaluate the model compiled by `torch.compile` (inductor), which fuses the element-wise work
    around the matrix products. Compiling costs a minute or more at the start and again when inputs change
    shape, so it can pay only on long runs where that work is a large share of a step (GPUs); on a small CPU,
    where the matrix products dominate, compiled training is slower than eager."""
    trim_memory_every: int | None = Field(default=10, gt=0)
    """Hand the heap's free pages back to the OS every this many steps and evaluation batches (glibc
    only; None: never). Batches of varying length fragment the heap, and RSS grows with it."""
    report_to: list[str] = ["tensorboard"]
    """Where training logs go besides `logs/metrics.csv`: the `transformers` Trainer's integrations by name
    (tensorboard, mlflow, wandb, comet_ml, ...; [] for none). TensorBoard writes to `logs/tensorboard`; MLflow
    also gets the final metrics, the recipe and the run's reports (`tracking_uri`, `experiment`)."""
    tracking_uri: str | None = None
    """MLflow's tracking store, e.g. `file:./mlruns` or `sqlite:///mlflow.db`; unset: $MLFLOW_TRACKING_URI,
    else `sqlite:///mlflow.db` in the current directory (what `mlflow ui` opens there)."""
    experiment: str | None = None
    """The MLflow experiment the run is filed under; unset: $MLFLOW_EXPERIMENT_NAME, else the task's name."""

    @field_validator("report_to")
    @classmethod
    def _known_integrations(cls, names: list[str]) -> list[str]:
        from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

        for name in names:
            if name not in INTEGRATION_TO_CALLBACK:
                known = sorted(INTEGRATION_TO_CALLBACK)
                raise ValueError(f"unknown integration '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}")
        return names

    @model_validator(mode="after")
    def _consistent(self) -> TrainConfig:
        if self.eval_strategy == "steps" and self.eval_steps is None:
            raise ValueError("eval_strategy 'steps' needs eval_steps (e.g. train.eval_steps=500)")
        if self.early_stopping_patience and self.eval_strategy == "no":
            raise ValueError("early_stopping_patience needs evaluation: set eval_strategy to 'epoch' or 'steps'")
        return self


class EvalConfig(Section):
    splits: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]] = ["validation", "test"]
    """Splits scored after training (those the data lacks are skipped); names become file names, so no paths."""
    write_predictions: bool = True
    """Write each scored split's predictions to `predictions/<split>.jsonl`."""
    before_training: bool = False
    """Also score the splits with the model as built, before any training (recorded as `<split>_untrained`)."""


class GenerationSettings(Section):
    """Decoding for tasks that generate text (summarization, translation), at evaluation and `predict`.

    Passed to `transformers`' `generate`; settings left unset keep its defaults. The length is
    always `max_new_tokens`, never the library's default total length of 20.
    """

    engine: Literal["transformers", "ctranslate2"] = "transformers"
    """What decodes: `generate` in PyTorch, or CTranslate2 (T5, Llama and other architectures its converter knows),
    faster and leaner; it decodes the final validation and test splits, `predict`, `eval` and `serve`."""
    quantize: Literal["int8"] | None = None
    """ctranslate2 engine only: run the weights in int8, quantized as they load (an int8 export already is)."""
    num_beams: int = Field(default=1, gt=0)
    """1: greedy (or sampling); more: beam search keeping this many hypotheses."""
    max_new_tokens: int = Field(default=128, gt=0)
    """Most tokens generated per input (the prompt or source not counted)."""
    min_new_tokens: int = Field(default=0, ge=0)
    """Fewest tokens generated before the end-of-sequence token may end an output."""
    do_sample: bool = False
    """Sample each token instead of taking the most likely one(s)."""
    temperature: float | None = Field(default=None, gt=0)
    """Sampling only: below 1 sharpens, above 1 flattens the distribution (unset: 1)."""
    top_k: int | None = Field(default=None, gt=0)
    """Sampling only: draw from the k most likely tokens (unset: 50)."""
    top_p: float | None = Field(default=None, gt=0, le=1)
    """Sampling only: draw from the smallest set of tokens whose probability reaches p (nucleus)."""
    length_penalty: float | None = None
    """Beam search only: exponent on length when ranking finished beams; above 0 favours longer outputs (unset: 1)."""
    no_repeat_ngram_size: int = Field(default=0, ge=0)
    """Never repeat an n-gram of this size within one output (0: no constraint)."""

    @model_validator(mode="after")
    def _consistent(self) -> GenerationSettings:
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens {self.min_new_tokens} exceeds max_new_tokens {self.max_new_tokens}")
        sampling = [name for name in ("temperature", "top_k", "top_p") if getattr(self, name) is not None]
        if sampling and not self.do_sample:
            raise ValueError(f"{', '.join(sampling)} only apply when sampling: set do_sample: true, or unset them")
        if self.quantize is not None and self.engine != "ctranslate2":
            raise ValueError("quantize only applies to the ctranslate2 engine: set engine: ctranslate2, or unset it")
        if self.length_penalty is not None and self.num_beams == 1:
            raise ValueError("length_penalty only applies to beam search: set num_beams above 1, or unset it")
        return self


class AdapterOptions(Section):
    """LoRA settings (`method: lora`); `--set adapter.r=16` overrides one."""

    r: int = Field(default=8, gt=0)
    """Rank of each low-rank update."""
    alpha: float = Field(default=16, gt=0)
    """Scale of the update (alpha / r multiplies it)."""
    dropout: float = Field(default=0.05, ge=0, lt=1)
    """Dropout on the input of each low-rank update."""
    target_modules: list[str] | None = None
    """Names (or dotted suffixes) of the linear layers adapted; unset: the architecture's projections."""
    modules_to_save: list[str] | None = None
    """Modules trained in full and saved with the adapter; unset: those the checkpoint lacked (the task head)."""


class Recipe(Section):
    """A run: which task, which model trained how, on which data, evaluated and decoded how."""

    description: str = ""
    """One line on what the recipe does (`nlptasks recipes` lists it)."""
    name: str | None = None
    """The run's name: its directory is `runs/<name>` unless `output_dir` says otherwise. Unset, it is the
    recipe's own name (`ner/minilm-lora` -> `ner-minilm-lora`, a recipe file -> its stem)."""
    task: str
    """ner | classification | qa | extractive-summarization | summarization | translation | sentence-embedding."""
    model: str
    """An alias (`minilm-l6`, `bilstm`, `t5-mini`, ...), a Hub id (`bert-base-cased`) or a local folder."""
    model_args: dict[str, Any] = {}
    """Settings of the model builder (recurrent baseline sizes, dropout, ...)."""
    method: Literal["full", "lora", "qlora"] = "full"
    """`full` trains every weight; `lora` low-rank adapters and the task head (`adapter` section);
    `qlora` the same over base weights held in 4-bit NF4 (bitsandbytes)."""
    adapter: AdapterOptions = AdapterOptions()
    """LoRA settings, read with `method: lora | qlora`."""
    task_args: dict[str, Any] = {}
    """Settings only one task understands (validated by that task)."""
    output_dir: Path | None = None
    """The run directory; unset: `runs/<name>`."""
    data: DataConfig = DataConfig()
    """Where the examples come from and how long an input may be."""
    train: TrainConfig = TrainConfig()
    """The optimizer, its schedule and the training loop (the `transformers` Trainer's settings)."""
    eval: EvalConfig = EvalConfig()
    """What is scored after training."""
    generation: GenerationSettings = GenerationSettings()
    """Decoding, for the tasks that generate text."""

    @field_validator("task")
    @classmethod
    def _known_task(cls, name: str) -> str:
        if name not in TASKS:
            raise ValueError(f"unknown task '{name}'{did_you_mean(name, TASKS)}; known: {', '.join(TASKS)}")
        return name

    @model_validator(mode="after")
    def _as_its_task_needs(self) -> Recipe:
        TASKS[self.task].check_recipe(self)
        return self

    @property
    def run_dir(self) -> Path:
        """Where this recipe's run lives: `output_dir`, else `runs/<name>`, else task, model and method (a dict)."""
        if self.output_dir is not None:
            return self.output_dir
        if self.name:
            return Path("runs") / self.name
        method = [self.method] if self.method != "full" else []
        return Path("runs") / "-".join([self.task, self.model.replace("/", "_"), *method])


RESUMABLE_SETTINGS = (
    "description",
    "name",
    "output_dir",
    "train.epochs",
    "train.max_steps",
    "train.eval_strategy",
    "train.eval_steps",
    "train.eval_batch_size",
    "train.metric_for_best_model",
    "train.early_stopping_patience",
    "train.logging_steps",
    "train.save_total_limit",
    "train.resume",
    "train.num_workers",
    "train.trim_memory_every",
    "train.report_to",
    "train.tracking_uri",
    "train.experiment",
    "train.gradient_checkpointing",
    "train.compile",
    "data.max_eval_samples",
    "eval",
    "generation",
)
"""Settings a run may continue under when they change: how long it trains, how it is evaluated, logged and
decoded, how its memory is managed and whether it is compiled. Any other change (model, method, adapter,
data, labels, optimizer, precision, seed) would resume one run's checkpoint into another."""


def changed_settings(stored: dict[str, Any], recipe: Recipe) -> list[tuple[str, Any, Any]]:
    """(dotted key, stored value, new value) for each setting outside `RESUMABLE_SETTINGS` that differs.

    `stored` is a run's `recipe.yaml` as read, so a run written by an older schema compares too.
    """
    before, after = flat_settings(stored), flat_settings(recipe.model_dump(mode="json"))
    keys = sorted(set(before) | set(after))
    return [(k, before.get(k), after.get(k)) for k in keys if not _resumable(k) and before.get(k) != after.get(k)]


def _resumable(key: str) -> bool:
    return any(key == setting or key.startswith(f"{setting}.") for setting in RESUMABLE_SETTINGS)


def flat_settings(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A recipe's settings by dotted key; the free-form sections (`model_args`, `task_args`, columns) stay whole."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value and key not in ("model_args", "task_args", "columns"):
            flat.update(flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def find_recipe(name_or_path: str | Path) -> Path:
    """A recipe file from a path, or a shipped recipe name like `ner/minilm`."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = RECIPES_DIR / (str(name_or_path) if str(name_or_path).endswith(".yaml") else f"{name_or_path}.yaml")
    if shipped.is_file():
        return shipped
    names = [str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml")]
    raise RecipeError(f"recipe not found: {name_or_path}{did_you_mean(str(name_or_path), names)}")


def recipe_name(path: Path) -> str:
    """A shipped recipe's path under `recipes/` with dashes (`ner/minilm-lora` -> `ner-minilm-lora`); else the stem."""
    resolved = path.resolve()
    if resolved.is_relative_to(RECIPES_DIR):
        return "-".join(resolved.relative_to(RECIPES_DIR).with_suffix("").parts)
    return path.stem


def shipped_recipes() -> list[tuple[str, str]]:
    """(name, one-line description) of every recipe under `recipes/`."""
    rows = []
    for path in sorted(p for p in RECIPES_DIR.rglob("*.yaml") if not p.name.startswith("_")):
        raw = _read_yaml(path)
        name = str(path.relative_to(RECIPES_DIR).with_suffix(""))
        rows.append((name, str(raw.get("description", "")).strip().splitlines()[0] if raw.get("description") else ""))
    return rows


def load_recipe(
    source: str | Path | dict[str, Any],
    overrides: dict[str, Any] | list[str] | None = None,
    schema: type[SectionT] = Recipe,  # type: ignore[assignment]
) -> SectionT:
    """Read, merge `extends`, apply overrides, and validate a recipe (a training `Recipe` unless `schema` says).

    `overrides` is either `{"train.epochs": 1}` or CLI strings `["train.epochs=1"]`.
    """
    if isinstance(source, dict):
        raw, origin = copy.deepcopy(source), "<dict>"
    else:
        path = find_recipe(source)
        raw, origin = _resolve_extends(path, seen=()), str(path)
        if schema is Recipe:
            raw.setdefault("name", recipe_name(path))
    for key, value in parse_overrides(overrides).items():
        set_dotted(raw, key, value)
    try:
        return schema.model_validate(raw)
    except ValidationError as err:
        header = f"{origin}: invalid recipe" + (" (after the --set overrides)" if overrides else "")
        raise RecipeError(explain(err, header, schema)) from None


def dump_recipe(recipe: Section) -> str:
    return yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = _load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise RecipeError(f"{where}: malformed YAML: {getattr(err, 'problem', err)}") from None
    except UnicodeDecodeError as err:
        raise RecipeError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of keys, got {type(data).__name__}")
    return data


def _resolve_extends(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    """Load a recipe, deep-merged over what it `extends`: one base or a list of fragments, merged in order.

    Paths are relative to the recipe. A base's `name` is not inherited: a run is named after the
    recipe asked for.
    """
    path = path.resolve()
    if path in seen:
        raise RecipeError(f"{path}: `extends` forms a cycle: {' -> '.join(map(str, seen + (path,)))}")
    raw = _read_yaml(path)
    bases = raw.pop("extends", None)
    if bases is None:
        return raw
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise RecipeError(f"{path}: extends: a recipe file or a list of them, got {bases!r}")
    merged: dict[str, Any] = {}
    for base_name in bases:
        base_path = path.parent / base_name
        if not base_path.is_file():
            raise RecipeError(f"{path}: extends: file not found: {base_path}")
        base = _resolve_extends(base_path, seen + (path,))
        base.pop("name", None)
        merged = _deep_merge(merged, base)
    return _deep_merge(merged, raw)


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_overrides(overrides: dict[str, Any] | list[str] | None) -> dict[str, Any]:
    if not overrides:
        return {}
    if isinstance(overrides, dict):
        return dict(overrides)
    parsed = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. train.epochs=1")
        parsed[key.strip()] = _load_yaml(value) if value.strip() else None
    return parsed


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested mapping, making sections on the way."""
    node = raw
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f"--set {dotted}: '{part}' is a value, not a section")
        node = child
    node[leaf] = value
