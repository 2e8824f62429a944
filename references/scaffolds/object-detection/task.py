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
"""Object-detection specifics: model class, cached fields, the on-device collator, COCO mAP, drawn samples.

The collator (to_inputs) crops the batch to its largest image (DETR pads each batch to its own max size), builds
pixel_mask (1 = real pixel) where the architecture takes one, flips images with their boxes, and turns the cached
absolute xyxy boxes into the labels DETR-family models expect: one dict per image with `class_labels` and `boxes` as
cxcywh normalised to the padded size. Predictions go through the processor's post_process_object_detection; mAP,
mAP@50, mAP@75, mAR@100 and per-class AP come from pycocotools' COCOeval (the COCO reference implementation).
Sources (installed transformers 5.24): models/detr/modeling_detr.py (DetrForObjectDetection.forward labels format),
models/detr/image_processing_pil_detr.py (pad + pixel_mask + post_process_object_detection),
https://huggingface.co/docs/transformers/main/en/tasks/object_detection (threshold=0 for mAP, target_sizes),
https://github.com/ppwwyyxx/cocoapi/blob/master/PythonAPI/pycocotools/cocoeval.py (eval['precision'] [T,R,K,A,M]).
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoImageProcessor, AutoModelForObjectDetection

import common
import vision
from vision import channels_last  # noqa: F401 (the training loop asks the task)

AUTO_CLASS = AutoModelForObjectDetection
FIELDS = ("pixel_values", "sizes", "boxes", "labels")
SCORE_TO_DRAW = 0.5


def flip_boxes(boxes: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Mirror absolute xyxy boxes inside images of the given widths: x1' = w - x2, x2' = w - x1."""
    w = width.to(boxes.dtype).view(-1, *([1] * (boxes.dim() - 2)))
    return torch.stack([w - boxes[..., 2], boxes[..., 1], w - boxes[..., 0], boxes[..., 3]], -1)


def to_inputs(batch: dict, rt, meta: dict, train: bool) -> dict:
    """Cached batch -> model inputs: crop to the batch's largest image, normalise, flip (with boxes), pixel_mask, labels."""
    sizes = batch["sizes"].long()
    hb, wb = int(sizes[:, 0].max()), int(sizes[:, 1].max())
    x = batch["pixel_values"][:, :, :hb, :wb].to(rt.device, non_blocking=True)
    boxes = batch["boxes"].float().clone()
    labels = batch["labels"].long()
    mean, std = vision.pixel_stats(meta, rt.device)
    x = (x.float() - mean) / std
    if train and meta.get("hflip"):
        flip = (torch.rand(len(x)) < 0.5).tolist()
        for i in [i for i, f in enumerate(flip) if f]:
            w = int(sizes[i, 1])
            x[i, :, :, :w] = x[i, :, :, :w].flip(-1)
            boxes[i] = flip_boxes(boxes[i][None], sizes[i:i + 1, 1])[0]
    rows = torch.arange(hb, device=rt.device).view(1, -1, 1) < sizes[:, 0].to(rt.device).view(-1, 1, 1)
    cols = torch.arange(wb, device=rt.device).view(1, 1, -1) < sizes[:, 1].to(rt.device).view(-1, 1, 1)
    mask = (rows & cols).long()
    x = x * mask[:, None]  # padding is 0 after normalisation, as the processor pads
    if rt.device.type == "cuda" and meta.get("channels_last"):
        x = x.contiguous(memory_format=torch.channels_last)
    scale = torch.tensor([wb, hb, wb, hb], dtype=torch.float32)
    targets = []
    for i in range(len(x)):
        keep = labels[i] >= 0
        b = boxes[i][keep] / scale
        cxcywh = torch.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], -1)
        targets.append({"class_labels": labels[i][keep].to(rt.device), "boxes": cxcywh.to(rt.device)})
    out = {"pixel_values": x, "labels": targets}
    if meta.get("pixel_mask", True):
        out["pixel_mask"] = mask
    return out


def processor(source: str, meta: dict):
    """The image processor of `source` (its post_process_object_detection matches the architecture)."""
    try:
        return AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError) as err:
        raise SystemExit(f"no image processor for {source} ({type(err).__name__}); the model repo needs preprocessor_config.json") from None


def save_processor(cfg: dict, meta: dict, out: Path) -> None:
    """Save model_id's image processor next to the fine-tuned weights (infer and run_eval post-process with it)."""
    processor(cfg["model_id"], meta).save_pretrained(out)


# ---------------------------------------------------------------- predictions and COCO mAP


def targets_of(batch: dict, j: int) -> tuple[np.ndarray, np.ndarray]:
    keep = batch["labels"][j].numpy() >= 0
    return batch["boxes"][j].numpy()[keep], batch["labels"][j].numpy()[keep]


def predict(model, proc, batch: dict, rt, meta: dict, threshold: float = 0.0) -> tuple[list[dict], float]:
    """Post-processed detections (absolute xyxy on the canvas) and the batch loss."""
    inputs = to_inputs(batch, rt, meta, train=False)
    with torch.no_grad(), rt.autocast():
        out = model(**inputs)
    hw = [tuple(inputs["pixel_values"].shape[-2:])] * len(batch["labels"])
    out.logits, out.pred_boxes = out.logits.float(), out.pred_boxes.float()
    dets = proc.post_process_object_detection(out, threshold=threshold, target_sizes=hw)
    return [{k: v.detach().float().cpu().numpy() for k, v in d.items()} for d in dets], float(out.loss)


def coco_map(gts: list[tuple[np.ndarray, np.ndarray]], dets: list[dict], names: list[str], sizes: np.ndarray) -> dict:
    """mAP (IoU .50:.95), mAP@50, mAP@75, mAR@100 and per-class AP with pycocotools' COCOeval."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i, "height": int(sizes[i][0]), "width": int(sizes[i][1])} for i in range(len(gts))]
    anns = []
    for i, (boxes, labels) in enumerate(gts):
        for b, c in zip(boxes, labels):
            w, h = float(b[2] - b[0]), float(b[3] - b[1])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": int(c), "bbox": [float(b[0]), float(b[1]), w, h],
                         "area": w * h, "iscrowd": 0})
    if not anns:
        raise SystemExit("the eval split has no boxes: mAP is undefined")
    res = [{"image_id": i, "category_id": int(c), "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])],
            "score": float(s)} for i, d in enumerate(dets) for b, c, s in zip(d["boxes"], d["labels"], d["scores"])]
    out = {"map": 0.0, "map_50": 0.0, "map_75": 0.0, "mar_100": 0.0, "per_class_ap": {n: 0.0 for n in names}}
    if not res:
        return out
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns, "categories": [{"id": k, "name": n} for k, n in enumerate(names)]}
        gt.createIndex()
        dt = gt.loadRes(res)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = [max(0.0, float(v)) for v in ev.stats]  # -1 = no ground truth in that bucket
    out.update({"map": s[0], "map_50": s[1], "map_75": s[2], "mar_100": s[8]})
    prec = ev.eval["precision"]  # [iou thresholds, recall points, classes, area ranges, max dets]
    for k, cat in enumerate(ev.params.catIds):
        p = prec[:, :, k, 0, -1]
        p = p[p > -1]
        out["per_class_ap"][names[cat]] = float(p.mean()) if p.size else None  # None: class absent from eval
    return out


def evaluate(argv: list[str] | None = None) -> int:
    """run_eval.py: baseline (model_id with a fresh head) or checkpoints/final; COCO mAP on the cached eval split."""
    run = vision.open_eval(AUTO_CLASS, "COCO mAP", argv)
    h, meta, rt, model, source = run.h, run.meta, run.rt, run.model, run.source
    proc = processor(source, meta)
    split = common.CachedSplit("eval", FIELDS)
    gts, dets, losses = [], [], []
    t0 = time.perf_counter()
    for batch in common.loader(split, common.eval_batches(len(split), int(h.get("per_device_eval_batch_size", 8))), 0, False):
        d, loss = predict(model, proc, batch, rt, meta)
        dets += d
        gts += [targets_of(batch, j) for j in range(len(d))]
        losses.append(loss * len(d))
    dt = time.perf_counter() - t0
    m = coco_map(gts, dets, meta["label_names"], np.asarray(split.arrays["sizes"]))
    res = {"primary_metric": "map", **m, "eval_loss": sum(losses) / max(1, len(gts)), "n_eval": len(gts),
           "n_boxes": int(sum(len(g[1]) for g in gts)), "num_labels": len(meta["label_names"]), "model": source,
           "baseline": run.baseline, "eval_runtime_s": round(dt, 3), "eval_samples_per_s": len(gts) / dt if dt > 0 else None,
           "task": "object-detection"}
    common.write_json(run.out_path, res)
    print(json.dumps({k: res[k] for k in ("primary_metric", "map", "map_50", "map_75", "n_eval")}))
    rt.close()
    return 0


# ---------------------------------------------------------------- samples


def draw(pixels: np.ndarray, size: tuple[int, int], truth: list[dict], preds: list[dict], path: Path) -> None:
    """The image with true boxes (green) and predicted boxes (red: label and score), scaled up for small canvases."""
    from PIL import Image, ImageDraw

    h, w = size
    img = Image.fromarray(pixels[:, :h, :w].transpose(1, 2, 0).astype(np.uint8))
    k = max(1, 320 // max(img.size))
    img = img.resize((img.width * k, img.height * k), Image.NEAREST)
    canvas = Image.new("RGB", (max(img.width, 320), img.height + 36), "white")
    canvas.paste(img, (0, 0))
    d = ImageDraw.Draw(canvas)
    for t in truth:
        d.rectangle([v * k for v in t["box"]], outline=(0, 200, 0), width=2)
    for p in preds:
        b = [v * k for v in p["box"]]
        d.rectangle(b, outline=(230, 0, 0), width=2)
        d.text((b[0] + 2, max(0, b[1] - 11)), f"{p['label']} {p['score']:.2f}", fill=(230, 0, 0))
    d.text((4, img.height + 4), f"green: {len(truth)} true box(es)", fill="black")
    d.text((4, img.height + 19), f"red: {len(preds)} prediction(s) (score >= {SCORE_TO_DRAW} or top 3)", fill="black")
    canvas.save(path)


def infer(argv: list[str] | None = None) -> int:
    """infer.py: detect objects in a few eval images with checkpoints/final; draw boxes, labels and scores."""
    run = vision.open_infer(AUTO_CLASS, "detection", FIELDS, argv)
    meta, rt, source, idx, batch, out_dir = run.meta, run.rt, run.source, run.idx, run.batch, run.out_dir
    dets, _ = predict(run.model, processor(source, meta), batch, rt, meta)
    names = meta["label_names"]
    summary = []
    for j, i in enumerate(idx):
        boxes, labels = targets_of(batch, j)
        truth = [{"label": names[int(c)], "box": [round(float(v), 1) for v in b]} for b, c in zip(boxes, labels)]
        order = np.argsort(-dets[j]["scores"])
        keep = [k for k in order if dets[j]["scores"][k] >= SCORE_TO_DRAW] or list(order[:3])
        preds = [{"label": names[int(dets[j]["labels"][k])] if int(dets[j]["labels"][k]) < len(names) else str(int(dets[j]["labels"][k])),
                  "score": round(float(dets[j]["scores"][k]), 4), "box": [round(float(v), 1) for v in dets[j]["boxes"][k]]} for k in keep]
        name = f"sample_{j}_idx{int(i)}.png"
        draw(batch["pixel_values"][j].numpy(), tuple(int(v) for v in batch["sizes"][j]), truth, preds, out_dir / name)
        summary.append({"index": int(i), "file": name, "true": truth, "predictions": preds})
    common.write_json(common.REPORTS / "inference_summary.json", {"samples": summary, "model": source})
    print(json.dumps([{"file": s["file"], "true": len(s["true"]), "predictions": s["predictions"][:3]} for s in summary]))
    rt.close()
    return 0
