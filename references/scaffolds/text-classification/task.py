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
"""Text-classification specifics: model class, cached token fields, dynamic trimming of padding, sample files.

Sources: https://huggingface.co/docs/transformers/main/en/tasks/sequence_classification
(AutoModelForSequenceClassification, AutoTokenizer, label maps), transformers/tokenization_utils_base.py (installed 5.24).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from common import DATA, load_config, recipe_class


# the recipe's model_class (Step 3; e.g. AutoModelForSequenceClassification) is the class every job loads: task.AUTO_CLASS
def __getattr__(name: str):
    """AUTO_CLASS is resolved on first use, so `script.py --help` needs no config (PEP 562 module attribute)."""
    if name == "AUTO_CLASS":
        return recipe_class(load_config(), "model_class")
    raise AttributeError(name)


FIELDS = ("input_ids", "lengths", "labels")


def to_inputs(batch: dict, rt, meta: dict, train: bool) -> dict:
    """Trim the batch to its longest sequence, build the attention mask, move to the device."""
    longest = int(batch["lengths"].max())
    ids = batch["input_ids"][:, :longest].long()
    mask = (batch["lengths"].view(-1, 1) > torch.arange(longest, device=batch["lengths"].device).view(1, -1)).long()
    return {"input_ids": ids.to(rt.device, non_blocking=True), "attention_mask": mask.to(rt.device, non_blocking=True),
            "labels": batch["labels"].to(rt.device, non_blocking=True)}


def channels_last(model) -> bool:
    """Not a convolutional model."""
    return False


def save_processor(cfg: dict, meta: dict, out: Path) -> None:
    """Save the tokenizer next to the fine-tuned weights."""
    recipe_class(cfg, "processor_class").from_pretrained(cfg["model_id"]).save_pretrained(out)


def _texts() -> list[dict]:
    path = DATA / "eval_text.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_sample(out_dir: Path, j: int, i: int, batch: dict, item: dict, meta: dict) -> str:
    """One JSON file per sample with the text (and text_pair), prediction and score; returns the file name."""
    name = f"sample_{j}_idx{i}.json"
    (out_dir / name).write_text(json.dumps({**_texts()[int(i)], **item}, indent=1))
    return name
