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
"""Prepare: `python prepare_data.py` -> data/{train,eval}_{pixel_values,labels}.npy + data/meta.json.

Reads config.yaml's project section: the dataset (images/ + masks/ folders, VOC SegmentationClass, a Hub id or
arrow/parquet with an image and a mask column), columns, label names, split plan, skip_files, image_size,
ignore_index and reduce_labels (Step 1 decides both from the data). Images are resized to the processor's square
size (bilinear), masks with nearest neighbour (class ids must not blend). Mask values are mapped once: with
reduce_labels 0 (background) becomes ignored and the rest shift by -1; ignore_index and any value outside the label
range become the cache's ignore value (255, or 65535 for >= 255 classes); the counts go to data/meta.json.
Sources: transformers/models/segformer/image_processing_pil_segformer.py (installed 5.24: size 512x512, resample
bilinear, do_reduce_labels: 0 -> 255, others -1), https://huggingface.co/docs/transformers/main/en/tasks/semantic_segmentation.
"""

from __future__ import annotations


import numpy as np
from PIL import Image

from annotated import (decode_rows, names_color_jitter, names_flip, open_annotated, plan, processor_spec, project, recipe_text,
                       skipped, to_pil)
from common import DATA, load_config, save_split, write_json

MASK_COLUMNS = ("annotation", "mask", "label", "segmentation", "seg", "semantic_map", "gt", "labels")
SIZE_CAP = 1024
_JOB: dict = {}


def mask_column(p: dict, columns: list[str]) -> str:
    # the column Step 1 named (its name before or after the rename Step 1 recorded), else a known mask column name
    named = p["columns"].get("mask")
    renamed = {v: k for k, v in (p.get("column_renames") or {}).items()}
    col = next((c for c in (named, renamed.get(named or ""), *MASK_COLUMNS) if c and c in columns), None)
    if not col or col not in columns:
        raise SystemExit(f"no mask column among {columns}; set project.columns.mask")
    return col


def mask_array(value) -> np.ndarray:
    """Class ids of a mask image (palette or grey); a colour mask whose channels differ is refused."""
    img = to_pil(value)
    arr = np.asarray(img)
    if arr.ndim == 3:
        if not (arr[..., :1] == arr[..., : min(3, arr.shape[-1])]).all():
            raise SystemExit("a colour-coded RGB mask: convert it to class-id (palette or greyscale) PNGs first")
        arr = arr[..., 0]
    return arr.astype(np.int64)


def map_mask(raw: np.ndarray, n_classes: int, ignore_index: int, reduce_labels: bool, cache_ignore: int) -> tuple[np.ndarray, dict]:
    """Source mask values -> class ids 0..n-1 or cache_ignore; counts of ignored and out-of-range pixels."""
    ignore = raw == ignore_index
    ids = raw.copy()
    if reduce_labels:
        ignore |= raw == 0
        ids = raw - 1
    out_of_range = ~ignore & ((ids < 0) | (ids >= n_classes))
    out = np.where(ignore | out_of_range, cache_ignore, ids)
    return out, {"ignored_pixels": int(ignore.sum()), "out_of_range_pixels": int(out_of_range.sum())}


def _decode(i: int):
    table, j = _JOB["table"], _JOB
    row = table.row(i)
    img = to_pil(row[j["image_col"]]).convert("RGB")
    raw = mask_array(row[j["mask_col"]])
    if raw.shape != (img.height, img.width):
        raise SystemExit(f"row {i}: mask {raw.shape[::-1]} and image {img.size} differ in size")
    s = j["size"]
    px = np.asarray(img.resize((s, s), Image.BILINEAR), np.uint8).transpose(2, 0, 1)
    mask, counts = map_mask(raw, j["n"], j["ignore_index"], j["reduce"], j["cache_ignore"])
    mask = np.asarray(Image.fromarray(mask.astype(np.int32)).resize((s, s), Image.NEAREST)).astype(j["dtype"])
    return px, mask, counts


def build_split(table, idx: np.ndarray, p: dict, size: int, n: int, cache_ignore: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Decode image + mask pairs (worker processes for large splits); Step 1's skip_files are left out."""
    skip = set(p["skip_files"])
    chosen = len(idx)
    idx = [int(i) for i in idx if not skipped(table.row(int(i)), skip)]
    image_col = p["columns"].get("image") or "image"
    _JOB.update(table=table, image_col=image_col, mask_col=mask_column(p, table.columns), size=size, n=n,
                ignore_index=int(p.get("ignore_index", 255)), reduce=bool(p.get("reduce_labels")), cache_ignore=cache_ignore,
                dtype=np.uint8 if cache_ignore == 255 else np.int32)
    out = decode_rows(_decode, idx)
    pixels = np.stack([o[0] for o in out]) if out else np.zeros((0, 3, size, size), np.uint8)
    masks = np.stack([o[1] for o in out]) if out else np.zeros((0, size, size), _JOB["dtype"])
    counts = {"images": len(out), "skipped_files": chosen - len(idx),
              "ignored_pixels": sum(o[2]["ignored_pixels"] for o in out),
              "out_of_range_pixels": sum(o[2]["out_of_range_pixels"] for o in out)}
    counts["class_pixels"] = np.bincount(masks[masks != cache_ignore].ravel(), minlength=n)[:n].tolist() if len(masks) else [0] * n
    return pixels, masks, counts


def label_names(p: dict, layout_names: list[str], table, sample: list[np.ndarray]) -> list[str]:
    """Project label names (Step 1), else labels.txt, else the Hub's id2label-like feature, else the mask values seen."""
    if p.get("label_names"):
        return [str(x) for x in p["label_names"]]
    if layout_names:
        names = list(layout_names)
        return names[1:] if p.get("reduce_labels") and names and names[0].lower() in ("background", "bg", "void", "_background_") else names
    values = sorted({int(v) for m in sample for v in np.unique(m)} - {int(p.get("ignore_index", 255))})
    if p.get("reduce_labels"):
        values = [v - 1 for v in values if v > 0]
    return [f"class_{i}" for i in range((max(values) + 1) if values else 0)]


def main() -> int:
    p = project(load_config())
    tables, layout_names, info = open_annotated(p, "semantic-segmentation")
    train_t, tr, eval_t, ev = plan(p, tables)
    col = mask_column(p, train_t.columns)
    sample = [mask_array(train_t.row(int(i))[col]) for i in tr[:50]]
    names = label_names(p, layout_names, train_t, sample)
    if len(names) < 2:
        raise SystemExit(f"segmentation needs at least 2 classes, found {names}; set project.label_names")
    spec = processor_spec(p["model_id"], p.get("image_size"), SIZE_CAP)
    size = spec["size"]
    cache_ignore = 255 if len(names) < 255 else 65535
    train_px, train_m, train_c = build_split(train_t, tr, p, size, len(names), cache_ignore)
    eval_px, eval_m, eval_c = build_split(eval_t, ev, p, size, len(names), cache_ignore)
    save_split("train", {"pixel_values": train_px, "labels": train_m})
    save_split("eval", {"pixel_values": eval_px, "labels": eval_m})
    aug = recipe_text(p, "train_transforms")
    meta = {"task": "semantic-segmentation", "label_names": names, "columns": train_t.columns, "n_train": len(train_px),
            "n_eval": len(eval_px), "size": size, "height": size, "width": size, "image_mean": spec["image_mean"],
            "image_std": spec["image_std"], "processor": spec["processor"], "ignore_index": int(p.get("ignore_index", 255)),
            "reduce_labels": bool(p.get("reduce_labels")), "cache_ignore_index": cache_ignore, "mask_column": col,
            "hflip": names_flip(aug), "color_jitter": names_color_jitter(aug), "layout": info.get("layout"),
            "masks": {"train": train_c, "eval": eval_c}, "source": p.get("dataset_id") or p.get("local_dataset_path")}
    write_json(DATA / "meta.json", meta)
    print(f"prepared {len(train_px)} train / {len(eval_px)} eval image+mask pairs at {size}x{size}, {len(names)} classes "
          f"(ignore_index {meta['ignore_index']}, reduce_labels {meta['reduce_labels']}, "
          f"{train_c['out_of_range_pixels'] + eval_c['out_of_range_pixels']} out-of-range pixels ignored)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
