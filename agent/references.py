"""The one reader of the packaged references/ folder (curated markdown and tables, scaffolds), usable in every step."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "tao_finetune.references"
KINDS = (".md", ".yaml", ".json")


def root() -> Path:
    """The references folder on disk (the package is installed as files, editable or not)."""
    return Path(str(resources.files(PACKAGE)))


def names() -> list[str]:
    """Names of the curated reference files (not the scaffolds), sorted."""
    return sorted(p.name for p in resources.files(PACKAGE).iterdir()
                  if p.is_file() and p.name.endswith(KINDS) and not p.name.startswith("_"))


def read_text(name: str) -> str:
    """Text of one reference file (name with or without extension, optional 'references/' prefix or '#anchor');
    raises KeyError listing the names."""
    known = names()
    stem = name.removeprefix("references/").split("#")[0]
    match = next((n for n in known if n == stem or n.rsplit(".", 1)[0] == stem), None)
    if match is None:
        raise KeyError(f"no reference named {name!r}; available: {', '.join(known)}")
    return resources.files(PACKAGE).joinpath(match).read_text(encoding="utf-8")


def load_yaml(name: str) -> Any:
    """A YAML reference table, parsed."""
    return yaml.safe_load(read_text(name))


def recipe(task: str) -> dict[str, Any]:
    """The curated per-task recipe defaults from references/recipes.yaml (KeyError for an unknown task)."""
    tasks = (load_yaml("recipes.yaml") or {}).get("tasks") or {}
    if task not in tasks:
        raise KeyError(f"no reference recipe for {task!r}; known: {', '.join(sorted(tasks))}")
    return tasks[task]


def index() -> str:
    """One line per reference file, for the system prompt."""
    return "\n".join(f"- {n}" for n in names()) or "- (none)"
