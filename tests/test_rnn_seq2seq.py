"""RNN encoder-decoder with attention: shapes, padding, save/load, decoding through `generate`, runs, learning."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import same_weights
from test_generation import DIALOGUES, PAIRS, pair_rows, pairs_to_learn_by_heart, recipe, write_rows
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

import nlptasks
from nlptasks import catalog, models
from nlptasks.errors import RecipeError
from nlptasks.models.generation import configure, generate_ids
from nlptasks.models.rnn_seq2seq import RNNSeq2SeqConfig, RNNSeq2SeqForConditionalGeneration, RNNSeq2SeqOptions
from nlptasks.models.t5 import train_unigram_tokenizer
from nlptasks.recipe import GenerationSettings
from nlptasks.tasks.ner import NER, NEROptions
from nlptasks.tasks.translation import Translation, TranslationOptions

TINY = {"embedding_dim": 16, "hidden_size": 12, "vocab_size": 200}
START, EOS, A, B = 0, 1, 3, 4
"""Token ids of the hand-built model: the decoder start (also padding), the end of sequence, two words."""


pytestmark = pytest.mark.usefixtures("one_thread")


def random_model(cell: str = "lstm", attention: str = "luong", **options) -> RNNSeq2SeqForConditionalGeneration:
    torch.manual_seed(0)
    settings = RNNSeq2SeqOptions(**{**TINY, "num_layers": 2, "attention": attention, **options})
    config = RNNSeq2SeqConfig(
        cell=cell, vocab_size=30, options=settings.model_dump(), tie_word_embeddings=settings.tie_embeddings
    )
    return RNNSeq2SeqForConditionalGeneration(config).eval()


def source_batch() -> dict[str, torch.Tensor]:
    """Three right-padded sources of different lengths, each ending with EOS."""
    input_ids = torch.tensor([[5, 6, 7, 8, EOS], [8, 9, EOS, 0, 0], [3, 4, 5, EOS, 0]])
    return {"input_ids": input_ids, "attention_mask": (input_ids != 0).long()}


LABELS = torch.tensor([[3, 4, 5, EOS], [6, EOS, -100, -100], [7, 8, EOS, -100]])


def data_files(folder: Path, task: str) -> dict[str, Path]:
    """Tiny train/validation/test files of the task: four sentence pairs, or three dialogues."""
    rows = pair_rows() if task == "translation" else [{"document": d, "summary": s} for d, s in DIALOGUES]
    splits = (("train", 4), ("validation", 1), ("test", 1))
    return {split: write_rows(folder / f"{split}.jsonl", rows * repeat) for split, repeat in splits}


# --- the model ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("attention", ["luong", "bahdanau"])
def test_forward_gives_next_token_logits_and_a_loss_with_gradients(cell: str, attention: str) -> None:
    model = random_model(cell, attention).train()
    output = model(**source_batch(), labels=LABELS)
    assert output.logits.shape == (3, 4, 30) and output.encoder_last_hidden_state.shape == (3, 5, 2 * 12)
    assert output.cache is None  # the decoder state is returned only to `generate` (use_cache)
    output.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert model.encoder.embeddings.weight.grad.abs().sum() > 0


def test_teacher_forcing_feeds_the_gold_previous_token_after_the_start_token() -> None:
    model = random_model()
    with torch.no_grad():
        from_labels = model(**source_batch(), labels=LABELS).logits
        decoder_input_ids = torch.tensor([[START, 3, 4, 5], [START, 6, EOS, 0], [START, 7, 8, EOS]])
        given = model(**source_batch(), decoder_input_ids=decoder_input_ids).logits
    assert torch.equal(from_labels, given)


@pytest.mark.parametrize("attention", ["luong", "bahdanau"])
def test_padded_source_tokens_change_neither_logits_nor_generations(attention: str) -> None:
    model = random_model("gru", attention)
    batch = source_batch()
    changed = dict(batch, input_ids=batch["input_ids"].masked_fill(batch["attention_mask"] == 0, 7))
    configure(model, GenerationSettings(num_beams=2, max_new_tokens=6))
    with torch.no_grad():
        logits = model(**batch, labels=LABELS).logits
        assert torch.equal(model(**changed, labels=LABELS).logits, logits)
        alone = model(input_ids=batch["input_ids"][1:2, :3], labels=LABELS[1:2]).logits
    assert torch.allclose(alone, logits[1:2], atol=1e-6)  # a source scores the same alone and padded in a batch
    assert torch.equal(generate_ids(model, changed), generate_ids(model, batch))
    with torch.no_grad():
        [weights] = model(**batch, labels=LABELS, output_attentions=True).cross_attentions
    assert weights.shape == (3, LABELS.shape[1], batch["input_ids"].shape[1])  # (batch, target, source)
    assert torch.allclose(weights.sum(-1), torch.ones(3, LABELS.shape[1])) and (weights[1, :, 3:] == 0).all()


@pytest.mark.parametrize("tie", [True, False])
def test_save_and_load_round_trip_through_the_auto_classes(tmp_path: Path, tie: bool) -> None:
    model = random_model(tie_embeddings=tie)
    tokenizer = train_unigram_tokenizer((text for pair in PAIRS for text in pair), vocab_size=100)
    assert (model.lm_head.weight is model.encoder.embeddings.weight) is tie
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is RNNSeq2SeqForConditionalGeneration
    assert (loaded.lm_head.weight is loaded.encoder.embeddings.weight) is tie
    assert same_weights(loaded, model)
    batch = dict(source_batch(), labels=LABELS)
    with torch.no_grad():
        assert torch.allclose(loaded(**batch).logits, model(**batch).logits, atol=1e-6)  # RNN weight layout may differ
    assert catalog.family_of(tmp_path) == "seq2seq"
    reloaded, reloaded_tokenizer = models.load(tmp_path, Translation(TranslationOptions(), 64, 0))
    assert type(reloaded) is RNNSeq2SeqForConditionalGeneration
    assert reloaded_tokenizer.get_vocab() == AutoTokenizer.from_pretrained(tmp_path).get_vocab()


# --- decoding through the one generate path -------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"num_beams": 3, "length_penalty": 0.8},
        {"do_sample": True, "temperature": 0.9, "top_k": 10, "top_p": 0.9},
    ],
    ids=["greedy", "beam", "sampling"],
)
def test_greedy_beam_and_sampling_generate_as_many_new_tokens_as_asked(settings: dict) -> None:
    model = random_model()
    configure(model, GenerationSettings(min_new_tokens=25, max_new_tokens=25, **settings))
    assert generate_ids(model, source_batch()).shape == (3, 25)  # past the library's default length of 20


@pytest.mark.parametrize("beams", [1, 3])
def test_decoding_one_token_at_a_time_from_the_state_equals_rerunning_the_prefix(beams: int) -> None:
    """The RNN state is the cache: fed forward (and reordered by beam search) it must change nothing.

    Untied random weights scaled up, and no token twice (`no_repeat_ngram_size` 1), make beams diverge
    and swap places, so a state left in the wrong beam order would change the outputs.
    """
    model = random_model(attention="bahdanau", tie_embeddings=False, dropout=0.0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(3)
    configure(model, GenerationSettings(num_beams=beams, max_new_tokens=10, no_repeat_ngram_size=1))
    batch = source_batch()
    cached = model.generate(**batch)
    assert len({tuple(row) for row in cached.tolist()}) == 3
    assert torch.equal(cached, model.generate(**batch, use_cache=False))


def bigram_model(probabilities: dict[int, dict[int, float]]) -> RNNSeq2SeqForConditionalGeneration:
    """A GRU encoder-decoder whose next token depends only on the previous one, with the probabilities given.

    One-hot embeddings; the decoder GRU's update gate is shut (bias -30) and its recurrent weights are
    zero, so its state is tanh(5 * one-hot of the input token); the attentional vector passes that on
    (its weights on the attention context are zero) and the output layer holds log-probabilities, one
    column per previous token (1e-4 for tokens not given).
    """
    size = 5
    options = RNNSeq2SeqOptions(embedding_dim=size, hidden_size=size, dropout=0.0, tie_embeddings=False)
    config = RNNSeq2SeqConfig(cell="gru", vocab_size=size, options=options.model_dump(), tie_word_embeddings=False)
    model = RNNSeq2SeqForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.encoder.embeddings.weight.copy_(torch.eye(size))
        rnn = model.decoder.rnn
        for weight in (rnn.weight_hh_l0, rnn.bias_hh_l0, rnn.weight_ih_l0, rnn.bias_ih_l0):
            weight.zero_()
        rnn.bias_ih_l0[size : 2 * size] = -30.0  # update gate z = 0: the new state is the candidate alone
        rnn.weight_ih_l0[2 * size :] = 5 * torch.eye(size)  # candidate: tanh(5 * one-hot)
        model.decoder.combine.weight.zero_()
        model.decoder.combine.bias.zero_()
        model.decoder.combine.weight[:, :size] = 5 * torch.eye(size)
        model.lm_head.weight.fill_(math.log(1e-4))
        for previous, following in probabilities.items():
            for token, probability in following.items():
                model.lm_head.weight[token, previous] = math.log(probability)
    return model


def log_probability(model: RNNSeq2SeqForConditionalGeneration, source: dict, target: list[int]) -> float:
    with torch.no_grad():
        logits = model(**source, labels=torch.tensor([target])).logits
    return float(logits.log_softmax(-1)[0, torch.arange(len(target)), target].sum())


def test_beam_search_returns_the_best_scoring_beam_where_greedy_misses_it() -> None:
    # Greedy takes A (0.6) and then ends with 0.5: 0.30 in all. B (0.4) then ends for sure: 0.40.
    model = bigram_model({START: {A: 0.6, B: 0.4}, A: {EOS: 0.5, A: 0.25, B: 0.25}, B: {EOS: 0.9999}})
    source = {"input_ids": torch.tensor([[A, B, EOS]]), "attention_mask": torch.ones(1, 3, dtype=torch.long)}
    configure(model, GenerationSettings(max_new_tokens=4))
    greedy = generate_ids(model, source)[0].tolist()
    configure(model, GenerationSettings(num_beams=2, max_new_tokens=4))
    beam = generate_ids(model, source)[0].tolist()
    assert (greedy, beam) == ([A, EOS], [B, EOS])
    assert log_probability(model, source, beam) == pytest.approx(math.log(0.4), abs=1e-3)
    assert log_probability(model, source, greedy) == pytest.approx(math.log(0.3), abs=1e-3)


# --- recipes and runs -------------------------------------------------------------------------------------------


def test_the_rnn_encoder_decoders_generate_only_and_bad_model_args_name_the_key() -> None:
    with pytest.raises(RecipeError, match="task 'ner' does not.*recurrent baselines are bilstm, bigru"):
        models.build("lstm-attention", {}, NER(NEROptions(), 16, 2), [], None)
    task = Translation(TranslationOptions(), 64, 0)
    with pytest.raises(RecipeError, match=r"model_args\.attention: .*'bahdanau' or 'luong'"):
        models.build("gru-attention", {"attention": "dot"}, task, [], None)


@pytest.mark.parametrize(
    ("task", "model", "model_args", "metric"),
    [
        ("translation", "lstm-attention", {}, "bleu"),
        ("summarization", "gru-attention", {"attention": "bahdanau", "num_layers": 2}, "rougeL"),
    ],
)
def test_a_tiny_run_trains_evaluates_predicts_and_loads_with_bare_transformers(
    tmp_path: Path, task: str, model: str, model_args: dict, metric: str
) -> None:
    result = nlptasks.run(
        recipe(
            task,
            data_files(tmp_path, task),
            model,
            tmp_path / "run",
            model_args={**TINY, **model_args},
            train={"epochs": 2, "learning_rate": 5e-3},
            generation={"num_beams": 2, "min_new_tokens": 3, "max_new_tokens": 3},
        )
    )
    assert metric in result.metrics["validation"] and result.metrics["test"]["gen_len"] == 3
    assert (result.run_dir / "predictions" / "test.jsonl").is_file()
    folder = result.run_dir / "model"
    assert json.loads((folder / "generation_config.json").read_text())["num_beams"] == 2
    assert type(AutoModelForSeq2SeqLM.from_pretrained(folder)) is RNNSeq2SeqForConditionalGeneration
    predictor = nlptasks.load(result.run_dir)
    [shown] = predictor.predict("A man is riding a bike.")
    written = shown["summary" if task == "summarization" else "translation"]
    assert isinstance(written, str)
    looked = predictor.cross_attention("A man is riding a bike.")
    encoded = predictor.tokenizer("A man is riding a bike.")["input_ids"]
    assert looked.text == written and looked.input_tokens == predictor.tokenizer.convert_ids_to_tokens(encoded)
    assert (
        looked.weights.shape == (len(looked.output_tokens), len(looked.input_tokens)) == (3, len(looked.input_tokens))
    )  # max_new_tokens
    assert np.allclose(looked.weights.sum(1), 1.0, atol=1e-5)


def test_a_rerun_resumes_with_the_tokenizer_its_checkpoint_learnt(tmp_path: Path) -> None:
    """The Unigram trainer is not deterministic: a tokenizer learnt afresh could give the saved weights other ids."""
    files = data_files(tmp_path, "translation")
    first = recipe("translation", files, "gru-attention", tmp_path / "run", model_args=TINY, eval={"splits": ["test"]})
    nlptasks.run(first)
    [checkpoint] = (tmp_path / "run" / "checkpoints").glob("checkpoint-*")
    learnt = AutoTokenizer.from_pretrained(checkpoint).get_vocab()
    result = nlptasks.run({**first, "train": {**first["train"], "epochs": 2}})
    assert AutoTokenizer.from_pretrained(result.run_dir / "model").get_vocab() == learnt


@pytest.mark.slow
@pytest.mark.integration
def test_lstm_attention_overfits_real_multi30k_pairs_to_a_high_bleu(data_dir: Path, tmp_path: Path) -> None:
    """Three dozen real pairs learnt by heart: encoder, attention, teacher forcing and beam search all work."""
    result = nlptasks.run(
        recipe(
            "translation",
            pairs_to_learn_by_heart(data_dir, tmp_path, 36),
            "lstm-attention",
            tmp_path / "run",
            model_args={"embedding_dim": 128, "hidden_size": 128, "dropout": 0.0, "vocab_size": 1000},
            train={"epochs": 100, "batch_size": 12, "learning_rate": 5e-3, "eval_strategy": "no", "logging_steps": 50},
            generation={"num_beams": 4, "max_new_tokens": 48},
            eval={"splits": ["test"]},
        )
    )
    assert result.metrics["test"]["bleu"] > 90, result.metrics["test"]
