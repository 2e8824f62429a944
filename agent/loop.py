"""The agent loop: query the model, execute its tool calls behind the gates, check limits, log every step."""

from __future__ import annotations

import json
import re
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ValidationError

from tao_finetune.agent import gates, policy, steps
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.progress import Journal
from tao_finetune.agent.llm import LLMAuthError, LLMClient, LLMDeadline, LLMError, LLMResponse
from tao_finetune.agent.errors import AskUser, BadInput, Done, GateFailed, Interrupted, LimitReached, LoopExit, NeedsUser, ToolError  # noqa: F401
from tao_finetune.agent.tooling import Tool, format_validation_error

PROTECTED = policy.SUBSTITUTION_ARGS  # tool arguments that name a protected run input (agent/policy.py)
RESULT_LIMIT = 20_000


def replace_path(text: str, path: str, new: str) -> str:
    """`path` replaced by `new` wherever it stands as a whole path or a path's head, never inside a longer name: the
    run dir `out/x` is no part of `out/x-inputs/model` nor of `out/x.2`."""
    if not path:
        return text
    return re.sub(re.escape(path) + r"(?![\w-]|\.\w)", lambda _: new, text)


def chain_digest(previous: str, text: str) -> str:
    """The invocation's tool results so far, chained (the exit event carries it: a replay checks even the results no
    later model turn saw)."""
    import hashlib

    return hashlib.sha256(f"{previous}\n{text}".encode()).hexdigest()[:16]


def request_digest(messages: list[dict[str, Any]], run_dir: Any) -> str:
    """A digest of the conversation sent to the model, with the run dir's path abstracted (replays compare it)."""
    import hashlib

    text = replace_path(json.dumps(messages, sort_keys=True, ensure_ascii=False, default=str), str(run_dir), "<run>")
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class InvalidArgs(ToolError):
    """Arguments failed validation; counted against the tool's retry budget, not the same-error rule."""


class Refused(ToolError):
    """A gate refused the call (an earlier step is unfinished): its own category, never counted as an error."""


@dataclass
class Limits:
    """When to stop regardless of progress."""

    max_steps: int = 250
    max_cost_usd: float = 25.0
    max_wall_s: float = 24 * 3600
    max_tokens: int = 8192
    max_tokens_cap: int = 32768
    max_nudges: int = 2
    stop_before_step: int | None = None  # end (exit 0) once every gate before this step holds


class Agent:
    """One run: a conversation with the model over typed tools, gated by the six steps."""

    def __init__(self, client: LLMClient, ctx: RunContext, tools: list[Tool], system: str, limits: Limits | None = None,
                 ask: Callable[[str], str | None] | None = None, on_answer: Callable[[NeedsUser, str], str | None] | None = None):
        self.client, self.ctx, self.system = client, ctx, system
        self.on_answer = on_answer  # applies an answer typed at a question (an approved change); returns what it did
        self.unsent: list[dict[str, Any]] | None = None  # tool results of the last turn when the run ended right after it
        self.tools = {t.name: t for t in tools}
        steps.check_tools(t for t in tools if t.name in steps.ANY_STEP_TOOLS or any(t.name in s.tools for s in steps.STEPS))
        self.refusals = 0
        self.limits = limits or Limits()
        self.ask = ask
        self.messages: list[dict[str, Any]] = []
        self.steps = 0
        self.cost = 0.0
        self.retries: dict[str, int] = {}
        self.nudges = 0
        self.started = time.monotonic()
        self.max_tokens = self.limits.max_tokens
        # one overall deadline from --max-hours: the API client's retries and the tools' waits end at it too
        self.deadline = self.started + self.limits.max_wall_s
        if hasattr(client, "deadline"):
            client.deadline = self.deadline
        ctx.deadline = self.deadline
        self.journal = Journal(ctx)

    def run(self, task: str, history: list[dict[str, Any]] | None = None) -> LoopExit:
        """Run until done, a question, a limit or an error; always returns the exit.

        `history` continues an earlier conversation (chat): its messages come first and are recorded in the start event;
        a trailing user message (e.g. tool results) gets the task appended to it.
        """
        extra = {"history": history} if history else {}
        self.ctx.session.event("start", client=self.client.name, task=task, config=self.ctx.config.model_dump(mode="json"),
                               first_unmet=gates.first_unmet(self.ctx.run_dir, self.ctx.state), **extra)
        # redacted as the task is: a continued conversation comes from files (a session log, a chat intake) that may hold one
        self.messages = json.loads(self.ctx.creds.redact(json.dumps(history or [])))
        self.results_sha = ""  # this invocation's tool results, chained (a chat's follow-up is an invocation of its own)
        text = self.ctx.creds.redact(task)
        if self.messages and self.messages[-1]["role"] == "user":
            last = self.messages[-1]
            blocks = last["content"] if isinstance(last["content"], list) else [{"type": "text", "text": last["content"]}]
            last["content"] = [*blocks, {"type": "text", "text": text}]
        else:
            self.messages.append({"role": "user", "content": text})
        choices: dict = {}
        try:
            while True:
                self.step()
        except LoopExit as exit_:
            result = exit_
        except NeedsUser as q:
            result = AskUser(q.question, q.how_to_answer)
            choices = q.choices
        except KeyboardInterrupt:
            result = Interrupted("interrupted (Ctrl-C); progress is saved: re-run the same command to resume")
        except OSError as err:  # the machine, not the code: a full disk, a vanished folder
            result = LoopExit(f"{err.strerror or err}{f': {err.filename}' if err.filename else ''}")
        except Exception as err:  # a bug: one line for the user, the traceback in a crash report
            result = LoopExit(f"internal error {err.__class__.__name__}: {' '.join(str(err).split())[:200]}; "
                              f"crash report: {crash_report(self.ctx.run_dir, err, self.ctx.creds.redact)}")
        finally:
            self.ctx.save()
        # the run's last word reaches the console, result.json, PROGRESS.md and the caller: redacted once, here (an error
        # or a question may quote what a tool or the Hub said, a credential included)
        result.message = self.ctx.creds.redact(result.message)
        if isinstance(result, AskUser):
            self.ctx.state.pending_question = result.message
            self.ctx.state.pending_choices = choices
            self.ctx.save()
        self.ctx.session.event("exit", code=result.code, message=result.message, steps=self.steps, cost_usd=round(self.cost, 4),
                               results_sha=getattr(self, "results_sha", ""))
        self.journal.stop(result)
        return result

    def step(self) -> None:
        self.execute(self.query())

    def query(self) -> LLMResponse:
        """Check limits, then ask the model for the next turn."""
        lim = self.limits
        resume = "; raise it and re-run the same command to resume"
        if self.steps >= lim.max_steps:
            raise LimitReached(f"step limit reached ({lim.max_steps} model turns, --max-steps){resume}")
        if self.cost >= lim.max_cost_usd:
            raise LimitReached(f"cost limit reached (${self.cost:.2f} of ${lim.max_cost_usd:.2f}, --max-cost){resume}")
        if time.monotonic() >= self.deadline:
            raise LimitReached(f"wall-time limit reached ({lim.max_wall_s / 3600:.2f} h, --max-hours){resume}")
        schemas = [t.schema() for t in self.tools.values()]
        projected = getattr(self.client, "projected_cost", None)
        if projected is not None:
            est = projected(system=self.system, messages=self.messages, tools=schemas, max_tokens=self.max_tokens)
            if self.cost + est > lim.max_cost_usd:
                raise LimitReached(f"cost limit: ${self.cost:.2f} spent and the next call could cost up to ${est:.2f}, over "
                                   f"--max-cost ${lim.max_cost_usd:.2f}{resume}")
        self.steps += 1
        try:
            resp = self.client.create(system=self.system, messages=self.messages, tools=schemas, max_tokens=self.max_tokens)
        except LLMAuthError as err:
            raise BadInput(str(err)) from None
        except LLMDeadline as err:
            raise LimitReached(f"{err}{resume}") from None
        except LLMError as err:
            raise LoopExit(str(err)) from None
        self.cost += resp.cost
        self.ctx.session.event("response", step=self.steps, request_sha=request_digest(self.messages, self.ctx.run_dir), content=resp.content, stop_reason=resp.stop_reason, model=resp.model,
                               usage=vars(resp.usage), cost_usd=round(resp.cost, 6))
        return resp

    def execute(self, resp: LLMResponse) -> None:
        """Act on one assistant turn according to its stop reason."""
        reason = resp.stop_reason
        if reason == "max_tokens":
            if self.max_tokens >= self.limits.max_tokens_cap:
                raise LoopExit(f"the model's reply was cut off at the {self.max_tokens}-token cap")
            self.max_tokens = min(2 * self.max_tokens, self.limits.max_tokens_cap)
            self.ctx.session.event("note", text=f"reply truncated; retrying with max_tokens={self.max_tokens}; nothing executed")
            return
        if reason == "refusal":
            raise LoopExit(f"the model refused to continue: {resp.text() or 'no reason given'}")
        resp.content = json.loads(self.ctx.creds.redact(json.dumps(resp.content)))
        self.messages.append({"role": "assistant", "content": resp.content})
        if reason == "pause_turn":
            return
        uses = resp.tool_uses()
        if uses:
            results: list[dict[str, Any]] = [self.call(u) for u in uses]
            self.unsent = results  # kept when after_tools ends the run: a chat continues the conversation from them
            self.after_tools()
            self.unsent = None
            results.append({"type": "text", "text": self.gate_status()})
            self.messages.append({"role": "user", "content": results})
            return
        self.finish_turn(resp)

    def after_tools(self) -> None:
        """Record gate transitions; stop when all six hold."""
        state, run_dir = self.ctx.state, self.ctx.run_dir
        all_met = True
        for step in gates.GATES:
            res = gates.check(step, run_dir, state)
            if state.log_gate(step, res.met, list(res.missing)):
                self.ctx.session.event("gate", step=step, met=res.met, missing=list(res.missing))
                self.journal.gate(step, res.met, list(res.missing))
            all_met &= res.met
        self.ctx.save()
        question = gates.learning_question(run_dir, state)
        if question:
            raise NeedsUser(question, "re-run the same command with --answer accept to keep this model, or change the recipe "
                                      "(--set learning_rate=..., --set n_epochs=...) and re-run")
        if all_met:
            raise Done("all six gates met")
        stop = self.limits.stop_before_step
        if stop and all(gates.check(s, run_dir, state).met for s in range(1, stop)):
            raise Done(f"stopped before step {stop} ({gates.STEP_NAMES[stop]}) as asked: gates 1-{stop - 1} hold")

    def gate_status(self) -> str:
        """The gate status now, sent with every tool-result turn (a system prompt would go stale)."""
        return "Gate status now:\n" + "\n".join(f"- {line}" for line in steps.status_lines(self.ctx.run_dir, self.ctx.state))

    def finish_turn(self, resp: LLMResponse) -> None:
        """The model stopped calling tools: done if every gate holds, else nudge, then fail."""
        step = gates.first_unmet(self.ctx.run_dir, self.ctx.state)
        if step is None:
            raise Done(resp.text() or "all six gates met")
        res = gates.check(step, self.ctx.run_dir, self.ctx.state)
        if self.nudges >= self.limits.max_nudges:
            raise GateFailed(f"gate {step} ({steps.name(step)}) not met: missing {', '.join(res.missing)}")
        self.nudges += 1
        text = (f"The run is not finished: gate {step} ({steps.name(step)}) is missing {', '.join(res.missing)}. "
                "Continue with the tools, or call ask_user if you need a decision.")
        self.ctx.session.event("nudge", text=text)
        self.messages.append({"role": "user", "content": text})

    def call(self, use: dict[str, Any]) -> dict[str, Any]:
        """Execute one tool_use and return its tool_result block."""
        name, raw, tid = use.get("name", ""), use.get("input") or {}, use["id"]
        self.ctx.session.event("tool_call", id=tid, name=name, input=raw)
        try:
            out, is_error = self.dispatch(name, raw), False
        except (InvalidArgs, Refused) as err:
            out, is_error = str(err), True
        except ToolError as err:
            out, is_error = self.tool_error(name, str(err)), True
        except NeedsUser as q:
            if not self.ask or self.ctx.yes:
                raise
            self.ctx.state.pending_question = q.question  # survives a Ctrl-C at the prompt
            self.ctx.state.pending_choices = q.choices
            self.ctx.save()
            answer = self.ask(q.question)
            if answer is None:
                raise
            self.ctx.state.pending_question, self.ctx.state.pending_choices = None, {}
            self.ctx.session.event("user", question=q.question, answer=answer)
            applied = self.on_answer(q, answer) if self.on_answer else None
            out, is_error = f"The user answered: {answer}" + (f"\n{applied}" if applied else ""), False
        text = self.result_text(name, out, is_error)
        self.ctx.session.event("tool_result", id=tid, name=name, is_error=is_error, content=text)
        self.results_sha = chain_digest(getattr(self, "results_sha", ""), replace_path(text, str(self.ctx.run_dir), "<run>"))
        if is_error:
            self.journal.tool_error(name, text)
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tid, "content": text}
        if is_error:
            block["is_error"] = True
        return block

    def result_text(self, name: str, out: Any, is_error: bool) -> str:
        """What the model sees of a tool's output: outside text as a data block, secrets redacted, length capped."""
        text = out if isinstance(out, str) else json.dumps(out, default=str, ensure_ascii=False)
        if not is_error:
            text, flags = policy.outside_result(name, out, text)
            for flag in flags:
                self.ctx.config.note(f"step 1: {flag}")
        text = self.ctx.creds.redact(text)
        if len(text) > RESULT_LIMIT:
            text = text[:RESULT_LIMIT] + f"\n[... {len(text) - RESULT_LIMIT} characters cut]"
        return text

    def dispatch(self, name: str, raw: dict[str, Any]) -> Any:
        """Validate, gate-check and run a tool; ToolError for everything the model should see."""
        tool = self.tools.get(name)
        if tool is None:
            raise ToolError(f"unknown tool {name!r}; available: {', '.join(sorted(self.tools))}")
        try:
            args = tool.validate(raw)
        except ValidationError as err:
            n = self.retries[name] = self.retries.get(name, 0) + 1
            if n > tool.max_retries:
                raise LoopExit(f"tool {name!r} got invalid arguments {n} times; last: {format_validation_error(err)}") from None
            raise InvalidArgs(f"invalid arguments for {name!r}:\n{format_validation_error(err)}\nFix the errors and try again.") from None
        self.retries.pop(name, None)
        policy.check_config_untouched(self.ctx)
        step = tool.step_of(args)
        if step:
            block = gates.blocking(step, self.ctx.run_dir, self.ctx.state)
            if block is not None:
                self.ctx.session.event("refused", name=name, step=step, gate=block.step, missing=list(block.missing))
                self.refusals += 1
                raise Refused(
                    f"refused: {name!r} belongs to step {step} ({steps.name(step)}), but gate {block.step} "
                    f"({steps.name(block.step)}) is not met: missing {', '.join(block.missing)}")
        self.guard_substitution(name, args)
        return tool(self.ctx, args)

    def guard_substitution(self, name: str, args: BaseModel) -> None:
        """Never let a tool silently change the model, the dataset or the training method."""
        if name in policy.ASKS_ITSELF:
            return
        cfg = self.ctx.config
        current = {"model_id": cfg.model_id, "dataset_id": cfg.dataset_id, "local_dataset_path": cfg.local_dataset_path,
                   "training_method": cfg.hyperparameters.training_method}
        for key in PROTECTED:
            new = getattr(args, key, None)
            if new is not None and current[key] is not None and new != current[key]:
                cfg_key = "hyperparameters.training_method" if key == "training_method" else key
                raise NeedsUser(f"{name!r} would change {key} from {current[key]!r} to {new!r}; the agent never substitutes it on its own. "
                                f"Approve by re-running with the new value.", f"re-run with --set {key}={new}",
                                choices={"yes": {cfg_key: new}})

    def tool_error(self, name: str, message: str) -> str:
        """Count identical errors; the third one stops the run with a question."""
        key = f"{name}: {message[:300]}"
        counts = self.ctx.state.error_counts
        counts[key] = counts.get(key, 0) + 1
        if counts[key] >= 3:
            raise NeedsUser(f"the same error happened 3 times in {name!r}: {message.splitlines()[0]}",
                            "fix the cause (or change the request) and re-run the same command to resume")
        return message


def crash_report(run_dir, err: BaseException, redact: Callable[[str], str] | None = None) -> str:
    """Write the (redacted) traceback of an unexpected error under <run dir>/.tao/ (else /tmp); returns its path."""
    from pathlib import Path

    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    text = redact(text) if redact else text
    for root in (Path(run_dir) / ".tao", Path("/tmp")):
        try:
            root.mkdir(parents=True, exist_ok=True)
            path = root / f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{id(err) % 10000:04d}.txt"
            path.write_text(text)
            return str(path)
        except OSError:
            continue
    return "(could not be written)"
