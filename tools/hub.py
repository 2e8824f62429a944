"""Step 6: push the run to the Hugging Face Hub in one commit, and emit the rerun SKILL.md.

huggingface_hub 2.4 API used (site-packages/huggingface_hub/hf_api.py): HfApi(endpoint=...).whoami(),
create_repo(repo_id, exist_ok=True), create_commit(repo_id, operations=[CommitOperationAdd(...)],
commit_message=...) -> CommitInfo(oid, commit_url, repo_url); errors.HfHubHTTPError(.response).
The token is never passed: huggingface_hub reads HF_TOKEN from the environment (token=None).
"""

from __future__ import annotations

import json
import os
import re
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import httpx
import yaml
from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from pydantic import BaseModel, Field

from tao_finetune.agent import gates
from tao_finetune.agent.config import RunConfig, atomic_write_text
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.state import PushRecord
from tao_finetune.tools.base import NoArgs, ToolError, tool
from tao_finetune.tools.probe import endpoint
from tao_finetune.tools.research import read_reference_text

try:  # huggingface_hub 2.x talks through httpx2; 1.x through httpx
    import httpx2

    NET_ERRORS: tuple[type[Exception], ...] = (HfHubHTTPError, OfflineModeIsEnabled, httpx.HTTPError, httpx2.HTTPError)
except ImportError:  # pragma: no cover
    NET_ERRORS = (HfHubHTTPError, OfflineModeIsEnabled, httpx.HTTPError)

SKIP_NAMES = {"training_args.bin", "optimizer.pt", "scheduler.pt", "trainer_state.json", "session.jsonl"}
SKIP_PATTERNS = (re.compile(r"^rng_state.*\.pth$"), re.compile(r".*\.log$"), re.compile(r"^\.env"))
# The push uploads an allow-list only: safetensors weights (never pickles: .bin/.pt/.pth/.pkl/.ckpt), the small
# json/txt/model files a checkpoint needs to load, results, samples, the project's sources and the rerun skill.
WEIGHT_SUFFIXES = (".safetensors", ".json", ".txt", ".model", ".tiktoken")
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".json", ".txt", ".md", ".html")
SOURCE_NAMES = ("config.yaml", "Dockerfile", "requirements.txt")
# what a Hub user needs to trust and repeat the run; the push refuses without them
REQUIRED_FILES = ["config.json", "config.yaml", "results/eval_results.json"]


def _skipped(rel: Path) -> bool:
    if any(part.startswith(".") or part.startswith("checkpoint-") for part in rel.parts):
        return True
    return rel.name in SKIP_NAMES or any(p.match(rel.name) for p in SKIP_PATTERNS)


def _files_under(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.is_file() and not _skipped(p.relative_to(root)))


def weights_dir(run_dir: Path) -> Path | None:
    """checkpoints/merged (VLM LoRA) if present, else checkpoints/final, else None."""
    for name in ("merged", "final"):
        d = run_dir / "checkpoints" / name
        if d.is_dir() and any(d.iterdir()):
            return d
    return None


PROJECT_SUFFIXES = (".py", ".md", ".txt", ".yaml", ".toml", ".cfg", ".sh")
PROJECT_SKIP_DIRS = {"data", "checkpoints", "logs", "reports", "skills", "meta", "cache", "wandb", "runs", "tb"}


def project_files(run_dir: Path) -> list[Path]:
    """The generated project's sources: top-level scripts and Dockerfile, plus tests/ (not data, weights, logs)."""
    out = []
    for p in sorted(run_dir.iterdir()) if run_dir.is_dir() else []:
        if p.is_file() and not _skipped(Path(p.name)) and (p.suffix in PROJECT_SUFFIXES or p.name == "Dockerfile"):
            out.append(p)
    tests = run_dir / "tests"
    out += [p for p in _files_under(tests) if p.suffix == ".py"]
    return [p for p in out if p.name not in ("PROGRESS.md",) and p.relative_to(run_dir).parts[0] not in PROJECT_SKIP_DIRS]


def upload_plan(run_dir: Path) -> list[tuple[str, Path]]:
    """(path in repo, local file) for everything the push uploads besides the generated card: an allow-list, no symlinks.

    Weights (safetensors + small json/txt files) at the root so `from_pretrained(repo_id)` works; results/; the project
    as it was run (config.yaml, Dockerfile, requirements*.txt, the scripts, tests/, its README as PROJECT.md) at the root;
    inference_samples/; reports/ (report, training metrics log, PROGRESS.md); skills/ (the rerun SKILL.md).
    """
    plan: list[tuple[str, Path]] = []
    wdir = weights_dir(run_dir)
    if wdir is not None:
        plan += [(str(p.relative_to(wdir)), p) for p in _files_under(wdir) if p.suffix.lower() in WEIGHT_SUFFIXES]
    reports = run_dir / "reports"
    for name in ("eval_results.json", "baseline_results.json", "train_summary.json", "inference_summary.json"):
        if (reports / name).is_file():
            plan.append((f"results/{name}", reports / name))
    plan += [("PROJECT.md" if p.name == "README.md" else str(p.relative_to(run_dir)), p) for p in project_files(run_dir)]
    samples = reports / "inference_samples"
    plan += [(f"inference_samples/{p.relative_to(samples)}", p) for p in _files_under(samples) if p.suffix.lower() in SAMPLE_SUFFIXES]
    for name in ("report.pdf", "report.html"):
        if (reports / name).is_file():
            plan.append((f"reports/{name}", reports / name))
    if (run_dir / "logs" / "metrics.jsonl").is_file():
        plan.append(("reports/metrics.jsonl", run_dir / "logs" / "metrics.jsonl"))
    tb = run_dir / "logs" / "tensorboard"  # the project's TensorBoard event files: the Hub's Metrics tab shows runs/
    plan += [(f"runs/{p.relative_to(tb)}", p) for p in _files_under(tb) if ".tfevents." in p.name]
    if (run_dir / "PROGRESS.md").is_file():
        plan.append(("reports/PROGRESS.md", run_dir / "PROGRESS.md"))
    for p in _files_under(run_dir / "skills"):
        if p.name == "SKILL.md":
            plan.append((f"skills/{p.relative_to(run_dir / 'skills')}", p))
    seen: set[str] = set()
    out = []
    for repo_path, p in plan:
        if repo_path.lower() != "readme.md" and repo_path not in seen and not p.is_symlink():
            seen.add(repo_path)
            out.append((repo_path, p))
    return out


def secret_hits(ctx: RunContext, card: str, plan: list[tuple[str, Path]]) -> list[str]:
    """Repo paths whose content holds a credential in any form (plain, base64, hex, reversed), text and binary files alike."""
    hits = ["README.md"] if ctx.creds.leaks_in(card.encode()) else []
    return hits + sorted(rp for rp, p in plan if ctx.creds.scan_file(p))


def _metrics(run_dir: Path) -> dict[str, Any]:
    def load(name: str) -> dict:
        try:
            data = json.loads((run_dir / "reports" / name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    ev, base = load("eval_results.json"), load("baseline_results.json")
    name = ev.get("primary_metric") or base.get("primary_metric") or "metric"
    ft, bl = gates.primary_metric(ev), gates.primary_metric({**base, "primary_metric": name}) if base else None
    delta = ft - bl if ft is not None and bl is not None else None
    return {"name": str(name), "finetuned": ft, "baseline": bl, "delta": delta}


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _dataset_label(cfg: RunConfig) -> str:
    if cfg.dataset_id:
        return cfg.dataset_id + (f" ({cfg.dataset_config})" if cfg.dataset_config else "")
    if cfg.local_dataset_path:
        return f"local dataset {Path(cfg.local_dataset_path).name} ({cfg.local_dataset_format})"
    return "unknown dataset"


def _license(cfg: RunConfig) -> str:
    """The base model's license as probe_model recorded it (Hub license tag, else the card's front matter), else 'other'."""
    lic = cfg.model_facts.license if cfg.model_facts else None
    return str(lic) if lic else "other"


def _hp_rows(cfg: RunConfig) -> list[tuple[str, str, str]]:
    rows = [("n_epochs", str(cfg.n_epochs), _source_of(cfg, "n_epochs"))]
    for name, value in cfg.hyperparameters.model_dump().items():
        rows.append((name, str(value), _source_of(cfg, f"hyperparameters.{name}")))
    if cfg.hyperparameters.training_method == "lora":
        rows.append(("lora_r", str(cfg.lora_r), _source_of(cfg, "lora_r")))
    return rows


def _source_of(cfg: RunConfig, key: str) -> str:
    entry = cfg.recipe.get(key)
    if entry is None and key.startswith("hyperparameters."):
        agg = cfg.recipe.get("hyperparameters")
        name = key.split(".", 1)[1]
        if agg is not None and isinstance(agg.value, dict) and name in agg.value:
            entry = agg
    if entry is None:
        return "default"
    return f"{entry.rank}: {entry.source}"


def _cell(text: Any, limit: int = 160) -> str:
    s = " ".join(str(text).split()).replace("|", "\\|").replace("<", "&lt;")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def acceptance_note(run_dir: Path) -> str | None:
    """The card's warning when the user accepted a model that did not clearly learn (gate 5), else None."""
    from tao_finetune.agent.state import RunState

    acc = RunState.load(run_dir).learning_accepted
    if acc is None:
        return None
    ev = acc.evidence
    facts = ", ".join(f"{k} {ev[k]}" for k in ("metric", "baseline", "finetuned", "margin", "first_loss", "last_loss") if ev.get(k) is not None)
    why = "; ".join(ev.get("reasons") or []) or acc.what
    return (f"> **Accepted by the user without clear evidence of learning.** {why}. Evidence: {facts}. "
            f"The user answered {acc.answer!r} when tao-finetune asked whether to keep it.")


@contextmanager
def _token_env(ctx: RunContext) -> Iterator[None]:
    """Expose HF_TOKEN to huggingface_hub for the duration of the push when it came from the .env file."""
    added = "HF_TOKEN" not in os.environ
    if added:
        os.environ.update(ctx.creds.env(["HF_TOKEN"]))
    try:
        yield
    finally:
        if added:
            os.environ.pop("HF_TOKEN", None)


def _hub_error(ctx: RunContext, err: Exception, what: str, repo_id: str | None) -> ToolError:
    if isinstance(err, HfHubHTTPError):
        status = err.response.status_code if err.response is not None else None
        if status == 401:
            return ToolError(f"{what}: the Hub rejected HF_TOKEN (401 unauthorized); check the token in ~/.config/tao/.env")
        if status == 403:
            return ToolError(f"{what}: HF_TOKEN has no write access to {repo_id!r} (403 forbidden); use a write token or set hf_model_repo")
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        return ToolError(ctx.creds.redact(f"{what}: Hub error {status}: {first}"))
    if isinstance(err, OfflineModeIsEnabled):
        return ToolError(f"{what}: HF_HUB_OFFLINE is set, so the Hub cannot be reached")
    return ToolError(f"{what}: network error reaching the Hub at {endpoint()} ({type(err).__name__})")


@tool(step=6)
def hf_push(ctx: RunContext, args: NoArgs) -> dict:
    """Push the fine-tuned model to the Hugging Face Hub in one commit: weights (merged or final), a generated model card with baseline -> fine-tuned metric, results, config.yaml, Dockerfile, requirements.txt, inference samples and reports; refuses when push_to_hub is false, HF_TOKEN is missing, or any file holds a secret."""
    cfg = ctx.config
    if not cfg.push_to_hub:
        raise ToolError("push_to_hub is false in config.yaml: nothing is pushed (the rerun skill records 'not pushed')")
    if not ctx.creds.present("HF_TOKEN"):
        raise ToolError("HF_TOKEN is not set: add a write token to ~/.config/tao/.env, or set push_to_hub=false")
    if weights_dir(ctx.run_dir) is None:
        raise ToolError("no weights to push: checkpoints/final/ (or checkpoints/merged/) is missing or empty")
    from tao_finetune.tools import card

    api = HfApi(endpoint=endpoint())
    with _token_env(ctx):
        repo_id = cfg.hf_model_repo or f"{cfg.short_name}-finetuned"
        if "/" not in repo_id:
            try:
                who = api.whoami()
            except NET_ERRORS as err:
                raise _hub_error(ctx, err, "whoami failed", None) from None
            role = ((who.get("auth") or {}).get("accessToken") or {}).get("role")
            if role == "read":
                raise ToolError("HF_TOKEN is read-only: pushing needs a token with write access")
            repo_id = f"{who['name']}/{repo_id}"
        plan = upload_plan(ctx.run_dir)
        if not any(rp.endswith(".safetensors") for rp, _ in plan):
            raise ToolError("no safetensors weights to push: the Hub push uploads weights as safetensors only (never pickled .bin/.pt)")
        card_obj = card.build_card(ctx, repo_id, [rp for rp, _ in plan])
        problems = card.check_card(str(card_obj), REQUIRED_FILES, [rp for rp, _ in plan])
        if problems:
            raise ToolError("model card not pushed: " + "; ".join(problems))
        card_text = str(card_obj)
        leaking = secret_hits(ctx, card_text, plan)
        if leaking:
            ctx.session.event("push_refused", files=leaking)
            raise ToolError(f"refusing to push: {', '.join(leaking)} contain(s) a secret or token-like string (plain or encoded); "
                            "remove it and retry")
        skipped = card.validate_on_hub(card_obj)
        if skipped:
            ctx.session.event("note", text=skipped)
        ops = [CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card_text.encode())]
        ops += [CommitOperationAdd(path_in_repo=rp, path_or_fileobj=str(p)) for rp, p in plan]
        try:
            # private=None leaves the Hub's default (public unless the org says otherwise); an existing repo keeps its visibility
            api.create_repo(repo_id, repo_type="model", exist_ok=True, private=True if cfg.hub_private else None)
            info = api.create_commit(
                repo_id,
                ops,
                commit_message=f"tao-finetune: {cfg.model_id} fine-tuned on {_dataset_label(cfg)}",
                repo_type="model",
            )
        except NET_ERRORS as err:
            raise _hub_error(ctx, err, f"push to {repo_id!r} failed", repo_id) from None
        try:  # the Hub's own word: the repo's head must be the commit just made
            confirmed = api.model_info(repo_id).sha
        except NET_ERRORS as err:
            raise _hub_error(ctx, err, f"pushed to {repo_id!r} but could not re-read it to confirm", repo_id) from None
    url = str(info.repo_url.url) if getattr(info, "repo_url", None) else f"{endpoint()}/{repo_id}"
    push = PushRecord(repo_id=repo_id, url=url, commit=info.oid, commit_url=info.commit_url, confirmed_sha=confirmed,
                      files=[op.path_in_repo for op in ops], at=time.time())
    ctx.state.push = push
    record = {"url": url, "repo_id": repo_id, "commit": info.oid, "commit_url": info.commit_url}
    if push.confirmed:
        ctx.state.record("hub", record)
    ctx.save()
    ctx.session.event("hub_push", repo_id=repo_id, url=url, commit=info.oid, confirmed=push.confirmed, files=len(ops))
    if not push.confirmed:
        raise ToolError(f"pushed to {repo_id!r}, but the Hub reports head {confirmed!r}, not the commit {info.oid!r}: push not confirmed")
    return {**record, "confirmed": True, "files": len(ops), "uploaded": [op.path_in_repo for op in ops][:40]}


def used_sizes(cfg: RunConfig, run_dir: Path) -> tuple[int, int]:
    """Train/eval examples actually used (prepare_data's data/meta.json), else the requested subset sizes."""
    meta = gates.read_json(run_dir / "data" / "meta.json")
    return int(meta.get("n_train") or cfg.n_train), int(meta.get("n_eval") or cfg.n_eval)


def _version() -> str:
    try:
        return metadata.version("tao-finetune")
    except metadata.PackageNotFoundError:
        return "dev"


def _rerun_commands(ctx: RunContext) -> str:
    """The agent command and the per-job commands (same argv as docker_run) that repeat the run."""
    from tao_finetune.tools.jobs import command

    cfg, out = ctx.config, ctx.config.out
    if cfg.platform == "local":
        prefix, lines = "", [f"cd {out}", "python -m pip install -r requirements.txt"]
    elif cfg.platform == "slurm":  # the batch scripts the run submitted, in job order
        jobs = ["prepare", "smoke", *([] if cfg.skip_baseline else ["baseline"]), "train", "eval", "infer"]
        lines = [f"cd {out}"] + [f"sbatch --wait .tao/slurm/{job}.sbatch" for job in jobs if (out / ".tao" / "slurm" / f"{job}.sbatch").is_file()]
        agent = f"tao-finetune run --config {out / 'config.yaml'} --output-dir {out} --yes"
        return ("With the agent (resumes at the first unmet gate; the recorded recipe skips research):\n\n"
                f"```bash\n{agent}\n```\n\nBy hand on the cluster (the batch scripts the run generated; credentials by name, "
                "e.g. `sbatch --export=ALL,HF_TOKEN`):\n\n```bash\n" + "\n".join(lines) + "\n```")
    else:
        from tao_finetune.tools.runtime.docker import default_shm_size, image_tag

        tag, shm = image_tag(cfg.short_name), default_shm_size() // 2**30
        prefix = f'docker run --rm --gpus all --shm-size={shm}g -v "$PWD":/workspace -w /workspace {tag} '
        lines = [f"cd {out}", f"docker build -t {tag} ."]
    jobs = ["prepare", "smoke", *([] if cfg.skip_baseline else ["baseline"]), "train"]
    jobs += ["merge"] if gates.uses_lora_merge(cfg.model_dump()) else []
    jobs += ["eval", "infer"]
    lines += [prefix + " ".join(command(ctx, job, 1 if job == "smoke" else None)) for job in jobs]
    rerun = f"tao-finetune run --config {out / 'config.yaml'} --output-dir {out}-rerun --yes"
    resume = f"tao-finetune run --config {out / 'config.yaml'} --output-dir {out} --yes"
    return (
        "With the agent, into a new output dir (the recorded recipe and its sources are kept, so no new research; "
        "needs ANTHROPIC_API_KEY, or add `--llm autopilot` to drive it without a model; the finished run is not touched):\n\n"
        f"```bash\n{rerun}\n```\n\nTo resume this run in place instead (a finished run only prints its summary):\n\n"
        f"```bash\n{resume}\n```\n\nBy hand (script options are read from config.yaml):\n\n```bash\n" + "\n".join(lines) + "\n```"
    )


def skill_values(ctx: RunContext) -> dict[str, str]:
    """Every placeholder of the rerun SKILL.md template, filled from the run."""
    cfg, run_dir = ctx.config, ctx.run_dir
    m = _metrics(run_dir)
    hub = (ctx.state.records.get("hub") or {}).get("url") or "not pushed"
    build = ctx.state.records.get("build") or {}
    image = cfg.image or cfg.ngc_image or build.get("image") or (
        "local Python environment" if cfg.platform == "local" else "not recorded"
    )
    if cfg.gpu_count and cfg.gpu_name:
        hardware = f"{cfg.gpu_count} × {cfg.gpu_name}" + (f" ({cfg.vram_gb_per_gpu:g} GB)" if cfg.vram_gb_per_gpu else "")
    else:
        hardware = "CPU / not recorded"
    if cfg.platform == "local":
        compat = f"Python 3.11+ with the run's requirements.txt; original hardware {hardware}"
    elif cfg.platform == "slurm":
        compat = f"a SLURM cluster (sbatch/srun; {build.get('container', 'venv')} jobs) with the run's requirements.txt; original hardware {hardware}"
    else:
        driver = f"driver {cfg.driver_major}+" if cfg.driver_major else "a current driver"
        compat = f"Linux with NVIDIA GPU(s) ({hardware}, {driver}), Docker and NVIDIA Container Toolkit; base image {image}"
    dataset = _dataset_label(cfg)
    recipe_rows = [
        (slot, cfg.recipe[slot].value if slot in cfg.recipe else "not recorded",
         cfg.recipe[slot].rank if slot in cfg.recipe else "-", cfg.recipe[slot].source if slot in cfg.recipe else "-")
        for slot in gates.RECIPE_SLOTS
    ]
    n_train, n_eval = used_sizes(cfg, run_dir)
    return {
        "skill_name": gates.skill_name(cfg.model_id),
        "description": (
            f"Rerun the {cfg.task_type} fine-tune of {cfg.model_id} on {dataset} "
            f"({n_train}/{n_eval} subset, {cfg.n_epochs:g} epochs) with the recorded recipe and container. "
            "Use to reproduce or retrain this model without new research."
        )[:1024],
        "compatibility": compat[:500],
        "model_id": cfg.model_id,
        "dataset": dataset,
        "task_type": str(cfg.task_type),
        "n_train": str(n_train),
        "n_eval": str(n_eval),
        "n_epochs": f"{cfg.n_epochs:g}",
        "training_method": cfg.hyperparameters.training_method + (f" (r={cfg.lora_r})" if cfg.hyperparameters.training_method == "lora" else ""),
        "image": str(image),
        "hardware": hardware,
        "metric_name": m["name"],
        "baseline": "skipped" if cfg.skip_baseline else _num(m["baseline"]),
        "finetuned": _num(m["finetuned"]),
        "delta": "n/a" if m["delta"] is None else f"{m['delta']:+.4f}",
        "hub_url": hub,
        "generated_by": f"tao-finetune {_version()}",
        "year": time.strftime("%Y", time.gmtime()),
        "hyperparameters_table": _table(("hyperparameter", "value", "source"), _hp_rows(cfg)),
        "recipe_table": _table(("slot", "value", "rank", "source"), recipe_rows),
        "workarounds": ", ".join(cfg.applicable_workarounds or []) or "none",
        "output_dir": str(cfg.out),
        "rerun_commands": _rerun_commands(ctx),
    }


def fill_skill_template(template: str, values: dict[str, str]) -> str:
    """Fill `<name>` placeholders (YAML-quoted in the front matter); raises ToolError if the result is incomplete."""
    if not template.startswith("---"):
        raise ToolError("skill template has no YAML front matter")
    _, front, body = template.split("---", 2)

    def fill(text: str, quote: bool) -> str:
        def sub(m: re.Match[str]) -> str:
            key = m.group(0)[1:-1]
            if key not in values:
                return m.group(0)
            return json.dumps(values[key], ensure_ascii=False) if quote else values[key]

        return gates.PLACEHOLDER.sub(sub, text)

    text = "---" + fill(front, True) + "---" + fill(body, False)
    problems = gates.check_skill_text(text)
    try:
        meta = yaml.safe_load(text.split("---", 2)[1])
    except yaml.YAMLError as err:
        problems.append(f"front matter is not valid YAML ({str(err).splitlines()[0]})")
        meta = {}
    if isinstance(meta, dict):
        problems += [f"front matter {k}" for k in ("name", "description") if not meta.get(k)]
        if not isinstance(meta.get("metadata"), dict):
            problems.append("front matter metadata must be a mapping")
    if problems:
        raise ToolError("rerun SKILL.md is incomplete: " + "; ".join(problems))
    return text


class EmitSkillArgs(BaseModel):
    notes: str = Field("", description="optional extra guidance appended to the skill (plain text; no <placeholders>)")


@tool(step=6)
def emit_rerun_skill(ctx: RunContext, args: EmitSkillArgs) -> dict:
    """Write skills/run-<short>/SKILL.md from the pipeline template with every placeholder filled from the run (model, dataset, subset, epochs, hyperparameters, image, metric baseline -> fine-tuned, Hub URL, rerun commands); fails if a field, the copyright comment or a value is missing."""
    template = read_reference_text("pipeline-skill-template.md")
    text = fill_skill_template(template, skill_values(ctx))
    if args.notes.strip():
        text = text.rstrip("\n") + "\n\n## Notes from the run\n\n" + args.notes.strip() + "\n"
        left = gates.check_skill_text(text)
        if left:
            raise ToolError("rerun SKILL.md is incomplete: " + "; ".join(left))
    text = ctx.creds.redact(text)
    path = gates.skill_path(ctx.run_dir, ctx.config.model_dump())
    atomic_write_text(path, text)
    ctx.session.event("skill", path=str(path.relative_to(ctx.run_dir)))
    return {"written": str(path.relative_to(ctx.run_dir)), "hub_url": (ctx.state.records.get("hub") or {}).get("url") or "not pushed"}
