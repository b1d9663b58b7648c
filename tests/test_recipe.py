"""Recipes: every shipped one validates; mistakes fail before any work, naming file and key."""

from __future__ import annotations

from pathlib import Path

import pytest

from nlptasks import catalog
from nlptasks.api import describe
from nlptasks.cli import main
from nlptasks.errors import RecipeError
from nlptasks.rag.settings import RagRecipe
from nlptasks.recipe import RECIPES_DIR, Recipe, load_recipe, shipped_recipes
from nlptasks.tasks import task_for

TRAINING_RECIPES = [name for name, _ in shipped_recipes() if not name.startswith("rag/")]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", [name for name, _ in shipped_recipes()])
def test_every_shipped_recipe_validates_and_has_a_description(name: str) -> None:
    recipe = load_recipe(name, schema=RagRecipe if name.startswith("rag/") else Recipe)
    assert recipe.description, f"{name} needs a one-line description"


def test_the_contract_keys_override_in_every_recipe() -> None:
    for name in TRAINING_RECIPES:
        recipe = load_recipe(
            name,
            [
                "model=some/model",
                "output_dir=/tmp/x",
                "train.epochs=1",
                "train.max_steps=5",
                "train.batch_size=4",
                "train.learning_rate=1e-3",
                "train.seed=7",
                "data.max_train_samples=10",
                "data.max_eval_samples=5",
            ],
        )
        assert (recipe.model, recipe.train.epochs, recipe.train.max_steps, recipe.train.seed) == ("some/model", 1, 5, 7)
        assert recipe.train.learning_rate == 1e-3 and recipe.data.max_train_samples == 10


def test_extends_deep_merges_over_the_base(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "task: ner\nmodel: minilm-l6\ntrain: {epochs: 5, batch_size: 8}\n")
    child = write(tmp_path / "child.yaml", "extends: base.yaml\ntrain: {epochs: 1}\n")
    recipe = load_recipe(child)
    assert (recipe.train.epochs, recipe.train.batch_size, recipe.model) == (1, 8, "minilm-l6")


def test_shipped_ner_recipes_extend_the_base() -> None:
    assert load_recipe("ner/minilm").data.name == "conll2003"
    assert (RECIPES_DIR / "ner" / "_base.yaml").is_file()


def test_unknown_key_names_file_path_and_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", "task: ner\nmodel: minilm-l6\ntrain: {epohcs: 2}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    message = str(err.value)
    assert str(path) in message and "train.epohcs" in message and "did you mean 'epochs'" in message


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", "task: ner\nmodel: minilm-l6\ntrain: {batch_size: lots}\n")
    with pytest.raises(RecipeError, match=r"train\.batch_size.*'lots'"):
        load_recipe(path)


def test_unknown_task_suggests_the_closest() -> None:
    with pytest.raises(RecipeError, match="did you mean 'ner'"):
        load_recipe({"task": "nerr", "model": "minilm-l6"})


def test_missing_data_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match=r"data\.train_file: file not found"):
        load_recipe({"task": "ner", "model": "x", "data": {"train_file": str(tmp_path / "nope.jsonl")}})


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", "task: ner\nmodel: [unclosed\n")
    with pytest.raises(RecipeError, match=rf"{path}:\d+: malformed YAML"):
        load_recipe(path)


def test_missing_base_and_cycles_are_errors(tmp_path: Path) -> None:
    with pytest.raises(RecipeError, match="extends: file not found"):
        load_recipe(write(tmp_path / "a.yaml", "extends: missing.yaml\n"))
    write(tmp_path / "b.yaml", "extends: c.yaml\n")
    write(tmp_path / "c.yaml", "extends: b.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "b.yaml")


def test_bad_set_syntax_and_unknown_recipe() -> None:
    with pytest.raises(RecipeError, match="KEY=VALUE"):
        load_recipe("ner/minilm", ["train.epochs"])
    with pytest.raises(RecipeError, match="did you mean 'ner/minilm'"):
        load_recipe("ner/minlm")


def test_yes_and_no_are_words_while_booleans_still_parse(tmp_path: Path) -> None:
    path = write(tmp_path / "r.yaml", f"extends: {RECIPES_DIR / 'ner/minilm.yaml'}\ntrain: {{eval_strategy: no}}\n")
    assert load_recipe(path).train.eval_strategy == "no"
    recipe = load_recipe("ner/minilm", ["train.eval_strategy=no", "train.resume=no", "train.group_by_length=false"])
    assert recipe.train.eval_strategy == "no" and recipe.train.resume is False and recipe.train.group_by_length is False


def test_task_args_are_validated_by_the_task() -> None:
    from nlptasks.tasks import task_for

    with pytest.raises(RecipeError, match=r"task_args\.label_all_subword.*did you mean 'label_all_subwords'"):
        task_for(load_recipe("ner/minilm", {"task_args": {"label_all_subword": True}}))


def test_cli_exits_2_with_the_message_on_stderr(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "r.yaml", "task: ner\nmodel: minilm-l6\ntrain: {epohcs: 2}\n")
    assert main(["run", str(path)]) == 2
    assert "did you mean 'epochs'" in capsys.readouterr().err


def test_cli_lists_recipes_with_descriptions(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    assert "ner/minilm" in out and "CoNLL-2003" in out and "_base" not in out


def test_settings_that_only_fail_mid_training_fail_at_load() -> None:
    with pytest.raises(RecipeError, match="early_stopping_patience needs evaluation"):
        load_recipe("ner/minilm", {"train.early_stopping_patience": 2, "train.eval_strategy": "no"})
    with pytest.raises(RecipeError, match="needs eval_steps"):
        load_recipe("ner/minilm", {"train.eval_strategy": "steps"})


def test_extends_takes_a_list_of_fragments_merged_in_order(tmp_path: Path) -> None:
    write(tmp_path / "base.yaml", "name: base\ntask: ner\nmodel: minilm-l6\ntrain: {epochs: 5, batch_size: 8}\n")
    write(tmp_path / "fragment.yaml", "model: t5-mini\ntrain: {optimizer: adafactor, batch_size: 16}\n")
    child = write(tmp_path / "child.yaml", "extends: [base.yaml, fragment.yaml]\ntrain: {epochs: 1}\n")
    recipe = load_recipe(child)
    assert (recipe.model, recipe.train.optimizer, recipe.train.batch_size, recipe.train.epochs) == (
        "t5-mini",
        "adafactor",
        16,
        1,
    )
    assert recipe.name == "child"  # named after the recipe asked for, not a base
    with pytest.raises(RecipeError, match="extends: a recipe file or a list of them"):
        load_recipe(write(tmp_path / "bad.yaml", "extends: {base: base.yaml}\n"))


def test_the_t5_recipes_share_one_from_scratch_fragment() -> None:
    for task in ("classification", "ner", "qa", "summarization", "translation"):
        recipe = load_recipe(f"{task}/t5")
        assert (recipe.model, recipe.train.optimizer, recipe.train.lr_scheduler) == (
            "t5-mini",
            "adafactor",
            "warmup_stable_decay",
        )
        assert "_t5-from-scratch.yaml" in (RECIPES_DIR / task / "t5.yaml").read_text()


@pytest.mark.parametrize("name", TRAINING_RECIPES)
def test_show_prints_every_shipped_recipe_documented_and_loadable_as_it_prints(name: str, tmp_path: Path) -> None:
    shown = describe(name)
    assert "# Longest input in tokens" in shown and "# The peak learning rate" in shown
    reloaded, original = load_recipe(write(tmp_path / "shown.yaml", shown)), load_recipe(name)
    assert reloaded == original.model_copy(update={"task_args": reloaded.task_args, "model_args": reloaded.model_args})
    assert task_for(reloaded).options == task_for(original).options
    if family := catalog.model_family(original.model):
        options = family.checked_options(original.model, original.model_args)
        assert options == family.checked_options(reloaded.model, reloaded.model_args)
        assert options is None or "model_args:\n  # " in shown


def test_validate_checks_without_running(capsys: pytest.CaptureFixture) -> None:
    assert main(["validate", "ner/minilm-lora"]) == 0
    assert "valid (ner, minilm-l6, lora; runs into runs/ner-minilm-lora)" in capsys.readouterr().out
    assert main(["validate", "ner/minilm", "--set", "task_args.label_all_subword=true"]) == 2
    assert "did you mean 'label_all_subwords'" in capsys.readouterr().err
    assert main(["validate", "ner/minilm", "--set", "model=./nowhere/model"]) == 2
    assert "folder not found" in capsys.readouterr().err
    assert main(["validate", "ner/bilstm-crf", "--set", "model_args.hiden_size=8"]) == 2
    assert "model_args.hiden_size: unknown key (did you mean 'hidden_size'?)" in capsys.readouterr().err
    assert main(["validate", "translation/t5", "--set", "model_args.d_model=65"]) == 2
    assert "d_model 65 is not a multiple of num_heads" in capsys.readouterr().err
