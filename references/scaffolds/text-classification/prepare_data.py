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
"""Prepare: `python prepare_data.py` -> data/{train,eval}_{input_ids,lengths,labels}.npy, data/eval_text.jsonl, data/meta.json.

Applies config.yaml's column_renames (the text column must end up as `text`, the label as `label`), takes seeded
n_train / n_eval subsets and tokenises once with the model's tokenizer (truncation to the model's maximum length);
padding is trimmed per batch at train time.
Sources: https://huggingface.co/docs/transformers/main/en/tasks/sequence_classification (tokenizer call, truncation),
https://huggingface.co/docs/transformers/main/en/main_classes/tokenizer (model_max_length).
"""

from __future__ import annotations

import json

import numpy as np

from common import DATA, load_config, save_split, write_json
from sources import choose, encode_labels, label_names, open_splits


def max_length(tokenizer, model_id: str) -> int:
    """The model's usable sequence length: tokenizer limit and position embeddings, whichever is smaller."""
    from transformers import AutoConfig

    limits = [int(tokenizer.model_max_length)] if tokenizer.model_max_length < 1e9 else []
    pos = getattr(AutoConfig.from_pretrained(model_id), "max_position_embeddings", None)
    if pos:
        limits.append(int(pos))
    return min(limits) if limits else 512


def tokenize(tokenizer, texts: list[str], limit: int, batch: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded to the longest kept sequence, plus true lengths."""
    seqs: list[list[int]] = []
    for k in range(0, len(texts), batch):
        seqs += tokenizer(texts[k:k + batch], truncation=True, max_length=limit)["input_ids"]
    width = max((len(s) for s in seqs), default=1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((len(seqs), width), pad, dtype=np.int32)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = s
    return ids, np.asarray([len(s) for s in seqs], dtype=np.int32)


def rows(table, idx: np.ndarray) -> tuple[list[str], list]:
    missing = {"text", "label"} - set(table.columns)
    if missing:
        raise SystemExit(f"columns {sorted(missing)} missing after renames; columns are {table.columns}; set column_renames")
    got = [table.row(i) for i in idx.tolist()]
    return [str(r["text"]) for r in got], [r["label"] for r in got]


def main() -> int:
    from transformers import AutoTokenizer

    cfg = load_config()
    tables = open_splits(cfg)
    train_t, tr, eval_t, ev = choose(cfg, tables)
    tok = AutoTokenizer.from_pretrained(cfg["model_id"])
    limit = max_length(tok, cfg["model_id"])
    train_text, train_lab = rows(train_t, tr)
    eval_text, eval_lab = rows(eval_t, ev)
    names = label_names(cfg, train_t, train_lab + eval_lab)
    for split, texts, labs in (("train", train_text, train_lab), ("eval", eval_text, eval_lab)):
        ids, lengths = tokenize(tok, texts, limit)
        save_split(split, {"input_ids": ids, "lengths": lengths, "labels": encode_labels(labs, names)})
    (DATA / "eval_text.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in eval_text))
    meta = {"task": "text-classification", "label_names": names, "columns": train_t.columns, "n_train": int(len(tr)),
            "n_eval": int(len(ev)), "max_length": limit, "tokenizer": type(tok).__name__,
            "source": cfg.get("dataset_id") or cfg.get("local_dataset_path")}
    write_json(DATA / "meta.json", meta)
    print(f"prepared {len(tr)} train / {len(ev)} eval texts (max_length {limit}), {len(names)} classes")
    return 0


if __name__ == "__main__":
    import argparse

    # no options: everything comes from config.yaml; --help only prints this and exits
    argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], epilog="All settings are read from config.yaml "
                            "(or $TAO_PROJECT_DIR/config.yaml).").parse_args()
    raise SystemExit(main())
