import pytest
import yaml

from servers import step1_data as D
from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.facts import DatasetFacts, ModelFacts
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools.base import NeedsUser, ToolError
from tao_finetune.tools.dataset import probe_local_dataset
from tao_finetune.tools.probe import probe_model_facts
from tao_finetune.tools.task import TASKS, detect_task, qualify, recommend_datasets, recommendations, verdict

IMG_DS = {"columns": {"image": {"type": "Image"}, "label": {"type": "ClassLabel(3)"}}}
MASK_DS = {"columns": {"image": {"type": "Image"}, "annotation": {"type": "Image"}}}
BOX_DS = {"columns": {"image": {"type": "Image"}, "objects": {"type": "dict", "boxes_per_sample": {}}}}
TEXT_DS = {"columns": {"text": {"type": "string", "text_chars": {}}, "label": {"type": "ClassLabel(2)"}}}
VQA_DS = {"columns": {"image": {"type": "Image"}, "question": {"type": "string"}, "answer": {"type": "string"}}}


def make_ctx(tmp_path, **cfg):
    c = RunConfig(output_dir=str(tmp_path / "run"), **cfg)
    creds = Credentials({})
    return RunContext(c, SessionLog(c.out / "s.jsonl", creds), creds)


@pytest.mark.parametrize(("model", "dataset", "task", "evidence"), [
    ({"architectures": ["ViTForImageClassification"], "model_type": "vit"}, IMG_DS, "image-classification", "architecture ViTForImageClassification"),
    ({"architectures": ["SegformerForImageClassification"], "model_type": "segformer", "pipeline_tag": "image-classification"}, MASK_DS,
     "semantic-segmentation", "discovery path"),
    ({"architectures": ["DetrForObjectDetection"], "model_type": "detr"}, BOX_DS, "object-detection", "architecture DetrForObjectDetection"),
    ({"architectures": ["Idefics3ForConditionalGeneration"], "model_type": "idefics3"}, VQA_DS, "image-text-to-text", "vision tower"),
    ({"architectures": ["BertModel"], "model_type": "bert"}, TEXT_DS, "text-classification", "card silent on a head"),
    ({"architectures": ["ConvNextModel"], "model_type": "convnext", "image_size": 224}, IMG_DS, "image-classification", "vision backbone"),
    ({"model_type": "vit", "card_classes": ["AutoModelForImageClassification"]}, None, "image-classification", "model card names"),
])
def test_detect_task(model, dataset, task, evidence):
    got, notes = detect_task(ModelFacts.model_validate(model), DatasetFacts.model_validate(dataset) if dataset else None)
    assert got == task
    assert any(evidence in n for n in notes)


def test_unsupported_and_conflicting_tasks():
    with pytest.raises(ToolError, match="unsupported task: the model is for text-generation"):
        detect_task(ModelFacts(architectures=["LlamaForCausalLM"], model_type="llama"), DatasetFacts.model_validate(TEXT_DS))
    with pytest.raises(NeedsUser, match="the model fits image-classification but the dataset looks like object-detection"):
        detect_task(ModelFacts(architectures=["ViTForImageClassification"]), DatasetFacts.model_validate(BOX_DS))
    with pytest.raises(NeedsUser, match="you asked for object-detection"):
        detect_task(ModelFacts(architectures=["ViTForImageClassification"]), DatasetFacts.model_validate(IMG_DS), "object-detection")
    with pytest.raises(NeedsUser, match="cannot tell the task"):
        detect_task(ModelFacts(model_type="mystery", model_id="x/y"), DatasetFacts.model_validate({"columns": {"blob": {"type": "binary"}}}))
    with pytest.raises(ToolError, match="is not supported"):
        detect_task(ModelFacts(architectures=["ViTForImageClassification"]), DatasetFacts.model_validate(IMG_DS), "depth")


def test_recommendations_are_curated_for_every_task():
    for task in TASKS:
        picks = recommendations(task)
        assert 3 <= len(picks) <= 5
        assert all({"id", "size", "license", "why"} <= set(p) and "/" in p["id"] for p in picks)


def test_recommend_datasets_waits_for_the_users_pick(tmp_path):
    ctx = make_ctx(tmp_path, model_id="org/vit", model_facts={"architectures": ["ViTForImageClassification"]})
    with pytest.raises(NeedsUser) as q:
        recommend_datasets(ctx, recommend_datasets.args_model())
    assert "uoft-cs/cifar10" in q.value.question and "--dataset-id" in q.value.how_to_answer
    ctx2 = make_ctx(tmp_path / "b", model_id="org/vit", dataset_id="x/y")
    out = recommend_datasets(ctx2, recommend_datasets.args_model(task_type="object-detection"))
    assert out["datasets"][0]["id"] == "rishitdagli/cppe-5"
    with pytest.raises(ToolError, match="call probe_model first"):
        recommend_datasets(make_ctx(tmp_path / "c", model_id="m/x"), recommend_datasets.args_model())


def test_verdict_reasons(tmp_path):
    def v(**kw):
        base = {"model_id": "m/x", "dataset_id": "d/y", "output_dir": str(tmp_path)}
        return verdict(RunConfig(**{**base, **kw}))

    assert v(model_facts={"license": "cc-by-nc-nd-4.0"})["reasons"] == ["model license 'cc-by-nc-nd-4.0' forbids derivatives (a fine-tuned model is one)"]
    assert "non-commercial" in v(dataset_facts={"license": "cc-by-nc-4.0"})["warnings"][0]
    assert "use LoRA" in v(model_facts={"param_count": 80e9})["reasons"][0]
    assert v(model_facts={"param_count": 80e9}, hyperparameters={"training_method": "lora"})["verdict"] == "accept"
    assert "even with LoRA" in v(model_facts={"param_count": 400e9}, hyperparameters={"training_method": "lora"})["reasons"][0]
    assert v(model_facts={"param_count": 40e9})["warnings"]
    bad = v(dataset_facts={"issues": [{"level": "error", "kind": "no_rows", "count": 1, "message": "no rows"}]})
    assert bad["verdict"] == "reject" and bad["reasons"] == ["dataset unusable: no rows"]


def test_qualify_writes_the_skeleton_and_meets_gate_1(tmp_path):
    vit = D.save_vit(tmp_path / "vit")
    data = D.imagefolder(tmp_path / "data")
    ctx = make_ctx(tmp_path, model_id=str(vit), local_dataset_path=str(data))
    ctx.config.model_facts = probe_model_facts(str(vit), False)
    ctx.config.dataset_facts = probe_local_dataset(str(data))
    out = qualify(ctx, qualify.args_model())
    assert out["verdict"] == "accept" and out["gate1"] == "met" and out["num_labels"] == 3
    saved = yaml.safe_load((ctx.run_dir / "config.yaml").read_text())
    assert saved["task_type"] == "image-classification"
    assert saved["applicable_workarounds"] == ["ngc-entrypoint"]
    assert saved["label_names"] == sorted(D.CLASSES)
    assert any("task evidence (model)" in n for n in saved["notes"])
    assert ctx.state.records["qualify"]["verdict"] == "accept"


def test_qualify_reject_and_order_errors(tmp_path):
    ctx = make_ctx(tmp_path, model_id="m/x", dataset_id="d/y")
    with pytest.raises(ToolError, match="call probe_model first"):
        qualify(ctx, qualify.args_model())
    ctx.config.model_facts = {"architectures": ["ViTForImageClassification"], "license": "cc-by-nd-4.0"}
    with pytest.raises(ToolError, match="call probe_dataset first"):
        qualify(ctx, qualify.args_model())
    ctx.config.dataset_facts = IMG_DS
    with pytest.raises(ToolError, match="rejected: model license 'cc-by-nd-4.0' forbids derivatives"):
        qualify(ctx, qualify.args_model())
    assert ctx.state.records["qualify"]["verdict"] == "reject"


def test_qualify_vlm_defaults_to_lora_and_no_dataset_asks(tmp_path):
    ctx = make_ctx(tmp_path, model_id="m/vlm", dataset_id="d/vqa")
    ctx.config.model_facts = {"architectures": ["Idefics3ForConditionalGeneration"], "model_type": "idefics3"}
    ctx.config.dataset_facts = {**VQA_DS, "splits": {"train": 10, "validation": 2}, "samples": [{"question": "q", "answer": "a"}]}
    out = qualify(ctx, qualify.args_model())
    assert ctx.config.hyperparameters.training_method == "lora"
    assert {"smolvlm-sdpa-eager", "peft-gradient-checkpointing", "lora-targets-from-model"} <= set(out["applicable_workarounds"])
    ask = make_ctx(tmp_path / "b", model_id="m/vlm")
    ask.config.model_facts = ctx.config.model_facts
    with pytest.raises(NeedsUser, match="no dataset given; picks for image-text-to-text"):
        qualify(ask, qualify.args_model())
