"""A pretrained encoder with a character CNN and a CRF (`model_args.char_encoder`, `crf`) on tiny BERTs."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import torch
from conftest import same_weights
from huggingface_hub import ModelCard
from transformers import (
    AutoModel,
    AutoModelForTokenClassification,
    AutoTokenizer,
    BertForTokenClassification,
    TrainingArguments,
)

import nlptasks
from nlptasks import models
from nlptasks.adapters import Adaptation
from nlptasks.data import pad_batch
from nlptasks.errors import RecipeError, UserInputError
from nlptasks.models.tagger import EncoderTaggerForTokenClassification, EncoderTaggerTokenizer
from nlptasks.recipe import AdapterOptions
from nlptasks.tasks.base import NOT_CHOSEN
from nlptasks.tasks.classification import Classification
from nlptasks.tasks.extractive_summarization import ExtractiveOptions, ExtractiveSummarization
from nlptasks.tasks.ner import NER, NEROptions
from nlptasks.training.trainer import TaskTrainer

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
LABEL2ID = {label: i for i, label in enumerate(LABELS)}
WORDS = [["Angela", "Merkel", "visited", "Unbelievably", "Paris", "."], ["BRUSSELS", "met", "Berlin"]]
TAGS = [["B-PER", "I-PER", "O", "O", "B-LOC", "O"], ["B-LOC", "O", "B-LOC"]]

pytestmark = pytest.mark.usefixtures("one_thread")


def examples() -> datasets.Dataset:
    return datasets.Dataset.from_dict({"tokens": WORDS, "ner_tags": TAGS})


def ner(max_length: int = 32, stride: int = 4) -> NER:
    return NER(NEROptions(), max_length=max_length, stride=stride)


def tagger(tiny_bert: Path, **model_args: object) -> tuple[EncoderTaggerForTokenClassification, EncoderTaggerTokenizer]:
    torch.manual_seed(0)
    model_args = {"char_encoder": True, "crf": True, "char_dim": 6, "char_hidden": 7, **model_args}
    return models.build(str(tiny_bert), model_args, ner(), LABELS, examples())


def padded(tokenizer: EncoderTaggerTokenizer, rows: list[dict] | None = None) -> dict[str, torch.Tensor]:
    """The NER task's features of `examples()` (or `rows` of them) through the shared collator."""
    rows = rows or [dict(row) for row in ner().featurize(examples(), tokenizer, LABEL2ID)]
    return pad_batch(rows, ner().pad_values(tokenizer))


def spell(tokenizer: EncoderTaggerTokenizer, char_ids: list[int]) -> str:
    by_id = {i: c for c, i in tokenizer.char_vocab.items()}
    return "".join(by_id[i] for i in char_ids)


def model_inputs(batch: dict[str, torch.Tensor], labels: bool = True) -> dict[str, torch.Tensor]:
    """The columns the Trainer and `predict` pass: those `forward` names."""
    named = {"input_ids", "attention_mask", "token_type_ids", "char_ids", "word_starts", *(["labels"] * labels)}
    return {key: value for key, value in batch.items() if key in named}


def test_each_words_characters_as_written_ride_on_its_first_subword_only(tiny_bert: Path) -> None:
    _, tokenizer = tagger(tiny_bert)
    task = ner(max_length=6, stride=2)  # "unbelievably" is five word-pieces: some window starts inside it
    features = task.featurize(examples(), tokenizer, LABEL2ID)
    for feature in features:
        words = WORDS[feature["example_index"]]
        for chars, start, word in zip(feature["char_ids"], feature["word_starts"], feature["word_ids"]):
            assert start == (word >= 0)  # a word starts exactly where the NER task labels one
            assert spell(tokenizer, chars) == (words[word] if word >= 0 else "")  # whole word, case kept
    window_starts = [tokenizer.convert_ids_to_tokens(feature["input_ids"])[1] for feature in features]
    assert any(token.startswith("##") for token in window_starts), "no window began inside a word: nothing checked"
    assert {c for c in "ABMPU"} <= set(tokenizer.char_vocab)  # the encoder is uncased; the characters are not


def test_built_around_the_pretrained_encoder_and_round_trips_through_the_auto_classes(
    tiny_bert: Path, tmp_path: Path
) -> None:
    model, tokenizer = tagger(tiny_bert)
    assert same_weights(model.encoder, AutoModel.from_pretrained(tiny_bert))
    model.eval().save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is EncoderTaggerForTokenClassification and type(loaded_tokenizer) is EncoderTaggerTokenizer
    assert same_weights(loaded, model) and loaded_tokenizer.char_vocab == tokenizer.char_vocab
    assert loaded_tokenizer.model_input_names == tokenizer.model_input_names
    sentence = [["Angela", "met", "Unbelievably"]]
    assert dict(loaded_tokenizer(sentence, is_split_into_words=True)) == dict(
        tokenizer(sentence, is_split_into_words=True)
    )
    batch = padded(tokenizer)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**model_inputs(batch)).logits, model(**model_inputs(batch)).logits)


def test_the_crf_decodes_one_tag_per_word_and_its_loss_ignores_padding(tiny_bert: Path) -> None:
    model, tokenizer = tagger(tiny_bert)
    task = ner()
    rows = [dict(row) for row in task.featurize(examples(), tokenizer, LABEL2ID)]
    batch = padded(tokenizer, rows)
    model.eval()
    with torch.no_grad():
        logits = model(**model_inputs(batch, labels=False)).logits
        both = model(**model_inputs(batch)).loss
        first, second = (model(**model_inputs(padded(tokenizer, [row]))).loss for row in rows)
    starts = batch["word_starts"].bool()
    chosen = logits[starts]
    assert ((chosen == 0).sum(-1) == 1).all() and ((chosen == NOT_CHOSEN).sum(-1) == len(LABELS) - 1).all()
    assert (logits[~starts] == 0).all()  # nothing decoded off the words' first subwords
    torch.testing.assert_close(both, (first + second) / 2)  # the shorter row's padding adds nothing
    predicted = task.decode(
        examples(), task.featurize(examples(), tokenizer, LABEL2ID), logits.numpy(), dict(enumerate(LABELS))
    )
    assert [len(tags) for tags in predicted] == [len(words) for words in WORDS]


def test_without_a_crf_the_tagger_gives_scores_and_trains_by_cross_entropy(tiny_bert: Path) -> None:
    model, tokenizer = tagger(tiny_bert, crf=False)
    assert model.crf is None and not model.scores_are_paths
    batch = padded(tokenizer)
    output = model.eval()(**model_inputs(batch))
    expected = torch.nn.functional.cross_entropy(output.logits.flatten(0, 1), batch["labels"].flatten())
    torch.testing.assert_close(output.loss, expected)
    assert output.logits.abs().min() < 1e3  # scores, not a Viterbi path


def test_bad_tagger_args_are_recipe_errors_naming_the_key(tiny_bert: Path) -> None:
    with pytest.raises(RecipeError, match=r"model_args\.char_hidden"):
        tagger(tiny_bert, char_hidden=0)
    classification = Classification(Classification.Options(), max_length=16, stride=0)
    with pytest.raises(RecipeError, match="does not label tokens"):
        models.build(
            str(tiny_bert), {"crf": True}, classification, ["a", "b"], datasets.Dataset.from_dict({"text": ["x"]})
        )
    with pytest.raises(RecipeError, match="method: full"):
        models.build(str(tiny_bert), {"char_encoder": True}, ner(), LABELS, examples(), Adaptation(AdapterOptions()))
    plain, _ = models.build(str(tiny_bert), {"crf": False, "char_encoder": False}, ner(), LABELS, examples())
    assert type(plain) is BertForTokenClassification  # nothing asked for: the encoder's own token classifier
    with pytest.raises(RecipeError, match=r"model_args\.char_hiden: .*bert model's config.*did you mean 'char_hidden'"):
        tagger(tiny_bert, char_hiden=70)
    with pytest.raises(RecipeError, match=r"model_args\.crff: .*did you mean 'crf'"):
        models.build(str(tiny_bert), {"crff": True}, ner(), LABELS, examples())
    quieter, _ = tagger(tiny_bert, hidden_dropout_prob=0.0)  # a config setting of the encoder still reaches it
    assert quieter.encoder.config.hidden_dropout_prob == 0.0


def test_the_head_learns_at_its_own_rate_and_the_encoder_at_the_recipe_rate(tiny_bert: Path, tmp_path: Path) -> None:
    model, _ = tagger(tiny_bert)
    trainer = TaskTrainer(
        model=model,
        args=TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-4, use_cpu=True),
        head_learning_rate=3e-3,
    )
    optimizer = trainer.create_optimizer()
    rates = {id(weight): group["lr"] for group in optimizer.param_groups for weight in group["params"]}
    encoder = {id(weight) for weight in model.encoder.parameters()}
    assert len(rates) == len(list(model.parameters()))  # every weight in exactly one group
    assert {rates[i] for i in encoder} == {1e-4}
    assert {rate for i, rate in rates.items() if i not in encoder} == {3e-3}
    assert rates[id(model.crf.transitions)] == rates[id(model.char_conv.weight)] == 3e-3


def tagger_run(ner_recipe, tiny_bert: Path, tmp_path: Path, **model_args: object) -> Path:
    recipe = ner_recipe(tiny_bert, tmp_path / "run", epochs=4, head_learning_rate=1e-2)
    return nlptasks.run({**recipe, "model_args": model_args}).run_dir


def test_a_crf_tagger_learns_capitals_predicts_its_test_output_and_claims_no_scores(
    tiny_bert: Path, ner_recipe, tmp_path: Path
) -> None:
    run = tagger_run(ner_recipe, tiny_bert, tmp_path, char_encoder=True, crf=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test"]["f1"] >= 0.8, metrics["test"]
    config = json.loads((run / "model" / "config.json").read_text())
    assert config["model_type"] == "nlptasks-encoder-tagger" and "task_calibration" not in config  # a path, no scores
    written = [json.loads(line) for line in (run / "predictions" / "test.jsonl").read_text().splitlines()][:4]
    predicted = nlptasks.load(run).predict([" ".join(row["tokens"]) for row in written])
    assert [row["tags"] for row in predicted] == [row["tags"] for row in written]
    entities = [entity for row in predicted for entity in row["entities"]]
    assert entities and not any("score" in entity for entity in entities)  # a path has no probabilities to give
    assert "ece" not in metrics["test"] and not (run / "reliability_test.json").exists()
    card = ModelCard.load(run / "model" / "README.md")
    assert card.data.library_name == "nlptasks" and "nlptasks.load" in card.text  # bare transformers cannot load it
    with pytest.raises(UserInputError, match="CRF"):
        nlptasks.export(run, tmp_path / "onnx", format="onnx")


def test_a_character_cnn_tagger_exports_to_onnx_and_tags_as_its_run_does(
    tiny_bert: Path, ner_recipe, tmp_path: Path
) -> None:
    run = tagger_run(ner_recipe, tiny_bert, tmp_path, char_encoder=True)
    exported = nlptasks.export(run, tmp_path / "onnx", format="onnx")
    texts = ["Angela Merkel visited Paris .", "Unbelievably , BRUSSELS met Siemens", "x"]
    ours, theirs = nlptasks.load(run).predict(texts), nlptasks.load(exported).predict(texts)
    assert [p["tags"] for p in ours] == [p["tags"] for p in theirs]  # words longer than any in the export's batch
    scores = [[entity["score"] for p in predicted for entity in p["entities"]] for predicted in (ours, theirs)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)


# --- sentence layers (extractive summarization) ----------------------------------------------------------------


def extractive(**options: object) -> ExtractiveSummarization:
    return ExtractiveSummarization(ExtractiveOptions(**options), max_length=48, stride=0)


def test_sentence_layers_score_each_sentence_beside_the_others_and_by_its_place(tiny_bert: Path) -> None:
    task = extractive()
    torch.manual_seed(0)
    model, tokenizer = models.build(str(tiny_bert), {"sentence_layers": 1}, task, ["skip", "keep"], examples())
    model.eval()
    documents = ["A: hello there.\nB: the same line.\nA: bye.", "B: the same line.\nA: hello there.\nA: bye."]
    data = datasets.Dataset.from_dict({"document": documents})
    features = task.featurize(data, tokenizer, {"skip": 0, "keep": 1})
    batch = pad_batch([dict(row) for row in features], task.pad_values(tokenizer))
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "token_type_ids", "sentence_ids")}
    with torch.no_grad():
        logits = model(**inputs).logits
        plain = model.classifier(model.encoder(**{k: v for k, v in inputs.items() if k != "sentence_ids"})[0])
    markers = batch["sentence_ids"] >= 0
    assert torch.equal(logits[~markers], plain[~markers])  # only the sentence markers pass the sentence layers
    same_line = [logits[row][batch["sentence_ids"][row] == place][0] for row, place in ((0, 1), (1, 0))]
    assert not torch.allclose(*same_line)  # one sentence, two places in the document: two scores
    scores = task.decode(data, features, logits.numpy(), {0: "skip", 1: "keep"})
    assert [len(p["scores"]) for p in scores] == [3, 3]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 training, as on a CPU with native bf16
        assert model(**inputs).logits.shape == logits.shape


def test_layers_a_task_cannot_feed_are_refused_naming_the_key(tiny_bert: Path) -> None:
    text = datasets.Dataset.from_dict({"document": ["A: hi"]})
    with pytest.raises(RecipeError, match=r"model_args\.sentence_layers: .*task 'ner' marks none"):
        models.build(str(tiny_bert), {"sentence_layers": 1}, ner(), LABELS, examples())
    with pytest.raises(RecipeError, match=r"model_args\.char_encoder / crf: .*reads text, not words"):
        models.build(str(tiny_bert), {"crf": True}, extractive(), ["skip", "keep"], text)


def test_a_sentence_layer_scorer_trains_and_exports_to_onnx_answering_as_its_run_does(
    tiny_bert: Path, tmp_path: Path
) -> None:
    rows = []
    for i, thing in enumerate(["car", "bike", "house", "boat", "phone", "lamp", "desk", "coat"]):
        turns = [f"#Person1#: I want to buy a {thing} today.", *(f"#Person2#: Line {j} of {i}." for j in range(6))]
        rows.append({"document": "\n".join(turns), "summary": f"#Person1# wants to buy a {thing}."})
    files = {}
    for split in ("train", "validation", "test"):
        files[f"{split}_file"] = str(tmp_path / f"{split}.jsonl")
        Path(files[f"{split}_file"]).write_text("".join(json.dumps(row) + "\n" for row in rows))
    recipe = {
        "task": "extractive-summarization",
        "model": str(tiny_bert),
        "model_args": {"sentence_layers": 1},
        "output_dir": str(tmp_path / "run"),
        "task_args": {"k": 1},
        "data": files | {"max_length": 48},
        "train": {
            "epochs": 3,
            "batch_size": 4,
            "learning_rate": 1e-3,
            "precision": "fp32",
            "gradient_checkpointing": True,
        },
    }
    run = nlptasks.run(recipe)
    assert run.metrics["test"]["rouge1"] >= 0.6, run.metrics["test"]  # the first turn, which the summary restates
    exported = nlptasks.export(run.run_dir, tmp_path / "onnx", format="onnx")
    documents = ["A: Where is the station?\nB: Turn left.\nA: Thanks.\nB: You are welcome.", "A: one line only."]
    ours, theirs = nlptasks.load(run.run_dir).predict(documents), nlptasks.load(exported).predict(documents)
    assert [p["summary"] for p in ours] == [p["summary"] for p in theirs]
    scores = [[s["score"] for p in predicted for s in p["sentences"]] for predicted in (ours, theirs)]
    assert scores[0] == pytest.approx(scores[1], abs=1e-4)
