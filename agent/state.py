"""Run state kept beside config.yaml: gate history, step records, error counters."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from tao_finetune.agent.config import ConfigError, atomic_write_text

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
    _load_note: str | None = PrivateAttr(default=None)

    @property
    def load_note(self) -> str | None:
        """One line when load() had to repair a corrupt state file, else None."""
        return self._load_note

    @classmethod
    def load(cls, run_dir: Path, repair: bool = True) -> "RunState":
        """Read the state of a run dir, or a fresh state.

        A corrupt file (not UTF-8, not JSON, wrong types) is repaired: every field that still validates is kept, the
        rest start empty (the gates re-derive what they can from the run dir's files), the damaged file is kept as
        state.json.corrupt-<time> when `repair`, and `load_note` says what happened in one line.
        """
        path = run_dir / STATE_FILE
        if not path.exists():
            return cls()
        raw: Any = None
        try:
            raw = json.loads(path.read_bytes().decode("utf-8"))
            return cls.model_validate(raw)
        except (ValueError, ValidationError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = " ".join(str(err).split())[:120]
        except IsADirectoryError:
            raise ConfigError(f"{str(path)!r} is a directory, not the run state file: move it away") from None
        kept: dict[str, Any] = {}
        for name in cls.model_fields:
            if isinstance(raw, dict) and name in raw:
                try:
                    cls.model_validate({name: raw[name]})
                    kept[name] = raw[name]
                except ValidationError:
                    pass
        state = cls.model_validate(kept)
        note = f"{STATE_FILE} was corrupt ({reason}); kept {', '.join(sorted(kept)) or 'nothing'}, the gates re-check the rest from the run dir"
        if repair:
            backup = path.with_name(f"state.json.corrupt-{int(time.time() * 1000)}")
            path.replace(backup)
            note += f"; the damaged file is {backup.name}"
        state._load_note = note
        return state

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
