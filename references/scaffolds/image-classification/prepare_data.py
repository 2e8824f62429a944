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

Reads config.yaml's `project:` section only: the image and label columns Step 1 chose, its renames, the files it
skipped, and its split plan (seeded hold-out, stratified by the label when there is no eval split; n_train / n_eval
caps), then decodes and resizes every image once (the image processor's size / crop) and caches uint8 NCHW
tensors; normalisation with the processor's mean/std happens on the device at train time.
Sources: https://huggingface.co/docs/transformers/main/en/tasks/image_classification (processor size, mean, std),
transformers/image_processing_base.py + image_utils.SizeDict (installed 5.24), https://pillow.readthedocs.io/en/stable/.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import re
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image

from common import DATA, load_config, recipe_class, save_split, write_json
from sources import choose, encode_labels, label_names, open_splits, progress

_JOB: dict = {}


def _get(obj, key):
    if obj is None:
        return None
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None) if not hasattr(obj, "get") else obj.get(key)


def image_spec(model_id: str, processor_cls=None) -> dict:
    """Target size, crop and normalisation stats from the model's image processor (the recipe's processor_class;
    the model config's image_size when the model ships no processor)."""
    from transformers import AutoConfig

    processor_cls = processor_cls or recipe_class(load_config(), "processor_class")
    try:
        proc = processor_cls.from_pretrained(model_id)
    except (OSError, ValueError):
        proc = None
    if proc is None:
        size = int(getattr(AutoConfig.from_pretrained(model_id), "image_size", 224))
        return {"height": size, "width": size, "shortest_edge": None, "crop": None, "crop_pct": None,
                "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "processor": None}
    size, crop = getattr(proc, "size", None), getattr(proc, "crop_size", None)
    do_crop = bool(getattr(proc, "do_center_crop", False)) and crop is not None
    spec = {"shortest_edge": _get(size, "shortest_edge"), "crop_pct": getattr(proc, "crop_pct", None),
            "crop": (_get(crop, "height"), _get(crop, "width")) if do_crop else None,
            "image_mean": list(proc.image_mean), "image_std": list(proc.image_std), "processor": type(proc).__name__}
    if spec["crop"]:
        spec["height"], spec["width"] = spec["crop"]
    elif spec["shortest_edge"]:
        spec["height"] = spec["width"] = int(spec["shortest_edge"])
    else:
        spec["height"], spec["width"] = int(_get(size, "height")), int(_get(size, "width"))
    return spec


def to_pil(value) -> Image.Image:
    """A PIL image from a PIL object, a path or a {'bytes', 'path'} dict."""
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        return Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    return Image.open(value)


def resize(img: Image.Image, spec: dict) -> np.ndarray:
    """Resize (and centre-crop where the processor does) to uint8 CHW."""
    img = img.convert("RGB")
    h, w = spec["height"], spec["width"]
    se = spec["shortest_edge"]
    if se and not spec["crop"]:
        edge = int(se / spec["crop_pct"]) if spec.get("crop_pct") and se < 384 else int(se)
        scale = edge / min(img.size)
        img = img.resize((max(edge, round(img.width * scale)), max(edge, round(img.height * scale))), Image.BICUBIC)
    elif spec["crop"] and se:
        scale = se / min(img.size)
        img = img.resize((max(w, round(img.width * scale)), max(h, round(img.height * scale))), Image.BICUBIC)
    else:
        img = img.resize((w, h), Image.BICUBIC)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    img = img.crop((left, top, left + w, top + h))
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _decode(i: int) -> tuple[np.ndarray, object]:
    row = _JOB["table"].row(i)
    return resize(to_pil(row[_JOB["image"]]), _JOB["spec"]), row[_JOB["label"]]


def _fill(results, pixels: np.ndarray, labels: list) -> None:
    for k, (arr, lab) in enumerate(results):
        pixels[k] = arr
        labels.append(lab)


def build_split(table, idx: np.ndarray, spec: dict, columns: dict) -> tuple[np.ndarray, list]:
    """Decode and resize the chosen rows (in worker processes for large splits)."""
    wanted = {columns["image"], columns["label"]}
    missing = wanted - set(table.columns)
    if missing:
        raise SystemExit(f"columns {sorted(missing)} missing after renames; columns are {table.columns}; set columns.image / columns.label")
    _JOB.update(table=table, spec=spec, image=columns["image"], label=columns["label"])
    pixels = np.empty((len(idx), 3, spec["height"], spec["width"]), dtype=np.uint8)
    labels = []
    workers = min(os.cpu_count() or 1, 16)
    if len(idx) > 2000 and workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as ex:
            _fill(progress(ex.map(_decode, idx.tolist(), chunksize=64), len(idx), "decoding images"), pixels, labels)
    else:
        _fill(progress(map(_decode, idx.tolist()), len(idx), "decoding images"), pixels, labels)
    return pixels, labels


def wants_hflip(train_transforms: str) -> bool:
    """Random horizontal flips when the recipe's train transforms name one (and do not rule it out)."""
    text = train_transforms.lower()
    named = re.search(r"horizontal[\s_-]?flip|hflip", text)
    refused = re.search(r"\b(no|not|without|none)\b[^.;]*flip", text)
    return bool(named and not refused)


def main() -> int:
    cfg = load_config()
    tables = open_splits(cfg)
    train_t, tr, eval_t, ev = choose(cfg, tables)
    spec = image_spec(cfg["model_id"], recipe_class(cfg, "processor_class"))
    train_px, train_lab = build_split(train_t, tr, spec, cfg["columns"])
    eval_px, eval_lab = build_split(eval_t, ev, spec, cfg["columns"])
    names = label_names(cfg, train_t, train_lab + eval_lab)
    save_split("train", {"pixel_values": train_px, "labels": encode_labels(train_lab, names)})
    save_split("eval", {"pixel_values": eval_px, "labels": encode_labels(eval_lab, names)})
    aug = str(cfg["recipe"].get("train_transforms", "")).lower()
    meta = {"task": "image-classification", "label_names": names, "columns": [cfg["columns"]["image"], cfg["columns"]["label"]],
            "n_train": int(len(tr)), "n_eval": int(len(ev)), "height": spec["height"], "width": spec["width"],
            "image_mean": spec["image_mean"], "image_std": spec["image_std"], "processor": spec["processor"],
            "hflip": wants_hflip(aug), "source": cfg["dataset_id"] or cfg["local_dataset_path"],
            "splits": {"train": cfg["splits"]["train_split"], "eval": cfg["splits"]["eval_split"] or f"held out of {cfg['splits']['train_split']}"},
            "eval_label_counts": {names[int(k)]: int(v) for k, v in zip(*np.unique(encode_labels(eval_lab, names), return_counts=True))}}
    write_json(DATA / "meta.json", meta)
    print(f"prepared {len(tr)} train / {len(ev)} eval images at {spec['height']}x{spec['width']}, {len(names)} classes")
    return 0


if __name__ == "__main__":
    import argparse

    # no options: everything comes from config.yaml; --help only prints this and exits
    argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], epilog="All settings are read from config.yaml "
                            "(or $TAO_PROJECT_DIR/config.yaml).").parse_args()
    raise SystemExit(main())
