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

Texts of very different lengths (empty, one word, longer than the model's maximum, mixed scripts) go through
prepare_data's tokenisation, the .npy cache and task.to_inputs (padding trimmed per batch, attention mask from the
lengths); then one forward + backward of config.yaml's model_id, loaded as train.py loads it.
No dataset and no prepared data/ are needed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PROJECT = Path(os.environ.get("TAO_PROJECT_DIR") or Path(__file__).resolve().parent.parent).resolve()
os.environ.setdefault("TAO_PROJECT_DIR", str(PROJECT))
sys.path.insert(0, str(PROJECT))

import common  # noqa: E402
import prepare_data  # noqa: E402
import task  # noqa: E402

LABELS = ["negative", "neutral", "positive"]
TEXTS = [
    "",
    "fine",
    "word " * 5000,
    "Ünïcödé, 中文, emoji 🙂 —\ttabs\nand newlines",
    "A plain sentence of moderate length about a film that was better than expected.",
]


def input_layer_weight(model) -> torch.nn.Parameter:
    """The token embedding, to check that gradients reach it."""
    try:
        return model.get_input_embeddings().weight
    except (NotImplementedError, AttributeError):
        return next(model.parameters())


@pytest.fixture(scope="module")
def cfg() -> dict:
    return common.load_config()


@pytest.fixture(scope="module")
def tokenized(cfg) -> tuple[np.ndarray, np.ndarray, int, int]:
    tok = common.recipe_class(cfg, "processor_class").from_pretrained(cfg["model_id"])
    limit = prepare_data.max_length(tok, cfg["model_id"])
    ids, lengths = prepare_data.tokenize(tok, TEXTS, limit)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return ids, lengths, limit, pad


@pytest.fixture(scope="module")
def meta(tokenized) -> dict:
    return {"label_names": LABELS, "max_length": tokenized[2]}


def test_tokenisation_truncates_and_pads_mixed_lengths(tokenized):
    ids, lengths, limit, pad = tokenized
    assert ids.shape == (len(TEXTS), int(lengths.max())) and ids.dtype == np.int32
    assert int(lengths[2]) == limit, "the over-long text must be truncated to the model's maximum length"
    assert int(lengths[0]) < int(lengths[1]) <= int(lengths[4]) < limit
    for row, n in zip(ids, lengths):
        assert (row[n:] == pad).all(), "padding after the true length"


def test_cache_and_collation_trim_padding_per_batch(tmp_path, monkeypatch, cfg, tokenized, meta):
    ids, lengths, limit, _ = tokenized
    labels = np.arange(len(TEXTS)) % len(LABELS)
    monkeypatch.setattr(common, "DATA", tmp_path)
    common.save_split("train", {"input_ids": ids, "lengths": lengths, "labels": labels})
    split = common.CachedSplit("train", task.FIELDS)
    rt = common.Runtime(cfg)
    for idx in ([0, 1], [0, 1, 3, 4], list(range(len(TEXTS)))):
        inputs = task.to_inputs(split.take(np.asarray(idx)), rt, meta, train=True)
        width = int(lengths[idx].max())
        assert tuple(inputs["input_ids"].shape) == (len(idx), width), idx
        assert inputs["attention_mask"].sum(1).tolist() == lengths[idx].tolist()
        assert inputs["labels"].tolist() == labels[idx].tolist()
        assert inputs["input_ids"].dtype == torch.long


def test_one_training_step_on_a_mixed_batch(cfg, tokenized, meta):
    ids, lengths, _, _ = tokenized
    rt = common.Runtime(cfg)
    batch = {"input_ids": torch.from_numpy(ids), "lengths": torch.from_numpy(lengths),
             "labels": torch.arange(len(TEXTS)) % len(LABELS)}
    model = common.load_model(task.AUTO_CLASS, cfg["model_id"], meta, fresh_head=True)
    if common.hp(cfg).get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    model.to(rt.device).train()
    with rt.autocast():
        out = model(**task.to_inputs(batch, rt, meta, train=True))
    assert tuple(out.logits.shape) == (len(TEXTS), len(LABELS))
    assert torch.isfinite(out.loss), f"loss is not finite: {out.loss}"
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.float().norm()) for g in grads) > 0
    emb = input_layer_weight(model)
    assert emb.grad is not None and float(emb.grad.float().abs().sum()) > 0, "no gradient reaches the embeddings"
