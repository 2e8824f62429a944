"""LoRA is offered only where the model can take it: probe_model counts the LoRA targets (nn.Linear inside repeated
blocks, on a meta-device backbone) with the scaffolds' own rule; a model with none gets one line, never the offer."""

import subprocess
import sys
from pathlib import Path

import pytest

from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.agent.state import RunState
from tao_finetune.tools import jobs
from tao_finetune.tools.base import NeedsUser
from tao_finetune.tools.probe import probe_model_facts
from tao_finetune.tools.task import lora_unavailable, verdict
from tao_finetune.tools.probe import lora_target_count

REFS = Path(__file__).resolve().parents[1] / "references"
sys.path.insert(0, str(REFS))
from shapes import tiny_detr  # noqa: E402


def tiny_resnet(path: Path) -> Path:
    """A convolution-only classifier (no nn.Linear inside its stages): LoRA has nothing to adapt."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    torch.manual_seed(0)
    ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic",
                                              num_labels=3)).save_pretrained(path)
    return path


def ctx_for(model: Path, run: Path, **hp) -> RunContext:
    cfg = RunConfig(model_id=str(model), task_type="image-classification", output_dir=str(run), platform="local",
                    allow_cpu=True, push_to_hub=False, model_facts=probe_model_facts(str(model), False))
    cfg.hyperparameters = cfg.hyperparameters.model_copy(update=hp)
    ctx = RunContext(cfg, SessionLog(run / "session.jsonl", Credentials({})), Credentials({}), RunState(), yes=True)
    ctx.save()
    return ctx


def test_the_probe_counts_lora_targets_as_the_scaffold_derives_them(tmp_path):
    sys.path.insert(0, str(REFS.parent.parent / "references" / "scaffolds" / "common"))
    import common  # the scaffolds' module: the rule the training run applies
    from transformers import AutoModelForObjectDetection

    detr = tiny_detr(tmp_path / "detr")
    facts = probe_model_facts(str(detr), False)
    assert facts.lora_targets is None  # not counted at probe time (it needs torch); counted when a decision needs it
    loaded = AutoModelForObjectDetection.from_pretrained(detr)
    derived = common.derive_lora_targets(loaded, exclude=common.head_modules(loaded))
    assert lora_target_count(facts) == facts.lora_targets == len(derived) == 32
    assert lora_target_count(probe_model_facts(str(tiny_resnet(tmp_path / "resnet")), False)) == 0


def test_probing_a_local_safetensors_model_imports_no_torch(tmp_path):
    """The probe of a model with safetensors weights reads headers only: importing torch in the agent process cost
    17 s of a cold H200 run when the probe counted LoRA targets eagerly."""
    detr = tiny_detr(tmp_path / "detr")
    code = ("import sys; from tao_finetune.tools.probe import probe_model_facts; f = probe_model_facts(sys.argv[1], False); "
            "print(f.param_source, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(detr)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["safetensors", "headers", "False"]


def test_a_model_without_targets_is_never_offered_lora(tmp_path):
    resnet = tiny_resnet(tmp_path / "resnet")
    ctx = ctx_for(resnet, tmp_path / "run", training_method="lora")
    line = lora_unavailable(ctx.config)
    assert line and "cannot take LoRA" in line and "\n" not in line
    v = verdict(ctx.config)
    assert v["verdict"] == "reject" and f"training_method lora: {line}" in v["reasons"]

    full = ctx_for(resnet, tmp_path / "run2", per_device_train_batch_size=1, gradient_checkpointing=True)
    with pytest.raises(NeedsUser) as asked:
        jobs.apply_fix(full, {"id": "cuda-oom", "action": "oom"})
    assert "cannot take LoRA" in asked.value.question and "Switch to LoRA" not in asked.value.question
    assert not asked.value.choices


def test_a_model_with_targets_still_gets_the_lora_offer(tmp_path):
    ctx = ctx_for(tiny_detr(tmp_path / "detr"), tmp_path / "run", per_device_train_batch_size=1, gradient_checkpointing=True)
    assert lora_unavailable(ctx.config) is None
    with pytest.raises(NeedsUser) as asked:
        jobs.apply_fix(ctx, {"id": "cuda-oom", "action": "oom"})
    assert "Switch to LoRA" in asked.value.question and asked.value.choices == jobs.LORA_CHOICE


def test_step_3_says_in_one_line_that_a_source_s_lora_is_not_offered(tmp_path, monkeypatch):
    from servers.pages import serve_pages
    from tao_finetune.tools import research

    ctx = ctx_for(tiny_resnet(tmp_path / "resnet"), tmp_path / "run")
    docs = "/docs/transformers/tasks/image_classification"
    with serve_pages() as pages:
        monkeypatch.setenv("HF_ENDPOINT", pages.url)
        monkeypatch.setattr(research, "FETCHER", research.Fetcher(timeout_s=0.5, attempts=2, wait_s=0))
        research.fetch_docs.fn(ctx, research.fetch_docs.args_model(url=pages.url + docs))
        out = research.record_recipe.fn(ctx, research.record_recipe.args_model(
            slot="hyperparameters", rank="live", source=pages.url + docs, value={"learning_rate": 1e-4, "training_method": "lora"}))
    note = out["skipped"]["training_method"]
    assert note.startswith("not applied and not offered:") and "cannot take LoRA" in note and "ask the user" not in note
    assert ctx.config.hyperparameters.training_method == "full"
