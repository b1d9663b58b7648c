"""Recurrent baselines: word-level tokenizer with char ids, BiRNN heads (CRF or not), save/load, learning."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from conftest import same_weights
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from nlptasks import catalog, models
from nlptasks.data import pad_batch
from nlptasks.errors import RecipeError
from nlptasks.models.recurrent import (
    BiRNNConfig,
    BiRNNForSequenceClassification,
    BiRNNForTokenClassification,
    BiRNNTokenizer,
    RecurrentOptions,
    build,
)
from nlptasks.models.rnn_layers import CELLS, PeepholeLSTM, packed_rnn
from nlptasks.tasks.base import NOT_CHOSEN
from nlptasks.tasks.classification import Classification
from nlptasks.tasks.ner import NER, NEROptions

LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
LABEL2ID = {label: i for i, label in enumerate(LABELS)}
TRAIN_WORDS = ["Angela", "Merkel", "visited", "Paris", ".", "U.S.", "officials", "met", "in", "Berlin", "Barlin"]
SMALL = {"embedding_dim": 8, "hidden_size": 12, "char_dim": 6, "char_hidden": 7, "dropout": 0.1}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_tokenizer(**options) -> BiRNNTokenizer:
    return BiRNNTokenizer.train(TRAIN_WORDS[:-1], RecurrentOptions(**options))


def spell(tokenizer: BiRNNTokenizer, char_ids: list[int]) -> str:
    by_id = {i: c for c, i in tokenizer.char_vocab.items()}
    return "".join(by_id[i] for i in char_ids)


def token_model(cell: str = "lstm", num_labels: int = len(LABELS), **options) -> BiRNNForTokenClassification:
    torch.manual_seed(0)
    tokenizer = make_tokenizer()
    config = BiRNNConfig(
        cell=cell,
        vocab_size=len(tokenizer),
        char_vocab_size=len(tokenizer.char_vocab),
        options=RecurrentOptions(**{**SMALL, **options}).model_dump(),
        num_labels=num_labels,
        id2label=dict(enumerate(LABELS[:num_labels])),
        label2id={label: i for i, label in enumerate(LABELS[:num_labels])},
    )
    return BiRNNForTokenClassification(config)


def ner_batch(tokenizer: BiRNNTokenizer, max_length: int = 16) -> dict[str, torch.Tensor]:
    """Two sentences through the NER task's own featurize and the shared collator (one is padded)."""
    data = datasets.Dataset.from_dict(
        {
            "tokens": [["Angela", "Merkel", "visited", "U.S.", "officials", "."], ["Barlin", "met", "Paris"]],
            "ner_tags": [["B-PER", "I-PER", "O", "B-LOC", "O", "O"], ["B-LOC", "O", "B-LOC"]],
        }
    )
    task = NER(NEROptions(), max_length=max_length, stride=2)
    features = task.featurize(data, tokenizer, LABEL2ID)
    return pad_batch([dict(row) for row in features], task.pad_values(tokenizer))


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Only the columns the Trainer would pass (those named in `forward`)."""
    return {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "char_ids", "word_starts", "labels")}


# --- tokenizer -------------------------------------------------------------------------------------------------


def test_overflow_windows_keep_char_ids_aligned_with_tokens() -> None:
    tokenizer = make_tokenizer()
    words = [["Angela", "Merkel", "visited", "U.S.", "officials", "in", "Barlin", "."], ["Paris"]]
    encoded = tokenizer(
        words, is_split_into_words=True, truncation=True, max_length=4, stride=1, return_overflowing_tokens=True
    )
    samples = encoded["overflow_to_sample_mapping"]
    assert len(samples) > 3 and samples[-1] == 1
    for i, sample in enumerate(samples):
        assert len(encoded["char_ids"][i]) == len(encoded["input_ids"][i]) == len(encoded["word_starts"][i])
        for token, word, (start, end) in zip(encoded["char_ids"][i], encoded.word_ids(i), encoded.encodings[i].offsets):
            assert spell(tokenizer, token) == words[sample][word][start:end]
    # "U.S." is one word but two tokens ("U.S", "."): only its first token starts a word.
    pieces = [(w, s) for i in range(len(samples)) for w, s in zip(encoded.word_ids(i), encoded["word_starts"][i])]
    assert (3, 1) in pieces and (3, 0) in pieces


def test_unknown_word_gets_unk_id_but_keeps_its_characters() -> None:
    tokenizer = make_tokenizer()
    encoded = tokenizer([["Barlin", "PAris"]], is_split_into_words=True)
    oov, paris = encoded["input_ids"][0]
    assert oov == tokenizer.unk_token_id == 1 and tokenizer.pad_token_id == 0
    assert paris == tokenizer.convert_tokens_to_ids("paris")  # lowercased word lookup
    assert spell(tokenizer, encoded["char_ids"][0][0]) == "Barlin"
    assert spell(tokenizer, encoded["char_ids"][0][1]) == "PAris"  # characters keep their case


def test_text_input_splits_words_and_punctuation_and_caps_characters() -> None:
    tokenizer = make_tokenizer(max_word_chars=4)
    encoded = tokenizer(["Merkel visited  tea U.S. (Berlin)"], truncation=True, max_length=32)
    assert tokenizer.convert_ids_to_tokens(encoded["input_ids"][0]) == [
        "merkel", "visited", "[UNK]", "u.s", ".", "[UNK]", "berlin", "[UNK]",
    ]  # fmt: skip
    assert [spell(tokenizer, chars) for chars in encoded["char_ids"][0]][:3] == ["Merk", "visi", "tea"]
    assert "word_starts" not in encoded


def test_tokenizer_round_trips_through_auto_tokenizer(tmp_path: Path) -> None:
    tokenizer = make_tokenizer(lowercase=False, max_word_chars=7)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(loaded) is BiRNNTokenizer
    assert loaded.get_vocab() == tokenizer.get_vocab() and loaded.char_vocab == tokenizer.char_vocab
    words = [["Angela", "merkel", "visited", "Barlin"]]
    assert dict(loaded(words, is_split_into_words=True)) == dict(tokenizer(words, is_split_into_words=True))
    assert loaded.pad_token_id == 0 and loaded.unk_token_id == 1


# --- models ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("crf", [False, True])
def test_token_model_forward_on_a_padded_batch(cell: str, crf: bool) -> None:
    model = token_model(cell, crf=crf, bidirectional=cell != "rnn", num_layers=1 + (cell == "peephole-lstm"))
    batch = ner_batch(make_tokenizer())
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][1].sum() < batch["input_ids"].shape[1]
    output = model(**model_inputs(batch))
    assert torch.isfinite(output.loss) and output.logits.shape == (*batch["input_ids"].shape, len(LABELS))
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize(("cell", "crf"), [("lstm", False), ("lstm", True), ("peephole-lstm", False)])
def test_padding_does_not_change_the_loss(cell: str, crf: bool) -> None:
    model = token_model(cell, crf=crf, num_layers=2).eval()
    batch = ner_batch(make_tokenizer())
    padded = batch["attention_mask"] == 0
    changed = dict(batch, input_ids=batch["input_ids"].masked_fill(padded, 5))
    changed["char_ids"] = batch["char_ids"].masked_fill(padded.unsqueeze(-1), 7)
    with torch.no_grad():
        assert torch.equal(model(**model_inputs(batch)).loss, model(**model_inputs(changed)).loss)


def test_crf_loss_skips_unlabelled_positions_and_eval_logits_are_the_viterbi_path() -> None:
    model = token_model(crf=True).eval()
    batch = ner_batch(make_tokenizer())
    with torch.no_grad():
        emissions = model.classifier(model.encoder(batch["input_ids"], batch["attention_mask"], batch["char_ids"])[0])
        output = model(**model_inputs(batch))
    keep = batch["labels"] != -100
    assert (~keep & (batch["attention_mask"] == 1)).any()  # the "." of "U.S." is a -100 token inside a sentence
    by_hand, paths = [], []
    for row in range(2):
        scores, tags = emissions[row][keep[row]].unsqueeze(0), batch["labels"][row][keep[row]].unsqueeze(0)
        everything = torch.ones(scores.shape[:2], dtype=torch.bool)
        by_hand.append(model.crf(scores, tags, mask=everything))
        paths.append(model.crf.decode(scores, mask=everything)[0])
    assert torch.allclose(output.loss, -torch.stack(by_hand).mean())
    starts = batch["word_starts"].bool()
    for row in range(2):
        chosen = output.logits[row][starts[row]]
        assert ((chosen == 0).sum(-1) == 1).all() and ((chosen == NOT_CHOSEN).sum(-1) == len(LABELS) - 1).all()
        assert chosen.argmax(-1).tolist() == paths[row]
        assert (output.logits[row][~starts[row]] == 0).all()  # nothing decoded there
    predict = {k: v for k, v in model_inputs(batch).items() if k != "labels"}
    with torch.no_grad():
        assert torch.equal(model(**predict).logits, output.logits)  # predict decodes exactly as evaluation


def test_token_model_save_and_load_round_trip(tmp_path: Path) -> None:
    model = token_model("gru", crf=True).eval()
    tokenizer = make_tokenizer()
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    assert type(loaded) is BiRNNForTokenClassification and loaded.config.cell == "gru"
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert same_weights(loaded, model)
    batch = model_inputs(ner_batch(tokenizer))
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert catalog.family_of(tmp_path) == "recurrent"
    reloaded, reloaded_tokenizer = models.load(tmp_path, NER(NEROptions(), max_length=16, stride=2))
    assert type(reloaded) is BiRNNForTokenClassification and type(reloaded_tokenizer) is BiRNNTokenizer


@pytest.mark.parametrize("pooling", ["max", "mean", "attention"])
def test_sequence_classification_with_each_pooling(pooling: str, tmp_path: Path) -> None:
    texts = ["Merkel visited Paris.", "Officials met in Berlin", "Barlin!"]
    data = datasets.Dataset.from_dict({"text": texts, "label": [["pos"], ["neg"], ["pos"]]})
    task = Classification(Classification.Options(), max_length=16, stride=0)
    model, tokenizer = build(task, "lstm", {**SMALL, "pooling": pooling}, ["neg", "pos"], data)
    assert type(model) is BiRNNForSequenceClassification
    features = task.featurize(data, tokenizer, {"neg": 0, "pos": 1})
    batch = pad_batch([dict(row) for row in features], task.pad_values(tokenizer))
    batch = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "char_ids", "labels")}
    model.eval()
    with torch.no_grad():
        output = model(**batch)
        padded = batch["attention_mask"] == 0
        changed = dict(batch, input_ids=batch["input_ids"].masked_fill(padded, 3))
        assert torch.equal(model(**changed).logits, output.logits)
    assert output.logits.shape == (3, 2) and torch.isfinite(output.loss)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, output.logits)


def test_peephole_lstm_reads_each_row_alone_in_both_directions_and_its_gates_see_the_cell() -> None:
    torch.manual_seed(0)
    layer = PeepholeLSTM(3, 4, num_layers=2, bidirectional=True)
    inputs, mask = torch.randn(2, 5, 3), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.bool)
    states, (h, c) = packed_rnn(layer, inputs, mask)
    alone, (h_alone, _) = packed_rnn(layer, inputs[1:, :3], mask[1:, :3])
    assert states.shape == (2, 5, 8) and h.shape == c.shape == (4, 2, 4)  # (layers * directions, batch, hidden)
    assert torch.allclose(states[1, :3], alone[0], atol=1e-6) and (states[1, 3:] == 0).all()
    assert torch.allclose(h[:, 1], h_alone[:, 0], atol=1e-6)  # padding leaves the final state alone
    one_layer = PeepholeLSTM(3, 4, bidirectional=True)
    by_hand, _ = one_layer.cells[1](inputs[1:, :3].flip(1), mask[1:, :3])
    states = packed_rnn(one_layer, inputs, mask)[0]
    assert torch.allclose(states[1, :3, 4:], by_hand[0].flip(0), atol=1e-6)  # the second direction reads right to left
    stateless = PeepholeLSTM(3, 4)
    stateless.load_state_dict({k: v for k, v in layer.state_dict().items() if k.startswith("cells.0.")})
    with torch.no_grad():
        stateless.cells[0].peepholes.zero_()
        plain = torch.nn.LSTM(3, 4, batch_first=True)
        weights = stateless.cells[0]
        plain.weight_ih_l0.copy_(weights.input_weights.weight)
        plain.bias_ih_l0.copy_(weights.input_weights.bias)
        plain.weight_hh_l0.copy_(weights.hidden_weights.weight)
        plain.bias_hh_l0.zero_()
    assert torch.allclose(packed_rnn(stateless, inputs, mask)[0], packed_rnn(plain, inputs, mask)[0], atol=1e-6)


@pytest.mark.parametrize("alias", ["birnn", "bilstm-peephole"])
def test_every_cell_and_a_left_to_right_rnn_build_and_round_trip(alias: str, tmp_path: Path) -> None:
    data = datasets.Dataset.from_dict({"text": ["Merkel visited Paris.", "Barlin!"], "label": [["pos"], ["neg"]]})
    task = Classification(Classification.Options(), max_length=16, stride=0)
    cell = catalog.model_family(alias).aliases[alias]
    model, tokenizer = build(task, cell, {**SMALL, "bidirectional": False}, ["neg", "pos"], data)
    assert model.classifier.in_features == SMALL["hidden_size"]  # one direction's states
    batch = tokenizer(["Merkel visited Paris.", "Barlin!"], padding=True, return_tensors="pt")
    model.eval().save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.cell == cell
    assert same_weights(loaded, model)
    with torch.no_grad():  # same weights; on an AVX-512 CPU the RNN kernel's sums may round differently
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-6)


def test_build_for_ner_sizes_everything_from_the_training_split() -> None:
    data = datasets.Dataset.from_dict({"tokens": [TRAIN_WORDS], "ner_tags": [["O"] * len(TRAIN_WORDS)]})
    task = NER(NEROptions(), max_length=16, stride=2)
    model, tokenizer = build(task, "lstm", {"crf": True, "min_word_freq": 1}, LABELS, data)
    assert type(model) is BiRNNForTokenClassification and model.crf is not None
    assert (
        model.config.vocab_size == len(tokenizer) == len(set(w.lower() for w in TRAIN_WORDS) - {"u.s."}) + 3
    )  # + "u.s", [PAD], [UNK]
    assert model.config.id2label == dict(enumerate(LABELS)) and model.config.recurrent.hidden_size == 200
    assert model.encoder.word_embeddings.weight[0].abs().sum() == 0  # [PAD] embedding starts at zero


def test_bad_model_args_and_tasks_without_a_recurrent_head_are_recipe_errors() -> None:
    data = datasets.Dataset.from_dict({"tokens": [["a"]], "ner_tags": [["O"]]})
    task = NER(NEROptions(), max_length=16, stride=2)
    with pytest.raises(RecipeError, match=r"model_args\.hiden_size: unknown key \(did you mean 'hidden_size'"):
        build(task, "lstm", {"hiden_size": 10}, LABELS, data)
    with pytest.raises(RecipeError, match=r"model_args\.crf"):
        build(task, "lstm", {"crf": "yes-please"}, LABELS, data)
    with pytest.raises(RecipeError, match=r"model_args\.pooling"):
        build(task, "lstm", {"pooling": "sum"}, LABELS, data)
    translation = SimpleNamespace(name="translation", auto_model="AutoModelForSeq2SeqLM", input_column="source")
    with pytest.raises(RecipeError, match="no recurrent head"):
        build(translation, "lstm", {}, LABELS, data)
    classification = Classification(Classification.Options(), max_length=16, stride=0)
    with pytest.raises(RecipeError, match=r"model_args\.crf"):
        build(classification, "gru", {"crf": True}, ["a", "b"], datasets.Dataset.from_dict({"text": ["x"]}))


# --- learning --------------------------------------------------------------------------------------------------


def test_tags_capitalised_words_after_a_few_steps() -> None:
    """Word embeddings are lowercased, so only the character encoder can see capitals: it must learn."""
    rng = random.Random(0)
    stems = ["".join(rng.choice("abcdefghijklmnop") for _ in range(rng.randint(3, 7))) for _ in range(60)]

    def sentence() -> tuple[list[str], list[str]]:
        words = [rng.choice(stems) for _ in range(rng.randint(3, 9))]
        words = [w.capitalize() if rng.random() < 0.5 else w for w in words]
        return words, ["B-PER" if w[0].isupper() else "O" for w in words]

    train, test = [sentence() for _ in range(200)], [sentence() for _ in range(50)]
    data = datasets.Dataset.from_dict({"tokens": [w for w, _ in train], "ner_tags": [t for _, t in train]})
    task = NER(NEROptions(), max_length=16, stride=2)
    torch.manual_seed(0)
    model, tokenizer = build(task, "lstm", {**SMALL, "hidden_size": 16, "crf": True}, LABELS, data)
    features = [dict(row) for row in task.featurize(data, tokenizer, LABEL2ID)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(100):
        batch = pad_batch(rng.sample(features, 16), task.pad_values(tokenizer))
        loss = model(**{k: v for k, v in batch.items() if k not in ("word_ids", "example_index")}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    examples = datasets.Dataset.from_dict({"tokens": [w for w, _ in test], "ner_tags": [t for _, t in test]})
    test_features = task.featurize(examples, tokenizer, LABEL2ID)
    batch = pad_batch([dict(row) for row in test_features], task.pad_values(tokenizer))
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in batch.items() if k not in ("word_ids", "example_index", "labels")}).logits
    predicted = task.decode(examples, test_features, logits.numpy(), dict(enumerate(LABELS)))
    pairs = [(p, g) for ps, (_, gs) in zip(predicted, test) for p, g in zip(ps, gs)]
    accuracy = sum(p == g for p, g in pairs) / len(pairs)
    assert accuracy >= 0.9, f"accuracy {accuracy:.2f} after 100 steps (chance is about 0.5)"
