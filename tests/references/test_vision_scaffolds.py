"""Object-detection and semantic-segmentation scaffolds: Step 1's real producers fill config.project, prepare_data.py
reads exactly that (COCO, VOC, mask folders, a Hub-style parquet), and the collator, metrics and transforms are right."""

from __future__ import annotations

import importlib.util
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from shapes import SHAPES, detection_coco, detection_voc, segmentation_folders, tiny_detr, tiny_segformer
from tao_finetune.tools import jobs, project
from tao_finetune.tools.dataset import annotation_plan, probe_dataset_facts
from tao_finetune.tools.probe import probe_model_facts
from tao_finetune.tools.task import qualify_config
from test_scaffolds import REFS, call, make_ctx

SCAFFOLDS = REFS / "scaffolds"


def load(task: str, name: str):
    """A scaffold module under a unique name (the scaffolds share module names like task / prepare_data)."""
    sys.path.insert(0, str(SCAFFOLDS / "common"))
    spec = importlib.util.spec_from_file_location(f"{task.replace('-', '_')}_{name}", SCAFFOLDS / task / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(SCAFFOLDS / task))
    try:
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(SCAFFOLDS / task))
    return mod


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision-models")
    return {"detr": tiny_detr(root / "detr"), "segformer": tiny_segformer(root / "segformer")}


def step1(ctx) -> None:
    """Step 1 through its real producers: model and dataset probes, then qualify (fills config.project)."""
    cfg = ctx.config
    cfg.model_facts = probe_model_facts(cfg.model_id, False)
    cfg.dataset_facts = probe_dataset_facts(cfg, False)
    qualify_config(cfg)
    ctx.save()


def prepared(ctx) -> dict:
    call(project.render_scaffold, ctx)
    out = call(jobs.docker_run, ctx, job="prepare")
    meta = json.loads((ctx.run_dir / "data" / "meta.json").read_text())
    return {**out, "meta": meta}


def test_coco_boxes_are_converted_clipped_and_counted(tmp_path, models):
    data = detection_coco(tmp_path / "coco", n=30)
    ctx = make_ctx(tmp_path / "run", "object-detection", model_id=str(models["detr"]), local_dataset_path=str(data))
    step1(ctx)
    assert ctx.config.project.bbox_format == "coco" and ctx.config.label_names == SHAPES
    out = prepared(ctx)
    meta = out["meta"]
    assert meta["label_names"] == SHAPES and meta["size"] == 64 and meta["pixel_mask"] is True
    assert (out["n_train"], out["n_eval"]) == (27, 3)  # int(0.1 * 30 + 0.5) held out
    counts = [meta["boxes"][s] for s in ("train", "eval")]
    assert sum(c["clipped"] for c in counts) == 1 and sum(c["dropped_degenerate"] for c in counts) == 1
    boxes = np.load(ctx.run_dir / "data" / "train_boxes.npy")
    labels = np.load(ctx.run_dir / "data" / "train_labels.npy")
    sizes = np.load(ctx.run_dir / "data" / "train_sizes.npy")
    real = labels >= 0
    assert real.sum() == sum(c["boxes_kept"] for c in counts[:1]) and set(labels[real].tolist()) <= {0, 1}
    assert (boxes[real][:, 2] <= sizes[real.nonzero()[0]][:, 1]).all() and (boxes[real][:, 2] > boxes[real][:, 0]).all()


def test_voc_detection_keeps_the_imagesets_split_and_xml_boxes(tmp_path, models):
    data = detection_voc(tmp_path / "voc", n=12)
    ctx = make_ctx(tmp_path / "run", "object-detection", model_id=str(models["detr"]), local_dataset_path=str(data))
    step1(ctx)
    out = prepared(ctx)
    assert (out["n_train"], out["n_eval"]) == (9, 3) and out["meta"]["label_names"] == sorted(SHAPES)
    first = ET.parse(data / "Annotations" / "0000.xml").getroot().find("object/bndbox")
    xyxy = [float(first.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
    assert np.load(ctx.run_dir / "data" / "train_boxes.npy")[0, 0].tolist() == pytest.approx(xyxy)  # 64x48 image, 64 px canvas


def test_segmentation_masks_keep_background_and_void(tmp_path, models):
    data = segmentation_folders(tmp_path / "masks", n=20)
    ctx = make_ctx(tmp_path / "run", "semantic-segmentation", model_id=str(models["segformer"]), local_dataset_path=str(data))
    step1(ctx)
    assert ctx.config.project.reduce_labels is False and ctx.config.project.ignore_index == 255
    meta = prepared(ctx)["meta"]
    assert meta["label_names"] == ["background", *SHAPES] and meta["reduce_labels"] is False
    masks = np.load(ctx.run_dir / "data" / "train_labels.npy")
    assert masks.shape[1:] == (32, 32) and set(np.unique(masks).tolist()) == {0, 1, 2, 255}
    assert meta["masks"]["train"]["ignored_pixels"] == 32 * meta["n_train"]  # the void top row


def test_step1_reduces_labels_when_the_names_have_no_background(tmp_path, models):
    data = segmentation_folders(tmp_path / "masks", n=20, labels_file=False)
    (data / "labels.txt").write_text("\n".join(SHAPES) + "\n")
    ctx = make_ctx(tmp_path / "run", "semantic-segmentation", model_id=str(models["segformer"]), local_dataset_path=str(data))
    step1(ctx)
    assert ctx.config.project.reduce_labels is True and any("reduce_labels=True" in n for n in ctx.config.notes)
    meta = prepared(ctx)["meta"]
    assert meta["label_names"] == SHAPES and meta["reduce_labels"] is True
    masks = np.load(ctx.run_dir / "data" / "train_labels.npy")
    assert set(np.unique(masks).tolist()) == {0, 1, 255}


def test_annotation_plan_decisions():
    named = annotation_plan({"label_names": ["background", "cat"], "mask_values": [0, 1, 255], "label_names_from": "labels.txt"},
                            "semantic-segmentation")
    assert named["reduce_labels"] is False and "255" in named["reason"]
    ade = annotation_plan({"label_names": ["wall", "floor"], "mask_values": [0, 1, 2], "label_names_from": "labels.txt"},
                          "semantic-segmentation")
    assert ade["reduce_labels"] is True
    seen = annotation_plan({"label_names": ["class_0", "class_1"], "mask_values": [0, 1], "label_names_from": "mask values (no labels.txt)"},
                           "semantic-segmentation")
    assert seen["reduce_labels"] is False
    assert annotation_plan({"bbox_format": "coco xywh (absolute pixels)"}, "object-detection")["bbox_format"] == "coco"
    assert annotation_plan({}, "image-classification") == {}


def test_a_hub_style_parquet_with_an_objects_column(tmp_path, models):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = {"image": [], "objects": []}
    for i in range(10):
        rows["image"].append(Image.fromarray(rng.integers(0, 255, (40, 80, 3), dtype=np.uint8)))
        rows["objects"].append({"bbox": [[4.0, 5.0, 20.0, 10.0], [70.0, 30.0, 30.0, 30.0]], "category": [i % 2, 1]})
    feats = datasets.Features({"image": datasets.Image(), "objects": {
        "bbox": datasets.List(datasets.List(datasets.Value("float32"), length=4)),
        "category": datasets.List(datasets.ClassLabel(names=["coverall", "mask"]))}})
    (tmp_path / "hub").mkdir()
    datasets.Dataset.from_dict(rows, features=feats).to_parquet(str(tmp_path / "hub" / "train.parquet"))
    ctx = make_ctx(tmp_path / "run", "object-detection", model_id=str(models["detr"]), local_dataset_path=str(tmp_path / "hub"),
                   local_dataset_format="parquet")
    ctx.config.project = ctx.config.project.model_copy(update={"bbox_format": "coco"})
    ctx.save()
    meta = prepared(ctx)["meta"]
    assert meta["label_names"] == ["coverall", "mask"]
    train = meta["boxes"]["train"]
    assert train["boxes_in"] == 2 * meta["n_train"] and train["clipped"] == meta["n_train"]  # the second box runs off the right
    boxes = np.load(ctx.run_dir / "data" / "train_boxes.npy")
    assert boxes[0, 0].tolist() == pytest.approx([3.2, 4.0, 19.2, 12.0])  # coco xywh * 64/80 -> xyxy


def test_the_detection_collator_pads_masks_flips_and_normalises():
    task = load("object-detection", "task")

    class RT:
        device = torch.device("cpu")

    px = torch.zeros(2, 3, 8, 8, dtype=torch.uint8)
    px[0, :, :4, :8] = torch.arange(8, dtype=torch.uint8) * 20 + 1  # columns differ: a flip shows
    px[1, :, :6, :3] = torch.arange(3, dtype=torch.uint8) * 50 + 1
    batch = {"pixel_values": px, "sizes": torch.tensor([[4, 8], [6, 3]]), "labels": torch.tensor([[0, -1], [1, 1]]),
             "boxes": torch.tensor([[[0, 0, 4, 2], [0, 0, 0, 0]], [[1, 1, 3, 5], [0, 0, 1, 1]]], dtype=torch.float32)}
    meta = {"image_mean": [0.5] * 3, "image_std": [0.5] * 3, "pixel_mask": True, "hflip": False}
    inp = task.to_inputs(batch, RT(), meta, train=False)
    assert inp["pixel_values"].shape == (2, 3, 6, 8) and inp["pixel_mask"].shape == (2, 6, 8)
    assert inp["pixel_mask"][0].sum() == 4 * 8 and inp["pixel_mask"][1].sum() == 6 * 3
    assert (inp["pixel_values"][1, :, :, 3:] == 0).all()  # padding is 0 after normalisation
    assert inp["labels"][0]["boxes"][0].tolist() == pytest.approx([2 / 8, 1 / 6, 4 / 8, 2 / 6])  # cxcywh / padded size
    assert inp["labels"][1]["class_labels"].tolist() == [1, 1]
    assert task.flip_boxes(torch.tensor([[[1.0, 1, 3, 5]]]), torch.tensor([3])).tolist() == [[[0.0, 1, 2, 5]]]
    torch.manual_seed(1)
    out = task.to_inputs(batch, RT(), {**meta, "hflip": True}, train=True)
    for i, w in enumerate((8, 3)):
        raw = task.to_inputs(batch, RT(), meta, train=False)
        same = torch.equal(out["pixel_values"][i], raw["pixel_values"][i])
        want = raw["labels"][i]["boxes"] if same else raw["labels"][i]["boxes"] * torch.tensor([-1.0, 1, 1, 1]) + torch.tensor([w / 8, 0, 0, 0])
        assert torch.allclose(out["labels"][i]["boxes"], want)


def test_coco_map_and_miou_from_maintained_definitions():
    det = load("object-detection", "task")
    gts = [(np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32), np.array([0, 1])), (np.array([[5, 5, 15, 15]], np.float32), np.array([0]))]
    sizes = np.array([[40, 40], [40, 40]])
    perfect = [{"boxes": b, "labels": c, "scores": np.ones(len(c))} for b, c in gts]
    m = det.coco_map(gts, perfect, ["a", "b"], sizes)
    assert m["map"] == pytest.approx(1.0) and m["map_50"] == pytest.approx(1.0) and m["per_class_ap"] == pytest.approx({"a": 1.0, "b": 1.0})
    miss_b = [{"boxes": b[c == 0], "labels": c[c == 0], "scores": np.ones(int((c == 0).sum()))} for b, c in gts]
    m = det.coco_map(gts, miss_b, ["a", "b"], sizes)
    assert m["per_class_ap"]["b"] == 0.0 and m["map"] == pytest.approx(0.5)
    assert det.coco_map(gts, [{"boxes": np.zeros((0, 4)), "labels": np.zeros(0), "scores": np.zeros(0)}] * 2, ["a", "b"], sizes)["map"] == 0.0

    seg = load("semantic-segmentation", "task")
    from sklearn.metrics import jaccard_score

    rng = np.random.default_rng(0)
    label = torch.from_numpy(rng.integers(0, 3, (2, 16, 16)))
    label[0, 0] = 255
    pred = torch.from_numpy(rng.integers(0, 3, (2, 16, 16)))
    cm = seg.confusion(pred, label, 3, 255).numpy()
    m = seg.segmentation_metrics(cm, ["x", "y", "z"])
    valid = (label != 255).numpy()
    ref = jaccard_score(label.numpy()[valid], pred.numpy()[valid], average=None)
    assert [m["per_class_iou"][k] for k in "xyz"] == pytest.approx(ref.tolist())
    assert m["mean_iou"] == pytest.approx(ref.mean()) and m["pixel_accuracy"] == pytest.approx((label.numpy() == pred.numpy())[valid].mean())
