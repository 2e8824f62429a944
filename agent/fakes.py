"""Deterministic clients shipped in the package: scripted turns and replays of recorded sessions."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Iterable

from tao_finetune.agent.llm import LLMError, LLMResponse, Usage
from tao_finetune.agent.session import read_events

Turn = LLMResponse | dict[str, Any] | Callable[[list[dict[str, Any]]], LLMResponse | dict[str, Any]]


class ScriptExhausted(LLMError):
    """A fake client ran out of turns (a replayed session that ends early ends the run in one line)."""


def as_response(turn: LLMResponse | dict[str, Any]) -> LLMResponse:
    """Accept a Messages-API-shaped dict or an LLMResponse."""
    if isinstance(turn, LLMResponse):
        return turn
    return LLMResponse(list(turn.get("content", [])), turn.get("stop_reason"), turn.get("model", "scripted"), Usage.from_dict(turn.get("usage")))


def tool_call(name: str, args: dict[str, Any] | None = None, id: str | None = None, text: str = "") -> dict[str, Any]:
    """A scripted assistant turn calling one tool."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content.append({"type": "tool_use", "id": id or f"toolu_{name}_{abs(hash(str(args))) % 10**8}", "name": name, "input": args or {}})
    return {"content": content, "stop_reason": "tool_use"}


def final(text: str = "done") -> dict[str, Any]:
    """A scripted assistant turn that ends the conversation."""
    return {"content": [{"type": "text", "text": text}], "stop_reason": "end_turn"}


class ScriptedClient:
    """Returns the given turns in order; a callable turn sees the messages so far."""

    name = "scripted"

    def __init__(self, turns: Iterable[Turn]):
        self.turns = list(turns)
        self.requests: list[dict[str, Any]] = []

    def create(self, *, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> LLMResponse:
        self.requests.append({"system": system, "messages": copy.deepcopy(messages), "tools": tools, "max_tokens": max_tokens})
        if not self.turns:
            raise ScriptExhausted(f"the {self.name} client has no turn left for request {len(self.requests)}"
                                  + (" (the recorded session ends here)" if self.name == "replay" else ""))
        turn = self.turns.pop(0)
        return as_response(turn(messages) if callable(turn) else turn)


class ReplayClient(ScriptedClient):
    """Replays the assistant turns recorded in a session log (session.jsonl)."""

    name = "replay"

    def __init__(self, session_file: Path):
        try:
            events = read_events(session_file)
        except FileNotFoundError:
            raise FileNotFoundError(f"no session log at {str(session_file)!r}") from None
        turns = [{"content": e["content"], "stop_reason": e.get("stop_reason"), "model": e.get("model", "replay")}
                 for e in events if e["kind"] == "response" and isinstance(e.get("content"), list)]
        if not turns:
            raise ValueError(f"session log {str(session_file)!r} holds no model responses to replay")
        super().__init__(turns)
