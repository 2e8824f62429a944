"""Step 4 project generation: confined file writes, task scaffolds with compat fixes, the preflight summary."""

from __future__ import annotations

import json
import platform as _platform
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, Field

from tao_finetune.agent import policy
from tao_finetune.agent.config import atomic_write_text
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.gates import read_json
from tao_finetune.tools.base import NoArgs, ToolError, tool

HEADER = """\
# SPDX-FileCopyrightText: Copyright (c) 2026 NVIDIA CORPORATION & AFFILIATES. All rights reserved.
# SPDX-License-Identifier: Apache-2.0
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
# http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
REFERENCES = Path(__file__).resolve().parent.parent / "references"
SCAFFOLDS = REFERENCES / "scaffolds"
COMPAT_RULES = REFERENCES / "compat_rules.yaml"
RENAMES = {"gitignore": ".gitignore"}
SCAFFOLD_TASKS = ("image-classification", "text-classification", "object-detection", "semantic-segmentation",
                  "image-text-to-text")
UNIT_TESTS = "test_project.py"  # per task; rendered as tests/test_project.py only when emit_unit_tests is on
RUNTIME_ENV = "meta/runtime_env.json"
PREFLIGHT_FIELDS = ("reference_urls", "dataset", "columns", "push_target", "wandb", "image", "hardware", "smoke")


def has_header(text: str) -> bool:
    """Whether a .py file starts with the Apache-2.0 copyright header (a shebang line may precede it)."""
    if text.startswith("#!"):
        text = text.split("\n", 1)[1] if "\n" in text else ""
    return text.startswith(HEADER)


def check_py(rel: str, text: str) -> None:
    """Refuse a .py without the copyright header."""
    if rel.endswith(".py") and not has_header(text):
        raise ToolError(f"{rel!r} must start with the Apache-2.0 copyright header (tools/project.py HEADER); not written")


class WriteFileArgs(BaseModel):
    path: str = Field(description="path of a project source relative to the output dir, e.g. 'train.py', 'tests/test_data.py'")
    content: str = Field(description="the full file content; a .py must begin with the Apache-2.0 copyright header")


@tool(step=4)
def write_file(ctx: RunContext, args: WriteFileArgs) -> dict:
    """Write one source file of the generated project (*.py, Dockerfile, requirements.txt, tests/, README, configs it reads); reports/, checkpoints/, logs/, meta/, skills/, data/, .tao/, config.yaml and session.jsonl are refused (jobs and tools write those). A .py needs the copyright header."""
    if "\x00" in args.path or not args.path.strip():
        raise ToolError(f"path {args.path[:80]!r} is empty or holds a NUL byte: give a relative path like 'train.py'")
    if len(args.path.encode()) > 1024 or any(len(part.encode()) > 255 for part in Path(args.path).parts):
        raise ToolError(f"path {args.path[:80]!r}... is too long (a name over 255 bytes or a path over 1024)")
    target = ctx.confine(args.path)  # absolute paths, '..' and escapes first: their message names the real problem
    if target.is_dir():
        raise ToolError(f"{args.path!r} is a directory")
    policy.check_writable(args.path)
    policy.check_writable(str(target.relative_to(ctx.run_dir.resolve())))  # a symlink planted by a job cannot redirect the write
    check_py(args.path, args.content)
    try:
        atomic_write_text(target, args.content)
    except OSError as err:  # a parent that is a file, a full disk, permissions
        raise ToolError(f"cannot write {args.path!r}: {err.strerror or err}") from None
    ctx.session.event("file_written", path=args.path, bytes=len(args.content.encode()))
    return {"path": str(target.relative_to(ctx.run_dir.resolve())), "bytes": len(args.content.encode())}


def load_compat_rules(path: Path = COMPAT_RULES) -> dict[str, dict]:
    """Compat rules by id from references/compat_rules.yaml ({} when the file is absent)."""
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    if isinstance(data, dict) and "rules" in data:
        data = data["rules"]
    if isinstance(data, dict):
        return {str(k): (v or {}) for k, v in data.items()}
    return {str(r.get("id")): r for r in data if isinstance(r, dict) and r.get("id")}


def compat_fixes(ids: list[str], rules: dict[str, dict]) -> dict[str, Any]:
    """Collect the Dockerfile blocks, requirement pins and env vars of the applicable workarounds.

    Rules use `fix: {kind: dockerfile|requirements|env|config, value: ...}` (references/compat_rules.yaml); the
    scaffold reads `attn_implementation` from the TAO_ATTN_IMPLEMENTATION env var, so that config fix becomes env.
    """
    out: dict[str, Any] = {"dockerfile": [], "requirements": [], "env": {}, "applied": [], "other": []}
    for wid in ids:
        fix = (rules.get(wid) or {}).get("fix") or {}
        kind, value = fix.get("kind"), fix.get("value")
        applied = True
        if kind == "dockerfile" and value:
            out["dockerfile"].append(f"# {wid}\n{str(value).strip()}")
        elif kind == "requirements" and value:
            out["requirements"] += [value] if isinstance(value, str) else list(value)
        elif kind == "env" and isinstance(value, dict):
            out["env"].update({str(k): str(v) for k, v in value.items()})
        elif kind == "config" and isinstance(value, dict) and "attn_implementation" in value:
            out["env"]["TAO_ATTN_IMPLEMENTATION"] = str(value["attn_implementation"])
        else:
            applied = False
        out["applied" if applied else "other"].append(wid)
    return out


def render_dockerfile(template: str, base_image: str, fixes: dict[str, Any]) -> str:
    """Fill the base image and the compat blocks (deps -> compat -> code order is in the template)."""
    blocks = list(fixes["dockerfile"])
    if fixes["env"]:
        blocks.append("ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(fixes["env"].items())))
    return template.replace("{base_image}", base_image).replace("{compat_blocks}", "\n".join(blocks) or "# (none)")


def req_name(line: str) -> str:
    """The normalised package name of a requirement line (`Foo_Bar[x]>=1` -> `foo-bar`)."""
    for sep in ("==", ">=", "<=", "~=", "!=", "<", ">", "[", ";", " ", "@"):
        line = line.split(sep)[0]
    return line.strip().lower().replace("_", "-").replace(".", "-")


LOCK_FILE = "requirements.lock.txt"
PIN_HEADER = "# pinned by tao-finetune"
FREEZE_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")


def pin_requirements(ctx: RunContext, freeze: str, source: str) -> dict:
    """Pin requirements.txt to the versions `pip freeze` reports in the environment that was built (image or local
    Python) and write the whole freeze to requirements.lock.txt, so the project can be rebuilt as it ran months later.
    Packages the base image provides (torch on NGC) stay out of requirements.txt but are in the lock file."""
    frozen: dict[str, str] = {}
    for ln in freeze.splitlines():
        m = FREEZE_LINE.match(ln.strip())
        if m:
            frozen[req_name(m.group(1))] = m.group(2)
    if not frozen:
        return {"pinned": [], "error": "pip freeze listed no packages"}
    req = ctx.confine("requirements.txt")
    lines = req.read_text().splitlines() if req.is_file() else []
    out, pinned, unpinned = [], [], []
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    for ln in lines:
        spec = ln.split("#", 1)[0].strip()
        if ln.startswith(PIN_HEADER) or not spec or spec.startswith("-"):
            if not ln.startswith(PIN_HEADER):
                out.append(ln)
            continue
        n = req_name(spec)
        if n in frozen:
            head = spec.split(";")[0]
            for sep in ("==", ">=", "<=", "~=", "!=", "<", ">", " "):
                head = head.split(sep)[0]
            marker = f"; {spec.split(';', 1)[1].strip()}" if ";" in spec else ""
            out.append(f"{head.strip()}=={frozen[n]}{marker}")
            pinned.append(f"{n}=={frozen[n]}")
        else:
            out.append(ln)
            unpinned.append(spec)
    header = f"{PIN_HEADER} from `pip freeze` in {source} ({stamp}); the full environment is in {LOCK_FILE}"
    atomic_write_text(req, "\n".join([header, *out]) + "\n")
    lock = [f"# `pip freeze` in {source} ({stamp}), recorded after the build; reference only: packages of the base",
            "# image (torch, CUDA libraries) may not install from PyPI.",
            *sorted(ln.strip() for ln in freeze.splitlines() if FREEZE_LINE.match(ln.strip()) or " @ " in ln)]
    atomic_write_text(ctx.confine(LOCK_FILE), "\n".join(lock) + "\n")
    return {"pinned": pinned, "unpinned": unpinned, "lock": LOCK_FILE, "packages": len(frozen)}


def render_requirements(template: str, pins: list[str]) -> str:
    """Append compat pins; a pin for a package already listed replaces that line."""
    lines = template.rstrip("\n").splitlines()
    name = req_name

    for pin in pins:
        lines = [ln for ln in lines if ln.startswith("#") or name(ln) != name(pin)]
        lines.append(pin)
    return "\n".join(lines) + "\n"


def add_requirement(ctx: RunContext, package: str) -> bool:
    """Append a package to an existing requirements.txt that does not name it; the built image is then stale."""
    req = ctx.confine("requirements.txt")
    lines = req.read_text().splitlines()
    if any(re.match(rf"{re.escape(package)}\s*($|[=<>~!\[;])", ln.strip(), re.IGNORECASE) for ln in lines):
        return False
    atomic_write_text(req, "\n".join([*lines, package]) + "\n")
    if ctx.state.records.get("build"):
        ctx.state.records["build"] = {**ctx.state.records["build"], "ok": False, "stale": "requirements changed"}
    return True


def base_image(ctx: RunContext) -> str:
    """The image the Dockerfile starts from: the user's image, else the selected NGC image."""
    cfg = ctx.config
    img = cfg.image or cfg.ngc_image
    if img:
        return img
    if cfg.platform in ("local", "slurm"):  # slurm: only a venv run gets here (container modes need an image)
        return f"python:{sys.version_info.major}.{sys.version_info.minor}-slim"
    raise ToolError("no base image: ngc_image is not set (Step 2 select_image) and no 'image' was given")


SCRIPT_ROLES = {
    "prepare_data.py": "reads the dataset named in config.yaml, applies the column renames, takes the seeded n_train / n_eval "
                       "subsets and caches decoded tensors in data/ (+ data/meta.json: labels, sizes, columns)",
    "train.py": "the training loop, read top to bottom: fine-tunes model_id on data/ (`--smoke` runs a few steps and writes "
                "reports/smoke.json); checkpoints/step-N (resumable), checkpoints/final, logs/metrics.jsonl, reports/train_summary.json",
    "run_eval.py": "evaluates checkpoints/final on the eval split -> reports/eval_results.json; `--baseline` evaluates the base "
                   "model with an untrained head -> reports/baseline_results.json",
    "infer.py": "predicts a few eval examples with checkpoints/final -> reports/inference_samples/",
    "merge_lora.py": "merges LoRA adapters into the base weights -> checkpoints/merged",
    "task.py": "the task's specifics (model class, cached fields, batch -> model inputs, sample drawing); imported by the scripts",
    "common.py": "what the scripts share: config reading, data cache and prefetcher, device/precision, model loading, "
                 "checkpoint IO, metrics log; imported by the scripts",
    "sources.py": "opens the dataset (Hub id or local folder/file) as tables; imported by prepare_data.py",
    "vision.py": "the detection and segmentation eval/infer set-up and pixel statistics; imported by their task.py",
}


def render_project_readme(ctx: RunContext) -> str:
    """README.md of the generated project: what each script does and how to run it with and without Docker."""
    from tao_finetune.tools.jobs import command
    from tao_finetune.tools.runtime.docker import image_tag

    cfg, run = ctx.config, ctx.run_dir
    tag = image_tag(cfg.short_name)
    jobs = ["prepare", "smoke", *([] if cfg.skip_baseline else ["baseline"]), "train"]
    jobs += ["merge"] if (run / "merge_lora.py").is_file() else []
    jobs += ["eval", "infer"]
    cmds = [" ".join(command(ctx, j, 5 if j == "smoke" else None)) for j in jobs]
    gpus = "--gpus all " if (cfg.gpu_count or 0) > 0 else ""
    dataset = cfg.dataset_id or (f"the local dataset {cfg.local_dataset_path}" if cfg.local_dataset_path else "the dataset in config.yaml")
    scripts = [f"| `{name}` | {role} |" for name, role in SCRIPT_ROLES.items() if (run / name).is_file()]
    if (run / "tests" / UNIT_TESTS).is_file():
        scripts.append("| `tests/test_project.py` | unit tests of this project's code on fake data: `python -m pytest -q tests/` |")
    return "\n".join([
        f"# Fine-tuning {cfg.model_id} for {cfg.task_type}",
        "",
        f"Generated by tao-finetune for {dataset}. `config.yaml` is the only input: every script reads its settings",
        "(model, dataset, columns, subset sizes, hyperparameters) from it, so the commands below take no options.",
        "",
        "| file | what it does |",
        "|---|---|",
        *scripts,
        "| `Dockerfile` | the runtime: the base image (torch included) + `requirements.txt` + these scripts |",
        "| `requirements.txt` | Python packages on top of torch, pinned to the versions of the built environment "
        "(`requirements.lock.txt` lists all of it) |",
        "",
        "## With Docker",
        "",
        "The project directory is mounted at /workspace, so data/, checkpoints/ and reports/ land next to this file.",
        "",
        "```bash",
        f"docker build -t {tag} .",
        *[f'docker run --rm {gpus}--ipc=host -v "$PWD":/workspace -w /workspace {tag} {c}' for c in cmds],
        "```",
        "",
        "## Without Docker",
        "",
        "Python 3.11+ with a torch build for your GPU (https://pytorch.org/get-started/locally/), then:",
        "",
        "```bash",
        "python -m pip install -r requirements.txt",
        *cmds,
        "```",
        "",
        "Multi-GPU training: `torchrun --standalone --nproc_per_node=N train.py`. Training resumes from the newest",
        "complete checkpoint in checkpoints/ when it is started again.",
        "",
        "Training curves: train.py writes TensorBoard event files (`tensorboard --logdir logs/tensorboard`) and, with",
        "`wandb: true` in config.yaml, a Weights & Biases run (offline without WANDB_API_KEY: `wandb sync logs/wandb/offline-run-*`",
        "uploads it); `reports/tracking.json` says where each went.",
        "",
    ])


class RenderArgs(BaseModel):
    overwrite: bool = Field(False, description="replace project files that already exist (default keeps them)")


@tool(step=4)
def render_scaffold(ctx: RunContext, args: RenderArgs) -> dict:
    """Copy the tested scaffold for the task into the output dir, fill the Dockerfile base image and apply compat fixes."""
    task = ctx.config.task_type
    src = SCAFFOLDS / str(task)
    if task not in SCAFFOLD_TASKS or not src.is_dir():
        raise ToolError(f"no scaffold for task {task!r} (have {', '.join(SCAFFOLD_TASKS)}); write the files with write_file")
    fixes = compat_fixes(list(ctx.config.applicable_workarounds or []), load_compat_rules())
    image = base_image(ctx)
    tests = ctx.config.emit_unit_tests
    extra = [*(["wandb"] if ctx.config.wandb else []), *(["pytest"] if tests else [])]
    files = [(f, RENAMES.get(f.name, f.name)) for f in scaffold_files(str(task))]
    if tests:
        files.append((src / UNIT_TESTS, f"tests/{UNIT_TESTS}"))
    written, kept = [], []
    for f, rel in files:
        text = f.read_text()
        if rel == "Dockerfile":
            text = render_dockerfile(text, image, fixes)
        elif rel == "requirements.txt":
            text = render_requirements(text, [*fixes["requirements"], *extra])
        check_py(rel, text)
        target = ctx.confine(rel)
        if target.exists() and not args.overwrite:
            kept.append(rel)
            continue
        atomic_write_text(target, text)
        written.append(rel)
    if tests and "requirements.txt" in kept and add_requirement(ctx, "pytest"):
        kept.remove("requirements.txt")
        written.append("requirements.txt")
    readme = ctx.confine("README.md")
    if args.overwrite or not readme.exists():
        atomic_write_text(readme, render_project_readme(ctx))
        written.append("README.md")
    atomic_write_text(ctx.confine(RUNTIME_ENV), json.dumps(fixes["env"], indent=1))
    if fixes["other"]:
        ctx.config.note(f"workarounds not applied by the scaffold (config or code level): {', '.join(fixes['other'])}")
    ctx.save()
    ctx.session.event("scaffold_rendered", task=task, written=written, kept=kept, applied=fixes["applied"])
    return {"task": task, "written": written, "kept": kept, "base_image": image, "applied_workarounds": fixes["applied"],
            "not_applied": fixes["other"], "env": sorted(fixes["env"])}


def preflight_fields(ctx: RunContext) -> dict[str, str]:
    """The preflight summary's fields; a blank value means something is missing."""
    cfg = ctx.config
    run = ctx.run_dir
    urls = list(cfg.research_sources) or sorted({s.source for s in cfg.recipe.values() if s.source})
    meta = read_json(run / "data" / "meta.json")
    cols = meta.get("columns") or (cfg.dataset_facts or {}).get("columns") or []
    renames = ", ".join(f"{k}->{v}" for k, v in cfg.column_renames.items())
    columns = ", ".join(map(str, cols))
    if columns and renames:
        columns += f" (renamed {renames})"
    if columns and meta.get("label_names"):
        columns += f"; {len(meta['label_names'])} labels"
    dataset = cfg.dataset_id or cfg.local_dataset_path or ""
    if dataset and meta:
        dataset += f" ({meta.get('n_train')} train / {meta.get('n_eval')} eval)"
    if cfg.push_to_hub:
        push = f"https://huggingface.co/{cfg.hf_model_repo}" if cfg.hf_model_repo else ""
    else:
        push = "disabled (push_to_hub: false)"
    if cfg.wandb:  # the project's Tracker: online with WANDB_API_KEY, else an offline run (wandb sync uploads it)
        project = "WANDB_PROJECT" if ctx.creds.present("WANDB_PROJECT") else "project tao-finetune"
        wandb = f"online ({project})" if ctx.creds.present("WANDB_API_KEY") else "offline (no WANDB_API_KEY; logs/wandb/, wandb sync uploads it)"
    else:
        wandb = "disabled"
    if cfg.platform == "local":
        image = f"local python {_platform.python_version()} ({(ctx.state.records.get('build') or {}).get('python', sys.executable)})"
    elif cfg.platform == "slurm":
        build = ctx.state.records.get("build") or {}
        image = f"slurm {build.get('container', '?')}: {build.get('image') or cfg.image or cfg.ngc_image or ''}" if build.get("ok") else ""
    else:
        image = cfg.image or cfg.ngc_image or ""
    if cfg.gpu_count:
        hardware = f"{cfg.gpu_count}x {cfg.gpu_name}, {cfg.vram_gb_per_gpu} GB each, driver {cfg.driver_major}"
    elif cfg.allow_cpu and cfg.gpu_count == 0:
        hardware = "CPU only (--allow-cpu)"
    else:
        hardware = ""
    smoke = read_json(run / "reports" / "smoke.json")
    if smoke.get("passed") is True:
        smoke_text = f"PASSED (loss {smoke.get('loss'):.4g}, grad_norm {smoke.get('grad_norm'):.4g} at step 1)"
    else:
        smoke_text = ""
    return {"reference_urls": ", ".join(urls), "dataset": dataset, "columns": columns, "push_target": push,
            "wandb": wandb, "image": image, "hardware": hardware, "smoke": smoke_text}


def boxed(title: str, fields: dict[str, str], width: int = 100) -> str:
    """A box-drawn summary: one 'key: value' line per field, long values wrapped."""
    import textwrap

    inner = width - 4
    lines = []
    for k, v in fields.items():
        lines += textwrap.wrap(f"{k:<15} {v or '(BLANK)'}", inner, subsequent_indent=" " * 16) or [""]
    top = f"┌─ {title} " + "─" * (width - len(title) - 5) + "┐"
    body = [f"│ {ln:<{inner}} │" for ln in lines]
    return "\n".join([top, *body, "└" + "─" * (width - 2) + "┘"])


@tool(step=4)
def preflight(ctx: RunContext, args: NoArgs) -> dict:
    """Print the boxed PREFLIGHT summary (references, dataset, push target, wandb, image, hardware, smoke) and write meta/preflight.json; refuses if a field is blank."""
    fields = preflight_fields(ctx)
    text = boxed("PREFLIGHT", fields)
    print(text)
    blank = [k for k, v in fields.items() if not v]
    if blank:
        raise ToolError(f"preflight refused, blank fields: {', '.join(blank)}\n{text}")
    atomic_write_text(ctx.confine("meta/preflight.json"), json.dumps(fields, indent=1))
    atomic_write_text(ctx.confine("meta/preflight.txt"), text + "\n")
    ctx.session.event("preflight", **fields)
    return {"summary": text, "path": "meta/preflight.json"}


def scaffold_files(task: str) -> list[Path]:
    """The scaffold files rendered for a task: common/'s files (the shared train.py, Dockerfile and gitignore among them)
    + the task's own files, a task file replacing the common one of the same name (the VLM's own train.py); the opt-in
    unit tests are not among them."""
    own = sorted(p for p in (SCAFFOLDS / task).iterdir() if p.is_file() and p.name != UNIT_TESTS)
    names = {p.name for p in own}
    return [*sorted(p for p in (SCAFFOLDS / "common").iterdir() if p.is_file() and p.name not in names), *own]


def copy_scaffold(task: str, dest: Path, base: str = "python:3.11-slim") -> None:
    """Copy a scaffold into a directory without a run context (benchmarks, tests)."""
    dest.mkdir(parents=True, exist_ok=True)
    fixes = compat_fixes([], {})
    for f in scaffold_files(task):
        rel = RENAMES.get(f.name, f.name)
        if rel == "Dockerfile":
            (dest / rel).write_text(render_dockerfile(f.read_text(), base, fixes))
        else:
            shutil.copyfile(f, dest / rel)
