"""nlptasks: NLP tasks as runnable recipes on the Hugging Face stack."""

from nlptasks.api import evaluate, load, run
from nlptasks.errors import DataError, RecipeError, UserInputError
from nlptasks.predict import Predictor
from nlptasks.recipe import Recipe, load_recipe
from nlptasks.training import RunResult

__all__ = [
    "DataError",
    "Predictor",
    "Recipe",
    "RecipeError",
    "RunResult",
    "UserInputError",
    "evaluate",
    "load",
    "load_recipe",
    "run",
]
