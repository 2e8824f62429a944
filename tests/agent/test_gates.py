import json

from tao_finetune.agent import gates
from tao_finetune.agent.state import RunState

from agent_standins import SKILL


def test_empty_dir_fails_gate_one(tmp_path):
    assert gates.check(1, tmp_path, RunState()).missing == ("config.yaml",)
    assert gates.first_unmet(tmp_path, RunState()) == 1


def test_gate_one_names_each_missing_field(ctx):
    res = gates.check(1, ctx.run_dir, ctx.state)
    assert set(res.missing) == {"task_type", "applicable_workarounds"}
    ctx.config.applicable_workarounds = []
    ctx.config.task_type = "image-classification"
    ctx.save()
    assert gates.check(1, ctx.run_dir, ctx.state).met


def test_gate_two_needs_the_image_only_on_docker(ctx):
    c = ctx.config
    c.gpu_count, c.gpu_name, c.driver_major, c.vram_gb_per_gpu = 0, "cpu", 0, 0.0
    ctx.state.record("audit", {"passed": True})
    ctx.save()
    assert gates.check(2, ctx.run_dir, ctx.state).missing == ("ngc_image",)
    c.platform = "local"
    ctx.save()
    assert gates.check(2, ctx.run_dir, ctx.state).met


def test_gate_four_lists_blank_preflight_fields(ctx):
    (ctx.run_dir / "meta").mkdir()
    (ctx.run_dir / "meta" / "preflight.json").write_text(json.dumps({"image": "x", "wandb": ""}))
    missing = gates.check(4, ctx.run_dir, ctx.state).missing
    assert "preflight.wandb" in missing and "smoke passed" in missing and "train.py" in missing


def test_gate_five_needs_a_numeric_primary_metric(ctx):
    rep = ctx.run_dir / "reports"
    rep.mkdir()
    (rep / "eval_results.json").write_text(json.dumps({"primary_metric": "accuracy", "accuracy": "high"}))
    assert "reports/eval_results.json with a numeric primary metric" in gates.check(5, ctx.run_dir, ctx.state).missing
    assert gates.primary_metric({"primary_metric": "accuracy", "accuracy": 0.5}) == 0.5
    assert gates.primary_metric({"primary_metric": "accuracy", "accuracy": True}) is None
    ctx.config.skip_baseline = True
    ctx.save()
    assert not any("baseline" in m for m in gates.check(5, ctx.run_dir, ctx.state).missing)


def test_vlm_lora_needs_merge_script_and_merged_checkpoint(ctx):
    ctx.config.task_type = "image-text-to-text"
    ctx.config.hyperparameters.training_method = "lora"
    ctx.save()
    assert "merge_lora.py" in gates.check(4, ctx.run_dir, ctx.state).missing
    assert "checkpoints/merged/" in gates.check(5, ctx.run_dir, ctx.state).missing


def test_skill_text_checks():
    assert gates.check_skill_text(SKILL) == []
    assert gates.check_skill_text(SKILL.replace("license: Apache-2.0\n", "")) == ["front matter license"]
    assert "placeholders left: <model_id>" in gates.check_skill_text(SKILL + "run <model_id>\n")
    assert gates.check_skill_text(SKILL.replace("<!-- Copyright (c) 2026, NVIDIA CORPORATION. All rights reserved. -->\n", "")) == [
        "copyright HTML comment after the front matter"]
    assert gates.check_skill_text("no front matter") == ["YAML front matter"]


def test_gate_six_skips_push_when_disabled(ctx):
    ctx.config.push_to_hub = False
    ctx.save()
    assert gates.check(6, ctx.run_dir, ctx.state).missing == ("skills/run-tiny-vit/SKILL.md",)


def test_blocking_names_the_first_unmet_gate(ctx):
    assert gates.blocking(1, ctx.run_dir, ctx.state) is None
    assert gates.blocking(6, ctx.run_dir, ctx.state).step == 1
