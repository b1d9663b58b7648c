"""The base of every typed settings section, and the messages a bad one gets.

A leaf module: recipes, tasks, model builders and RAG settings all define sections, so the base
must import none of them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from nlptasks.errors import RecipeError, did_you_mean


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors, never silently ignored.

    A field's docstring is its documentation (`description`), which `nlptasks recipes --show` prints.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


SectionT = TypeVar("SectionT", bound=Section)


def explain(err: ValidationError, header: str, model: type[BaseModel], prefix: tuple[str, ...] = ()) -> str:
    """One line per problem: the dotted key, what is wrong, and a suggestion when one fits."""
    lines = [header]
    for problem in err.errors():
        loc = [str(part) for part in problem["loc"]]
        key = ".".join([*prefix, *loc])
        if problem["type"] == "extra_forbidden":
            allowed = _fields_at(model, loc[:-1])
            lines.append(f"  {key}: unknown key{did_you_mean(loc[-1], allowed)}; allowed: {', '.join(allowed)}")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"  {key}: {message} (got {problem.get('input')!r})")
    return "\n".join(lines)


def _fields_at(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def validate_section(options_model: type[Section], values: dict[str, Any], section: str) -> Section:
    """Validate a free-form section (`task_args`, `model_args`) against its owner's schema."""
    try:
        return options_model.model_validate(values)
    except ValidationError as err:
        raise RecipeError(explain(err, f"recipe section `{section}` is invalid", options_model, (section,))) from None


def annotated(section: Section, indent: str = "", expand: dict[str, Section] | None = None) -> str:
    """A section as YAML with each field's documentation as a comment above it.

    `expand` renders a free-form field (`task_args`) as the section that validates it, defaults and all.
    """
    lines = []
    for name, field in type(section).model_fields.items():
        lines += [f"{indent}# {line}" for line in _wrapped(field.description or "")]
        value = (expand or {}).get(name, getattr(section, name))
        if isinstance(value, Section):
            lines.append(f"{indent}{name}:")
            lines += [annotated(value, indent + "  ")] if type(value).model_fields else []
        else:
            rendered = yaml.safe_dump(_plain(value), default_flow_style=True, width=10**6).removesuffix("...\n")
            lines.append(f"{indent}{name}: {rendered.strip()}")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """What YAML can dump: paths as text, sections as mappings."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, Path):
        return str(value)
    return value


def _wrapped(text: str, width: int = 100) -> list[str]:
    return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False) if text.strip() else []
