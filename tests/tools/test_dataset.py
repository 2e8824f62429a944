import json

import pytest

from servers import step1_data as D
from servers.step1_data import FAKE_TOKEN, local_hub  # noqa: F401
from tao_finetune.agent.config import RunConfig, load_config
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools.base import NeedsUser, ToolError
from tao_finetune.tools.dataset import (
    check_dataset_for_task,
    detect_format,
    load_local_dataset,
    plan_splits,
    probe_dataset,
    probe_hub_dataset,
    probe_local_dataset,
    verify_columns,
)
from tao_finetune.tools.probe import hub_env


def kinds(facts):
    return {i["kind"]: (i["level"], i["count"]) for i in facts["issues"]}


def test_imagefolder_with_split_folders(tmp_path):
    root = D.imagefolder(tmp_path / "d", splits=("train", "val"))
    f = probe_local_dataset(str(root))
    assert f["format"] == "imagefolder" and "class folders" in f["format_evidence"]
    assert f["splits"] == {"train": 12, "validation": 12}
    assert f["label_names"] == sorted(D.CLASSES)
    assert f["label_counts"]["train"] == {"one": 4, "two": 4, "zero": 4}
    assert f["columns"]["image"]["image_sizes"]["most_common"] == ["32x32"]
    assert f["image_modes"] == ["RGB"]
    renames, layout = check_dataset_for_task(f, "image-classification")
    assert renames == {} and layout["eval_split"] == "validation" and "planned_split" not in layout
    dd = load_local_dataset(root)
    assert dd["train"].features["label"].names == sorted(D.CLASSES)
    assert dd["validation"][0]["image"].size == (32, 32)


def test_imagefolder_corrupt_and_empty_images_are_counted_and_skipped(tmp_path):
    root = D.imagefolder(tmp_path / "d", bad=True)
    f = probe_local_dataset(str(root))
    assert kinds(f) == {"corrupt_image": ("warn", 1), "empty_image_file": ("warn", 1)}
    assert f["splits"] == {"train": 12}
    _, layout = check_dataset_for_task(f, "image-classification")
    assert layout["planned_split"] == {"from": "train", "eval_fraction": 0.1, "seed": 42, "stratify_by_column": "label"}
    assert load_local_dataset(root)["train"].num_rows == 12


def test_imagefolder_all_images_broken_is_an_error(tmp_path):
    d = tmp_path / "d" / "cat"
    d.mkdir(parents=True)
    D.corrupt(d / "a.png")
    f = probe_local_dataset(str(tmp_path / "d"))
    assert kinds(f)["no_readable_images"][0] == "error"
    with pytest.raises(ToolError, match="dataset unusable: no readable image"):
        check_dataset_for_task(f, "image-classification")
    with pytest.raises(ToolError, match="is unusable"):
        load_local_dataset(tmp_path / "d")


def test_coco(tmp_path):
    root = D.coco(tmp_path / "c", orphans=2)
    f = probe_local_dataset(str(root))
    assert f["format"] == "coco" and "instances_train.json" in f["format_evidence"]
    assert f["label_names"] == ["even", "odd"] and f["splits"] == {"train": 6}
    assert f["columns"]["objects"]["boxes_per_sample"] == {"min": 1, "max": 2, "mean": 1.5}
    assert kinds(f) == {"mismatched_image_ids": ("warn", 2)}
    assert f["bbox_format"].startswith("coco xywh")
    renames, layout = check_dataset_for_task(f, "object-detection")
    assert layout["category_key"] == "category"
    ds = load_local_dataset(root)["train"]
    assert ds.features["objects"]["category"].feature.names == ["even", "odd"]
    assert ds[1]["objects"]["bbox"] == [[4.0, 4.0, 20.0, 24.0], [24.0, 4.0, 20.0, 24.0]]


def test_coco_mostly_mismatched_ids_asks(tmp_path):
    f = probe_local_dataset(str(D.coco(tmp_path / "c", n=2, orphans=10)))
    assert kinds(f)["mismatched_image_ids"] == ("ask", 10)
    with pytest.raises(NeedsUser, match="point at image ids not in 'images'"):
        check_dataset_for_task(f, "object-detection")


def test_voc_detection(tmp_path):
    root = D.voc_detection(tmp_path / "v")
    f = probe_local_dataset(str(root))
    assert f["format"] == "voc" and "Annotations" in f["format_evidence"]
    assert f["splits"] == {"train": 4, "validation": 2} and f["label_names"] == ["cat", "dog"]
    ds = load_local_dataset(root)
    assert ds["train"][0]["objects"]["bbox"] == [[4.0, 4.0, 36.0, 40.0]]


def test_voc_segmentation_and_missing_masks(tmp_path):
    f = probe_local_dataset(str(D.voc_segmentation(tmp_path / "ok")), task="semantic-segmentation")
    assert f["label_names"] == ["background", "foo", "bar"] and f["label_names_from"] == "labels.txt"
    assert f["image_modes"] == ["RGB"]
    renames, layout = check_dataset_for_task(f, "semantic-segmentation")
    assert layout["mask_column"] == "annotation" and renames == {}
    bad = probe_local_dataset(str(D.voc_segmentation(tmp_path / "bad", missing_masks=2)))
    assert kinds(bad)["missing_masks"] == ("ask", 2)
    with pytest.raises(NeedsUser, match="2 of 6 image"):
        check_dataset_for_task(bad, "semantic-segmentation")


def test_mask_values_name_classes_without_a_labels_file(tmp_path):
    root = D.voc_segmentation(tmp_path / "v")
    (root / "labels.txt").unlink()
    f = probe_local_dataset(str(root))
    assert f["mask_values"] == [0, 1, 2, 255] and f["label_names"] == ["class_0", "class_1", "class_2"]


def test_jsonl_string_labels_are_renamed_and_encoded(tmp_path):
    path = D.jsonl(tmp_path / "d" / "train.jsonl", D.text_rows(string_labels=True))
    f = probe_local_dataset(str(path.parent))
    assert f["format"] == "jsonl" and f["label_names"] == ["neg", "pos"]
    assert f["columns"]["sentence"]["text_chars"]["max"] == 23
    renames, layout = check_dataset_for_task(f, "text-classification")
    assert renames == {} and layout["columns"]["text"] == "sentence" and layout["columns"]["label"] == "labels"
    assert load_local_dataset(path)["train"].num_rows == 12


def test_jsonl_mixed_label_types_ask(tmp_path):
    rows = D.text_rows(6) + [{"sentence": "odd one", "labels": "cat"}]
    f = probe_local_dataset(str(D.jsonl(tmp_path / "train.jsonl", rows)))
    assert kinds(f)["mixed_label_types"] == ("ask", 1)
    with pytest.raises(NeedsUser, match="mixes value types"):
        check_dataset_for_task(f, "text-classification")


def test_jsonl_bad_lines_and_empty_files(tmp_path):
    d = tmp_path / "d"
    D.jsonl(d / "train.jsonl", D.text_rows(4))
    with (d / "train.jsonl").open("a") as fh:
        fh.write("{broken\n[1, 2]\n")
    (d / "test.jsonl").write_text("")
    f = probe_local_dataset(str(d))
    assert kinds(f) == {"bad_lines": ("warn", 2), "empty_file": ("warn", 1)}
    assert f["splits"] == {"train": 4, "test": 0}
    only_empty = tmp_path / "e" / "train.jsonl"
    only_empty.parent.mkdir()
    only_empty.write_text("")
    f = probe_local_dataset(str(only_empty))
    with pytest.raises(ToolError, match="no usable rows"):
        check_dataset_for_task(f, "text-classification")


def test_csv_numeric_labels_and_mixed(tmp_path):
    f = probe_local_dataset(str(D.csv_file(tmp_path / "a" / "data.csv", D.text_rows())))
    assert f["format"] == "csv" and f["splits"] == {"train": 12}
    assert f["columns"]["labels"]["type"] == "int" and f["label_counts"]["train"] == {"0": 6, "1": 6}
    renames, layout = check_dataset_for_task(f, "text-classification")
    assert renames == {} and (layout["columns"]["text"], layout["columns"]["label"]) == ("sentence", "labels")
    mixed = D.text_rows(4) + [{"sentence": "x", "labels": "dog"}]
    f = probe_local_dataset(str(D.csv_file(tmp_path / "b" / "data.csv", mixed)))
    assert kinds(f)["mixed_label_types"][0] == "ask"


def test_parquet_and_arrow_with_renames(tmp_path):
    ds = D.image_dataset()
    ds.to_parquet(str(tmp_path / "train.parquet"))
    ds.save_to_disk(str(tmp_path / "arrow"))
    for path, fmt in ((tmp_path / "train.parquet", "parquet"), (tmp_path / "arrow", "arrow")):
        f = probe_local_dataset(str(path))
        assert f["format"] == fmt
        assert f["columns"]["img"]["type"] == "Image" and f["columns"]["labels"]["type"] == "ClassLabel(3)"
        assert f["label_names"] == D.CLASSES and f["label_counts"]["train"]["two"] == 4
        renames, layout = check_dataset_for_task(f, "image-classification")
        assert renames == {} and (layout["columns"]["image"], layout["columns"]["label"]) == ("img", "labels")
        assert "ClassLabel(3)" in layout["columns"]["evidence"]["label"]
        assert load_local_dataset(path)["train"].num_rows == 12


def test_empty_parquet_is_an_error(tmp_path):
    (tmp_path / "train.parquet").write_bytes(b"")
    with pytest.raises(ToolError, match="every parquet file .* is empty"):
        probe_local_dataset(str(tmp_path / "train.parquet"))


def test_vlm_jsonl_with_image_paths(tmp_path):
    (tmp_path / "imgs").mkdir()
    rows = []
    for k in range(4):
        D.digit_image(k).save(tmp_path / "imgs" / f"{k}.png")
        rows.append({"img": f"imgs/{k}.png", "query": "which digit?", "multiple_choice_answer": str(k)})
    f = probe_local_dataset(str(D.jsonl(tmp_path / "train.jsonl", rows)))
    assert f["columns"]["img"]["type"] == "image-path"
    renames, layout = check_dataset_for_task(f, "image-text-to-text")
    assert renames == {"img": "image", "query": "question", "multiple_choice_answer": "answer"}
    assert layout["text_layout"] == "question-answer"
    assert load_local_dataset(tmp_path / "train.jsonl")["train"][0]["img"].size == (32, 32)


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, "does not exist"),
    (lambda p: p.mkdir(), "is empty"),
    (lambda p: p.write_text("x"), "cannot tell the format"),
    (lambda p: (p.mkdir(), (p / "notes.txt").write_text("x")), "cannot tell the format"),
])
def test_detect_format_errors(tmp_path, make, message):
    target = tmp_path / "data.bin"
    make(target)
    with pytest.raises(ToolError, match=message):
        detect_format(target)


def test_unknown_format_name(tmp_path):
    with pytest.raises(ToolError, match="unknown local dataset format 'tfrecord'"):
        probe_local_dataset(str(tmp_path), fmt="tfrecord")


def test_verify_columns_cases():
    assert verify_columns("image-classification", {"image": "Image"})[2][0].kind == "missing_label_column"
    _, _, issues = verify_columns("image-classification", {"img": "Image", "image": "string", "label": "int"})
    assert issues[0].kind == "ambiguous_image_column"
    _, _, issues = verify_columns("object-detection", {"image": "Image", "objects": "list"}, {"objects": [{"bbox": [1, 2, 3, 4]}]})
    assert issues[0].kind == "objects_layout"
    _, _, issues = verify_columns("object-detection", {"image": "Image", "objects": "dict"}, {"objects": {"bbox": [[1, 2]], "category": [0]}})
    assert issues[0].kind == "bbox_layout"
    renames, layout, _ = verify_columns("text-classification", {"premise": "string", "hypothesis": "string", "label": "ClassLabel(3)"})
    assert layout["text_columns"] == ["premise", "hypothesis"] and renames == {}
    renames, _, _ = verify_columns("semantic-segmentation", {"pixel_values": "Image", "label": "Image"})
    assert renames == {"pixel_values": "image", "label": "annotation"}
    assert verify_columns("semantic-segmentation", {"image": "Image", "label": "int"})[2][0].kind == "missing_mask_column"
    assert verify_columns("image-text-to-text", {"image": "Image", "messages": "list"})[1]["text_layout"] == "chat"


def test_plan_splits():
    assert plan_splits({"train": 10, "test": 2}, "image-classification") == {"train_split": "train", "eval_split": "test"}
    assert plan_splits({"data": 10}, "object-detection")["planned_split"]["from"] == "data"


README = """---
license: mit
dataset_info:
  features:
  - name: image
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
          '0': zero
          '1': one
          '2': two
  splits:
  - name: train
    num_examples: 12
---
# digits
"""


def test_hub_dataset(local_hub, tmp_path):
    D.digits_parquet(tmp_path / "train.parquet")
    local_hub.add_repo("org/digits", {"data/train-00000-of-00001.parquet": (tmp_path / "train.parquet").read_bytes(),
                                      "README.md": README}, "dataset")
    with hub_env():
        f = probe_hub_dataset("org/digits")
    assert f["source"] == "hub" and f["license"] == "mit"
    assert f["splits"] == {"train": 12} and f["label_names"] == D.CLASSES
    assert f["columns"]["image"]["type"] == "Image" and f["samples"][0]["image"] == "Image(32x32, RGB)"
    renames, layout = check_dataset_for_task(f, "image-classification")
    assert renames == {} and "planned_split" in layout


def test_hub_dataset_errors(local_hub, tmp_path, monkeypatch):
    local_hub.add_repo("org/gated", {"data/train.jsonl": '{"text": "a", "label": 0}\n'}, "dataset", gated="manual")
    with hub_env(), pytest.raises(ToolError, match="'org/none' was not found"):
        probe_hub_dataset("org/none")
    with hub_env(), pytest.raises(ToolError, match="is gated .* HF_TOKEN is not set"):
        probe_hub_dataset("org/gated")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with hub_env(), pytest.raises(ToolError, match="cannot be reached"):
        probe_hub_dataset("org/elsewhere")


def test_probe_dataset_tool_records_renames(tmp_path):
    D.image_dataset().to_parquet(str(tmp_path / "train.parquet"))
    cfg = RunConfig(model_id="org/m", local_dataset_path=str(tmp_path / "train.parquet"), task_type="image-classification",
                    output_dir=str(tmp_path / "run"))
    creds = Credentials({"HF_TOKEN": FAKE_TOKEN})
    ctx = RunContext(cfg, SessionLog(cfg.out / "session.jsonl", creds), creds)
    out = probe_dataset(ctx, probe_dataset.args_model())
    assert out["layout"]["image_column"] == "img"
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.column_renames == {} and saved.label_names == D.CLASSES
    assert (saved.project.columns.image, saved.project.columns.label) == ("img", "labels")
    assert FAKE_TOKEN not in json.dumps(out)
