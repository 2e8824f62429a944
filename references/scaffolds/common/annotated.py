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
"""Annotated image sources for object detection and semantic segmentation: the project spec, readers, split plan.

Every value comes from config.yaml's `project:` section (ProjectSpec). Local layouts read here, the same ones Step 1
scans: COCO json (`images` + `annotations` + `categories`), Pascal VOC (Annotations/*.xml for boxes,
SegmentationClass/ for masks, ImageSets/{Main,Segmentation}/<split>.txt), and [split/]images/ + masks/ folders with
matching file stems. Hub ids, arrow, parquet and json(l) rows are read with `datasets` (honours HF_ENDPOINT), the project's renames applied.
Rows come out canonical: detection {"image", "boxes" (absolute xyxy pixels), "categories" (class ids)};
segmentation {"image", "mask"}.
Sources: https://cocodataset.org/#format-data (bbox = [x, y, width, height] in pixels),
http://host.robots.ox.ac.uk/pascal/VOC/voc2012/htmldoc/devkit_doc.html (bndbox xmin/ymin/xmax/ymax, 1-based pixels;
SegmentationClass PNG palette indices, 255 = void), https://huggingface.co/docs/datasets/main/en/object_detection
(Hub `objects` column: dict of lists bbox/category), https://albumentations.ai/docs/getting_started/bounding_boxes_augmentation/
(the names of the box formats: coco, pascal_voc, yolo, albumentations).
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from sources import IMAGE_EXT, Table, progress

EVAL_SPLITS = ("validation", "valid", "val", "test", "eval")
SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation", "val": "validation",
               "dev": "validation", "eval": "validation", "test": "test", "testing": "test"}
MASK_DIRS = ("masks", "mask", "annotations", "labels", "segmentations")
LABEL_FILES = ("labels.txt", "classes.txt", "labelmap.txt", "class_names.txt")
TOP_LEVEL = ("model_id", "task_type", "dataset_id", "dataset_config", "local_dataset_path", "local_dataset_format",
             "column_renames", "label_names", "hyperparameters", "recipe")


def project(cfg: dict) -> dict:
    """config.yaml's `project:` section (ProjectSpec). `cfg` is that section itself, or a whole RunConfig dump; a
    section Step 1 has not filled yet (no model_id: an older run dir) takes the run's top-level inputs."""
    sec = cfg.get("project")
    p = dict(sec) if isinstance(sec, dict) else dict(cfg)
    if isinstance(sec, dict) and not sec.get("model_id"):
        p.update({k: cfg[k] for k in TOP_LEVEL if cfg.get(k)})
        p["splits"] = {**(sec.get("splits") or {}), **{k: cfg[k] for k in ("n_train", "n_eval") if cfg.get(k)}}
    p["splits"] = dict(p.get("splits") or {})
    p["columns"] = dict(p.get("columns") or {})
    p["skip_files"] = list(p.get("skip_files") or [])
    return p


def split_of(name: str) -> str | None:
    low = name.lower()
    if low in SPLIT_NAMES:
        return SPLIT_NAMES[low]
    return next((SPLIT_NAMES[t] for t in re.split(r"[^a-z]+", low) if t in SPLIT_NAMES), None)


def _images(d: Path | None) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXT) if d and d.is_dir() else []


def _json_has(path: Path, *keys: str) -> bool:
    try:
        head = path.read_text(errors="replace")[:4_000_000]
        data = json.loads(head)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and all(k in data for k in keys)


def detect_layout(root: Path) -> str:
    """coco | voc | masks | other, from the files (Step 1 uses the same signs)."""
    if root.is_file():
        return "coco" if root.suffix.lower() == ".json" and _json_has(root, "images", "annotations") else "other"
    if (root / "Annotations").is_dir() or (root / "SegmentationClass").is_dir():
        return "voc"
    if any(_json_has(p, "images", "annotations") for p in sorted(root.rglob("*.json"))[:20]):
        return "coco"
    first = next((d for d in sorted(root.iterdir()) if d.is_dir() and split_of(d.name)), root)
    subs = {d.name.lower() for d in first.iterdir() if d.is_dir()}
    if "images" in subs and subs & set(MASK_DIRS):
        return "masks"
    return "other"


# ---------------------------------------------------------------- detection readers


def _coco_image_dir(json_path: Path, root: Path, split: str | None, first: str) -> Path:
    candidates = [json_path.parent, json_path.parent.parent / "images", root / "images", root]
    if split:
        candidates += [root / split, root / "images" / split, root / f"{split}2017", root / "images" / f"{split}2017"]
        if split == "validation":
            candidates += [root / "val", root / "val2017", root / "images" / "val", root / "valid"]
    return next((c for c in candidates if (c / first).is_file()), json_path.parent)


def read_coco(root: Path) -> tuple[dict[str, list[dict]], list[str], dict]:
    """Rows per split, category names (ordered by category id) and counts of dropped annotations."""
    jsons = [root] if root.is_file() else sorted(p for p in root.rglob("*.json") if _json_has(p, "images", "annotations"))
    if not jsons:
        raise SystemExit(f"no COCO annotation file (a JSON with 'images' and 'annotations') under {root}")
    base = root.parent if root.is_file() else root
    loaded = [(p, json.loads(p.read_text())) for p in jsons]
    cats: dict[int, str] = {}
    for _, data in loaded:
        for c in data.get("categories") or []:
            cats.setdefault(int(c["id"]), str(c.get("name", c["id"])))
    index = {cid: i for i, cid in enumerate(sorted(cats))}
    names = [cats[c] for c in sorted(cats)]
    splits: dict[str, list[dict]] = {}
    dropped = {"unknown_image": 0, "unknown_category": 0, "malformed_box": 0}
    for jp, data in loaded:
        images = {im["id"]: im for im in data.get("images") or []}
        if not images:
            continue
        per: dict = {i: [] for i in images}
        for a in data.get("annotations") or []:
            box = a.get("bbox")
            if a.get("image_id") not in images:
                dropped["unknown_image"] += 1
            elif a.get("category_id") not in index:
                dropped["unknown_category"] += 1
            elif not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                dropped["malformed_box"] += 1
            else:
                per[a["image_id"]].append(a)
        split = split_of(jp.stem) or split_of(jp.parent.name) or "train"
        img_dir = _coco_image_dir(jp, base, split, next(iter(images.values()))["file_name"])
        rows = [{"image": str(img_dir / im["file_name"]),
                 "boxes": [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in per[i]],
                 "categories": [index[a["category_id"]] for a in per[i]]} for i, im in images.items()]
        splits[split] = splits.get(split, []) + rows
    return splits, names, dropped


def _voc_split_ids(root: Path, kind: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    sets = root / "ImageSets" / kind
    for f in sorted(sets.glob("*.txt")) if sets.is_dir() else []:
        s = split_of(f.stem)
        if s and f.stem.lower() != "trainval" and "_" not in f.stem:
            out[s] = [ln.split()[0] for ln in f.read_text().splitlines() if ln.strip()]
    return out


def read_voc_detection(root: Path) -> tuple[dict[str, list[dict]], list[str], dict]:
    """Annotations/*.xml (bndbox xmin ymin xmax ymax) + JPEGImages/; names sorted alphabetically as Step 1 lists them."""
    parsed: dict[str, dict] = {}
    dropped = {"unreadable_xml": 0}
    for x in sorted((root / "Annotations").glob("*.xml")):
        try:
            r = ET.parse(x).getroot()
            objs = []
            for o in r.findall("object"):
                bb = o.find("bndbox")
                objs.append((o.findtext("name", "").strip(), [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]))
            parsed[x.stem] = {"file": r.findtext("filename") or f"{x.stem}.jpg", "objects": objs}
        except (ET.ParseError, AttributeError, TypeError, ValueError):
            dropped["unreadable_xml"] += 1
    names = sorted({n for p in parsed.values() for n, _ in p["objects"] if n})
    ids = _voc_split_ids(root, "Main") or {"train": sorted(parsed)}
    splits = {}
    for split, stems in ids.items():
        splits[split] = [{"image": str(root / "JPEGImages" / parsed[s]["file"]),
                          "boxes": [v for n, v in parsed[s]["objects"] if n],
                          "categories": [names.index(n) for n, _ in parsed[s]["objects"] if n]} for s in stems if s in parsed]
    return splits, names, dropped


def boxes_to_xyxy(boxes: list, fmt: str, width: int, height: int) -> list[list[float]]:
    """Absolute xyxy pixels from a named box format: coco (xywh px), pascal_voc (xyxy px), yolo (cxcywh normalised),
    albumentations (xyxy normalised)."""
    f = (fmt or "coco").lower()
    out = []
    for b in boxes:
        x, y, c, d = (float(v) for v in b)
        if f.startswith(("pascal", "voc", "xyxy")):
            out.append([x, y, c, d])
        elif f.startswith(("yolo", "cxcywh")):
            out.append([(x - c / 2) * width, (y - d / 2) * height, (x + c / 2) * width, (y + d / 2) * height])
        elif f.startswith("albumentations"):
            out.append([x * width, y * height, c * width, d * height])
        else:  # coco xywh
            out.append([x, y, x + c, y + d])
    return out


def objects_of(value) -> tuple[list, list]:
    """(boxes, categories) from a Hub `objects` value: a dict of lists or a list of per-box dicts."""
    if isinstance(value, dict):
        cats = next((value[k] for k in ("category", "categories", "category_id", "label", "labels", "class") if k in value), [])
        return list(value.get("bbox") or value.get("bboxes") or value.get("boxes") or []), list(cats)
    boxes, cats = [], []
    for o in value or []:
        boxes.append(o.get("bbox") or o.get("box"))
        cats.append(next((o[k] for k in ("category", "category_id", "label", "class") if k in o), None))
    return boxes, cats


# ---------------------------------------------------------------- segmentation readers


def read_mask_folders(root: Path) -> dict[str, list[dict]]:
    """[split/]images/ + masks/ (or annotations/, labels/, ...) matched by file stem."""
    dirs = {split_of(d.name): d for d in sorted(root.iterdir()) if d.is_dir() and split_of(d.name)} or {"train": root}
    out = {}
    for split, d in dirs.items():
        subs = {x.name.lower(): x for x in d.iterdir() if x.is_dir()}
        mask_dir = next((subs[n] for n in MASK_DIRS if n in subs), None)
        masks = {p.stem: p for p in _images(mask_dir)}
        out[split] = [{"image": str(p), "mask": str(masks[p.stem])} for p in _images(subs.get("images")) if p.stem in masks]
    return out


def read_voc_segmentation(root: Path) -> dict[str, list[dict]]:
    """JPEGImages/ + SegmentationClass/ (ImageSets/Segmentation/<split>.txt when present)."""
    masks = {p.stem: p for p in _images(root / "SegmentationClass")}
    imgs = {p.stem: p for p in _images(root / "JPEGImages")}
    ids = _voc_split_ids(root, "Segmentation") or {"train": sorted(masks)}
    return {s: [{"image": str(imgs[k]), "mask": str(masks[k])} for k in stems if k in imgs and k in masks] for s, stems in ids.items()}


def label_file_names(root: Path) -> list[str]:
    for name in LABEL_FILES:
        for p in (root / name, root.parent / name):
            if p.is_file():
                return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
    return []


# ---------------------------------------------------------------- tables and the split plan


def datasets_tables(p: dict) -> dict[str, Table]:
    """Hub id (load_dataset), arrow (load_from_disk), parquet / json(l) files (load_dataset with data_files)."""
    import datasets

    renames = dict(p.get("column_renames") or {})
    if p.get("dataset_id"):
        dd = datasets.load_dataset(p["dataset_id"], p.get("dataset_config"))
    else:
        root = Path(p["local_dataset_path"]).expanduser()
        fmt = p.get("local_dataset_format") or "auto"
        if fmt == "arrow" or any((root / n).exists() for n in ("dataset_dict.json", "dataset_info.json", "state.json")):
            dd = datasets.load_from_disk(str(root))
        else:
            ext = "parquet" if fmt == "parquet" or (fmt == "auto" and list(root.rglob("*.parquet"))) else "json"
            files = p.get("data_files") or {}
            if not files:
                found = [root] if root.is_file() else sorted(root.rglob("*.parquet" if ext == "parquet" else "*.json*"))
                for f in found:
                    files.setdefault(split_of(f.stem) or "train", []).append(str(f))
            if not files:
                raise SystemExit(f"no {ext} files under {root}; set project.local_dataset_format")
            dd = datasets.load_dataset(ext, data_files=files)
    if hasattr(dd, "column_names") and not isinstance(dd.column_names, dict):
        dd = {"train": dd}
    return {k: Table(v, renames) for k, v in dd.items()}


def open_annotated(p: dict, task: str) -> tuple[dict[str, Table], list[str], dict]:
    """All splits as Tables: canonical rows for local COCO / VOC / mask folders, source rows (renames applied) for Hub
    ids, arrow, parquet and json(l); plus the label names the layout defines and {"layout", "dropped" annotation counts}."""
    path = p.get("local_dataset_path")
    fmt = p.get("local_dataset_format") or "auto"
    if p.get("dataset_id") or not path:
        return datasets_tables(p), [], {"layout": "hub", "dropped": {}}
    root = Path(path).expanduser()
    layout = fmt if fmt in ("coco", "voc") else detect_layout(root) if fmt in ("auto", "imagefolder") else "other"
    if layout == "other":
        return datasets_tables(p), [], {"layout": fmt, "dropped": {}}
    if task == "object-detection":
        if layout == "masks":
            raise SystemExit(f"{root} is an image + mask layout, not a detection dataset (COCO json or VOC Annotations/)")
        splits, names, dropped = read_voc_detection(root) if layout == "voc" else read_coco(root)
        return {k: Table(v, {}) for k, v in splits.items()}, names, {"layout": layout, "dropped": dropped}
    if layout == "coco":
        raise SystemExit(f"{root} is a COCO detection layout; semantic segmentation needs image + mask pairs")
    rows = read_voc_segmentation(root) if layout == "voc" else read_mask_folders(root)
    return {k: Table(v, {}) for k, v in rows.items()}, label_file_names(root), {"layout": layout, "dropped": {}}


def decode_rows(decode, idx: list[int]) -> list:
    """decode(i) for every row index, in order: forked worker processes (up to 16) for splits over 1,000 rows (the
    decoder reads its table from a module global the fork inherits), in this process otherwise."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    workers = min(os.cpu_count() or 1, 16)
    if len(idx) > 1000 and workers > 1:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("fork")) as ex:
            return list(progress(ex.map(decode, idx, chunksize=32), len(idx), "decoding rows"))
    return list(progress(map(decode, idx), len(idx), "decoding rows"))


def skipped(row: dict, skip: set[str]) -> bool:
    """Step 1's unreadable files: any row whose image or mask path is listed."""
    return bool(skip) and any(isinstance(v, str) and (v in skip or Path(v).name in skip) for v in row.values())


def plan(p: dict, tables: dict[str, Table]) -> tuple[Table, np.ndarray, Table, np.ndarray]:
    """Train and eval rows per the project's split plan: the named eval split, else int(eval_fraction * n + 0.5)
    rows of train held out (seeded); each side a seeded subset capped at n_train / n_eval."""
    sp = p.get("splits") or {}
    rng = np.random.default_rng(int(sp.get("seed", (p.get("hyperparameters") or {}).get("seed", 42))))
    n_train, n_eval = int(sp.get("n_train") or 10000), int(sp.get("n_eval") or 1000)
    train_name = sp.get("train_split") or ("train" if "train" in tables else next(iter(tables)))
    eval_name = sp.get("eval_split") or next((s for s in EVAL_SPLITS if s in tables and s != train_name), None)
    for name in (train_name, eval_name):
        if name and name not in tables:
            raise SystemExit(f"split {name!r} is not in the dataset (splits: {sorted(tables)})")
    train = tables[train_name]

    def cap(idx: np.ndarray, n: int) -> np.ndarray:
        return idx if len(idx) <= n else np.sort(rng.permutation(idx)[:n])

    if eval_name:
        ev_t = tables[eval_name]
        return train, cap(np.arange(len(train)), n_train), ev_t, cap(np.arange(len(ev_t)), n_eval)
    perm = rng.permutation(len(train))
    k = max(1, int(float(sp.get("eval_fraction") or 0.1) * len(train) + 0.5))
    return train, cap(np.sort(perm[k:]), n_train), train, cap(np.sort(perm[:k]), n_eval)


# ---------------------------------------------------------------- images, processor, recipe


def to_pil(value):
    """A PIL image from a PIL object, a path, a {'bytes', 'path'} dict or an array."""
    import io

    from PIL import Image

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        return Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    if isinstance(value, np.ndarray):
        return Image.fromarray(value)
    return Image.open(value)


def _edge(size) -> int | None:
    """The largest edge a processor's size dict asks for (longest_edge, max_height/max_width, height/width, shortest_edge)."""
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    for keys in (("longest_edge",), ("max_height", "max_width"), ("height", "width"), ("shortest_edge",)):
        vals = [get(k) for k in keys if get(k)]
        if vals:
            return int(max(vals))
    return None


def processor_spec(model_id: str, image_size: int | None, cap: int) -> dict:
    """Square input canvas and normalisation from the model's image processor (project.image_size wins; the
    processor's edge is capped at `cap`); AutoConfig's image_size when there is no processor."""
    from transformers import AutoConfig, AutoImageProcessor

    try:
        proc = AutoImageProcessor.from_pretrained(model_id)
    except (OSError, ValueError):
        proc = None
    if proc is None:
        size = image_size or int(getattr(AutoConfig.from_pretrained(model_id), "image_size", 0) or cap)
        return {"size": int(size), "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "processor": None}
    edge = _edge(getattr(proc, "size", None) or {}) or cap
    return {"size": int(image_size or min(edge, cap)), "image_mean": list(getattr(proc, "image_mean", None) or [0.5] * 3),
            "image_std": list(getattr(proc, "image_std", None) or [0.5] * 3), "processor": type(proc).__name__}


def recipe_text(p: dict, slot: str) -> str:
    """A recipe slot's value as text (project.recipe holds values; a RunConfig recipe holds {value, rank, source})."""
    v = (p.get("recipe") or {}).get(slot)
    return str(v.get("value", "") if isinstance(v, dict) else v or "")


def names_flip(text: str) -> bool:
    """A horizontal flip is named in the transforms text and not ruled out."""
    low = text.lower()
    return bool(re.search(r"horizontal[\s_-]?flip|hflip", low)) and not re.search(r"\b(no|not|without|none)\b[^.;]*flip", low)


def names_color_jitter(text: str) -> bool:
    low = text.lower()
    return bool(re.search(r"colou?r[\s_-]?jitter|brightness", low)) and not re.search(r"\b(no|not|without)\b[^.;]*(jitter|brightness)", low)
