"""GPU figures of the object-detection and semantic-segmentation scaffolds at real architecture size (random init).

DETR-ResNet-50 (DetrConfig defaults with a transformers ResNet-50 backbone, no timm) on synthetic shapes with COCO
boxes at a 512 px canvas, and SegFormer-B0 (SegformerConfig defaults = mit-b0) on synthetic shapes with masks at
512x512: the real scaffold jobs (prepare_data.py, run_eval.py --baseline, train.py, run_eval.py), then samples/s and
peak memory from logs/metrics.jsonl and the metric against the baseline.

    python evals/bench_vision.py [--task object-detection|semantic-segmentation|all] [--n 2000] [--epochs 3] [--out DIR]

Progress lines start with [bench_vision] and every job runs unbuffered (PYTHONUNBUFFERED=1), so a run stopped at a
time limit still shows how far it got; the last lines are one table (task, model, px, steps, samples/s, peak GB,
loss first -> last, metric baseline -> fine-tuned, seconds per phase). Drawing the synthetic PNGs takes about 15 ms
to 70 ms an image; with --task all both tasks' data are drawn at once in two processes. The one-shot GPU command
(under 150 s on one H200, both tasks) is `--n 400 --epochs 5`. Not yet run on a GPU from this repo: an earlier
attempt (H200, --n 1000 --epochs 5) ran past its 330 s limit with its output held in a pipe buffer.

Needs torch, transformers, numpy, pillow, pyyaml, scipy and pycocotools; not datasets, not this package installed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "references"))
from shapes import SHAPES, detection_coco, segmentation_folders  # noqa: E402

HP = {"learning_rate": 1e-4, "per_device_train_batch_size": 16, "per_device_eval_batch_size": 32, "gradient_accumulation_steps": 1,
      "lr_scheduler_type": "cosine", "warmup_ratio": 0.05, "weight_decay": 1e-4, "seed": 42, "precision": "bf16",
      "gradient_checkpointing": False, "max_steps": -1, "logging_steps": 10, "dataloader_num_workers": -1,
      "torch_compile": False, "training_method": "full"}
SETTINGS = {
    "object-detection": {"hp": {"learning_rate": 1e-4, "per_device_train_batch_size": 16}, "recipe": "HorizontalFlip(p=0.5)"},
    "semantic-segmentation": {"hp": {"learning_rate": 6e-4, "per_device_train_batch_size": 32}, "recipe": "ColorJitter; RandomHorizontalFlip()"},
}


def make_model(task: str, dest: Path) -> None:
    from transformers import (DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig, SegformerConfig,
                              SegformerForSemanticSegmentation, SegformerImageProcessor)

    if task == "object-detection":
        names = SHAPES
        cfg = DetrConfig(backbone_config=ResNetConfig(out_features=["stage4"]), use_timm_backbone=False,
                         id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
        DetrForObjectDetection(cfg).save_pretrained(dest)
        DetrImageProcessor().save_pretrained(dest)
    else:
        names = ["background", *SHAPES]
        model = SegformerForSemanticSegmentation(SegformerConfig(id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}))
        model.save_pretrained(dest)
        SegformerImageProcessor().save_pretrained(dest)


def project(task: str, root: Path, model: Path, data: Path, n: int, epochs: float) -> Path:
    """A project dir: the scaffold files and a config.yaml whose project: section is complete (as the agent writes it)."""
    from tao_finetune.tools.project import copy_scaffold  # the files a rendered project gets (task files override common's)

    proj = root / "proj"
    copy_scaffold(task, proj)
    hp = {**HP, **SETTINGS[task]["hp"]}
    spec = {"task_type": task, "model_id": str(model), "dataset_source": "local", "dataset_id": None, "dataset_config": None,
            "local_dataset_path": str(data), "local_dataset_format": "auto", "columns": {}, "column_renames": {}, "label_names": [],
            "splits": {"train_split": None, "eval_split": None, "eval_fraction": 0.1, "stratify_by": None, "seed": 42,
                       "n_train": n, "n_eval": 1000},
            "skip_files": [], "image_size": 512 if task == "object-detection" else None, "bbox_format": "coco",
            "ignore_index": 255, "reduce_labels": False, "training_method": "full", "hyperparameters": hp, "n_epochs": epochs,
            "wandb": False, "data_files": {}, "recipe": {"train_transforms": SETTINGS[task]["recipe"]}}
    cfg = {"model_id": str(model), "task_type": task, "local_dataset_path": str(data), "n_train": n, "n_eval": 1000,
           "n_epochs": epochs, "wandb": False, "hyperparameters": hp, "project": spec}
    (proj / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return proj


def run(cmd: list[str], cwd: Path) -> float:
    print(f"[bench_vision] {cwd.parent.name}: {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    env = {**os.environ, "TAO_SAVE_STEPS": "0", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}
    subprocess.run([sys.executable, *cmd], cwd=cwd, env=env, check=True)
    return time.perf_counter() - t


def make_data(task: str, out: Path, n: int) -> float:
    """Draw the task's synthetic images (COCO boxes on a 640x480 canvas, or 512x512 masks); returns the seconds."""
    root = out / task
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    if task == "object-detection":
        detection_coco(root / "data-src", n=n, size=(640, 480), bad_boxes=True)
    else:
        segmentation_folders(root / "data-src", n=n, size=512)
    return round(time.perf_counter() - t0, 1)


def bench(task: str, out: Path, n: int, epochs: float, data_s: float) -> dict:
    root = out / task
    data = root / "data-src"
    t0 = time.perf_counter()
    make_model(task, root / "model")
    proj = project(task, root, root / "model", data, n, epochs)
    times = {"make_data_s": data_s, "make_model_s": round(time.perf_counter() - t0, 1)}
    print(f"[bench_vision] {task}: {n} synthetic images in {data_s} s, a random-init model in {times['make_model_s']} s", flush=True)
    times["prepare_s"] = round(run(["prepare_data.py"], proj), 1)
    times["baseline_s"] = round(run(["run_eval.py", "--baseline"], proj), 1)
    times["train_s"] = round(run(["train.py"], proj), 1)
    times["eval_s"] = round(run(["run_eval.py"], proj), 1)
    recs = [json.loads(x) for x in (proj / "logs" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r and "event" not in r]
    summary = json.loads((proj / "reports" / "train_summary.json").read_text())
    base = json.loads((proj / "reports" / "baseline_results.json").read_text())
    ev = json.loads((proj / "reports" / "eval_results.json").read_text())
    name = ev["primary_metric"]
    sps = sorted(r["samples_per_s"] for r in steps[2:] if r.get("samples_per_s"))
    meta = json.loads((proj / "data" / "meta.json").read_text())
    return {"task": task, "model": "DETR-R50 (random init)" if task == "object-detection" else "SegFormer-B0 (random init)",
            "device": summary["device"], "precision": summary["precision"], "size": meta["size"], "n_train": meta["n_train"],
            "n_eval": meta["n_eval"], "batch": SETTINGS[task]["hp"]["per_device_train_batch_size"], "steps": summary["total_steps"],
            "samples_per_s_median": sps[len(sps) // 2] if sps else None, "train_samples_per_s": summary["train_samples_per_s"],
            "peak_memory_gb": max((r.get("max_memory_gb") or 0) for r in steps), "loss_first": steps[0]["loss"],
            "loss_last": steps[-1]["loss"], "metric": name, "baseline": base[name], "fine_tuned": ev[name],
            "extra": {k: ev[k] for k in ("map_50", "pixel_accuracy") if k in ev}, **times}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="all", choices=["all", "object-detection", "semantic-segmentation"])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--out", default="/tmp/bench-vision")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = ["semantic-segmentation", "object-detection"] if args.task == "all" else [args.task]
    t0 = time.perf_counter()
    with concurrent.futures.ProcessPoolExecutor(len(tasks)) as pool:  # drawing PNGs is single-threaded per task
        data_s = dict(zip(tasks, pool.map(make_data, tasks, [out] * len(tasks), [args.n] * len(tasks))))
    print(f"[bench_vision] data for {', '.join(tasks)} drawn in {time.perf_counter() - t0:.1f} s", flush=True)
    results = []
    for t in tasks:
        results.append(bench(t, out, args.n, args.epochs, data_s[t]))
        print(json.dumps(results[-1]), flush=True)
    (out / "bench_vision.json").write_text(json.dumps(results, indent=1))
    print(table(results), flush=True)
    return 0


def table(results: list[dict]) -> str:
    """One fixed-width table of the figures (the lines a log tail shows)."""
    head = ("task", "model", "px", "device", "prec", "n_train", "batch", "steps", "img/s med", "img/s all", "peak GB",
            "loss first->last", "metric", "baseline->tuned", "data/prep/base/train/eval s")
    rows = [head]
    for r in results:
        f = lambda v, d=1: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
        rows.append((r["task"], r["model"], str(r["size"]), str(r["device"]), str(r["precision"]), str(r["n_train"]), str(r["batch"]),
                     str(r["steps"]), f(r["samples_per_s_median"]), f(r["train_samples_per_s"]), f(r["peak_memory_gb"], 2),
                     f"{r['loss_first']:.3f}->{r['loss_last']:.3f}", r["metric"], f"{r['baseline']:.4f}->{r['fine_tuned']:.4f}",
                     "/".join(str(r[k]) for k in ("make_data_s", "prepare_s", "baseline_s", "train_s", "eval_s"))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    return "\n".join("[bench_vision] " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows)


if __name__ == "__main__":
    raise SystemExit(main())
