"""`nlptasks.metrics` against hand computations, and each task's one declaration of its headline metrics."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nlptasks.cli import format_metrics
from nlptasks.compare import FinishedRun, _metrics_table
from nlptasks.metrics.bleu import sacrebleu_scores
from nlptasks.metrics.classification import label_scores
from nlptasks.metrics.correlation import sts_correlations
from nlptasks.metrics.entities import entity_scores
from nlptasks.metrics.rouge import rouge
from nlptasks.metrics.squad import normalize_answer, squad_scores
from nlptasks.recipe import load_recipe
from nlptasks.tasks import TASKS, headline_scores
from nlptasks.training import RunResult
from nlptasks.training.summary import summary

# ---------------------------------------------------------------- metrics


def test_rouge_takes_each_types_best_reference_on_its_own_then_averages_examples() -> None:
    # "the cat sat" against "cat the sat": every unigram (R-1 F 1), no bigram (R-2 0), LCS 2 of 3 (R-L 2/3);
    # against "the cat ran on a mat": 2 unigrams, P 2/3 R 2/6 (F 4/9); 1 bigram, P 1/2 R 1/5 (F 2/7); LCS 2.
    # So R-1 and R-L come from the first reference, R-2 from the second; the second example scores 1.
    scores = rouge([["cat the sat", "the cat ran on a mat"], ["the dog ran"]], [["the cat sat"], ["the dog ran"]])
    expected = {"rouge1": 1.0, "rouge2": (2 / 7 + 1) / 2, "rougeL": (2 / 3 + 1) / 2, "rougeLsum": (2 / 3 + 1) / 2}
    assert scores == pytest.approx(expected)


def test_squad_normalisation_and_questions_whose_gold_answers_normalise_to_nothing() -> None:
    # Case folded, punctuation dropped inside words too, articles only as whole words, whitespace collapsed.
    assert normalize_answer("  The theater's\tAN  exit. ") == "theaters exit"
    # Golds "the" and "!" normalise to nothing, leaving only the empty (no-answer) gold: "" is right, "cat" wrong.
    scores = squad_scores(["", "cat", "The  Cat."], [["the", "!"], ["a"], ["cat", "dog"]])
    assert scores == {"exact_match": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3)}


def test_entity_scores_are_strict_iob2() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "B-LOC", "I-LOC"]]
    # PER right; LOC typed ORG; an entity opened by I-ORG (no entity in strict IOB2); LOC cut one word short.
    predicted = [["B-PER", "I-PER", "O", "B-ORG"], ["I-ORG", "O", "B-LOC", "O"]]
    scores = entity_scores(gold, predicted)
    # 1 correct of 3 predicted and of 4 gold entities: F1 = 2 (1/3)(1/4) / (1/3 + 1/4) = 2/7.
    assert scores == pytest.approx(
        {"precision": 1 / 3, "recall": 1 / 4, "f1": 2 / 7, "f1_LOC": 0, "f1_ORG": 0, "f1_PER": 1, "macro_f1": 1 / 3}
    )


def test_single_label_scores_by_hand() -> None:
    scores = label_scores([["a"], ["a"], ["b"]], [["a"], ["b"], ["b"]], multi_label=False)
    # a: P 1 R 1/2; b: P 1/2 R 1; both F1 2/3.
    assert scores == pytest.approx(
        {"accuracy": 2 / 3, "macro_f1": 2 / 3}
        | {"precision_a": 1, "recall_a": 0.5, "f1_a": 2 / 3, "precision_b": 0.5, "recall_b": 1, "f1_b": 2 / 3}
    )


def test_sts_correlations_by_hand() -> None:
    # Predicted ranks 1 3 2 4: sum of squared rank differences 2, Spearman 1 - 6*2 / (4 (16 - 1)) = 0.8.
    # Pearson: deviations (-1.5, -.5, .5, 1.5) and (-.3, 0, -.2, .5): 1.1 / sqrt(5 * 0.38).
    scores = sts_correlations([1, 2, 3, 4], [0.1, 0.4, 0.2, 0.9])
    assert scores == pytest.approx({"spearman": 80.0, "pearson": 100 * 1.1 / math.sqrt(1.9)})


def test_sacrebleu_scores_carry_their_signatures() -> None:
    scores = sacrebleu_scores(["ein Hund läuft im Garten", "Hallo"], ["ein Hund läuft im Garten", "Hallo"])
    assert scores["bleu"]["score"] == pytest.approx(100) and scores["chrf"]["score"] == pytest.approx(100)
    assert scores["bleu"]["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert scores["chrf"]["line"].startswith("chrF2 = 100.00")


# ---------------------------------------------------------------- headline metrics


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_declares_headline_metrics_that_include_its_checkpoint_metric(name: str) -> None:
    task = TASKS[name]
    assert task.headline_metrics and task.main_metric in task.headline_metrics


def test_headline_scores_keep_the_declared_order_and_drop_the_rest() -> None:
    scores = {"f1_PER": 0.4, "recall": 0.6, "macro_f1": 0.3, "precision": 0.7, "f1": 0.5, "samples_per_second": 9.0}
    assert list(headline_scores("ner", scores)) == ["f1", "precision", "recall", "macro_f1"]
    assert headline_scores("qa", {"f1": 0.5}) == {"f1": 0.5}


QA_METRICS = {"train": {"train_runtime": 3.0}, "test": {"f1": 0.75, "exact_match": 0.5, "samples_per_second": 9.0}}
SST2_METRICS = {"train": {}, "validation": {"accuracy": 0.8, "macro_f1": 0.7, "f1_pos": 0.9}}


def test_summary_the_run_table_and_compare_show_the_tasks_headline_metrics(tmp_path: Path) -> None:
    qa = load_recipe({"task": "qa", "model": "bilstm"})
    sst2 = load_recipe({"task": "classification", "model": "bilstm"})
    assert "| test | exact_match | 0.5000 |\n| test | f1 | 0.7500 |\n" in summary(qa, QA_METRICS)
    assert "| validation | macro_f1 | 0.7000 |" in summary(sst2, SST2_METRICS)
    printed = format_metrics({"qa/bilstm": RunResult(tmp_path, QA_METRICS, qa)}).splitlines()[2:]
    assert [line.split()[:3] for line in printed] == [["qa/bilstm", "test", "exact_match"], ["qa/bilstm", "test", "f1"]]
    runs = [FinishedRun("qa", tmp_path, qa, QA_METRICS), FinishedRun("sst2", tmp_path, sst2, SST2_METRICS)]
    header = _metrics_table(runs).splitlines()[0]
    assert "| split | exact_match | f1 | accuracy | macro_f1 | train s |" in header and "f1_pos" not in header
