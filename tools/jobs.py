"""Steps 4-5 jobs: build the runtime, run prepare/smoke/baseline/train/eval/infer, watch training, apply playbook fixes."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from tao_finetune.agent import policy
from tao_finetune.agent.config import atomic_write_text
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.errors import LimitReached
from tao_finetune.agent.gates import N_SAMPLES, primary_metric, read_json, uses_lora_merge
from tao_finetune.agent.metrics import read_records as read_metrics  # the one metrics-log reader (tolerant)
from tao_finetune.agent.state import files_since, record_job
from tao_finetune.tools.base import NeedsUser, NoArgs, ToolError, tool
from tao_finetune.tools.runtime.outcome import deadline_message

PLAYBOOK = Path(__file__).resolve().parent.parent / "references" / "error_playbook.yaml"
Job = Literal["prepare", "smoke", "tests", "baseline", "eval", "infer", "train", "merge"]
Trend = Literal["falling", "flat", "rising", "nan", "too_early"]
SCRIPTS: dict[str, list[str]] = {
    "prepare": ["prepare_data.py"],
    "smoke": ["train.py", "--smoke"],
    "tests": ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/"],
    "baseline": ["run_eval.py", "--baseline"],
    "train": ["train.py"],
    "eval": ["run_eval.py"],
    "infer": ["infer.py"],
    "merge": ["merge_lora.py"],
}
METRICS = "logs/metrics.jsonl"
UNIT_TESTS = "reports/unit_tests.json"
MAX_SAME_ERROR = 3
FLAT_MIN_STEP = 50  # from-scratch models sit at chance for tens of steps; pretrained ones drop within 10-20
FLAT_MIN_POINTS = 8  # logged losses needed before a trend is judged
FLAT_MIN_FRACTION = 0.5  # a small model trained from scratch can sit at chance for 120-180 steps (issue 10): judge late
SIGNIFICANCE = 2.0  # a change counts when it exceeds this many standard errors of the loss's own noise


def load_playbook(path: Path = PLAYBOOK) -> list[dict]:
    """The playbook entries in match order."""
    return list((yaml.safe_load(path.read_text()) or {}).get("entries") or [])


def consult_playbook(log_text: str, entries: list[dict] | None = None) -> dict | None:
    """The first playbook entry whose symptom regex matches the log, or None."""
    for entry in entries if entries is not None else load_playbook():
        if re.search(entry["symptom"], log_text, re.MULTILINE):
            return entry
    return None


def _hp_key_user_set(ctx: RunContext, key: str) -> bool:
    return policy.user_owns(ctx.config, f"hyperparameters.{key}")


def _set_hparams(ctx: RunContext, fix_id: str, changes: dict[str, Any]) -> str:
    """Change hyperparameters unless the user set them; restart training from scratch since the plan changed."""
    hp = ctx.config.hyperparameters
    blocked = [k for k in changes if _hp_key_user_set(ctx, k)]
    if blocked:
        now = ", ".join(f"{k}={getattr(hp, k)!r}" for k in blocked)
        want = ", ".join(f"{k}={changes[k]!r}" for k in blocked)
        raise NeedsUser(f"playbook fix {fix_id!r} would change values you set ({now} -> {want}). Apply it?",
                        "answer yes to apply, or give other values with --set hyperparameters.<key>=<value>")
    desc = ", ".join(f"{k} {getattr(hp, k)!r} -> {v!r}" for k, v in changes.items())
    ctx.config.hyperparameters = hp.model_copy(update=changes)
    ctx.config.note(f"playbook {fix_id}: {desc}")
    reset_training(ctx.run_dir)
    ctx.save()
    return desc


LORA_CHOICE = {"lora": {"hyperparameters.training_method": "lora"}}
# what a changed training method invalidates: step checkpoints (reset_training), weights, the smoke test, results
STALE_AFTER_METHOD_CHANGE = ("checkpoints/final", "checkpoints/merged", "reports/smoke.json", "reports/eval_results.json",
                             "reports/train_summary.json", "reports/lora.json", "reports/inference_samples",
                             "reports/inference_summary.json", "meta/preflight.json", "meta/preflight.txt")


def restart_training(run_dir: Path) -> list[str]:
    """After the user approved a change that voids the training: move what the old plan produced out of the way (under
    .tao/superseded/<time>/, never deleted: a retrain that fails must not have cost the model), so smoke and training rerun."""
    import time

    reset_training(run_dir)
    stale = [rel for rel in STALE_AFTER_METHOD_CHANGE if (run_dir / rel).exists() or (run_dir / rel).is_symlink()]
    base = run_dir / ".tao" / "superseded" / time.strftime("%Y%m%d-%H%M%S")
    archive, n = base, 1
    while archive.exists():  # two changes within a second: never mix (or fail on) an earlier set
        n += 1
        archive = base.with_name(f"{base.name}.{n}")
    gone = []
    for rel in stale:
        p = run_dir / rel
        dest = archive / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        p.rename(dest)  # same file system: instant for a checkpoint of any size
        gone.append(rel)
    return gone


def reset_training(run_dir: Path) -> None:
    """Drop step checkpoints and archive the metrics log (a changed plan cannot resume an old run)."""
    import shutil

    for p in (run_dir / "checkpoints").glob("step-*"):
        shutil.rmtree(p, ignore_errors=True)
    metrics = run_dir / METRICS
    if metrics.exists():
        metrics.rename(metrics.with_name(f"metrics.{int(time.time() * 1000)}.jsonl"))


def apply_fix(ctx: RunContext, fix: dict, attempt: int = 1) -> str | None:
    """Apply a playbook entry's minimal change to config.yaml or the runtime env; returns what changed (None = nothing automatic)."""
    action = fix.get("action", "advice")
    fid = fix.get("id", "?")
    hp = ctx.config.hyperparameters
    if action == "oom":
        if hp.per_device_train_batch_size > 1:
            return _set_hparams(ctx, fid, {"per_device_train_batch_size": max(1, hp.per_device_train_batch_size // 2),
                                           "gradient_accumulation_steps": hp.gradient_accumulation_steps * 2})
        if not hp.gradient_checkpointing:
            return _set_hparams(ctx, fid, {"gradient_checkpointing": True})
        from tao_finetune.tools.task import lora_unavailable

        no_lora = None if hp.training_method == "lora" else lora_unavailable(ctx.config)
        if no_lora or hp.training_method == "lora":  # LoRA is not offered where it cannot help
            raise NeedsUser("out of memory at batch size 1 with gradient checkpointing on"
                            + (f", and {no_lora}" if no_lora else " with LoRA already on") + ". Use a larger GPU or more GPUs?",
                            "change the hardware (or --set a smaller image size / max length), then resume the run")
        raise NeedsUser("out of memory at batch size 1 with gradient checkpointing on. Switch to LoRA "
                        f"(r={ctx.config.lora_r}) or use a larger GPU?",
                        "re-run with --answer lora to set hyperparameters.training_method=lora (training restarts), or change the hardware",
                        choices=LORA_CHOICE)
    if action == "lr_div10":
        return _set_hparams(ctx, fid, {"learning_rate": hp.learning_rate / 10})
    if action == "env":
        path = ctx.run_dir / "meta" / "runtime_env.json"
        env = json.loads(path.read_text()) if path.exists() else {}
        new = {str(k): str(v) for k, v in (fix.get("env") or {}).items()}
        if all(env.get(k) == v for k, v in new.items()):
            return None
        env.update(new)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(env, indent=1))
        ctx.config.note(f"playbook {fid}: env {new}")
        ctx.save()
        return f"runtime env {new}"
    if action == "requirements":
        req = ctx.run_dir / "requirements.txt"
        lines = req.read_text().splitlines() if req.exists() else []
        pins = [p for p in fix.get("requirements") or [] if p not in lines]
        if not pins:
            return None
        req.write_text("\n".join([*lines, *pins]) + "\n")
        ctx.state.records["build"] = {**(ctx.state.records.get("build") or {}), "ok": False, "stale": "requirements changed"}
        ctx.config.note(f"playbook {fid}: requirements {pins}")
        ctx.save()
        return f"requirements.txt += {pins}; run docker_build again"
    if action == "ask":
        raise NeedsUser(f"{fid}: {fix.get('fix', '')}", "fix the cause, then resume the run")
    return None


def _last_error_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if re.match(r"^[A-Za-z_.]*(Error|Exception)\b", ln) or "Error:" in ln:
            return ln[:160]
    return lines[-1][:160] if lines else "no output"


def handle_failure(ctx: RunContext, job: str, exit_code: int | None, log_text: str) -> None:
    """Consult the playbook, count the error, apply the minimal fix; always raises (ToolError, or NeedsUser on the 3rd repeat)."""
    text = ctx.creds.redact(log_text)
    entry = consult_playbook(text)
    key = f"{job}:{entry['id']}" if entry else f"{job}:{_last_error_line(text)}"
    n = ctx.state.error_counts.get(key, 0) + 1
    ctx.state.error_counts = {**ctx.state.error_counts, key: n}
    ctx.save()
    ctx.session.event("job_failed", job=job, exit_code=exit_code, key=key, count=n)
    tail = text[-2000:]
    if n >= MAX_SAME_ERROR:
        raise NeedsUser(f"{job} failed {n} times with the same error ({key}); stopping as the playbook says.\n{tail[-800:]}",
                        "fix the cause (or change the config with --set), then resume the run")
    head = f"{job} failed (exit {exit_code}), attempt {n}/{MAX_SAME_ERROR - 1} for this error"
    block = policy.data_block(f"{job} job log", tail)
    if entry is None:
        raise ToolError(f"{head}; no playbook entry matches: {_last_error_line(text)!r}\n--- log tail ---\n{block}")
    change = apply_fix(ctx, entry, attempt=n)
    if change and job == "train":
        ctx.state.record("train_change", f"playbook {entry['id']}: {change}")
        ctx.save()
    todo = f"applied: {change}; run docker_run job={job} again" if change else "no automatic change; fix it with write_file, then run again"
    raise ToolError(f"{head}; playbook {entry['id']}: {entry.get('fix', '')}; {todo}\n--- log tail ---\n{block}")


def job_outputs(run_dir: Path, job: str) -> list[Path]:
    """The files a job's evidence digests: what the gates read (results, checkpoint weights, samples)."""
    def under(rel: str) -> list[Path]:
        d = run_dir / rel
        return [p for p in d.rglob("*") if p.is_file()] if d.is_dir() else []

    if job == "prepare":
        return [run_dir / "data" / "meta.json"]
    if job == "smoke":
        return [run_dir / "reports" / "smoke.json"]
    if job == "tests":
        return [run_dir / UNIT_TESTS]
    if job in ("baseline", "eval"):
        return [run_dir / "reports" / ("baseline_results.json" if job == "baseline" else "eval_results.json")]
    if job == "infer":
        return [*under("reports/inference_samples"), run_dir / "reports" / "inference_summary.json"]
    if job == "train":
        return under("checkpoints/final")
    if job == "merge":
        return under("checkpoints/merged")
    return []


def sweep_credentials(ctx: RunContext, since: float) -> list[str]:
    """After a job: scrub every credential (any encoding) from files it wrote in the run dir; returns the paths scrubbed."""
    if not ctx.creds.forms():
        return []
    hit = []
    for p in files_since(ctx.run_dir, since):
        try:
            if ctx.creds.scan_file(p):
                ctx.creds.scrub_file(p)
                hit.append(str(p.relative_to(ctx.run_dir)))
        except OSError:
            continue
    if hit:
        ctx.session.event("credential_scrubbed", files=hit)
    return hit


def evidence(ctx: RunContext, job: str, argv: list[str], started: float, exit_code: int = 0, facts: dict | None = None) -> None:
    """Sweep the job's files for credentials, then record what it ran and the digests of what it produced."""
    leaked = sweep_credentials(ctx, started)
    if leaked:
        ctx.save()
        raise ToolError(f"the {job} job wrote a credential into {', '.join(leaked)}; the value was scrubbed and the job's outputs "
                        "do not count. Job code must never read or print credentials.")
    image = (ctx.state.records.get("build") or {}).get("image")
    record_job(ctx.state, ctx.run_dir, job, argv, getattr(ctx.platform, "name", "?"), image, exit_code, started,
               job_outputs(ctx.run_dir, job), facts)
    ctx.save()


def _forget(ctx: RunContext, job: str) -> None:
    """A job that starts again voids its old evidence (and training voids what was measured on the old checkpoint)."""
    drop = {job} | ({"eval", "infer", "merge"} if job == "train" else set())
    if drop & set(ctx.state.evidence):
        ctx.state.evidence = {k: v for k, v in ctx.state.evidence.items() if k not in drop}
        ctx.save()


def _platform(ctx: RunContext):
    if ctx.platform is None:
        raise ToolError("no execution platform configured for this run")
    return ctx.platform


@tool(step=4)
def docker_build(ctx: RunContext, args: NoArgs) -> dict:
    """Build the project's runtime (a Docker image, or a check of the local Python) and record it for gate 4."""
    platform = _platform(ctx)
    rec = platform.build(ctx)
    if rec.get("ok") and hasattr(platform, "freeze"):
        from tao_finetune.tools.project import pin_requirements

        try:
            freeze, source = platform.freeze(ctx)
            rec["requirements"] = pin_requirements(ctx, freeze, source)
        except ToolError as err:
            rec["requirements"] = {"error": str(err)}
    ctx.state.record("build", rec)
    ctx.save()
    if not rec.get("ok"):
        raise ToolError("build failed:\n" + policy.data_block("build log", ctx.creds.redact(str(rec.get('error') or rec.get('log_tail') or rec))[-1500:]))
    return {k: v for k, v in rec.items() if k != "log_tail"}


class RunArgs(BaseModel):
    job: Job = Field(description="prepare | smoke | tests (pytest tests/, only with emit_unit_tests) | baseline | train | eval | infer | "
                                 "merge (merge only for VLM LoRA)")
    max_steps: int | None = Field(None, ge=1, description="smoke only: optimizer steps to run (default 1)")


def _job_step(args: RunArgs) -> int:
    return 4 if args.job in ("prepare", "smoke", "tests") else 5


def command(ctx: RunContext, job: str, max_steps: int | None = None) -> list[str]:
    """The argv for a job; training runs through torchrun when the run has several GPUs."""
    script = list(SCRIPTS[job])
    if job == "smoke" and max_steps:
        script += ["--max_steps", str(max_steps)]
    n = ctx.config.gpu_count or 0
    if job == "train" and n > 1:
        return ["torchrun", "--standalone", f"--nproc_per_node={n}", *script]
    return ["python", *script]


def task_metrics(task: str) -> tuple[str, ...]:
    """What a task's eval results must report: the recipe's primary_metric, then its `metrics` (references/recipes.yaml)."""
    from tao_finetune.tools.research import reference_recipe

    try:
        rec = reference_recipe(task)
    except KeyError:
        return ()
    if not rec.get("metrics"):
        return ()
    return (rec["primary_metric"], *[m for m in rec["metrics"] if m != rec["primary_metric"]])


def _check_outputs(ctx: RunContext, job: str) -> dict:
    run = ctx.run_dir
    if job == "prepare":
        meta = read_json(run / "data" / "meta.json")
        if not meta:
            raise ToolError("prepare_data.py exited 0 but wrote no data/meta.json")
        return {k: meta.get(k) for k in ("n_train", "n_eval", "columns")} | {"num_labels": len(meta.get("label_names", []))}
    if job == "smoke":
        smoke = read_json(run / "reports" / "smoke.json")
        if smoke.get("passed") is not True:
            raise ToolError(f"smoke did not pass: {json.dumps(smoke)[:600]}")
        return {k: smoke.get(k) for k in ("passed", "loss", "grad_norm", "finite_loss", "grad_norm_positive", "seconds")}
    if job in ("baseline", "eval"):
        name = "baseline_results.json" if job == "baseline" else "eval_results.json"
        res = read_json(run / "reports" / name)
        if primary_metric(res) is None:
            raise ToolError(f"reports/{name} has no numeric primary metric: {json.dumps(res)[:400]}")
        want = task_metrics(str(ctx.config.task_type))
        if want and (res.get("primary_metric") != want[0] or any(k not in res for k in want)):
            raise ToolError(f"reports/{name} must name primary_metric {want[0]!r} and report {', '.join(want)} for "
                            f"{ctx.config.task_type} (references/recipes.yaml); it has primary_metric "
                            f"{res.get('primary_metric')!r} and keys {sorted(res)[:20]}")
        return {k: v for k, v in res.items() if isinstance(v, (int, float, str)) and k != "model"}
    if job == "merge":
        merged = run / "checkpoints" / "merged"
        if not uses_lora_merge(ctx.config.model_dump()):
            return {"merged": False, "reason": "not a LoRA VLM run: checkpoints/final holds the plain weights"}
        if not (merged / "config.json").is_file():
            raise ToolError("merge_lora.py exited 0 but checkpoints/merged/config.json is missing")
        return {"merged": "checkpoints/merged", **read_json(run / "reports" / "merge.json")}
    if job == "infer":
        d = run / "reports" / "inference_samples"
        files = sorted(p.name for p in d.iterdir() if p.is_file()) if d.is_dir() else []
        if len(files) < N_SAMPLES:
            raise ToolError(f"reports/inference_samples/ has {len(files)} files, {N_SAMPLES} needed")
        return {"samples": files[:N_SAMPLES], "summary": read_json(run / "reports" / "inference_summary.json").get("samples")}
    return {}


def pytest_summary(log_text: str) -> str:
    """pytest's closing line ('3 passed in 4.1s', '1 failed, 2 passed in ...'), else the last line of the log."""
    lines = [ln.strip(" =") for ln in log_text.strip().splitlines() if ln.strip(" =")]
    for ln in reversed(lines):
        if re.search(r"\b(passed|failed|errors?|skipped|no tests ran)\b.* in [\d.]+s", ln):
            return ln[:200]
    return lines[-1][:200] if lines else "no output"


def run_unit_tests(ctx: RunContext, plat, argv: list[str]) -> dict:
    """Run the project's tests/ and write reports/unit_tests.json; a failure is a ToolError with the log tail."""
    if not any((ctx.run_dir / "tests").glob("test_*.py")):
        raise ToolError("tests/ has no test_*.py: set emit_unit_tests and render_scaffold, or write_file tests/test_project.py")
    _forget(ctx, "tests")
    started = time.time()
    try:
        res = plat.run(ctx, "tests", argv)
        code, text, log = res.exit_code, res.log_tail, f"logs/{res.log_path.name}"
    except ToolError as err:  # the platform could not run the job at all (no image, no daemon, a refused submission)
        code, text, log = None, str(err), "logs/tests.log"
    text = ctx.creds.redact(text)
    summary = pytest_summary(text)
    passed = code == 0
    atomic_write_text(ctx.run_dir / UNIT_TESTS, json.dumps({"passed": passed, "summary": summary, "exit_code": code}, indent=1))
    ctx.session.event("job_end", job="tests", exit_code=code, passed=passed, summary=summary)
    sweep_credentials(ctx, started)
    if passed:
        evidence(ctx, "tests", argv, started)
    if not passed:
        raise ToolError(f"unit tests failed (exit {code}): {summary}; fix the project code with write_file, then run "
                        f"docker_run job=tests again\n--- log tail ---\n" + policy.data_block(f"job log {log}", text[-2000:]))
    return {"job": "tests", "exit_code": 0, "passed": True, "summary": summary, "log": log, "report": UNIT_TESTS}


@tool(step=5, step_for=_job_step)
def docker_run(ctx: RunContext, args: RunArgs) -> dict:
    """Run one project job (prepare, smoke, tests, baseline, train detached, eval, infer, merge) on the platform and check its outputs."""
    plat = _platform(ctx)
    run = ctx.run_dir
    if args.job == "tests":
        argv = command(ctx, "tests")
        ctx.session.event("job_start", job="tests", argv=argv)
        return run_unit_tests(ctx, plat, argv)
    script = run / SCRIPTS[args.job][0]
    if not script.is_file():
        raise ToolError(f"{script.name} is missing: render_scaffold or write_file it first")
    if args.job != "prepare" and not (run / "data" / "meta.json").is_file():
        raise ToolError("no prepared data (data/meta.json): run docker_run job=prepare first")
    if args.job == "baseline" and ctx.config.skip_baseline:
        return {"job": "baseline", "skipped": "skip_baseline is true"}
    if args.job in ("train", "eval", "infer") and plat.status(ctx, "train").get("running"):
        if args.job == "train":
            return {"job": "train", "running": True, "next": "call train_status"}
        raise ToolError("training is still running; call train_status until it is done")
    if args.job in ("eval", "infer", "merge") and not (run / "checkpoints" / "final").is_dir():
        raise ToolError("checkpoints/final is missing: docker_run job=train must finish first")
    if args.job in ("eval", "infer") and uses_lora_merge(ctx.config.model_dump()) and not (run / "checkpoints" / "merged").is_dir():
        raise ToolError("checkpoints/merged is missing: a LoRA VLM is evaluated merged; docker_run job=merge first")
    if args.job == "train" and (run / "checkpoints" / "final").is_dir() and training_progress(run).get("summary"):
        return {"job": "train", "already_done": True, **training_progress(run)}
    argv = command(ctx, args.job, args.max_steps)
    _forget(ctx, args.job)
    started = time.time()
    ctx.session.event("job_start", job=args.job, argv=argv)
    if args.job == "train":
        ctx.state.record("train_job", {"argv": argv, "started": started})
        ctx.save()
        metrics = run / METRICS
        prev = ctx.state.records.get("train_attempt") or {}
        attempt = {"n": int(prev.get("n") or 0) + 1, "metrics_offset": metrics.stat().st_size if metrics.exists() else 0,
                   "started": time.time(), "changed": ctx.state.records.pop("train_change", None)}
        res = plat.run(ctx, "train", argv, detach=True)
        ctx.state.record("train_attempt", attempt)
        ctx.save()
        ctx.session.event("train_attempt", **attempt)
        out = {"job": "train", "started": True, "attempt": attempt["n"], "handle": res.handle, "argv": argv, "log": f"logs/{res.log_path.name}",
               "next": "call train_status (wait_s up to 600) until state is done"}
        if attempt["changed"]:
            out["changed_since_last_attempt"] = attempt["changed"]
        return out
    try:
        res = plat.run(ctx, args.job, argv)
    except ToolError as err:  # the platform could not run the job at all; a job that ran and failed returns its exit code
        sweep_credentials(ctx, started)
        handle_failure(ctx, args.job, None, str(err))
    ctx.session.event("job_end", job=args.job, exit_code=res.exit_code)
    if res.exit_code != 0:
        sweep_credentials(ctx, started)
        extra = (run / "reports" / "smoke.json").read_text() if args.job == "smoke" and (run / "reports" / "smoke.json").exists() else ""
        handle_failure(ctx, args.job, res.exit_code, res.log_tail + "\n" + extra)
    try:
        out = _check_outputs(ctx, args.job)
    except ToolError as err:
        sweep_credentials(ctx, started)
        handle_failure(ctx, args.job, res.exit_code, res.log_tail + "\n" + str(err))
    evidence(ctx, args.job, argv, started)
    return {"job": args.job, "exit_code": 0, "log": f"logs/{res.log_path.name}", **out}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def trend_evidence(losses: list[float], steps: list[int] | None = None) -> dict:
    """The loss trend with its evidence: a smoothed start vs a smoothed end, compared with the loss's own noise.

    Smoothing is a mean over a window of a quarter of the points (at least 2). The noise is estimated from
    point-to-point differences (std(diff)/sqrt(2), which a steady trend barely affects), so the standard error of the
    change between the two windows is noise*sqrt(2/k). falling: the end is lower by more than SIGNIFICANCE standard
    errors and by at least 0.5 %; rising: higher by as much and by more than 10 %; flat otherwise. The slope (per 100
    steps, least squares over the newer half) is reported as evidence.
    """
    steps = steps if steps is not None and len(steps) == len(losses) else list(range(len(losses)))
    out: dict[str, Any] = {"points": len(losses), "steps_seen": (steps[-1] - steps[0]) if steps else 0}
    if any(not isinstance(x, (int, float)) or not math.isfinite(x) for x in losses[-3:]):
        return {**out, "trend": "nan"}
    xs = [float(x) for x in losses if isinstance(x, (int, float)) and math.isfinite(x)]
    if len(xs) < 4:
        return {**out, "trend": "too_early"}
    k = max(2, len(xs) // 4)
    first, last = _mean(xs[:k]), _mean(xs[-k:])
    diffs = [b - a for a, b in zip(xs, xs[1:])]
    dm = _mean(diffs)
    noise = max(math.sqrt(_mean([(d - dm) ** 2 for d in diffs]) / 2), 1e-4 * abs(first), 1e-8)
    se = noise * math.sqrt(2 / k)
    half = list(zip(steps[-len(xs):], xs))[len(xs) // 2:]
    sx, sy = _mean([a for a, _ in half]), _mean([b for _, b in half])
    var = sum((a - sx) ** 2 for a, _ in half)
    slope = sum((a - sx) * (b - sy) for a, b in half) / var if var else 0.0
    drop = first - last
    if drop > SIGNIFICANCE * se and drop > 0.005 * abs(first):
        trend: Trend = "falling"
    elif -drop > SIGNIFICANCE * se and -drop > 0.1 * abs(first):
        trend = "rising"
    else:
        trend = "flat"
    return {**out, "trend": trend, "first_smoothed": round(first, 5), "last_smoothed": round(last, 5), "window": k,
            "noise": round(noise, 5), "change_in_se": round(drop / se, 2), "slope_per_100_steps": round(slope * 100, 6)}


def loss_trend(losses: list[float]) -> Trend:
    """falling / flat / rising over the logged losses (see trend_evidence); nan when the latest is not finite."""
    return trend_evidence(losses)["trend"]


def flat_after(total: int | None, warmup: int, steps_per_epoch: int | None) -> int:
    """The first step at which a flat loss may stop training: past warm-up, past the first epoch, past half the run."""
    return max(FLAT_MIN_STEP, warmup + FLAT_MIN_STEP, int(steps_per_epoch or 0), math.ceil((total or 0) * FLAT_MIN_FRACTION))


def training_progress(run_dir: Path, since: int = 0) -> dict:
    """Step, total, latest loss/throughput and the loss trend (with evidence) from logs/metrics.jsonl, from byte `since` on."""
    recs = read_metrics(run_dir / METRICS, since)
    steps = [r for r in recs if "loss" in r and "step" in r and "event" not in r]
    start = next((r for r in reversed(recs) if r.get("event") in ("start", "resume")), {})
    done = next((r for r in reversed(recs) if r.get("event") == "done"), None)
    last = steps[-1] if steps else {}
    total = last.get("total_steps") or start.get("total_steps")
    losses = [r["loss"] if isinstance(r["loss"], (int, float)) else float("nan") for r in steps]
    warmup = int(start.get("warmup_steps") or 0)
    evidence = trend_evidence(losses, [int(r["step"]) for r in steps] if all(isinstance(r["step"], int) for r in steps) else None)
    out = {"step": last.get("step", start.get("step", 0)), "total_steps": total,
           "flat_after": flat_after(total, warmup, start.get("steps_per_epoch")),
           "progress": round(last.get("step", 0) / total, 3) if total else None,
           "loss": last.get("loss"), "first_loss": losses[0] if losses else None, "trend": evidence["trend"], "trend_evidence": evidence,
           "grad_norm": last.get("grad_norm"), "lr": last.get("lr"), "samples_per_s": last.get("samples_per_s"),
           "mfu": last.get("mfu"), "resumed_from": start.get("step") if start.get("event") == "resume" else None}
    if done:
        out["summary"] = {k: v for k, v in done.items() if k not in ("event", "time")}
    return out


class StatusArgs(BaseModel):
    wait_s: int = Field(0, ge=0, le=600, description="block up to this many seconds until training ends (0 = report now)")


@tool(step=5)
def train_status(ctx: RunContext, args: StatusArgs) -> dict:
    """Progress of the detached training: step/total, loss and its trend (falling/flat/NaN), throughput; stops a NaN or flat run and applies the playbook."""
    plat = _platform(ctx)
    deadline = time.monotonic() + args.wait_s
    run_ends = ctx.deadline is not None and ctx.deadline < deadline
    if run_ends:
        deadline = ctx.deadline  # the run's --max-hours ends the wait too
    since = int((ctx.state.records.get("train_attempt") or {}).get("metrics_offset") or 0)
    while True:
        st = plat.status(ctx, "train")
        prog = training_progress(ctx.run_dir, since)
        if not st.get("started", st.get("exists", False)):
            raise ToolError("training was not started: docker_run job=train")
        if st.get("running"):
            step = prog["step"] or 0
            if prog["trend"] == "nan":
                plat.stop(ctx, "train")
                handle_failure(ctx, "train", None, f"loss: nan at step {step}")
            ev = prog["trend_evidence"]
            if prog["trend"] == "flat" and step >= prog["flat_after"] and ev["points"] >= FLAT_MIN_POINTS:
                plat.stop(ctx, "train")
                handle_failure(ctx, "train", None, (
                    f"TAO_FLAT_LOSS: smoothed loss {ev['first_smoothed']} -> {ev['last_smoothed']} over {ev['steps_seen']} steps "
                    f"({ev['points']} points, window {ev['window']}; change {ev['change_in_se']} standard errors of its noise "
                    f"{ev['noise']}, {SIGNIFICANCE} needed; slope {ev['slope_per_100_steps']}/100 steps) by step {step}, "
                    f"judged after step {prog['flat_after']} (warm-up, first epoch and half the run are past)"))
            if time.monotonic() >= deadline:
                prog = {**prog, **{k: st[k] for k in ("job_id", "slurm_state", "pending_reason") if st.get(k)}}  # SLURM: why it waits
                if run_ends:  # the run ends here with ExitCode.LIMIT; the loop saves its state; training runs on detached
                    ctx.session.event("train_wait_cut", step=prog.get("step"), total_steps=prog.get("total_steps"))
                    raise LimitReached(deadline_message(
                        f"while training ran (step {prog.get('step')}/{prog.get('total_steps')}): training keeps running "
                        f"detached (`tao-finetune stop {ctx.run_dir}` stops it; a re-run continues watching it)"))
                return {"state": "running", **prog}
            time.sleep(0.2)  # a short job's end is seen within 0.2 s
            continue
        break
    final = ctx.run_dir / "checkpoints" / "final"
    if st.get("exit_code") == 0 and final.is_dir():
        rec = {"state": "done", **prog}
        ctx.state.record("train", {k: rec.get(k) for k in ("step", "total_steps", "loss", "first_loss", "samples_per_s", "mfu")})
        if "train" not in ctx.state.evidence:
            job = ctx.state.records.get("train_job") or {}
            full = training_progress(ctx.run_dir)  # the whole training of this plan (a resumed attempt continues the log)
            facts = {"first_loss": full.get("first_loss"), "last_loss": full.get("loss"), "trend": full.get("trend"),
                     "trend_evidence": full.get("trend_evidence"), "step": full.get("step"), "total_steps": full.get("total_steps")}
            evidence(ctx, "train", list(job.get("argv") or command(ctx, "train")), float(job.get("started") or 0.0), 0, facts)
        ctx.save()
        return {**rec, "next": "docker_run job=eval, then job=infer"}
    if st.get("stopped"):
        return {"state": "stopped", **prog, "next": "docker_run job=train resumes from the newest checkpoint"}
    # every platform's status ends a failed job's log tail with the same evidence line (tools/runtime/outcome.py)
    handle_failure(ctx, "train", st.get("exit_code"), st.get("log_tail", ""))
    raise AssertionError("unreachable")
