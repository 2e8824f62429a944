"""`tao-finetune chat`: a person states the request in their own words and follows the run in one conversation.

The core only (tests/agent/test_layering.py): the CLI passes in the tools, the model client, the platform factory, the
system prompt renderer and the function that applies an approved answer (`Wiring`). The flow:

1. intake: the model sees the person's words and one tool, `set_request` (tools/request.py); its NeedsUser carries the
   inputs it understood, shown as a table with their source and confirmed with y / n / edit. Nothing is written before
   the yes; then the output dir is opened exactly as `run` opens it (lock, session log, config.yaml with the confirmed
   inputs as user-set values);
2. the run: the real loop (agent/loop.py `Agent`) continues the SAME conversation (`Agent.run(task, history=...)`), under
   the `run` live view (agent/console.py `LiveView` with its chat row of the six steps and the model's text); a
   question is asked inline and an approving answer is applied through `Wiring.apply_answer` (one authority path:
   agent/authority.py `user_change`, the user recorded as source);
3. follow-ups ("train two more epochs", "now push it") start another `Agent.run` on the same conversation;
4. Ctrl-C ends the chat with exit 130 after the run's own interrupt handling (state saved, jobs reported; a second
   press stops them); `chat --resume DIR` rebuilds the conversation from DIR/session.jsonl (`rebuild_messages`).

Before the yes there is no run dir: the intake (its messages, the request validated last, the command line's defaults)
is kept in a per-user state file (`IntakeLog`: $XDG_STATE_HOME/tao/chat/intake-*.json, redacted, written atomically
after every turn) so that a Ctrl-C or a closed terminal loses nothing; `chat --resume FILE` goes on from it. The file is
removed once the run's first `start` event (which carries the intake as `history`) is in the run dir's session log.
"""

from __future__ import annotations

import copy
import json
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tao_finetune.agent import gates
from tao_finetune.agent.config import ConfigError, RunConfig, apply_overrides, atomic_write_text, build_config, load_config
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.errors import ExitCode, LoopExit, NeedsUser, ToolError
from tao_finetune.agent.llm import LLMAuthError, LLMClient, LLMError
from tao_finetune.agent.loop import Agent, Limits
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionFormatError, SessionLog, message_problem
from tao_finetune.agent.state import RunState
from tao_finetune.agent.tooling import Tool, format_validation_error

REQUEST_TOOL = "set_request"
QUIT = {"quit", "exit", "/quit", "/exit", "bye", ":q"}
INTERRUPTED_RESULT = "not completed: the session stopped (Ctrl-C or a question left open) before this call returned"
SHOWN = ("model_id", "dataset", "task_type", "n_train", "n_eval", "n_epochs", "hyperparameters.training_method", "lora_r",
         "hyperparameters.learning_rate", "push_to_hub", "hf_model_repo", "hub_private", "platform", "allow_cpu", "output_dir")


@dataclass
class Wiring:
    """What the CLI hands the chat: tools, client and the `run` command's own helpers."""

    tools: list[Tool]
    client: LLMClient
    credentials: Credentials
    # confirmed inputs, command-line defaults, --output-dir -> config + user keys (as `run`)
    open_config: Callable[[dict[str, Any], list[str], Path | None], tuple[RunConfig, list[str]]]
    make_platform: Callable[[RunConfig, Any], Any]
    system_for: Callable[[RunContext], str]
    apply_answer: Callable[[RunContext, NeedsUser, str], str | None]
    after_interrupt: Callable[[RunContext, bool], None]
    summary: Callable[[Path, RunState], str]
    limits: Limits
    defaults: list[str]  # --set KEY=VALUE given on the command line
    intake_system: Callable[[list[str]], str]  # the intake's system prompt for these command-line defaults
    output_dir: Path | None = None  # --output-dir (default ./output/<model short name>)
    on_open: Callable[[Path, SessionLog], None] = lambda run_dir, session: None


class IntakeRecord(BaseModel):
    """A chat's intake before its run dir exists: what `chat --resume FILE` needs to go on (never a secret: redacted)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["tao-chat-intake"] = "tao-chat-intake"
    version: Literal[1] = 1
    messages: list[dict[str, Any]] = []  # the conversation so far, as the model was sent it
    request: dict[str, Any] | None = None  # the inputs set_request validated last (the table the person saw)
    task: str | None = None  # set once the person said yes: the run's first task (the run dir is opened next)
    defaults: list[str] = []  # --set / --platform / --allow-cpu of the command line
    output_dir: str | None = None  # --output-dir

    @field_validator("messages")
    @classmethod
    def _messages(cls, msgs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Messages-API turns only: a hand-edited file fails here in one line, not mid-conversation or at the API."""
        problem = message_problem(msgs)
        if problem:
            raise ValueError(problem)
        return msgs

    @field_validator("defaults")
    @classmethod
    def _defaults(cls, defaults: list[str]) -> list[str]:
        """The command line's --set, checked as --set is (ConfigError is a ValueError: one line)."""
        apply_overrides({}, list(defaults))
        return defaults


MAX_INTAKE_BYTES = 16 << 20  # a conversation before its run dir exists: kilobytes; anything near this is not one


def intake_dir() -> Path:
    """Where intakes wait for their run dir: $XDG_STATE_HOME/tao/chat (default ~/.local/state/tao/chat)."""
    return Path(os.environ.get("XDG_STATE_HOME") or "~/.local/state").expanduser() / "tao" / "chat"


class IntakeLog:
    """One intake's state file, rewritten atomically (temp file + fsync + rename; mode 0600 in a 0700 folder)."""

    def __init__(self, path: Path, creds: Credentials):
        self.path, self.creds = path, creds
        self.lock_fd: int | None = None

    @classmethod
    def new(cls, creds: Credentials) -> "IntakeLog":
        log = cls(intake_dir() / f"intake-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.json", creds)
        log.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        log.claim()
        return log

    def claim(self) -> None:
        """Hold the intake for this chat (flock on `<file>.lock`, gone with the process): a second chat resuming the same
        file would confirm and open a run of its own; it gets a one-line ConfigError naming this chat's PID."""
        import fcntl

        lock = self.path.with_name(self.path.name + ".lock")
        try:  # O_NOFOLLOW: a symlink planted at the lock's name must not make the truncate below hit another file
            fd = os.open(lock, os.O_CREAT | os.O_RDWR | os.O_NOFOLLOW, 0o600)
        except OSError as err:
            raise ConfigError(f"--resume {str(self.path)!r}: cannot take its lock {str(lock)!r} ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(f"--resume {str(self.path)!r}: another chat (PID {pid}) is continuing this intake; go on there, "
                              "or quit it first") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.lock_fd = fd

    def release(self) -> None:
        if self.lock_fd is not None:
            self.path.with_name(self.path.name + ".lock").unlink(missing_ok=True)
            os.close(self.lock_fd)
            self.lock_fd = None

    def save(self, record: IntakeRecord) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_text(self.path, self.creds.redact(record.model_dump_json(indent=1)) + "\n")

    def load(self) -> IntakeRecord:
        """The saved intake; ConfigError (one line) when the file is missing, torn or not an intake."""
        where = f"--resume {str(self.path)!r}"
        try:
            # O_NONBLOCK: a FIFO given as the file must not hang the chat; it is refused below as not a regular file
            with os.fdopen(os.open(self.path, os.O_RDONLY | os.O_NONBLOCK), "rb") as f:
                st = os.fstat(f.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise ConfigError(f"{where} is not a regular file: give the intake-*.json file the chat printed")
                if st.st_uid != os.geteuid():  # another user's file: their conversation is not this user's to continue
                    raise ConfigError(f"{where} belongs to another user (uid {st.st_uid}): resume only your own chats")
                if st.st_size > MAX_INTAKE_BYTES:
                    raise ConfigError(f"{where} is larger than a chat intake can be ({st.st_size:,} bytes, at most "
                                      f"{MAX_INTAKE_BYTES:,}): start a new chat")
                text = f.read(MAX_INTAKE_BYTES + 1).decode("utf-8")
        except FileNotFoundError:
            raise ConfigError(f"{where}: no run or saved chat intake there") from None
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"{where}: cannot be read ({getattr(err, 'strerror', None) or err.__class__.__name__})") from None
        try:  # redacted again: a file edited by hand, or saved before a credential was configured, may hold one
            return IntakeRecord.model_validate_json(self.creds.redact(text))
        except ValidationError as err:
            first = err.errors()[0]
            what = "torn or not JSON" if first["type"] == "json_invalid" else \
                f"{'.'.join(map(str, first['loc'])) or 'file'}: {first['msg'].removeprefix('Value error, ')}"
            raise ConfigError(f"{where} is not a saved chat intake ({what}); start a new chat") from None

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.release()


def rebuild_messages(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation a session log records (format 2): what the model was sent, in order, ready to continue.

    A `start` that carries `history` (a chat) restarts from it; one without (a `run` invocation) continues the
    conversation with its task. Model turns come from `response` events (a truncated or refused turn was never part
    of the conversation), tool results from `tool_result` events, nudges from `nudge` events. The gate-status line the
    loop appends to each tool-result turn is not logged and is left out. Calls without a recorded result (the session
    stopped mid-turn) get an error result saying so, so the conversation is valid for the Messages API.
    """
    msgs: list[dict[str, Any]] = []
    for ev in events:
        kind = ev.get("kind")
        if kind == "start":
            if "history" in ev:
                problem = message_problem(ev["history"])
                if problem:
                    raise SessionFormatError(f"the session log holds no conversation to continue: a start event's history is "
                                             f"{'not a list' if problem.startswith('not a list') else 'damaged'} ({problem})")
                msgs = copy.deepcopy(ev["history"])
            close_dangling(msgs)
            add_user(msgs, {"type": "text", "text": str(ev.get("task", ""))})
        elif kind == "response" and isinstance(ev.get("content"), list) and ev.get("stop_reason") not in ("max_tokens", "refusal"):
            close_dangling(msgs)
            msgs.append({"role": "assistant", "content": ev["content"]})
        elif kind == "tool_result" and ev.get("id"):
            block = {"type": "tool_result", "tool_use_id": ev["id"], "content": str(ev.get("content", ""))}
            if ev.get("is_error"):
                block["is_error"] = True
            add_user(msgs, block)
        elif kind == "nudge":
            close_dangling(msgs)
            add_user(msgs, {"type": "text", "text": str(ev.get("text", ""))})
    close_dangling(msgs)
    problem = message_problem(msgs)
    if problem:  # an edited event (a response whose content is not blocks): refused here, not by the API mid-chat
        raise SessionFormatError(f"the session log holds no conversation to continue ({problem})")
    return msgs


def add_user(msgs: list[dict[str, Any]], block: dict[str, Any]) -> None:
    """Append a block to the trailing user message (consecutive user blocks are one turn), or start one."""
    if msgs and msgs[-1]["role"] == "user":
        content = msgs[-1]["content"]
        msgs[-1]["content"] = [*([{"type": "text", "text": content}] if isinstance(content, str) else content), block]
    else:
        msgs.append({"role": "user", "content": [block]})


def close_dangling(msgs: list[dict[str, Any]]) -> None:
    """Give every tool_use of the last assistant turn a result (an error saying it never completed) where none follows."""
    idx = next((i for i in range(len(msgs) - 1, -1, -1) if msgs[i]["role"] == "assistant"), None)
    if idx is None:
        return
    uses = [b["id"] for b in msgs[idx]["content"] if isinstance(b, dict) and b.get("type") == "tool_use"] if isinstance(msgs[idx]["content"], list) else []
    if not uses:
        return
    have: set[str] = set()
    if idx + 1 < len(msgs) and isinstance(msgs[idx + 1]["content"], list):
        have = {b.get("tool_use_id") for b in msgs[idx + 1]["content"] if isinstance(b, dict) and b.get("type") == "tool_result"}
    missing = [u for u in uses if u not in have]
    if not missing:
        return
    blocks = [{"type": "tool_result", "tool_use_id": u, "content": INTERRUPTED_RESULT, "is_error": True} for u in missing]
    if idx + 1 < len(msgs):
        nxt = msgs[idx + 1]
        content = nxt["content"] if isinstance(nxt["content"], list) else [{"type": "text", "text": nxt["content"]}]
        results = [b for b in content if b.get("type") == "tool_result"]
        nxt["content"] = [*results, *blocks, *[b for b in content if b.get("type") != "tool_result"]]
    else:
        msgs.append({"role": "user", "content": blocks})


class Chat:
    """One chat at a terminal: intake, runs and follow-ups over one conversation."""

    def __init__(self, wiring: Wiring, console: Console, mode: str = "normal"):
        self.w, self.console, self.mode = wiring, console, mode
        self.tools = {t.name: t for t in wiring.tools}
        self.messages: list[dict[str, Any]] = []
        self.defaults, self.output_dir = list(wiring.defaults), wiring.output_dir
        self.intake_log: IntakeLog | None = None  # the intake's state file until the run dir's log holds the intake
        self.request: dict[str, Any] | None = None  # the inputs set_request validated last
        self.ctx: RunContext | None = None
        self.view: Any = None
        self.lock: Any = None
        self.cost = 0.0
        self.code = int(ExitCode.OK)

    # ------------------------------------------------------------------ terminal
    def read(self, prompt: str = "you") -> str | None:
        """One line from the person; None on end of input or a quit word."""
        try:
            text = self.console.input(f"[bold]{prompt}>[/] ").strip()
        except EOFError:
            return None
        if text.lower() in QUIT:
            return None
        return text

    def say(self, text: str, style: str = "", soft_wrap: bool = False) -> None:
        """One line to the person; soft_wrap leaves a long line (a command to copy) unbroken."""
        self.console.print(f"[{style}]{escape(text)}[/]" if style else escape(text), soft_wrap=soft_wrap)

    def ask_inline(self, question: str) -> str | None:
        """A question from the run, asked where the person is typing; an empty answer leaves it open."""
        self.console.print(f"[bold yellow]? {escape(question)}[/]")
        try:
            return self.console.input("[bold]answer>[/] ").strip() or None
        except EOFError:
            return None

    # ------------------------------------------------------------------ entry
    def main(self, resume: Path | None, request: str | None) -> int:
        try:
            if resume is not None and resume.expanduser().name == "session.jsonl":
                resume = resume.expanduser().parent  # the run's log names its run dir
            if resume is not None and resume.expanduser().is_dir():
                self.resume(resume)
            else:
                confirmed = self.resume_intake(resume) if resume is not None else self.intake(request)
                if confirmed is None:
                    self.say("nothing started")
                    if self.intake_log is not None:
                        self.intake_log.remove()
                    return int(ExitCode.OK)
                inputs, task = confirmed
                self.open(self.w.open_config(inputs, self.defaults, self.output_dir))
                result = self.run_segment(task)
                if result.code == ExitCode.INTERRUPTED:
                    return self.interrupted()
            while True:
                text = self.read()
                if text is None:
                    return self.code
                if not text:
                    continue
                result = self.run_segment(self.follow_up(text))
                if result.code == ExitCode.INTERRUPTED:
                    return self.interrupted()
        except ChatExit as err:
            self.say(f"error: {err.message}", "red")
            if self.ctx is None and self.intake_log is not None:
                self.say(f"the request so far is saved; continue it with `{self.resume_command()}`", "yellow", soft_wrap=True)
            return err.code
        except KeyboardInterrupt:
            if self.ctx is None:
                self.say("interrupted: " + (f"the request so far is saved; continue it with `{self.resume_command()}`"
                                            if self.intake_log is not None else "nothing was started"), "yellow", soft_wrap=True)
                return int(ExitCode.INTERRUPTED)
            self.ctx.session.event("note", text="chat interrupted (Ctrl-C) at the prompt")
            return self.interrupted(at_prompt=True)
        finally:
            if self.lock is not None:
                self.lock.release()
            if self.intake_log is not None:
                self.intake_log.release()

    def interrupted(self, at_prompt: bool = False) -> int:
        assert self.ctx is not None
        if not at_prompt:
            self.w.after_interrupt(self.ctx, True)
        self.say(f"progress is saved; continue this conversation with `{self.resume_command()}`", "yellow", soft_wrap=True)
        return int(ExitCode.INTERRUPTED)

    def resume_command(self) -> str:
        """The command that continues this chat: the intake's file until the run dir's log holds the intake."""
        import shlex

        where = self.intake_log.path if self.intake_log is not None else self.ctx.run_dir if self.ctx is not None else None
        return f"tao-finetune chat --resume {shlex.quote(str(where))}"

    # ------------------------------------------------------------------ the intake's state file
    def save_intake(self, task: str | None = None) -> None:
        """Write the intake so far (atomically, redacted); the first write creates the file."""
        if self.intake_log is None:
            self.intake_log = IntakeLog.new(self.w.credentials)
        self.intake_log.save(IntakeRecord(messages=self.messages, request=self.request, task=task, defaults=self.defaults,
                                          output_dir=str(self.output_dir.expanduser().resolve()) if self.output_dir is not None else None))

    def resume_intake(self, path: Path) -> tuple[dict[str, Any], str] | None:
        """Go on with an intake saved before its run dir existed (Ctrl-C, a closed terminal); as `intake` returns."""
        log = IntakeLog(path.expanduser().resolve(), self.w.credentials)
        log.load()  # missing, torn or foreign: one line before any lock file is made beside it
        log.claim()
        self.intake_log = log
        record = log.load()  # as the chat that held it last left it
        self.intake_log, self.messages, self.request = log, record.messages, record.request
        extra = [d for d in self.w.defaults if d not in record.defaults]  # this command line's own --set come last (they win)
        self.defaults = [*record.defaults, *extra]
        if self.w.output_dir is None and record.output_dir:
            self.output_dir = Path(record.output_dir)
        listed = ", ".join(f"{k}={v}" for k, v in (record.request or {}).items()) or "none validated yet"
        self.say(f"resumed the chat intake saved in {log.path}: {len(self.messages)} messages; request so far: {listed}", "green")
        if record.task is not None and record.request is not None:  # confirmed before the stop: open the run dir now
            return record.request, record.task
        return self.intake(None)

    # ------------------------------------------------------------------ intake
    def intake(self, request: str | None) -> tuple[dict[str, Any], str] | None:
        """Talk until the person confirms the inputs set_request understood; returns them and the run's first task.

        Goes on from wherever self.messages stand (a resumed intake): the person's turn after a reply without a tool
        call, the model's turn after a user turn, the confirmation of set_request calls that have no result yet. Every
        step is saved (`save_intake`) before the next one can be interrupted."""
        tool = self.tools[REQUEST_TOOL]
        if not self.messages:
            self.say("Describe the fine-tune you want (model, data, epochs, push or not, ...). Ctrl-D or 'quit' ends.", "dim")
        while True:
            last = self.messages[-1] if self.messages else None
            uses = [b for b in last["content"] if isinstance(b, dict) and b.get("type") == "tool_use"] \
                if last is not None and last["role"] == "assistant" and isinstance(last["content"], list) else []
            if last is None or (last["role"] == "assistant" and not uses):  # the person's turn
                text = request or self.read()
                if request:
                    self.console.print(f"[bold]you>[/] {escape(request)}")
                request = None
                if text is None:
                    return None
                if text:
                    add_user(self.messages, {"type": "text", "text": self.w.credentials.redact(text)})
                    self.save_intake()
                continue
            if last["role"] == "user":
                self.model_turn(tool)
                self.save_intake()
                continue
            results, confirmed = [], None
            for use in uses:
                block, inputs = self.intake_call(tool, use)
                results.append(block)
                confirmed = confirmed or inputs
            self.messages.append({"role": "user", "content": results})  # with a yes, the run's task is appended to this turn
            if confirmed is not None:
                listed = ", ".join(f"{k}={v}" for k, v in confirmed.items())
                task = (f"The user confirmed the request ({listed}). Start at step 1 and work through the six "
                        "steps; ask the user (ask_user) where a decision is theirs.")
                self.request = confirmed
                self.save_intake(task)
                return confirmed, task
            self.save_intake()

    def model_turn(self, tool: Tool):
        streamed: list[str] = []

        def show(delta: str) -> None:  # the intake's reply, printed as it streams
            streamed.append(delta)
            self.console.print(escape(delta), end="")

        if hasattr(self.w.client, "on_text"):
            self.w.client.on_text = show  # type: ignore[attr-defined]
        try:
            resp = self.w.client.create(system=self.w.intake_system(self.defaults), messages=self.messages, tools=[tool.schema()], max_tokens=4096)
        except LLMAuthError as err:
            raise ChatExit(ExitCode.BAD_INPUT, str(err)) from None
        except LLMError as err:
            raise ChatExit(ExitCode.BUG, str(err)) from None
        self.cost += resp.cost
        content = json.loads(self.w.credentials.redact(json.dumps(resp.content)))
        self.messages.append({"role": "assistant", "content": content})
        text = resp.text()
        if streamed:
            self.console.print()
        elif text:
            self.console.print(escape(text))
        return resp

    def intake_call(self, tool: Tool, use: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """One tool_use of the intake: its tool_result block, and the inputs when the person confirmed them."""
        def result(text: str, error: bool = False) -> dict[str, Any]:
            block = {"type": "tool_result", "tool_use_id": use["id"], "content": text}
            if error:
                block["is_error"] = True
            return block

        if use.get("name") != REQUEST_TOOL:
            return result(f"only {REQUEST_TOOL} is available before the run starts; the other tools come after the user confirms", True), None
        try:
            args = tool.validate(use.get("input") or {})
            tool(None, args)  # type: ignore[arg-type]  # no run yet: set_request validates against a fresh config
        except ValidationError as err:
            return result(f"invalid arguments for {REQUEST_TOOL!r}:\n{format_validation_error(err)}\nFix the errors and try again.", True), None
        except ToolError as err:
            return result(str(err), True), None
        except NeedsUser as q:
            inputs = dict(q.choices.get("yes") or {})
            try:
                self.show_request(inputs)
            except ConfigError as err:
                return result(f"{err}; fix the request (or ask the user)", True), None
            self.request = inputs
            self.save_intake()  # a Ctrl-C at the prompt below keeps the request: --resume asks again
            while True:
                answer = (self.console.input("[bold]start with these inputs? \\[y]es / \\[n]o / \\[e]dit>[/] ").strip() or "").lower()
                if answer in ("y", "yes"):
                    return result("The user confirmed these inputs; the run starts now."), inputs
                if answer in ("n", "no"):
                    return result("The user declined these inputs. Ask what they want instead."), None
                if answer in ("e", "edit"):
                    change = self.console.input("[bold]what should change?>[/] ").strip()
                    return result(f"The user wants changes: {change}. Call set_request again with the corrected inputs."), None
                if answer:
                    return result(f"The user wants changes: {answer}. Call set_request again with the corrected inputs."), None
        return result("nothing to change"), None

    def draft(self, inputs: dict[str, Any]) -> RunConfig:
        """The config these inputs and the command line's --set would make (nothing written)."""
        data, _ = apply_overrides({}, list(self.defaults))
        for key, value in inputs.items():
            node = data
            parts = key.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {})
            node[parts[-1]] = value
        if data.get("dataset_id") and "local_dataset_path" not in inputs:
            data.pop("local_dataset_path", None)
        if self.output_dir is not None:
            data["output_dir"] = str(self.output_dir.expanduser().resolve())
        return build_config(data)

    def show_request(self, inputs: dict[str, Any]) -> None:
        """The inputs understood, with where each comes from (ConfigError when they do not make a valid config)."""
        cfg = self.draft(inputs)
        default_keys = set(apply_overrides({}, list(self.defaults))[1])
        table = Table(title="what I understood", show_header=True, header_style="bold", expand=False)
        table.add_column("input")
        table.add_column("value")
        table.add_column("from")
        data = cfg.model_dump()
        for key in SHOWN:
            if key == "dataset":
                value = cfg.dataset_id or cfg.local_dataset_path or "none: Step 1 recommends some"
                src_keys = {"dataset_id", "local_dataset_path"}
            else:
                node: Any = data
                for part in key.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                value = node
                src_keys = {key}
                if key == "lora_r" and cfg.hyperparameters.training_method != "lora":
                    continue
                if key in ("hf_model_repo", "hub_private") and not cfg.push_to_hub:
                    continue
                if key == "task_type" and value is None:
                    value = "detected in Step 1"
                if key == "hf_model_repo" and value is None:
                    value = "<your user>/<short name>-finetuned"
            if key == "output_dir" and self.output_dir is not None:
                default_keys.add("output_dir")
            src = "you" if src_keys & set(inputs) else "command line" if src_keys & default_keys else "default"
            table.add_row(key.removeprefix("hyperparameters."), escape(str(value)), src)
        self.console.print(table)

    # ------------------------------------------------------------------ the run
    def open(self, opened: tuple[RunConfig, list[str]]) -> None:
        """Open the output dir as `run` does: lock, session log, state, config.yaml with the user's keys, platform."""
        from tao_finetune.agent.authority import user_recipe
        from tao_finetune.agent.console import LiveView
        from tao_finetune.agent.lock import RunLock

        cfg, user_keys = opened
        run_dir = cfg.out
        self.view = LiveView(self.console, run_dir, self.mode)  # type: ignore[arg-type]
        self.view.chat = True
        self.lock = RunLock(run_dir, command="chat").acquire()
        try:
            session = SessionLog(run_dir / "session.jsonl", self.w.credentials, echo=None if self.mode == "quiet" else self.view.event)
        except SessionFormatError as err:
            raise ConfigError(f"{err}: move session.jsonl away to start a new log") from None
        self.w.on_open(run_dir, session)
        state = RunState.load(run_dir)
        for note in filter(None, [session.repaired, state.load_note,
                                  self.lock.took_over is not None and f"took over a stale lock of PID {self.lock.took_over.get('pid', '?')}"]):
            session.event("note", text=str(note))
            self.say(f"note: {note}", "yellow")
        user_recipe(cfg, user_keys)
        self.ctx = RunContext(cfg, session, self.w.credentials, state, yes=False)
        self.ctx.platform = self.w.make_platform(cfg, None if self.mode == "quiet" else self.view.job_output)
        self.ctx.save()
        if gates.first_unmet(run_dir, state) not in (None, 6) and hasattr(self.ctx.platform, "prewarm"):
            self.ctx.platform.prewarm(self.ctx)
        self.say(f"output dir: {run_dir}", "dim")

    def resume(self, run_dir: Path) -> None:
        """Open an earlier chat's (or run's) output dir and restore its conversation from session.jsonl."""
        run_dir = run_dir.expanduser().resolve()
        if not (run_dir / "config.yaml").is_file() or not (run_dir / "session.jsonl").is_file():
            raise ConfigError(f"--resume {str(run_dir)!r}: no run there (config.yaml and session.jsonl are needed)")
        cfg = load_config(run_dir / "config.yaml")
        cfg.output_dir = str(run_dir)
        self.open((cfg, []))
        assert self.ctx is not None
        try:
            self.messages = rebuild_messages(self.ctx.session.events())
        except SessionFormatError as err:
            raise SessionFormatError(f"--resume {str(run_dir)!r}: {err}") from None
        turns = sum(1 for m in self.messages if m["role"] == "assistant")
        self.say(f"resumed the conversation of {run_dir}: {len(self.messages)} messages, {turns} model turns", "green")
        last = next((m for m in reversed(self.messages) if m["role"] == "assistant"), None)
        text = " ".join(b.get("text", "") for b in (last or {}).get("content") or [] if isinstance(b, dict) and b.get("type") == "text").strip()
        if text:
            self.say(f"last from the agent: {text[:600]}", "dim")
        self.show_gates()
        if self.ctx.state.pending_question:
            self.say(f"pending question: {self.ctx.state.pending_question} (your next line answers it)", "yellow")

    def show_gates(self) -> None:
        assert self.ctx is not None
        marks = []
        for step in gates.GATES:
            met = gates.check(step, self.ctx.run_dir, self.ctx.state).met
            marks.append(f"{'✅' if met else '·'} {step} {gates.STEP_NAMES[step]}")
        self.console.print("   ".join(marks))

    def follow_up(self, text: str) -> str:
        """The task of a follow-up: the person's words, an answer to a pending question applied, and where the run stands."""
        assert self.ctx is not None
        ctx, state = self.ctx, self.ctx.state
        lines = [text]
        if state.pending_question:
            q = NeedsUser(state.pending_question, "", state.pending_choices)
            ctx.session.event("user", question=state.pending_question, answer=text)
            applied = self.w.apply_answer(ctx, q, text)
            lines.append(f"(This answers the pending question: {state.pending_question!r}.{' ' + applied if applied else ''})")
            state.pending_question, state.pending_choices = None, {}
            ctx.save()
        first = gates.first_unmet(ctx.run_dir, state)
        lines.append("All six gates hold." if first is None else
                     f"Gate status: steps 1-{first - 1} hold; the run continues at step {first} ({gates.STEP_NAMES[first]})."
                     if first > 1 else "Gate status: the run is at step 1.")
        return "\n\n".join(lines)

    def run_segment(self, task: str) -> LoopExit:
        """One `Agent.run` on the conversation so far, under the live view; the conversation is kept for the next."""
        ctx = self.ctx
        assert ctx is not None
        view = self.view
        first = gates.first_unmet(ctx.run_dir, ctx.state)
        view.step = first or 6
        view.met = {s: gates.check(s, ctx.run_dir, ctx.state).met for s in gates.GATES}
        if hasattr(self.w.client, "on_text"):
            self.w.client.on_text = view.stream_text if view.live_mode else None  # type: ignore[attr-defined]
        agent = Agent(self.w.client, ctx, self.w.tools, self.w.system_for(ctx), copy.copy(self.w.limits),
                      ask=lambda q: view.paused(self.ask_inline, q), on_answer=lambda q, a: self.w.apply_answer(ctx, q, a))
        close_dangling(self.messages)
        with view:
            result = agent.run(task, history=self.messages)
        if self.intake_log is not None:  # the run dir's log now holds the intake (the start event's history)
            self.intake_log.remove()
            self.intake_log = None
        self.messages = agent.messages + ([{"role": "user", "content": agent.unsent}] if agent.unsent else [])
        close_dangling(self.messages)
        self.cost += agent.cost
        self.code = int(result.code)
        code = result.code
        if code == ExitCode.OK:
            self.say(f"done: {result.message}", "bold green")
            self.console.print(escape(self.w.summary(ctx.run_dir, ctx.state)))
        elif code == ExitCode.QUESTION:
            self.say(f"question: {result.message}", "bold yellow")
            self.say("answer it on the next line", "dim")
        elif code == ExitCode.INTERRUPTED:
            self.say(f"interrupted: {result.message}", "bold yellow")
        else:
            self.say(f"stopped: {result.message}", "bold red")
        if agent.steps:
            self.say(f"{agent.steps} model turns · ${self.cost:.4f} in this chat", "dim")
        if code != ExitCode.INTERRUPTED:
            self.say("type a follow-up (e.g. 'train two more epochs', 'now push it'), or 'quit'", "dim")
        return result


class ChatExit(Exception):
    """Ends the chat with an exit code and one line (the model service refused or failed)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = int(code), message
