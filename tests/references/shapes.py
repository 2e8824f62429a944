"""Small data the tests make for detection and segmentation (coloured shapes on noise) and tiny random-init models of
the real architectures (DETR with a small non-timm ResNet backbone; SegFormer), saved with their image processors."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = ["square", "disc"]
COLOURS = {"square": (220, 40, 40), "disc": (40, 80, 230)}


def _scene(rng: np.random.Generator, w: int, h: int, n_objects: int) -> tuple[Image.Image, list[tuple[str, list[float]]]]:
    """Noise background with up to n_objects non-overlapping shapes; boxes as absolute xyxy."""
    img = Image.fromarray(rng.integers(90, 150, (h, w, 3), dtype=np.uint8))
    d = ImageDraw.Draw(img)
    objs: list[tuple[str, list[float]]] = []
    for _ in range(n_objects * 4):
        if len(objs) == n_objects:
            break
        s = int(rng.integers(min(w, h) // 4, min(w, h) // 2))
        x, y = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
        box = [x, y, x + s, y + s]
        if any(not (box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1]) for _, b in objs):
            continue
        kind = SHAPES[int(rng.integers(0, len(SHAPES)))]
        (d.rectangle if kind == "square" else d.ellipse)([x, y, x + s - 1, y + s - 1], fill=COLOURS[kind])
        objs.append((kind, [float(v) for v in box]))
    return img, objs


def detection_coco(root: Path, n: int = 60, size: tuple[int, int] = (64, 48), seed: int = 0, bad_boxes: bool = True) -> Path:
    """A COCO folder: images/ + annotations.json (categories ids 1..2); with an out-of-image and a zero-area box."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    for i in range(n):
        w, h = size if i % 2 else size[::-1]
        img, objs = _scene(rng, w, h, 1 + i % 2)
        img.save(root / "images" / f"{i:04d}.png")
        images.append({"id": i + 1, "file_name": f"{i:04d}.png", "width": w, "height": h})
        for kind, (x1, y1, x2, y2) in objs:
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": SHAPES.index(kind) + 1,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    if bad_boxes:
        anns.append({"id": len(anns) + 1, "image_id": 1, "category_id": 1, "bbox": [40, 30, 100, 100], "area": 1, "iscrowd": 0})
        anns.append({"id": len(anns) + 1, "image_id": 2, "category_id": 2, "bbox": [10, 10, 0, 5], "area": 0, "iscrowd": 0})
    cats = [{"id": k + 1, "name": s} for k, s in enumerate(SHAPES)]
    (root / "annotations.json").write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return root


def detection_voc(root: Path, n: int = 20, size: tuple[int, int] = (64, 48), seed: int = 1) -> Path:
    """A Pascal VOC detection folder: JPEGImages/ + Annotations/*.xml + ImageSets/Main/{train,val}.txt."""
    rng = np.random.default_rng(seed)
    for d in ("JPEGImages", "Annotations", "ImageSets/Main"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, objs = _scene(rng, *size, 1 + i % 2)
        img.save(root / "JPEGImages" / f"{i:04d}.jpg", quality=95)
        ann = ET.Element("annotation")
        ET.SubElement(ann, "filename").text = f"{i:04d}.jpg"
        for kind, box in objs:
            o = ET.SubElement(ann, "object")
            ET.SubElement(o, "name").text = kind
            bb = ET.SubElement(o, "bndbox")
            for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box):
                ET.SubElement(bb, k).text = str(int(v))
        ET.ElementTree(ann).write(root / "Annotations" / f"{i:04d}.xml")
    ids = [f"{i:04d}" for i in range(n)]
    (root / "ImageSets" / "Main" / "train.txt").write_text("\n".join(ids[: n * 3 // 4]) + "\n")
    (root / "ImageSets" / "Main" / "val.txt").write_text("\n".join(ids[n * 3 // 4:]) + "\n")
    return root


def segmentation_folders(root: Path, n: int = 60, size: int = 32, seed: int = 2, labels_file: bool = True) -> Path:
    """images/ + masks/ pairs (mask 0 = background, 1 = square, 2 = disc, 255 = a void border) and labels.txt."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, objs = _scene(rng, size, size, 1 + i % 2)
        mask = Image.new("L", (size, size), 0)
        d = ImageDraw.Draw(mask)
        for kind, (x1, y1, x2, y2) in objs:
            (d.rectangle if kind == "square" else d.ellipse)([x1, y1, x2 - 1, y2 - 1], fill=SHAPES.index(kind) + 1)
        arr = np.asarray(mask).copy()
        arr[0, :] = 255
        img.save(root / "images" / f"{i:04d}.png")
        Image.fromarray(arr).save(root / "masks" / f"{i:04d}.png")
    if labels_file:
        (root / "labels.txt").write_text("\n".join(["background", *SHAPES]) + "\n")
    return root


def tiny_detr(path: Path, names: list[str] = SHAPES, size: int = 64, seed: int = 0) -> Path:
    """A random-init DETR (2+2 layers, d_model 64) on a tiny ResNet backbone (no timm), with its image processor.
    Seeded: what a test run learns depends on the draw, so the draw is fixed."""
    import torch
    from transformers import DetrConfig, DetrForObjectDetection, DetrImageProcessor, ResNetConfig

    torch.manual_seed(seed)

    # two stages (stride 8): a 64 px image still gives an 8x8 feature map to localise on
    backbone = ResNetConfig(embedding_size=16, hidden_sizes=[32, 64], depths=[1, 1], layer_type="basic", out_features=["stage2"])
    cfg = DetrConfig(backbone_config=backbone, use_timm_backbone=False, d_model=64, encoder_layers=2, decoder_layers=2,
                     encoder_ffn_dim=128, decoder_ffn_dim=128, encoder_attention_heads=4, decoder_attention_heads=4,
                     num_queries=10, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model = DetrForObjectDetection(cfg)
    torch.nn.init.normal_(model.model.query_position_embeddings.weight)  # N(0, 1) as DETR's nn.Embedding: distinct queries
    model.save_pretrained(path)
    DetrImageProcessor(size={"shortest_edge": size, "longest_edge": size}).save_pretrained(path)
    return path


def tiny_segformer(path: Path, names: list[str] = ("background", *SHAPES), size: int = 32, seed: int = 0) -> Path:
    """A random-init SegFormer (2 stages, hidden sizes 16/32) with its image processor; seeded like tiny_detr."""
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    torch.manual_seed(seed)

    cfg = SegformerConfig(num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1], hidden_sizes=[16, 32], patch_sizes=[3, 3],
                          strides=[2, 2], num_attention_heads=[1, 2], mlp_ratios=[2, 2], decoder_hidden_size=32,
                          id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    SegformerForSemanticSegmentation(cfg).save_pretrained(path)
    SegformerImageProcessor(size={"height": size, "width": size}).save_pretrained(path)
    return path
