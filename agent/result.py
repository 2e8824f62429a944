"""The result of one `run`: what a script gets back (`--json`, `result.json`, `tao_finetune.run()`).

Built only from what the run left on disk (the gates, reports, run state and session log), so the CLI, the Python API
and a later `status` all report the same thing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tao_finetune.agent import gates
from tao_finetune.agent.config import atomic_write_text
from tao_finetune.agent.errors import ExitCode
from tao_finetune.agent.session import read_events
from tao_finetune.agent.state import RunState

RESULT_FILE = "result.json"
Status = Literal["done", "question", "gate_failed", "limit", "bad_input", "interrupted", "error"]
STATUS_OF: dict[int, Status] = {
    ExitCode.OK: "done",
    ExitCode.QUESTION: "question",
    ExitCode.GATE_FAILED: "gate_failed",
    ExitCode.LIMIT: "limit",
    ExitCode.BAD_INPUT: "bad_input",
    ExitCode.INTERRUPTED: "interrupted",
}


class GateStatus(BaseModel):
    step: int
    name: str
    met: bool
    missing: list[str] = Field(default_factory=list)


class Metrics(BaseModel):
    name: str | None = None
    baseline: float | None = None
    fine_tuned: float | None = None
    delta: float | None = None


class Usage(BaseModel):
    """Model calls of this output dir's session log (every invocation that wrote to it)."""

    turns: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0
    cost_usd: float = 0.0

    @property
    def cache_read_share(self) -> float:
        """Share of prompt tokens served from the prompt cache."""
        prompt = self.input_tokens + self.cache_read_input_tokens + self.cache_creation_input_tokens
        return self.cache_read_input_tokens / prompt if prompt else 0.0

    def line(self) -> str:
        """One human line: turns, tokens, cache share, cost."""
        return (f"{self.turns} model turns · {self.input_tokens:,} in / {self.output_tokens:,} out tokens · "
                f"cache reads {self.cache_read_input_tokens:,} ({self.cache_read_share:.0%}), writes "
                f"{self.cache_creation_input_tokens:,} · ${self.cost_usd:.4f}")


class RunResult(BaseModel):
    """Status, exit code, gates, metrics, paths, Hub URL, tokens and cost of a run."""

    status: Status
    exit_code: int
    message: str = ""
    question: str | None = None
    how_to_answer: str | None = None
    output_dir: str
    gates: list[GateStatus] = Field(default_factory=list)
    metrics: Metrics = Field(default_factory=Metrics)
    hub_url: str | None = None
    paths: dict[str, str] = Field(default_factory=dict)
    usage: Usage = Field(default_factory=Usage)
    wall_s: float | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == ExitCode.OK


def usage_of(events: list[dict[str, Any]]) -> Usage:
    """Sum the usage and cost of every model response in a session log."""
    u = Usage()
    for e in events:
        if e.get("kind") != "response":
            continue
        u.turns += 1
        usage = e.get("usage") or {}
        for key in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
            value = usage.get(key) or 0
            setattr(u, key, getattr(u, key) + (int(value) if isinstance(value, (int, float)) else 0))
        cost = e.get("cost_usd") or 0.0
        u.cost_usd += float(cost) if isinstance(cost, (int, float)) else 0.0
    u.cost_usd = round(u.cost_usd, 6)
    return u


def _events(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "session.jsonl"
    if not path.is_file():
        return []
    try:
        return read_events(path)
    except (ValueError, OSError):
        return []


def metrics_of(run_dir: Path) -> Metrics:
    """Baseline and fine-tuned primary metric from the reports."""
    ev = gates.read_json(run_dir / "reports" / "eval_results.json")
    base = gates.read_json(run_dir / "reports" / "baseline_results.json")
    name = ev.get("primary_metric") if isinstance(ev.get("primary_metric"), str) else None
    value = gates.primary_metric(ev)
    baseline = gates.primary_metric({**base, "primary_metric": name}) if name else None
    delta = round(value - baseline, 6) if value is not None and baseline is not None else None
    return Metrics(name=name, baseline=baseline, fine_tuned=value, delta=delta)


def paths_of(run_dir: Path) -> dict[str, str]:
    """The deliverables that exist."""
    out: dict[str, str] = {}
    candidates = {
        "config": run_dir / "config.yaml",
        "session": run_dir / "session.jsonl",
        "checkpoint": run_dir / "checkpoints" / "final",
        "merged_checkpoint": run_dir / "checkpoints" / "merged",
        "eval_results": run_dir / "reports" / "eval_results.json",
        "samples": run_dir / "reports" / "inference_samples",
        "report": run_dir / "reports" / "report.html",
    }
    for key, p in candidates.items():
        if p.exists():
            out[key] = str(p)
    skills = sorted((run_dir / "skills").glob("run-*/SKILL.md")) if (run_dir / "skills").is_dir() else []
    if skills:
        out["rerun_skill"] = str(skills[0])
    return out


def build_result(run_dir: Path, exit_code: int, message: str = "", how_to_answer: str | None = None,
                 wall_s: float | None = None) -> RunResult:
    """Read everything a script needs about the run in `run_dir`."""
    state = RunState.load(run_dir) if (run_dir / ".tao").is_dir() else RunState()
    rows = []
    for step in gates.GATES:
        res = gates.check(step, run_dir, state)
        rows.append(GateStatus(step=step, name=gates.STEP_NAMES[step], met=res.met, missing=list(res.missing)))
    hub = (state.records.get("hub") or {}) if isinstance(state.records, dict) else {}
    status = STATUS_OF.get(int(exit_code), "error")
    return RunResult(status=status, exit_code=int(exit_code), message=message,
                     question=message if status == "question" else None,
                     how_to_answer=how_to_answer if status == "question" else None,
                     output_dir=str(run_dir), gates=rows, metrics=metrics_of(run_dir),
                     hub_url=hub.get("url") if isinstance(hub, dict) else None, paths=paths_of(run_dir),
                     usage=usage_of(_events(run_dir)), wall_s=round(wall_s, 2) if wall_s is not None else None)


def write_result(result: RunResult) -> Path:
    """Write result.json atomically into the run's output dir."""
    path = Path(result.output_dir) / RESULT_FILE
    atomic_write_text(path, result.model_dump_json(indent=1))
    return path


def read_result(run_dir: Path) -> RunResult | None:
    """The result.json a run left, or None."""
    try:
        return RunResult.model_validate(json.loads((run_dir / RESULT_FILE).read_text()))
    except (OSError, ValueError):
        return None
