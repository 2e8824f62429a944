"""GPU throughput of the image-classification scaffold: samples/s, peak memory and MFU at 224 px, batch 256.

Runs the real scaffold (prepare_data.py on a folder of synthetic JPEGs, then train.py reading the cached uint8
shards through DataLoader workers) for ViT-B/16 and ConvNeXt-T built from their default configs (random init),
and, on the same card, a synthetic-tensor step loop as the reference figure (data loading excluded), so the
scaffold's figure can be compared with ANCHORS.md and with this card's own ceiling.

    python evals/bench_gpu.py [--steps 60] [--compile] [--out DIR]

Needs torch, transformers, numpy, pillow, pyyaml; not datasets. Not a test: it prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCAFFOLDS = Path(__file__).resolve().parent.parent / "references" / "scaffolds"
ANCHORS = {"vit-b16": 2093.0, "convnext-t": 2641.0}  # H100 bf16 eager, batch 256 (ANCHORS.md)
BATCH = 256


def make_model(name: str, dest: Path, num_labels: int) -> None:
    """Random-init model + processor saved as a local model folder."""
    from transformers import (ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor, ViTConfig,
                              ViTForImageClassification, ViTImageProcessor)

    if name == "vit-b16":
        ViTForImageClassification(ViTConfig(num_labels=num_labels)).save_pretrained(dest)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(dest)
    else:
        ConvNextForImageClassification(ConvNextConfig(num_labels=num_labels)).save_pretrained(dest)
        # shortest_edge >= 384 means a plain resize to 224x224 (no crop_pct) in the processor and in prepare_data.py
        ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=1.0).save_pretrained(dest)


def make_images(root: Path, n: int, classes: int) -> None:
    """n synthetic 256x256 JPEGs in an imagefolder layout (smooth noise, so they compress like photos)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        c = root / f"class_{i % classes:03d}"
        c.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((256, 256), Image.BILINEAR).save(c / f"{i}.jpg", quality=90)


def project(root: Path, model_dir: Path, data_dir: Path, n_train: int, steps: int, compile_: bool) -> Path:
    """A project dir with the scaffold and a config.yaml for the benchmark."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    for f in [*(SCAFFOLDS / "common").glob("*.py"), *(SCAFFOLDS / "image-classification").glob("*.py")]:
        shutil.copy(f, root / f.name)
    cfg = {"model_id": str(model_dir), "task_type": "image-classification", "local_dataset_path": str(data_dir),
           "local_dataset_format": "imagefolder", "n_train": n_train, "n_eval": 256, "n_epochs": 1,
           "hyperparameters": {"learning_rate": 1e-4, "per_device_train_batch_size": BATCH, "per_device_eval_batch_size": BATCH,
                               "gradient_accumulation_steps": 1, "lr_scheduler_type": "cosine", "warmup_ratio": 0.1,
                               "weight_decay": 0.05, "seed": 0, "precision": "bf16", "max_steps": steps,
                               "logging_steps": 10, "dataloader_num_workers": -1, "torch_compile": compile_}}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    return root


def run(cmd: list[str], cwd: Path, env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True)
    return time.perf_counter() - t


def scaffold_figures(proj: Path) -> dict:
    """Median samples/s and MFU over logged windows after the first two (warm-up, autotuning, compile)."""
    recs = [json.loads(x) for x in (proj / "logs" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "samples_per_s" in r and r.get("samples_per_s")]
    steady = steps[2:-1] or steps[1:] or steps
    start = next(r for r in recs if r.get("event") == "start")
    return {"samples_per_s": statistics.median(r["samples_per_s"] for r in steady),
            "mfu": statistics.median(r["mfu"] for r in steady) if steady[0].get("mfu") is not None else None,
            "peak_mem_gb": max(r.get("max_memory_gb", 0) for r in steps), "flops_per_sample": start.get("flops_per_sample"),
            "workers": start.get("workers"), "windows": len(steady), "final_loss": steps[-1]["loss"]}


def synthetic(model_dir: Path, steps: int, mode: str) -> dict:
    """Reference loop on GPU-resident random tensors: autocast bf16 or pure bf16 weights, fused AdamW, eager."""
    import torch
    from transformers import AutoModelForImageClassification

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = True
    dev = torch.device("cuda")
    kw = {}
    try:
        model = AutoModelForImageClassification.from_pretrained(model_dir, attn_implementation="sdpa", **kw)
    except ValueError:
        model = AutoModelForImageClassification.from_pretrained(model_dir, **kw)
    model.to(dev)
    if mode == "pure_bf16":
        model.to(torch.bfloat16)
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 2
    if convs:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(BATCH, 3, 224, 224, device=dev, dtype=torch.bfloat16 if mode == "pure_bf16" else torch.float32)
    if convs:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, model.config.num_labels, (BATCH,), device=dev)
    torch.cuda.reset_peak_memory_stats()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=mode == "autocast"):
            loss = model(pixel_values=x, labels=y).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(10):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(3):
        t0 = torch.cuda.Event(enable_timing=True)
        t1 = torch.cuda.Event(enable_timing=True)
        t0.record()
        for _ in range(steps // 3):
            step()
        t1.record()
        torch.cuda.synchronize()
        times.append(t0.elapsed_time(t1) / 1e3 / (steps // 3))
    per_step = statistics.median(times)
    out = {"samples_per_s": BATCH / per_step, "peak_mem_gb": torch.cuda.max_memory_allocated() / 1e9}
    model = opt = x = None
    torch.cuda.empty_cache()
    return out


def main() -> int:
    global BATCH
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--n-images", type=int, default=3072)
    ap.add_argument("--compile", action="store_true", help="also run the scaffold with torch_compile: true")
    ap.add_argument("--models", default="vit-b16,convnext-t")
    ap.add_argument("--out", default=os.environ.get("OUT") or ".")
    ap.add_argument("--batch", type=int, default=BATCH, help="per-device batch (256 to compare with ANCHORS.md)")
    ap.add_argument("--nproc", type=int, default=1, help="GPUs for the scaffold run (torchrun --nproc_per_node); figures are totals")
    ap.add_argument("--no-synthetic", action="store_true", help="skip the synthetic reference loop")
    args = ap.parse_args()
    BATCH = args.batch
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    work = Path(tempfile.mkdtemp(prefix="bench_"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TAO_SAVE_STEPS": "0"}
    data = work / "images"
    t = time.perf_counter()
    make_images(data, args.n_images, 100)
    results: dict = {"device": gpu, "torch": torch.__version__, "batch": BATCH, "steps": args.steps,
                     "n_images": args.n_images, "make_images_s": round(time.perf_counter() - t, 1), "rows": []}
    import transformers

    results["transformers"] = transformers.__version__
    for name in args.models.split(","):
        model_dir = work / f"model_{name}"
        make_model(name, model_dir, 100)
        variants = [False, True] if args.compile else [False]
        prep_s, cached = None, None
        for comp in variants:
            proj = project(work / f"proj_{name}_{'compiled' if comp else 'eager'}", model_dir, data, args.n_images - 256,
                           args.steps, comp)
            if prep_s is None:
                prep_s = run([sys.executable, "prepare_data.py"], proj, env)
                cached = proj / "data"
            else:
                shutil.copytree(cached, proj / "data")
            launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}"] if args.nproc > 1 \
                else [sys.executable]
            wall = run([*launcher, "train.py"], proj, env)
            fig = scaffold_figures(proj)
            row = {"model": name, "path": f"scaffold train.py (cached uint8 shards, DataLoader workers), {args.nproc} GPU",
                   "compiled": comp, "gpus": args.nproc, **fig, "train_wall_s": round(wall, 1), "prepare_s": round(prep_s, 1),
                   "prepare_img_per_s": round(args.n_images / prep_s, 1),
                   "vs_anchor": fig["samples_per_s"] / (ANCHORS[name] * args.nproc)}
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
        for mode in ("autocast", "pure_bf16") if torch.cuda.is_available() and not args.no_synthetic else ():
            fig = synthetic(model_dir, args.steps, mode)
            row = {"model": name, "path": f"synthetic tensors, {mode}, eager", "compiled": False, **fig,
                   "vs_anchor": fig["samples_per_s"] / ANCHORS[name]}
            results["rows"].append(row)
            print(json.dumps(row), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_gpu.json").write_text(json.dumps(results, indent=1))
    print(f"\ndevice: {gpu}  torch {torch.__version__}  transformers {results['transformers']}  batch {BATCH}")
    print(f"{'model':<11} {'path':<60} {'img/s':>8} {'vs anchor':>9} {'MFU':>6} {'peak GB':>8}")
    for r in results["rows"]:
        mfu = f"{r['mfu']:.1%}" if r.get("mfu") else "-"
        path = r["path"] + (" +compile" if r["compiled"] else "")
        print(f"{r['model']:<11} {path:<60} {r['samples_per_s']:>8.0f} {r['vs_anchor']:>9.0%} {mfu:>6} {r['peak_mem_gb']:>8.1f}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
