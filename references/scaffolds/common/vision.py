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
"""What the object-detection and semantic-segmentation task.py share: the pixel statistics on the device, the channels-
last choice, and the set-up of run_eval.py and infer.py (arguments, config, the model to evaluate or sample, the eval
split). The task-specific parts (predictions, metrics, drawings) stay in each task.py.
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import common

_STATS: dict = {}


def pixel_stats(meta: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The processor's mean and std scaled to 0-255 as [1,C,1,1] tensors on `device` (made once per device)."""
    key = str(device)
    if key not in _STATS:
        _STATS[key] = (torch.tensor(meta["image_mean"], device=device).view(1, -1, 1, 1) * 255.0,
                       torch.tensor(meta["image_std"], device=device).view(1, -1, 1, 1) * 255.0)
    return _STATS[key]


def channels_last(model) -> bool:
    """Convolutional backbones run faster in channels-last layout."""
    return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) > 2


@dataclass
class EvalRun:
    """run_eval.py's inputs: the config, the model under evaluation (baseline or final) and where its results go."""

    cfg: dict
    h: dict
    meta: dict
    rt: common.Runtime
    model: torch.nn.Module
    source: str
    out_path: Path
    baseline: bool


def open_eval(auto_cls, metric: str, argv: list[str] | None) -> EvalRun:
    """Parse run_eval.py's flags, seed, and load model_id with a fresh head (--baseline) or checkpoints/final."""
    ap = argparse.ArgumentParser(description=f"Evaluate on the cached eval split ({metric}).")
    ap.add_argument("--baseline", action="store_true", help="evaluate model_id with an untrained head -> reports/baseline_results.json")
    args = ap.parse_args(argv)
    cfg = common.load_config()
    h = common.hp(cfg)
    meta = common.read_meta()
    rt = common.Runtime(cfg)
    common.seed_all(int(h.get("seed", 42)))
    if args.baseline:
        source, out_path = cfg["model_id"], common.REPORTS / "baseline_results.json"
    else:
        if not common.final_dir().is_dir():
            raise SystemExit("checkpoints/final is missing: run train.py first")
        source, out_path = str(common.final_dir()), common.REPORTS / "eval_results.json"
    model = common.load_model(auto_cls, source, meta, fresh_head=args.baseline).to(rt.device).eval()
    return EvalRun(cfg, h, meta, rt, model, source, out_path, args.baseline)


@dataclass
class InferRun:
    """infer.py's inputs: checkpoints/final loaded, a seeded sample of eval rows as one batch, an emptied output folder."""

    cfg: dict
    meta: dict
    rt: common.Runtime
    model: torch.nn.Module
    source: str
    idx: np.ndarray
    batch: dict
    out_dir: Path


def open_infer(auto_cls, what: str, fields: tuple[str, ...], argv: list[str] | None) -> InferRun:
    """Parse infer.py's flags, load checkpoints/final, take --n seeded eval rows, empty reports/inference_samples/."""
    ap = argparse.ArgumentParser(description=f"Write {what} samples from checkpoints/final.")
    ap.add_argument("--n", type=int, default=5, help="number of samples")
    args = ap.parse_args(argv)
    cfg = common.load_config()
    meta = common.read_meta()
    rt = common.Runtime(cfg)
    if not common.final_dir().is_dir():
        raise SystemExit("checkpoints/final is missing: run train.py first")
    source = str(common.final_dir())
    model = common.load_model(auto_cls, source, meta, fresh_head=False).to(rt.device).eval()
    split = common.CachedSplit("eval", fields)
    rng = np.random.default_rng(int(common.hp(cfg).get("seed", 42)))
    idx = np.sort(rng.choice(len(split), size=min(args.n, len(split)), replace=False))
    out_dir = common.REPORTS / "inference_samples"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    return InferRun(cfg, meta, rt, model, source, idx, split.take(idx), out_dir)
