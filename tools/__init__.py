"""The agent's tools; importing a module registers its tools."""

from __future__ import annotations

import importlib

from tao_finetune.tools.base import REGISTRY, Tool

MODULES = (
    "general",
    "request",
    "probe",
    "dataset",
    "task",
    "compat",
    "hardware",
    "ngc",
    "research",
    "project",
    "jobs",
    "hub",
    "report",
)


def all_tools() -> list[Tool]:
    """Import every tool module and return the registered tools in step order."""
    for mod in MODULES:
        importlib.import_module(f"tao_finetune.tools.{mod}")
    return sorted(REGISTRY.values(), key=lambda t: (t.step, t.name))
