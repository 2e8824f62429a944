"""The project's Tracker: TensorBoard event files by default, a real (offline) Weights & Biases run when W&B is on.

What the files hold is read back with each tool's own reader: tensorboard's EventAccumulator, and the W&B transaction
log (.wandb: a LevelDB-style record log of wandb's protobuf Records, wandb/proto/wandb_internal.proto) decoded here.
"""

import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from test_scaffolds import reference_recipe, step1

from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.console import job_progress
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.metrics import read_records, tracking, tracking_lines, training_steps
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.agent.state import RunState
from tao_finetune.tools import jobs, project
from tao_finetune.tools.base import NoArgs
from tao_finetune.tools.runtime.local import LocalPlatform

pytest.importorskip("tensorboard")
wandb = pytest.importorskip("wandb")

REFS = Path(project.__file__).resolve().parent.parent / "references"
COMMON = REFS / "scaffolds" / "common" / "common.py"
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}
WANDB_KEY = "0123456789abcdef" * 2 + "fedcba98"  # 40 hex characters, the shape of a real key


def wandb_records(path: Path) -> list:
    """The protobuf Records of a .wandb file: a 7-byte header (':W&B', magic 0xBEE1, version), then LevelDB log
    records in 32 KiB blocks (crc32 4 bytes, length 2, type 1: FULL=1, FIRST=2, MIDDLE=3, LAST=4; zero padding)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:8]
    out, pos, buf, block = [], 7, b"", 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # padding to the block end
            pos += block - pos % block if pos % block else 0
            continue
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            out.append(pb.Record.FromString(buf))
            buf = b""
    return out


def wandb_history(run_dir: Path) -> list[dict]:
    """Each logged step of an offline run: {key: value}."""
    files = list(run_dir.glob("run-*.wandb"))
    assert len(files) == 1, list(run_dir.iterdir())
    rows = []
    for rec in wandb_records(files[0]):
        if rec.WhichOneof("record_type") == "history":
            rows.append({(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in rec.history.item})
    return rows


def tb_scalars(logdir: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


TRACK = textwrap.dedent('''
    import sys
    sys.path.insert(0, sys.argv[1])
    import common

    class Rank0:
        main = True

    cfg = {"model_id": "org/tiny", "splits": {"n_train": 64}, "hyperparameters": {"learning_rate": 0.001}, "wandb": sys.argv[2] == "1"}
    tracker = common.Tracker(cfg, Rank0(), "train")
    tracker.log({"event": "start", "step": 0, "total_steps": 4, "time": 1.0})
    for step in (1, 2, 3, 4):
        tracker.log({"step": step, "total_steps": 4, "loss": 2.0 / step, "lr": 0.001, "epoch": step / 4, "time": 1.0 + step})
    tracker.finish()
''')


def run_tracker(tmp_path: Path, wandb_on: bool, **env: str) -> Path:
    """Copy the scaffold's common.py into a fresh project dir and drive its Tracker in a fresh interpreter."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "common.py").write_text(COMMON.read_text())
    (tmp_path / "track.py").write_text(TRACK)
    base = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = subprocess.run([sys.executable, str(tmp_path / "track.py"), str(proj), "1" if wandb_on else "0"], cwd=proj,
                          env={**base, "TAO_PROJECT_DIR": str(proj), "OMP_NUM_THREADS": "1", **env},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proj


def test_without_a_key_wandb_logs_offline_and_tensorboard_always(tmp_path):
    proj = run_tracker(tmp_path, True)  # no WANDB_API_KEY, no WANDB_MODE: offline, never a prompt or a network call
    t = tracking(proj)
    assert t.tensorboard.logdir == "logs/tensorboard" and t.wandb.mode == "offline" and t.wandb.url is None
    assert t.wandb.run_dir.startswith("logs/wandb/offline-run-") and (proj / t.wandb.run_dir).is_dir()
    history = wandb_history(proj / t.wandb.run_dir)
    assert [h["loss"] for h in history] == [2.0, 1.0, 2.0 / 3, 0.5] and [h["_step"] for h in history] == [1, 2, 3, 4]
    assert all("time" not in h and "total_steps" not in h for h in history)
    loss = tb_scalars(proj / "logs" / "tensorboard", "train/loss")
    assert [s for s, _ in loss] == [1, 2, 3, 4] and np.allclose([v for _, v in loss], [2.0, 1.0, 2.0 / 3, 0.5])
    lines = tracking_lines(proj)
    assert lines[0] == f"tensorboard: tensorboard --logdir {proj / 'logs' / 'tensorboard'}"
    assert lines[1].startswith(f"wandb: offline run {proj / t.wandb.run_dir}") and "wandb sync" in lines[1]
    assert tracking_lines(proj, absolute=False)[0] == "tensorboard: tensorboard --logdir logs/tensorboard"


def test_wandb_mode_disabled_or_off_leaves_only_tensorboard(tmp_path):
    proj = run_tracker(tmp_path, True, WANDB_MODE="disabled", WANDB_API_KEY=WANDB_KEY)
    t = tracking(proj)
    assert t.wandb is None and t.tensorboard.logdir == "logs/tensorboard" and not (proj / "logs" / "wandb").exists()
    assert [s for s, _ in tb_scalars(proj / "logs" / "tensorboard", "train/lr")] == [1, 2, 3, 4]
    assert [line.split(":")[0] for line in tracking_lines(proj)] == ["tensorboard"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """300 of sklearn's real 8x8 digits as an imagefolder and a seeded tiny random-init ViT."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    root = tmp_path_factory.mktemp("digits")
    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images[:300], d.target[:300])):
        (root / "images" / f"digit_{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).astype(np.uint8)).save(root / "images" / f"digit_{y}" / f"{i}.png")
    torch.manual_seed(0)
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, image_size=16,
                    patch_size=4, num_labels=10)
    ViTForImageClassification(cfg).save_pretrained(root / "tiny-vit")
    ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(root / "tiny-vit")
    return {"data": root / "images", "model": root / "tiny-vit"}


def test_train_job_writes_tensorboard_and_an_offline_wandb_run_the_card_and_console_show(tmp_path, digits, capsys):
    """Through the real tools and the local platform: the train job gets WANDB_API_KEY (W&B on) with WANDB_MODE=offline."""
    from tao_finetune.tools.card import _tracking_section
    from tao_finetune.tools.hub import upload_plan

    run = tmp_path / "run"
    cfg = RunConfig(task_type="image-classification", output_dir=str(run), platform="local", allow_cpu=True, gpu_count=0,
                    gpu_name="cpu", driver_major=0, vram_gb_per_gpu=0, push_to_hub=False, user_set=["task_type"], wandb=True,
                    model_id=str(digits["model"]), local_dataset_path=str(digits["data"]), n_train=200, n_eval=50, n_epochs=2)
    step1(cfg)
    creds = Credentials({"WANDB_API_KEY": WANDB_KEY})
    state = RunState()
    reference_recipe(cfg, state, "image-classification")
    ctx = RunContext(cfg, SessionLog(run / ".tao" / "session.jsonl", creds), creds, state,
                     LocalPlatform(extra_env={**OFFLINE, "WANDB_MODE": "offline"}))
    ctx.config.hyperparameters = ctx.config.hyperparameters.model_copy(update={"logging_steps": 2, "per_device_train_batch_size": 16})
    (run / "meta").mkdir(parents=True, exist_ok=True)
    (run / "meta" / "recipe.md").write_text("# recipe\nreference fallback (offline test)\n")
    ctx.save()
    project.render_scaffold.fn(ctx, project.RenderArgs())
    assert "wandb" in (run / "requirements.txt").read_text() and "tensorboard" in (run / "requirements.txt").read_text()
    jobs.docker_build.fn(ctx, NoArgs())
    for job in ("prepare", "smoke", "train"):
        jobs.docker_run.fn(ctx, jobs.RunArgs(job=job))
        if job == "prepare":  # its progress lines, which the live view turns into a bar (eval split last)
            what, done, total = job_progress(run, "prepare")
            assert what == "decoding images" and 0 < done == total
    status = jobs.train_status.fn(ctx, jobs.StatusArgs(wait_s=300))
    assert status["state"] == "done", status

    t = tracking(run)
    assert t.wandb.mode == "offline" and t.wandb.project == "tao-finetune" and t.tensorboard.logdir == "logs/tensorboard"
    logged = training_steps(run / "logs" / "metrics.jsonl")
    assert len(logged) >= 4
    history = wandb_history(run / t.wandb.run_dir)
    assert [h["_step"] for h in history] == [r["step"] for r in logged]
    assert np.allclose([h["loss"] for h in history], [r["loss"] for r in logged])
    tb = tb_scalars(run / "logs" / "tensorboard", "train/loss")
    assert [s for s, _ in tb] == [r["step"] for r in logged] and np.allclose([v for _, v in tb], [r["loss"] for r in logged], rtol=1e-6)
    key = WANDB_KEY.encode()
    assert not [p for p in run.rglob("*") if p.is_file() and key in p.read_bytes()]  # the key reached no file

    plan = [rp for rp, _ in upload_plan(run)]
    assert any(rp.startswith("runs/") and ".tfevents." in rp for rp in plan)
    section = "\n".join(_tracking_section(run, set(plan)))
    assert "`tensorboard --logdir runs`" in section and f"`{t.wandb.run_dir}`" in section and "wandb sync" in section
    assert str(run) not in section  # the card names no path of this machine
    from tao_finetune.agent.cli import summary

    closing = summary(run, ctx.state)
    assert f"tensorboard: tensorboard --logdir {run / 'logs' / 'tensorboard'}" in closing
    assert f"wandb: offline run {run / t.wandb.run_dir}" in closing
    assert read_records(run / "logs" / "metrics.jsonl")[-1]["event"] == "done"
    from tao_finetune.agent.cli import main

    main(["status", "--output-dir", str(run)])
    shown = capsys.readouterr().out
    assert f"tensorboard: tensorboard --logdir {run / 'logs' / 'tensorboard'}" in shown and "· done" in shown
    main(["status", "--output-dir", str(run), "--json"])
    assert json.loads(capsys.readouterr().out)["tracking"]["wandb"]["run_dir"] == t.wandb.run_dir
    from tao_finetune.tools.report import _facts, collect

    facts = dict(_facts(collect(run, []), "report"))  # the report's summary table
    assert facts["tensorboard"] == "tensorboard --logdir logs/tensorboard" and facts["wandb"].startswith(f"offline run {t.wandb.run_dir}")
