"""Step 1 -> prepare_data.py agreement: on each local format, the generated project reads exactly what Step 1 reported
(the column of each role, the files it skipped, its split plan: sizes and per-class stratification)."""

import io
import json
from pathlib import Path

import pytest

from servers import step1_data as D
from tao_finetune.tools import jobs, project
from tao_finetune.tools.dataset import holdout_size

from test_scaffolds import call, make_ctx

NAMES = ["cat", "dog", "owl"]


def _png(i: int) -> bytes:
    buf = io.BytesIO()
    D.digit_image(i).save(buf, format="PNG")
    return buf.getvalue()


def _rows(n_per_class: int) -> list[tuple[int, int]]:
    """(digit index, class) pairs, classes of unequal size so stratification shows."""
    return [(i, label) for label in range(3) for i in D.digits_of(label, n_per_class + 3 * label)]


def imagefolder_with_bad_files(root: Path) -> Path:
    return D.imagefolder(root, per_class=10, bad=True)


def csv_with_species(root: Path) -> Path:
    (root / "img").mkdir(parents=True)
    lines = ["file,species,weight"]
    for k, (i, label) in enumerate(_rows(8)):
        D.digit_image(i).save(root / "img" / f"{k}.png")
        lines.append(f"img/{k}.png,{NAMES[label]},{1.5 + k}")
    (root / "train.csv").write_text("\n".join(lines) + "\n")
    D.corrupt(root / "img" / "0.png")
    return root


def jsonl_with_digit(root: Path) -> Path:
    (root / "pics").mkdir(parents=True)
    rows = []
    for k, (i, label) in enumerate(_rows(8)):
        D.digit_image(i).save(root / "pics" / f"{k}.png")
        rows.append({"picture": f"pics/{k}.png", "digit": label, "note": f"free text about sample {k} that is long enough"})
    return D.jsonl(root / "data.jsonl", rows).parent


def parquet_with_image_bytes(root: Path) -> Path:
    """Embedded PNG bytes written by plain pyarrow: no `datasets` feature metadata, a struct {bytes, path}."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True)
    rows = _rows(8)
    table = pa.table({"photo": [{"bytes": _png(i), "path": f"{k}.png"} for k, (i, _) in enumerate(rows)],
                      "breed": [NAMES[label] for _, label in rows], "row_id": list(range(len(rows)))})
    pq.write_table(table, root / "train.parquet")
    return root


def arrow_with_kind(root: Path) -> Path:
    import datasets

    rows = [{"pixels": D.digit_image(i), "kind": label} for i, label in _rows(8)]
    datasets.Dataset.from_list(rows, features=datasets.Features({"pixels": datasets.Image(), "kind": datasets.Value("int64")})) \
        .save_to_disk(str(root))
    return root


CASES = [
    ("imagefolder", imagefolder_with_bad_files, "image", "label", 2),
    ("csv", csv_with_species, "file", "species", 1),
    ("jsonl", jsonl_with_digit, "picture", "digit", 0),
    ("parquet", parquet_with_image_bytes, "photo", "breed", 0),
    ("arrow", arrow_with_kind, "pixels", "kind", 0),
]


@pytest.mark.parametrize(("fmt", "make", "image_col", "label_col", "n_skipped"), CASES, ids=[c[0] for c in CASES])
def test_prepare_data_does_what_step1_reported(tmp_path, fmt, make, image_col, label_col, n_skipped):
    data = make(tmp_path / "data")
    model = D.save_vit(tmp_path / "vit")
    ctx = make_ctx(tmp_path / "run", "image-classification", model_id=str(model), local_dataset_path=str(data), n_train=1000, n_eval=1000)
    spec = ctx.config.project
    assert spec.local_dataset_format == fmt
    assert (spec.columns.image, spec.columns.label) == (image_col, label_col), spec.columns
    assert spec.columns.evidence["label"] and "beside image column" in spec.columns.evidence["label"]
    assert len(spec.skip_files) == n_skipped
    assert spec.splits.eval_split is None and spec.splits.stratify_by == label_col and spec.splits.seed == 42
    assert spec.splits.expected_train and spec.splits.expected_eval
    call(project.render_scaffold, ctx)
    out = call(jobs.docker_run, ctx, job="prepare")
    meta = json.loads((ctx.run_dir / "data" / "meta.json").read_text())
    assert (out["n_train"], out["n_eval"]) == (spec.splits.expected_train, spec.splits.expected_eval)
    assert meta["label_names"] == ctx.config.label_names and len(meta["label_names"]) == 3
    # stratified: every class is held out in proportion (int(0.1 * n_c + 0.5), at least one)
    values = ctx.config.dataset_facts.columns[label_col].values
    per_class = {name: holdout_size([n], spec.splits.eval_fraction) for name, n in values.items()}
    got = meta["eval_label_counts"]
    assert sorted(got.values()) == sorted(per_class.values()) and len(got) == 3


def test_a_user_cap_and_a_source_eval_split_are_obeyed(tmp_path):
    data = D.imagefolder(tmp_path / "data", per_class=6, splits=("train", "val"))
    model = D.save_vit(tmp_path / "vit")
    ctx = make_ctx(tmp_path / "run", "image-classification", model_id=str(model), local_dataset_path=str(data), n_train=10, n_eval=7)
    plan = ctx.config.project.splits
    assert (plan.train_split, plan.eval_split, plan.stratify_by) == ("train", "validation", None)
    assert (plan.expected_train, plan.expected_eval) == (10, 7)
    call(project.render_scaffold, ctx)
    out = call(jobs.docker_run, ctx, job="prepare")
    assert (out["n_train"], out["n_eval"]) == (10, 7)
