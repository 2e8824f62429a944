"""The autopilot: a rule-driven client that walks the same tools and gates with scaffold defaults; no key, no network."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

from tao_finetune.agent import gates, references, steps
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.facts import audit_of
from tao_finetune.agent.llm import LLMResponse
from tao_finetune.agent.state import verify_job

Predicate = Callable[[RunContext], bool]


@dataclass(frozen=True)
class Action:
    """One rule: call `tool` with `args(ctx)` unless `done(ctx)` holds or it already succeeded (once=True)."""

    step: int
    tool: str
    args: Callable[[RunContext], dict[str, Any]]
    done: Predicate | None = None
    when: Predicate | None = None
    once: bool = True
    may_fail: bool = False
    repeats: int = 4
    playbook: bool = True

    def __post_init__(self) -> None:
        if self.tool != "docker_run" and steps.step_of(self.tool) != self.step:
            raise ValueError(f"autopilot rule for {self.tool!r} says step {self.step}; agent/steps.py says {steps.step_of(self.tool)}")

    @property
    def retry(self) -> bool:
        """Job failures are retried: the error playbook changes the config before the next try (playbook=False: it does not)."""
        return self.playbook and self.tool in ("docker_run", "train_status")


def _none(ctx: RunContext) -> dict[str, Any]:
    return {}


def _recipe_slot(slot: str) -> Action:
    def args(ctx: RunContext) -> dict[str, Any]:
        rec = references.recipe(ctx.config.task_type or "")
        return {"slot": slot, "value": rec[slot], "rank": "reference", "source": "references/recipes.yaml",
                "reason": "autopilot: no model-specific live finding used; scaffold default"}

    return Action(3, "record_recipe", args, done=lambda c: slot in c.config.recipe, once=False)


def _job(job: str, done: Predicate | None = None, **kw: Any) -> Action:
    return Action(steps.JOB_STEPS[job], "docker_run", lambda c: {"job": job}, done=done, **kw)


def _file(rel: str) -> Predicate:
    return lambda c: (c.run_dir / rel).exists()


def _project_files(ctx: RunContext) -> tuple[str, ...]:
    return gates.PROJECT_FILES + (("tests/test_project.py",) if ctx.config.emit_unit_tests else ())


def _proved(job: str) -> Predicate:
    """The job's evidence holds (a result file without it, or changed since, means the job must run again)."""
    return lambda c: verify_job(c.state, c.run_dir, job) is None


def _training(ctx: RunContext) -> bool:
    return ctx.platform is not None and bool(ctx.platform.status(ctx, "train").get("running"))


ACTIONS: tuple[Action, ...] = (
    Action(1, "probe_model", _none, done=lambda c: bool(c.config.model_facts)),
    Action(1, "recommend_datasets", _none, when=lambda c: c.config.dataset_source == "recommend"),
    Action(1, "probe_dataset", _none, done=lambda c: bool(c.config.dataset_facts)),
    Action(1, "check_compat", _none, done=lambda c: c.config.applicable_workarounds is not None),
    Action(1, "qualify", _none, done=lambda c: gates.check(1, c.run_dir, c.state).met),
    Action(2, "audit_hardware", _none, done=lambda c: bool((audit := audit_of(c.state.records)) and audit.passed)),
    Action(2, "select_image", _none, done=lambda c: bool(c.config.ngc_image), when=lambda c: c.config.platform == "docker"),
    Action(2, "check_model_fit", _none, done=lambda c: "model_fit" in c.state.records),
    Action(3, "fetch_docs", lambda c: {"slots": ["*"]}, done=lambda c: bool(c.state.live_attempts), may_fail=True),
    *(_recipe_slot(s) for s in gates.RECIPE_SLOTS),
    Action(3, "write_recipe_notes", lambda c: {"notes": "Autopilot run: scaffold defaults from references/recipes.yaml after the live attempts logged above."},
           done=_file("meta/recipe.md")),
    Action(4, "render_scaffold", _none, done=lambda c: all((c.run_dir / f).is_file() for f in _project_files(c))),
    Action(4, "docker_build", _none, done=lambda c: bool((c.state.records.get("build") or {}).get("ok"))),
    _job("prepare", _file("data/meta.json")),
    _job("smoke", lambda c: gates.read_json(c.run_dir / "reports/smoke.json").get("passed") is True and _proved("smoke")(c)),
    _job("tests", when=lambda c: c.config.emit_unit_tests, playbook=False,
         done=lambda c: gates.read_json(c.run_dir / "reports/unit_tests.json").get("passed") is True),
    Action(4, "preflight", _none, done=_file("meta/preflight.json")),
    _job("baseline", when=lambda c: not c.config.skip_baseline, done=_proved("baseline")),
    _job("train", done=lambda c: _file("checkpoints/final")(c) or _training(c), once=False),
    Action(5, "train_status", lambda c: {"wait_s": 600}, done=_file("checkpoints/final"), when=_training, once=False,
           repeats=10_000),
    _job("eval", done=_proved("eval")),
    _job("infer", _proved("infer")),
    Action(5, "write_report", _none, when=lambda c: c.config.emit_report, done=_file("reports/report.pdf")),
    Action(6, "hf_push", _none, when=lambda c: c.config.push_to_hub, done=lambda c: bool((c.state.records.get("hub") or {}).get("url"))),
    Action(6, "emit_rerun_skill", _none, done=lambda c: not gates.gate6(c.run_dir, c.state)),
)


class AutopilotClient:
    """Answers each request with the next tool call the rules pick for the run state."""

    name = "autopilot"

    def __init__(self, ctx: RunContext, actions: tuple[Action, ...] = ACTIONS):
        self.ctx = ctx
        self.actions = actions
        self.calls: dict[str, tuple[int, dict[str, Any]]] = {}
        self.succeeded: set[tuple[str, str]] = set()
        self.picks: dict[tuple[int, str], int] = {}
        self.failed: tuple[Action, str] | None = None
        self.n = 0

    def _learn(self, messages: list[dict[str, Any]]) -> None:
        last = messages[-1] if messages else {}
        if last.get("role") != "user" or not isinstance(last.get("content"), list):
            return
        self.failed = None
        for block in last["content"]:
            call = self.calls.get(block.get("tool_use_id", ""))
            if block.get("type") != "tool_result" or not call:
                continue
            act = self.actions[call[0]]
            if not block.get("is_error"):
                self.succeeded.add((act.tool, json.dumps(call[1], sort_keys=True)))
            elif not (act.retry or act.may_fail):
                self.failed = (act, str(block.get("content", "")).splitlines()[0][:500])

    def pick(self) -> tuple[int, dict[str, Any]] | None:
        """The first action, up to the first unmet step, that still has work (a met gate does not skip its step's checks)."""
        ctx = self.ctx
        step = gates.first_unmet(ctx.run_dir, ctx.state)
        if step is None:
            return None
        for i, act in enumerate(self.actions):
            if act.step > step or (act.when and not act.when(ctx)) or (act.done and act.done(ctx)):
                continue
            args = act.args(ctx)
            if act.once and (act.tool, json.dumps(args, sort_keys=True)) in self.succeeded:
                continue
            if act.may_fail and any(self.actions[j].tool == act.tool and a == args for j, a in self.calls.values()):
                continue
            key = (i, json.dumps(args, sort_keys=True))
            if self.picks.get(key, 0) >= act.repeats:
                return None
            self.picks[key] = self.picks.get(key, 0) + 1
            return i, args
        return None

    def create(self, *, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> LLMResponse:
        self._learn(messages)
        if self.failed:
            act, error = self.failed
            self.n += 1
            question = f"{act.tool} failed: {error}. The autopilot does not guess a fix; correct the input and re-run."
            return LLMResponse([{"type": "tool_use", "id": f"toolu_auto_{self.n:04d}", "name": "ask_user", "input": {"question": question}}],
                               "tool_use", "autopilot")
        picked = self.pick()
        if picked is None:
            step = gates.first_unmet(self.ctx.run_dir, self.ctx.state)
            text = "All six gates hold." if step is None else f"No rule left for step {step}; stopping."
            return LLMResponse([{"type": "text", "text": text}], "end_turn", "autopilot")
        i, args = picked
        self.n += 1
        tid = f"toolu_auto_{self.n:04d}"
        self.calls[tid] = (i, args)
        act = self.actions[i]
        return LLMResponse([{"type": "text", "text": f"step {act.step}: {act.tool}"},
                            {"type": "tool_use", "id": tid, "name": act.tool, "input": args}], "tool_use", "autopilot")
