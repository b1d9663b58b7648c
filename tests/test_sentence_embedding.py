"""SimCSE (`task: sentence-embedding`): the contrastive loss, STS scoring, saving for sentence-transformers, `embed`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import nlptasks
from nlptasks.cli import main
from nlptasks.data import load_splits
from nlptasks.errors import DataError, RecipeError
from nlptasks.recipe import load_recipe
from nlptasks.tasks import task_for
from nlptasks.tasks.sentence_embedding import info_nce

pytestmark = pytest.mark.usefixtures("one_thread")

SENTENCES = [
    "A man is playing a guitar.",
    "A woman is slicing an onion.",
    "Two dogs run across a field.",
    "The stock market fell sharply today.",
    "A child is riding a bicycle.",
    "The chef is cooking pasta in a pan.",
    "A cat sleeps on the sofa.",
    "Rain is expected over the weekend.",
]
PAIRS = [
    ("A man is playing a guitar.", "A man plays the guitar.", 4.8),
    ("A woman is slicing an onion.", "A woman cuts an onion.", 4.2),
    ("Two dogs run across a field.", "A cat sleeps on the sofa.", 0.4),
    ("The stock market fell sharply today.", "Shares dropped steeply today.", 4.0),
    ("A child is riding a bicycle.", "The chef is cooking pasta.", 0.2),
    ("Rain is expected over the weekend.", "It will probably rain this weekend.", 4.5),
    ("A man is playing a guitar.", "A man is playing a flute.", 2.6),
    ("A cat sleeps on the sofa.", "A dog sleeps on the sofa.", 3.0),
]


@pytest.fixture
def sts_files(tmp_path: Path) -> dict[str, Path]:
    lines = tmp_path / "sentences.txt"
    lines.write_text("\n".join(SENTENCES * 4) + "\n")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"sentence1": a, "sentence2": b, "score": s}) + "\n" for a, b, s in PAIRS))
    fewer = tmp_path / "test-pairs.jsonl"  # another length than validation: each split decodes its own features
    fewer.write_text("".join(pairs.read_text().splitlines(keepends=True)[:6]))
    return {"sentences": lines, "pairs": pairs, "test_pairs": fewer}


def simcse_recipe(model: Path | str, files: dict[str, Path], folder: Path, **task_args: object) -> dict:
    objective = task_args.get("objective", "unsupervised")
    return {
        "task": "sentence-embedding",
        "model": str(model),
        "output_dir": str(folder),
        "task_args": {"pooling": "mean", **task_args},
        "data": {
            "train_file": str(files["sentences"] if objective == "unsupervised" else files["pairs"]),
            "validation_file": str(files["pairs"]),
            "test_file": str(files["test_pairs"]),
            "txt_format": "lines",
            "max_length": 32,
        },
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 1e-3, "precision": "fp32", "logging_steps": 1},
        "eval": {"before_training": True},
    }


def test_info_nce_is_cross_entropy_over_cosine_over_temperature() -> None:
    anchors = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    candidates = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    cosine = [[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]]
    by_hand = np.mean(
        [-(row[i] / 0.05) + math.log(sum(math.exp(c / 0.05) for c in row)) for i, row in enumerate(cosine)]
    )
    assert info_nce(anchors, candidates, 0.05).item() == pytest.approx(by_hand, rel=1e-5)


def test_an_unsupervised_run_scores_sts_before_and_after_and_saves_for_sentence_transformers(
    tiny_bert: Path, sts_files: dict[str, Path], tmp_path: Path
) -> None:
    from scipy.stats import spearmanr
    from sentence_transformers import SentenceTransformer

    result = nlptasks.run(simcse_recipe(tiny_bert, sts_files, tmp_path / "run"))
    metrics = result.metrics
    assert {"validation", "test", "validation_untrained", "test_untrained"} <= set(metrics)
    assert metrics["train"]["train_loss"] > 0

    predictor = nlptasks.load(result.run_dir)
    pairs = predictor.predict([json.dumps({"text": a, "text_pair": b}) for a, b, _ in PAIRS[:6]])
    similarity = [row["similarity"] for row in pairs]
    by_hand = 100 * spearmanr([score for _, _, score in PAIRS[:6]], similarity).statistic
    assert metrics["test"]["spearman"] == pytest.approx(by_hand, abs=1e-6)
    a, b, _ = PAIRS[0]
    assert predictor.predict({"text": a, "text_pair": b})[0]["similarity"] == pytest.approx(similarity[0])  # a dict

    ours = np.array([row["embedding"] for row in predictor.predict(SENTENCES)])
    assert np.allclose(np.linalg.norm(ours, axis=1), 1, atol=1e-5)
    theirs = SentenceTransformer(str(result.run_dir / "model"), device="cpu").encode(SENTENCES)
    assert np.allclose(ours, theirs, atol=1e-4)


def test_supervised_training_uses_only_the_positive_pairs(tiny_bert: Path, sts_files, tmp_path: Path) -> None:
    recipe = load_recipe(simcse_recipe(tiny_bert, sts_files, tmp_path / "run", objective="supervised"))
    task = task_for(recipe)
    train = load_splits(recipe.data, task)["train"]
    positives = task.training_examples(train)
    assert sorted(positives["score"]) == pytest.approx(sorted(s for _, _, s in PAIRS if s >= 4.0))

    stricter = {"objective": "supervised", "positive_threshold": 5}
    higher = load_recipe({**recipe.model_dump(mode="json"), "task_args": stricter})
    with pytest.raises(DataError, match="supervised SimCSE needs pairs .* scoring at least 5.0"):
        task_for(higher).training_examples(train)

    result = nlptasks.run(simcse_recipe(tiny_bert, sts_files, tmp_path / "sup", objective="supervised"))
    assert result.metrics["train"]["train_loss"] > 0 and "spearman" in result.metrics["validation"]


def test_lora_on_a_decoder_trains_mean_pooled_embeddings(tiny_llama: Path, sts_files, tmp_path: Path) -> None:
    recipe = {**simcse_recipe(tiny_llama, sts_files, tmp_path / "run"), "method": "lora"}
    result = nlptasks.run(recipe)
    assert not (result.run_dir / "model" / "adapter_config.json").exists(), "saved merged, for sentence-transformers"
    assert json.loads((result.run_dir / "model" / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"]
    assert result.metrics["train"]["trainable_parameters"] < result.metrics["train"]["total_parameters"] / 2
    ours = [row["embedding"] for row in nlptasks.load(result.run_dir).predict(SENTENCES)]
    assert len(ours[0]) == 32

    from sentence_transformers import SentenceTransformer

    theirs = SentenceTransformer(str(result.run_dir / "model"), device="cpu").encode(SENTENCES)
    assert np.allclose(ours, theirs, atol=1e-4)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"train": {"gradient_accumulation_steps": 4}}, r"gradient_accumulation_steps: .* raise train.batch_size"),
        ({"task_args": {"pooling": "cls"}}, r"task_args.pooling: 'cls' reads a \[CLS\] token a decoder does not have"),
        ({"task_args": {"temprature": 0.1}}, r"task_args.temprature: unknown key.*did you mean 'temperature'"),
    ],
)
def test_bad_settings_fail_before_training(tiny_llama: Path, sts_files, tmp_path: Path, change, message) -> None:
    recipe = simcse_recipe(tiny_llama, sts_files, tmp_path / "run")
    for section, values in change.items():
        recipe[section] = {**recipe[section], **values}
    with pytest.raises(RecipeError, match=message):
        nlptasks.run(recipe)


def test_a_pair_row_without_its_first_sentence_names_file_line_and_field(tiny_bert, sts_files, tmp_path) -> None:
    broken = tmp_path / "broken.jsonl"
    broken.write_text(sts_files["pairs"].read_text() + json.dumps({"sentence2": "alone", "score": 1.0}) + "\n")
    recipe = simcse_recipe(tiny_bert, sts_files, tmp_path / "run")
    recipe["data"]["validation_file"] = str(broken)
    with pytest.raises(DataError, match=rf"{broken}:9: field 'text' must be a non-empty string"):
        nlptasks.run(recipe)


def test_embed_writes_npy_and_parquet_in_input_order(tiny_bert, sts_files, tmp_path, capsys) -> None:
    import pyarrow.parquet as pq

    recipe = simcse_recipe(tiny_bert, sts_files, tmp_path / "run")
    recipe["train"]["epochs"] = 1
    recipe_file = tmp_path / "simcse.yaml"
    recipe_file.write_text(yaml.safe_dump(recipe))
    assert main(["run", str(recipe_file)]) == 0
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(SENTENCES) + "\n")
    assert main(["embed", str(tmp_path / "run"), "--file", str(texts), "--output", str(tmp_path / "e.npy")]) == 0
    assert main(["embed", str(tmp_path / "run"), "--file", str(texts), "--output", str(tmp_path / "e.parquet")]) == 0
    matrix = np.load(tmp_path / "e.npy")
    table = pq.read_table(tmp_path / "e.parquet").to_pydict()
    assert matrix.shape == (len(SENTENCES), 32) and matrix.dtype == np.float32
    assert table["text"] == SENTENCES and np.allclose(np.array(table["embedding"]), matrix)
    expected = [row["embedding"] for row in nlptasks.load(tmp_path / "run").predict(SENTENCES)]
    assert np.allclose(matrix, expected, atol=1e-6)
    assert main(["embed", str(tmp_path / "run"), "--file", str(texts), "--output", str(tmp_path / "e.csv")]) == 2
    assert "must end in .npy or .parquet" in capsys.readouterr().err
