"""The Python API: ``tao_finetune.run(...)`` runs the agent exactly as ``tao-finetune run --json --yes`` does and returns
a RunResult, without printing anything (console output is discarded; the session log keeps the whole run).

    from tao_finetune import run
    result = run("google/vit-base-patch16-224", dataset_id="AI-Lab-Makerere/beans", push_to_hub=False, llm="autopilot")
    print(result.status, result.metrics.fine_tuned, result.usage.cost_usd)
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any, Iterable, Mapping

from tao_finetune.agent.result import RunResult

DRIVERS = ("anthropic", "autopilot", "replay")


def _input_keys() -> dict[str, str]:
    """config key -> CLI flag for every spec input the `run` command takes."""
    from tao_finetune.agent import cli

    keys = {key: flag for flag, key, _ in cli.VALUE_FLAGS}
    keys.update({key: flag for flag, key in cli.BOOL_FLAGS})
    return keys


def _sets(sets: Mapping[str, Any] | Iterable[str] | None) -> list[str]:
    if sets is None:
        return []
    if isinstance(sets, Mapping):
        import json

        out = []
        for k, v in sets.items():
            out.append(f"{k}={json.dumps(v) if not isinstance(v, str) else v}")
        return out
    return [str(s) for s in sets]


def argv_for(model_id: str | None = None, *, config: str | Path | None = None, sets: Mapping[str, Any] | Iterable[str] | None = None,
             llm: str = "anthropic", model: str | None = None, answer: str | None = None, request: str = "",
             replay: str | Path | None = None, env_file: str | Path | None = None, max_steps: int | None = None,
             max_cost: float | None = None, max_hours: float | None = None, push_to_hub: bool | None = None,
             **inputs: Any) -> list[str]:
    """The `tao-finetune run` argv for these arguments (raises TypeError on an unknown input, ValueError on a bad driver)."""
    if llm not in DRIVERS:
        raise ValueError(f"llm must be one of {', '.join(DRIVERS)}, got {llm!r}")
    known = _input_keys()
    unknown = sorted(set(inputs) - set(known))
    if unknown:
        raise TypeError(f"run() got unknown input(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}, or use sets={{...}}")
    argv = ["run", "--llm", llm, "--yes", "--json", "--quiet"]
    if model_id is not None:
        argv += ["--model-id", str(model_id)]
    for key, value in inputs.items():
        if value is None:
            continue
        flag = known[key]
        if isinstance(value, bool):
            if value or key == "wandb":  # wandb=False is --no-wandb (it is on by default when WANDB_API_KEY is set)
                argv.append(flag if value else "--no-wandb")
            continue
        argv += [flag, str(value)]
    if push_to_hub is not None:
        argv.append("--push-to-hub" if push_to_hub else "--no-push-to-hub")
    for item in _sets(sets):
        argv += ["--set", item]
    optional = {"--config": config, "--model": model, "--answer": answer, "--replay": replay, "--env-file": env_file,
                "--max-steps": max_steps, "--max-cost": max_cost, "--max-hours": max_hours}
    for flag, value in optional.items():
        if value is not None:
            argv += [flag, str(value)]
    if request:
        argv += ["--request", request]
    return argv


def run(model_id: str | None = None, **kwargs: Any) -> RunResult:
    """Run the six gated steps (or resume them in an existing output dir) and return the RunResult.

    Keyword arguments: every spec input by its config name (dataset_id, local_dataset_path, task_type, n_train, n_eval,
    n_epochs, lora_r, output_dir, hf_model_repo, push_to_hub, skip_baseline, platform, image, allow_cpu, wandb,
    emit_progress_log, emit_report, emit_unit_tests, ...), plus config (a YAML file), sets ({key: value} or
    ["key=value"]), llm ("anthropic" | "autopilot" | "replay"), model, answer, request, replay, env_file, max_steps,
    max_cost, max_hours. Never prompts: a question ends the run with status "question" (answer it with answer=...).
    """
    from tao_finetune.agent import cli

    argv = argv_for(model_id, **kwargs)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = cli.main(argv)
    result = cli.LAST_RESULT
    if result is None:  # the command failed before a run could start
        return RunResult(status="bad_input" if code == 2 else "error", exit_code=code, output_dir=str(kwargs.get("output_dir") or ""))
    return result
