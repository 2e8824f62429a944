"""Checkpoints of the generated project: digests, fallback to an older checkpoint, a full disk, async saves, kill+resume."""

import errno
import importlib
import json
import sys
import time
from pathlib import Path

import pytest

from tao_finetune.tools import jobs, project
from tao_finetune.tools.runtime.local import LocalPlatform
from test_scaffolds import OFFLINE, REFS, call, digits, make_ctx  # noqa: F401  (digits is a fixture)


@pytest.fixture
def common(tmp_path, monkeypatch):
    """The scaffold's common.py imported for a project dir under tmp_path (its module-level paths follow the env)."""
    monkeypatch.setenv("TAO_PROJECT_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(REFS / "scaffolds" / "common"))
    sys.modules.pop("common", None)
    mod = importlib.import_module("common")
    yield mod
    sys.modules.pop("common", None)


@pytest.fixture
def tiny(tmp_path):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    model = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                                image_size=16, patch_size=8, num_labels=3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(pixel_values=torch.randn(2, 3, 16, 16), labels=torch.tensor([0, 1])).loss.backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, opt, sched


def test_newest_checkpoint_that_verifies_is_picked_and_a_corrupt_one_skipped(common, tiny):
    model, opt, sched = tiny
    s1 = common.save_checkpoint(model, opt, sched, None, 1, keep=3)
    s2 = common.save_checkpoint(model, opt, sched, None, 2, keep=3)
    marker = json.loads((s2 / "complete.json").read_text())
    assert {"model.safetensors", "training_state.pt", "config.json"} <= set(marker["files"])
    assert common.resumable_checkpoint() == s2
    blob = bytearray((s2 / "model.safetensors").read_bytes())
    blob[-10] ^= 0xFF
    (s2 / "model.safetensors").write_bytes(bytes(blob))
    said = []
    assert common.resumable_checkpoint(log=said.append) == s1
    assert said == ["checkpoint step-0000002 skipped: model.safetensors does not match its digest"]
    (s1 / "training_state.pt").unlink()
    assert common.resumable_checkpoint(log=said.append) is None and "training_state.pt is missing" in said[-1]
    (s1 / "complete.json").write_text("{not json")
    assert common.verify_checkpoint(s1).startswith("completion marker unreadable")


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_results(common, tiny, monkeypatch):
    model, opt, sched = tiny
    metrics = common.LOGS / "metrics.jsonl"
    writer = common.CheckpointWriter(model, keep=2, metrics_path=metrics, background=True)
    writer.save(opt, sched, None, 1)
    writer.wait()
    common.write_json(common.REPORTS / "train_summary.json", {"total_steps": 1})
    good = common.CKPT / "step-0000001"
    assert writer.saved == [1] and common.verify_checkpoint(good) is None

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(common.torch, "save", full)
    writer.save(opt, sched, None, 2)  # in the background thread: training would go on
    writer.wait()
    assert writer.failed == ["OSError: [Errno 28] No space left on device"]
    assert sorted(p.name for p in common.CKPT.iterdir()) == ["step-0000001"]  # no temp dir, no half checkpoint
    assert common.resumable_checkpoint() == good
    events = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [e["event"] for e in events] == ["checkpoint", "checkpoint_failed"] and events[1]["step"] == 2
    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError):
        common.write_json(common.REPORTS / "train_summary.json", {"total_steps": 2})
    monkeypatch.undo()
    assert json.loads((common.REPORTS / "train_summary.json").read_text()) == {"total_steps": 1}
    assert not list(common.REPORTS.glob(".*.tmp"))


def test_a_failed_final_save_keeps_the_previous_final(common, tiny, monkeypatch):
    model, _, _ = tiny

    class Task:
        @staticmethod
        def save_processor(cfg, meta, out):
            (out / "preprocessor_config.json").write_text("{}")

    common.write_final(model, Task, {}, {})
    before = (common.final_dir() / "model.safetensors").read_bytes()
    monkeypatch.setattr(type(model), "save_pretrained", lambda self, d, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError):
        common.write_final(model, Task, {}, {})
    assert (common.final_dir() / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in common.CKPT.iterdir()) == ["final"]


def test_save_cadence_fits_the_run(common, monkeypatch):
    monkeypatch.delenv("TAO_SAVE_STEPS", raising=False)
    monkeypatch.delenv("TAO_SAVE_SECONDS", raising=False)
    assert common.save_cadence({}, 64) == (None, 600.0)  # a short run writes no step checkpoint, only the final
    assert common.save_cadence({"save_seconds": 30}, 64) == (None, 30.0)
    assert common.save_cadence({"save_steps": 0}, 64) == (0, 0.0)
    monkeypatch.setenv("TAO_SAVE_STEPS", "5")
    assert common.save_cadence({}, 64) == (5, 0.0)


def test_killed_training_resumes_from_the_newest_checkpoint_that_verifies(tmp_path, digits):  # noqa: F811
    ctx = make_ctx(tmp_path / "run", "image-classification", model_id=str(digits["model"]),
                   local_dataset_path=str(digits["data"]), n_train=256, n_eval=64, n_epochs=40)
    ctx.config.hyperparameters = ctx.config.hyperparameters.model_copy(update={"learning_rate": 1e-3, "per_device_train_batch_size": 32})
    ctx.platform = LocalPlatform(extra_env={**OFFLINE, "TAO_SAVE_STEPS": "4"})
    ctx.save()
    call(project.render_scaffold, ctx)
    call(jobs.docker_run, ctx, job="prepare")
    call(jobs.docker_run, ctx, job="train")
    ckpts = ctx.run_dir / "checkpoints"
    deadline = time.monotonic() + 120
    while len(list(ckpts.glob("step-*/complete.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    ctx.platform.stop(ctx, "train")
    assert call(jobs.train_status, ctx)["state"] == "stopped" and not (ckpts / "final").exists()
    steps = sorted(int(p.parent.name.split("-")[1]) for p in ckpts.glob("step-*/complete.json"))
    assert len(steps) == 2, steps
    newest = ckpts / f"step-{steps[-1]:07d}" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:-100])  # torn write of the newest checkpoint
    ctx.platform = LocalPlatform(extra_env={**OFFLINE, "TAO_SAVE_STEPS": "4"})  # the agent restarted
    call(jobs.docker_run, ctx, job="train")
    done = call(jobs.train_status, ctx, wait_s=300)
    assert done["state"] == "done", done
    assert done["resumed_from"] == steps[0]
    log = (ctx.run_dir / "logs" / "train.log").read_text()
    assert f"checkpoint step-{steps[-1]:07d} skipped: model.safetensors does not match its digest" in log
    assert done["step"] == done["total_steps"] and (ckpts / "final" / "model.safetensors").is_file()


def test_prefetcher_yields_the_planned_batches_in_order_and_reraises(common, tmp_path):
    import numpy as np

    common.save_split("train", {"pixel_values": np.arange(40 * 3, dtype=np.uint8).reshape(40, 3), "labels": np.arange(40)})
    split = common.CachedSplit("train", ("pixel_values", "labels"))
    plan = [np.array([5, 1, 7]), np.array([0, 2]), np.array([39])]
    pf = common.Prefetcher(split, plan, pin=False, depth=1)
    got = list(pf)
    assert [b["labels"].tolist() for b in got] == [[1, 5, 7], [0, 2], [39]]  # take() sorts within a batch
    assert got[0]["pixel_values"].tolist() == [[3, 4, 5], [15, 16, 17], [21, 22, 23]]
    bad = common.Prefetcher(split, [np.array([0]), np.array([99])], pin=False)
    assert next(bad)["labels"].tolist() == [0]
    with pytest.raises(IndexError):
        next(bad)
    slow = common.Prefetcher(split, [np.array([i]) for i in range(40)], pin=False, depth=2)
    next(slow)
    slow.close()  # an early stop ends the thread instead of leaving it blocked on a full queue
    assert not slow.thread.is_alive()
