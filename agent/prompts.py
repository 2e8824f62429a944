"""Prompt files rendered strictly: a missing or unused variable is an error."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

VAR = re.compile(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}")


class PromptError(KeyError):
    """A template and its variables do not match."""


def load(name: str) -> str:
    """Read prompts/<name> from the installed package."""
    return resources.files("tao_finetune.prompts").joinpath(name).read_text()


def render_text(template: str, variables: dict[str, Any]) -> str:
    """Substitute {{ var }}; every variable must be used and every placeholder given."""
    needed = set(VAR.findall(template))
    missing = needed - variables.keys()
    if missing:
        raise PromptError(f"missing prompt variables: {', '.join(sorted(missing))}")
    unused = variables.keys() - needed
    if unused:
        raise PromptError(f"unused prompt variables: {', '.join(sorted(unused))}")
    return VAR.sub(lambda m: str(variables[m.group(1)]), template)


def render(name: str, **variables: Any) -> str:
    """Render prompts/<name> strictly."""
    return render_text(load(name), variables)
