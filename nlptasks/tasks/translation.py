"""Translation from one language of parallel rows into another (Multi30k English to German by default).

Rows are Hub-style `{"translation": {"en": "...", "de": "..."}}` objects with two or more
languages, or flat rows with one column per language (`{"en": "...", "de": "..."}`, as CSV files
and the Hub's `bentrevett/multi30k` hold them), every text non-empty; they are stored as
`[{language, text}, ...]` so one schema holds any language pair. The direction is
`task_args.source_lang` -> `task_args.target_lang` (`source_lang: de, target_lang: en`
translates the same data the other way).

Metrics on sacreBLEU's 0-100 scale, computed on the detokenized generated text with its default
settings: `bleu` (corpus BLEU, `13a` tokenizer, exponential smoothing) and `chrf` (character
6-gram F-score, beta 2); `gen_len` is the mean generated length in tokens. Each scored split
writes `sacrebleu_<split>.json` to the run directory with both scores' signatures
(`nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:...`) and the full BLEU line, so a
number can be reproduced and compared with published ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import datasets
from pydantic import Field, model_validator

from nlptasks.errors import DataError
from nlptasks.metrics.bleu import sacrebleu_scores
from nlptasks.rundir import write_atomic
from nlptasks.tasks.base import Generation, in_memory, nonblank
from nlptasks.tasks.seq2seq import Seq2SeqOptions, Seq2SeqTask, gen_len

SOURCE_LENGTHS = ((0, 10), (11, 20), (21, 30), (31, 10**9))
"""Source-length buckets in words for BLEU by length."""

Pairs = list[dict[str, str]]
"""One row's texts: `[{"language": "en", "text": ...}, ...]`."""


class TranslationOptions(Seq2SeqOptions):
    source_lang: str = Field(default="en", min_length=1)
    """Language code of the source texts (a key of each row's `translation` object)."""
    target_lang: str = Field(default="de", min_length=1)
    """Language code of the texts to generate."""

    @model_validator(mode="after")
    def _two_languages(self) -> TranslationOptions:
        if self.source_lang == self.target_lang:
            raise ValueError(f"source_lang and target_lang are both '{self.source_lang}'")
        return self


class Translation(Seq2SeqTask):
    name = "translation"
    input_column = "translation"
    target_column = "translation"
    main_metric = "bleu"
    encoder_decoder_pipeline = "translation"
    headline_metrics = ("bleu", "chrf", "gen_len")
    Options = TranslationOptions
    options: TranslationOptions

    @classmethod
    def features(cls) -> datasets.Features:
        return datasets.Features(
            {"translation": [{"language": datasets.Value("string"), "text": datasets.Value("string")}]}
        )

    @classmethod
    def shaped_row(cls, row: dict[str, Any]) -> dict[str, Any]:
        """A flat row's text columns (every column but `id`) as its `translation` languages."""
        if "translation" in row:
            return row
        return {"translation": {code: text for code, text in row.items() if code != "id"}}

    @classmethod
    def check_row(cls, row: dict[str, Any], label_names: list[str] | None) -> dict[str, Any]:
        texts = row["translation"]
        if not isinstance(texts, dict) or len(texts) < 2:
            raise ValueError(f"field 'translation' must map two or more language codes to texts, got {texts!r}")
        pairs = [{"language": code, "text": nonblank(text, f"translation.{code}")} for code, text in texts.items()]
        return {"translation": pairs}

    def corpus(self, examples: datasets.Dataset) -> Iterator[str]:
        for pairs in examples["translation"]:
            yield from (pair["text"] for pair in pairs)

    def sources(self, batch: dict[str, list], indices: list[int]) -> list[str]:
        return [_text_in(pairs, self.options.source_lang, index) for pairs, index in zip(batch["translation"], indices)]

    def targets(self, batch: dict[str, list], indices: list[int]) -> list[str] | None:
        """None for `predict` inputs, which hold the source text alone (data rows hold two languages or more)."""
        if all(len(pairs) == 1 for pairs in batch["translation"]):
            return None
        return [_text_in(pairs, self.options.target_lang, index) for pairs, index in zip(batch["translation"], indices)]

    def examples_from_sources(self, sources: list[str]) -> datasets.Dataset:
        rows = [[{"language": self.options.source_lang, "text": text}] for text in sources]
        return in_memory({"translation": rows}, self.features())

    def score(self, examples: datasets.Dataset, predictions: list[Generation]) -> dict[str, float]:
        """`bleu` and `chrf` (sacreBLEU, 0-100) and `gen_len` (see the module docstring)."""
        scores = self._sacrebleu(examples, predictions)
        return {"bleu": scores["bleu"]["score"], "chrf": scores["chrf"]["score"], "gen_len": gen_len(predictions)}

    def error_analysis(self, examples: datasets.Dataset, predictions: list[Generation]) -> dict[str, Any]:
        """BLEU by source length in words: where a model's translations break down as sentences grow."""
        sources = [_text_in(pairs, self.options.source_lang, i) for i, pairs in enumerate(examples["translation"])]
        references = [_text_in(pairs, self.options.target_lang, i) for i, pairs in enumerate(examples["translation"])]
        buckets: dict[tuple[int, int], list[int]] = {}
        for index, source in enumerate(sources):
            words = len(source.split())
            bucket = next(span for span in SOURCE_LENGTHS if span[0] <= words <= span[1])
            buckets.setdefault(bucket, []).append(index)
        by_length = []
        for (shortest, longest), rows in sorted(buckets.items()):
            hypotheses = [predictions[i].text for i in rows]
            bleu = sacrebleu_scores(hypotheses, [references[i] for i in rows])["bleu"]["score"]
            label = f"{shortest}-{longest}" if longest < SOURCE_LENGTHS[-1][1] else f"{shortest}+"
            by_length.append({"source_words": label, "count": len(rows), "bleu": bleu})
        return {"bleu_by_source_length": by_length}

    def write_artifacts(self, folder: Path, split: str, examples: datasets.Dataset, predictions: list[Any]) -> None:
        """`sacrebleu_<split>.json`: each metric's score, signature and sacreBLEU's own summary line."""
        scores = self._sacrebleu(examples, predictions)
        write_atomic(folder / f"sacrebleu_{split}.json", json.dumps(scores, indent=1) + "\n")

    def _sacrebleu(self, examples: datasets.Dataset, predictions: list[Generation]) -> dict[str, dict[str, Any]]:
        hypotheses = [prediction.text for prediction in predictions]
        references = [
            _text_in(pairs, self.options.target_lang, index) for index, pairs in enumerate(examples["translation"])
        ]
        return sacrebleu_scores(hypotheses, references)

    def empty_prediction(self) -> dict[str, Any]:
        """Nothing to translate: no translation is generated."""
        return {"source": "", "translation": ""}

    def present(self, example: dict[str, Any], prediction: Generation) -> dict[str, Any]:
        texts = {pair["language"]: pair["text"] for pair in example["translation"]}
        shown = {"source": texts[self.options.source_lang], "translation": prediction.text}
        if self.options.target_lang in texts:
            shown["gold"] = texts[self.options.target_lang]
        return shown


def _text_in(pairs: Pairs, language: str, index: int) -> str:
    for pair in pairs:
        if pair["language"] == language:
            return pair["text"]
    found = ", ".join(pair["language"] for pair in pairs)
    raise DataError(
        f"data: example {index} has no '{language}' text in field 'translation' (it has {found}); "
        "set task_args.source_lang and task_args.target_lang to languages the data has"
    )
