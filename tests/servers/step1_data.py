"""Test data for Step 1: tiny random models from configs and real digit images in every local dataset format."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ["zero", "one", "two"]


@lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def digit_image(i: int, size: int = 32) -> Image.Image:
    """Digit number i of scikit-learn's load_digits, upscaled to an RGB image."""
    images, _ = _digits()
    arr = (images[i] * (255 / 16)).astype("uint8")
    return Image.fromarray(arr).resize((size, size), Image.NEAREST).convert("RGB")


def digits_of(label: int, n: int) -> list[int]:
    _, target = _digits()
    return [int(i) for i in np.flatnonzero(target == label)[:n]]


def save_vit(path: Path, num_labels: int = 3, id2label: dict[int, str] | None = None, card: str | None = None) -> Path:
    """A ~10k-parameter ViT image classifier with its image processor."""
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    id2label = id2label or {i: n for i, n in enumerate(CLASSES[:num_labels])}
    cfg = ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=32, patch_size=8,
                    num_labels=num_labels, id2label=id2label, label2id={v: k for k, v in id2label.items()})
    ViTForImageClassification(cfg).save_pretrained(path)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    if card is not None:
        (path / "README.md").write_text(card)
    return path


def write_config(path: Path, **config) -> Path:
    """A model folder holding only config.json."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    return path


def corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")


def imagefolder(root: Path, per_class: int = 4, splits: tuple[str, ...] = ("train",), bad: bool = False) -> Path:
    """Class-per-folder images (optionally in split folders); bad adds one corrupt and one empty image."""
    for split in splits:
        base = root / split if splits != ("",) else root
        for label, name in enumerate(CLASSES):
            d = base / name
            d.mkdir(parents=True, exist_ok=True)
            for k, i in enumerate(digits_of(label, per_class)):
                digit_image(i).save(d / f"{k}.png")
    if bad:
        first = root / splits[0] if splits != ("",) else root
        corrupt(first / CLASSES[0] / "broken.png")
        (first / CLASSES[1] / "empty.png").write_bytes(b"")
    return root


def coco(root: Path, n: int = 6, orphans: int = 0, split: str = "train") -> Path:
    """COCO detection: images/<file>, annotations/instances_<split>.json; orphans adds annotations for unknown image ids."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    images, anns = [], []
    for k in range(n):
        name = f"{k:04d}.png"
        digit_image(k, 64).save(root / "images" / name)
        images.append({"id": k + 1, "file_name": name, "width": 64, "height": 64})
        for j in range(1 + k % 2):
            anns.append({"id": len(anns) + 1, "image_id": k + 1, "category_id": 1 + (k + j) % 2, "bbox": [4 + j * 20, 4, 20, 24], "area": 480, "iscrowd": 0})
    for j in range(orphans):
        anns.append({"id": len(anns) + 1, "image_id": 999 + j, "category_id": 1, "bbox": [1, 1, 5, 5], "area": 25, "iscrowd": 0})
    cats = [{"id": 1, "name": "even"}, {"id": 2, "name": "odd"}]
    (root / "annotations" / f"instances_{split}.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


VOC_XML = """<annotation><filename>{file}</filename><size><width>64</width><height>64</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJ = "<object><name>{name}</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"


def voc_detection(root: Path, n: int = 6) -> Path:
    (root / "Annotations").mkdir(parents=True, exist_ok=True)
    (root / "JPEGImages").mkdir(exist_ok=True)
    (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
    for k in range(n):
        digit_image(k, 64).convert("RGB").save(root / "JPEGImages" / f"{k:04d}.jpg")
        obj = VOC_OBJ.format(name=["cat", "dog"][k % 2], x0=4, y0=4, x1=40, y1=44)
        (root / "Annotations" / f"{k:04d}.xml").write_text(VOC_XML.format(file=f"{k:04d}.jpg", objects=obj))
    ids = [f"{k:04d}" for k in range(n)]
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[: n - 2]))
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids[n - 2 :]))
    return root


def voc_segmentation(root: Path, n: int = 6, missing_masks: int = 0) -> Path:
    (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (root / "SegmentationClass").mkdir(exist_ok=True)
    for k in range(n):
        digit_image(k, 32).save(root / "JPEGImages" / f"{k:04d}.jpg")
        if k >= missing_masks:
            mask = np.zeros((32, 32), dtype="uint8")
            mask[8:24, 8:24] = 1 + k % 2
            mask[0, :] = 255
            Image.fromarray(mask, mode="L").save(root / "SegmentationClass" / f"{k:04d}.png")
    (root / "labels.txt").write_text("background\nfoo\nbar\n")
    return root


def text_rows(n: int = 12, string_labels: bool = False) -> list[dict]:
    words = ["good", "bad", "fine", "awful", "great", "poor"]
    return [{"sentence": f"this is {words[k % 6]} number {k}", "labels": (["neg", "pos"][k % 2] if string_labels else k % 2)} for k in range(n)]


def jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def csv_file(path: Path, rows: list[dict]) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def image_dataset(n_per_class: int = 4):
    """A datasets.Dataset of digit images with img/labels column names (to test renames)."""
    import datasets

    rows = [{"img": digit_image(i), "labels": label} for label in range(3) for i in digits_of(label, n_per_class)]
    feats = datasets.Features({"img": datasets.Image(), "labels": datasets.ClassLabel(names=CLASSES)})
    return datasets.Dataset.from_list(rows, features=feats)


FAKE_TOKEN = "hf_" + "Z" * 34


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    """A LocalHub on 127.0.0.1 with HF_ENDPOINT pointing at it, a fresh HF_HOME, Xet off and no token."""
    from servers.hub import serve_hub

    with serve_hub(tmp_path / "hub-store") as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
        monkeypatch.delenv("HF_DATASETS_CACHE", raising=False)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.delenv("HF_TOKEN", raising=False)
        from tao_finetune.tools.probe import hub_env

        # huggingface_hub and datasets read these once at import, and tests start offline (tests/conftest.py)
        with hub_env():
            yield hub


def digits_parquet(path: Path, n_per_class: int = 4) -> Path:
    """A parquet file of digit images with image/label columns."""
    import datasets

    rows = [{"image": digit_image(i), "label": label} for label in range(3) for i in digits_of(label, n_per_class)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)})
    datasets.Dataset.from_list(rows, features=feats).to_parquet(str(path))
    return path
