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
"""Prepare: `python prepare_data.py` -> data/images/{train,eval}/*.png, data/{train,eval}.jsonl, data/meta.json.

Applies config.yaml's column renames, takes seeded n_train / n_eval subsets (eval carved from train when the dataset
has no eval split), decodes every image once to RGB PNG (longest edge capped at the processor's input size) and
writes one JSON line per example: image path, question, reference answers (a VQA `answers` list keeps every
annotator answer for the VQA accuracy). The chat template and image tokens are applied later by the collator.
Sources: https://huggingface.co/docs/transformers/main/en/tasks/image_text_to_text,
https://huggingface.co/docs/datasets/main/en/loading, https://visualqa.org/evaluation.html (answers lists).
"""

from __future__ import annotations

import collections
import json

from PIL import Image

from common import DATA, load_config, write_json
from sources import choose, open_splits, progress
from task import answer_list, image_cap, settings



def to_pil(value) -> Image.Image:
    """A PIL image from a PIL object, a path, a {'bytes', 'path'} dict or a one-image list."""
    import io

    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError("empty image list")
        value = value[0]
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):
        return Image.open(io.BytesIO(value["bytes"])) if value.get("bytes") else Image.open(value["path"])
    return Image.open(value)


def write_split(name: str, table, idx, cols: dict, cap: int | None) -> tuple[list[dict], int]:
    """Decode the chosen rows to data/images/<name>/ and data/<name>.jsonl; returns the rows and the skipped count."""
    missing = {cols["image"], cols["question"], cols["answer"]} - set(table.columns)
    if missing:
        raise SystemExit(f"columns {sorted(missing)} missing after renames; columns are {table.columns}; "
                         "set project.columns (image / question / answer) or column_renames")
    folder = DATA / "images" / name
    folder.mkdir(parents=True, exist_ok=True)
    rows, skipped = [], 0
    for k, i in enumerate(progress(idx.tolist(), len(idx), f"writing {name} images")):
        row = table.row(i)
        answers = answer_list(row[cols["answer"]])
        question = str(row[cols["question"]] or "").strip()
        try:
            img = to_pil(row[cols["image"]]).convert("RGB")
        except (OSError, ValueError, KeyError):
            img = None
        if img is None or not answers or not question:
            skipped += 1
            continue
        if cap and max(img.size) > cap:
            img.thumbnail((cap, cap), Image.BICUBIC)
        rel = f"images/{name}/{k:07d}.png"
        img.save(DATA / rel)
        rows.append({"image": rel, "question": question, "answers": answers, "source_index": int(i)})
    tmp = DATA / f".{name}.jsonl.tmp"
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    tmp.replace(DATA / f"{name}.jsonl")
    return rows, skipped


def main() -> int:
    cfg = settings(load_config())
    tables = open_splits(cfg)
    train_t, tr, eval_t, ev = choose(cfg, tables)
    cols = cfg["columns"]
    cap = image_cap(cfg["model_id"])
    train_rows, skip_tr = write_split("train", train_t, tr, cols, cap)
    eval_rows, skip_ev = write_split("eval", eval_t, ev, cols, cap)
    if not train_rows or not eval_rows:
        raise SystemExit(f"no usable examples ({len(train_rows)} train / {len(eval_rows)} eval): every row lacked an image, question or answer")
    top = collections.Counter(r["answers"][0].lower() for r in train_rows).most_common(10)
    meta = {"task": "image-text-to-text", "n_train": len(train_rows), "n_eval": len(eval_rows),
            "skipped": {"train": skip_tr, "eval": skip_ev}, "columns": train_t.columns,
            "roles": {r: cols[r] for r in ("image", "question", "answer")},
            "image_max_edge": cap, "answers_per_question": max(len(r["answers"]) for r in eval_rows),
            "top_answers": top, "max_answer_chars": max(len(a) for r in train_rows for a in r["answers"]),
            "source": cfg.get("dataset_id") or cfg.get("local_dataset_path")}
    write_json(DATA / "meta.json", meta)
    print(f"prepared {len(train_rows)} train / {len(eval_rows)} eval VQA examples (skipped {skip_tr + skip_ev}); "
          f"most common answers {top[:5]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
