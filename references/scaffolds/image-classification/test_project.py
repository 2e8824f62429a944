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

Images of mixed modes and odd sizes go through prepare_data's decode and resize to the model's input size, the
.npy cache and task.to_inputs; then one forward + backward of config.yaml's model_id, loaded as train.py loads it.
No dataset and no prepared data/ are needed.
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
from sources import Table  # noqa: E402

LABELS = ["cat", "dog", "other"]
# (mode, (width, height)): grey, colour, alpha, palette, 1-bit, 16-bit, CMYK; tall, wide, tiny and large
FAKES = [("L", (17, 40)), ("RGB", (300, 200)), ("RGBA", (40, 17)), ("P", (64, 64)), ("LA", (5, 333)),
         ("1", (1, 1)), ("I;16", (23, 23)), ("CMYK", (48, 31)), ("RGB", (640, 9))]


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


def input_layer_weight(model) -> torch.nn.Parameter:
    """The first weight the input meets (the patch/pixel embedding), to check that gradients reach it."""
    try:
        return next(model.get_input_embeddings().parameters())
    except (NotImplementedError, AttributeError, StopIteration):
        return next(model.parameters())


@pytest.fixture(scope="module")
def cfg() -> dict:
    return common.load_config()


@pytest.fixture(scope="module")
def spec(cfg) -> dict:
    return prepare_data.image_spec(cfg["model_id"], common.recipe_class(cfg, "processor_class"))


@pytest.fixture(scope="module")
def meta(spec) -> dict:
    return {"label_names": LABELS, "height": spec["height"], "width": spec["width"], "image_mean": spec["image_mean"],
            "image_std": spec["image_std"], "hflip": True}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    """One dataset row per fake image, as a Hub dataset stores them ({'bytes': ...})."""
    return [{"image": {"bytes": encoded(fake_image(m, s, i)), "path": None}, "label": LABELS[i % len(LABELS)]}
            for i, (m, s) in enumerate(FAKES)]


@pytest.mark.parametrize("mode, size", FAKES)
def test_every_mode_and_size_decodes_to_the_model_input(tmp_path, spec, mode, size):
    img = fake_image(mode, size, 0)
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    img.save(path)
    for source in (img, str(path), {"bytes": encoded(img), "path": None}):
        arr = prepare_data.resize(prepare_data.to_pil(source), spec)
        assert arr.dtype == np.uint8 and arr.shape == (3, spec["height"], spec["width"]), (mode, size, arr.shape)


def test_mixed_rows_cache_and_collate_to_one_batch(tmp_path, monkeypatch, cfg, spec, meta, rows):
    pixels, labels = prepare_data.build_split(Table(rows, {}), np.arange(len(rows)), spec, {"image": "image", "label": "label"})
    assert pixels.shape == (len(rows), 3, spec["height"], spec["width"])
    monkeypatch.setattr(common, "DATA", tmp_path)
    common.save_split("train", {"pixel_values": pixels, "labels": np.asarray([LABELS.index(x) for x in labels])})
    batch = common.CachedSplit("train", task.FIELDS).take(np.arange(len(rows)))
    inputs = task.to_inputs(batch, common.Runtime(cfg), meta, train=True)
    x = inputs["pixel_values"]
    assert x.dtype == torch.float32 and tuple(x.shape) == (len(rows), 3, spec["height"], spec["width"])
    assert torch.isfinite(x).all() and inputs["labels"].tolist() == [i % len(LABELS) for i in range(len(rows))]


def test_one_training_step_on_a_mixed_batch(cfg, spec, meta, rows):
    rt = common.Runtime(cfg)
    pixels, labels = prepare_data.build_split(Table(rows, {}), np.arange(len(rows)), spec, {"image": "image", "label": "label"})
    batch = {"pixel_values": torch.from_numpy(pixels), "labels": torch.tensor([LABELS.index(x) for x in labels])}
    model = common.load_model(task.AUTO_CLASS, cfg["model_id"], meta, fresh_head=True)
    if common.hp(cfg).get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    model.to(rt.device).train()
    with rt.autocast():
        out = model(**task.to_inputs(batch, rt, meta, train=True))
    assert tuple(out.logits.shape) == (len(rows), len(LABELS))
    assert torch.isfinite(out.loss), f"loss is not finite: {out.loss}"
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.float().norm()) for g in grads) > 0
    first = input_layer_weight(model)
    assert first.grad is not None and float(first.grad.float().abs().sum()) > 0, "no gradient reaches the input layer"
