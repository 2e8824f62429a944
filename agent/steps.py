"""The one table of the six steps: name, the tools that belong to it, and its gate (from gates.py).

The system prompt's step list, the autopilot's rules and the loop's refusals all read this table; every registered
tool's own step is checked against it (`check_tools`), so a tool cannot quietly move to another step.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from tao_finetune.agent import gates
from tao_finetune.agent.state import RunState

ANY = 0  # tools usable in every step (reading, asking, notes, references)


@dataclass(frozen=True)
class StepDef:
    """One step: its number, name, tools (with a hint for the prompt) and its gate predicate."""

    number: int
    name: str
    tools: tuple[str, ...]
    gate: Callable[[Path, RunState], list[str]]
    how: str = ""


# docker_run spans Steps 4 and 5: its job decides the step
JOB_STEPS: dict[str, int] = {"prepare": 4, "smoke": 4, "tests": 4, "baseline": 5, "train": 5, "eval": 5, "infer": 5, "merge": 5}

ANY_STEP_TOOLS: tuple[str, ...] = ("read_file", "list_files", "ask_user", "set_config", "set_request", "note", "read_reference")

STEPS: tuple[StepDef, ...] = (
    StepDef(1, gates.STEP_NAMES[1], ("probe_model", "recommend_datasets", "probe_dataset", "check_compat", "qualify"), gates.gate1,
            "probe_model, probe_dataset (or recommend_datasets when no dataset was given), check_compat, qualify"),
    StepDef(2, gates.STEP_NAMES[2], ("audit_hardware", "select_image", "check_model_fit"), gates.gate2,
            "audit_hardware, select_image, check_model_fit"),
    StepDef(3, gates.STEP_NAMES[3], ("fetch_docs", "record_recipe", "write_recipe_notes"), gates.gate3,
            "fetch_docs on the sources in priority order (model card first), record_recipe for every slot ("
            + ", ".join(gates.RECIPE_SLOTS) + "), write_recipe_notes"),
    StepDef(4, gates.STEP_NAMES[4], ("render_scaffold", "write_file", "docker_build", "preflight", "docker_run"), gates.gate4,
            "render_scaffold and/or write_file, docker_build, docker_run job=prepare, docker_run job=smoke, "
            "docker_run job=tests (when emit_unit_tests), preflight"),
    StepDef(5, gates.STEP_NAMES[5], ("docker_run", "train_status", "write_report"), gates.gate5,
            "docker_run job=baseline (unless skip_baseline), job=train, train_status, job=eval, job=infer, write_report (when emit_report)"),
    StepDef(6, gates.STEP_NAMES[6], ("hf_push", "emit_rerun_skill"), gates.gate6,
            "hf_push (unless push_to_hub is false), emit_rerun_skill"),
)
BY_NUMBER: dict[int, StepDef] = {s.number: s for s in STEPS}


def name(step: int) -> str:
    return BY_NUMBER[step].name


def step_of(tool: str, args: dict[str, Any] | None = None) -> int:
    """The step a call of `tool` with `args` belongs to (0 = any step); KeyError for a tool the table does not know."""
    if tool in ANY_STEP_TOOLS:
        return ANY
    if tool == "docker_run":
        return JOB_STEPS[(args or {}).get("job", "train")]
    for s in STEPS:
        if tool in s.tools:
            return s.number
    raise KeyError(f"tool {tool!r} is in no step of agent/steps.py")


def check_tools(tools: Iterable[Any]) -> None:
    """Every tool's declared step must be the table's (docker_run: per job); raises ValueError naming the first mismatch."""
    for t in tools:
        if t.name == "docker_run":
            mismatched = [job for job, step in JOB_STEPS.items() if t.step_for and t.step_for(t.args_model(job=job)) != step]
            if mismatched:
                raise ValueError(f"docker_run jobs {mismatched} declare a step other than agent/steps.py's JOB_STEPS")
            continue
        want = step_of(t.name)
        if t.step != want:
            raise ValueError(f"tool {t.name!r} declares step {t.step} but agent/steps.py puts it in step {want}")


def prompt_list() -> str:
    """The numbered step list of the system prompt."""
    return "\n".join(f"{s.number}. {s.name[0].upper()}{s.name[1:]}: {s.how}." for s in STEPS)


def status_lines(run_dir: Path, state: RunState) -> list[str]:
    """One line per gate: met, or what is missing."""
    return [status_line(s.number, s.gate(run_dir, state)) for s in STEPS]


def status_line(number: int, missing: list[str]) -> str:
    """A gate's line in the status sent with every tool-result turn (a full replay renders recorded gates with it)."""
    return f"step {number} ({name(number)}): {'met' if not missing else 'missing ' + ', '.join(missing)}"
