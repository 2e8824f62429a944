"""The session log: JSONL in the run dir, appended as the run goes, redacted, enough to replay."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from tao_finetune.agent.secrets import Credentials

SESSION_FILE = "session.jsonl"


class SessionLog:
    """Append-only JSONL events: request, response, tool_call, tool_result, gate, user, note."""

    def __init__(self, path: Path, creds: Credentials, echo: Callable[[dict[str, Any]], None] | None = None):
        self.path = path
        self.creds = creds
        self.echo = echo
        path.parent.mkdir(parents=True, exist_ok=True)

    def event(self, kind: str, **data: Any) -> None:
        """Append one redacted event and flush it to disk."""
        line = self.creds.redact(json.dumps({"t": round(time.time(), 3), "kind": kind, **data}, default=str))
        with self.path.open("a") as f:
            f.write(line + "\n")
            f.flush()
        if self.echo:
            self.echo(json.loads(line))

    def events(self, kind: str | None = None) -> list[dict[str, Any]]:
        """Read back events, optionally of one kind."""
        if not self.path.exists():
            return []
        out = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        return [e for e in out if kind is None or e["kind"] == kind]


def read_events(path: Path) -> list[dict[str, Any]]:
    """Read a session log file."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
