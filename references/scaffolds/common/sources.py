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
"""Dataset sources for prepare_data.py: a Hub id (via `datasets`, honours HF_ENDPOINT) or a local folder/file.

Local formats: imagefolder (root/[split/]class/file), csv, jsonl, arrow (datasets.save_to_disk), parquet.
API sources: https://huggingface.co/docs/datasets/main/en/loading (load_dataset, load_from_disk, parquet),
https://huggingface.co/docs/datasets/main/en/image_load#imagefolder (folder layout),
datasets/features/features.py ClassLabel.names (installed datasets 5.2).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
EVAL_SPLITS = ("validation", "valid", "val", "test", "eval")


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


def _hf_tables(dd, renames: dict[str, str]) -> dict[str, Table]:
    """Wrap a DatasetDict (or one Dataset) into Tables, reading ClassLabel names when present."""
    if hasattr(dd, "column_names") and not isinstance(dd.column_names, dict):
        dd = {"train": dd}
    out = {}
    for name, ds in dd.items():
        names = None
        src = next((k for k, v in renames.items() if v == "label"), "label")
        feat = ds.features.get(src) if hasattr(ds, "features") else None
        if feat is not None and hasattr(feat, "names"):
            names = list(feat.names)
        out[name] = Table(ds, renames, names)
    return out


def _imagefolder(root: Path) -> dict[str, list[dict]]:
    def classes(d: Path) -> list[Path]:
        return sorted(p for p in d.iterdir() if p.is_dir())

    def rows(d: Path) -> list[dict]:
        return [{"image": str(f), "label": c.name} for c in classes(d) for f in sorted(c.iterdir())
                if f.suffix.lower() in IMAGE_EXT]

    subdirs = {p.name.lower(): p for p in classes(root)}
    splits = {k: v for k, v in subdirs.items() if k in ("train", *EVAL_SPLITS)}
    if "train" in splits and all(classes(v) for v in splits.values()):
        return {k: rows(v) for k, v in splits.items()}
    return {"train": rows(root)}


def _read_text_file(path: Path, fmt: str) -> list[dict]:
    """Rows of a CSV/JSONL file; relative image paths in it are resolved against the file's own folder (as Step 1 reads them)."""
    if fmt == "csv":
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    else:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        for k, v in r.items():
            if isinstance(v, str) and Path(v).suffix.lower() in IMAGE_EXT and not Path(v).is_absolute():
                r[k] = str((path.parent / v).resolve())
    return rows


def _files(root: Path, ext: str) -> dict[str, Path]:
    if root.is_file():
        return {"train": root}
    found = {p.stem.lower(): p for p in sorted(root.glob(f"*.{ext}"))}
    if not found:
        raise SystemExit(f"no *.{ext} files in {root}")
    train = found.pop("train", None) or found.pop(next(iter(found)))
    return {"train": train, **{k: v for k, v in found.items() if k in EVAL_SPLITS}}


def detect_format(root: Path) -> str:
    """Guess a local dataset's format from its files."""
    if root.is_file():
        ext = root.suffix.lower().lstrip(".")
        return {"json": "jsonl", "jsonl": "jsonl", "csv": "csv", "parquet": "parquet", "arrow": "arrow"}.get(ext, ext)
    if (root / "dataset_dict.json").exists() or (root / "dataset_info.json").exists() or (root / "state.json").exists():
        return "arrow"
    exts = {p.suffix.lower() for p in root.rglob("*") if p.is_file()}
    for ext, fmt in ((".csv", "csv"), (".jsonl", "jsonl"), (".parquet", "parquet")):
        if ext in exts:
            return fmt
    if exts & IMAGE_EXT:
        return "imagefolder"
    raise SystemExit(f"cannot tell the format of {root}; set local_dataset_format in config.yaml")


def open_splits(cfg: dict) -> dict[str, Table]:
    """All splits of the configured dataset as Tables, column renames applied."""
    renames = dict(cfg.get("column_renames") or {})
    if cfg.get("dataset_id"):
        import datasets

        return _hf_tables(datasets.load_dataset(cfg["dataset_id"], cfg.get("dataset_config")), renames)
    root = Path(cfg["local_dataset_path"]).expanduser()
    fmt = cfg.get("local_dataset_format") or "auto"
    if fmt == "auto":
        fmt = detect_format(root)
    if fmt == "imagefolder":
        return {k: Table(v, renames) for k, v in _imagefolder(root).items()}
    if fmt in ("csv", "jsonl"):
        return {k: Table(_read_text_file(p, fmt), renames) for k, p in _files(root, "csv" if fmt == "csv" else "jsonl").items()}
    if fmt == "arrow":
        import datasets

        return _hf_tables(datasets.load_from_disk(str(root)), renames)
    if fmt == "parquet":
        import datasets

        files = {k: str(p) for k, p in _files(root, "parquet").items()}
        return _hf_tables(datasets.load_dataset("parquet", data_files=files), renames)
    raise SystemExit(f"local_dataset_format {fmt!r} is not supported by this scaffold")


def choose(cfg: dict, tables: dict[str, Table]) -> tuple[Table, np.ndarray, Table, np.ndarray]:
    """Train and eval tables with seeded subsets of n_train / n_eval (eval carved from train when absent)."""
    seed = int((cfg.get("hyperparameters") or {}).get("seed", 42))
    rng = np.random.default_rng(seed)
    n_train, n_eval = int(cfg.get("n_train", 10000)), int(cfg.get("n_eval", 1000))
    train = tables.get("train") or tables[next(iter(tables))]
    eval_name = next((s for s in EVAL_SPLITS if s in tables), None)
    if eval_name:
        tr = rng.permutation(len(train))[:n_train]
        ev_t = tables[eval_name]
        ev = rng.permutation(len(ev_t))[:n_eval]
        return train, np.sort(tr), ev_t, np.sort(ev)
    perm = rng.permutation(len(train))
    n_eval_eff = min(n_eval, max(1, len(train) // 5)) if len(train) < n_train + n_eval else n_eval
    ev, tr = perm[:n_eval_eff], perm[n_eval_eff:n_eval_eff + n_train]
    return train, np.sort(tr), train, np.sort(ev)


def label_names(cfg: dict, train: Table, values: list) -> list[str]:
    """Label names: config.yaml first, then the dataset's ClassLabel, then the values seen."""
    if cfg.get("label_names"):
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
