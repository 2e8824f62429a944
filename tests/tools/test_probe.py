import json
import socket

import pytest

from servers.step1_data import FAKE_TOKEN, local_hub, save_vit, write_config  # noqa: F401
from tao_finetune.agent.config import RunConfig, load_config
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools.base import ToolError
from tao_finetune.tools.probe import config_facts, hub_env, probe_model, probe_model_facts

CARD = "---\nlicense: apache-2.0\ntags: [vision]\n---\n# tiny\nUse `AutoModelForImageClassification` or pipeline(\"image-classification\").\n"


@pytest.fixture(scope="module")
def vit_dir(tmp_path_factory):
    return save_vit(tmp_path_factory.mktemp("m") / "vit", card=CARD)


def test_local_vit_folder(vit_dir):
    f = probe_model_facts(str(vit_dir), token_present=False)
    assert f["source"] == "local"
    assert (f["model_type"], f["architectures"]) == ("vit", ["ViTForImageClassification"])
    assert f["num_attention_heads"] == 2 and f["num_key_value_heads"] == 2 and f["gqa"] is False
    assert f["image_size"] == 32
    assert f["label_names"] == ["zero", "one", "two"] and f["num_labels"] == 3
    assert f["image_processor_type"] == "ViTImageProcessor"
    assert f["license"] == "apache-2.0"
    assert f["card_classes"] == ["AutoModelForImageClassification"] and f["card_pipelines"] == ["image-classification"]
    from transformers import ViTForImageClassification

    n = sum(p.numel() for p in ViTForImageClassification.from_pretrained(vit_dir).parameters())
    assert f["param_count"] == n and f["bf16_bytes"] == 2 * n and f["param_source"] == "safetensors headers"


def test_local_gqa_config_counts_params_on_meta_device(tmp_path):
    d = write_config(tmp_path / "llama", model_type="llama", architectures=["LlamaForSequenceClassification"], hidden_size=64,
                     intermediate_size=128, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, vocab_size=100,
                     max_position_embeddings=256)
    f = probe_model_facts(str(d), False)
    assert f["gqa"] is True and (f["num_attention_heads"], f["num_key_value_heads"]) == (8, 2)
    assert f["max_length"] == 256
    assert f["param_source"] == "config (meta-device init)" and f["param_count"] > 0


def test_nested_vlm_config_facts():
    f = config_facts({"model_type": "idefics3", "architectures": ["Idefics3ForConditionalGeneration"],
                      "text_config": {"model_type": "llama", "num_attention_heads": 9, "num_key_value_heads": 3, "max_position_embeddings": 8192},
                      "vision_config": {"model_type": "idefics3_vision", "image_size": 512}})
    assert (f["num_attention_heads"], f["num_key_value_heads"], f["gqa"]) == (9, 3, True)
    assert f["image_size"] == 512 and f["vision_model_type"] == "idefics3_vision"


@pytest.mark.parametrize(("setup", "message"), [
    (lambda p: p.mkdir(), "has no config.json"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text("{not json")), "config.json is not valid JSON"),
    (lambda p: (p.mkdir(), (p / "config.json").write_text('{"hidden_size": 3}')), "names neither model_type nor architectures"),
    (lambda p: (p.parent.mkdir(exist_ok=True), p.write_text("x")), "is not a folder"),
])
def test_local_folder_errors(tmp_path, setup, message):
    target = tmp_path / "m"
    setup(target)
    with pytest.raises(ToolError, match=message):
        probe_model_facts(str(target), False)


def test_missing_local_path():
    with pytest.raises(ToolError, match="does not exist"):
        probe_model_facts("./no/such/model-folder", False)


def test_hub_model(local_hub, vit_dir):
    local_hub.add_repo("org/tiny-vit", vit_dir, pipeline_tag="image-classification", library_name="transformers", tags=["transformers", "vision"])
    with hub_env():
        f = probe_model_facts("org/tiny-vit", False)
    assert f["source"] == "hub" and len(f["sha"]) == 40
    assert (f["pipeline_tag"], f["library_name"], f["license"]) == ("image-classification", "transformers", "apache-2.0")
    assert f["param_source"] == "hub safetensors metadata" and f["param_count"] > 10000
    assert "vision" in f["tags"] and f["gated"] is False
    assert "/api/models/org/tiny-vit" in local_hub.paths("GET")


def test_hub_unknown_id(local_hub):
    with hub_env(), pytest.raises(ToolError, match="'org/nope' was not found on the Hub"):
        probe_model_facts("org/nope", False)


def test_hub_gated_without_token_stops_before_downloading(local_hub, vit_dir):
    local_hub.add_repo("org/gated-vit", vit_dir, gated="manual")
    with hub_env(), pytest.raises(ToolError, match="is gated .* HF_TOKEN is not set"):
        probe_model_facts("org/gated-vit", token_present=False)
    assert not [p for p in local_hub.paths() if "/resolve/" in p]


def test_hub_gated_with_token_from_the_environment(local_hub, vit_dir):
    local_hub.add_repo("org/gated-vit", vit_dir, gated="auto")
    with hub_env({"HF_TOKEN": FAKE_TOKEN}):
        f = probe_model_facts("org/gated-vit", token_present=True)
    assert f["model_type"] == "vit" and f["gated"] == "auto"
    resolves = [r for r in local_hub.requests if "/resolve/" in r.path]
    assert resolves and all(r.headers.get("authorization") == f"Bearer {FAKE_TOKEN}" for r in resolves)
    assert FAKE_TOKEN not in f.model_dump_json()


def test_hub_gated_file_refused_despite_presence_flag(local_hub, vit_dir, monkeypatch):
    local_hub.add_repo("org/gated-vit", vit_dir, gated="manual")
    with hub_env(), pytest.raises(ToolError, match="is gated: request access"):
        probe_model_facts("org/gated-vit", token_present=True)  # flag says present, but no token reaches the client


def test_offline_not_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with hub_env(), pytest.raises(ToolError, match="not in the local cache and the Hub .* cannot be reached"):
        probe_model_facts("google/vit-base-patch16-224", False)


def test_offline_uses_the_cache(local_hub, vit_dir, monkeypatch):
    local_hub.add_repo("org/tiny-vit", vit_dir)
    with hub_env():
        probe_model_facts("org/tiny-vit", False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with hub_env():
        f = probe_model_facts("org/tiny-vit", False)
    assert f["source"] == "cache" and f["model_type"] == "vit"


def test_unreachable_endpoint(monkeypatch, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with hub_env(), pytest.raises(ToolError, match="cannot be reached"):
        probe_model_facts("org/anything", False)


def test_invalid_hub_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with hub_env(), pytest.raises(ToolError, match="not a valid Hub id"):
        probe_model_facts("a/b/c/d", False)


def test_probe_model_tool_records_facts(tmp_path, vit_dir):
    cfg = RunConfig(model_id=str(vit_dir), local_dataset_path=str(tmp_path), output_dir=str(tmp_path / "run"))
    creds = Credentials({})
    ctx = RunContext(cfg, SessionLog(cfg.out / "session.jsonl", creds), creds)
    out = probe_model(ctx, probe_model.args_model())
    assert out["model_type"] == "vit"
    assert load_config(tmp_path / "run" / "config.yaml").model_facts["architectures"] == ["ViTForImageClassification"]
