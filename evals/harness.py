"""Eval cases: run a request with a driver (autopilot, a replayed session or the real model) and score the run dir."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from tao_finetune.agent import gates
from tao_finetune.agent.config import ConfigError
from tao_finetune.agent.session import read_events
from tao_finetune.agent.state import RunState


@dataclass
class Case:
    """One eval: inputs, the driver, and what must hold afterwards."""

    id: str
    args: list[str]
    driver: str = "autopilot"
    replay: str | None = None
    demo_inputs: bool = False  # build the demo model + digits and use the demo's settings
    expect: dict[str, Any] = field(default_factory=dict)


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

    @property
    def passed(self) -> bool:
        return not self.failures


def load_cases(folder: Path | None = None) -> list[Case]:
    """Read every cases/*.yaml (the packaged ones by default)."""
    root = folder or Path(str(resources.files("tao_finetune.evals").joinpath("cases")))
    cases = []
    if folder is not None and not root.is_dir():
        raise ConfigError(f"--cases-dir {str(folder)!r} is not a folder of case YAML files")
    for path in sorted(root.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
            if not isinstance(data, dict):
                raise TypeError("the file must hold a mapping")
            if data.get("replay"):
                data["replay"] = str((path.parent / data["replay"]).resolve())
            cases.append(Case(**data))
        except (OSError, ValueError, TypeError, yaml.YAMLError) as err:  # UnicodeDecodeError, ValidationError are ValueErrors
            raise ConfigError(f"eval case {path.name!r} is not a valid case: {' '.join(str(err).split())[:200]}") from None
    return cases


def score_run(case: Case, run_dir: Path, code: int, seconds: float) -> Score:
    """Read the run dir and session log; compare with the case's expectations."""
    state = RunState.load(run_dir)
    met = [s for s in gates.GATES if gates.check(s, run_dir, state).met]
    events = read_events(run_dir / "session.jsonl") if (run_dir / "session.jsonl").exists() else []
    refusals = sum(1 for e in events if e["kind"] == "refused")
    errors = sum(1 for e in events if e["kind"] == "tool_result" and e["is_error"])
    steps = sum(1 for e in events if e["kind"] == "response")
    cost = sum(e.get("cost_usd", 0.0) for e in events if e["kind"] == "response")

    def metric(name: str) -> float | None:
        return gates.primary_metric(gates.read_json(run_dir / "reports" / name))

    primary, baseline = metric("eval_results.json"), metric("baseline_results.json")
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
    if "min_refusals" in exp and refusals < exp["min_refusals"]:
        fails.append(f"{refusals} refusals, expected at least {exp['min_refusals']}")
    if exp.get("not_pushed") and (state.records.get("hub") or {}).get("url"):
        fails.append("pushed to the Hub but should not have")
    for secret in exp.get("absent_strings", []):
        leaks = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and p.stat().st_size < 5_000_000
                 and secret.encode() in p.read_bytes()]
        if leaks:
            fails.append(f"secret found in {', '.join(leaks[:3])}")
    return Score(case.id, case.driver, code, met, refusals, errors, steps, round(cost, 4), round(seconds, 1), primary, baseline, fails)


def run_case(case: Case, out: Path, main: Callable[[list[str]], int]) -> Score:
    """Run one case into out/<id> through `main` (the CLI's entry point, handed in by the CLI) and score it."""
    from tao_finetune.agent.demo import DEMO_SETTINGS, demo_inputs

    run_dir = out / case.id
    argv = ["run", *case.args, "--output-dir", str(run_dir), "--llm", case.driver, "--yes", "--quiet"]
    if case.replay:
        argv += ["--replay", case.replay]
    if case.demo_inputs:
        inputs = demo_inputs(out / "demo-inputs")
        argv += ["--model-id", inputs["model_id"], "--local-dataset-path", inputs["local_dataset_path"], *DEMO_SETTINGS]
    t0 = time.monotonic()
    code = main(argv)
    return score_run(case, run_dir, code, time.monotonic() - t0)


def add_eval_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="run eval cases (autopilot, replayed sessions) and score them")
    p.add_argument("--case", action="append", default=[], help="case id to run (repeatable; default all)")
    p.add_argument("--cases-dir", type=Path, default=None, help="folder of case YAML files (default: the packaged ones)")
    p.add_argument("--out", type=Path, default=Path("./output/evals"), help="where runs and results.json go")
    p.set_defaults(handler=eval_command)


def eval_command(args: argparse.Namespace) -> int:
    cases = [c for c in load_cases(args.cases_dir) if not args.case or c.id in args.case]
    if not cases:
        print(f"no eval cases match {args.case!r}")
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    scores = [run_case(c, args.out.resolve(), args.run_cli) for c in cases]
    for s in scores:
        metric = f"{s.baseline_metric} -> {s.primary_metric}" if s.primary_metric is not None else "-"
        print(f"{'PASS' if s.passed else 'FAIL'} {s.id:28} exit={s.exit_code} gates={s.gates_met} refusals={s.refusals} "
              f"steps={s.steps} cost=${s.cost_usd} metric={metric} {s.seconds}s" + ("" if s.passed else f"  [{'; '.join(s.failures)}]"))
    (args.out / "results.json").write_text(json.dumps([asdict(s) | {"passed": s.passed} for s in scores], indent=1))
    return 0 if all(s.passed for s in scores) else 1
