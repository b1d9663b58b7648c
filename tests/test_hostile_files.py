"""Hostile models and recipes: no pickle or shipped Python runs, no write lands outside the run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import nlptasks
from nlptasks.errors import RecipeError, UserInputError


class WritesAMarker:
    """Unpickling this calls `Path.touch(marker)`: proof that a pickle ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return Path.touch, (str(self.marker),)  # type: ignore[return-value]


def model_folder(tiny_bert: Path, folder: Path) -> Path:
    shutil.copytree(tiny_bert, folder)
    return folder


def test_a_pickled_checkpoint_is_refused_without_running_its_code(tiny_bert: Path, ner_recipe, tmp_path: Path) -> None:
    folder = model_folder(tiny_bert, tmp_path / "pickled")
    (folder / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    torch.save({"bert.embeddings.word_embeddings.weight": WritesAMarker(marker)}, folder / "pytorch_model.bin")
    with pytest.raises(Exception, match="(?i)weights.only|unpickl"):
        nlptasks.run(ner_recipe(folder, tmp_path / "run"))
    assert not marker.exists()


def test_a_model_shipping_its_own_code_is_refused_and_the_code_never_runs(
    tiny_bert: Path, ner_recipe, tmp_path: Path
) -> None:
    folder = model_folder(tiny_bert, tmp_path / "custom")
    marker = tmp_path / "pwned"
    (folder / "configuration_evil.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoConfig": "configuration_evil.EvilConfig"})
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserInputError, match="(?i)custom code|trust_remote_code"):
        nlptasks.run(ner_recipe(folder, tmp_path / "run"))
    assert not marker.exists()


@pytest.mark.parametrize("key", ["trust_remote_code", "use_safetensors"])
def test_model_args_cannot_switch_off_the_loading_safeguards(
    tiny_bert: Path, ner_recipe, tmp_path: Path, key: str
) -> None:
    recipe = {**ner_recipe(tiny_bert, tmp_path / "run"), "model_args": {key: key == "trust_remote_code"}}
    with pytest.raises(RecipeError, match=f"model_args.{key}: .*never runs Python code"):
        nlptasks.run(recipe)


@pytest.mark.parametrize("split", ["../../outside", "/tmp/outside", "..", "test/../../x"])
def test_a_split_name_cannot_become_a_path_outside_the_run(
    tiny_bert: Path, ner_recipe, tmp_path: Path, split: str
) -> None:
    recipe = {**ner_recipe(tiny_bert, tmp_path / "run"), "eval": {"splits": ["test", split]}}
    with pytest.raises(RecipeError, match="eval.splits"):
        nlptasks.run(recipe)
    assert not (tmp_path / "run").exists()


def test_recipes_load_yaml_safely(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    recipe = tmp_path / "evil.yaml"
    recipe.write_text(f"task: !!python/object/apply:os.system ['touch {marker}']\nmodel: minilm-l6\n")
    with pytest.raises(RecipeError, match="evil.yaml"):
        nlptasks.load_recipe(recipe)
    assert not marker.exists()
