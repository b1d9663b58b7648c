"""The service's settings: batching bounds and request limits, one typed section.

A leaf of `nlptasks.serve` with no web framework in it, so the CLI can build its flags from the
field docstrings without importing FastAPI.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, ValidationError

from nlptasks.config import Section, explain
from nlptasks.errors import UserInputError


class ServeSettings(Section):
    max_batch_size: int = Field(default=32, ge=1)
    """Most inputs one forward pass of a model reads; larger requests are cut into chunks this size."""
    max_wait_ms: float = Field(default=5.0, ge=0)
    """How long a forward pass that is not yet full waits for more requests' inputs, in milliseconds."""
    max_body_bytes: int = Field(default=1_048_576, ge=1)
    """Largest request body; a larger one (declared or chunked) gets 413 before it is read whole."""
    max_inputs: int = Field(default=256, ge=1)
    """Most inputs one predict request may carry (413 beyond)."""
    max_input_chars: int = Field(default=100_000, ge=1)
    """Longest input in characters, all its fields together (422 beyond); models window long inputs themselves."""

    @classmethod
    def of(cls, **values: Any) -> ServeSettings:
        """Settings from keyword values, a bad one a `UserInputError` naming its flag."""
        try:
            return cls.model_validate(values)
        except ValidationError as err:
            raise UserInputError(explain(err, "invalid serve settings", cls)) from None
