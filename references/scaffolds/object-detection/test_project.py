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
"""Unit tests of this project's own code on fake, heterogeneous data: `python -m pytest -q tests/` in the project dir.

Images of mixed modes and odd sizes with boxes in the dataset's format (some out of the image, one degenerate) go
through prepare_data's decode, resize and box clipping, the .npy cache and task.to_inputs (batch padding, pixel_mask,
flips, cxcywh labels); then one forward + backward of config.yaml's model_id, loaded as train.py loads it, and the
COCO mAP of perfect predictions. No dataset and no prepared data/ are needed.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

PROJECT = Path(os.environ.get("TAO_PROJECT_DIR") or Path(__file__).resolve().parent.parent).resolve()
os.environ.setdefault("TAO_PROJECT_DIR", str(PROJECT))
sys.path.insert(0, str(PROJECT))

import common  # noqa: E402
import prepare_data  # noqa: E402
import task  # noqa: E402
from annotated import project  # noqa: E402
from sources import Table  # noqa: E402

LABELS = ["a", "b", "c"]
FAKES = [("L", (17, 40)), ("RGB", (300, 200)), ("RGBA", (40, 17)), ("P", (64, 64)), ("1", (9, 9)), ("I;16", (23, 23)),
         ("CMYK", (48, 31)), ("RGB", (640, 9))]


def fake_image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def encoded(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if img.mode == "CMYK" else "PNG")
    return buf.getvalue()


def coco_boxes(w: int, h: int) -> list[list[float]]:
    """One box inside, one running off the bottom-right (clipped), one zero-width (dropped): coco xywh."""
    return [[w * 0.1, h * 0.2, w * 0.5, h * 0.5], [w * 0.6, h * 0.6, w, h], [w * 0.3, h * 0.3, 0.0, h * 0.2]]


@pytest.fixture(scope="module")
def p() -> dict:
    spec = project(common.load_config())
    return {**spec, "bbox_format": "coco", "skip_files": [], "columns": {"image": "image", "objects": "objects"}}


@pytest.fixture(scope="module")
def size(p) -> int:
    return min(prepare_data.processor_spec(p["model_id"], p.get("image_size"), prepare_data.CANVAS_CAP)["size"], 128)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """Dataset rows as a Hub object-detection dataset stores them (image bytes, objects as a dict of lists)."""
    out = []
    for i, (m, s) in enumerate(FAKES):
        out.append({"image": {"bytes": encoded(fake_image(m, s, i)), "path": None},
                    "objects": {"bbox": coco_boxes(*s), "category": [i % 3, (i + 1) % 3, 0]}})
    return out


@pytest.fixture(scope="module")
def meta(p, size) -> dict:
    spec = prepare_data.processor_spec(p["model_id"], size, size)
    return {"label_names": LABELS, "size": size, "image_mean": spec["image_mean"], "image_std": spec["image_std"],
            "hflip": True, "pixel_mask": prepare_data.wants_pixel_mask(p["model_id"])}


def test_boxes_are_clipped_and_degenerate_ones_dropped_with_counts(p, size, rows):
    out, counts = prepare_data.build_split(Table(rows, {}), np.arange(len(rows)), p, size, LABELS)
    assert counts["boxes_in"] == 3 * len(rows) and counts["dropped_degenerate"] >= len(rows)  # + boxes under 1 px after resizing
    assert counts["clipped"] >= len(rows) and counts["boxes_kept"] == counts["boxes_in"] - counts["dropped_degenerate"]
    for canvas, (h, w), boxes, cats, _ in out:
        assert canvas.shape == (3, size, size) and canvas.dtype == np.uint8 and max(h, w) == size
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert (boxes[:, 2] - boxes[:, 0] >= 1).all() and (boxes[:, 3] - boxes[:, 1] >= 1).all() and len(cats) == len(boxes) <= 2


def test_cache_and_collate_pad_the_batch_and_build_labels(tmp_path, monkeypatch, p, size, rows, meta):
    out, _ = prepare_data.build_split(Table(rows, {}), np.arange(len(rows)), p, size, LABELS)
    monkeypatch.setattr(common, "DATA", tmp_path)
    common.save_split("train", prepare_data.arrays(out, size, 4))
    batch = common.CachedSplit("train", task.FIELDS).take(np.arange(len(rows)))
    inputs = task.to_inputs(batch, common.Runtime(common.load_config()), meta, train=True)
    x = inputs["pixel_values"]
    assert x.dtype == torch.float32 and x.shape[0] == len(rows) and torch.isfinite(x).all()
    if "pixel_mask" in inputs:
        assert inputs["pixel_mask"].shape == (len(rows), *x.shape[-2:]) and inputs["pixel_mask"].sum() > 0
    for t, (_, _, boxes, _, _) in zip(inputs["labels"], out):
        assert len(t["class_labels"]) == len(boxes) and t["boxes"].shape == (len(boxes), 4)
        assert ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()


def test_one_training_step_and_a_perfect_map(p, size, rows, meta):
    rt = common.Runtime(common.load_config())
    out, _ = prepare_data.build_split(Table(rows, {}), np.arange(len(rows)), p, size, LABELS)
    batch = {k: torch.from_numpy(v) for k, v in prepare_data.arrays(out, size, 4).items()}
    model = common.load_model(task.AUTO_CLASS, p["model_id"], meta, fresh_head=True).to(rt.device).train()
    with rt.autocast():
        loss = model(**task.to_inputs(batch, rt, meta, train=True)).loss
    assert torch.isfinite(loss), f"loss is not finite: {loss}"
    loss.backward()
    grads = [q.grad for q in model.parameters() if q.requires_grad and q.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and sum(float(g.norm()) for g in grads) > 0
    gts = [task.targets_of(batch, j) for j in range(len(rows))]
    perfect = [{"boxes": b, "labels": c, "scores": np.ones(len(c))} for b, c in gts]
    assert task.coco_map(gts, perfect, LABELS, batch["sizes"].numpy())["map"] == pytest.approx(1.0)
