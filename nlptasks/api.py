"""The Python API; the CLI is a thin layer over these functions.

import nlptasks
result = nlptasks.run("ner/minilm", {"train.epochs": 1}, model="minilm-l6")
predictor = nlptasks.load(result.run_dir)
predictor.predict("Angela Merkel visited Paris.")
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from peft import PeftConfig

from nlptasks import adapters, catalog, engines, models, sharding, training
from nlptasks.config import annotated, validate_section
from nlptasks.data import load_splits
from nlptasks.engines import ctranslate2, onnx
from nlptasks.errors import DataError, UserInputError
from nlptasks.modelcard import write_model_card
from nlptasks.predict import Predictor, accepted_inputs, model_batches, read_texts
from nlptasks.recipe import (
    DataConfig,
    Recipe,
    dump_recipe,
    load_recipe,
    parse_overrides,
    set_dotted,
)
from nlptasks.rundir import RunDir, folder_megabytes, publish_folder, write_atomic, write_embeddings
from nlptasks.tasks import task_for
from nlptasks.tasks.base import Task
from nlptasks.training import RunResult
from nlptasks.tune import TuneResult

log = logging.getLogger("nlptasks")
EXPORT_FORMATS = ("transformers", "onnx", "ctranslate2")
QUANTIZATIONS = {"onnx": onnx.QUANTIZATIONS, "ctranslate2": ctranslate2.QUANTIZATIONS}


def run(
    recipe: str | Path | dict[str, Any] | Recipe,
    overrides: dict[str, Any] | None = None,
    overwrite: bool = False,
    **settings: Any,
) -> RunResult:
    """Train and evaluate a recipe (a shipped name, a path, a dict or a Recipe).

    `overrides` uses dotted keys (`{"train.epochs": 1}`); keyword settings use `__` for the dot
    (`train__epochs=1`), so both spellings of the CLI's `--set` are available. A run directory
    holding another recipe's run is refused, naming what differs, unless `overwrite`.
    """
    merged = {**(overrides or {}), **{key.replace("__", "."): value for key, value in settings.items()}}
    if isinstance(recipe, Recipe):
        recipe = recipe.model_dump(mode="json")
    return training.run(load_recipe(recipe, merged), overwrite=overwrite)


def validate(recipe: str | Path | dict[str, Any], overrides: dict[str, Any] | list[str] | None = None) -> Recipe:
    """Check a recipe as `run` would before any work (schema, task options, model and dataset names)."""
    loaded = load_recipe(recipe, overrides)
    training.checked_task(loaded)
    return loaded


def inspect(
    recipe: str | Path | dict[str, Any],
    overrides: dict[str, Any] | list[str] | None = None,
    output: str | Path | None = None,
    timed_steps: int = 0,
) -> dict[str, Any]:
    """A report on the recipe's data as `run` would read it (`inspection.py`), never training or writing a run.

    With `output`, also `report.json`, `report.md` and length histograms there; `timed_steps` > 0
    times that many training steps in a scratch folder to estimate an epoch.
    """
    from nlptasks.inspection import inspect_data, write_report

    loaded = validate(recipe, overrides)
    report = inspect_data(loaded, timed_steps)
    if output is not None:
        write_report(report, Path(output))
    return report


def tune(
    recipe: str | Path | dict[str, Any],
    trials: int,
    output: str | Path,
    space: str | Path | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
    pruner: str = "median",
    workers: int = 1,
) -> TuneResult:
    """Search the recipe's hyperparameters with Optuna (`tune.py`): `trials` run directories under `output`,
    the best recipe as `output/best.yaml`. `space` is a YAML file changing the default search space."""
    from nlptasks.tune import read_space
    from nlptasks.tune import tune as search

    loaded = load_recipe(recipe, overrides)
    if trials < 1 or workers < 1:
        raise UserInputError(f"--trials {trials} --workers {workers}: both must be at least 1")
    return search(loaded, trials, Path(output), read_space(Path(space), loaded) if space else None, pruner, workers)


def describe(recipe: str | Path | dict[str, Any], overrides: dict[str, Any] | list[str] | None = None) -> str:
    """The resolved recipe as YAML, each field with its documentation; `task_args`, and a built family's
    `model_args`, with their defaults."""
    loaded = load_recipe(recipe, overrides)
    expand = {"task_args": task_for(loaded).options}
    if (family := catalog.model_family(loaded.model)) and (
        options := family.checked_options(loaded.model, loaded.model_args)
    ):
        expand["model_args"] = options
    return annotated(loaded, expand=expand)


def load(run_dir: str | Path, **options: Any) -> Predictor:
    """A predictor for a finished run directory (`generation={"num_beams": 1}` changes its decoding)."""
    return Predictor(run_dir, **options)


def evaluate(
    run_dir: str | Path,
    split: str = "test",
    file: str | Path | None = None,
    generation: dict[str, Any] | None = None,
    overrides: dict[str, Any] | list[str] | None = None,
) -> dict[str, float]:
    """Metrics of a finished run on one of its recipe's splits, or on a labelled file (as `test`).

    A file is read with the run's own data settings (columns, `.txt` format, bad rows, windows), all
    its rows. `overrides` change `data.*` settings (`{"data.columns": {"review": "text"}}` for a file
    with other column names) or `generation.*` ones; `generation` decodes with other settings than the
    recipe's (`{"length_penalty": 2.0}`): tune them on validation without retraining. Under several
    processes (torchrun, accelerate launch) each decodes a contiguous shard; all return the metrics of one.
    """
    data_settings, decoding = inference_overrides(overrides)
    predictor = Predictor(run_dir, generation={**decoding, **(generation or {})} or None)
    data = _evaluation_data(predictor.recipe.data, file, data_settings)
    if file is not None:
        split = "test"
    with sharding.main_process_first():
        splits = load_splits(data, predictor.task, label_names=predictor.label_names_for_files())
    if split not in splits:
        raise UserInputError(f"split '{split}' is not in the run's data; it has {sorted(splits)}")
    if predictor.untrained is None and (
        unseen := training.unseen_labels(predictor.task, splits[split], predictor.id2label.values())
    ):
        raise DataError(f"{file or split}: labels the model was never trained on: {unseen}")
    return sharding.score(predictor, splits[split])


def inference_overrides(overrides: dict[str, Any] | list[str] | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """`--set` for `eval` and `predict`, split into data and generation settings: the rest is fixed by training."""
    data: dict[str, Any] = {}
    decoding: dict[str, Any] = {}
    for key, value in parse_overrides(overrides).items():
        section, _, rest = key.partition(".")
        if section not in ("data", "generation") or not rest:
            raise UserInputError(
                f"--set {key}: eval and predict take data.* and generation.* settings; the others are the trained run's"
            )
        set_dotted(data if section == "data" else decoding, rest, value)
    return data, decoding


def _evaluation_data(data: DataConfig, file: str | Path | None, overrides: dict[str, Any]) -> DataConfig:
    """The run's data settings, pointed at a labelled `file` (every row of it) and changed by `overrides`."""
    settings = data.model_dump()
    if file is not None:
        sources = ("name", "train_name", "train_file", "validation_file", "max_eval_samples")
        settings.update({**dict.fromkeys(sources), "test_file": Path(file)})
    for key, value in overrides.items():
        set_dotted(settings, key, value)
    return validate_section(DataConfig, settings, "data")


def export(
    run_dir: str | Path,
    output: str | Path,
    merge: bool = False,
    format: str = "transformers",
    quantize: str | None = None,
    push_to_hub: str | None = None,
) -> Path:
    """A run's model as one standalone folder that `load`, `predict`, `eval` and `serve` read.

    `transformers`: an adapter run exports as its adapter unless `merge`: then LoRA is folded into
    the base weights (a QLoRA base dequantized first) and the folder holds a plain model for bare
    `transformers`, with the run's recipe marked `method: full`. A fully fine-tuned run exports as it is.
    `onnx`: the merged model as an ONNX Runtime graph (an encoder task's); `ctranslate2`: the merged model
    converted for CTranslate2 (a generating task's); `quantize="int8"` stores either's weights as int8.
    Every export holds a model card (`README.md`). `push_to_hub` (a repo id) then uploads the folder to the Hub.
    """
    folder = _export(run_dir, Path(output), merge, format, quantize)
    if push_to_hub:
        _push(folder, push_to_hub)
    return folder


def _export(run_dir: str | Path, output: Path, merge: bool, format: str, quantize: str | None) -> Path:
    source = RunDir.read(run_dir)
    if not source.model.is_dir():
        raise UserInputError(f"{run_dir}: no model to export (not a finished run, or an untrained method)")
    if format not in EXPORT_FORMATS:
        raise UserInputError(f"--format {format}: choose one of {', '.join(EXPORT_FORMATS)}")
    if quantize is not None and quantize not in QUANTIZATIONS.get(format, ()):
        offered = "; ".join(f"--format {name}: {', '.join(values)}" for name, values in QUANTIZATIONS.items())
        raise UserInputError(f"--quantize {quantize}: not offered for --format {format} ({offered})")
    if engines.export_format(source.model):
        raise UserInputError(
            f"{source.root}: already an export ({engines.export_format(source.model)}); export its run"
        )
    if format == "onnx":
        return _export_onnx(source, output, quantize)
    if format == "ctranslate2":
        return _export_ctranslate2(source, output, quantize)
    merging = merge and adapters.is_adapter_folder(source.model)
    predictor = Predictor(run_dir) if merging else None  # only a merge needs the weights in memory
    recipe = load_recipe(source.recipe)
    if merging:
        recipe = recipe.model_copy(update={"method": "full"})

    def save(folder: Path) -> None:
        if predictor is not None:
            adapters.merged(predictor.model).save_pretrained(folder)
            predictor.tokenizer.save_pretrained(folder)
        else:
            shutil.copytree(source.model, folder, dirs_exist_ok=True)
        write_atomic(folder / "recipe.yaml", dump_recipe(recipe))
        _write_card(folder, source)

    publish_folder(output, save)
    return output


def _push(folder: Path, repo_id: str) -> None:
    """Upload an export (model, tokenizer, card) to a Hub model repo, created if absent."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, exist_ok=True)
        commit = api.upload_folder(
            folder_path=folder, repo_id=repo_id, commit_message=f"nlptasks export of {folder.name}"
        )
    except Exception as err:  # noqa: BLE001 - offline mode, no token, refused connection, HTTP errors: all a failed push
        raise UserInputError(
            f"--push-to-hub {repo_id}: could not push to {api.endpoint} ({type(err).__name__}: {err}). "
            f"The export is kept at {folder}; push it later with: hf upload {repo_id} {folder}"
        ) from None
    log.info("pushed %s to %s", folder, commit.commit_url)


def _export_onnx(source: RunDir, output: Path, quantize: str | None) -> Path:
    if task_for(load_recipe(source.recipe)).generates:
        raise UserInputError(
            f"{source.root}: a generating task; ONNX export takes a trained run of an encoder task "
            "(a generating task exports with --format ctranslate2)"
        )
    if catalog.family_of(source.model) == "recurrent":
        raise UserInputError(
            f"{source.root}: a recurrent baseline; its packed sequences and CRF search do not trace to an ONNX graph. "
            "Serve or predict with the run itself"
        )
    recipe = load_recipe(source.recipe)
    task = task_for(recipe)
    model, tokenizer = models.load(source.model, task, quantized=recipe.method == "qlora")
    if getattr(model, "scores_are_paths", False):
        raise UserInputError(
            f"{source.root}: a tagger with a CRF, whose Viterbi search does not trace to an ONNX graph. "
            "Serve or predict with the run itself"
        )
    model = adapters.merged(model).eval()
    batch = _example_batch(task, tokenizer, model)
    outputs = task.model_outputs or task.output_names
    recipe = recipe.model_copy(update={"method": "full"})

    def save(folder: Path) -> None:
        onnx.export(model, batch, outputs, folder)
        if quantize == "int8":
            onnx.quantize_int8(folder)
        model.config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        manifest = engines.write_manifest(folder, "onnx", source.root, quantize, outputs=list(outputs))
        write_atomic(folder / "recipe.yaml", dump_recipe(recipe))
        _write_card(folder, source, manifest)

    log.info("exporting %s to ONNX%s", source.root, f" ({quantize})" if quantize else "")
    publish_folder(output, save)
    return output


def _export_ctranslate2(source: RunDir, output: Path, quantize: str | None) -> Path:
    recipe = load_recipe(source.recipe)
    task = task_for(recipe)
    if not task.generates:
        raise UserInputError(
            f"{source.root}: a {recipe.task} run; CTranslate2 export takes a trained run of a generating task "
            "(summarization, translation; an encoder task exports with --format onnx)"
        )
    model, tokenizer = models.load(source.model, task, quantized=recipe.method == "qlora")
    engine = recipe.generation.model_copy(update={"engine": "ctranslate2"})
    recipe = recipe.model_copy(update={"method": "full", "generation": engine})

    def save(folder: Path) -> None:
        ctranslate2.convert(model, tokenizer, folder, quantize)
        model.config.save_pretrained(folder)
        model.generation_config.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        manifest = engines.write_manifest(folder, "ctranslate2", source.root, quantize)
        write_atomic(folder / "recipe.yaml", dump_recipe(recipe))
        _write_card(folder, source, manifest)

    log.info("exporting %s to CTranslate2%s", source.root, f" ({quantize})" if quantize else "")
    publish_folder(output, save)
    return output


def _write_card(folder: Path, source: RunDir, export: dict[str, Any] | None = None) -> None:
    """The export's model card: the run it came from, as trained (LoRA, not the `full` a merged export loads as),
    and its scores."""
    recipe = load_recipe(source.recipe)
    task = task_for(recipe)
    task.use_model_family(catalog.family_of(folder))
    write_model_card(folder, recipe, task, source.read_metrics(), export)


def _example_batch(task: Task, tokenizer: Any, model: Any) -> dict[str, Any]:
    """Two inputs of different lengths as the built (unwrapped) model sees them: the shapes the exporter traces."""
    fields = task.input_fields
    texts = ["A short example.", "A longer example sentence. It has a few more words, and a second sentence."]
    inputs = texts if len(fields) == 1 else [dict.fromkeys(fields, text) for text in texts]
    label2id = {label: i for i, label in model.config.id2label.items()}
    features = task.featurize(task.examples_from_texts(inputs), tokenizer, label2id)
    return next(model_batches(features, task, tokenizer, accepted_inputs(model), batch_size=len(inputs)))


def list_adapters(root: str | Path = "runs") -> list[dict[str, Any]]:
    """Adapter runs under `root`, one record each: where, task, method, base model, rank, size on disk.

    Runs with the same task, labels and base can share one loaded base: `Predictor.add_adapter`.
    """
    found = []
    for config_file in sorted(Path(root).glob("**/adapter_config.json")):
        folder = config_file.parent
        run = RunDir(folder.parent if folder.name == "model" else folder)
        if not run.recipe.is_file() or run.model != folder:
            continue
        recipe = load_recipe(run.recipe)
        adapter = PeftConfig.from_pretrained(folder)
        found.append(
            {
                "run_dir": str(run.root),
                "task": recipe.task,
                "method": recipe.method,
                "base_model": adapter.base_model_name_or_path,
                "r": adapter.r,
                "megabytes": round(folder_megabytes(folder), 2),
            }
        )
    return found


def embed(
    run_dir: str | Path, file: str | Path, output: str | Path, batch_size: int = 64, chunk_size: int = 1024
) -> int:
    """Embeddings of a file's texts (one a line, or JSON lines with `text`) from a sentence-embedding run.

    `.npy` holds a float32 matrix, a row per line in file order; `.parquet` holds `text` and
    `embedding` columns, written a chunk at a time. A blank line's row is the zero vector (every
    other row has unit length), so row N is always line N. Returns the number of rows. Under several
    processes (torchrun, accelerate launch) each embeds every Nth chunk of `chunk_size` lines and process 0
    writes `output` (the others return 0).
    """
    predictor = Predictor(run_dir, batch_size=batch_size, chunk_size=chunk_size)
    if predictor.recipe.task != "sentence-embedding":
        raise UserInputError(f"{run_dir}: a {predictor.recipe.task} run; embed needs a sentence-embedding run")
    source, target = Path(file), Path(output)
    if not source.is_file():
        raise UserInputError(f"--file: file not found: {source}")
    if target.suffix not in (".npy", ".parquet"):
        raise UserInputError(f"--output: {target} must end in .npy or .parquet")
    with source.open(encoding="utf-8") as lines:
        return sharding.shared_predictions(
            predictor,
            read_texts(lines, str(source)),
            target,
            lambda predictions: write_embeddings(((p["text"], p["embedding"]) for p in predictions), target),
        )
