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

Reads config.yaml's `project:` section only: the text (and text-pair) and label columns Step 1 chose, its renames and
its split plan (seeded hold-out, stratified by the label when there is no eval split; n_train / n_eval caps), and
tokenises once (sentence pairs as the tokenizer's text / text_pair) with the model's tokenizer (truncation to the model's maximum length);
padding is trimmed per batch at train time.
Sources: https://huggingface.co/docs/transformers/main/en/tasks/sequence_classification (tokenizer call, truncation),
https://huggingface.co/docs/transformers/main/en/main_classes/tokenizer (model_max_length).
"""

from __future__ import annotations

import json

import numpy as np

from common import DATA, load_config, recipe_class, save_split, write_json
from sources import choose, encode_labels, label_names, open_splits, progress


def max_length(tokenizer, model_id: str) -> int:
    """The model's usable sequence length: tokenizer limit and position embeddings, whichever is smaller."""
    from transformers import AutoConfig

    limits = [int(tokenizer.model_max_length)] if tokenizer.model_max_length < 1e9 else []
    pos = getattr(AutoConfig.from_pretrained(model_id), "max_position_embeddings", None)
    if pos:
        limits.append(int(pos))
    return min(limits) if limits else 512


def tokenize(tokenizer, texts: list[str], limit: int, batch: int = 1024, pairs: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Token ids padded to the longest kept sequence, plus true lengths (a sentence pair is encoded as one sequence)."""
    seqs: list[list[int]] = []
    for k in progress(range(0, len(texts), batch), (len(texts) + batch - 1) // batch, "tokenizing batches"):
        second = pairs[k:k + batch] if pairs is not None else None
        seqs += tokenizer(texts[k:k + batch], second, truncation=True, max_length=limit)["input_ids"]
    width = max((len(s) for s in seqs), default=1)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = np.full((len(seqs), width), pad, dtype=np.int32)
    for r, s in enumerate(seqs):
        ids[r, :len(s)] = s
    return ids, np.asarray([len(s) for s in seqs], dtype=np.int32)


def rows(table, idx: np.ndarray, columns: dict) -> tuple[list[str], list[str] | None, list]:
    """(texts, second texts of a pair or None, labels) of the chosen rows."""
    wanted = [c for c in (columns["text"], columns["text_pair"], columns["label"]) if c]
    missing = set(wanted) - set(table.columns)
    if missing:
        raise SystemExit(f"columns {sorted(missing)} missing after renames; columns are {table.columns}; set columns.text / columns.label")
    got = [table.row(i) for i in idx.tolist()]
    pair = columns["text_pair"]
    return ([str(r[columns["text"]] or "") for r in got], [str(r[pair] or "") for r in got] if pair else None,
            [r[columns["label"]] for r in got])


def main() -> int:
    cfg = load_config()
    tables = open_splits(cfg)
    train_t, tr, eval_t, ev = choose(cfg, tables)
    tok = recipe_class(cfg, "processor_class").from_pretrained(cfg["model_id"])  # the recipe's tokenizer class
    limit = max_length(tok, cfg["model_id"])
    cols = cfg["columns"]
    train_text, train_pair, train_lab = rows(train_t, tr, cols)
    eval_text, eval_pair, eval_lab = rows(eval_t, ev, cols)
    names = label_names(cfg, train_t, train_lab + eval_lab)
    for split, texts, pairs, labs in (("train", train_text, train_pair, train_lab), ("eval", eval_text, eval_pair, eval_lab)):
        ids, lengths = tokenize(tok, texts, limit, pairs=pairs)
        save_split(split, {"input_ids": ids, "lengths": lengths, "labels": encode_labels(labs, names)})
    records = [{"text": t, **({"text_pair": eval_pair[i]} if eval_pair is not None else {})} for i, t in enumerate(eval_text)]
    (DATA / "eval_text.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    eval_ids = encode_labels(eval_lab, names)
    meta = {"task": "text-classification", "label_names": names, "columns": [c for c in (cols["text"], cols["text_pair"], cols["label"]) if c],
            "text_pair": bool(cols["text_pair"]), "n_train": int(len(tr)), "n_eval": int(len(ev)), "max_length": limit,
            "tokenizer": type(tok).__name__, "source": cfg["dataset_id"] or cfg["local_dataset_path"],
            "splits": {"train": cfg["splits"]["train_split"], "eval": cfg["splits"]["eval_split"] or f"held out of {cfg['splits']['train_split']}"},
            "eval_label_counts": {names[int(k)]: int(v) for k, v in zip(*np.unique(eval_ids, return_counts=True))}}
    write_json(DATA / "meta.json", meta)
    print(f"prepared {len(tr)} train / {len(ev)} eval texts (max_length {limit}), {len(names)} classes")
    return 0


if __name__ == "__main__":
    import argparse

    # no options: everything comes from config.yaml; --help only prints this and exits
    argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0], epilog="All settings are read from config.yaml "
                            "(or $TAO_PROJECT_DIR/config.yaml).").parse_args()
    raise SystemExit(main())
