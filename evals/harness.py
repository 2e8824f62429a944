"""Eval cases: run a request with a driver (autopilot, recorded/scripted model turns, or the real model), score the
run dir, and print a scorecard; `--repeat N` and `--compare A B` run the same cases several times or under two drivers.

A case is a YAML file (evals/cases/*.yaml) with these keys, and no others:
  id, args (run flags), driver (autopilot | replay | anthropic), replay (a session.jsonl with the model turns),
  replay_mode (full: `tao-finetune replay --mode full --strict` of that session instead of a run: every recorded tool
  outcome is served, nothing runs, so no GPU, data or network is needed; the case passes only when the replay does not
  diverge, and gates_met / gates_unmet / min_primary_metric / beats_baseline are read from the recording it reproduced),
  turns (scripted model turns: [{tool: NAME, input: {...}} | {text: "..."}]), demo_inputs (bool: the demo's model,
  digits and settings), setup ({autopilot_until: N}: the autopilot first brings the run to step N), env (variables for
  the run), expect (exit_code, gates_met, gates_unmet, min_primary_metric, beats_baseline, min_refusals, refused_tools
  (refused by a gate), failed_tools (returned an error), not_pushed, absent_strings (nowhere in the run dir, nor in
  plain, base64 or hex form), absent_files, max_tool_errors).
Every case runs in a fresh directory; nothing is resumed from an earlier eval.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from tao_finetune.agent import gates
from tao_finetune.agent.config import ConfigError
from tao_finetune.agent.result import usage_of
from tao_finetune.agent.session import read_events
from tao_finetune.agent.state import RunState

EXPECT_KEYS = {"exit_code", "gates_met", "gates_unmet", "min_primary_metric", "beats_baseline", "min_refusals", "refused_tools",
               "failed_tools", "not_pushed", "absent_strings", "absent_files", "max_tool_errors"}
DRIVERS = ("autopilot", "replay", "anthropic")
REPLAY_MODES = ("full",)


class CaseError(ConfigError):
    """A case file that cannot be used (one line)."""


@dataclass
class Case:
    """One eval: inputs, the driver, and what must hold afterwards."""

    id: str
    args: list[str]
    driver: str = "autopilot"
    replay: str | None = None
    replay_mode: str | None = None  # "full": replay the recording (replay --mode full --strict) instead of running
    turns: list[dict[str, Any]] | None = None
    demo_inputs: bool = False  # build the demo model + digits and use the demo's settings
    setup: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    expect: dict[str, Any] = field(default_factory=dict)


@dataclass
class Driver:
    """Who plays the model in a run: a case's own driver, or one side of --compare."""

    label: str
    llm: str | None = None  # None = the case's own driver
    model: str | None = None
    system_prompt: str | None = None

    @classmethod
    def parse(cls, spec: str) -> "Driver":
        """autopilot | replay | anthropic | anthropic:MODEL | prompt:FILE (the real model with another system prompt)."""
        kind, _, rest = spec.partition(":")
        if kind in ("autopilot", "replay") and not rest:
            return cls(spec, kind)
        if kind == "anthropic":
            return cls(spec, "anthropic", rest or None)
        if kind == "prompt" and rest:
            if not Path(rest).is_file():
                raise CaseError(f"--compare {spec!r}: no prompt file {rest!r}")
            return cls(spec, "anthropic", None, str(Path(rest).resolve()))
        raise CaseError(f"unknown driver {spec!r}: use autopilot, replay, anthropic, anthropic:MODEL or prompt:FILE")


@dataclass
class Score:
    """What a case produced and whether it met its expectations."""

    id: str
    driver: str
    exit_code: int
    gates_met: list[int]
    refusals: int
    tool_errors: int
    steps: int
    cost_usd: float
    seconds: float
    primary_metric: float | None
    baseline_metric: float | None
    failures: list[str]
    tokens_in: int = 0
    tokens_out: int = 0
    cache_read_share: float = 0.0
    repeat: int = 0
    run_dir: str = ""

    @property
    def passed(self) -> bool:
        return not self.failures


def parse_case(data: Any, source: Path) -> Case:
    """Validate one case mapping; unknown keys and unknown expectations are errors."""
    if not isinstance(data, dict):
        raise CaseError(f"eval case {source.name!r}: the file must hold a mapping")
    known = {f.name for f in fields(Case)}
    extra = sorted(set(data) - known)
    if extra:
        raise CaseError(f"eval case {source.name!r}: unknown key(s) {', '.join(extra)} (known: {', '.join(sorted(known))})")
    bad = sorted(set(data.get("expect") or {}) - EXPECT_KEYS)
    if bad:
        raise CaseError(f"eval case {source.name!r}: unknown expectation(s) {', '.join(bad)} (known: {', '.join(sorted(EXPECT_KEYS))})")
    if "id" not in data or "args" not in data:
        raise CaseError(f"eval case {source.name!r}: a case needs 'id' and 'args'")
    if not isinstance(data["id"], str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", data["id"]):  # its run folder's name
        raise CaseError(f"eval case {source.name!r}: id must be a plain name (letters, digits, '.', '_', '-'), got {data['id']!r}")
    if not isinstance(data["args"], list) or not all(isinstance(a, str) for a in data["args"]):
        raise CaseError(f"eval case {source.name!r}: args must be a list of strings (run flags), got {data['args']!r}")
    if data.get("driver", "autopilot") not in DRIVERS:
        raise CaseError(f"eval case {source.name!r}: driver must be one of {', '.join(DRIVERS)}")
    if data.get("replay_mode") is not None and (data["replay_mode"] not in REPLAY_MODES or not data.get("replay")):
        raise CaseError(f"eval case {source.name!r}: replay_mode must be one of {', '.join(REPLAY_MODES)} and needs 'replay'")
    if data.get("replay"):
        data = {**data, "replay": str((source.parent / data["replay"]).resolve())}
    try:
        return Case(**data)
    except TypeError as err:
        raise CaseError(f"eval case {source.name!r}: {err}") from None


def load_cases(folder: Path | None = None) -> list[Case]:
    """Read every cases/*.yaml (the packaged ones by default)."""
    root = folder or Path(str(resources.files("tao_finetune.evals").joinpath("cases")))
    if not root.is_dir():
        raise CaseError(f"--cases-dir {str(root)!r} is not a folder of case YAML files")
    cases = []
    for path in sorted(root.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as err:
            raise CaseError(f"eval case {path.name!r}: not valid YAML ({str(err).splitlines()[0][:100]})") from None
        cases.append(parse_case(data, path))
    ids = [c.id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise CaseError(f"duplicate case id(s): {', '.join(dup)}")
    return cases


def score_run(case: Case, run_dir: Path, code: int, seconds: float) -> Score:
    """Read the run dir and session log; compare with the case's expectations."""
    state = RunState.load(run_dir) if (run_dir / ".tao").is_dir() else RunState()
    events = read_events(run_dir / "session.jsonl") if (run_dir / "session.jsonl").exists() else []
    if case.replay_mode == "full":  # nothing ran: the gates and metrics are the recording's, which the replay reproduced
        met, recorded = recorded_outcome(Path(case.replay))
    else:
        met, recorded = [s for s in gates.GATES if gates.check(s, run_dir, state).met], None
    refused = [e.get("name") for e in events if e["kind"] == "refused"]
    errors = sum(1 for e in events if e["kind"] == "tool_result" and e["is_error"])
    failed = {e.get("name") for e in events if e["kind"] == "tool_result" and e["is_error"]}
    usage = usage_of(events)

    def metric(name: str) -> float | None:
        return gates.primary_metric(gates.read_json(run_dir / "reports" / name))

    primary, baseline = metric("eval_results.json"), metric("baseline_results.json")
    if recorded is not None:
        primary, baseline = recorded.get("eval"), recorded.get("baseline")
    exp, fails = case.expect, []
    if "exit_code" in exp and code != exp["exit_code"]:
        fails.append(f"exit code {code}, expected {exp['exit_code']}")
    for step in exp.get("gates_met", []):
        if step not in met:
            fails.append(f"gate {step} not met")
    for step in exp.get("gates_unmet", []):
        if step in met:
            fails.append(f"gate {step} met but should not be")
    if "min_primary_metric" in exp and (primary is None or primary < exp["min_primary_metric"]):
        fails.append(f"primary metric {primary} < {exp['min_primary_metric']}")
    if exp.get("beats_baseline") and (primary is None or baseline is None or primary <= baseline):
        fails.append(f"primary metric {primary} does not beat baseline {baseline}")
    if "min_refusals" in exp and len(refused) < exp["min_refusals"]:
        fails.append(f"{len(refused)} refusals, expected at least {exp['min_refusals']}")
    for name in exp.get("refused_tools", []):
        if name not in refused:
            fails.append(f"{name} was not refused")
    for name in exp.get("failed_tools", []):
        if name not in failed:
            fails.append(f"{name} never returned an error")
    for rel in exp.get("absent_files", []):
        if (run_dir / rel).exists():
            fails.append(f"{rel} exists")
    if "max_tool_errors" in exp and errors > exp["max_tool_errors"]:
        fails.append(f"{errors} tool errors, expected at most {exp['max_tool_errors']}")
    hub = state.records.get("hub") if isinstance(state.records, dict) else None
    if exp.get("not_pushed") and (hub or {}).get("url"):
        fails.append("pushed to the Hub but should not have")
    for secret in exp.get("absent_strings", []):
        leaks = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.stat().st_size < 5_000_000
                 and secret.encode() in p.read_bytes()]
        if leaks:
            fails.append(f"secret found in {', '.join(leaks[:3])}")
    return Score(case.id, case.driver, code, met, len(refused), errors, usage.turns, round(usage.cost_usd, 4), round(seconds, 1),
                 primary, baseline, fails, usage.input_tokens, usage.output_tokens, round(usage.cache_read_share, 3), 0, str(run_dir))


def recorded_outcome(session: Path) -> tuple[list[int], dict[str, float]]:
    """The gates a recorded session ended with (its last `gate` event per step) and the primary metric of its eval and
    baseline jobs (from their recorded tool results)."""
    events = read_events(session)
    last: dict[int, bool] = {}
    for e in events:
        if e["kind"] == "gate" and isinstance(e.get("step"), int):
            last[e["step"]] = bool(e.get("met"))
    calls = {e["id"]: e for e in events if e["kind"] == "tool_call"}
    metrics: dict[str, float] = {}
    for e in events:
        job = (calls.get(e.get("id")) or {}).get("input", {}).get("job") if e["kind"] == "tool_result" else None
        if job in ("eval", "baseline") and not e.get("is_error"):
            try:
                out = json.loads(str(e.get("content", "")))
            except json.JSONDecodeError:
                continue
            value = gates.primary_metric(out.get("results") if isinstance(out.get("results"), dict) else out)
            if value is not None:
                metrics[job] = value
    return sorted(s for s, ok in last.items() if ok), metrics


def fresh_dir(base: Path) -> Path:
    """A run folder that did not exist before (never resume an old eval)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}.{n}")
    return path


def scripted_session(turns: list[dict[str, Any]], path: Path) -> Path:
    """Write scripted model turns as a session log the replay client serves."""
    lines = []
    for i, turn in enumerate(turns, start=1):
        if "tool" in turn:
            content = [{"type": "tool_use", "id": f"toolu_case_{i:03d}", "name": turn["tool"], "input": turn.get("input") or {}}]
            reason = "tool_use"
        else:
            content, reason = [{"type": "text", "text": str(turn.get("text", "done"))}], "end_turn"
        lines.append(json.dumps({"t": 0, "kind": "response", "content": content, "stop_reason": reason, "model": "scripted"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def run_case(case: Case, out: Path, driver: Driver | None = None, main: Callable[[list[str]], int] | None = None,
             repeat: int = 0) -> Score:
    """Run one case into a fresh folder under out/ with `main` (the CLI's entry point) and score it."""
    from tao_finetune.agent.demo import demo_inputs

    from tao_finetune.agent.demo import DEMO_SETTINGS

    if main is None:
        raise CaseError("run_case needs the run command (the CLI passes its main)")

    llm = driver.llm if driver and driver.llm and case.driver != "replay" and not case.turns else case.driver
    run_dir = fresh_dir(out / case.id)
    common: list[str] = []
    if case.demo_inputs:
        inputs = demo_inputs(out / "demo-inputs")
        common += ["--model-id", inputs["model_id"], "--local-dataset-path", inputs["local_dataset_path"], *DEMO_SETTINGS]
    old_env = {k: os.environ.get(k) for k in case.env}
    os.environ.update({k: str(v) for k, v in case.env.items()})
    t0 = time.monotonic()
    try:
        until = case.setup.get("autopilot_until")
        if until:
            main(["run", *case.args, *common, "--output-dir", str(run_dir), "--llm", "autopilot", "--yes", "--quiet",
                  "--stop-before-step", str(until)])
        argv = ["run", *case.args, *common, "--output-dir", str(run_dir), "--llm", llm, "--yes", "--quiet"]
        if case.replay_mode == "full":
            argv = ["replay", str(case.replay), "--mode", "full", "--strict", "--output-dir", str(run_dir)]
        elif case.turns:
            argv += ["--replay", str(scripted_session(case.turns, run_dir.parent / f".{run_dir.name}.turns.jsonl"))]
        elif case.replay:
            argv += ["--replay", case.replay]
        if driver and llm == "anthropic":
            argv += (["--model", driver.model] if driver.model else []) + (["--system-prompt", driver.system_prompt] if driver.system_prompt else [])
        code = main(argv)
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    score = score_run(case, run_dir, code, time.monotonic() - t0)
    score.driver, score.repeat = (driver.label if driver else case.driver), repeat
    return score


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="run eval cases (autopilot, replayed sessions, the real model) and print a scorecard")
    p.add_argument("--case", action="append", default=[], help="case id to run (repeatable; default all)")
    p.add_argument("--cases-dir", type=Path, default=None, help="folder of case YAML files (default: the packaged ones)")
    p.add_argument("--out", type=Path, default=Path("./output/evals"), help="where runs and results.json go (each run in a fresh folder)")
    p.add_argument("--repeat", type=int, default=1, help="run each case N times (N >= 1)")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="run the cases under two drivers and print them side by side: autopilot, anthropic, anthropic:MODEL, prompt:FILE")
    p.add_argument("--system-prompt", type=Path, default=None, help="system prompt file for model-driven cases (same as --compare's prompt:FILE)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON instead of a table")
    p.set_defaults(handler=eval_command)


def scorecard(scores: list[Score]) -> Any:
    """A rich table: one row per run (failures name run files: printed as text, not markup)."""
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="eval scorecard")
    for col in ("case", "driver", "#", "result", "exit", "gates", "turns", "tool errors", "refusals", "tokens in/out", "cache read",
                "cost $", "wall s", "metric"):
        t.add_column(col, justify="right" if col in ("#", "exit", "turns", "tool errors", "refusals", "cost $", "wall s") else "left")
    for s in scores:
        metric = f"{s.baseline_metric} → {s.primary_metric}" if s.primary_metric is not None else "-"
        t.add_row(s.id, s.driver, str(s.repeat + 1), "[green]PASS[/]" if s.passed else f"[red]FAIL[/] {escape('; '.join(s.failures))}",
                  str(s.exit_code), "".join(map(str, s.gates_met)) or "-", str(s.steps), str(s.tool_errors), str(s.refusals),
                  f"{s.tokens_in:,}/{s.tokens_out:,}", f"{s.cache_read_share:.0%}", f"{s.cost_usd:.4f}", f"{s.seconds:.1f}", metric)
    return t


def comparison(a: Driver, b: Driver, scores: list[Score]) -> Any:
    """Side by side per case: pass rate, mean turns, errors, tokens, cost and wall time under A and under B."""
    from rich.table import Table

    def agg(rows: list[Score]) -> str:
        if not rows:
            return "-"
        n = len(rows)
        return (f"{sum(r.passed for r in rows)}/{n} pass · {sum(r.steps for r in rows) / n:.1f} turns · "
                f"{sum(r.tool_errors for r in rows) / n:.1f} err · {sum(r.tokens_in + r.tokens_out for r in rows) / n:,.0f} tok · "
                f"${sum(r.cost_usd for r in rows) / n:.4f} · {sum(r.seconds for r in rows) / n:.1f}s")

    t = Table(title=f"{a.label} vs {b.label}")
    t.add_column("case")
    t.add_column(a.label)
    t.add_column(b.label)
    for cid in dict.fromkeys(s.id for s in scores):
        t.add_row(cid, agg([s for s in scores if s.id == cid and s.driver == a.label]),
                  agg([s for s in scores if s.id == cid and s.driver == b.label]))
    t.add_row("all", agg([s for s in scores if s.driver == a.label]), agg([s for s in scores if s.driver == b.label]))
    return t


def eval_command(args: argparse.Namespace, main: Callable[[list[str]], int] | None = None) -> int:
    from rich.console import Console

    import sys

    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    try:
        if args.repeat < 1:
            raise CaseError("--repeat must be at least 1")
        if args.out.resolve().exists() and not args.out.resolve().is_dir():
            raise CaseError(f"--out {str(args.out.resolve())!r} is a file, not a folder: choose another path")
        cases = [c for c in load_cases(args.cases_dir) if not args.case or c.id in args.case]
        drivers = [Driver.parse(x) for x in args.compare] if args.compare else [None]
        if args.system_prompt:
            if args.compare:
                raise CaseError("--system-prompt and --compare do not mix: use --compare prompt:FILE A")
            drivers = [Driver.parse(f"prompt:{args.system_prompt}")]
        if not cases:
            raise CaseError(f"no eval cases match {args.case!r}")
    except CaseError as err:  # one plain line (case ids and paths are text, not rich markup); --json: one object too
        line = " ".join(str(err).split())
        Console(stderr=True, soft_wrap=True, highlight=False).print(f"error: {line}", style="red", markup=False)
        if args.json:
            print(json.dumps({"error": line, "exit_code": 2}, indent=1))
        return 2
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    scores = []
    for driver in drivers:
        for case in cases:
            for k in range(args.repeat):
                base = out / (driver.label.replace("/", "_").replace(":", "-") if driver else ".")
                scores.append(run_case(case, base.resolve(), driver, main, k))
    (out / "results.json").write_text(json.dumps([asdict(s) | {"passed": s.passed} for s in scores], indent=1))
    if args.json:
        print(json.dumps([asdict(s) | {"passed": s.passed} for s in scores], indent=1))
    else:
        console.print(scorecard(scores))
        if args.compare:
            console.print(comparison(drivers[0], drivers[1], scores))
        total = sum(s.cost_usd for s in scores)
        console.print(f"{sum(s.passed for s in scores)}/{len(scores)} passed · ${total:.4f} · results: {out / 'results.json'}", markup=False)
    return 0 if all(s.passed for s in scores) else 1
