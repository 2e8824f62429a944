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
"""Fine-tune: `python train.py [--smoke] [--max_steps N]`; multi-GPU: `torchrun --nproc_per_node=N train.py`.

The whole training loop, in the order it runs: config → model → optimizer and schedule → resume → data → the loop
(forward/backward with gradient accumulation, clipping, logging, checkpoint cadence, preemption) → final save.
Plain PyTorch over the uint8 tensors cached by prepare_data.py: bf16 autocast, TF32, fused AdamW, SDPA where the
architecture has it, resumable checkpoints in checkpoints/step-N, checkpoints/final, logs/metrics.jsonl.

What differs between tasks comes from task.py (FIELDS: the cached arrays; to_inputs: a cached batch -> the model's
keyword arguments, labels included, so `model(**inputs).loss` is the loss; channels_last; save_processor). What every
script shares (config, the cache reader, Runtime, checkpoint IO, metrics log) lives in common.py.
A NaN or flat loss is judged from logs/metrics.jsonl by the agent (tao-finetune's train_status), which stops the
run; this loop only logs (one host-device sync per logging step, none in between besides checkpoint saves).
Sources: https://github.com/karpathy/nanoGPT/blob/master/train.py (the shape of this file: one loop, read top to
bottom); https://huggingface.co/docs/transformers/main/en/main_classes/optimizer_schedules (get_scheduler);
https://docs.pytorch.org/docs/stable/generated/torch.optim.AdamW.html (fused=True on CUDA);
https://docs.pytorch.org/docs/stable/notes/ddp.html (DistributedDataParallel, no_sync for gradient accumulation);
https://docs.pytorch.org/docs/stable/amp.html (autocast, GradScaler for fp16). The helpers' sources are in common.py.
"""

from __future__ import annotations

import argparse
import gc
import math
import time
from contextlib import nullcontext

import torch
from transformers import get_scheduler

import task
from common import (LOGS, PREEMPTED_EXIT, REPORTS, CachedSplit, CheckpointWriter, Preempted, PreemptFlag, Prefetcher,
                    Runtime, Tracker, batch_plan, export_model, flops_per_sample, hp, load_config, load_train_model, loader,
                    log_jsonl, num_workers, read_json_file, read_meta, resumable_checkpoint, save_cadence,
                    save_checkpoint, seed_all, smoke_report, write_final, write_json)


def train(cfg: dict, meta: dict, rt: Runtime, smoke: bool, max_steps: int) -> dict:
    """Train (or, with smoke, run max_steps steps and count FLOPs); returns the last logged record's figures."""
    job_start = time.perf_counter()  # setup_s in the start record: load, optimizer, data, tracker before step 1
    h = hp(cfg)
    metrics_path = LOGS / ("smoke_metrics.jsonl" if smoke else "metrics.jsonl")
    # SIGTERM/SIGUSR1 (scheduler time limit, scancel, docker stop) from here on end the run at the next step boundary
    # with a checkpoint; installed first, so a signal while the model loads is honoured at step 1
    preempt = PreemptFlag() if smoke else PreemptFlag().install()
    seed = int(h["seed"])
    seed_all(seed)

    # ------------------------------------------------------------------ the step plan
    # every rank draws the same seeded permutation per epoch and takes its own slice: resume needs no data state
    split = CachedSplit("train", task.FIELDS)
    total, steps_per_epoch, micro_batches = batch_plan(
        len(split), int(h["per_device_train_batch_size"]), int(h["gradient_accumulation_steps"]),
        rt.world, rt.rank, seed, float(cfg["n_epochs"]), max_steps)

    # ------------------------------------------------------------------ model
    # from model_id with a fresh head, or from the newest checkpoint that verifies; LoRA when training_method is lora
    resume = None if smoke else resumable_checkpoint()
    model = load_train_model(task, cfg, meta, resume)
    if h["gradient_checkpointing"]:
        model.gradient_checkpointing_enable()
    model.to(rt.device)
    if task.channels_last(model) and rt.device.type == "cuda":
        model.to(memory_format=torch.channels_last)
        meta["channels_last"] = True  # task.to_inputs lays the batches out to match
    model.train()

    # ------------------------------------------------------------------ optimizer, schedule, resume
    # AdamW without weight decay on biases and norms; fused kernels on CUDA; GradScaler only for fp16
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": float(h["weight_decay"])}, {"params": no_decay, "weight_decay": 0.0}],
        lr=float(h["learning_rate"]), fused=rt.device.type == "cuda")
    warmup = int(float(h["warmup_ratio"]) * total)
    scheduler = get_scheduler(h["lr_scheduler_type"], optimizer, num_warmup_steps=warmup, num_training_steps=total)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.amp_dtype == torch.float16 else None
    start = 0
    if resume is not None:
        state = torch.load(resume / "training_state.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
    if rt.device.type == "cuda":  # cuDNN autotuning pays off only on long runs (seconds per new shape)
        torch.backends.cudnn.benchmark = bool(h.get("cudnn_benchmark", total - start >= 2000))

    # FLOPs per sample for the MFU figure: counted once in the smoke job, off the training job's clock
    if smoke:
        first = split.take(micro_batches(0)[0])
        fps = flops_per_sample(model, task.to_inputs(first, rt, meta, train=False), rt)
    else:
        fps = read_json_file(REPORTS / "smoke.json").get("flops_per_sample")
    peak = rt.peak_flops()

    net = model  # what runs forward/backward; `model` stays the plain module that is saved
    if rt.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)
    if h["torch_compile"] and not smoke:
        net = torch.compile(net)

    # ------------------------------------------------------------------ data
    # the micro-batches of the remaining steps, gathered from the memory-mapped cache by one prefetch thread
    plan = [mb for s in range(start, total) for mb in micro_batches(s)]
    accum = len(micro_batches(0))
    workers = num_workers(cfg, rt.device, rt.world)
    it = Prefetcher(split, plan, pin=rt.device.type == "cuda") if workers > 0 else iter(loader(split, plan, 0, False))

    # ------------------------------------------------------------------ logging and checkpoint cadence
    logging_steps = 1 if smoke else int(h["logging_steps"])
    save_every, save_seconds = save_cadence(h, total)  # every N steps, else every S seconds of training
    writer = CheckpointWriter(model, keep=2, metrics_path=metrics_path, background=rt.device.type == "cuda")
    tracker = Tracker({} if smoke else cfg, rt, "train")
    # one full garbage collection now, and what survives (modules, model, optimizer) frozen out of later ones: an
    # automatic full collection inside a step stalls the GPU for a quarter of a second (measured on ConvNeXt-T)
    gc.collect()
    gc.freeze()
    # the start record marks the loop's first step; setup_s is everything before it in this job
    if rt.main:
        log_jsonl(metrics_path, {"event": "resume" if start else "start", "step": start, "total_steps": total,
                                 "steps_per_epoch": steps_per_epoch, "warmup_steps": warmup, "world_size": rt.world,
                                 "precision": rt.precision, "device": rt.gpu_name, "workers": workers,
                                 "flops_per_sample": fps, "setup_s": round(time.perf_counter() - job_start, 3),
                                 "time": time.time()})
    loss_sum = torch.zeros((), device=rt.device)  # summed on the device; read (one sync) only at logging steps
    window_samples, window_start, logged_at = 0, time.perf_counter(), start
    last = {"loss": None, "grad_norm": None}
    total_samples, run_start = 0, time.perf_counter()
    last_save = run_start

    # ------------------------------------------------------------------ the loop
    try:
        for step in range(start, total):
            # forward/backward over the step's micro-batches; DDP all-reduces gradients only on the last one
            for k in range(accum):
                batch = next(it)
                inputs = task.to_inputs(batch, rt, meta, train=True)
                sync = k == accum - 1 or rt.world == 1
                with net.no_sync() if (not sync and hasattr(net, "no_sync")) else nullcontext():
                    with rt.autocast():
                        loss = net(**inputs).loss / accum
                    (scaler.scale(loss) if scaler else loss).backward()
                loss_sum += loss.detach()
                n = int(batch["labels"].shape[0]) * rt.world
                window_samples += n
                total_samples += n
            if scaler:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(params, 1.0)  # 1.0 = the Trainer's max_grad_norm default
            if scaler:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            done = step + 1

            # log: mean loss over the window, grad norm, lr, throughput, MFU (the only host-device syncs of the loop)
            if done % logging_steps == 0 or done == total or step == start:
                if rt.world > 1:
                    torch.distributed.all_reduce(loss_sum)
                    loss_sum /= rt.world
                loss_val = float(loss_sum.item()) / max(1, done - logged_at)
                logged_at = done
                if rt.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - window_start
                sps = window_samples / dt if dt > 0 else None
                rec = {"step": done, "total_steps": total, "epoch": round(done / steps_per_epoch, 4), "loss": loss_val,
                       "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0], "samples_per_s": sps,
                       "mfu": (sps * fps / (peak * rt.world)) if (sps and fps and peak) else None, "time": time.time()}
                if rt.device.type == "cuda":
                    rec["max_memory_gb"] = torch.cuda.max_memory_allocated(rt.device) / 1e9
                if rt.main:
                    log_jsonl(metrics_path, rec)
                    tracker.log(rec)
                last = rec
                loss_sum.zero_()
                window_samples, window_start = 0, time.perf_counter()

            # preempted: a blocking checkpoint of this step, then exit 75 (run train.py again to resume from it)
            if not smoke and done < total and preempt.requested(rt, synced=done % logging_steps == 0):
                if rt.main:
                    writer.wait()  # an async save in flight completes first
                    path = save_checkpoint(model, optimizer, scheduler, scaler, done, 2)
                    log_jsonl(metrics_path, {"event": "preempted", "step": done, "total_steps": total,
                                             "signal": preempt.signum, "checkpoint": path.name, "time": time.time()})
                    print(f"signal {preempt.signum}: checkpoint {path.name} written at step {done}/{total}; "
                          f"run train.py again to resume", flush=True)
                rt.barrier()
                raise Preempted(done)

            # checkpoint: a CPU snapshot now, written by a background thread while training goes on
            if not smoke and done < total:
                if save_every is not None:
                    due = bool(save_every) and done % save_every == 0
                else:  # time-based: rank 0's clock decides for every rank
                    due = time.perf_counter() - last_save >= save_seconds
                    if rt.world > 1 and done % logging_steps:
                        due = False  # ranks agree only at logging steps (no extra sync per step)
                    elif rt.world > 1:
                        flag = torch.tensor([1.0 if due else 0.0], device=rt.device)
                        torch.distributed.broadcast(flag, 0)
                        due = bool(flag.item())
                if due:
                    if rt.main:
                        writer.save(optimizer, scheduler, scaler, done)
                    last_save = time.perf_counter()
                    rt.barrier()
    finally:
        gc.unfreeze()  # a long-lived interpreter (tao-finetune's job runner) can collect what this job leaves
        if isinstance(it, Prefetcher):
            it.close()
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    runtime = time.perf_counter() - run_start
    writer.wait()
    tracker.finish()
    result = {"loss": last["loss"], "grad_norm": last["grad_norm"], "steps": total - start,
              "finite_loss": last["loss"] is not None and math.isfinite(last["loss"]),
              "grad_norm_positive": last["grad_norm"] is not None and math.isfinite(last["grad_norm"]) and last["grad_norm"] > 0}
    if smoke:
        return {**result, "step1": last, "flops_per_sample": fps}

    # ------------------------------------------------------------------ final save
    # checkpoints/final: plain transformers weights (LoRA merged) + the processor; no optimizer state
    if rt.main:
        save_start = time.perf_counter()
        try:
            write_final(export_model(model), task, cfg, meta)
        except OSError as err:
            raise SystemExit(f"could not write checkpoints/final ({type(err).__name__}: {err}); "
                             f"the step checkpoints and earlier results are kept") from None
        summary = {"total_steps": total, "resumed_from": start, "train_runtime_s": round(runtime, 2),
                   "train_samples_per_s": total_samples / runtime if runtime > 0 else None, "final_loss": last["loss"],
                   "mfu": last.get("mfu"), "precision": rt.precision, "device": rt.gpu_name, "world_size": rt.world,
                   "checkpoints_saved": writer.saved, "checkpoints_failed": writer.failed,
                   "final_save_s": round(time.perf_counter() - save_start, 3)}
        write_json(REPORTS / "train_summary.json", summary)
        log_jsonl(metrics_path, {"event": "done", **summary, "time": time.time()})
    rt.barrier()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fine-tune the model in config.yaml on the cached data.")
    ap.add_argument("--smoke", action="store_true", help="run --max_steps steps (default 1) and write reports/smoke.json")
    ap.add_argument("--max_steps", type=int, default=None, help="override hyperparameters.max_steps")
    args = ap.parse_args(argv)
    cfg = load_config()
    meta = read_meta()
    rt = Runtime(cfg)  # device, torchrun ranks, precision
    max_steps = args.max_steps if args.max_steps is not None else (1 if args.smoke else int(hp(cfg)["max_steps"]))
    try:
        # --smoke: reports/smoke.json says whether the steps gave a finite loss and a positive gradient norm (or the error)
        with smoke_report(args.smoke and rt.main, max_steps) as report:
            result = train(cfg, meta, rt, args.smoke, max_steps)
            report.update(result, passed=bool(result["finite_loss"] and result["grad_norm_positive"]))
    except Preempted:
        return PREEMPTED_EXIT
    finally:
        rt.close()
    return 1 if (args.smoke and not report["passed"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
