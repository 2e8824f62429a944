import pytest

from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools.compat import RuleError, apply_matches, check_compat, evaluate_rules, holds, load_rules, parse_rules

GQA = {"model": {"gqa": True, "model_type": "llama"}, "platform": "docker", "hardware": {}}


def ids(matches):
    return [m["id"] for m in matches]


def test_packaged_rules_load_and_cover_the_playbook_classes():
    rules = {r.id: r for r in load_rules()}
    for needed in ("sdpa-gqa-old-ngc", "numpy2-abi", "peft-gradient-checkpointing", "lora-targets-from-model", "ngc-entrypoint", "cv-augmentation-library"):
        assert needed in rules
    assert {r.fix.kind for r in rules.values()} == {"dockerfile", "requirements", "config"}
    assert all(r.source for r in rules.values())


def test_sdpa_gqa_is_a_hardware_rule_keyed_on_the_ngc_tag():
    assert "sdpa-gqa-old-ngc" not in ids(evaluate_rules(GQA, "probe"))
    old = {**GQA, "hardware": {"ngc_image": "nvcr.io/nvidia/pytorch:24.09-py3"}}
    new = {**GQA, "hardware": {"ngc_image": "nvcr.io/nvidia/pytorch:25.01-py3"}}
    match = [m for m in evaluate_rules(old, "hardware") if m["id"] == "sdpa-gqa-old-ngc"]
    assert match and match[0]["fix"] == {"kind": "config", "value": {"attn_implementation": "eager"}}
    assert "sdpa-gqa-old-ngc" not in ids(evaluate_rules(new, "hardware"))
    assert "numpy2-abi" in ids(evaluate_rules({**GQA, "hardware": {"ngc_image": "nvcr.io/nvidia/pytorch:24.05-py3"}}, "hardware"))


def test_probe_rules_for_a_vlm_lora_run():
    facts = {"model": {"model_type": "idefics3", "auto_map": []}, "task": "image-text-to-text", "training_method": "lora",
             "gradient_checkpointing": False, "platform": "local", "dataset": {"image_modes": ["L", "RGB"]}}
    assert ids(evaluate_rules(facts, "probe")) == ["smolvlm-sdpa-eager", "peft-gradient-checkpointing", "lora-targets-from-model", "grayscale-to-rgb"]


def test_condition_language():
    facts = {"a": {"b": 3, "v": "24.09", "tags": ["x"]}}
    assert holds({"fact": "a.b", "ge": 3}, facts)
    assert holds({"fact": "a.v", "lt": "24.10"}, facts)
    assert not holds({"fact": "a.missing", "eq": None}, facts)
    assert holds({"fact": "a.missing", "exists": False}, facts)
    assert holds({"not": {"fact": "a.tags", "contains": "y"}}, facts)
    assert holds({"any": [{"fact": "a.b", "eq": 1}, {"fact": "a.v", "matches": "^24\\."}]}, facts)
    assert not holds({"fact": "__import__('os').system('x')", "eq": 1}, facts)


@pytest.mark.parametrize(("doc", "message"), [
    ({}, "must hold a 'rules' list"),
    ({"rules": [{"id": "x", "phase": "probe", "description": "d", "detect": {"fact": "a", "like": 1}, "fix": {"kind": "env", "value": {}}, "source": "s"}]}, "a leaf is"),
    ({"rules": [{"id": "x", "phase": "probe", "description": "d", "detect": {"all": []}, "fix": {"kind": "env", "value": {}}, "source": "s"}]}, "non-empty list"),
    ({"rules": [{"id": "x", "phase": "later", "description": "d", "detect": {"fact": "a", "eq": 1}, "fix": {"kind": "env", "value": {}}, "source": "s"}]}, "rule #0"),
    ({"rules": [{"id": "x", "phase": "probe", "description": "d", "detect": {"fact": "a", "eq": 1}, "fix": {"kind": "env", "value": {}}, "source": "s"}] * 2}, "appears twice"),
])
def test_bad_rule_files_are_refused(doc, message):
    with pytest.raises(RuleError, match=message):
        parse_rules(doc)


def test_check_compat_merges_phases(tmp_path):
    cfg = RunConfig(model_id="m/x", dataset_id="d/y", task_type="object-detection", output_dir=str(tmp_path / "run"),
                    model_facts={"gqa": True}, applicable_workarounds=["sdpa-gqa-old-ngc", "smolvlm-sdpa-eager"])
    creds = Credentials({})
    ctx = RunContext(cfg, SessionLog(cfg.out / "s.jsonl", creds), creds)
    out = check_compat(ctx, check_compat.args_model())
    assert out["applicable_workarounds"] == ["sdpa-gqa-old-ngc", "ngc-entrypoint", "cv-augmentation-library", "albumentations-bbox-clip"]
    cfg.ngc_image = "nvcr.io/nvidia/pytorch:25.10-py3"
    apply_matches(cfg, "hardware")
    assert "sdpa-gqa-old-ngc" not in cfg.applicable_workarounds and "ngc-entrypoint" in cfg.applicable_workarounds
