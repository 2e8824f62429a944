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

The whole training loop, in the order it runs: config → processor and model (LoRA on the text model when
training_method is lora) → optimizer and schedule → resume → data → the loop (forward/backward with gradient
accumulation, clipping, logging, checkpoints every fifth of the run) → final save. Chat prompts go through the model's
processor (task.Collator) with the loss on the answer tokens only; bf16 autocast on GPU; resumable checkpoints in
checkpoints/step-N, checkpoints/final (the adapter for LoRA, else the model) + processor, logs/metrics.jsonl
(samples/s, tokens/s, memory). A resume restores the RNG, so LoRA dropout continues exactly.
A NaN or flat loss is judged from logs/metrics.jsonl by the agent (tao-finetune's train_status), which stops the
run; this loop only logs (one host-device sync per logging step, none in between besides checkpoint saves).
Sources: https://github.com/karpathy/nanoGPT/blob/master/train.py (one loop, read top to bottom);
https://huggingface.co/docs/transformers/main/en/main_classes/optimizer_schedules (get_scheduler);
https://docs.pytorch.org/docs/stable/generated/torch.optim.AdamW.html (fused=True on CUDA);
https://docs.pytorch.org/docs/stable/notes/ddp.html (DistributedDataParallel, no_sync for gradient accumulation);
https://docs.pytorch.org/docs/stable/amp.html (autocast, GradScaler for fp16). The models and collator: task.py.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import time
from contextlib import nullcontext

import torch
from transformers import get_scheduler

import task
from common import (CKPT, LOGS, REPORTS, Runtime, Tracker, batch_plan, complete_checkpoints, final_dir, hp, load_config,
                    log_jsonl, num_workers, save_checkpoint, seed_all, smoke_report, write_json)


def train(cfg: dict, rt: Runtime, smoke: bool, max_steps: int) -> dict:
    """Train (or, with smoke, run max_steps steps); returns the last logged record's figures."""
    h = hp(cfg)
    seed = int(h.get("seed", 42))
    seed_all(seed)

    # ------------------------------------------------------------------ the step plan
    rows = task.read_rows("train")
    total, steps_per_epoch, micro_batches = batch_plan(
        len(rows), int(h.get("per_device_train_batch_size", 4)), int(h.get("gradient_accumulation_steps", 1)),
        rt.world, rt.rank, seed, float(cfg["n_epochs"]), max_steps)

    # ------------------------------------------------------------------ processor and model
    # full fine-tuning in fp32 master weights, or LoRA on the text model (the frozen base in the autocast dtype)
    resume = None if smoke else (complete_checkpoints() or [None])[-1]
    processor = task.load_processor(cfg["model_id"])
    model, lora = task.train_model(cfg, rt, resume)
    if lora and rt.main and not smoke:
        write_json(REPORTS / "lora.json", lora)
    if lora:
        print(f"LoRA r={lora.get('r')}: {lora['trainable_params']:,} of {lora['total_params']:,} parameters trainable "
              f"({lora['n_target_modules']} modules {lora['target_modules']} under {lora.get('within')})")
    if h.get("gradient_checkpointing") and lora is None:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False
    model.to(rt.device)
    model.train()

    # ------------------------------------------------------------------ optimizer, schedule, resume
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": float(h.get("weight_decay", 0.0))}, {"params": no_decay, "weight_decay": 0.0}],
        lr=float(h.get("learning_rate", 1e-4)), fused=rt.device.type == "cuda")
    warmup = int(float(h.get("warmup_ratio", 0.0)) * total)
    scheduler = get_scheduler(h.get("lr_scheduler_type", "linear"), optimizer, num_warmup_steps=warmup, num_training_steps=total)
    scaler = torch.amp.GradScaler(rt.device.type) if rt.amp_dtype == torch.float16 else None
    start = 0
    if resume is not None:
        state = torch.load(resume / "training_state.pt", map_location="cpu", weights_only=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
    net = model  # what runs forward/backward; `model` stays the plain module that is saved
    if rt.world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[rt.local_rank] if rt.device.type == "cuda" else None)

    # ------------------------------------------------------------------ data
    # the micro-batches of the remaining steps, rendered and collated by loader workers
    accum = len(micro_batches(0))
    plan = [mb for s in range(start, total) for mb in micro_batches(s)]
    workers = num_workers(cfg, rt.device, rt.world)
    it = iter(task.make_loader(rows, plan, task.Collator(processor, train=True), workers, rt.device.type == "cuda"))

    # ------------------------------------------------------------------ logging and checkpoint cadence
    metrics_path = LOGS / ("smoke_metrics.jsonl" if smoke else "metrics.jsonl")
    logging_steps = 1 if smoke else int(h.get("logging_steps", 10))
    save_every = int(os.environ.get("TAO_SAVE_STEPS") or max(1, total // 5))
    if rt.main:
        log_jsonl(metrics_path, {"event": "resume" if start else "start", "step": start, "total_steps": total,
                                 "steps_per_epoch": steps_per_epoch, "warmup_steps": warmup, "world_size": rt.world,
                                 "precision": rt.precision, "device": rt.gpu_name, "workers": workers,
                                 "training_method": "lora" if lora else "full",
                                 "trainable_params": sum(p.numel() for p in params), "time": time.time()})
    tracker = Tracker({} if smoke else cfg, rt, "train")
    if resume is not None and state.get("rng") is not None:  # after every setup draw: dropout continues exactly
        torch.set_rng_state(state["rng"])
    loss_sum = torch.zeros((), device=rt.device)  # summed on the device; read (one sync) only at logging steps
    win_samples = win_tokens = 0
    win_start, logged_at = time.perf_counter(), start
    last = {"loss": None, "grad_norm": None}
    total_samples = total_tokens = answer_tokens = 0
    run_start = time.perf_counter()

    # ------------------------------------------------------------------ the loop
    for step in range(start, total):
        # forward/backward over the step's micro-batches; DDP all-reduces gradients only on the last one
        for k in range(accum):
            batch = next(it)
            answer_tokens += int((batch["labels"] != -100).sum())  # counted on the CPU copy: no device sync
            n_tok = int(batch["attention_mask"].sum())
            batch = task.to_device(batch, rt)
            sync = k == accum - 1 or rt.world == 1
            with net.no_sync() if (not sync and hasattr(net, "no_sync")) else nullcontext():
                with rt.autocast():
                    loss = net(**batch).loss / accum
                (scaler.scale(loss) if scaler else loss).backward()
            loss_sum += loss.detach()
            n = int(batch["input_ids"].shape[0]) * rt.world
            win_samples += n
            total_samples += n
            win_tokens += n_tok * rt.world
            total_tokens += n_tok * rt.world
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

        # log: mean loss over the window, grad norm, lr, samples/s and tokens/s (the only host-device syncs of the loop)
        if done % logging_steps == 0 or done == total or step == start:
            if rt.world > 1:
                torch.distributed.all_reduce(loss_sum)
                loss_sum /= rt.world
            loss_val = float(loss_sum.item()) / max(1, done - logged_at)
            logged_at = done
            if rt.device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - win_start
            rec = {"step": done, "total_steps": total, "epoch": round(done / steps_per_epoch, 4), "loss": loss_val,
                   "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": win_samples / dt if dt > 0 else None, "tokens_per_s": win_tokens / dt if dt > 0 else None,
                   "time": time.time()}
            if rt.device.type == "cuda":
                rec["max_memory_gb"] = torch.cuda.max_memory_allocated(rt.device) / 1e9
            if rt.main:
                log_jsonl(metrics_path, rec)
                tracker.log(rec)
            last = rec
            loss_sum.zero_()
            win_samples = win_tokens = 0
            win_start = time.perf_counter()

        # checkpoint (blocking) every save_every steps: weights or adapter, optimizer, scheduler, RNG
        if not smoke and save_every and done % save_every == 0 and done < total:
            if rt.main:
                save_checkpoint(model, optimizer, scheduler, scaler, done, 2)
            rt.barrier()
    runtime = time.perf_counter() - run_start
    tracker.finish()
    result = {"loss": last["loss"], "grad_norm": last["grad_norm"], "steps": total - start, "answer_tokens": answer_tokens,
              "finite_loss": last["loss"] is not None and math.isfinite(last["loss"]),
              "grad_norm_positive": last["grad_norm"] is not None and math.isfinite(last["grad_norm"]) and last["grad_norm"] > 0}
    if smoke:
        return {**result, "step1": last}

    # ------------------------------------------------------------------ final save
    # checkpoints/final: the adapter for LoRA (merge_lora.py merges it), else the whole model; + the processor
    if rt.main:
        tmp = CKPT / ".tmp-final"
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        shutil.rmtree(final_dir(), ignore_errors=True)
        os.replace(tmp, final_dir())
        summary = {"total_steps": total, "resumed_from": start, "train_runtime_s": round(runtime, 2),
                   "train_samples_per_s": total_samples / runtime if runtime > 0 else None,
                   "train_tokens_per_s": total_tokens / runtime if runtime > 0 else None, "final_loss": last["loss"],
                   "max_memory_gb": last.get("max_memory_gb"), "precision": rt.precision, "device": rt.gpu_name,
                   "world_size": rt.world, "training_method": "lora" if lora else "full",
                   "trainable_params": sum(p.numel() for p in params)}
        write_json(REPORTS / "train_summary.json", summary)
        log_jsonl(metrics_path, {"event": "done", **summary, "time": time.time()})
    rt.barrier()
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Fine-tune the VLM in config.yaml on data/train.jsonl.")
    ap.add_argument("--smoke", action="store_true", help="run --max_steps steps (default 1) and write reports/smoke.json")
    ap.add_argument("--max_steps", type=int, default=None, help="override hyperparameters.max_steps")
    args = ap.parse_args(argv)
    cfg = task.settings(load_config())
    rt = Runtime(cfg)  # device, torchrun ranks, precision
    max_steps = args.max_steps if args.max_steps is not None else (1 if args.smoke else int(hp(cfg).get("max_steps", -1)))
    try:
        # --smoke: reports/smoke.json says whether the steps gave a finite loss, a positive gradient norm and answer tokens
        with smoke_report(args.smoke and rt.main, max_steps) as report:
            result = train(cfg, rt, args.smoke, max_steps)
            report.update(result, passed=bool(result["finite_loss"] and result["grad_norm_positive"]
                                              and result["answer_tokens"] > 0))
    finally:
        rt.close()
    return 1 if (args.smoke and not report["passed"]) else 0


if __name__ == "__main__":
    raise SystemExit(main())
