"""Checking one workflow mapping against its provider's model
(`dstack.spec.models.workflow_model`): the workflow, or every problem, each in plain words
with the field it is about and, for an unknown key, the field it was probably meant to be.
`dstack.spec.loader` checks the workflows of a project's files with it.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import get_args

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from dstack.spec.fields import UNITS_REQUIRED, describe
from dstack.spec.models import Workflow, workflow_model
from dstack.spec.problems import FieldPath, Locate, Problem, spec_error
from dstack.spec.registry import PROVIDERS, providers_hint, unknown_provider_message

COMMAND_LINE = "<command line>"

_EXPECTED = {
    "string_type": "a string",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list",
    "dict_type": "a mapping",
    "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}


def _plain(error: ErrorDetails) -> str:
    """A pydantic error in plain words."""
    kind, ctx, value = error["type"], error.get("ctx") or {}, error.get("input")
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind in _EXPECTED:
        return f"expected {_EXPECTED[kind]}, got {describe(value)}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        bound = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
        name = next(k for k in bound if k in ctx)
        return f"must be {bound[name]} {ctx[name]}, got {describe(value)}"
    if kind in ("too_short", "string_too_short") and ctx.get("min_length") == 1:
        return "must not be empty"
    return str(error["msg"])


def _model_in(annotation: object) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if (found := _model_in(arg)) is not None:
            return found
    return None


def _fields_at(model: type[BaseModel], path: FieldPath) -> list[str]:
    """The keys allowed in the mapping at `path` inside `model`."""
    current: type[BaseModel] | None = model
    for part in path:
        if isinstance(part, int) or current is None:
            continue
        info = next((f for n, f in current.model_fields.items() if part in (n, f.alias)), None)
        current = _model_in(info.annotation) if info else None
    return [f.alias or n for n, f in current.model_fields.items()] if current else []


def _unknown_field(provider: str, path: FieldPath) -> tuple[str, str | None]:
    """Message for an unknown key at `path`, and the field it was probably meant to be."""
    key = str(path[-1])
    choices = _fields_at(workflow_model(provider), path[:-1])
    message = f'unknown field "{key}"'
    if len(path) == 1:
        others = [p for p in PROVIDERS if key in _fields_at(workflow_model(p), ())]
        if others:
            return f"{message} for the {provider} provider ({', '.join(others)} has it)", None
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.6)
    if close:
        return f'{message}. Did you mean "{close[0]}"?', close[0]
    if 0 < len(choices) <= 8:
        return f"{message}; expected one of: {', '.join(choices)}", None
    return message, None


def check_workflow(
    data: object,
    *,
    origin: str = COMMAND_LINE,
    path: FieldPath = (),
    locate: Locate | None = None,
    units_required: bool = False,
) -> tuple[Workflow | None, list[Problem]]:
    """Validate one workflow mapping: the workflow, or None and every problem found.

    `units_required`: the mapping is what a person wrote, so a size that is a bare number
    is refused rather than read as bytes.
    """

    def problem(sub: FieldPath, message: str, key: bool = False) -> Problem:
        return Problem.at(origin, locate, path + sub, message, key)

    if not isinstance(data, Mapping):
        return None, [problem((), f"expected a mapping of workflow fields, got {describe(data)}")]
    provider = data.get("provider")
    if provider is None:
        return None, [problem((), f'"provider" is required. {providers_hint()}')]
    if not isinstance(provider, str):
        return None, [problem(("provider",), f"expected a provider name, got {describe(provider)}")]
    if provider not in PROVIDERS:
        message = f"{unknown_provider_message(provider)} {providers_hint()}"
        return None, [problem(("provider",), message)]
    model = workflow_model(provider)
    try:
        context = {UNITS_REQUIRED: True} if units_required else None
        return model.model_validate(dict(data), context=context), []
    except ValidationError as e:
        errors = e.errors(include_url=False)
    problems, meant = [], set()
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden":
            message, suggestion = _unknown_field(provider, loc)
            problems.append(problem(loc, message, key=True))
            meant.add((*loc[:-1], suggestion))
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "missing" and loc not in meant:  # a misspelling says it already
            problems.append(problem(loc[:-1], f'"{loc[-1]}" is required'))
        elif error["type"] not in ("missing", "extra_forbidden"):
            problems.append(problem(loc, _plain(error)))
    return None, problems


def validate_workflow(data: Mapping[str, object], *, origin: str = COMMAND_LINE) -> Workflow:
    """The workflow `data` describes (`name` may be absent); `SpecError` listing every problem."""
    workflow, problems = check_workflow(data, origin=origin)
    if problems or workflow is None:
        raise spec_error(problems)
    return workflow
