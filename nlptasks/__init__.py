"""nlptasks: NLP tasks as runnable recipes on the Hugging Face stack."""

import logging

# bitsandbytes warns on every import on AVX-512 CPUs that an optional 4-bit kernel is not
# installed; that kernel is fetched from the Hub at run time, and its built-in CPU path is used.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from nlptasks import models  # noqa: F401 - registers the model families, before anything looks one up
from nlptasks.api import evaluate, export, inspect, list_adapters, load, run, tune
from nlptasks.compare import compare
from nlptasks.errors import DataError, RecipeError, UserInputError
from nlptasks.predict import Predictor
from nlptasks.recipe import Recipe, load_recipe
from nlptasks.serve import serve
from nlptasks.training import RunResult

__all__ = [
    "DataError",
    "Predictor",
    "Recipe",
    "RecipeError",
    "RunResult",
    "UserInputError",
    "compare",
    "evaluate",
    "export",
    "inspect",
    "list_adapters",
    "load",
    "load_recipe",
    "run",
    "serve",
    "tune",
]
