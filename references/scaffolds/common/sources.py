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
"""Dataset sources for prepare_data.py, exactly as Step 1 of the agent read them (config.yaml's `project:` section).

Nothing is detected here: the format, the files of each split, the unreadable files to skip, the column of each role,
the renames and the split plan (seeded, optionally stratified hold-out) all come from the project spec.
Hub datasets are read with `datasets` (honours HF_ENDPOINT).
API sources: https://huggingface.co/docs/datasets/main/en/loading (load_dataset, load_from_disk, parquet, Dataset.from_file),
https://huggingface.co/docs/datasets/main/en/image_load#imagefolder (folder layout),
datasets/features/features.py ClassLabel.names (installed datasets 5.2).
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def progress(items, total: int, what: str, every_s: float = 1.0):
    """Yield items, printing `progress: WHAT k/TOTAL` at most every `every_s` seconds and at the end (tao-finetune's
    live view reads the last such line of the job's log and draws a progress bar from it)."""
    last = time.monotonic()
    k = 0
    for k, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s and k < total:
            print(f"progress: {what} {k}/{total}", flush=True)
            last = now
    print(f"progress: {what} {k}/{total}", flush=True)


class Table:
    """Rows of one split: a list of dicts or a datasets.Dataset, read by index after renames."""

    def __init__(self, rows, renames: dict[str, str], class_names: list[str] | None = None):
        self.rows, self.renames = rows, renames
        self.class_names = class_names

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def columns(self) -> list[str]:
        cols = self.rows.column_names if hasattr(self.rows, "column_names") else list(self.rows[0]) if len(self.rows) else []
        return [self.renames.get(c, c) for c in cols]

    def row(self, i: int) -> dict:
        r = self.rows[int(i)]
        return {self.renames.get(k, k): v for k, v in r.items()}

    def column(self, name: str) -> list:
        """Every value of one column (after renames)."""
        src = next((s for s, n in self.renames.items() if n == name), name)
        if hasattr(self.rows, "column_names"):
            return list(self.rows[src])
        return [r.get(src) for r in self.rows]


def _hf_tables(dd, renames: dict[str, str], label: str | None) -> dict[str, Table]:
    """Wrap a DatasetDict (or one Dataset) into Tables, reading ClassLabel names of the label column when present."""
    if hasattr(dd, "column_names") and not isinstance(dd.column_names, dict):
        dd = {"train": dd}
    src = next((k for k, v in renames.items() if v == label), label)
    out = {}
    for name, ds in dd.items():
        feat = ds.features.get(src) if hasattr(ds, "features") and src else None
        out[name] = Table(ds, renames, list(feat.names) if feat is not None and hasattr(feat, "names") else None)
    return out


def _imagefolder_rows(root: Path, skip: set[str]) -> list[dict]:
    """root/class/file rows; the class name is the label."""
    return [{"image": str(f), "label": c.name} for c in sorted(p for p in root.iterdir() if p.is_dir())
            for f in sorted(c.iterdir()) if f.suffix.lower() in IMAGE_EXT and str(f) not in skip]


def _read_rows(path: Path) -> list[dict]:
    """Rows of a csv / tsv / json / jsonl file; lines that are not JSON objects are skipped, as Step 1 counted them."""
    if path.stat().st_size == 0:
        return []
    if path.suffix.lower() in (".csv", ".tsv"):
        with path.open(newline="", errors="replace") as f:
            rows = [dict(r) for r in csv.DictReader(f, delimiter="\t" if path.suffix.lower() == ".tsv" else ",")]
    else:
        text = path.read_text(errors="replace")
        if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
            rows = [r for r in json.loads(text) if isinstance(r, dict)]
        else:
            rows = []
            for line in text.splitlines():
                try:
                    r = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:
                    continue
                if isinstance(r, dict):
                    rows.append(r)
    for r in rows:  # relative image paths are relative to the data file
        for k, v in r.items():
            if isinstance(v, str) and Path(v).suffix.lower() in IMAGE_EXT and not Path(v).is_absolute():
                r[k] = str((path.parent / v).resolve())
    return rows


def open_splits(cfg: dict) -> dict[str, Table]:
    """All splits of the configured dataset as Tables, renames applied, Step 1's skipped files left out."""
    renames = dict(cfg["column_renames"])
    label = cfg["columns"]["label"]
    if cfg["dataset_id"]:
        import datasets

        return _hf_tables(datasets.load_dataset(cfg["dataset_id"], cfg["dataset_config"]), renames, label)
    fmt, files, skip = cfg["local_dataset_format"], cfg["data_files"], set(cfg["skip_files"])
    if fmt == "imagefolder":
        return {split: Table([r for d in dirs for r in _imagefolder_rows(Path(d), skip)], renames) for split, dirs in files.items()}
    if fmt in ("csv", "jsonl"):
        tables = {}
        for split, paths in files.items():
            rows = [r for p in paths for r in _read_rows(Path(p))]
            tables[split] = Table([r for r in rows if not any(isinstance(v, str) and v in skip for v in r.values())], renames)
        return tables
    import datasets

    if fmt == "arrow" and not files:
        return _hf_tables(datasets.load_from_disk(cfg["local_dataset_path"]), renames, label)
    if fmt == "arrow":
        dd = {s: datasets.concatenate_datasets([datasets.Dataset.from_file(f) for f in fs]) for s, fs in files.items()}
        return _hf_tables(dd, renames, label)
    if fmt == "parquet":
        return _hf_tables(datasets.load_dataset("parquet", data_files=files), renames, label)
    raise SystemExit(f"local_dataset_format {fmt!r} is not supported by this scaffold")


def holdout(labels: list | None, n: int, fraction: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, eval) indices: `fraction` of n held out, per class when labels are given (at least one per class of 2+).

    Per class c with n_c rows: int(fraction * n_c + 0.5) rows, the first of a seeded permutation; classes in sorted order.
    """
    if labels is None:
        perm = rng.permutation(n)
        k = max(1, int(fraction * n + 0.5))
        return np.sort(perm[k:]), np.sort(perm[:k])
    keys = [str(v) for v in labels]
    ev, tr = [], []
    for c in sorted(set(keys)):
        idx = np.asarray([i for i, k in enumerate(keys) if k == c])
        idx = idx[rng.permutation(len(idx))]
        k = int(fraction * len(idx) + 0.5)
        k = max(1, k) if len(idx) >= 2 else k
        ev += idx[:k].tolist()
        tr += idx[k:].tolist()
    return np.sort(np.asarray(tr, dtype=np.int64)), np.sort(np.asarray(ev, dtype=np.int64))


def _cap(idx: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """A seeded subset of at most n indices."""
    return idx if len(idx) <= n else np.sort(rng.permutation(idx)[:n])


def choose(cfg: dict, tables: dict[str, Table]) -> tuple[Table, np.ndarray, Table, np.ndarray]:
    """Train and eval tables with the indices Step 1's split plan names (hold-out, stratification, caps, seed)."""
    plan = cfg["splits"]
    rng = np.random.default_rng(int(plan["seed"]))
    train = tables[plan["train_split"]]
    if plan["eval_split"]:
        ev_t = tables[plan["eval_split"]]
        tr, ev = np.arange(len(train)), np.arange(len(ev_t))
    else:
        ev_t = train
        strat = plan["stratify_by"]
        tr, ev = holdout(train.column(strat) if strat else None, len(train), float(plan["eval_fraction"]), rng)
    return train, _cap(tr, int(plan["n_train"]), rng), ev_t, _cap(ev, int(plan["n_eval"]), rng)


def label_names(cfg: dict, train: Table, values: list) -> list[str]:
    """Label names: Step 1's (config.yaml), then the dataset's ClassLabel, then the values seen."""
    if cfg["label_names"]:
        return [str(x) for x in cfg["label_names"]]
    if train.class_names:
        return list(train.class_names)
    if all(isinstance(v, (int, np.integer)) for v in values):
        return [str(i) for i in range(int(max(values)) + 1)]
    return sorted({str(v) for v in values})


def encode_labels(values: list, names: list[str]) -> np.ndarray:
    """Map label values (ints or names) to class ids."""
    index = {n: i for i, n in enumerate(names)}
    out = []
    for v in values:
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            out.append(int(v))
        elif str(v) in index:
            out.append(index[str(v)])
        elif str(v).lstrip("-").isdigit():
            out.append(int(v))
        else:
            raise SystemExit(f"label {v!r} is not one of the label names {names[:10]!r}...")
    arr = np.asarray(out, dtype=np.int64)
    if len(arr) and (arr.min() < 0 or arr.max() >= len(names)):
        raise SystemExit(f"label ids out of range 0..{len(names) - 1}")
    return arr
