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
"""Prepare: `python prepare_data.py` -> data/{train,eval}_{pixel_values,sizes,boxes,labels}.npy + data/meta.json.

Reads config.yaml's project section: the dataset (COCO json, VOC xml, a Hub id with an `objects` column), the columns,
label names, split plan, skip_files, image_size and bbox_format. Each image is decoded once, resized so its longest
side is the canvas size (aspect kept; the model's processor resizes by longest edge too) and stored top-left on a
zero canvas with its (height, width); boxes are converted to absolute xyxy pixels on that canvas, clipped to the image
and dropped when degenerate (under 1 px wide or tall) or of an unknown class; the counts go to data/meta.json.
Normalisation, batch padding, the pixel mask and box normalisation to cxcywh happen on the device (task.to_inputs).
Sources: transformers/models/detr/image_processing_pil_detr.py (installed 5.24: resize by longest_edge, pad
bottom-right, boxes normalised to the padded size, pixel_mask 1 = real pixel),
https://huggingface.co/docs/transformers/main/en/tasks/object_detection (cppe-5: coco xywh boxes, dropping bad boxes).
"""

from __future__ import annotations

import inspect

import numpy as np
from PIL import Image

from annotated import (boxes_to_xyxy, decode_rows, names_flip, objects_of, open_annotated, plan, processor_spec, project,
                       recipe_text, skipped, to_pil)
from common import DATA, load_config, save_split, write_json

CANVAS_CAP = 800  # DETR's shortest_edge; a processor asking for more (longest_edge 1333) is capped unless image_size is set
_JOB: dict = {}


def wants_pixel_mask(model_id: str) -> bool:
    """Whether the architecture's forward takes pixel_mask (DETR, Conditional/Deformable DETR do)."""
    from transformers import AutoConfig, AutoModelForObjectDetection

    try:
        cls = AutoModelForObjectDetection._model_mapping[type(AutoConfig.from_pretrained(model_id))]
    except (KeyError, OSError, ValueError):
        return True
    return "pixel_mask" in inspect.signature(cls.forward).parameters


def source_row(row: dict, cols: dict, fmt: str) -> tuple[object, list, list]:
    """(image, absolute xyxy boxes, categories) from a canonical row (local COCO/VOC) or a Hub row with an objects column."""
    if "boxes" in row and "categories" in row:
        return row["image"], row["boxes"], row["categories"]
    img = row[cols.get("image") or "image"]
    boxes, cats = objects_of(row[cols.get("objects") or "objects"])
    return img, (boxes, fmt), cats


def fit_boxes(boxes: np.ndarray, cats: np.ndarray, scale: float, w: int, h: int, n_classes: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Scale to the canvas, clip to the image, drop degenerate (< 1 px) and unknown-class boxes; with counts."""
    counts = {"boxes_in": int(len(boxes)), "clipped": 0, "dropped_degenerate": 0, "dropped_unknown_class": 0}
    if not len(boxes):
        return np.zeros((0, 4), np.float32), np.zeros((0,), np.int64), counts
    b = boxes.astype(np.float64) * scale
    finite = np.isfinite(b).all(1)
    clipped = np.stack([b[:, 0].clip(0, w), b[:, 1].clip(0, h), b[:, 2].clip(0, w), b[:, 3].clip(0, h)], 1)
    counts["clipped"] = int((finite & (np.abs(clipped - b) > 1e-6).any(1)).sum())
    ok = finite & (clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1)
    counts["dropped_degenerate"] = int((~ok).sum())
    known = (cats >= 0) & (cats < n_classes)
    counts["dropped_unknown_class"] = int((ok & ~known).sum())
    keep = ok & known
    return clipped[keep].astype(np.float32), cats[keep].astype(np.int64), counts


def _decode(i: int):
    table, cols, fmt, size, index = _JOB["table"], _JOB["cols"], _JOB["fmt"], _JOB["size"], _JOB["index"]
    img, boxes, cats = source_row(table.row(i), cols, fmt)
    pil = to_pil(img)
    pil.load()
    pil = pil.convert("RGB")
    W, H = pil.size
    if isinstance(boxes, tuple):
        boxes = boxes_to_xyxy(boxes[0], boxes[1], W, H)
    scale = size / max(W, H)
    w, h = max(1, min(size, round(W * scale))), max(1, min(size, round(H * scale)))
    canvas = np.zeros((3, size, size), np.uint8)
    canvas[:, :h, :w] = np.asarray(pil.resize((w, h), Image.BILINEAR), np.uint8).transpose(2, 0, 1)
    ids = np.asarray([index.get(str(c), c if isinstance(c, (int, np.integer)) else -1) for c in cats], np.int64)
    b, c, counts = fit_boxes(np.asarray(boxes, np.float64).reshape(-1, 4), ids, scale, w, h, _JOB["n_classes"])
    return canvas, (h, w), b, c, counts


def build_split(table, idx: np.ndarray, p: dict, size: int, names: list[str]) -> tuple[list, dict]:
    """Decode the chosen rows (worker processes for large splits); Step 1's skip_files are left out."""
    skip = set(p["skip_files"])
    chosen = len(idx)
    idx = [int(i) for i in idx if not skipped(table.row(int(i)), skip)]
    _JOB.update(table=table, cols=p["columns"], fmt=p.get("bbox_format") or "coco", size=size, n_classes=len(names),
                index={n: k for k, n in enumerate(names)})
    out = decode_rows(_decode, idx)
    totals = {"images": len(out), "skipped_files": chosen - len(idx)}
    for *_, counts in out:
        for k, v in counts.items():
            totals[k] = totals.get(k, 0) + v
    totals["boxes_kept"] = sum(len(o[2]) for o in out)
    return out, totals


def arrays(out: list, size: int, max_objects: int) -> dict[str, np.ndarray]:
    n = len(out)
    px = np.zeros((n, 3, size, size), np.uint8)
    sizes = np.zeros((n, 2), np.int32)
    boxes = np.zeros((n, max_objects, 4), np.float32)
    labels = np.full((n, max_objects), -1, np.int64)  # -1 = no box (padding)
    for k, (canvas, hw, b, c, _) in enumerate(out):
        px[k], sizes[k] = canvas, hw
        boxes[k, :len(b)], labels[k, :len(c)] = b, c
    return {"pixel_values": px, "sizes": sizes, "boxes": boxes, "labels": labels}


def label_names(p: dict, layout_names: list[str], table, cats_seen: list) -> list[str]:
    """Project label names (Step 1), else the layout's categories, else the Hub feature's ClassLabel, else ids seen."""
    if p.get("label_names"):
        return [str(x) for x in p["label_names"]]
    if layout_names:
        return layout_names
    feat = getattr(getattr(table, "rows", None), "features", None)
    obj = feat.get((p["columns"].get("objects") or "objects")) if feat is not None else None
    for key in ("category", "categories", "label"):
        inner = obj.get(key) if isinstance(obj, dict) else None
        names = getattr(getattr(inner, "feature", inner), "names", None)
        if names:
            return list(names)
    if all(isinstance(c, (int, np.integer)) for c in cats_seen):
        return [str(i) for i in range(int(max(cats_seen, default=0)) + 1)]
    return sorted({str(c) for c in cats_seen})


def main() -> int:
    p = project(load_config())
    tables, layout_names, info = open_annotated(p, "object-detection")
    train_t, tr, eval_t, ev = plan(p, tables)
    cols = p["columns"]
    probe = [source_row(train_t.row(int(i)), cols, p.get("bbox_format") or "coco")[2] for i in tr[:200]]
    names = label_names(p, layout_names, train_t, [c for cs in probe for c in cs])
    spec = processor_spec(p["model_id"], p.get("image_size"), CANVAS_CAP)
    size = spec["size"]
    train_out, train_counts = build_split(train_t, tr, p, size, names)
    eval_out, eval_counts = build_split(eval_t, ev, p, size, names)
    if not train_counts["boxes_kept"]:
        raise SystemExit("no usable box in the training split (all missing, degenerate or of unknown classes); see data/meta.json")
    max_objects = max(1, max(len(o[2]) for o in train_out + eval_out))
    save_split("train", arrays(train_out, size, max_objects))
    save_split("eval", arrays(eval_out, size, max_objects))
    aug = recipe_text(p, "train_transforms")
    meta = {"task": "object-detection", "label_names": names, "columns": train_t.columns, "n_train": len(train_out),
            "n_eval": len(eval_out), "size": size, "height": size, "width": size, "max_objects": max_objects,
            "image_mean": spec["image_mean"], "image_std": spec["image_std"], "processor": spec["processor"],
            "pixel_mask": wants_pixel_mask(p["model_id"]), "hflip": names_flip(aug),
            "bbox_format": p.get("bbox_format") or {"voc": "pascal_voc"}.get(info["layout"], "coco"), "layout": info["layout"],
            "boxes": {"train": train_counts, "eval": eval_counts, "dropped_by_reader": info["dropped"]},
            "source": p.get("dataset_id") or p.get("local_dataset_path")}
    write_json(DATA / "meta.json", meta)
    print(f"prepared {len(train_out)} train / {len(eval_out)} eval images on a {size}px canvas, {len(names)} classes, "
          f"{train_counts['boxes_kept'] + eval_counts['boxes_kept']} boxes kept "
          f"({train_counts['clipped'] + eval_counts['clipped']} clipped, "
          f"{train_counts['dropped_degenerate'] + eval_counts['dropped_degenerate']} degenerate dropped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
