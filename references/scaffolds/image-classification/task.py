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
"""Image-classification specifics: model class, cached fields, on-device normalisation, sample drawing.

Sources: https://huggingface.co/docs/transformers/main/en/tasks/image_classification (AutoModelForImageClassification,
label maps, mean/std normalisation from the image processor); the classes are the recipe's model_class / processor_class; https://pillow.readthedocs.io/en/stable/reference/ImageDraw.html
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from common import load_config, recipe_class


# the recipe's model_class (Step 3; e.g. AutoModelForImageClassification) is the class every job loads: task.AUTO_CLASS
def __getattr__(name: str):
    """AUTO_CLASS is resolved on first use, so `script.py --help` needs no config (PEP 562 module attribute)."""
    if name == "AUTO_CLASS":
        return recipe_class(load_config(), "model_class")
    raise AttributeError(name)


FIELDS = ("pixel_values", "labels")
_STATS: dict = {}


def _stats(meta: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    key = str(device)
    if key not in _STATS:
        mean = torch.tensor(meta["image_mean"], device=device).view(1, -1, 1, 1) * 255.0
        std = torch.tensor(meta["image_std"], device=device).view(1, -1, 1, 1) * 255.0
        _STATS[key] = (mean, std)
    return _STATS[key]


def to_inputs(batch: dict, rt, meta: dict, train: bool) -> dict:
    """uint8 NCHW batch -> normalised float pixels on the device (one fused pass instead of per-sample work)."""
    x = batch["pixel_values"].to(rt.device, non_blocking=True)
    mean, std = _stats(meta, rt.device)
    x = (x.float() - mean) / std
    if train and meta.get("hflip"):
        flip = torch.rand(x.shape[0], device=x.device) < 0.5
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if rt.device.type == "cuda" and meta.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    return {"pixel_values": x, "labels": batch["labels"].to(rt.device, non_blocking=True)}


def channels_last(model) -> bool:
    """Convolutional backbones run faster in channels-last layout."""
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    return convs > 2


def save_processor(cfg: dict, meta: dict, out: Path) -> None:
    """Save the image processor next to the fine-tuned weights (from model_id, else one built from the cache's stats)."""
    try:
        proc = recipe_class(cfg, "processor_class").from_pretrained(cfg["model_id"])
    except (OSError, ValueError):
        from transformers import ViTImageProcessor

        proc = ViTImageProcessor(size={"height": meta["height"], "width": meta["width"]},
                                 image_mean=meta["image_mean"], image_std=meta["image_std"])
    proc.save_pretrained(out)


def write_sample(out_dir: Path, j: int, i: int, batch: dict, item: dict, meta: dict) -> str:
    """Draw the image with its true and predicted label; returns the file name."""
    from PIL import Image, ImageDraw

    arr = batch["pixel_values"][j].numpy().transpose(1, 2, 0).astype(np.uint8)
    img = Image.fromarray(arr)
    scale = max(1, 224 // max(img.size))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (max(img.width, 224), img.height + 40), "white")
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    ok = item["true_label"] == item["prediction"]
    draw.text((4, img.height + 4), f"true: {item['true_label']}", fill="black")
    draw.text((4, img.height + 20), f"pred: {item['prediction']} ({item['score']:.2f})", fill="darkgreen" if ok else "red")
    name = f"sample_{j}_idx{i}.png"
    canvas.save(out_dir / name)
    return name
