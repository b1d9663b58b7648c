"""Errors that reach the user: each names the file, key or line at fault.

The CLI maps `UserInputError` to exit status 2 and anything else to 1, so scripts can tell
"fix your recipe or data" apart from "something broke".
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserInputError(Exception):
    """A bad recipe, argument or input file; the message says where and what to do."""


class RecipeError(UserInputError):
    """A recipe that cannot be loaded or validated."""


class DataError(UserInputError):
    """An input data file with a bad row, column or format."""


class TrainingDiverged(UserInputError):
    """A non-finite training loss: the run stops at that step instead of training on NaN weights.

    A user error because its usual causes are the recipe's (learning rate, fp16) or a data row's.
    """


class ModelNotFoundError(UserInputError):
    """A model name that is neither an alias, a local folder, nor reachable on the Hub."""


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """A ' (did you mean X?)' suffix for a misspelt name, or '' if nothing is close."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
