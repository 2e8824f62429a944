"""Run state kept beside config.yaml: gate history, step records, error counters."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from tao_finetune.agent.config import atomic_write_text

STATE_FILE = ".tao/state.json"


class GateRecord(BaseModel):
    """One evaluation of a gate."""

    step: int
    met: bool
    missing: list[str]
    at: float


class RunState(BaseModel):
    """What the run has done that is not a file of its own."""

    records: dict[str, Any] = Field(default_factory=dict)
    gates: list[GateRecord] = Field(default_factory=list)
    live_attempts: dict[str, list[dict[str, str]]] = Field(default_factory=dict)
    error_counts: dict[str, int] = Field(default_factory=dict)
    pending_question: str | None = None
    pending_choices: dict[str, dict[str, Any]] = Field(default_factory=dict, description="answer -> config overrides")

    @classmethod
    def load(cls, run_dir: Path) -> "RunState":
        """Read the state of a run dir, or a fresh state."""
        path = run_dir / STATE_FILE
        if not path.exists():
            return cls()
        return cls.model_validate(json.loads(path.read_text()))

    def save(self, run_dir: Path) -> None:
        """Write atomically."""
        atomic_write_text(run_dir / STATE_FILE, self.model_dump_json(indent=1))

    def record(self, key: str, value: Any) -> None:
        """Store a step result (e.g. 'build', 'hub')."""
        self.records[key] = value

    def log_gate(self, step: int, met: bool, missing: list[str]) -> bool:
        """Append a gate result if it changed since the last one for that step; True if appended."""
        last = next((g for g in reversed(self.gates) if g.step == step), None)
        if last and last.met == met and last.missing == missing:
            return False
        self.gates.append(GateRecord(step=step, met=met, missing=missing, at=time.time()))
        return True
