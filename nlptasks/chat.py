"""A decoder's prompt: the chat template around one user turn, split where the source goes.

Shared by the generating tasks and the RAG generator, so neither imports the other.
"""

from __future__ import annotations

from typing import Any

from nlptasks.errors import RecipeError

PLAIN_CHAT_TEMPLATE = (
    "{{ bos_token or '' }}{% for message in messages %}{{ message['content'] }}"
    "{% if message['role'] == 'user' %}{{ '\\n\\n' }}{% else %}{{ eos_token }}{% endif %}{% endfor %}"
)
"""A decoder's prompt where its tokenizer has no chat template: the user turn, a blank line, then the answer."""
SOURCE_SLOT = "\x00source\x00"
"""Stands for the source while the chat template is rendered, so that the source can be cut alone."""


def prompt_frame(tokenizer: Any, instruction: str) -> tuple[list[int], list[int]]:
    """Token ids of a decoder's prompt before and after the source.

    The prompt is the chat template around one user turn, `instruction + source`, plus the
    template's generation prompt (where the assistant's answer begins). Rendering it around a
    placeholder and tokenizing the two sides apart lets a long source be cut alone. A tokenizer
    without a chat template is given `PLAIN_CHAT_TEMPLATE`, and saved with it in the run's `model/`,
    so the model prompts the same way under bare `transformers`.
    """
    if tokenizer.chat_template is None:
        tokenizer.chat_template = PLAIN_CHAT_TEMPLATE
    message = {"role": "user", "content": instruction + SOURCE_SLOT}
    text = tokenizer.apply_chat_template([message], tokenize=False, add_generation_prompt=True)
    if text.count(SOURCE_SLOT) != 1:
        raise RecipeError(
            f"model: the chat template of {tokenizer.name_or_path} does not render the user's message as given, "
            "so there is no place to put the source in the prompt"
        )
    head, _, tail = text.partition(SOURCE_SLOT)
    return (
        tokenizer(head, add_special_tokens=False)["input_ids"],
        tokenizer(tail, add_special_tokens=False)["input_ids"],
    )
