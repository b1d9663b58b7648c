"""What the Hugging Face ecosystem expects around a run: model cards the Hub parses, pushing (offline here:
its failure), MLflow tracking into a local file store, and an Optuna search whose best recipe reruns.

Every task's card is checked by the task contract (`test_task_contract.py`); here, the adapter and export cards.
"""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import yaml
from huggingface_hub import ModelCard
from test_task_contract import run_bare_loading_code

import nlptasks
from nlptasks.cli import main
from nlptasks.errors import RecipeError, UserInputError
from nlptasks.tune import default_space

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def lora_run(ner_recipe, tiny_bert: Path, tmp_path: Path) -> Path:
    recipe = ner_recipe(tiny_bert, tmp_path / "lora", max_steps=4, eval_strategy="no")
    return nlptasks.run({**recipe, "method": "lora", "adapter": {"r": 4}}).run_dir


def test_an_adapter_card_loads_with_peft_and_an_export_card_with_its_engine(lora_run: Path, tmp_path: Path) -> None:
    card = ModelCard.load(lora_run / "model" / "README.md")
    assert card.data.library_name == "peft" and card.data.pipeline_tag == "token-classification"
    assert card.data.base_model is None  # a local folder, not a Hub id
    model = run_bare_loading_code(card, lora_run / "model")["model"]
    assert type(model).__name__ == "PeftModelForTokenClassification"
    assert model.config.id2label == nlptasks.load(lora_run).id2label

    exported = nlptasks.export(lora_run, tmp_path / "onnx", format="onnx", quantize="int8")
    card = ModelCard.load(exported / "README.md")
    assert card.data.library_name == "onnx" and "int8" in card.text
    test_f1 = json.loads((lora_run / "metrics.json").read_text())["test"]["f1"]
    assert [r.metric_value for r in card.data.eval_results if (r.dataset_split, r.metric_type) == ("test", "f1")] == [
        test_f1
    ]
    outputs = run_bare_loading_code(card, exported)["outputs"]
    assert outputs[0].shape[-1] == len(model.config.id2label)


def test_a_packaged_base_model_is_named_by_its_hub_id_and_license() -> None:
    from nlptasks import catalog

    assert catalog.base_model("minilm-l6") == ("sentence-transformers/all-MiniLM-L6-v2", "apache-2.0")
    assert catalog.base_model("bert2bert-minilm-l6") == catalog.base_model("minilm-l6")
    assert catalog.base_model("bilstm") == (None, None)  # built at random


def test_pushing_without_network_fails_naming_the_cause_and_keeps_the_export(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    output = tmp_path / "export"
    assert main(["export", str(lora_run), "--output", str(output), "--push-to-hub", "me/ner"]) == 2
    error = capsys.readouterr().err
    assert "--push-to-hub me/ner: could not push" in error and "OfflineModeIsEnabled" in error
    assert ModelCard.load(output / "README.md").data.library_name == "peft"


def test_mlflow_receives_training_logs_final_metrics_recipe_and_reports(
    ner_recipe, tiny_bert: Path, tmp_path: Path
) -> None:
    store = f"file:{tmp_path / 'mlruns'}"
    recipe = ner_recipe(tiny_bert, tmp_path / "tracked", max_steps=4, logging_steps=1, eval_strategy="no")
    recipe["train"] |= {"report_to": ["mlflow"], "tracking_uri": store, "experiment": "tests"}
    result = nlptasks.run(recipe)

    record = json.loads((result.run_dir / "logs" / "mlflow.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=store)
    run = client.get_run(record["run_id"])
    assert run.data.metrics["test_f1"] == pytest.approx(result.metrics["test"]["f1"])
    assert len(client.get_metric_history(run.info.run_id, "loss")) == 4  # the Trainer's callback, every step
    assert run.data.params["recipe.train.max_steps"] == "4" and run.data.tags["nlptasks.task"] == "ner"
    artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
    assert {"recipe.yaml", "metrics.json", "summary.md", "errors_test.json", "model"} <= artifacts
    assert client.get_experiment(run.info.experiment_id).name == "tests"


def test_an_unknown_or_missing_tracking_integration_is_refused_before_any_work(ner_recipe, tiny_bert: Path) -> None:
    recipe = ner_recipe(tiny_bert)
    recipe["train"]["report_to"] = ["mlfow"]
    with pytest.raises(RecipeError, match="unknown integration 'mlfow'.*did you mean 'mlflow'"):
        nlptasks.run(recipe)
    recipe["train"]["report_to"] = ["clearml"]
    with pytest.raises(RecipeError, match="'clearml' needs its package: pip install clearml"):
        nlptasks.run(recipe)


def test_a_search_of_three_trials_writes_its_best_recipe_which_reruns_to_the_same_metric(
    ner_recipe, tiny_bert: Path, tmp_path: Path
) -> None:
    recipe = ner_recipe(tiny_bert, max_steps=6, eval_strategy="steps", eval_steps=3)
    space = tmp_path / "space.yaml"
    space.write_text(
        "train.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
        "train.batch_size: {choices: [4, 8]}\ntrain.warmup_ratio: null\ntrain.epochs: null\n"
    )
    study = tmp_path / "study"
    result = nlptasks.tune(recipe, 3, study, space=space)

    assert set(result.best_params) == {"train.learning_rate", "train.batch_size"}
    trials = (study / "trials.csv").read_text().splitlines()
    assert len(trials) == 4 and (study / "history.png").is_file() and (study / "importance.png").is_file()
    best = yaml.safe_load((study / "best.yaml").read_text())
    assert best["train"]["learning_rate"] == result.best_params["train.learning_rate"]
    rerun = nlptasks.run(study / "best.yaml")
    assert rerun.run_dir == study / "best"
    assert rerun.metrics["validation"]["f1"] == pytest.approx(result.best_value, abs=1e-9)

    again = nlptasks.tune(recipe, 3, study, space=space)  # a finished search continues, running nothing
    assert again.trials == 3
    with pytest.raises(UserInputError, match="holds a search over another recipe"):
        nlptasks.tune({**recipe, "train": {**recipe["train"], "seed": 7}}, 3, study)


def test_a_search_space_key_that_is_not_a_recipe_setting_is_refused(
    ner_recipe, tiny_bert: Path, tmp_path: Path
) -> None:
    space = tmp_path / "space.yaml"
    space.write_text("train.learnig_rate: {low: 1.0e-4, high: 1.0e-2}\n")
    with pytest.raises(RecipeError, match=r"train.learnig_rate.*did you mean 'learning_rate'"):
        nlptasks.tune(ner_recipe(tiny_bert), 2, tmp_path / "study", space=space)
    space.write_text("train.batch_size: {low: 8}\n")
    with pytest.raises(RecipeError, match="give either choices"):
        nlptasks.tune(ner_recipe(tiny_bert), 2, tmp_path / "study", space=space)


def test_the_default_space_searches_an_adapters_rank_and_a_larger_learning_rate(ner_recipe, tiny_bert: Path) -> None:
    full = nlptasks.load_recipe(ner_recipe(tiny_bert))
    lora = full.model_copy(update={"method": "lora"})
    assert "adapter.r" not in default_space(full) and "adapter.r" in default_space(lora)
    assert default_space(lora)["train.learning_rate"].high > default_space(full)["train.learning_rate"].high
