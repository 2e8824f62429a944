import json
import time

from pydantic import BaseModel, Field

from tao_finetune.agent import authority
from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.gates import RECIPE_SLOTS
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.agent.state import PushRecord, record_job
from tao_finetune.tools.base import NoArgs, tool
from tao_finetune.tools.jobs import job_outputs

FAKE_TOKEN = "hf_" + "Q" * 34

SKILL = """---
name: run-tiny-vit
description: Re-run the tiny-vit fine-tune on digits.
license: Apache-2.0
compatibility: local NVIDIA GPU with Docker
metadata:
  model: org/tiny-vit
allowed-tools: Bash
---
<!-- Copyright (c) 2026, NVIDIA CORPORATION. All rights reserved. -->
Run `tao-finetune run --config config.yaml`.
"""


def make_ctx(tmp_path):
    cfg = RunConfig(model_id="org/tiny-vit", dataset_id="org/digits", output_dir=str(tmp_path / "run"), push_to_hub=True)
    creds = Credentials({"HF_TOKEN": FAKE_TOKEN})
    c = RunContext(cfg, SessionLog(cfg.out / "session.jsonl", creds), creds, yes=True)
    c.save()
    return c


def job_done(ctx, job, facts=None):
    """What a job tool records after its job ran (these stand-ins do the job's writing themselves)."""
    record_job(ctx.state, ctx.run_dir, job, ["python", f"{job}.py"], "stand-in", None, 0, time.time(), job_outputs(ctx.run_dir, job), facts)
    ctx.save()


class Echo(BaseModel):
    text: str = Field(description="text to echo back")
    count: int = Field(1, ge=1, le=5, description="how many times")


@tool(step=1, register=False)
def fake_probe(ctx, args: Echo) -> str:
    """Stand-in for Step 1: record the task and the compat walk."""
    ctx.config.task_type = "image-classification"
    ctx.config.applicable_workarounds = []
    ctx.save()
    return args.text * args.count


@tool(step=2, register=False)
def fake_audit(ctx, args: NoArgs) -> dict:
    """Stand-in for Step 2: hardware facts and image."""
    c = ctx.config
    c.gpu_count, c.gpu_name, c.driver_major, c.vram_gb_per_gpu, c.ngc_image = 1, "NVIDIA H100", 580, 80.0, "nvcr.io/nvidia/pytorch:25.10-py3"
    ctx.state.record("audit", {"passed": True})
    ctx.save()
    return {"gpu": c.gpu_name}


@tool(step=3, register=False)
def fake_research(ctx, args: NoArgs) -> str:
    """Stand-in for Step 3: every recipe slot from a live source."""
    authority.record_fetch(ctx.state, "https://huggingface.co/org/tiny-vit", "https://huggingface.co/org/tiny-vit", "0" * 64)
    for slot in RECIPE_SLOTS:
        authority.set_recipe(ctx.config, ctx.state, slot, f"{slot}-value", "live", "https://huggingface.co/org/tiny-vit")
    (ctx.run_dir / "meta").mkdir(exist_ok=True)
    (ctx.run_dir / "meta" / "recipe.md").write_text("# recipe\n")
    ctx.save()
    return "recipe recorded"


@tool(step=4, register=False)
def fake_project(ctx, args: NoArgs) -> str:
    """Stand-in for Step 4: project files, build, smoke, preflight."""
    d = ctx.run_dir
    for f in ("Dockerfile", "requirements.txt", "prepare_data.py", "train.py", "run_eval.py", "infer.py", ".gitignore"):
        (d / f).write_text("x\n")
    ctx.state.record("build", {"ok": True})
    (d / "reports").mkdir(exist_ok=True)
    (d / "reports" / "smoke.json").write_text(json.dumps({"passed": True, "loss": 2.3}))
    (d / "meta" / "preflight.json").write_text(json.dumps({"image": "x", "dataset": "org/digits"}))
    job_done(ctx, "smoke")
    return "smoke passed"


@tool(step=5, register=False)
def fake_train(ctx, args: NoArgs) -> str:
    """Stand-in for Step 5: checkpoint, results, samples."""
    d = ctx.run_dir
    (d / "checkpoints" / "final").mkdir(parents=True)
    (d / "checkpoints" / "final" / "model.safetensors").write_text("w")
    (d / "reports" / "eval_results.json").write_text(json.dumps({"primary_metric": "accuracy", "accuracy": 0.97}))
    (d / "reports" / "baseline_results.json").write_text(json.dumps({"primary_metric": "accuracy", "accuracy": 0.1}))
    (d / "reports" / "inference_samples").mkdir()
    for i in range(5):
        (d / "reports" / "inference_samples" / f"{i}.png").write_text("p")
    job_done(ctx, "baseline")
    job_done(ctx, "train", {"first_loss": 2.3, "last_loss": 0.2, "trend": "falling"})
    for job in ("eval", "infer"):
        job_done(ctx, job)
    return "trained"


@tool(step=6, register=False)
def fake_push(ctx, args: NoArgs) -> str:
    """Stand-in for Step 6: push record and rerun skill."""
    ctx.state.record("hub", {"url": "http://hub/org/tiny-vit-finetuned"})
    ctx.state.push = PushRecord(repo_id="org/tiny-vit-finetuned", url="http://hub/org/tiny-vit-finetuned", commit="c" * 40,
                                confirmed_sha="c" * 40, at=time.time())
    path = ctx.run_dir / "skills" / "run-tiny-vit" / "SKILL.md"
    path.parent.mkdir(parents=True)
    path.write_text(SKILL)
    ctx.save()
    return f"pushed with token {FAKE_TOKEN}"


STAND_INS = [fake_probe, fake_audit, fake_research, fake_project, fake_train, fake_push]
