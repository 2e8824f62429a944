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
"""Shared code of the generated project's scripts: config, the data cache and its prefetcher, Runtime (device, ranks,
precision), model loading and LoRA, checkpoint IO, the step plan, metrics. The training loop itself is in train.py.

Only torch, transformers, numpy and PyYAML are needed here (the training image may lack `datasets`).
API sources (transformers 5.x, checked against the installed 5.24 source):
- https://huggingface.co/docs/transformers/main/en/model_doc/auto (from_pretrained: num_labels, id2label,
  label2id, ignore_mismatched_sizes, attn_implementation) and transformers/modeling_utils.py
- https://huggingface.co/docs/transformers/main/en/attention_interface (attn_implementation="sdpa")
- torch.distributed.run (torchrun env vars), https://docs.pytorch.org/docs/stable/amp.html (autocast bf16)
- torch/utils/flop_counter.py (FlopCounterMode, used for the MFU estimate; counted once in the smoke job, never in train)
- transformers/modeling_utils.py PreTrainedModel.save_pretrained(state_dict=...) (saves a given CPU copy; tied weights
  are dropped from it by the model's own rules), https://docs.pytorch.org/docs/stable/backends.html (cudnn.benchmark)
- torch/distributed/elastic/agent/server/api.py (torchrun forwards SIGTERM to its workers, then waits before SIGKILL)
- https://slurm.schedmd.com/sbatch.html (--signal, --requeue: a SIGTERM/SIGUSR1 before the time limit or on scancel)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(os.environ.get("TAO_PROJECT_DIR") or Path.cwd()).resolve()
DATA = ROOT / "data"
REPORTS = ROOT / "reports"
CKPT = ROOT / "checkpoints"
LOGS = ROOT / "logs"
METRICS = LOGS / "metrics.jsonl"
SPLITS = ("train", "eval")
# bf16 dense peak per GPU (datasheets); MFU is reported only for cards listed here
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "B200": 2250e12, "A100": 312e12,
                   "L40S": 362e12, "L40": 181e12, "A10": 125e12, "L4": 121e12, "RTX 4090": 165e12}


def load_config() -> dict:
    """The `project:` section of config.yaml: the only input of this project, complete (no defaults are kept here).

    The agent writes it (Steps 1-3: columns, split plan, skipped files, hyperparameters, recipe values); to change a
    value, edit it there or re-run the agent with --set.
    """
    data = yaml.safe_load((ROOT / "config.yaml").read_text()) or {}
    if not isinstance(data.get("project"), dict):
        raise SystemExit(f"{ROOT / 'config.yaml'} has no project: section; it is written by tao-finetune's Steps 1-3")
    return data["project"]


def hp(cfg: dict) -> dict:
    """The hyperparameters section."""
    return cfg["hyperparameters"]


def recipe_class(cfg: dict, slot: str):
    """The transformers class a recipe slot names (model_class, processor_class): the first class name in its value.

    Step 3 records these slots with their sources; the project loads exactly what they say (no fallback here).
    """
    import re

    import transformers

    value = str(cfg["recipe"].get(slot) or "")
    for name in re.findall(r"\b[A-Z][A-Za-z0-9]+\b", value):
        cls = getattr(transformers, name, None)
        if isinstance(cls, type):
            return cls
    raise SystemExit(f"config.yaml project.recipe.{slot} = {value!r} names no transformers class; record one in Step 3")


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (a failed write, e.g. a full disk, leaves the previous file as it was)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=float))
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def read_json_file(path: Path) -> dict:
    """A JSON object from a file, {} when it is absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def read_meta() -> dict:
    """The data/meta.json written by prepare_data.py."""
    path = DATA / "meta.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run prepare_data.py first")
    return json.loads(path.read_text())


def seed_all(seed: int) -> None:
    """Seed python, numpy and torch."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------- data cache


def save_split(split: str, arrays: dict[str, np.ndarray]) -> None:
    """Write one split as .npy arrays (memory-mapped at training time)."""
    DATA.mkdir(parents=True, exist_ok=True)
    for name, arr in arrays.items():
        np.save(DATA / f"{split}_{name}.npy", arr)


class CachedSplit:
    """A split of the cache: memory-mapped arrays, batches gathered by index (no per-sample Python)."""

    def __init__(self, split: str, fields: tuple[str, ...]):
        self.arrays = {f: np.load(DATA / f"{split}_{f}.npy", mmap_mode="r") for f in fields}
        self.n = len(self.arrays["labels"])

    def __len__(self) -> int:
        return self.n

    def take(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        idx = np.sort(np.asarray(idx))
        return {k: torch.from_numpy(np.ascontiguousarray(a[idx])) for k, a in self.arrays.items()}


class Batches(torch.utils.data.Dataset):
    """A list of index batches over a CachedSplit; item i is one whole batch."""

    def __init__(self, split: CachedSplit, batches: list[np.ndarray]):
        self.split, self.batches = split, batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.split.take(self.batches[i])


def num_workers(cfg: dict, device: torch.device, world: int) -> int:
    """Data-loader workers: the configured number, or derived from CPUs (0 on CPU-only runs). Training reads the
    cache with one prefetch thread when this is > 0 (see Prefetcher), in the loop itself when 0."""
    n = int(hp(cfg)["dataloader_num_workers"])
    if n >= 0:
        return n
    if device.type != "cuda":
        return 0
    return max(2, min(8, (os.cpu_count() or 2) // max(1, world)))


def loader(split: CachedSplit, batches: list[np.ndarray], workers: int, pin: bool) -> torch.utils.data.DataLoader:
    """A DataLoader that yields pre-gathered batches."""
    kw = {"prefetch_factor": 4, "persistent_workers": False} if workers > 0 else {}
    return torch.utils.data.DataLoader(Batches(split, batches), batch_size=None, shuffle=False,
                                       num_workers=workers, pin_memory=pin, **kw)


class Prefetcher:
    """Batches of the cache gathered (and pinned) by one background thread, `depth` ahead of the training loop.

    The cache needs no decoding, only a memory-mapped gather (numpy releases the GIL for it), so a thread keeps up with
    the GPU; worker processes would each be forked from a process holding a CUDA context and a model (tens of ms each,
    paid at every job start). Iterate it; close() stops the thread early (an exception in the loop)."""

    def __init__(self, split: CachedSplit, batches: list[np.ndarray], pin: bool, depth: int = 8):
        import queue

        self.split, self.batches, self.pin = split, batches, pin
        self.q: "queue.Queue" = queue.Queue(depth)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="prefetch", daemon=True)
        self.thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self.stop.is_set():
            try:
                self.q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for b in self.batches:
                batch = self.split.take(b)
                if self.pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                if not self._put(batch):
                    return
            self._put(StopIteration())
        except BaseException as err:  # noqa: BLE001  (re-raised in the training loop)
            self._put(err)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        item = self.q.get()
        if isinstance(item, StopIteration):
            self.q.put(item)
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def eval_batches(n: int, batch_size: int) -> list[np.ndarray]:
    """Sequential batches over n items."""
    return [np.arange(i, min(n, i + batch_size)) for i in range(0, n, batch_size)]


# ---------------------------------------------------------------- devices


class Runtime:
    """Device, distributed ranks and mixed precision for this process."""

    def __init__(self, cfg: dict):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        cuda = torch.cuda.is_available()
        if self.world > 1:
            torch.distributed.init_process_group("nccl" if cuda else "gloo")
        self.device = torch.device(f"cuda:{self.local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            # cuDNN autotuning costs seconds per new shape (~9 s on ConvNeXt-T's first step): only long runs turn it on
            torch.backends.cudnn.benchmark = False
        precision = hp(cfg)["precision"]
        if precision == "auto":
            precision = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if cuda else "fp32"
        self.precision = precision
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        self.gpu_name = torch.cuda.get_device_name(self.device) if cuda else "cpu"

    @property
    def main(self) -> bool:
        return self.rank == 0

    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()

    def close(self) -> None:
        if self.world > 1:
            torch.distributed.destroy_process_group()

    def peak_flops(self) -> float | None:
        if self.device.type != "cuda" or self.amp_dtype is None:
            return None
        name = self.gpu_name.upper()
        for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
            if key in name:
                return PEAK_BF16_FLOPS[key]
        return None


# ---------------------------------------------------------------- models


def label_maps(meta: dict) -> dict:
    names = meta["label_names"]
    return {"num_labels": len(names), "id2label": dict(enumerate(names)), "label2id": {n: i for i, n in enumerate(names)}}


def load_model(auto_cls, source: str, meta: dict, fresh_head: bool = True):
    """Load a classification model with the dataset's labels; SDPA where the architecture has it."""
    kw = label_maps(meta)
    if fresh_head:
        kw["ignore_mismatched_sizes"] = True
    attn = os.environ.get("TAO_ATTN_IMPLEMENTATION", "sdpa")
    try:
        return auto_cls.from_pretrained(source, attn_implementation=attn, **kw)
    except ValueError as err:
        if "attention implementation" not in str(err) and "attn_implementation" not in str(err):
            raise
        return auto_cls.from_pretrained(source, **kw)


# ---------------------------------------------------------------- LoRA (peft)
# Sources: peft 0.21 (installed) peft/tuners/lora/config.py (LoraConfig: r, lora_alpha, lora_dropout, target_modules
# matched as exact names or name suffixes, modules_to_save kept fully trainable), peft/peft_model.py (get_peft_model,
# PeftModel.from_pretrained(..., is_trainable=True), merge_and_unload), https://huggingface.co/docs/peft/main/en/developer_guides/lora


def lora_spec(cfg: dict) -> dict | None:
    """LoRA settings {r, alpha, dropout, target_modules} when the run trains with LoRA, else None.

    Reads config.yaml's `project:` section (ProjectSpec.training_method / .lora); when that section is not filled yet,
    the run config itself (hyperparameters.training_method, lora_r), so both layouts of config.yaml work.
    """
    proj = cfg.get("project") if isinstance(cfg.get("project"), dict) and cfg["project"].get("model_id") else cfg
    method = proj.get("training_method") if proj.get("training_method") == "lora" else hp(proj).get("training_method")
    if method != "lora":
        return None
    lora = proj.get("lora") or {}
    return {"r": int(lora.get("r") or proj.get("lora_r") or cfg.get("lora_r") or 16),
            "alpha": int(lora.get("alpha") or 2 * int(lora.get("r") or proj.get("lora_r") or cfg.get("lora_r") or 16)),
            "dropout": float(lora.get("dropout", 0.05)), "target_modules": lora.get("target_modules") or None}


def derive_lora_targets(model, within: str | None = None, exclude: list[str] | None = None) -> list[str]:
    """LoRA targets read from the loaded model: every nn.Linear inside a repeated block (a numbered layer), optionally
    only under the submodule `within` (e.g. a VLM's text model) and never under a module of `exclude` (the task heads,
    trained whole: a SegFormer decode head's per-stage projections are numbered too). Attention and MLP projections
    under whatever names this transformers version gives them; heads, embeddings and connectors are never targeted."""
    out = []
    skip = tuple(f"{h}." for h in exclude or ())
    for name, mod in model.named_modules():
        if not isinstance(mod, torch.nn.Linear) or (within and not name.startswith(within + ".")):
            continue
        if skip and (name + ".").startswith(skip):
            continue
        if any(part.isdigit() for part in name.split(".")[:-1]):
            out.append(name)
    if not out:
        raise SystemExit("no nn.Linear inside repeated layers: LoRA targets cannot be derived; set project.lora.target_modules")
    return out


def head_modules(model) -> list[str]:
    """The task head(s): top-level children other than the backbone (base_model_prefix) that hold parameters."""
    prefix = getattr(model, "base_model_prefix", "")
    return [n for n, m in model.named_children() if n != prefix and any(True for _ in m.parameters())]


def apply_lora(model, spec: dict, within: str | None = None, modules_to_save: list[str] | None = None):
    """Wrap a model with LoRA adapters (targets from the spec, else derived); returns (peft model, summary)."""
    from peft import LoraConfig, get_peft_model

    derived = spec["target_modules"] is None
    targets = list(spec["target_modules"]) if not derived else derive_lora_targets(model, within, exclude=modules_to_save)
    conf = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"], target_modules=targets,
                      modules_to_save=modules_to_save or None)
    model = get_peft_model(model, conf)
    return model, lora_summary(model, targets, derived, modules_to_save)


def lora_summary(model, targets: list[str], derived: bool, modules_to_save: list[str] | None) -> dict:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    leaves = sorted({t.rsplit(".", 1)[-1] for t in targets})
    return {"trainable_params": int(trainable), "total_params": int(total), "trainable_share": trainable / max(1, total),
            "target_modules": leaves, "n_target_modules": len(targets), "targets_derived": derived,
            "modules_to_save": list(modules_to_save or [])}


def load_train_model(task, cfg: dict, meta: dict, resume: Path | None):
    """The model to train: full fine-tuning from model_id (or the resume checkpoint), or LoRA on model_id with the
    classification head kept trainable (peft modules_to_save); a LoRA resume loads the saved adapter + head."""
    spec = lora_spec(cfg)
    if spec is None:
        return load_model(task.AUTO_CLASS, str(resume or cfg["model_id"]), meta, fresh_head=resume is None)
    base = load_model(task.AUTO_CLASS, cfg["model_id"], meta, fresh_head=True)
    if resume is not None:
        from peft import PeftModel

        return PeftModel.from_pretrained(base, str(resume), is_trainable=True)
    model, summary = apply_lora(base, spec, modules_to_save=head_modules(base))
    write_json(REPORTS / "lora.json", {**summary, "r": spec["r"], "alpha": spec["alpha"], "dropout": spec["dropout"]})
    print(f"LoRA r={spec['r']}: {summary['trainable_params']:,} of {summary['total_params']:,} parameters trainable "
          f"(targets {summary['target_modules']}, head {summary['modules_to_save']})")
    return model


def export_model(model):
    """What checkpoints/final holds: a LoRA model merged into plain transformers weights (loads without peft)."""
    if hasattr(model, "merge_and_unload"):
        return model.merge_and_unload()
    return model


def final_dir() -> Path:
    return CKPT / "final"


def flops_per_sample(model, example: dict, rt: Runtime) -> float | None:
    """Training FLOPs per sample: 3x the forward FLOPs of one training micro-batch, per row. Counted on the training
    batch's own shapes (not a one-row batch): on GPU every new input shape costs a kernel choice (~0.8 s per shape for
    ConvNeXt's convolutions in cuDNN 9), so this forward readies step 1's kernels instead of adding a shape."""
    from torch.utils.flop_counter import FlopCounterMode

    batch = {k: v.to(rt.device) for k, v in example.items() if k != "labels"}
    rows = next((int(v.shape[0]) for v in batch.values() if getattr(v, "ndim", 0)), 1)
    try:
        with torch.no_grad(), rt.autocast(), FlopCounterMode(display=False) as fc:
            model(**batch)
    except (RuntimeError, TypeError, NotImplementedError):
        return None
    total = fc.get_total_flops()
    return 3.0 * total / rows if total else None


def pad_rows(inputs: dict, rows: int) -> dict:
    """A short batch padded to `rows` rows with copies of its first row (predictions of the copies are dropped): one
    input shape for every batch, so a GPU chooses its kernels once (the last eval batch and infer's few samples would
    each add a shape: ~0.7-0.9 s apiece for ConvNeXt-T in cuDNN 9 without autotuning, measured on an H200)."""
    out = {}
    for k, v in inputs.items():
        n = int(v.shape[0]) if getattr(v, "ndim", 0) else 0
        out[k] = torch.cat([v, v[:1].expand(rows - n, *v.shape[1:])]) if 0 < n < rows else v
    return out


# ---------------------------------------------------------------- metrics


def classification_metrics(preds: np.ndarray, labels: np.ndarray, num_labels: int) -> dict:
    """Accuracy, macro-F1 and per-class F1."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    acc = float((preds == labels).mean()) if len(labels) else 0.0
    f1s, per_class = [], []
    for c in range(num_labels):
        tp = int(((preds == c) & (labels == c)).sum())
        fp = int(((preds == c) & (labels != c)).sum())
        fn = int(((preds != c) & (labels == c)).sum())
        per_class.append({"precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0,
                          "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0, "support": tp + fn})
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    hist = np.bincount(preds.astype(int), minlength=num_labels).tolist() if len(preds) else [0] * num_labels
    return {"accuracy": acc, "macro_f1": float(np.mean(f1s)) if f1s else 0.0, "prediction_histogram": hist,
            "per_class": per_class}


class Tracker:
    """Training curves beyond logs/metrics.jsonl (rank 0 only); where they went is written to reports/tracking.json.

    - TensorBoard, the default that needs no account: event files in logs/tensorboard/ through
      torch.utils.tensorboard.SummaryWriter (torch/utils/tensorboard/writer.py; it needs the `tensorboard` package,
      listed in requirements.txt). View them with `tensorboard --logdir logs/tensorboard`.
    - Weights & Biases when config.yaml has `wandb: true` (tao-finetune sets it with --wandb, or when WANDB_API_KEY is
      present) and WANDB_MODE is not `disabled`. Without WANDB_API_KEY (or with WANDB_MODE=offline) the run is offline:
      its files stay in logs/wandb/offline-run-*/ and `wandb sync <that dir>` uploads them later
      (wandb.init(dir=, mode=), run.settings.sync_dir: wandb/sdk/wandb_init.py, wandb_settings.py; wandb 0.31).
    A tracker that cannot start prints one line and training goes on: the metrics log stays the record.
    """

    TB_DIR = LOGS / "tensorboard"
    SKIP = ("step", "time", "total_steps")

    def __init__(self, cfg: dict, rt: "Runtime", job: str):
        self.run = self.tb = None
        if not cfg or not rt.main:
            return
        info: dict = {}
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(log_dir=str(self.TB_DIR))
            info["tensorboard"] = {"logdir": str(self.TB_DIR.relative_to(ROOT))}
        except ImportError as err:  # torch.utils.tensorboard raises ImportError when tensorboard is missing
            print(f"tracker: no TensorBoard event files ({err}); pip install tensorboard")
            info["tensorboard"] = {"error": "the tensorboard package is not installed"}
        if cfg.get("wandb") and os.environ.get("WANDB_MODE") != "disabled":
            info["wandb"] = self._start_wandb(cfg, job)
        write_json(REPORTS / "tracking.json", info)

    def _start_wandb(self, cfg: dict, job: str) -> dict:
        try:
            import wandb
        except ImportError:
            print("tracker: wandb is on in config.yaml but not installed (pip install wandb); metrics stay in logs/metrics.jsonl")
            return {"error": "the wandb package is not installed"}
        offline = not os.environ.get("WANDB_API_KEY") and not os.environ.get("WANDB_MODE")
        try:
            # console="off": wandb would otherwise wrap this process's stdout, which the job runner reads
            self.run = wandb.init(project=os.environ.get("WANDB_PROJECT") or "tao-finetune", name=f"{Path(cfg['model_id']).name}-{job}",
                                  dir=str(LOGS), mode="offline" if offline else None, settings=wandb.Settings(console="off"),
                                  config={"model_id": cfg["model_id"], "n_train": cfg["splits"]["n_train"], **hp(cfg)})
        except Exception as err:  # wandb's own errors (auth, network, its service): the tracker must not end the training
            line = (str(err).strip().splitlines() or [""])[0][:200]
            print(f"tracker: wandb did not start ({type(err).__name__}: {line}); metrics stay in logs/metrics.jsonl")
            return {"error": f"{type(err).__name__}: {line}"}
        sync_dir = Path(self.run.settings.sync_dir).resolve()
        rel = str(sync_dir.relative_to(ROOT)) if sync_dir.is_relative_to(ROOT) else str(sync_dir)
        mode = str(self.run.settings.mode)
        print(f"tracker: wandb {mode} run " + (self.run.url or f"{rel} (upload it with: wandb sync {rel})"))
        return {"mode": mode, "url": self.run.url, "project": self.run.project, "run_dir": rel}

    def log(self, record: dict) -> None:
        if "step" not in record or "event" in record:
            return
        values = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in self.SKIP}
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(f"train/{k}", v, record["step"])
        if self.run is not None:
            self.run.log(values, step=record["step"])

    def finish(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.run is not None:
            self.run.finish()
            self.run = None


def log_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line and flush (the platform reads this for progress)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(record, default=float) + "\n")
        f.flush()


# ---------------------------------------------------------------- checkpoints

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: a checkpoint was written on a signal; run train.py again to resume


class Preempted(Exception):
    """Training stopped on SIGTERM/SIGUSR1 after writing a checkpoint (scheduler time limit, scancel, docker stop)."""


class PreemptFlag:
    """Records SIGTERM/SIGUSR1; the loop checks it at a step boundary, so the checkpoint is consistent."""

    def __init__(self):
        self.signum = 0
        self._old = {}

    def install(self) -> "PreemptFlag":
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            self._old[sig] = signal.signal(sig, self._set)
        return self

    def _set(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def requested(self, rt, synced: bool) -> bool:
        """True when any rank got the signal; with several ranks only at steps where they all call this (synced)."""
        if rt.world == 1:
            return bool(self.signum)
        if not synced:
            return False
        flag = torch.tensor([1.0 if self.signum else 0.0], device=rt.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())



def complete_checkpoints() -> list[Path]:
    """Checkpoint dirs with a completion marker, oldest first (not yet verified: see resumable_checkpoint)."""
    if not CKPT.is_dir():
        return []
    out = [p for p in CKPT.glob("step-*") if (p / "complete.json").is_file() and p.name.split("-")[1].isdigit()]
    return sorted(out, key=lambda p: int(p.name.split("-")[1]))


def file_digest(path: Path) -> str:
    """sha256 of a file, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def verify_checkpoint(ckpt: Path) -> str | None:
    """None if the checkpoint is whole (marker present, every file it lists has its recorded sha256), else why not."""
    try:
        marker = json.loads((ckpt / "complete.json").read_text())
    except (OSError, ValueError) as err:
        return f"completion marker unreadable ({type(err).__name__})"
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return "completion marker lists no file digests"
    for name, digest in files.items():
        f = ckpt / name
        if not f.is_file():
            return f"{name} is missing"
        if file_digest(f) != digest:
            return f"{name} does not match its digest"
    return None


def resumable_checkpoint(log=print) -> Path | None:
    """The newest checkpoint that verifies, falling back to older ones; a broken one is reported and skipped."""
    for ckpt in reversed(complete_checkpoints()):
        why = verify_checkpoint(ckpt)
        if why is None:
            return ckpt
        log(f"checkpoint {ckpt.name} skipped: {why}")
    return None


def _cpu_copy(obj, memo: dict):
    """A CPU copy of a (nested) state dict; tensors that share storage stay shared (tied weights)."""
    if isinstance(obj, torch.Tensor):
        key = (obj.untyped_storage().data_ptr(), obj.storage_offset(), tuple(obj.shape), tuple(obj.stride()), obj.dtype)
        if key not in memo:
            memo[key] = obj.detach().to("cpu", copy=True)
        return memo[key]
    if isinstance(obj, dict):
        return {k: _cpu_copy(v, memo) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_cpu_copy(v, memo) for v in obj)
    return obj


def snapshot(model, optimizer, scheduler, scaler, step: int) -> dict:
    """Everything a step checkpoint holds, copied to CPU now (the GPU keeps training while it is written)."""
    memo: dict = {}
    model_state = _cpu_copy(model.state_dict(), memo) if hasattr(model, "save_pretrained") else None
    state = {"optimizer": _cpu_copy(optimizer.state_dict(), memo), "scheduler": scheduler.state_dict(), "step": step,
             "rng": torch.get_rng_state(), "scaler": scaler.state_dict() if scaler else None}
    return {"model_state": model_state, "training_state": state, "step": step}


def write_checkpoint(model, snap: dict, keep: int) -> Path:
    """Write checkpoints/step-N from a snapshot: temp dir, sha256 of every file in the completion marker, rename.

    Older checkpoints are pruned only after the new one is complete, so a failed write (a full disk) leaves them and
    every result as they were; the temp dir is removed and the error re-raised."""
    step = snap["step"]
    target = CKPT / f"step-{step:07d}"
    tmp = CKPT / f".tmp-step-{step:07d}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(tmp, state_dict=snap["model_state"])
        torch.save(snap["training_state"], tmp / "training_state.pt")
        files = {p.name: file_digest(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        marker = tmp / "complete.json"
        marker.write_text(json.dumps({"step": step, "time": time.time(), "files": files}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in complete_checkpoints()[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def save_checkpoint(model, optimizer, scheduler, scaler, step: int, keep: int) -> Path:
    """Write checkpoints/step-N now (blocking); see write_checkpoint."""
    return write_checkpoint(model, snapshot(model, optimizer, scheduler, scaler, step), keep)


class CheckpointWriter:
    """Step checkpoints written by a background thread from a CPU snapshot taken at the step boundary.

    One save in flight at a time (a new one waits for the previous); a failed save (e.g. ENOSPC) is logged as a
    `checkpoint_failed` event, the previous checkpoints stay, and training goes on."""

    def __init__(self, model, keep: int, metrics_path: Path, background: bool = True):
        self.model, self.keep, self.metrics_path, self.background = model, keep, metrics_path, background
        self.thread: threading.Thread | None = None
        self.saved: list[int] = []
        self.failed: list[str] = []

    def _write(self, snap: dict) -> None:
        t0 = time.perf_counter()
        try:
            write_checkpoint(self.model, snap, self.keep)
        except Exception as err:  # noqa: BLE001  (a failed save must not kill the run; the event says why)
            msg = f"{type(err).__name__}: {err}"
            self.failed.append(msg)
            print(f"checkpoint step-{snap['step']:07d} not written ({msg}); previous checkpoints kept", flush=True)
            log_jsonl(self.metrics_path, {"event": "checkpoint_failed", "step": snap["step"], "error": msg, "time": time.time()})
            return
        self.saved.append(snap["step"])
        log_jsonl(self.metrics_path, {"event": "checkpoint", "step": snap["step"], "seconds": round(time.perf_counter() - t0, 3),
                                      "time": time.time()})

    def save(self, optimizer, scheduler, scaler, step: int) -> None:
        self.wait()
        snap = snapshot(self.model, optimizer, scheduler, scaler, step)
        if not self.background or snap["model_state"] is None:
            self._write(snap)
            return
        self.thread = threading.Thread(target=self._write, args=(snap,), name=f"ckpt-{step}", daemon=False)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()
            self.thread = None


def save_cadence(h: dict, total: int) -> tuple[int | None, float]:
    """(every N steps, or None) and (every S seconds): TAO_SAVE_STEPS / hyperparameters.save_steps pin a step cadence
    (0 = only the final save); otherwise a checkpoint is due every TAO_SAVE_SECONDS / save_seconds (600 s) of training,
    so a run shorter than that writes none and a long one loses at most that much on a crash."""
    steps = os.environ.get("TAO_SAVE_STEPS") or h.get("save_steps")
    if steps not in (None, ""):
        return int(steps), 0.0
    return None, float(os.environ.get("TAO_SAVE_SECONDS") or h.get("save_seconds") or 600.0)


def write_final(model, task, cfg: dict, meta: dict) -> Path:
    """checkpoints/final via a temp dir; an existing final is replaced only once the new one is whole."""
    tmp = CKPT / ".tmp-final"
    old = CKPT / ".old-final"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        model.save_pretrained(tmp)
        task.save_processor(cfg, meta, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if final_dir().exists():
        os.replace(final_dir(), old)
    os.replace(tmp, final_dir())
    shutil.rmtree(old, ignore_errors=True)
    return final_dir()


def batch_plan(n: int, per_device: int, accum: int, world: int, rank: int, seed: int,
               epochs: float, max_steps: int) -> tuple[int, int, callable]:
    """Total optimizer steps, steps per epoch, and a function step -> list of this rank's micro-batches."""
    per_device = max(1, min(per_device, n // world or 1))
    micro_per_epoch = max(1, n // (per_device * world))
    accum = max(1, min(accum, micro_per_epoch))
    steps_per_epoch = max(1, micro_per_epoch // accum)
    total = max_steps if max_steps and max_steps > 0 else max(1, math.ceil(epochs * steps_per_epoch))
    perms: dict[int, np.ndarray] = {}

    def micro_batches(step: int) -> list[np.ndarray]:
        out = []
        for k in range(accum):
            m = step * accum + k
            epoch, pos = divmod(m, steps_per_epoch * accum)
            if epoch not in perms:
                perms.clear()
                perms[epoch] = np.random.default_rng(seed + epoch).permutation(n)
            start = (pos * world + rank) * per_device
            out.append(perms[epoch][start:start + per_device])
        return out

    return total, steps_per_epoch, micro_batches


@contextmanager
def smoke_report(write: bool, max_steps: int):
    """The record of a train.py --smoke run: `passed` (set by the caller with the step's figures) or the exception that
    ended it (re-raised); written to reports/smoke.json with its duration when `write` (rank 0 of a smoke run)."""
    record: dict = {"passed": False, "max_steps": max_steps, "exception": None}
    started = time.time()
    try:
        yield record
    except Exception as err:  # the report must record any failure before it propagates
        record["exception"] = f"{type(err).__name__}: {err}"
        if write:
            write_json(REPORTS / "smoke.json", {**record, "seconds": round(time.time() - started, 2)})
        raise
    if write:
        write_json(REPORTS / "smoke.json", {**record, "seconds": round(time.time() - started, 2)})
        print(f"smoke {'PASSED' if record['passed'] else 'FAILED'}: loss={record.get('loss')} grad_norm={record.get('grad_norm')}")


# ---------------------------------------------------------------- evaluation


_DEVICE_CACHE: dict = {}
DEVICE_CACHE_BYTES = 4 << 30


def device_batches(split: CachedSplit, rt: Runtime, batch_size: int):
    """The split's batches, moved to the device once and kept for this process's later jobs (under the persistent
    job runner the baseline eval, the final eval and infer share them); splits over 4 GiB are streamed instead."""
    batches = eval_batches(len(split), batch_size)
    size = sum(a.nbytes for a in split.arrays.values())
    if size > DEVICE_CACHE_BYTES:
        return (split.take(b) for b in batches)
    stamp = tuple((str(a.filename), os.stat(a.filename).st_mtime_ns) for a in split.arrays.values() if getattr(a, "filename", None))
    key = (stamp, batch_size, str(rt.device))
    if key not in _DEVICE_CACHE:
        _DEVICE_CACHE.clear()
        _DEVICE_CACHE[key] = [{k: v.to(rt.device, non_blocking=True) for k, v in split.take(b).items()} for b in batches]
    return _DEVICE_CACHE[key]


def predict(task, model, split: CachedSplit, meta: dict, rt: Runtime, batch_size: int,
            pad: bool | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Predictions, top-1 probabilities, labels and mean cross-entropy over a cached split. On GPU (pad=None) a short
    last batch is padded to batch_size (pad_rows) and its extra rows dropped: the same figures, one shape fewer."""
    pad = rt.device.type == "cuda" if pad is None else pad
    model.eval()
    preds, probs, labels, losses = [], [], [], []
    for batch in device_batches(split, rt, batch_size):
        inputs = task.to_inputs(batch, rt, meta, train=False)
        n = len(batch["labels"])
        with torch.no_grad(), rt.autocast():
            logits = model(**(pad_rows(inputs, batch_size) if pad else inputs)).logits[:n].float()
        top = logits.softmax(-1).max(-1)
        preds.append(top.indices)
        probs.append(top.values)
        labels.append(batch["labels"])
        # the models' single-label loss (CrossEntropyLoss on the logits), summed on the device: one transfer at the end
        losses.append(torch.nn.functional.cross_entropy(logits, batch["labels"].to(logits.device).long(), reduction="sum"))
    labels_arr = torch.cat(labels).cpu().numpy()
    loss = float(torch.stack(losses).sum()) / max(1, len(labels_arr))
    return torch.cat(preds).cpu().numpy(), torch.cat(probs).cpu().numpy(), labels_arr, loss


def evaluate(task, argv: list[str] | None = None) -> int:
    """run_eval.py: baseline (untrained head) or the fine-tuned checkpoints/final on the eval split."""
    import argparse

    ap = argparse.ArgumentParser(description="Evaluate on the cached eval split.")
    ap.add_argument("--baseline", action="store_true", help="evaluate model_id with an untrained head -> reports/baseline_results.json")
    args = ap.parse_args(argv)
    cfg = load_config()
    h = hp(cfg)
    meta = read_meta()
    rt = Runtime(cfg)
    seed_all(int(h["seed"]))
    if args.baseline:
        source, out = cfg["model_id"], REPORTS / "baseline_results.json"
    else:
        if not final_dir().is_dir():
            raise SystemExit("checkpoints/final is missing: run train.py first")
        source, out = str(final_dir()), REPORTS / "eval_results.json"
    model = load_model(task.AUTO_CLASS, source, meta, fresh_head=args.baseline).to(rt.device)
    split = CachedSplit("eval", task.FIELDS)
    t0 = time.perf_counter()
    preds, _, labels, loss = predict(task, model, split, meta, rt, int(h["per_device_eval_batch_size"]))
    dt = time.perf_counter() - t0
    res = {"primary_metric": "accuracy", **classification_metrics(preds, labels, len(meta["label_names"])),
           "eval_loss": loss, "n_eval": int(len(labels)), "num_labels": len(meta["label_names"]),
           "model": source, "baseline": args.baseline, "eval_runtime_s": round(dt, 3),
           "eval_samples_per_s": len(labels) / dt if dt > 0 else None, "task": cfg["task_type"]}
    write_json(out, res)
    print(json.dumps({k: res[k] for k in ("primary_metric", "accuracy", "macro_f1", "n_eval")}))
    rt.close()
    return 0


def infer(task, argv: list[str] | None = None) -> int:
    """infer.py: predict a few eval samples with checkpoints/final and write them to reports/inference_samples/."""
    import argparse

    ap = argparse.ArgumentParser(description="Write prediction samples from checkpoints/final.")
    ap.add_argument("--n", type=int, default=5, help="number of samples")
    args = ap.parse_args(argv)
    cfg = load_config()
    meta = read_meta()
    rt = Runtime(cfg)
    if not final_dir().is_dir():
        raise SystemExit("checkpoints/final is missing: run train.py first")
    model = load_model(task.AUTO_CLASS, str(final_dir()), meta, fresh_head=False).to(rt.device)
    split = CachedSplit("eval", task.FIELDS)
    idx = np.random.default_rng(int(hp(cfg)["seed"])).choice(len(split), size=min(args.n, len(split)), replace=False)
    idx = np.sort(idx)
    batch = split.take(idx)
    inputs = task.to_inputs(batch, rt, meta, train=False)
    model.eval()
    rows = max(len(idx), int(hp(cfg)["per_device_eval_batch_size"])) if rt.device.type == "cuda" else len(idx)
    with torch.no_grad(), rt.autocast():  # on GPU the eval batch's shape, whose kernels the evals have chosen
        probs = model(**pad_rows(inputs, rows)).logits[:len(idx)].float().softmax(-1).cpu()
    out_dir = REPORTS / "inference_samples"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    names = meta["label_names"]
    summary = []
    for j, i in enumerate(idx):
        score, pred = probs[j].max(-1)
        item = {"index": int(i), "true_label": names[int(batch["labels"][j])], "prediction": names[int(pred)],
                "score": round(float(score), 4)}
        item["file"] = task.write_sample(out_dir, j, i, batch, item, meta)
        summary.append(item)
    write_json(REPORTS / "inference_summary.json", {"samples": summary, "model": str(final_dir())})
    print(json.dumps(summary))
    rt.close()
    return 0
