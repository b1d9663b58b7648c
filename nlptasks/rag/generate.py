"""Answers from retrieved chunks: a chat decoder that cites passages as [n], or an extractive QA reader."""

from __future__ import annotations

import logging
import math
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch

from nlptasks.chat import prompt_frame
from nlptasks.errors import UserInputError
from nlptasks.grounded import CITATION, NOT_FOUND, RULES, cited, passage_prompt, says_not_found
from nlptasks.metrics.squad import normalize_answer
from nlptasks.rag.retrieve import Hit
from nlptasks.rag.settings import RagSettings
from nlptasks.tasks.seq2seq import end_of_sequence

log = logging.getLogger("nlptasks")


class Generator(Protocol):
    def answer(self, question: str, hits: list[Hit]) -> dict[str, Any]:
        """`answer`, `found` (False when the passages do not hold it), `citations` (the passages used)."""
        ...


def load_generator(settings: RagSettings) -> Generator:
    """A QA run directory reads answers out of the chunks; a rag-answer run (`rag tune`) or any other
    decoder writes them."""
    from nlptasks.rundir import RunDir

    run = RunDir.read(Path(settings.generator).expanduser())
    if not run.recipe.is_file():
        return DecoderGenerator(settings)
    from nlptasks.recipe import load_recipe

    recipe = load_recipe(run.recipe)
    if recipe.task != "rag-answer":
        return ExtractiveReader(run.root, settings)
    generator = DecoderGenerator(settings, str(run.model), recipe.task_args.get("prefix", RULES))
    if generator.budget != recipe.data.max_length:
        log.warning(
            "rag.max_context_tokens: the generator was trained on prompts of up to %d tokens and is asked with %d%s",
            recipe.data.max_length,
            generator.budget,
            "; its abstain_threshold was fitted at the former (`rag fit-abstention` fits it again)"
            if settings.abstain_threshold is not None
            else "",
        )
    return generator


def not_found() -> dict[str, Any]:
    return {"answer": NOT_FOUND, "found": False, "citations": []}


def citation(number: int, hit: Hit) -> dict[str, Any]:
    """The cited passage; from a paged document (PDF), with the `page` (and `last_page`) it is on."""
    pages = {key: hit.chunk.metadata[key] for key in ("page", "last_page") if key in hit.chunk.metadata}
    return {"n": number, "doc_id": hit.chunk.doc_id, "chunk_id": hit.chunk_id, "text": hit.chunk.text, **pages}


def prompt_budget(settings: RagSettings, config: Any) -> int:
    """Prompt tokens: `max_context_tokens`, less where the model's context must also hold the answer."""
    context_length = getattr(config, "max_position_embeddings", settings.max_context_tokens)
    return min(settings.max_context_tokens, context_length - settings.generation.max_new_tokens)


class DecoderGenerator:
    """A chat decoder asked with `grounded.passage_prompt`: the `rules`, the passages that fit, the question."""

    def __init__(self, settings: RagSettings, location: str | None = None, rules: str = RULES) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from nlptasks.catalog import resolve_model
        from nlptasks.engines.ctranslate2 import conversion_cache
        from nlptasks.models.generation import configure, generator

        location = location or resolve_model(settings.generator).location
        self.tokenizer = AutoTokenizer.from_pretrained(location)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.bfloat16 if device == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype).to(device).eval()
        configure(self.model, settings.generation)
        if self.model.generation_config.pad_token_id is None:
            self.model.generation_config.pad_token_id = self.tokenizer.eos_token_id
        cache = partial(conversion_cache, location)  # called only if the engine is ctranslate2
        self.generator = generator(self.model, self.tokenizer, settings.generation, cache, batches_in_parallel=False)
        self.frame = prompt_frame(self.tokenizer, rules)
        self.budget = prompt_budget(settings, self.model.config)
        self.abstain_threshold = settings.abstain_threshold
        self.calibration = settings.abstention_calibration
        self.end = end_of_sequence(self.tokenizer)
        self.abstention_start = self.tokenizer(NOT_FOUND, add_special_tokens=False)["input_ids"][0]
        if self.abstain_threshold is not None:  # abstaining is decided by the threshold alone
            self.generator.generation_config.begin_suppress_tokens = [self.abstention_start]

    def prompt(self, question: str, hits: list[Hit]) -> tuple[list[int], list[Hit]]:
        """Prompt ids with as many passages (best first) as fit beside the whole question, and those passages."""
        ids, used = self.text_prompt(question, [hit.chunk.text for hit in hits])
        return ids, hits[:used]

    def text_prompt(self, question: str, passages: list[str]) -> tuple[list[int], int]:
        """Prompt ids with as many `passages` (in order) as fit beside the whole question, and how many went in."""
        return passage_prompt(self.tokenizer, self.frame, question, passages, self.budget)

    @torch.inference_mode()
    def reply(self, ids: list[int]) -> list[int]:
        """The decoded reply's tokens to the prompt `ids`, its end token included where it ended."""
        from nlptasks.models.generation import generate_ids

        batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}
        batch = {key: value.to(self.model.device) for key, value in batch.items()}
        return self._until_end(generate_ids(self.generator, batch)[0].tolist())

    def scored_reply(self, ids: list[int]) -> tuple[list[int], torch.Tensor]:
        """`reply` (with an `abstain_threshold`, never beginning as NOT_FOUND does), and the model's own
        log-probabilities at each of its steps (see `models.generation.scored_reply`)."""
        from nlptasks.models.generation import scored_reply

        tokens, log_probs = scored_reply(self.generator, ids)
        tokens = self._until_end(tokens)
        return tokens, log_probs[: len(tokens)]

    def _until_end(self, tokens: list[int]) -> list[int]:
        return tokens[: tokens.index(self.end) + 1] if self.end in tokens else tokens

    def abstention_features(self, reply: list[int], log_probs: torch.Tensor) -> tuple[float, float]:
        """From a `scored_reply`: log P(the reply begins as NOT_FOUND does) at its first step, and the reply's
        mean token log-probability, both under the model's own distribution."""
        chosen = log_probs.gather(1, torch.tensor(reply)[:, None])
        return float(log_probs[0, self.abstention_start]), float(chosen.mean())

    def text(self, reply: list[int]) -> str:
        return self.tokenizer.decode(reply, skip_special_tokens=True).strip()

    def answer(self, question: str, hits: list[Hit]) -> dict[str, Any]:
        if not hits:
            return not_found()
        ids, used = self.prompt(question, hits)
        scored = {}
        if self.abstain_threshold is None:
            reply = self.reply(ids)
        else:
            reply, log_probs = self.scored_reply(ids)
            features = self.abstention_features(reply, log_probs)
            scored["abstention_probability"] = abstention_probability(features, self.calibration)
            if scored["abstention_probability"] >= self.abstain_threshold:
                return not_found() | scored
        text = self.text(reply)
        if says_not_found(text):
            return not_found() | scored
        numbers = cited(text, len(used))
        citations = [citation(n, used[n - 1]) for n in numbers] if numbers else attributed(text, used)
        return {"answer": text, "found": True, **scored, "citations": citations}


def abstention_probability(features: tuple[float, float], calibration: tuple[float, float, float] | None) -> float:
    """How likely abstaining beats answering, from `DecoderGenerator.abstention_features`: with a
    `calibration` (a, b, c), sigmoid(a * the first feature + b * the second + c); without one, the
    probability that the reply begins as NOT_FOUND does."""
    if calibration is None:
        return math.exp(features[0])
    (first, mean), (a, b, c) = features, calibration
    z = a * first + b * mean + c
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))  # exp never overflows


def attributed(answer: str, hits: list[Hit]) -> list[dict[str, Any]]:
    """Citations for an answer that gave none (small models often ignore the instruction): the passage
    sharing the most words with it, marked `attributed`, or none when no passage shares a content word."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    words = set(normalize_answer(CITATION.sub(" ", answer)).split()) - ENGLISH_STOP_WORDS
    overlap = [len(words & set(normalize_answer(hit.chunk.text).split())) for hit in hits]
    if not overlap or max(overlap) == 0:
        return []
    best = overlap.index(max(overlap))
    return [{**citation(best + 1, hits[best]), "attributed": True}]


class ExtractiveReader:
    """A QA run's model over each retrieved chunk; the span with the highest start+end logit wins."""

    def __init__(self, run_dir: Path, settings: RagSettings) -> None:
        from nlptasks.predict import Predictor

        self.predictor = Predictor(run_dir)
        if self.predictor.recipe.task != "qa":
            raise UserInputError(
                f"rag.generator: {run_dir} is a {self.predictor.recipe.task} run; an extractive reader is a qa run"
            )
        self.min_score = settings.reader_min_score

    def answer(self, question: str, hits: list[Hit]) -> dict[str, Any]:
        if not hits:
            return not_found()
        spans = self.predictor.predict([{"question": question, "context": hit.chunk.text} for hit in hits])
        answered = [i for i, span in enumerate(spans) if span["answer"]]
        best = max(answered, key=lambda i: spans[i]["logit"], default=None)
        if best is None or (self.min_score is not None and spans[best]["logit"] < self.min_score):
            return not_found()
        return {
            "answer": spans[best]["answer"],
            "found": True,
            "score": spans[best]["logit"],
            "citations": [citation(best + 1, hits[best])],
        }
