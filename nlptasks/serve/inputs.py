"""A predict request's inputs checked against the model's task before any of them is queued.

Checking here, rather than letting `predict` fail, keeps one request's bad input out of the batch it
would share with other requests, and answers it 413 or 422 with the input's position instead of 500.
An input that passes is what `Predictor.predict` reads, so the answer is the one `predict` gives.
"""

from __future__ import annotations

from typing import Any

from nlptasks.errors import UserInputError
from nlptasks.tasks.base import json_input

PAIR_TASKS = frozenset({"classification", "sentence-embedding"})
"""Single-text tasks that also read `{"text": ..., "text_pair": ...}` (a pair to classify or to compare)."""


class TooLarge(UserInputError):
    """A request over a size limit: answered 413 rather than 422."""


def check_inputs(inputs: list[Any], task: Any, max_inputs: int, max_chars: int) -> list[str | dict[str, str]]:
    """The inputs as `predict` reads them; `TooLarge` or `UserInputError` naming the first bad one."""
    if len(inputs) > max_inputs:
        raise TooLarge(f"{len(inputs)} inputs in one request; at most {max_inputs} (--max-inputs)")
    checked = [_checked(value, number, task, max_chars) for number, value in enumerate(inputs)]
    kinds = {isinstance(value, dict) for value in checked if not (isinstance(value, str) and not value.strip())}
    if task.name == "sentence-embedding" and len(kinds) > 1:  # its `predict` reads one kind per call
        raise UserInputError("inputs: a mix of texts and {text, text_pair} pairs; send one kind per request")
    return checked


def _checked(value: Any, number: int, task: Any, max_chars: int) -> str | dict[str, str]:
    where = f"inputs[{number}]"
    checked = _fields(value, where, task.input_fields) if len(task.input_fields) > 1 else _text(value, where, task)
    chars = len(checked) if isinstance(checked, str) else sum(len(text) for text in checked.values())
    if chars > max_chars:
        raise UserInputError(f"{where}: {chars} characters; at most {max_chars} (--max-input-chars)")
    return checked


def _fields(value: Any, where: str, fields: tuple[str, ...]) -> dict[str, str]:
    """A multi-field input (QA): an object with each field a non-blank string and nothing else."""
    if not isinstance(value, dict):
        raise UserInputError(f"{where}: expected an object with the fields {list(fields)}, got {_kind(value)}")
    _no_unknown(value, where, fields)
    try:
        return json_input(value, fields)
    except ValueError as err:
        raise UserInputError(f"{where}: {err}") from None


def _text(value: Any, where: str, task: Any) -> str | dict[str, str]:
    """A single-text input: a string, or `{"text": ...}` (with `text_pair` where the task reads pairs)."""
    if isinstance(value, str):
        return value
    allowed = ("text", "text_pair") if task.name in PAIR_TASKS else ("text",)
    if not isinstance(value, dict):
        raise UserInputError(
            f"{where}: expected a string or an object with the fields {list(allowed)}, got {_kind(value)}"
        )
    _no_unknown(value, where, allowed)
    if not isinstance(value.get("text"), str):
        raise UserInputError(f"{where}: field 'text' must be a string, got {value.get('text')!r}")
    if value.get("text_pair") is None:
        return value["text"]
    if not isinstance(value["text_pair"], str):
        raise UserInputError(f"{where}: field 'text_pair' must be a string, got {value['text_pair']!r}")
    return value


def _no_unknown(value: dict[str, Any], where: str, allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise UserInputError(f"{where}: unknown field(s) {unknown}; allowed: {list(allowed)}")


def _kind(value: Any) -> str:
    names = {str: "a string", dict: "an object", list: "a list", bool: "a boolean", type(None): "null"}
    return names.get(type(value), f"a number ({value!r})" if isinstance(value, int | float) else type(value).__name__)
