"""Step 1b: probe a dataset (Hub id or local path in any supported format), verify its columns for the task, load it.

datasets 5.2 API read from site-packages/datasets (load_dataset_builder, load_dataset(streaming=True), load_from_disk,
Dataset.from_list, features Image / ClassLabel / List / Value; DatasetNotFoundError in datasets.exceptions).
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tao_finetune.agent.config import Columns
from tao_finetune.agent.facts import DatasetFacts
from tao_finetune.tools.base import NeedsUser, ToolError, tool
from tao_finetune.tools.probe import OFFLINE_ERRORS, endpoint, hub_env

Level = Literal["warn", "ask", "error"]
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation", "val": "validation",
               "dev": "validation", "eval": "validation", "test": "test", "testing": "test"}
MAX_CHECK = 20000
N_STATS = 300
EVAL_FRACTION = 0.1
SEED = 42
IMAGE_NAMES = ("image", "img", "images", "picture", "photo", "pixel_values", "image_path", "file_name", "filepath", "path")
LABEL_NAMES = ("label", "labels", "class", "category", "fine_label", "target", "y", "class_label", "label_id")
TEXT_NAMES = ("text", "sentence", "content", "review", "document", "tweet", "comment", "body", "sms", "utterance")
PAIR_NAMES = (("sentence1", "sentence2"), ("premise", "hypothesis"), ("question", "sentence"), ("question1", "question2"))
MASK_NAMES = ("annotation", "mask", "label", "segmentation", "seg", "semantic_map", "gt", "labels")
OBJECT_NAMES = ("objects", "annotations", "objs")
QUESTION_NAMES = ("question", "query", "prompt", "instruction")
ANSWER_NAMES = ("answer", "multiple_choice_answer", "response", "output", "caption", "text", "answers")
CHAT_NAMES = ("messages", "conversations", "conversation", "texts")
MASK_DIRS = ("masks", "mask", "annotations", "labels", "segmentations")
LABEL_FILES = ("labels.txt", "classes.txt", "labelmap.txt", "class_names.txt")


@dataclass
class Issue:
    """A dataset problem with its count; warn = handled and reported, ask = a user decision, error = unusable."""

    level: Level
    kind: str
    count: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"level": self.level, "kind": self.kind, "count": self.count, "message": self.message}


@dataclass
class Scan:
    """A local dataset read into rows (image values are absolute paths), with what was wrong along the way."""

    format: str
    evidence: str
    splits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)  # column -> image | mask | label | objects | text | ...
    label_names: list[str] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    dataset: Any = None  # a DatasetDict when the format is read by `datasets` itself

    def issue(self, level: Level, kind: str, count: int, message: str) -> None:
        if count:
            self.issues.append(Issue(level, kind, count, message))


def require_datasets():
    """The `datasets` module; it is an optional extra (Hub datasets, parquet/arrow folders), so say how to get it."""
    try:
        import datasets
    except ModuleNotFoundError as err:
        if err.name != "datasets":
            raise ToolError(f"the 'datasets' package failed to import: {err}") from None
        raise ToolError("this dataset needs the 'datasets' package, which the core install leaves out: "
                        "pip install 'tao-finetune[datasets]' (or the [train] extra)") from None
    except ImportError as err:
        raise ToolError(f"the 'datasets' package failed to import: {err}") from None
    return datasets


def split_of(name: str) -> str | None:
    """The canonical split a file or folder name points at, if any."""
    low = name.lower()
    if low in SPLIT_NAMES:
        return SPLIT_NAMES[low]
    for token in re.split(r"[^a-z]+", low):
        if token in SPLIT_NAMES:
            return SPLIT_NAMES[token]
    return None


def check_image(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """(size, None) for a readable image, (None, reason) otherwise."""
    from PIL import Image, UnidentifiedImageError

    try:
        if path.stat().st_size == 0:
            return None, "empty file"
        with Image.open(path) as im:
            im.load()
            return im.size, None
    except FileNotFoundError:
        return None, "missing"
    except Image.DecompressionBombError:  # over 2x PIL's MAX_IMAGE_PIXELS: refusing to decode is PIL's bomb guard
        return None, "too large to decode (decompression bomb)"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        return None, f"cannot be decoded ({type(err).__name__})"


def _images_in(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _filter_images(scan: Scan, paths: list[Path]) -> tuple[list[Path], dict[Path, tuple[int, int]]]:
    """Drop unreadable images (counted as issues); returns the good ones and their sizes."""
    good, sizes, bad = [], {}, Counter()
    for i, p in enumerate(paths):
        if i >= MAX_CHECK:
            good.extend(paths[i:])
            scan.extra["images_checked"] = MAX_CHECK
            break
        size, why = check_image(p)
        if size is None:
            scan.extra.setdefault("skip_files", []).append(str(p))
            bad["empty image file" if why == "empty file" else "missing image file" if why == "missing"
                else "oversized image" if why and "bomb" in why else "corrupt image"] += 1
        else:
            good.append(p)
            sizes[p] = size
    for kind, n in bad.items():
        scan.issue("warn", kind.replace(" ", "_"), n, f"{n} {kind}(s) skipped")
    if paths and not good:
        scan.issue("error", "no_readable_images", len(paths), "no readable image in the dataset")
    return good, sizes


# ---------------------------------------------------------------- format detection
def _json_has(path: Path, *keys: str) -> bool:
    if path.stat().st_size > 500_000_000:
        return False
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return False
    return isinstance(data, dict) and all(k in data for k in keys)


def detect_format(path: Path) -> tuple[str, str]:
    """Guess the local format; returns (format, the evidence that decided)."""
    if not path.exists():
        raise ToolError(f"local dataset path {str(path)!r} does not exist")
    if path.is_file():
        suffix = path.suffix.lower()
        by_suffix = {".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".arrow": "arrow"}
        if suffix == ".json" and _json_has(path, "images", "annotations"):
            return "coco", f"{path.name} holds 'images' and 'annotations'"
        if suffix in by_suffix:
            return by_suffix[suffix], f"file suffix {suffix!r}"
        raise ToolError(f"cannot tell the format of {str(path)!r} from its suffix; pass --local-dataset-format")
    files = [p for p in path.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    if "dataset_dict.json" in names or "state.json" in names or any(p.suffix == ".arrow" for p in files):
        return "arrow", "found dataset_dict.json / state.json / *.arrow (save_to_disk layout)"
    for p in sorted(f for f in files if f.suffix == ".json"):
        if _json_has(p, "images", "annotations"):
            return "coco", f"{p.relative_to(path)} holds 'images' and 'annotations'"
    if (path / "Annotations").is_dir() or (path / "SegmentationClass").is_dir():
        return "voc", "found Annotations/ or SegmentationClass/ (Pascal VOC layout)"
    for suffix, fmt in ((".parquet", "parquet"), (".jsonl", "jsonl"), (".csv", "csv"), (".tsv", "csv")):
        hits = [p for p in files if p.suffix.lower() == suffix]
        if hits:
            return fmt, f"found {len(hits)} *{suffix} file(s)"
    if any(p.suffix.lower() in IMAGE_EXTS for p in files):
        return "imagefolder", "image files in sub-folders (class-per-folder layout)"
    if not files:
        raise ToolError(f"local dataset folder {str(path)!r} is empty")
    raise ToolError(f"cannot tell the format of {str(path)!r}; pass --local-dataset-format")


# ---------------------------------------------------------------- local readers
def _split_dirs(root: Path) -> dict[str, Path]:
    subs = {split_of(d.name): d for d in sorted(root.iterdir()) if d.is_dir() and d.name.lower() in SPLIT_NAMES}
    return {k: v for k, v in subs.items() if k} or {"train": root}


def scan_imagefolder(root: Path) -> Scan:
    scan = Scan("imagefolder", "")
    if root.is_file():
        raise ToolError(f"imagefolder needs a folder, got the file {str(root)!r}")
    dirs = _split_dirs(root)
    first = next(iter(dirs.values()))
    subdirs = {d.name.lower(): d for d in first.iterdir() if d.is_dir()}
    mask_dir = next((n for n in MASK_DIRS if n in subdirs), None)
    if {"images"} <= set(subdirs) and mask_dir and len(subdirs) == 2:
        return _scan_image_mask_pairs(scan, dirs, mask_dir)
    classes = sorted({c.name for d in dirs.values() for c in d.iterdir() if c.is_dir() and _images_in(c)})
    loose = [p for d in dirs.values() for p in _images_in(d)]
    meta_file = next((first / n for n in ("metadata.jsonl", "metadata.csv") if (first / n).is_file()), None)
    if meta_file:
        return _scan_imagefolder_metadata(scan, dirs)
    if not classes:
        scan.issue("ask", "no_class_folders", len(loose), "images are not sorted into class folders and there is no metadata file")
        scan.evidence = "images without class folders"
        scan.splits = {"train": [{"image": str(p)} for p in loose]}
        scan.kinds = {"image": "image"}
        return scan
    scan.label_names = classes
    scan.kinds = {"image": "image", "label": "label"}
    scan.evidence = f"{len(classes)} class folders" + (f" in split folders {sorted(dirs)}" if len(dirs) > 1 or first != root else "")
    if loose:
        scan.issue("warn", "unlabelled_images", len(loose), f"{len(loose)} image(s) outside class folders ignored")
    scan.extra["data_files"] = {split: [str(d)] for split, d in dirs.items()}
    for split, d in dirs.items():
        paths = [p for c in sorted(d.iterdir()) if c.is_dir() for p in _images_in(c)]
        good, _ = _filter_images(scan, paths)
        scan.splits[split] = [{"image": str(p), "label": classes.index(p.parent.name)} for p in good]
        if not paths:
            scan.issue("warn", "empty_split", 1, f"split folder {d.name!r} has no images")
    return scan


def _scan_image_mask_pairs(scan: Scan, dirs: dict[str, Path], mask_dir: str) -> Scan:
    scan.evidence = f"images/ and {mask_dir}/ folders with matching file stems (segmentation pairs)"
    scan.kinds = {"image": "image", "annotation": "mask"}
    for split, d in dirs.items():
        img_dir = next(x for x in d.iterdir() if x.name.lower() == "images")
        m_dir = next((x for x in d.iterdir() if x.name.lower() == mask_dir), None)
        masks = {p.stem: p for p in _images_in(m_dir)} if m_dir else {}
        good, _ = _filter_images(scan, _images_in(img_dir))
        missing = [p for p in good if p.stem not in masks]
        scan.issue("ask", "missing_masks", len(missing), f"{len(missing)} of {len(good)} image(s) in {split!r} have no mask")
        scan.splits[split] = [{"image": str(p), "annotation": str(masks[p.stem])} for p in good if p.stem in masks]
    _mask_labels(scan, next(iter(dirs.values())))
    return scan


def _scan_imagefolder_metadata(scan: Scan, dirs: dict[str, Path]) -> Scan:
    scan.evidence = "image folder with a metadata file (file_name column)"
    for split, d in dirs.items():
        meta = d / "metadata.jsonl" if (d / "metadata.jsonl").is_file() else d / "metadata.csv"
        rows = _read_rows(scan, meta)
        for r in rows:
            if "file_name" in r:
                r["image"] = str(d / str(r.pop("file_name")))
        good, _ = _filter_images(scan, [Path(r["image"]) for r in rows if "image" in r])
        keep = {str(p) for p in good}
        scan.splits[split] = [r for r in rows if r.get("image") in keep]
    scan.kinds = {"image": "image"}
    return scan


def _mask_labels(scan: Scan, root: Path) -> None:
    """Label names for masks from a labels file, else from the values seen in a sample of masks (sampled either way:
    the values decide ignore index and label reduction)."""
    import numpy as np
    from PIL import Image

    values: set[int] = set()
    masks = [r["annotation"] for rows in scan.splits.values() for r in rows][:50]
    for m in masks:
        try:
            with Image.open(m) as im:
                values |= set(np.unique(np.asarray(im)).tolist())
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    scan.extra["mask_values"] = sorted(values)[:300]
    for name in LABEL_FILES:
        for p in (root / name, root.parent / name):
            if p.is_file():
                scan.label_names = [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]
                scan.extra["label_names_from"] = p.name
                return
    ids = sorted(v for v in values if v != 255)
    scan.label_names = [f"class_{i}" for i in range(max(ids) + 1)] if ids else []
    if ids:
        scan.extra["label_names_from"] = "mask values (no labels.txt)"


def _coco_image_dir(json_path: Path, root: Path, split: str | None, first: str) -> Path:
    candidates = [json_path.parent, json_path.parent.parent / "images", root / "images", root]
    if split:
        candidates += [root / split, root / "images" / split, root / f"{split}2017", root / "images" / f"{split}2017"]
        if split == "validation":
            candidates += [root / "val", root / "val2017", root / "images" / "val", root / "valid"]
    return next((c for c in candidates if (c / first).is_file()), json_path.parent)


def scan_coco(root: Path) -> Scan:
    scan = Scan("coco", "")
    jsons = [root] if root.is_file() else sorted(p for p in root.rglob("*.json") if _json_has(p, "images", "annotations"))
    if not jsons:
        raise ToolError(f"no COCO annotation file (a JSON with 'images' and 'annotations') under {str(root)!r}")
    base = root.parent if root.is_file() else root
    scan.evidence = ", ".join(str(p.relative_to(base)) for p in jsons)
    all_cats: dict[int, str] = {}
    per_file = []
    for jp in jsons:
        data = json.loads(jp.read_text())
        for c in data.get("categories") or []:
            all_cats.setdefault(int(c["id"]), str(c.get("name", c["id"])))
        split = split_of(jp.stem) or split_of(jp.parent.name)
        per_file.append((jp, split, data))
    cat_ids = sorted(all_cats)
    scan.label_names = [all_cats[i] for i in cat_ids]
    index = {cid: i for i, cid in enumerate(cat_ids)}
    scan.kinds = {"image": "image", "objects": "objects"}
    scan.extra["bbox_format"] = "coco xywh (absolute pixels)"
    for jp, split, data in per_file:
        images = {im["id"]: im for im in data.get("images") or []}
        by_image: dict[Any, list[dict]] = {i: [] for i in images}
        orphan = bad_cat = bad_box = 0
        for a in data.get("annotations") or []:
            box = a.get("bbox")
            if a.get("image_id") not in images:
                orphan += 1
            elif a.get("category_id") not in index:
                bad_cat += 1
            elif not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box) and box[2] > 0 and box[3] > 0):
                bad_box += 1
            else:
                by_image[a["image_id"]].append(a)
        total = len(data.get("annotations") or [])
        scan.issue("ask" if orphan * 2 > max(total, 1) else "warn", "mismatched_image_ids", orphan,
                   f"{orphan} of {total} annotation(s) in {jp.name} point at image ids not in 'images' (dropped)")
        scan.issue("warn", "unknown_category_ids", bad_cat, f"{bad_cat} annotation(s) in {jp.name} use category ids not in 'categories' (dropped)")
        scan.issue("warn", "invalid_boxes", bad_box, f"{bad_box} annotation(s) in {jp.name} have malformed or empty boxes (dropped)")
        if not images:
            scan.issue("error" if len(per_file) == 1 else "warn", "no_images", 1, f"{jp.name} lists no images")
            continue
        first = next(iter(images.values()))["file_name"]
        img_dir = _coco_image_dir(jp, base, split, first)
        paths = {i: img_dir / im["file_name"] for i, im in images.items()}
        good, sizes = _filter_images(scan, list(paths.values()))
        good_set = set(good)
        rows = []
        for i, im in images.items():
            p = paths[i]
            if p not in good_set:
                continue
            anns = by_image[i]
            w, h = sizes.get(p, (im.get("width"), im.get("height")))
            rows.append({
                "image": str(p), "image_id": int(i) if isinstance(i, int) else len(rows), "width": w, "height": h,
                "objects": {"id": [int(a.get("id", k)) for k, a in enumerate(anns)], "bbox": [[float(v) for v in a["bbox"]] for a in anns],
                            "category": [index[a["category_id"]] for a in anns], "area": [float(a.get("area") or a["bbox"][2] * a["bbox"][3]) for a in anns]},
            })
        key = split or "train"
        scan.splits[key] = scan.splits.get(key, []) + rows
    return scan


def scan_voc(root: Path, task: str | None) -> Scan:
    scan = Scan("voc", "")
    if root.is_file():
        raise ToolError(f"VOC needs a folder, got the file {str(root)!r}")
    ann_dir, seg_dir, img_dir = root / "Annotations", root / "SegmentationClass", root / "JPEGImages"
    seg_mode = seg_dir.is_dir() and (task == "semantic-segmentation" or not ann_dir.is_dir())
    sets = root / "ImageSets" / ("Segmentation" if seg_mode else "Main")
    split_ids: dict[str, list[str]] = {}
    if sets.is_dir():
        for f in sorted(sets.glob("*.txt")):
            s = split_of(f.stem)
            if s and f.stem.lower() != "trainval":
                split_ids[s] = [ln.split()[0] for ln in f.read_text().splitlines() if ln.strip()]
    if seg_mode:
        scan.evidence = "Pascal VOC segmentation: JPEGImages/ + SegmentationClass/"
        scan.kinds = {"image": "image", "annotation": "mask"}
        ids = split_ids or {"train": sorted(p.stem for p in _images_in(img_dir))} if img_dir.is_dir() else {}
        if not ids:
            raise ToolError(f"VOC folder {str(root)!r} has no JPEGImages/")
        for split, stems in ids.items():
            imgs = [next(iter(sorted(img_dir.glob(f"{s}.*"))), img_dir / f"{s}.jpg") for s in stems]
            good, _ = _filter_images(scan, imgs)
            masks = {p.stem: p for p in _images_in(seg_dir)}
            missing = [p for p in good if p.stem not in masks]
            scan.issue("ask", "missing_masks", len(missing), f"{len(missing)} of {len(good)} image(s) in {split!r} have no mask in SegmentationClass/")
            scan.splits[split] = [{"image": str(p), "annotation": str(masks[p.stem])} for p in good if p.stem in masks]
        _mask_labels(scan, root)
        return scan
    if not ann_dir.is_dir():
        raise ToolError(f"VOC folder {str(root)!r} has neither Annotations/ nor SegmentationClass/")
    scan.evidence = "Pascal VOC detection: Annotations/*.xml + JPEGImages/"
    scan.kinds = {"image": "image", "objects": "objects"}
    scan.extra["bbox_format"] = "coco xywh (absolute pixels), converted from VOC xyxy"
    parsed: dict[str, dict] = {}
    bad_xml = 0
    for x in sorted(ann_dir.glob("*.xml")):
        try:
            r = ET.parse(x).getroot()
            objs = []
            for o in r.findall("object"):
                bb = o.find("bndbox")
                vals = [float(bb.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
                objs.append((o.findtext("name", "").strip(), vals))
            parsed[x.stem] = {"file": r.findtext("filename") or f"{x.stem}.jpg", "objects": objs}
        except (ET.ParseError, AttributeError, TypeError, ValueError):
            bad_xml += 1
    scan.issue("warn", "unreadable_annotations", bad_xml, f"{bad_xml} annotation XML file(s) could not be parsed (skipped)")
    names = sorted({n for p in parsed.values() for n, _ in p["objects"] if n})
    scan.label_names = names
    ids = split_ids or {"train": sorted(parsed)}
    for split, stems in ids.items():
        unknown = [s for s in stems if s not in parsed]
        scan.issue("warn", "mismatched_image_ids", len(unknown), f"{len(unknown)} id(s) in ImageSets {split!r} have no annotation XML (dropped)")
        known = [s for s in stems if s in parsed]
        good, sizes = _filter_images(scan, [img_dir / parsed[s]["file"] for s in known])
        good_set = set(good)
        rows = []
        for k, s in enumerate(known):
            p = img_dir / parsed[s]["file"]
            if p not in good_set:
                continue
            objs = [(n, v) for n, v in parsed[s]["objects"] if v[2] > v[0] and v[3] > v[1]]
            w, h = sizes.get(p, (None, None))
            rows.append({"image": str(p), "image_id": k, "width": w, "height": h, "objects": {
                "id": list(range(len(objs))), "bbox": [[v[0], v[1], v[2] - v[0], v[3] - v[1]] for _, v in objs],
                "category": [names.index(n) for n, _ in objs], "area": [(v[2] - v[0]) * (v[3] - v[1]) for _, v in objs]}})
        scan.splits[split] = rows
    return scan


def _read_rows(scan: Scan, path: Path) -> list[dict[str, Any]]:
    """Rows of a jsonl/json/csv file by the standard library, counting empty files and bad lines."""
    if path.stat().st_size == 0:
        scan.issue("warn", "empty_file", 1, f"{path.name} is empty")
        return []
    text = path.read_text(errors="replace")
    rows: list[dict[str, Any]] = []
    bad = 0
    if path.suffix.lower() in (".csv", ".tsv"):
        reader = csv.DictReader(text.splitlines(), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        rows = [dict(r) for r in reader]
    elif path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
            rows = [r for r in data if isinstance(r, dict)]
        except json.JSONDecodeError:
            bad = 1
    else:
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                bad += 1
                continue
            if isinstance(r, dict):
                rows.append(r)
            else:
                bad += 1
    scan.issue("warn", "bad_lines", bad, f"{bad} line(s) of {path.name} are not JSON objects (skipped)")
    return rows


def _data_files(root: Path, suffixes: tuple[str, ...]) -> dict[str, list[Path]]:
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes and p.name not in ("metadata.jsonl", "metadata.csv"))
    out: dict[str, list[Path]] = {}
    for f in files:
        s = split_of(f.stem) or split_of(f.parent.name) if f != root else split_of(f.stem)
        out.setdefault(s or "train", []).append(f)
    return out


def _looks_like_image_path(v: Any) -> bool:
    return isinstance(v, str) and Path(v).suffix.lower() in IMAGE_EXTS


def scan_text_rows(root: Path, fmt: Literal["jsonl", "csv"]) -> Scan:
    scan = Scan(fmt, "")
    files = _data_files(root, (".jsonl", ".json") if fmt == "jsonl" else (".csv", ".tsv"))
    if not files:
        raise ToolError(f"no {fmt} file under {str(root)!r}")
    scan.evidence = ", ".join(f"{s}: {len(fs)} file(s)" for s, fs in files.items())
    scan.extra["data_files"] = {s: [str(f) for f in fs] for s, fs in files.items()}
    for split, fs in files.items():
        rows = []
        for f in fs:
            for r in _read_rows(scan, f):
                for k, v in r.items():
                    if _looks_like_image_path(v) and not Path(v).is_absolute():
                        r[k] = str((f.parent / v).resolve())
                rows.append(r)
        scan.splits[split] = rows
    if fmt == "csv":  # csv has no types: integer columns (label ids among them) come back as strings
        for col in {k for rows in scan.splits.values() for r in rows[:1] for k in r}:
            vals = [r.get(col) for rows in scan.splits.values() for r in rows]
            if vals and all(isinstance(v, str) and re.fullmatch(r"-?\d+", v.strip()) for v in vals):
                for rows in scan.splits.values():
                    for r in rows:
                        r[col] = int(r[col])
    image_cols = {k for rows in scan.splits.values() for r in rows[:50] for k, v in r.items() if _looks_like_image_path(v)}
    for col in image_cols:
        scan.kinds[col] = "image"
        for split, rows in scan.splits.items():
            paths = [Path(r[col]) for r in rows if isinstance(r.get(col), str)]
            good, _ = _filter_images(scan, paths)
            keep = {str(p) for p in good}
            scan.splits[split] = [r for r in rows if r.get(col) in keep]
    if not any(scan.splits.values()):
        scan.issue("error", "no_rows", 1, "no usable rows in any data file")
    return scan


def scan_with_datasets(root: Path, fmt: Literal["parquet", "arrow"]) -> Scan:
    """Parquet and arrow are read by `datasets` itself."""
    datasets = require_datasets()
    import pyarrow as pa

    scan = Scan(fmt, "")
    try:
        if fmt == "arrow" and root.is_dir() and ((root / "dataset_dict.json").is_file() or (root / "state.json").is_file()):
            ds = datasets.load_from_disk(str(root))
            scan.evidence = "save_to_disk folder"
        else:
            files = _data_files(root, (".arrow",) if fmt == "arrow" else (".parquet",))
            if not files:
                raise ToolError(f"no {fmt} file under {str(root)!r}")
            empty = [f for fs in files.values() for f in fs if f.stat().st_size == 0]
            scan.issue("warn", "empty_file", len(empty), f"{len(empty)} empty {fmt} file(s) skipped")
            files = {s: [str(f) for f in fs if f.stat().st_size] for s, fs in files.items()}
            files = {s: fs for s, fs in files.items() if fs}
            if not files:
                raise ToolError(f"every {fmt} file under {str(root)!r} is empty")
            scan.evidence = ", ".join(f"{s}: {len(fs)} file(s)" for s, fs in files.items())
            scan.extra["data_files"] = files
            if fmt == "arrow":
                ds = datasets.DatasetDict({s: datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in fs]) for s, fs in files.items()})
            else:
                ds = datasets.load_dataset("parquet", data_files=files)
    except (pa.ArrowInvalid, OSError, ValueError, datasets.exceptions.DatasetGenerationError) as err:
        raise ToolError(f"{fmt} data under {str(root)!r} cannot be read: {str(err).splitlines()[0][:200]}") from None
    if isinstance(ds, datasets.Dataset):
        ds = datasets.DatasetDict({"train": ds})
    scan.dataset = ds  # split names as the data names them; plan_splits reads their meaning
    return scan


def scan_local(path: str | Path, fmt: str = "auto", task: str | None = None) -> Scan:
    """Read a local dataset in any supported format into a Scan."""
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise ToolError(f"local dataset path {str(path)!r} does not exist")
    evidence = f"format given as {fmt!r}"
    if fmt == "auto":
        fmt, evidence = detect_format(root)
    readers = {
        "imagefolder": lambda: scan_imagefolder(root), "coco": lambda: scan_coco(root), "voc": lambda: scan_voc(root, task),
        "jsonl": lambda: scan_text_rows(root, "jsonl"), "csv": lambda: scan_text_rows(root, "csv"),
        "parquet": lambda: scan_with_datasets(root, "parquet"), "arrow": lambda: scan_with_datasets(root, "arrow"),
    }
    if fmt not in readers:
        raise ToolError(f"unknown local dataset format {fmt!r}; use one of {sorted(readers)}")
    scan = readers[fmt]()
    scan.extra["detected_by"] = evidence
    return scan


def _features(scan: Scan, rows: list[dict[str, Any]]):
    datasets = require_datasets()

    feats: dict[str, Any] = {}
    for col, kind in scan.kinds.items():
        if kind in ("image", "mask"):
            feats[col] = datasets.Image()
        elif kind == "label" and scan.label_names:
            feats[col] = datasets.ClassLabel(names=scan.label_names)
        elif kind == "objects":
            feats[col] = {"id": datasets.List(datasets.Value("int64")), "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
                          "category": datasets.List(datasets.ClassLabel(names=scan.label_names)), "area": datasets.List(datasets.Value("float32"))}
    if "objects" in feats:
        feats.update({"image_id": datasets.Value("int64"), "width": datasets.Value("int64"), "height": datasets.Value("int64")})
    if not rows:
        return datasets.Features(feats)
    inferred = datasets.Dataset.from_list(rows[:100]).features
    return datasets.Features({k: feats.get(k, inferred[k]) for k in rows[0]})


def load_local_dataset(path: str | Path, fmt: str = "auto", task: str | None = None):
    """Load a local dataset into a `datasets.DatasetDict` (images as Image features, labels as ClassLabel); unreadable items are skipped."""
    datasets = require_datasets()

    scan = scan_local(path, fmt, task)
    errors = [i for i in scan.issues if i.level == "error"]
    if errors:
        raise ToolError(f"dataset {str(path)!r} is unusable: {errors[0].message}")
    if scan.dataset is not None:
        return scan.dataset
    out = {}
    for split, rows in scan.splits.items():
        if rows:
            try:
                out[split] = datasets.Dataset.from_list(rows, features=_features(scan, rows))
            except (TypeError, ValueError) as err:  # pyarrow type clashes (e.g. mixed label types)
                raise ToolError(f"dataset {str(path)!r}, split {split!r}, cannot be loaded: {str(err).splitlines()[0][:200]}") from None
    return datasets.DatasetDict(out)


# ---------------------------------------------------------------- statistics
def _image_info(v: Any) -> tuple[tuple[int, int], str] | None:
    """(size, mode) of an image value: a PIL image, a path, bytes or a {bytes, path} dict."""
    import io

    from PIL import Image, UnidentifiedImageError

    if hasattr(v, "size") and hasattr(v, "mode"):
        return tuple(v.size), v.mode
    if isinstance(v, dict) and (v.get("path") or v.get("bytes")):
        v = v.get("bytes") or v.get("path")
    src = io.BytesIO(v) if isinstance(v, bytes) else v if isinstance(v, str) and Path(v).is_file() else None
    if src is None:
        return None
    try:
        with Image.open(src) as im:
            return tuple(im.size), im.mode
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def _is_image_struct(v: Any) -> bool:
    """An encoded image as Parquet/Arrow store it without `datasets` metadata: {'bytes': b'...', 'path': ...}."""
    return isinstance(v, dict) and set(v) <= {"bytes", "path"} and isinstance(v.get("bytes"), (bytes, bytearray))


def _type_name(v: Any) -> str:
    if hasattr(v, "size") and hasattr(v, "mode"):
        return "image"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "image-path" if _looks_like_image_path(v) else "string"
    if _is_image_struct(v):
        return "image"
    if isinstance(v, dict):
        return "dict"
    if isinstance(v, list):
        return "list"
    return type(v).__name__


def _num_like(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or (isinstance(v, str) and re.fullmatch(r"-?\d+", v.strip() or "x") is not None)


def _stats(values: list[int | float]) -> dict[str, Any]:
    if not values:
        return {}
    return {"min": min(values), "max": max(values), "mean": round(sum(values) / len(values), 2)}


def feature_types(features: Any) -> dict[str, str]:
    """Column -> short type string from datasets Features."""
    datasets = require_datasets()

    out = {}
    for k, f in features.items():
        if isinstance(f, datasets.ClassLabel):
            out[k] = f"ClassLabel({f.num_classes})"
        elif isinstance(f, datasets.Image):
            out[k] = "Image"
        elif isinstance(f, datasets.Value):
            out[k] = f.dtype
        elif isinstance(f, dict) and set(f) == {"bytes", "path"}:
            out[k] = "Image"  # an image struct written without `datasets` metadata (plain pyarrow / pandas)
        else:
            out[k] = re.sub(r"\s+", " ", repr(f))[:160]
    return out


def summarize_rows(rows: list[dict[str, Any]], kinds: dict[str, str], types: dict[str, str], label_names: list[str]) -> dict[str, Any]:
    """Column stats over rows: image sizes, text lengths, label counts, boxes per sample, mixed types."""
    cols: dict[str, Any] = {}
    keys = list(types) or (list(rows[0]) if rows else [])
    for k in keys:
        vals = [r.get(k) for r in rows if r.get(k) is not None]
        seen = Counter(_type_name(v) for v in vals)
        info: dict[str, Any] = {"type": types.get(k) or ("mixed(" + ",".join(sorted(seen)) + ")" if len(seen) > 1 else next(iter(seen), "null"))}
        if len(seen) > 1 and not types.get(k):
            info["mixed_types"] = dict(seen)
        kind = kinds.get(k)
        if kind in ("image", "mask") or seen.get("image") or seen.get("image-path"):
            infos = [i for i in (_image_info(v) for v in vals[:N_STATS]) if i]
            sizes = [i[0] for i in infos]
            if infos and kind != "mask" and k.lower() not in MASK_NAMES:
                info["image_modes"] = sorted({i[1] for i in infos})
                common = Counter(sizes).most_common(3)
                info["image_sizes"] = {"width": _stats([w for w, _ in sizes]), "height": _stats([h for _, h in sizes]),
                                       "most_common": [f"{w}x{h}" for (w, h), _ in common]}
        elif seen.get("string") and not kind:
            info["text_chars"] = _stats([len(v) for v in vals if isinstance(v, str)])
            strings = [v for v in vals if isinstance(v, str)]
            info["text_words"] = round(sum(len(v.split()) for v in strings) / len(strings), 2) if strings else None
        scalars = [v for v in vals if isinstance(v, (str, int)) and not _looks_like_image_path(v)]
        if scalars and len(scalars) == len(vals):
            info["distinct"] = len(set(scalars))
            info["sampled"] = len(scalars)
        if kind == "objects" or (isinstance(vals[0] if vals else None, dict) and "bbox" in (vals[0] or {})):
            counts = [len((v or {}).get("bbox") or []) for v in vals]
            info["boxes_per_sample"] = _stats(counts)
        cols[k] = info
    return cols


def image_modes(columns: dict[str, Any]) -> list[str]:
    """Every image mode seen in any column (L, RGB, RGBA, P ...)."""
    return sorted({m for info in columns.values() for m in info.get("image_modes", [])})


def label_counts(values: list[Any], names: list[str]) -> dict[str, int]:
    """Per-label counts keyed by name when names are known."""
    c = Counter(values)
    out = {}
    for v, n in sorted(c.items(), key=lambda kv: -kv[1]):
        key = names[v] if isinstance(v, int) and 0 <= v < len(names) else str(v)
        out[key] = n
    return out


# ---------------------------------------------------------------- column verification
def _find(cols: dict[str, str], names: tuple[str, ...], want: str | None = None) -> list[str]:
    """Columns for a role: named ones of the wanted type first, then other columns of that type, then other named ones."""
    lower = {c.lower(): c for c in cols}
    named = [lower[n] for n in names if n in lower]
    if not want:
        return named
    typed = [c for c, t in cols.items() if want.lower() in str(t).lower()]
    return [c for c in named if c in typed] + [c for c in typed if c not in named] + [c for c in named if c not in typed]


def verify_columns(task: str, columns: dict[str, str], sample: dict[str, Any] | None = None) -> tuple[dict[str, str], dict[str, Any], list[Issue]]:
    """Check a dataset's columns against what the task needs; returns (renames, layout facts, issues)."""
    renames: dict[str, str] = {}
    layout: dict[str, Any] = {}
    issues: list[Issue] = []
    sample = sample or {}

    def need(role: str, target: str, names: tuple[str, ...], want: str | None = None, exclude: tuple[str, ...] = ()) -> str | None:
        hits = [h for h in _find(columns, names, want) if h not in exclude and h not in renames]
        if not hits:
            issues.append(Issue("ask", f"missing_{role}_column", 1, f"no {role} column for {task} among {sorted(columns)}"))
            return None
        col = hits[0]
        if col != target:
            if target in columns and target != col:
                issues.append(Issue("ask", f"ambiguous_{role}_column", 1, f"{role} column {col!r} cannot be renamed to {target!r}: that name is taken"))
                return None
            renames[col] = target
        layout[f"{role}_column"] = col
        return col

    if task == "image-classification":
        img = need("image", "image", IMAGE_NAMES, "Image")
        lab = need("label", "label", LABEL_NAMES, "ClassLabel", exclude=(img or "",))
        if lab and lab in sample and isinstance(sample[lab], str):
            layout["label_string_to_id"] = True
        if lab and lab in sample and isinstance(sample[lab], list):
            issues.append(Issue("ask", "multi_label", 1, f"label column {lab!r} holds lists (multi-label); single-label classification needs one label per image"))
    elif task == "text-classification":
        pair = next((p for p in PAIR_NAMES if all(c in columns for c in p)), None)
        if pair:
            layout["text_columns"] = list(pair)
        else:
            txt = need("text", "text", TEXT_NAMES, "string")
            layout["text_columns"] = ["text"] if txt else []
        lab = need("label", "label", LABEL_NAMES, "ClassLabel", exclude=tuple(layout["text_columns"]))
        if lab and lab in sample and isinstance(sample[lab], str):
            layout["label_string_to_id"] = True
    elif task == "object-detection":
        need("image", "image", IMAGE_NAMES, "Image")
        obj = need("objects", "objects", OBJECT_NAMES)
        v = sample.get(obj) if obj else None
        if obj and v is not None:
            if isinstance(v, list) and v and isinstance(v[0], dict):
                issues.append(Issue("ask", "objects_layout", 1, f"column {obj!r} is a list of per-box records; it must become a dict of lists (bbox, category)"))
            elif not isinstance(v, dict) or "bbox" not in v:
                issues.append(Issue("ask", "objects_layout", 1, f"column {obj!r} has no 'bbox' list; box layout unknown"))
            else:
                boxes = [b for b in v.get("bbox") or [] if not (isinstance(b, str) and b.startswith("... "))]
                if boxes and not all(isinstance(b, (list, tuple)) and len(b) == 4 for b in boxes):
                    issues.append(Issue("ask", "bbox_layout", 1, f"boxes in {obj!r} are not 4-number lists; box layout unknown"))
                cat = next((k for k in ("category", "categories", "label", "labels", "class", "category_id") if k in v), None)
                if cat is None:
                    issues.append(Issue("ask", "objects_layout", 1, f"column {obj!r} has no category list"))
                else:
                    layout["category_key"] = cat
    elif task == "semantic-segmentation":
        img = need("image", "image", IMAGE_NAMES, "Image")
        mask_cols = [c for c in _find(columns, MASK_NAMES, "image") if c != img and "image" in str(columns[c]).lower()]
        if not mask_cols:
            issues.append(Issue("ask", "missing_mask_column", 1, f"no segmentation mask column among {sorted(columns)}"))
        else:
            if mask_cols[0] != "annotation":
                renames[mask_cols[0]] = "annotation"
            layout["mask_column"] = mask_cols[0]
    elif task == "image-text-to-text":
        need("image", "image", IMAGE_NAMES + ("images",), "Image")
        chat = _find(columns, CHAT_NAMES)
        if chat:
            layout["text_layout"] = "chat"
            layout["chat_column"] = chat[0]
        else:
            q = _find(columns, QUESTION_NAMES)
            a = [c for c in _find(columns, ANSWER_NAMES) if c not in q]
            if q and a:
                layout["text_layout"] = "question-answer"
                layout.update(question_column=q[0], answer_column=a[0])
                if q[0] != "question":
                    renames[q[0]] = "question"
                if a[0] != "answer" and "answer" not in columns:
                    renames[a[0]] = "answer"
            elif a:
                layout["text_layout"] = "caption"
                layout["answer_column"] = a[0]
            else:
                issues.append(Issue("ask", "missing_text_columns", 1, f"no question/answer, caption or chat column among {sorted(columns)}"))
    return renames, layout, issues


# ---------------------------------------------------------------- detection / segmentation decisions
BACKGROUND_NAMES = ("background", "bg", "_background_", "void", "unlabeled", "unlabelled", "none", "other")


def annotation_plan(facts: Any, task: str | None) -> dict[str, Any]:
    """Step 1's decisions for the generated project, from the probed data: the box format (object detection) and,
    for segmentation, the ignore index and whether labels are reduced (0 = unlabelled background dropped, ids shifted
    by -1: when the label names do not name a background and the masks use 0 plus 1..N for N names). Returns
    ProjectSpec fields plus a `reason`; {} for other tasks."""
    get = facts.get if isinstance(facts, dict) else (lambda k, d=None: getattr(facts, k, d))
    if task == "object-detection":
        fmt = str(get("bbox_format") or "coco").lower()
        return {"bbox_format": "pascal_voc" if fmt.startswith(("pascal", "voc", "xyxy")) else fmt.split()[0],
                "reason": f"boxes as {get('bbox_format') or 'coco xywh (the Hub object-detection layout)'}"}
    if task != "semantic-segmentation":
        return {}
    names = [str(n) for n in get("label_names") or []]
    values = sorted({int(v) for v in get("mask_values") or []})
    ignore = 255
    ids = [v for v in values if v != ignore]
    from_file = bool(names) and "mask values" not in str(get("label_names_from") or "")
    named_bg = bool(names) and names[0].strip().lower() in BACKGROUND_NAMES
    reduce = from_file and not named_bg and bool(ids) and ids[0] == 0 and max(ids) == len(names)
    if reduce:
        why = f"masks use 0..{max(ids)} but the {len(names)} label names have no background: 0 is ignored, ids shift by -1"
    elif named_bg:
        why = f"label 0 is {names[0]!r}, a class of its own"
    else:
        why = "mask values are the class ids" + (f" (0..{max(ids)})" if ids else "")
    if ignore in values:
        why += f"; {ignore} marks void pixels (ignored)"
    return {"ignore_index": ignore, "reduce_labels": reduce, "reason": why}


# ---------------------------------------------------------------- splits
def plan_splits(split_sizes: dict[str, int | None], task: str | None, label: str | None = "label") -> dict[str, Any]:
    """Which splits train and evaluate; a seeded split of train when there is no eval split."""
    names = list(split_sizes)
    train = next((s for s in names if split_of(s) == "train"), names[0] if len(names) == 1 else None)
    evals = next((s for want in ("validation", "test") for s in names if split_of(s) == want and s != train), None)
    plan: dict[str, Any] = {"train_split": train, "eval_split": evals}
    if train and not evals:
        strat = label if task in ("image-classification", "text-classification") else None
        plan["planned_split"] = {"from": train, "eval_fraction": EVAL_FRACTION, "seed": SEED, "stratify_by_column": strat}
    return plan


# ---------------------------------------------------------------- probes
def _render(v: Any) -> Any:
    if hasattr(v, "size") and hasattr(v, "mode"):
        return f"Image({v.size[0]}x{v.size[1]}, {v.mode})"
    if isinstance(v, (bytes, bytearray)):
        return f"<{len(v)} bytes>"
    if _is_image_struct(v):
        info = _image_info(v)
        return f"Image({info[0][0]}x{info[0][1]}, {info[1]})" if info else f"<image bytes: {len(v.get('bytes') or b'')}>"
    if isinstance(v, str):
        return v if len(v) <= 80 else v[:77] + "..."
    if isinstance(v, list):
        return [_render(x) for x in v[:5]] + ([f"... {len(v) - 5} more"] if len(v) > 5 else [])
    if isinstance(v, dict):
        return {k: _render(x) for k, x in list(v.items())[:8]}
    return v


MAX_VALUES = 200


def _value_counts(columns: dict[str, Any], values_of) -> None:
    """Fill columns[c]['values'] (value -> count over every row) for low-cardinality scalar columns."""
    for c, info in columns.items():
        if info.get("distinct") is None or info["distinct"] > MAX_VALUES or info.get("mixed_types"):
            continue
        counts = Counter(str(v) for v in values_of(c) if v is not None)
        if len(counts) <= MAX_VALUES:
            info["values"] = dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def probe_local_dataset(path: str, fmt: str = "auto", task: str | None = None, n_samples: int = 3) -> DatasetFacts:
    """Facts about a local dataset: format + evidence, columns, splits, label names and counts, issues."""
    scan = scan_local(path, fmt, task)
    splits: dict[str, int] = {}
    columns: dict[str, Any] = {}
    counts: dict[str, dict[str, int]] = {}
    samples: list[dict] = []
    label_names = list(scan.label_names)
    if scan.dataset is not None:
        ds = scan.dataset
        first = next(iter(ds.values()))
        types = feature_types(first.features)
        label_col = next((c for c, f in first.features.items() if "ClassLabel" in types[c] and hasattr(f, "names")), None)  # top-level only: a ClassLabel inside `objects` is not the label
        if label_col:
            label_names = list(first.features[label_col].names)
        for s, d in ds.items():
            splits[s] = d.num_rows
            if label_col:
                counts[s] = label_counts(list(d[label_col]), label_names)
        rows = [first[i] for i in range(min(N_STATS, first.num_rows))]
        columns = summarize_rows(rows, {}, types, label_names)
        _value_counts(columns, lambda c: [v for d in ds.values() for v in d[c]])
        samples = [{k: _render(v) for k, v in r.items()} for r in rows[:n_samples]]
    else:
        for s, rows in scan.splits.items():
            splits[s] = len(rows)
        first_rows = next((r for r in scan.splits.values() if r), [])
        columns = summarize_rows(first_rows[:N_STATS], scan.kinds, {}, label_names)
        _value_counts(columns, lambda c: [r.get(c) for rows in scan.splits.values() for r in rows])
        for c, info in columns.items():
            if "mixed_types" in info:
                all_rows = [r for rows in scan.splits.values() for r in rows]
                mixed = Counter(_type_name(r.get(c)) for r in all_rows if r.get(c) is not None)
                minority = sum(mixed.values()) - max(mixed.values())
                is_label = c.lower() in LABEL_NAMES
                numeric_strings = all(_num_like(r.get(c)) for r in all_rows if r.get(c) is not None)
                if not numeric_strings:
                    scan.issue("ask", "mixed_label_types" if is_label else "mixed_types", minority,
                               f"column {c!r} mixes value types {dict(mixed)} ({minority} minority value(s))")
        for c in first_rows[0] if first_rows else {}:
            vals = [r.get(c) for rows in scan.splits.values() for r in rows if isinstance(r.get(c), str)]
            nums = sum(1 for v in vals if _num_like(v))
            if c.lower() in LABEL_NAMES and 0 < nums < len(vals):
                scan.issue("ask", "mixed_label_types", min(nums, len(vals) - nums),
                           f"label column {c!r} mixes numeric ids ({nums}) and names ({len(vals) - nums})")
        lab = "label" if scan.kinds.get("label") else next((c for c in (first_rows[0] if first_rows else {}) if c.lower() in LABEL_NAMES), None)
        if lab:
            for s, rows in scan.splits.items():
                counts[s] = label_counts([r.get(lab) for r in rows if r.get(lab) is not None], label_names)
            if not label_names and "mixed_types" not in columns.get(lab, {}):
                vals = {r.get(lab) for rows in scan.splits.values() for r in rows if r.get(lab) is not None}
                if vals and all(isinstance(v, str) for v in vals):
                    label_names = sorted(vals)
                elif vals and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in vals) and max(vals) < 10000:
                    label_names = [str(i) for i in range(max(vals) + 1)]
                    scan.extra["label_names_from"] = "integer label ids (no names in the data)"
        if scan.kinds.get("objects") == "objects" and label_names:
            for s, rows in scan.splits.items():
                counts[s] = label_counts([c for r in rows for c in r["objects"]["category"]], label_names)
        samples = [{k: _render(v) for k, v in r.items()} for r in first_rows[:n_samples]]
        if not any(splits.values()):
            scan.issue("error", "no_rows", 1, "the dataset has no usable rows")
    return DatasetFacts.model_validate({
        "source": "local",
        "path": str(Path(path).expanduser().resolve()),
        "format": scan.format,
        "format_evidence": scan.extra.pop("detected_by", "") + (f"; {scan.evidence}" if scan.evidence else ""),
        "splits": splits,
        "columns": columns,
        "label_names": label_names,
        "label_counts": counts,
        "image_modes": image_modes(columns),
        "issues": [i.as_dict() for i in scan.issues],
        "samples": samples,
        **scan.extra,
    })


def _hub_dataset_error(dataset_id: str, err: Exception) -> ToolError:
    from datasets.exceptions import DatasetNotFoundError
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    text = str(err)
    if isinstance(err, GatedRepoError):
        return ToolError(f"dataset {dataset_id!r} is gated: request access on its Hub page, then set HF_TOKEN")
    if isinstance(err, (DatasetNotFoundError, RepositoryNotFoundError, FileNotFoundError)) and not isinstance(err, OFFLINE_ERRORS):
        return ToolError(f"dataset {dataset_id!r} was not found on the Hub at {endpoint()} (check the id)")
    if isinstance(err, OFFLINE_ERRORS) or isinstance(err, ConnectionError) or "offline" in text.lower():
        return ToolError(f"dataset {dataset_id!r} is not in the local cache and the Hub at {endpoint()} cannot be reached (offline)")
    return ToolError(f"dataset {dataset_id!r} cannot be loaded: {type(err).__name__}: {text.splitlines()[0][:200] if text else ''}")


def probe_hub_dataset(dataset_id: str, config_name: str | None = None, token_present: bool = False, n_samples: int = 3) -> DatasetFacts:
    """Facts about a Hub dataset through `datasets`: builder info, features, splits and sizes, streamed sample rows."""
    datasets = require_datasets()
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    info_gated, license_ = None, None
    try:
        hub_info = HfApi(endpoint=endpoint()).dataset_info(dataset_id)
        info_gated = hub_info.gated
        license_ = (hub_info.card_data or {}).get("license") if hub_info.card_data else None
    except OFFLINE_ERRORS:
        hub_info = None
    except HfHubHTTPError as err:
        raise _hub_dataset_error(dataset_id, err) from None
    if info_gated and not token_present:
        raise ToolError(f"dataset {dataset_id!r} is gated ({info_gated}) and HF_TOKEN is not set: request access on its Hub page, then set HF_TOKEN")
    try:
        configs = datasets.get_dataset_config_names(dataset_id)
        if config_name is None and len(configs) > 1 and "default" not in configs:
            raise NeedsUser(
                f"dataset {dataset_id!r} has {len(configs)} configurations: {', '.join(configs[:15])}; which one?",
                "rerun with --set dataset_config=<name>",
            )
        builder = datasets.load_dataset_builder(dataset_id, config_name)
        features = builder.info.features
        split_sizes = {s: (i.num_examples if i else None) for s, i in (builder.info.splits or {}).items()}
        stream = datasets.load_dataset(dataset_id, config_name, streaming=True)
        if not split_sizes:
            split_sizes = {s: None for s in stream}
        first_split = "train" if "train" in stream else next(iter(stream))
        it = stream[first_split]
        rows = list(it.take(N_STATS // 3))
        features = features or it.features
    except NeedsUser:
        raise
    except Exception as err:  # noqa: BLE001 - datasets raises many unrelated types; each becomes a one-line ToolError
        raise _hub_dataset_error(dataset_id, err) from None
    types = feature_types(features) if features else {}
    label_col = next((c for c, t in types.items() if t.startswith("ClassLabel")), None)
    label_names = list(features[label_col].names) if label_col else []
    counts = {first_split + " (sample)": label_counts([r[label_col] for r in rows], label_names)} if label_col else {}
    columns = summarize_rows(rows, {}, types, label_names)
    _value_counts(columns, lambda c: [r.get(c) for r in rows])
    return DatasetFacts.model_validate({
        "source": "hub",
        "dataset_id": dataset_id,
        "config_name": config_name,
        "configs": configs[:20],
        "license": license_,
        "gated": info_gated,
        "format": "hub",
        "format_evidence": f"datasets builder {type(builder).__name__}",
        "splits": split_sizes,
        "columns": columns,
        "label_names": label_names,
        "label_counts": counts,
        "sampled_rows": len(rows),
        "image_modes": image_modes(columns),
        "issues": [],
        "samples": [{k: _render(v) for k, v in r.items()} for r in rows[:n_samples]],
    })


def dataset_issues(facts: DatasetFacts, level: Level) -> list[dict[str, Any]]:
    return [i.model_dump() for i in facts.issues_at(level)]


# ---------------------------------------------------------------- column roles by content
ID_LIKE = re.compile(r"(^|_)(id|idx|index|uuid|guid|key|filename|file_name|path)$", re.I)
SHORT_TEXT = 40  # mean characters above which a string column reads as text, not as a class name
SENTENCE_WORDS = 3  # mean words from which a string column reads as text (sentences), not as class names


def _is_string(t: str) -> bool:
    return t in ("string", "large_string")


def _is_int(t: str) -> bool:
    return t == "int" or bool(re.fullmatch(r"u?int\d+", t))


def _image_column(info: Any) -> bool:
    return info.type in ("Image", "image", "image-path") or info.image_sizes is not None


def _label_tier(name: str, info: Any) -> tuple[int, str] | None:
    """How strongly a column reads as the class label (3 ClassLabel, 2 label-like name, 1 low cardinality), with the evidence."""
    t = info.type
    if t.startswith("ClassLabel"):
        return 3, f"{t} column"
    if not (_is_string(t) or _is_int(t)) or info.distinct is None or ID_LIKE.search(name):
        return None
    if _is_string(t) and ((info.text_chars and info.text_chars.get("mean", 0) > SHORT_TEXT) or (info.text_words or 0) >= SENTENCE_WORDS):
        return None
    n, k = info.sampled or 0, info.distinct
    if _is_int(t) and k == n and n > 10:
        return None  # one value per row: an id, not a class
    if k > max(2, n // 2) or k > MAX_VALUES:
        return None
    why = f"{'string' if _is_string(t) else 'integer'} column with {k} distinct value(s) in {n} sampled row(s)"
    return (2, why + f"; name {name!r} is a usual label name") if name.lower() in LABEL_NAMES else (1, why)


def _text_column(name: str, info: Any) -> bool:
    if not _is_string(info.type) or ID_LIKE.search(name):
        return False
    mean = (info.text_chars or {}).get("mean", 0)
    return mean > SHORT_TEXT or (info.text_words or 0) >= SENTENCE_WORDS or info.distinct is None or (info.sampled or 0) <= 1 or info.distinct > (info.sampled or 0) // 2


def infer_columns(task: str, facts: DatasetFacts, renames: dict[str, str] | None = None,
                  given: dict[str, str] | None = None) -> tuple[Columns, list[Issue]]:
    """Which column is the image / text / text pair / label, read from types and values (names only break ties).

    `renames` (source -> new name) apply first; `given` (role -> column, after renames) is the user's word and is only
    checked for existence. The one low-cardinality string or integer column beside an image or text column is the
    label; two text columns are a pair. Two equally good readings are an `ask` issue naming both, with the evidence.
    """
    renames, given = dict(renames or {}), {k: v for k, v in (given or {}).items() if v}
    cols = {renames.get(c, c): info for c, info in facts.columns.items()}
    issues: list[Issue] = []
    evidence: dict[str, str] = {}
    chosen: dict[str, str | None] = {}
    for role, col in given.items():
        if col not in cols:
            issues.append(Issue("ask", f"unknown_{role}_column", 1, f"columns.{role}={col!r} is not a column; columns are {sorted(cols)}"))
        else:
            chosen[role] = col
            evidence[role] = "given by the user"
    taken = set(chosen.values())
    if task == "image-classification" and "image" not in chosen:
        imgs = [c for c, i in cols.items() if _image_column(i) and c not in taken]
        if len(imgs) > 1:
            named = [c for c in imgs if c.lower() in IMAGE_NAMES]
            imgs = named[:1] if len(named) == 1 else imgs
        if not imgs:
            issues.append(Issue("ask", "missing_image_column", 1, f"no image column (Image feature, image bytes or image paths) among {sorted(cols)}"))
        elif len(imgs) > 1:
            issues.append(Issue("ask", "ambiguous_image_column", 1, f"{len(imgs)} image columns {imgs}: say which with --set columns.image=NAME"))
        else:
            chosen["image"] = imgs[0]
            evidence["image"] = f"{cols[imgs[0]].type} column" + (f" ({cols[imgs[0]].image_sizes['most_common'][0]} most common)" if (cols[imgs[0]].image_sizes or {}).get("most_common") else "")
        taken = set(filter(None, chosen.values()))
    if "label" not in chosen:
        tiers = {c: t for c, i in cols.items() if c not in taken and (t := _label_tier(c, i))}
        best = max((t[0] for t in tiers.values()), default=0)
        top = [c for c, t in tiers.items() if t[0] == best]
        if not top:
            issues.append(Issue("ask", "missing_label_column", 1, f"no class label column (a low-cardinality string or integer column) among {sorted(cols)}: "
                                "say which with --set columns.label=NAME"))
        elif len(top) > 1:
            issues.append(Issue("ask", "ambiguous_label_column", 1, "two equally good label columns: " + "; ".join(f"{c!r}: {tiers[c][1]}" for c in top)
                                + ": say which with --set columns.label=NAME"))
        else:
            chosen["label"] = top[0]
            beside = chosen.get("image")
            evidence["label"] = tiers[top[0]][1] + (f", beside image column {beside!r}" if beside else "")
        taken = set(filter(None, chosen.values()))
    if task == "text-classification" and "text" not in chosen:
        texts = [c for c, i in cols.items() if c not in taken and _text_column(c, i)]
        pair = next((p for p in PAIR_NAMES if all(c in texts for c in p)), None)
        if pair:
            texts = list(pair)
        elif len(texts) > 2:
            named = [c for c in texts if c.lower() in TEXT_NAMES]
            texts = named if len(named) == 1 else texts
        if not texts:
            issues.append(Issue("ask", "missing_text_column", 1, f"no text column among {sorted(cols)}: say which with --set columns.text=NAME"))
        elif len(texts) > 2:
            issues.append(Issue("ask", "ambiguous_text_columns", 1, f"{len(texts)} text columns {texts}: say which with --set columns.text=NAME "
                                "(and columns.text_pair=NAME for a sentence pair)"))
        else:
            chosen["text"] = texts[0]
            evidence["text"] = f"string column, mean {cols[texts[0]].text_chars.get('mean') if cols[texts[0]].text_chars else '?'} characters"
            if len(texts) == 2 and "text_pair" not in chosen:
                chosen["text_pair"] = texts[1]
                evidence["text_pair"] = f"a second text column beside {texts[0]!r}: a sentence pair"
    columns = Columns(**{k: v for k, v in chosen.items() if v}, evidence=evidence)
    if columns.label and columns.label in cols:
        sample = (facts.samples or [{}])[0]
        src = next((s for s, n in renames.items() if n == columns.label), columns.label)
        if isinstance(sample.get(src), list):
            issues.append(Issue("ask", "multi_label", 1, f"label column {columns.label!r} holds lists (multi-label); single-label classification needs one label per row"))
    return columns, issues


def label_names_for(facts: DatasetFacts, column: str, renames: dict[str, str]) -> tuple[list[str], str]:
    """The class names of the label column and where they came from: ClassLabel names, integer ids, or the sorted values."""
    src = next((s for s, n in renames.items() if n == column), column)
    info = facts.columns.get(src)
    if info is None:
        return [], ""
    if info.type.startswith("ClassLabel") and facts.label_names:
        return list(facts.label_names), "ClassLabel names"
    values = list((info.values or {}).keys())
    if not values:
        return [], ""
    ids = [int(v) for v in values if re.fullmatch(r"\d+", v)]
    if facts.label_names and _is_int(info.type) and len(ids) == len(values) and max(ids) < len(facts.label_names):
        return list(facts.label_names), facts.label_names_from or "the dataset's class names (folders / categories)"
    if _is_int(info.type) and all(re.fullmatch(r"\d+", v) for v in values):
        return [str(i) for i in range(max(map(int, values)) + 1)], "integer label ids (no names in the data)"
    where = "every row" if facts.source == "local" else f"{facts.sampled_rows} sampled rows"
    return sorted(values), f"the sorted values of {column!r} ({where})"


def holdout_size(counts: list[int], fraction: float) -> int:
    """Rows a hold-out takes: per class int(fraction * n_c + 0.5), at least one of a class with 2+ rows (prepare_data.py's rule)."""
    total = 0
    for n in counts:
        k = int(fraction * n + 0.5)
        total += max(1, k) if n >= 2 else k
    return total


def expected_sizes(facts: DatasetFacts, plan: Any, renames: dict[str, str]) -> tuple[int | None, int | None]:
    """The train / eval row counts the split plan yields on this dataset, or None where the probe cannot know them."""
    sizes = facts.splits
    n_tr = sizes.get(plan.train_split) if plan.train_split else None
    if n_tr is None:
        return None, None
    if plan.eval_split:
        n_ev = sizes.get(plan.eval_split)
        return min(plan.n_train, n_tr), (min(plan.n_eval, n_ev) if n_ev is not None else None)
    if plan.stratify_by:
        src = next((s for s, n in renames.items() if n == plan.stratify_by), plan.stratify_by)
        info = facts.columns.get(src)
        if facts.source != "local" or len(sizes) != 1 or info is None or not info.values:
            return None, None
        k = holdout_size(list(info.values.values()), plan.eval_fraction)
    else:
        k = max(1, int(plan.eval_fraction * n_tr + 0.5))
    return min(plan.n_train, n_tr - k), min(plan.n_eval, k)


def check_dataset_for_task(facts: DatasetFacts, task: str, renames: dict[str, str] | None = None,
                           given: dict[str, str] | None = None) -> tuple[dict[str, str], dict[str, Any]]:
    """Verify columns for the task and plan splits; raises NeedsUser for restructuring and ToolError when unusable.

    Returns (renames, layout); layout['columns'] is the role mapping (a Columns dump, names after renames).
    """
    renames = dict(renames or {})
    if task in ("image-classification", "text-classification"):
        columns, issues = infer_columns(task, facts, renames, given)
        layout: dict[str, Any] = {f"{r}_column": c for r, c in columns.model_dump(exclude={"evidence"}).items() if c}
        if task == "text-classification":
            layout["text_columns"] = [c for c in (columns.text, columns.text_pair) if c]
    else:
        sample_rows = facts.samples or []
        sample = sample_rows[0] if sample_rows else {}
        # samples are rendered for display; the verification only needs their Python types
        types = {renames.get(k, k): v.type for k, v in facts.columns.items()}
        found, layout, issues = verify_columns(task, types, sample)
        renames.update(found)
        roles = {"image": "image", "objects": "objects", "annotation": "mask", "question": "question", "answer": "answer"}
        after = {renames.get(c, c) for c in types}
        columns = Columns(**{role: name for name, role in roles.items() if name in after})
    layout["columns"] = columns.model_dump()
    errors = dataset_issues(facts, "error")
    if errors:
        raise ToolError(f"dataset unusable: {errors[0]['message']}")
    asks = [i.message for i in issues] + [i["message"] for i in dataset_issues(facts, "ask")]
    layout.update(plan_splits(facts.splits or {}, task, columns.label))
    if asks:
        raise NeedsUser(
            f"the dataset needs a decision before {task} training: " + "; ".join(asks),
            "say which column plays which role with --set columns.label=NAME (columns.text, columns.text_pair, columns.image), "
            "fix the data, or pick another dataset with --dataset-id / --local-dataset-path, and rerun",
        )
    return renames, layout


class ProbeDatasetArgs(BaseModel):
    n_samples: int = Field(3, ge=0, le=10, description="how many sample rows to show")


def probe_dataset_facts(cfg: Any, token_present: bool, n_samples: int = 3) -> DatasetFacts:
    """Probe the dataset named by a RunConfig (Hub id or local path)."""
    if cfg.dataset_id:
        return probe_hub_dataset(cfg.dataset_id, cfg.dataset_config, token_present, n_samples)
    if cfg.local_dataset_path:
        return probe_local_dataset(cfg.local_dataset_path, cfg.local_dataset_format, cfg.task_type, n_samples)
    raise ToolError("no dataset given: call recommend_datasets and ask the user to pick one")


@tool(step=1)
def probe_dataset(ctx, args: ProbeDatasetArgs) -> dict:
    """Probe the configured dataset (Hub id or local path, any supported format): format and evidence, columns and types, splits and sizes, label names and counts, image sizes, text lengths, boxes/masks, problems with counts, sample rows. When task_type is known, verifies the columns for it (renames recorded; restructuring stops to ask). Records config.dataset_facts."""
    with hub_env(ctx.creds.env(["HF_TOKEN"])):
        facts = probe_dataset_facts(ctx.config, ctx.creds.present("HF_TOKEN"), args.n_samples)
    cfg = ctx.config
    cfg.dataset_facts = facts
    ctx.session.event("probe_dataset", format=facts.format, splits=facts.splits)
    ctx.save()
    if cfg.task_type:
        from tao_finetune.tools.task import fill_project

        fill_project(cfg, facts, cfg.task_type)
        ctx.save()
    return cfg.dataset_facts.model_dump(mode="json", exclude_defaults=True)
