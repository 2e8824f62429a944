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

Images of mixed modes and odd sizes with questions from one word to over-long and answers in every layout the
datasets use (a string, a list, VQA answer dicts) go through prepare_data's decode, the chat-template collator
(labels on the answer only) and one forward + backward of config.yaml's model_id, loaded as train.py loads it
(LoRA when training_method is lora). No dataset and no prepared data/ are needed.
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

FAKES = [("L", (17, 40)), ("RGB", (300, 200)), ("RGBA", (40, 17)), ("P", (64, 64)), ("1", (1, 1)), ("CMYK", (48, 31)),
         ("I;16", (23, 23)), ("RGB", (900, 9))]
QUESTIONS = ["What?", "What color is the shape?", "Which " + "very " * 60 + "long question is this?", "Is it red?"]
ANSWERS = ["red", ["blue", "blue", "navy"], [{"answer": "green", "answer_confidence": "yes"}], {"text": ["a square"]}]


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


@pytest.fixture(scope="module")
def cfg() -> dict:
    return task.settings(common.load_config())


@pytest.fixture(scope="module")
def processor(cfg):
    return task.load_processor(cfg["model_id"])


@pytest.fixture(scope="module")
def rows(tmp_path_factory, cfg) -> list[dict]:
    """Hub-style rows ({'bytes': ...} images) written through prepare_data into a scratch data/ dir."""
    data = tmp_path_factory.mktemp("data")
    raw = [{"image": {"bytes": encoded(fake_image(m, s, i)), "path": None}, "question": QUESTIONS[i % len(QUESTIONS)],
            "answer": ANSWERS[i % len(ANSWERS)]} for i, (m, s) in enumerate(FAKES)]
    old = prepare_data.DATA
    prepare_data.DATA = task.DATA = data
    try:
        out, skipped = prepare_data.write_split("train", Table(raw, {}), np.arange(len(raw)),
                                                {"image": "image", "question": "question", "answer": "answer"},
                                                task.image_cap(cfg["model_id"]))
    finally:
        prepare_data.DATA = old
    assert skipped == 0 and len(out) == len(raw)
    return out


def test_answers_in_every_layout_become_reference_lists():
    assert [task.answer_list(a) for a in ANSWERS] == [["red"], ["blue", "blue", "navy"], ["green"], ["a square"]]
    assert task.score(["The Red.", "navy"], [["red"], ["blue", "blue", "navy"]]) == {"exact_match": 1.0, "vqa_accuracy": 2 / 3}


def test_collator_masks_everything_but_the_answer(processor, rows):
    batch = task.Collator(processor, train=True)(rows)
    assert batch["input_ids"].shape == batch["labels"].shape
    for j, row in enumerate(rows):
        kept = batch["labels"][j][batch["labels"][j] != -100].tolist()
        answer = processor.tokenizer(row["answers"][0], add_special_tokens=False)["input_ids"]
        assert kept[:len(answer)] == answer and len(kept) <= len(answer) + 1, (row, kept)
    gen = task.Collator(processor, train=False)(rows)
    assert "labels" not in gen and (gen["attention_mask"][:, -1] == 1).all()  # left-padded prompts end on a real token


def test_one_training_step_on_a_mixed_batch(cfg, processor, rows):
    rt = common.Runtime(cfg)
    model, lora = task.train_model(cfg, rt, None)
    model.to(rt.device).train()
    batch = task.to_device(task.Collator(processor, train=True)(rows), rt)
    with rt.autocast():
        out = model(**batch)
    assert torch.isfinite(out.loss), f"loss is not finite: {out.loss}"
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and sum(float(g.float().norm()) for g in grads) > 0
    if lora is not None:
        assert lora["trainable_params"] == sum(p.numel() for p in model.parameters() if p.requires_grad)
