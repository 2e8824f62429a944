"""The session log: JSONL in the run dir, appended as the run goes, redacted, enough to replay.

Format version 2: the first event of a file is {"kind": "session", "version": 2}; every line is one JSON object
with "t" and "kind"; `start` events carry the run's config and `response` events a digest of the conversation sent
(the events are listed in agent/replay.py, which replays them). Version 1 (no config in `start`) still reads, but
replays only through `run --llm replay`. A file without the header is an older run and reads as version 1. A torn last line (a crash
mid-write) is dropped when the log is opened again, and the drop is noted as an event.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

from tao_finetune.agent.secrets import Credentials

SESSION_FILE = "session.jsonl"
FORMAT_VERSION = 2


class SessionFormatError(ValueError):
    """A session log that cannot be read; the message is one line naming the file and line."""


def _parse(path: Path, text: str) -> tuple[list[dict[str, Any]], int | None]:
    """Events of a log's text and the byte offset where a torn last line starts (None if the text ends cleanly)."""
    events: list[dict[str, Any]] = []
    lines = text.split("\n")
    offset = 0
    for n, line in enumerate(lines, 1):
        last = n == len(lines)
        if line.strip():
            try:
                ev = json.loads(line)
                if not isinstance(ev, dict) or not isinstance(ev.get("kind"), str):
                    raise ValueError("not an event object")
            except ValueError as err:
                if last or (n == len(lines) - 1 and not lines[-1]):
                    return events, offset  # only the last line is torn: drop it
                raise SessionFormatError(f"session log {str(path)!r} line {n} is not a JSON event ({err.__class__.__name__}); "
                                         "the file is damaged beyond its last line") from None
            version = ev.get("version") if ev["kind"] == "session" else None
            if version is not None and (not isinstance(version, int) or isinstance(version, bool)):
                raise SessionFormatError(f"session log {str(path)!r} line {n} has format version {version!r}, not a number: "
                                         "the file was edited or is not a tao-finetune log")
            if version is not None and version > FORMAT_VERSION:
                raise SessionFormatError(f"session log {str(path)!r} has format version {ev.get('version')}; this tao-finetune reads "
                                         f"version {FORMAT_VERSION}: upgrade tao-finetune")
            events.append(ev)
        offset += len(line.encode()) + 1
    return events, None


def _read_text(path: Path) -> str:
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise SessionFormatError(f"session log {str(path)!r} is not UTF-8 text (byte {err.start})") from None
    except IsADirectoryError:
        raise SessionFormatError(f"session log {str(path)!r} is a directory, not a JSONL file") from None


class SessionLog:
    """Append-only JSONL events: session, start, request, response, tool_call, tool_result, gate, user, note, exit."""

    def __init__(self, path: Path, creds: Credentials, echo: Callable[[dict[str, Any]], None] | None = None):
        self.path = path
        self.creds = creds
        self.echo = echo
        path.parent.mkdir(parents=True, exist_ok=True)
        self.repaired = self.repair()

    def repair(self) -> str | None:
        """Open an existing log for appending: drop a torn last line (noted as an event); write the header of a new log."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            self.event("session", version=FORMAT_VERSION)
            return None
        text = _read_text(self.path)
        _, torn_at = _parse(self.path, text)
        if torn_at is None:
            if not text.endswith("\n"):  # a complete last event without its newline
                with self.path.open("a") as f:
                    f.write("\n")
            return None
        size = self.path.stat().st_size
        with self.path.open("r+b") as f:
            f.truncate(torn_at)
            f.flush()
            os.fsync(f.fileno())
        note = f"dropped a torn last line of {size - torn_at} bytes from {self.path.name} (the previous run ended mid-write)"
        self.event("note", text=note)
        return note

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
        out = read_events(self.path)
        return [e for e in out if kind is None or e["kind"] == kind]


def read_events(path: Path) -> list[dict[str, Any]]:
    """Read a session log file (a torn last line is skipped); SessionFormatError when it is not one."""
    return _parse(path, _read_text(path))[0]


def message_problem(msgs: Any) -> str | None:
    """What keeps a conversation read from a file (an intake, a session log) from being sent to the model; None if nothing."""
    if not isinstance(msgs, list):
        return "not a list of messages"
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            return f"message {i}: not a message object"
        if m.get("role") not in ("user", "assistant"):
            return f"message {i}: role must be 'user' or 'assistant'"
        content = m.get("content")
        if not (isinstance(content, str) or isinstance(content, list)
                and all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in content)):
            return f"message {i}: content must be text or a list of content blocks"
    return None
