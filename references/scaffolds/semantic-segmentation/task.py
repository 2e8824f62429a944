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
"""Semantic-segmentation specifics: model class, cached fields, joint image-mask transforms, mIoU, mask overlays.

The model's loss ignores the cache's ignore value (semantic_loss_ignore_index). Train-time transforms run on the
device: a horizontal flip applied to image and mask together, and brightness/contrast jitter on the image only.
Evaluation upsamples the logits bilinearly to the mask size, takes the argmax and accumulates a confusion matrix
over non-ignored pixels: mean IoU (over classes present in labels or predictions, as evaluate's mean_iou does),
per-class IoU, pixel accuracy and mean class accuracy.
Sources (installed transformers 5.24): models/segformer/modeling_segformer.py (logits at 1/4 resolution, loss on
logits upsampled to the labels, CrossEntropyLoss(ignore_index=config.semantic_loss_ignore_index)),
https://huggingface.co/docs/transformers/main/en/tasks/semantic_segmentation (upsample logits, argmax, mean_iou),
https://huggingface.co/spaces/evaluate-metric/mean_iou (the metric's definition: nanmean of per-class IoU).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForSemanticSegmentation

import common
import vision
from vision import channels_last  # noqa: F401 (the training loop asks the task)

FIELDS = ("pixel_values", "labels")


class AUTO_CLASS:  # noqa: N801 (stands in for an Auto class in common.load_model)
    """AutoModelForSemanticSegmentation whose loss ignores the cache's ignore value (data/meta.json)."""

    @staticmethod
    def from_pretrained(source: str, **kw):
        kw.setdefault("semantic_loss_ignore_index", int(common.read_meta().get("cache_ignore_index", 255)))
        return AutoModelForSemanticSegmentation.from_pretrained(source, **kw)


def joint_transform(x: torch.Tensor, y: torch.Tensor, meta: dict, gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float 0-255 images [N,3,H,W] and masks [N,H,W]: the same horizontal flip for both; jitter on the image only."""
    n = x.shape[0]
    if meta.get("hflip"):
        flip = (torch.rand(n, generator=gen) < 0.5).to(x.device)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        y = torch.where(flip.view(-1, 1, 1), y.flip(-1), y)
    if meta.get("color_jitter"):
        b = (1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.5).to(x.device)  # brightness 0.75-1.25
        c = (1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.5).to(x.device)  # contrast 0.75-1.25
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x * b - mean) * c + mean).clamp(0, 255)
    return x, y


def to_inputs(batch: dict, rt, meta: dict, train: bool) -> dict:
    """uint8 images + class-id masks -> normalised float pixels and int64 labels on the device."""
    x = batch["pixel_values"].to(rt.device, non_blocking=True).float()
    y = batch["labels"].to(rt.device, non_blocking=True).long()
    if train:
        x, y = joint_transform(x, y, meta)
    mean, std = vision.pixel_stats(meta, rt.device)
    x = (x - mean) / std
    if rt.device.type == "cuda" and meta.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    return {"pixel_values": x, "labels": y}


def save_processor(cfg: dict, meta: dict, out: Path) -> None:
    """Save the image processor next to the weights (model_id's, else one built from the cache's size and stats)."""
    try:
        proc = AutoImageProcessor.from_pretrained(cfg["model_id"])
    except (OSError, ValueError):
        from transformers import SegformerImageProcessor

        proc = SegformerImageProcessor(size={"height": meta["size"], "width": meta["size"]}, image_mean=meta["image_mean"],
                                       image_std=meta["image_std"])
    proc.save_pretrained(out)


# ---------------------------------------------------------------- metrics


def predict_masks(model, batch: dict, rt, meta: dict) -> tuple[torch.Tensor, float]:
    """Argmax class ids at the mask size (logits upsampled bilinearly) and the batch loss."""
    inputs = to_inputs(batch, rt, meta, train=False)
    with torch.no_grad(), rt.autocast():
        out = model(**inputs)
    logits = torch.nn.functional.interpolate(out.logits.float(), size=inputs["labels"].shape[-2:], mode="bilinear",
                                             align_corners=False)
    return logits.argmax(1).cpu(), float(out.loss)


def confusion(pred: torch.Tensor, label: torch.Tensor, n: int, ignore: int) -> torch.Tensor:
    """n x n counts (rows = true class, columns = predicted) over non-ignored pixels."""
    valid = label != ignore
    idx = label[valid].long() * n + pred[valid].long()
    return torch.bincount(idx, minlength=n * n).reshape(n, n)


def segmentation_metrics(cm: np.ndarray, names: list[str]) -> dict:
    """mean IoU, per-class IoU, pixel accuracy and mean accuracy from a confusion matrix."""
    cm = cm.astype(np.float64)
    tp = np.diag(cm)
    gt, pr = cm.sum(1), cm.sum(0)
    union = gt + pr - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        acc = np.where(gt > 0, tp / gt, np.nan)
    return {"mean_iou": float(np.nanmean(iou)) if np.isfinite(iou).any() else 0.0,
            "pixel_accuracy": float(tp.sum() / cm.sum()) if cm.sum() else 0.0,
            "mean_accuracy": float(np.nanmean(acc)) if np.isfinite(acc).any() else 0.0,
            "per_class_iou": {n: (None if np.isnan(v) else float(v)) for n, v in zip(names, iou)}}


def evaluate(argv: list[str] | None = None) -> int:
    """run_eval.py: baseline (model_id with a fresh head) or checkpoints/final; mIoU on the cached eval split."""
    run = vision.open_eval(AUTO_CLASS, "mean IoU", argv)
    h, meta, rt, model, source = run.h, run.meta, run.rt, run.model, run.source
    split = common.CachedSplit("eval", FIELDS)
    names = meta["label_names"]
    cm = torch.zeros(len(names), len(names), dtype=torch.long)
    losses, n = [], 0
    t0 = time.perf_counter()
    for batch in common.loader(split, common.eval_batches(len(split), int(h.get("per_device_eval_batch_size", 8))), 0, False):
        pred, loss = predict_masks(model, batch, rt, meta)
        cm += confusion(pred, batch["labels"].long(), len(names), int(meta["cache_ignore_index"]))
        losses.append(loss * len(pred))
        n += len(pred)
    dt = time.perf_counter() - t0
    res = {"primary_metric": "mean_iou", **segmentation_metrics(cm.numpy(), names), "eval_loss": sum(losses) / max(1, n),
           "n_eval": n, "num_labels": len(names), "model": source, "baseline": run.baseline, "eval_runtime_s": round(dt, 3),
           "eval_samples_per_s": n / dt if dt > 0 else None, "task": "semantic-segmentation"}
    common.write_json(run.out_path, res)
    print(json.dumps({k: res[k] for k in ("primary_metric", "mean_iou", "pixel_accuracy", "n_eval")}))
    rt.close()
    return 0


# ---------------------------------------------------------------- samples


def palette(n: int) -> np.ndarray:
    """n distinct colours (golden-ratio hues); index n = the ignore colour (black)."""
    import colorsys

    cols = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb((k * 0.618034) % 1, 0.75, 0.95)) for k in range(n)]
    return np.asarray(cols + [(0, 0, 0)], np.uint8)


def overlay(img: np.ndarray, mask: np.ndarray, pal: np.ndarray, ignore: int, alpha: float = 0.5) -> np.ndarray:
    m = np.where(mask == ignore, len(pal) - 1, mask)
    return (img * (1 - alpha) + pal[m] * alpha).astype(np.uint8)


def draw(pixels: np.ndarray, truth: np.ndarray, pred: np.ndarray, names: list[str], ignore: int, item: dict, path: Path) -> None:
    """Image | true mask overlay | predicted mask overlay, with a colour legend of the classes present."""
    from PIL import Image, ImageDraw

    img = pixels.transpose(1, 2, 0)
    pal = palette(len(names))
    panels = [img, overlay(img, truth, pal, ignore), overlay(img, pred, pal, ignore)]
    k = max(1, 192 // img.shape[0])
    tiles = [Image.fromarray(t).resize((t.shape[1] * k, t.shape[0] * k), Image.NEAREST) for t in panels]
    w, h = tiles[0].size
    present = sorted({int(v) for v in np.unique(truth) if v != ignore} | {int(v) for v in np.unique(pred)})
    canvas = Image.new("RGB", (max(3 * w + 8, 360), h + 36 + 14 * len(present)), "white")
    d = ImageDraw.Draw(canvas)
    for i, t in enumerate(tiles):
        canvas.paste(t, (i * (w + 4), 20))
    for i, title in enumerate(("image", "true", f"predicted (IoU {item['mean_iou']:.2f})")):
        d.text((i * (w + 4) + 2, 4), title, fill="black")
    for j, c in enumerate(present):
        y = h + 26 + 14 * j
        d.rectangle([4, y, 14, y + 10], fill=tuple(int(v) for v in pal[c]))
        d.text((20, y - 1), names[c] if c < len(names) else str(c), fill="black")
    canvas.save(path)


def infer(argv: list[str] | None = None) -> int:
    """infer.py: segment a few eval images with checkpoints/final; mask overlays with a legend."""
    run = vision.open_infer(AUTO_CLASS, "segmentation", FIELDS, argv)
    meta, rt, source, idx, batch, out_dir = run.meta, run.rt, run.source, run.idx, run.batch, run.out_dir
    pred, _ = predict_masks(run.model, batch, rt, meta)
    names, ignore = meta["label_names"], int(meta["cache_ignore_index"])
    summary = []
    for j, i in enumerate(idx):
        truth, p = batch["labels"][j].numpy(), pred[j].numpy()
        m = segmentation_metrics(confusion(pred[j], batch["labels"][j].long(), len(names), ignore).numpy(), names)
        item = {"index": int(i), "mean_iou": round(m["mean_iou"], 4), "pixel_accuracy": round(m["pixel_accuracy"], 4),
                "predicted_classes": sorted({names[int(c)] for c in np.unique(p)})}
        item["file"] = f"sample_{j}_idx{int(i)}.png"
        draw(batch["pixel_values"][j].numpy(), truth, p, names, ignore, item, out_dir / item["file"])
        summary.append(item)
    common.write_json(common.REPORTS / "inference_summary.json", {"samples": summary, "model": source})
    print(json.dumps(summary))
    rt.close()
    return 0
