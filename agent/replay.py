"""Replaying a recorded session (session.jsonl) and reporting where the replay departs from the recording.

Session format (agent/session.py FORMAT_VERSION 2, one JSON object per line, appended as the run goes; every line has `t` and `kind`):
- `user` {question, answer}: an answer given with --answer (before the `start` it belongs to) or at a prompt;
- `start` {v, client, task, config, first_unmet, history?}: one invocation of `run` (or one request of a chat) begins;
  `task` is the first user message and `config` the RunConfig it started from; `history` (chat only) holds the
  conversation before it (the intake and earlier requests), which the replay sends first as the chat did;
- `response` {step, request_sha, content, stop_reason, model, usage, cost_usd}: one model turn; `request_sha` is a
  digest of the conversation sent (run dir abstracted);
- `tool_call` {id, name, input} / `tool_result` {id, name, is_error, content} / `refused` {name, step, gate, missing};
- `gate`, `note`, tool-specific events (job_start, job_end, hub_push, ...);
- `exit` {code, message, steps, cost_usd}: the invocation ended.
A session that spanned several invocations (question -> --answer -> resume) holds several start..exit segments.

Modes: `model` serves the recorded model turns and runs the tools for real (tool outcomes are compared after
masking volatile numbers and paths; an answer typed at a question mid-invocation, its `user` event, is typed again
when the same question comes up, and applied through the CLI's own `apply_answer`, as the chat and `run` apply it); `full` also serves the recorded tool outcomes, so nothing runs (deterministic:
no GPU, network or data needed) and the conversation digests must match exactly.
The core only: the CLI passes in the tools, the platform factory and the system-prompt renderer.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from tao_finetune.agent.config import ConfigError, build_config
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.errors import NeedsUser, ToolError
from tao_finetune.agent.fakes import ScriptedClient, ScriptExhausted
from tao_finetune.agent.loop import Agent, InvalidArgs, Limits, LoopExit, replace_path
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import FORMAT_VERSION, SessionLog, message_problem
from tao_finetune.agent.state import RunState

Mode = Literal["model", "full"]
COMPARED = ("tool_call", "tool_result", "refused")
REPLAY_MARKER = ".tao/replay.json"  # written into a replay's output dir: the one kind of folder a replay may empty
NUMBER = re.compile(r"-?\d+\.\d+(e-?\d+)?|\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(\.\d+)?")


class ReplayError(ValueError):
    """A session log that cannot be replayed (one line for the user)."""


@dataclass
class Segment:
    """One invocation of `run` in a session log."""

    index: int
    start: dict[str, Any]
    events: list[dict[str, Any]]
    answer: str | None = None

    @property
    def responses(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e["kind"] == "response"]

    @property
    def exit(self) -> dict[str, Any] | None:
        return next((e for e in reversed(self.events) if e["kind"] == "exit"), None)


@dataclass
class Divergence:
    """The first place a replayed invocation departs from its recording."""

    segment: int
    turn: int
    what: str
    tool: str | None = None
    recorded: Any = None
    replayed: Any = None

    def line(self) -> str:
        where = f"invocation {self.segment + 1}, turn {self.turn}" + (f", tool {self.tool!r}" if self.tool else "")
        return f"{where}: {self.what} (recorded {_short(self.recorded)}, replayed {_short(self.replayed)})"


@dataclass
class ReplayReport:
    """What a replay did and the first divergence of each invocation."""

    mode: Mode
    output_dir: Path
    segments: int
    exit_codes: list[int] = field(default_factory=list)
    recorded_exit_codes: list[int | None] = field(default_factory=list)
    divergences: list[Divergence] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return self.exit_codes[-1] if self.exit_codes else 1


def _short(v: Any, n: int = 120) -> str:
    text = v if isinstance(v, str) else json.dumps(v, default=str)
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


class _Event(BaseModel):
    model_config = ConfigDict(extra="allow")


class _SessionEvent(_Event):
    version: int = Field(ge=1, le=FORMAT_VERSION)


class _ResponseEvent(_Event):
    content: list[dict[str, Any]]
    stop_reason: str | None = None

    @field_validator("content")
    @classmethod
    def _blocks(cls, blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for b in blocks:
            if not isinstance(b.get("type"), str):
                raise ValueError("every content block needs a 'type'")
            if b["type"] == "tool_use" and not (isinstance(b.get("id"), str) and isinstance(b.get("name"), str)
                                                and isinstance(b.get("input"), dict)):
                raise ValueError("tool_use block needs an 'id', a 'name' and an 'input' object")
        return blocks


class _ToolEvent(_Event):
    id: str
    name: str


class _ToolResultEvent(_Event):
    id: str


class _ExitEvent(_Event):
    code: int | None = None


class _StartEvent(_Event):
    history: Any = None  # a chat's conversation before this invocation: Messages-API turns (session.message_problem)

    @field_validator("history")
    @classmethod
    def _conversation(cls, history: Any) -> Any:
        problem = message_problem(history) if history is not None else None
        if problem:
            raise ValueError(problem)
        return history


# the events a replay reads, typed: an event edited into another shape is a one-line ReplayError, never a crash mid-replay
EVENT_SHAPES: dict[str, type[_Event]] = {"session": _SessionEvent, "response": _ResponseEvent, "tool_call": _ToolEvent,
                                         "tool_result": _ToolResultEvent, "exit": _ExitEvent, "start": _StartEvent}


def _check_shapes(path: Path, events: list[dict[str, Any]]) -> None:
    for n, e in enumerate(events, start=1):
        shape = EVENT_SHAPES.get(e["kind"])
        if shape is None:
            continue
        try:
            shape.model_validate(e)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(map(str, first["loc"])) or "event"
            msg = first["msg"].removeprefix("Value error, ")
            raise ReplayError(f"{str(path)!r} is not a replayable session log: event {n} ({e['kind']} event: {where}: {msg})") from None


def load_segments(path: Path) -> list[Segment]:
    """Split a session log into its invocations; a torn or foreign file is a ReplayError."""
    if not path.is_file():
        raise ReplayError(f"no session log at {str(path)!r}")
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise ReplayError(f"cannot read session log {str(path)!r}: {str(err).splitlines()[0][:120]}") from None
    events = []
    for n, line in enumerate(lines, start=1):
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            if n == len(lines) and events:  # a torn last line (the run was killed mid-write): dropped
                continue
            raise ReplayError(f"{str(path)!r} is not a session log: line {n} is not JSON") from None
    if not all(isinstance(e, dict) and "kind" in e for e in events):
        raise ReplayError(f"{str(path)!r} is not a session log: every line must be an event object with a 'kind'")
    _check_shapes(path, events)
    segments: list[Segment] = []
    pending_answer: str | None = None
    for e in events:
        if e["kind"] == "start":
            segments.append(Segment(len(segments), e, [], pending_answer))
            pending_answer = None
        elif segments and segments[-1].exit is None:
            segments[-1].events.append(e)
        elif e["kind"] == "user":
            pending_answer = e.get("answer")
    if not segments:
        raise ReplayError(f"session log {str(path)!r} records no run (no 'start' event)")
    old = [s.index + 1 for s in segments if not isinstance(s.start.get("config"), dict)]
    if old:
        raise ReplayError(f"session log {str(path)!r} is format version 1 (no config in its start events): replay it with "
                          "`tao-finetune run --llm replay --replay FILE` and the original flags")
    return segments


def normalize(value: Any, run_dirs: tuple[str, ...]) -> str:
    """A tool outcome with run-dir paths and volatile numbers (timings, losses, dates) masked."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    for d in run_dirs:
        if d:
            text = replace_path(text, d, "<run>")
    return NUMBER.sub("#", text)


class _Recorded:
    """The recorded tool outcomes of one invocation, served in order (full mode)."""

    def __init__(self, seg: Segment, gates: dict[int, list[str]] | None = None):
        self.events = seg.events
        self.calls = [e for e in seg.events if e["kind"] == "tool_call"]
        self.results = {e["id"]: e for e in seg.events if e["kind"] == "tool_result"}
        self.exit = seg.exit or {}
        self.nudges = [str(e.get("text", "")) for e in seg.events if e["kind"] == "nudge"]
        self.gates = gates if gates is not None else {}  # step -> missing, as the recording's gate events left it
        self.pos = 0  # events up to here are served
        self.run_dir = str((seg.start.get("config") or {}).get("output_dir") or "")  # the recorded run's folder

    def next(self, name: str) -> dict[str, Any]:
        if not self.calls:
            raise ToolError(f"replay: the recording has no outcome for a further call of {name!r}")
        call = self.calls.pop(0)
        result = self.results.get(call["id"])
        self.pos = self.events.index(result if result is not None else call)
        return {"call": call, "result": result}

    def advance_gates(self) -> None:
        """Apply the gate events the recording logged after the tools just served (before the next turn or call)."""
        for e in self.events[self.pos + 1:]:
            if e["kind"] in ("response", "tool_call"):
                break
            if e["kind"] == "gate" and isinstance(e.get("step"), int):
                self.gates[e["step"]] = [] if e.get("met") else list(e.get("missing") or [])

    def status(self) -> str:
        """The gate status the recorded run sent with this tool-result turn (steps without a recorded gate: unknown)."""
        from tao_finetune.agent import steps

        return "Gate status now:\n" + "\n".join(f"- {steps.status_line(s.number, self.gates.get(s.number, ['?']))}" for s in steps.STEPS)


class _Answers:
    """The answers typed inline during a recorded invocation (its `user` events), typed again in order (model mode).

    An answer is given only to the question it answered (run dir and volatile numbers masked); another question gets
    none (the run then stops on it) and is reported as the divergence."""

    def __init__(self, seg: Segment, run_dirs: tuple[str, ...]):
        self.queue = [e for e in seg.events if e["kind"] == "user"]
        self.run_dirs = run_dirs
        self.mismatch: tuple[str, str] | None = None

    def __call__(self, question: str) -> str | None:
        if not self.queue or self.mismatch:
            return None
        rec = self.queue.pop(0)
        asked = str(rec.get("question") or "")
        if normalize(asked, self.run_dirs) != normalize(question, self.run_dirs):
            self.mismatch = (asked, question)
            return None
        return str(rec.get("answer") or "")


class _RecordedExit(LoopExit):
    """The recorded end of an invocation, re-raised where the recording ended (full mode)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class FullReplayAgent(Agent):
    """The loop with every tool outcome served from the recording (nothing runs, gates are not re-evaluated)."""

    recorded: _Recorded

    def _ended(self) -> bool:
        return not self.client.turns  # type: ignore[attr-defined]

    def _end(self) -> None:
        ex = self.recorded.exit
        raise _RecordedExit(int(ex.get("code", 1)), str(ex.get("message", "")))

    def dispatch(self, name: str, raw: dict[str, Any]) -> Any:
        got = self.recorded.next(name)
        result = got["result"]
        if result is None:  # the recorded call ended the invocation with a question
            raise NeedsUser(self.recorded.exit.get("message") or f"{name} asked the user", "")
        text = str(result.get("content", ""))
        if self.recorded.run_dir:  # the recorded run's folder is this replay's (the model saw its own run dir)
            text = replace_path(text, self.recorded.run_dir, str(self.ctx.run_dir))
        if result.get("is_error"):
            raise (InvalidArgs if text.startswith("invalid arguments for") else ToolError)(text)
        return text

    def result_text(self, name: str, out: Any, is_error: bool) -> str:
        return out if isinstance(out, str) else super().result_text(name, out, is_error)  # the recorded text, verbatim

    def tool_error(self, name: str, message: str) -> str:
        return message  # the recording already holds what the same-error rule decided

    def after_tools(self) -> None:
        self.recorded.advance_gates()
        if self._ended():
            self._end()

    def gate_status(self) -> str:
        return self.recorded.status()  # the recorded run's gates: nothing ran here, so the live ones would differ

    def finish_turn(self, resp: Any) -> None:
        if not self.recorded.nudges or self._ended():
            self._end()
        text = self.recorded.nudges.pop(0)
        self.ctx.session.event("nudge", text=text)
        self.messages.append({"role": "user", "content": text})


def compare(seg: Segment, new: list[dict[str, Any]], mode: Mode, run_dirs: tuple[str, ...]) -> Divergence | None:
    """The first difference between a recorded invocation and its replay."""
    rec_turns = seg.responses
    new_turns = [e for e in new if e["kind"] == "response"]
    if mode == "full":
        for i, (a, b) in enumerate(zip(rec_turns, new_turns), start=1):
            if a.get("request_sha") and a.get("request_sha") != b.get("request_sha"):
                return Divergence(seg.index, i, "the conversation sent to the model differs from the recorded one "
                                  "(an edited or dropped event before this turn)", None, a.get("request_sha"), b.get("request_sha"))

    def turn_at(events: list[dict[str, Any]], k: int) -> int:
        return sum(1 for e in events[:k] if e["kind"] == "response")

    rec = [(i, e) for i, e in enumerate(seg.events) if e["kind"] in COMPARED]
    got = [(i, e) for i, e in enumerate(new) if e["kind"] in COMPARED]
    for (_, a), (gi, b) in zip(rec, got):
        turn = turn_at(new, gi)  # the replayed turn in which the two part
        if a["kind"] != b["kind"] or a.get("name") != b.get("name"):
            return Divergence(seg.index, turn, f"expected a {a['kind']} of {a.get('name')!r}", a.get("name"),
                              f"{a['kind']} {a.get('name')}", f"{b['kind']} {b.get('name')}")
        if a["kind"] == "tool_call" and a.get("input") != b.get("input"):
            return Divergence(seg.index, turn, "the tool input differs", a.get("name"), a.get("input"), b.get("input"))
        if a["kind"] == "tool_result":
            if bool(a.get("is_error")) != bool(b.get("is_error")):
                return Divergence(seg.index, turn, "the tool " + ("failed" if b.get("is_error") else "succeeded") + " this time",
                                  a.get("name"), a.get("content"), b.get("content"))
            if normalize(a.get("content"), run_dirs) != normalize(b.get("content"), run_dirs):
                return Divergence(seg.index, turn, "the tool result differs", a.get("name"), a.get("content"), b.get("content"))
    if len(rec) != len(got):
        k = min(len(rec), len(got))
        longer = rec if len(rec) > len(got) else got
        e = longer[k][1]
        what = "the recording goes on" if len(rec) > len(got) else "the replay goes on past the recording"
        return Divergence(seg.index, turn_at(seg.events if longer is rec else new, longer[k][0]), what, e.get("name"),
                          len(rec), len(got))
    if len(rec_turns) != len(new_turns):
        return Divergence(seg.index, len(new_turns), "the number of model turns differs", None, len(rec_turns), len(new_turns))
    rec_sha = (seg.exit or {}).get("results_sha")
    new_exit = next((e for e in reversed(new) if e["kind"] == "exit"), {})
    if mode == "full" and rec_sha and new_exit.get("results_sha") != rec_sha:
        return Divergence(seg.index, len(new_turns), "the tool results differ from those the recorded run saw (an edited "
                          "result, perhaps one no later model turn read)", None, rec_sha, new_exit.get("results_sha"))
    return None


def replay(session_file: Path, output_dir: Path, mode: Mode, *, tools: list, platform_factory: Callable[[Any], Any] | None,
           system_for: Callable[[RunContext], str], env_file: Path | None = None, fresh: bool = True,
           echo: Callable[[dict[str, Any]], None] | None = None,
           apply_answer: Callable[[RunContext, NeedsUser, str], str | None] | None = None) -> ReplayReport:
    """Replay every invocation of a recorded session into output_dir and compare each with its recording.

    `apply_answer` (the CLI's) applies an answer typed again in model mode, as the recorded run applied it."""
    segments = load_segments(session_file)
    output_dir = output_dir.resolve()
    if output_dir == session_file.resolve().parent:
        raise ReplayError("replay into the recorded run's own folder would overwrite it: choose another --output-dir")
    if output_dir in session_file.resolve().parents:
        raise ReplayError(f"--output-dir {str(output_dir)!r} holds the session log being replayed: choose another --output-dir")
    marker = output_dir / REPLAY_MARKER
    if fresh and output_dir.is_dir() and not marker.is_file():  # only a folder a replay wrote is emptied: nothing else is lost
        other = next(output_dir.iterdir(), None)
        if other is not None:
            raise ReplayError(f"--output-dir {str(output_dir)!r} holds files no replay wrote ({other.name!r}, ...): "
                              "choose a new or empty folder")
    if fresh and output_dir.exists():
        shutil.rmtree(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    marker.parent.mkdir(exist_ok=True)
    marker.write_text(json.dumps({"session": str(session_file.resolve())}) + "\n")
    report = ReplayReport(mode, output_dir, len(segments))
    creds = Credentials.load(env_file) if env_file else Credentials({})
    recorded_gates: dict[int, list[str]] = {}  # carried across invocations, as the run state carries them
    for seg in segments:
        recorded_dir = str((seg.start.get("config") or {}).get("output_dir") or "")
        raw = json.dumps(seg.start["config"])
        if recorded_dir:
            raw = replace_path(raw, json.dumps(recorded_dir)[1:-1], json.dumps(str(output_dir))[1:-1])
        try:
            cfg = build_config({**json.loads(raw), "output_dir": str(output_dir)})
        except ConfigError as err:
            raise ReplayError(f"invocation {seg.index + 1}: its recorded config is not valid: {err}") from None
        session = SessionLog(output_dir / "session.jsonl", creds, echo=echo)
        if seg.answer:
            session.event("user", question=None, answer=seg.answer)
        before = len(session.events())
        state = RunState.load(output_dir)
        answers = _Answers(seg, (recorded_dir, str(output_dir))) if mode == "model" else None
        ctx = RunContext(cfg, session, creds, state, yes=not (answers and answers.queue))  # asks only what was answered
        if mode == "model" and platform_factory is not None:
            ctx.platform = platform_factory(cfg)
        ctx.save()
        turns = [{"content": e["content"], "stop_reason": e["stop_reason"], "model": e.get("model", "replay")} for e in seg.responses]
        client = ScriptedClient(turns)
        client.name = "replay"
        cls = FullReplayAgent if mode == "full" else Agent
        on_answer = (lambda q, a, ctx=ctx: apply_answer(ctx, q, a)) if apply_answer and answers else None
        agent = cls(client, ctx, tools, system_for(ctx), Limits(max_steps=len(turns) + 1), ask=answers, on_answer=on_answer)
        if mode == "full":
            agent.recorded = _Recorded(seg, recorded_gates)
        history = seg.start.get("history") if isinstance(seg.start.get("history"), list) else None  # a chat's earlier conversation
        result = _run(agent, client, len(turns), seg.start.get("task", ""), history)
        recorded_code = (seg.exit or {}).get("code")
        code = result.code
        new = session.events()[before:]
        new = new[next((i for i, e in enumerate(new) if e["kind"] == "start"), 0) + 1:]
        div = compare(seg, new, mode, (recorded_dir, str(output_dir)))
        if answers and answers.mismatch:  # the more precise report: the run asked something the person never answered
            div = Divergence(seg.index, sum(1 for e in new if e["kind"] == "response"), "the run asked another question "
                             "than the one answered in the recording", None, answers.mismatch[0], answers.mismatch[1])
        if div is None and seg.exit is None:
            div = Divergence(seg.index, len(turns), "the recording ends early (this invocation has no exit event)", None, "no exit", code)
        if div is None and result.exhausted and mode == "model" and recorded_code is not None:
            div = Divergence(seg.index, len(turns), "the run asked the model for another turn where the recording ended "
                             f"(recorded exit {recorded_code}: {_short((seg.exit or {}).get('message', ''))})", None, recorded_code, "more turns")
        if div is None and recorded_code is not None and code != recorded_code:
            div = Divergence(seg.index, len(turns), "the exit code differs", None, recorded_code, code)
        if div is not None:
            report.divergences.append(div)
        report.exit_codes.append(code)
        report.recorded_exit_codes.append(recorded_code)
    return report


@dataclass
class _Outcome:
    code: int
    message: str
    exhausted: bool = False


def _run(agent: Agent, client: ScriptedClient, n_turns: int, task: str, history: list | None = None) -> _Outcome:
    try:
        result = agent.run(task, history=history)
    except ScriptExhausted as err:
        agent.ctx.session.event("exit", code=1, message=f"replay: {err}", steps=agent.steps, cost_usd=0.0)
        return _Outcome(1, str(err), exhausted=True)
    return _Outcome(result.code, result.message, exhausted=len(client.requests) > n_turns)
