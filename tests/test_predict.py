"""`Predictor`: complete once built, whatever the run holds."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest

import nlptasks
from nlptasks.errors import UserInputError
from nlptasks.predict import batch_bounds
from nlptasks.tasks.base import TEXT_PAIR_FEATURES, in_memory


def test_a_method_without_a_model_gives_a_complete_predictor(tmp_path: Path) -> None:
    rows = [{"document": f"A: I want a {thing}.\nB: Why?\nA: I need one.", "summary": thing} for thing in "xyz"]
    data = tmp_path / "dialogues.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = {
        "task": "extractive-summarization",
        "model": "lead",
        "output_dir": str(tmp_path / "lead"),
        "data": {"train_file": str(data), "validation_file": str(data), "test_file": str(data)},
    }
    predictor = nlptasks.load(nlptasks.run(recipe).run_dir)
    assert predictor.model is None and predictor.adapters == [] and predictor.id2label == {}
    assert [s["index"] for s in predictor.predict(rows[0]["document"])[0]["sentences"]] == [0, 1, 2]
    with pytest.raises(UserInputError, match="untrained method; nothing decodes"):
        predictor.set_generation(num_beams=2)
    with pytest.raises(UserInputError, match="not an adapter run"):
        predictor.add_adapter(tmp_path / "lead")


@pytest.mark.parametrize(
    ("lengths", "batch_size", "max_tokens", "bounds"),
    [
        ([5] * 10, 4, None, [(0, 4), (4, 8), (8, 10)]),
        ([10] * 8 + [100] * 8, 64, 200, [(0, 8), (8, 12), (12, 16)]),  # 8 x 10 fit; long rows keep 4 a batch
        ([10] * 30, 64, 200, [(0, 20), (20, 30)]),
        ([3, 50, 3, 3, 3, 3], 64, 120, [(0, 4), (4, 6)]),  # an unsorted long row bounds its whole batch
    ],
)
def test_batches_are_bounded_by_rows_and_by_padded_tokens(
    lengths: list[int], batch_size: int, max_tokens: int | None, bounds: list[tuple[int, int]]
) -> None:
    assert list(batch_bounds(lengths, batch_size, max_tokens)) == bounds


def test_a_token_bound_changes_the_batches_not_the_predictions(ner_recipe, tiny_bert: Path, tmp_path: Path) -> None:
    run = nlptasks.run(ner_recipe(tiny_bert, tmp_path / "run", epochs=1)).run_dir
    texts = ["Angela Merkel visited Paris .", "hi", "Siemens opened a plant in Berlin near the river Spree", ""] * 3
    unbounded, bounded = (nlptasks.load(run, max_batch_tokens=bound) for bound in (None, 16))
    filled = [text for text in texts if text]
    features = [
        p.task.featurize(p.task.examples_from_texts(filled), p.tokenizer, p.label2id) for p in (unbounded, bounded)
    ]
    assert [len(list(p.batches(f))) for p, f in zip((unbounded, bounded), features)] == [1, 3]  # 9 rows: 4 + 4 + 1
    logits = [p.logits(f) for p, f in zip((unbounded, bounded), features)]
    assert logits[0] == pytest.approx(logits[1], abs=1e-5)
    assert [p["tags"] for p in unbounded.predict(texts)] == [p["tags"] for p in bounded.predict(texts)]


@pytest.mark.parametrize(
    ("columns", "features"),
    [
        (
            {
                "text": ["Ada met Alan .", "hi"],
                "tokens": [["Ada", "met", "Alan", "."], ["hi"]],
                "spans": [[[0, 3]], [[0, 2]]],
            },
            None,
        ),
        ({"text": ["a", "b"], "text_pair": [None, "c"]}, TEXT_PAIR_FEATURES),
        ({"text": ["a"], "text_pair": [None]}, TEXT_PAIR_FEATURES),  # no pair anywhere: still typed as text
        ({"translation": [[{"language": "en", "text": "A dog ."}]]}, None),
    ],
)
def test_inputs_become_the_dataset_from_dict_would_give(columns: dict, features: datasets.Features | None) -> None:
    built, expected = in_memory(columns, features), datasets.Dataset.from_dict(columns, features=features)
    assert built.features == expected.features and built.to_list() == expected.to_list()
    assert in_memory(columns, features)._fingerprint != built._fingerprint
