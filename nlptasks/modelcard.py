"""The Hub's model card (`README.md`) for every saved model and export: metadata the Hub indexes and
searches (`library_name`, `pipeline_tag`, `base_model`, `datasets`, `license`, `model-index` with the
run's scores), then what a reader needs before using it: what it does, how it was trained, its results,
its limits, and how to load it with and without nlptasks.

Built with `huggingface_hub`'s card classes, so the metadata is what the Hub parses, not a template's guess.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from nlptasks import catalog
from nlptasks.recipe import Recipe, dump_recipe
from nlptasks.rundir import write_atomic
from nlptasks.tasks import headline_scores
from nlptasks.tasks.base import Task
from nlptasks.training.settings import resolve_precision

CARD_FILE = "README.md"
SHOWN_LABELS = 40
"""Labels listed by name in a card; a longer label set is counted instead."""


def write_model_card(
    folder: Path, recipe: Recipe, task: Task, metrics: dict[str, dict[str, float]], export: dict[str, Any] | None = None
) -> Path:
    """`folder/README.md` for the model saved there (`export`: the export's manifest, for an export's card)."""
    path = folder / CARD_FILE
    write_atomic(path, str(model_card(folder, recipe, task, metrics, export)))
    return path


def model_card(
    folder: Path, recipe: Recipe, task: Task, metrics: dict[str, dict[str, float]], export: dict[str, Any] | None = None
) -> ModelCard:
    saved = _SavedModel(folder, recipe, export)
    data = _card_data(saved, task, metrics)
    sections = [
        f"# {saved.name}",
        _overview(saved, task, data),
        _results(saved, metrics),
        _training(saved, metrics),
        _limits(saved, task),
        _usage(saved, task),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(section for section in sections if section) + "\n")


def _card_data(saved: _SavedModel, task: Task, metrics: dict[str, dict[str, float]]) -> ModelCardData:
    """The YAML metadata: `model-index` holds each evaluated split's headline scores, as in `summary.md`."""
    recipe = saved.recipe
    dataset_ids = [_dataset_id(name) for name in (recipe.data.name, recipe.data.train_name) if name]
    dataset_type = next(iter(dataset_ids), None) or _local_data_name(recipe)
    results = [
        EvalResult(
            task_type=task.pipeline_tag,
            dataset_type=dataset_type,
            dataset_name=recipe.data.name or dataset_type,
            dataset_split=split,
            metric_type=metric,
            metric_name=metric,
            metric_value=value,
        )
        for split, metric, value in _scores(saved, metrics)
    ]
    return ModelCardData(
        model_name=saved.name if results else None,
        eval_results=results or None,
        library_name=saved.library,
        pipeline_tag=task.pipeline_tag,
        base_model=saved.base_model,
        license=saved.license,
        datasets=[dataset for dataset in dataset_ids if dataset] or None,
        tags=["nlptasks", recipe.task, recipe.method, *([saved.export["format"]] if saved.export else [])],
    )


class _SavedModel:
    """What a card says about the saved folder: its name, format, base weights and tokenizer."""

    def __init__(self, folder: Path, recipe: Recipe, export: dict[str, Any] | None) -> None:
        self.folder = folder
        self.recipe = recipe
        self.export = export
        self.name = folder.parent.name if folder.name == "model" else folder.name
        self.base_model, self.license = catalog.base_model(recipe.model)
        self.family = catalog.model_family(recipe.model)
        self.adapter = (folder / "adapter_config.json").is_file()
        self.config = _json(folder / "config.json")
        self.tokenizer = _json(folder / "tokenizer_config.json")

    @property
    def format(self) -> str:
        return self.export["format"] if self.export else "transformers"

    @property
    def library(self) -> str:
        """The library that loads the folder as it is."""
        if self.format != "transformers":
            return self.format
        if self.adapter:
            return "peft"
        if (self.folder / "modules.json").is_file():
            return "sentence-transformers"
        return "transformers" if self.native else "nlptasks"

    @property
    def native(self) -> bool:
        """Whether bare `transformers` knows the architecture (not the toolkit's own: recurrent baselines, taggers)."""
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        return self.config.get("model_type") in CONFIG_MAPPING_NAMES


def _overview(saved: _SavedModel, task: Task, data: ModelCardData) -> str:
    recipe = saved.recipe
    base = f"[{saved.base_model}](https://huggingface.co/{saved.base_model})" if saved.base_model else recipe.model
    trained = {
        "full": "every weight fine-tuned",
        "lora": "LoRA adapters and the task head trained",
        "qlora": "LoRA adapters trained over a 4-bit NF4 base (QLoRA)",
    }[recipe.method]
    lines = [
        recipe.description,
        "",
        f"A **{recipe.task}** model ({task.pipeline_tag}) from {base}, {trained}, trained with "
        f"[nlptasks](https://github.com/nlptasks/nlptasks) on {_data_description(recipe)}.",
    ]
    if saved.export:
        quantized = f", weights quantized to {saved.export['quantize']}" if saved.export.get("quantize") else ""
        lines.append(f"This folder is its **{saved.format}** export{quantized}, for inference only.")
    if labels := list((saved.config.get("id2label") or {}).values()):
        shown = ", ".join(f"`{label}`" for label in labels[:SHOWN_LABELS])
        lines += ["", f"Labels ({len(labels)}): {shown}{', ...' if len(labels) > SHOWN_LABELS else ''}"]
    if data.license:
        lines += ["", f"License: {data.license}, the base weights' license."]
    return "\n".join(lines).strip()


def _scores(saved: _SavedModel, metrics: dict[str, dict[str, float]]) -> list[tuple[str, str, float]]:
    """(split, metric, value) of each evaluated split's headline metrics, as `summary.md` shows them."""
    return [
        (split, metric, value)
        for split, scores in metrics.items()
        if split in saved.recipe.eval.splits
        for metric, value in headline_scores(saved.recipe.task, scores).items()
    ]


def _results(saved: _SavedModel, metrics: dict[str, dict[str, float]]) -> str:
    rows = [f"| {split} | {metric} | {value:.4f} |" for split, metric, value in _scores(saved, metrics)]
    if not rows:
        return ""
    note = (
        "\n\nScores of the run this export came from; `nlptasks eval EXPORT --split test` measures the export itself."
        if saved.export
        else ""
    )
    return "## Results\n\n| split | metric | value |\n|---|---|---|\n" + "\n".join(rows) + note


def _training(saved: _SavedModel, metrics: dict[str, dict[str, float]]) -> str:
    recipe = saved.recipe
    train = metrics.get("train", {})
    facts = [
        f"- {recipe.train.epochs:g} epochs at batch size {recipe.train.batch_size} "
        f"(× {recipe.train.gradient_accumulation_steps} accumulated), learning rate {recipe.train.learning_rate:g}, "
        f"{recipe.train.optimizer}, precision {resolve_precision(recipe.train.precision)}, seed {recipe.train.seed}",
    ]
    if "train_runtime" in train:
        peak = train.get("peak_rss_megabytes", 0)
        facts.append(f"- {train['train_runtime']:.0f} s of training, peak memory {peak:.0f} MB")
    if "trainable_parameters" in train:
        facts.append(
            f"- {int(train['trainable_parameters']):,} of {int(train.get('total_parameters', 0)):,} parameters trained"
        )
    return (
        "## Training\n\n"
        + "\n".join(facts)
        + "\n\nThe run's resolved recipe (`nlptasks run` on it reruns the run):\n\n"
        f"```yaml\n{dump_recipe(recipe)}```"
    )


def _limits(saved: _SavedModel, task: Task) -> str:
    recipe = saved.recipe
    limits = [
        f"- Trained and scored on {_data_description(recipe)} only: expect lower scores on text unlike it.",
        f"- Inputs are read up to {recipe.data.max_length} tokens; `nlptasks` splits longer ones into windows "
        f"overlapping by {recipe.data.stride} tokens, while bare `transformers` truncates them.",
    ]
    if saved.tokenizer.get("do_lower_case"):
        limits.append("- The vocabulary is uncased: capitalisation, a strong cue for names, is lost before the model.")
    if saved.family is not None and saved.family.fresh:
        limits.append(f"- Built with {saved.family.fresh}: it knows only what its training data taught it.")
    if task.generates:
        limits.append(
            "- Generated text can be fluent and wrong; it is scored by overlap with references, not checked for facts."
        )
    if calibration := saved.config.get("task_calibration"):
        settings = ", ".join(f"{key} {value:.4g}" for key, value in calibration.items() if isinstance(value, float))
        limits.append(f"- Decision settings fitted on validation ({settings}) are applied by `nlptasks` only.")
    if saved.export and saved.export.get("quantize"):
        limits.append("- Quantized weights can change a few outputs; measure the export on your data.")
    return "## Limits\n\n" + "\n".join(limits)


def _usage(saved: _SavedModel, task: Task) -> str:
    """Loading code, each block naming the folder once (`path = ...`): a reader swaps in the Hub repo id."""
    blocks = [
        (
            "With nlptasks (windows, calibration and decoding as trained)",
            f"import nlptasks\n\npredictor = nlptasks.load(path)\npredictor.predict({_example_input(task)!r})",
        )
    ]
    if other := _bare_loading(saved, task):
        blocks.append(other)
    return "## Use\n\n" + "\n\n".join(
        f'{title}:\n\n```python\npath = "{saved.name}"  # this folder, or its Hub repo id\n{code}\n```'
        for title, code in blocks
    )


def _bare_loading(saved: _SavedModel, task: Task) -> tuple[str, str] | None:
    """How the library in `library_name` loads the folder without nlptasks, where one can."""
    text = _example_text(task)
    if saved.format == "onnx":
        return (
            "With ONNX Runtime",
            "import onnxruntime\nfrom transformers import AutoTokenizer\n\n"
            'session = onnxruntime.InferenceSession(f"{path}/model.onnx")\n'
            "tokenizer = AutoTokenizer.from_pretrained(path)\n"
            f'encoded = tokenizer(["{text}"], return_tensors="np")\n'
            "outputs = session.run(None, {i.name: encoded[i.name] for i in session.get_inputs()})",
        )
    if saved.format == "ctranslate2":
        engine = "Translator" if saved.config.get("is_encoder_decoder") else "Generator"
        return (
            "With CTranslate2 (the converted weights are in `ctranslate2/`)",
            f'import ctranslate2\n\nmodel = ctranslate2.{engine}(f"{{path}}/ctranslate2")',
        )
    if saved.library == "sentence-transformers":
        return (
            "With sentence-transformers",
            "from sentence_transformers import SentenceTransformer\n\nmodel = SentenceTransformer(path)\n"
            f'embeddings = model.encode(["{text}"])',
        )
    if saved.library == "peft":
        base = (
            saved.base_model
            or json.loads((saved.folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        )
        return (
            "With peft, the adapter over its base",
            f"from peft import PeftModel\nfrom transformers import AutoConfig, {task.auto_model}\n\n"
            "config = AutoConfig.from_pretrained(path)  # the base's, with this model's labels\n"
            f'model = PeftModel.from_pretrained({task.auto_model}.from_pretrained("{base}", config=config), path)',
        )
    if saved.library == "transformers":
        return (
            "With bare transformers",
            f"from transformers import AutoTokenizer, {task.auto_model}\n\n"
            f"tokenizer = AutoTokenizer.from_pretrained(path)\nmodel = {task.auto_model}.from_pretrained(path)",
        )
    return None


def _example_input(task: Task) -> Any:
    text = _example_text(task)
    return text if len(task.input_fields) == 1 else dict.fromkeys(task.input_fields, text)


def _example_text(task: Task) -> str:
    return "Angela Merkel visited Paris." if task.pipeline_tag == "token-classification" else "An example input."


def _data_description(recipe: Recipe) -> str:
    names = [f"`{name}`" for name in (recipe.data.train_name or recipe.data.name,) if name]
    files = [f"`{Path(file).name}`" for file in (recipe.data.train_file,) if file]
    return " and ".join(names + files) or "its own data"


def _dataset_id(name: str) -> str | None:
    """A data name's Hub dataset id: a catalog name's recorded one, a Hub id as it is."""
    if name in catalog.DATASETS:
        return catalog.DATASETS[name].hub_id or None
    return name if "/" in name else None


def _local_data_name(recipe: Recipe) -> str:
    """Local files by their folder's name (`data/reviews/train.jsonl` -> reviews)."""
    file = recipe.data.train_file or recipe.data.test_file
    return Path(file).resolve().parent.name if file else recipe.data.name or "custom"


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}
