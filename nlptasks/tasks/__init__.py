"""The task registry: one module per task, registered here and nowhere else."""

from __future__ import annotations

from typing import TYPE_CHECKING

from nlptasks.config import validate_section
from nlptasks.tasks.base import Task
from nlptasks.tasks.classification import Classification
from nlptasks.tasks.extractive_summarization import ExtractiveSummarization
from nlptasks.tasks.ner import NER
from nlptasks.tasks.qa import QuestionAnswering
from nlptasks.tasks.rag_answer import RagAnswer
from nlptasks.tasks.sentence_embedding import SentenceEmbedding
from nlptasks.tasks.summarization import Summarization
from nlptasks.tasks.translation import Translation

if TYPE_CHECKING:
    from nlptasks.recipe import Recipe

TASKS: dict[str, type[Task]] = {
    task.name: task
    for task in (
        NER,
        Classification,
        ExtractiveSummarization,
        QuestionAnswering,
        Summarization,
        Translation,
        SentenceEmbedding,
        RagAnswer,
    )
}


def headline_scores(task: str, scores: dict[str, float]) -> dict[str, float]:
    """The task's headline metrics among one split's `scores`, in the order the task declares them."""
    return {name: scores[name] for name in TASKS[task].headline_metrics if name in scores}


def task_for(recipe: Recipe) -> Task:
    """The recipe's task, with its `task_args` validated against the task's own options."""
    task_class = TASKS[recipe.task]
    options = validate_section(task_class.Options, recipe.task_args, "task_args")
    return task_class(options, max_length=recipe.data.max_length, stride=recipe.data.stride)
