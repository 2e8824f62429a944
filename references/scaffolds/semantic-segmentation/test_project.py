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

Images of mixed modes and odd sizes with class-id masks (palette and greyscale, void 255, an out-of-range id) go
through prepare_data's decode, resize (nearest for masks) and label mapping, the .npy cache and task.to_inputs with
the joint flip; then one forward + backward of config.yaml's model_id, loaded as train.py loads it, and the metrics
of a perfect prediction. No dataset and no prepared data/ are needed.
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

LABELS = ["background", "thing", "stuff"]
FAKES = [("L", (17, 40)), ("RGB", (300, 200)), ("RGBA", (40, 17)), ("P", (64, 64)), ("I;16", (23, 23)), ("CMYK", (48, 31))]


def fake_image(mode: str, size: tuple[int, int], seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    w, h = size
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65535, (h, w), dtype=np.uint16))
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def fake_mask(size: tuple[int, int], seed: int, palette: bool) -> Image.Image:
    """Left half class 1, right half class 2, a void (255) top row and one out-of-range id (7) pixel."""
    w, h = size
    arr = np.zeros((h, w), np.uint8)
    arr[:, : w // 2] = 1
    arr[:, w // 2:] = 2
    arr[0, :] = 255
    arr[-1, -1] = 7
    img = Image.fromarray(arr)
    if palette:
        img = img.convert("P")
        img.putpalette([v for k in range(256) for v in (k, 255 - k, (k * 7) % 256)])
    return img


def encoded(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG" if img.mode == "CMYK" else "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def p() -> dict:
    spec = project(common.load_config())
    return {**spec, "skip_files": [], "columns": {"image": "image", "mask": "annotation"}, "ignore_index": 255,
            "reduce_labels": False}


@pytest.fixture(scope="module")
def size(p) -> int:
    return min(prepare_data.processor_spec(p["model_id"], p.get("image_size"), prepare_data.SIZE_CAP)["size"], 128)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return [{"image": {"bytes": encoded(fake_image(m, s, i)), "path": None},
             "annotation": {"bytes": encoded(fake_mask(s, i, palette=i % 2 == 0)), "path": None}} for i, (m, s) in enumerate(FAKES)]


@pytest.fixture(scope="module")
def meta(p, size) -> dict:
    spec = prepare_data.processor_spec(p["model_id"], size, size)
    return {"label_names": LABELS, "size": size, "image_mean": spec["image_mean"], "image_std": spec["image_std"],
            "hflip": True, "color_jitter": True, "cache_ignore_index": 255}


def test_masks_map_to_class_ids_with_void_and_out_of_range_ignored(p, size, rows):
    px, masks, counts = prepare_data.build_split(Table(rows, {}), np.arange(len(rows)), p, size, len(LABELS), 255)
    assert px.shape == (len(rows), 3, size, size) and masks.shape == (len(rows), size, size)
    assert set(np.unique(masks).tolist()) <= {0, 1, 2, 255}
    assert counts["out_of_range_pixels"] == len(rows) and counts["ignored_pixels"] > 0 and counts["class_pixels"][1] > 0


def test_reduce_labels_drops_background_and_shifts():
    raw = np.array([[0, 1, 2, 255]])
    out, counts = prepare_data.map_mask(raw, 2, 255, True, 255)
    assert out.tolist() == [[255, 0, 1, 255]] and counts["ignored_pixels"] == 2


def test_the_joint_flip_moves_image_and_mask_together(meta):
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).view(2, 3, 4, 4)
    y = torch.arange(4).repeat(2, 4, 1)
    torch.manual_seed(0)
    fx, fy = task.joint_transform(x, y, {"hflip": True})
    for i in range(2):
        flipped = bool((fy[i] != y[i]).any())
        assert torch.equal(fx[i], x[i].flip(-1) if flipped else x[i]) and torch.equal(fy[i], y[i].flip(-1) if flipped else y[i])


def test_one_training_step_and_perfect_metrics(tmp_path, monkeypatch, p, size, rows, meta):
    rt = common.Runtime(common.load_config())
    px, masks, _ = prepare_data.build_split(Table(rows, {}), np.arange(len(rows)), p, size, len(LABELS), 255)
    monkeypatch.setattr(common, "DATA", tmp_path)
    common.save_split("train", {"pixel_values": px, "labels": masks})
    common.write_json(tmp_path / "meta.json", meta)
    batch = common.CachedSplit("train", task.FIELDS).take(np.arange(len(rows)))
    model = common.load_model(task.AUTO_CLASS, p["model_id"], meta, fresh_head=True).to(rt.device).train()
    with rt.autocast():
        out = model(**task.to_inputs(batch, rt, meta, train=True))
    assert torch.isfinite(out.loss), f"loss is not finite: {out.loss}"
    out.loss.backward()
    grads = [q.grad for q in model.parameters() if q.requires_grad and q.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and sum(float(g.norm()) for g in grads) > 0
    labels = batch["labels"].long()
    cm = task.confusion(torch.where(labels == 255, 0, labels), labels, len(LABELS), 255).numpy()
    m = task.segmentation_metrics(cm, LABELS)
    assert m["pixel_accuracy"] == 1.0 and m["mean_iou"] == 1.0
