"""Typed tools: pydantic arguments, derived schemas, and the registry the CLI fills by importing tools/.

The core (loop, autopilot, steps table) knows tools only through this module; tools/base.py re-exports it.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, get_type_hints

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from tao_finetune.agent.context import RunContext

Step = int  # 0 = any step, 1..6 = the spec's steps


@dataclass(frozen=True)
class Tool:
    """A registered tool: name, step, argument model and the function behind it."""

    name: str
    description: str
    step: Step
    args_model: type[BaseModel]
    fn: Callable[..., Any]
    max_retries: int = 3
    step_for: Callable[[BaseModel], Step] | None = None

    def step_of(self, args: BaseModel) -> Step:
        """The step this call belongs to (some tools span steps by argument)."""
        return self.step_for(args) if self.step_for else self.step

    def schema(self) -> dict[str, Any]:
        """The tool definition the Anthropic Messages API expects."""
        params = self.args_model.model_json_schema()
        params.pop("title", None)
        params.setdefault("properties", {})
        return {"name": self.name, "description": self.description, "input_schema": params}

    def validate(self, raw: dict[str, Any]) -> BaseModel:
        """Parse raw model input; raises pydantic.ValidationError."""
        return self.args_model.model_validate(raw)

    def __call__(self, ctx: "RunContext", args: BaseModel) -> Any:
        return self.fn(ctx, args)


class NoArgs(BaseModel):
    """A tool that takes no arguments."""


REGISTRY: dict[str, Tool] = {}


def tool(
    step: Step,
    name: str | None = None,
    max_retries: int = 3,
    step_for: Callable[[Any], Step] | None = None,
    register: bool = True,
) -> Callable[[Callable[..., Any]], Tool]:
    """Register `fn(ctx, args: ArgsModel)` as a tool; the schema comes from ArgsModel, the description from the docstring."""

    def wrap(fn: Callable[..., Any]) -> Tool:
        doc = inspect.getdoc(fn)
        if not doc:
            raise TypeError(f"tool {fn.__name__!r} has no docstring: a tool needs a description")
        hints = get_type_hints(fn)
        params = list(inspect.signature(fn).parameters)
        if len(params) != 2:
            raise TypeError(f"tool {fn.__name__!r} must take (ctx, args), got {params!r}")
        args_model = hints.get(params[1])
        if not (isinstance(args_model, type) and issubclass(args_model, BaseModel)):
            raise TypeError(f"tool {fn.__name__!r}: second parameter must be a pydantic model")
        for field_name, field in args_model.model_fields.items():
            if not field.description:
                raise TypeError(f"tool {fn.__name__!r}: argument {field_name!r} has no description")
        t = Tool(name or fn.__name__, doc, step, args_model, fn, max_retries, step_for)
        if not register:
            return t
        if t.name in REGISTRY and REGISTRY[t.name].fn.__qualname__ != fn.__qualname__:
            raise ValueError(f"tool {t.name!r} registered twice")
        REGISTRY[t.name] = t
        return t

    return wrap


def format_validation_error(err: ValidationError) -> str:
    """List pydantic errors one per line for the model."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(arguments)"
        lines.append(f"- {loc}: {e['msg']}")
    return "\n".join(lines)
