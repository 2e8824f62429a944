import json
import os

import huggingface_hub.constants as hf_constants
import pytest
import yaml

from tao_finetune.agent import gates
from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.agent.state import RunState
from tao_finetune.tools import hub
from tao_finetune.tools.base import ToolError

from huggingface_hub import ModelCard
from huggingface_hub.repocard_data import model_index_to_eval_results

from tao_finetune.agent.errors import NeedsUser
from tao_finetune.tools import card as card_mod

from servers.hub import USER, LocalHub

FAKE_TOKEN = "hf_" + "abcdefghijklmnopqrstuvwxyzABCDEFGH"
MODEL_ID = "acme/vit-tiny-demo"


def call(t, ctx, **raw):
    return t(ctx, t.validate(raw))


@pytest.fixture
def hub_server(tmp_path, monkeypatch):
    server = LocalHub(tmp_path / "hub", token=FAKE_TOKEN).start()
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    # huggingface_hub reads these at import time; its first request also asks ENDPOINT for an agent registry.
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
    yield server
    server.stop()


def make_ctx(tmp_path, token=FAKE_TOKEN, **overrides):
    fields = dict(
        model_id=MODEL_ID,
        dataset_id="acme/digits",
        task_type="image-classification",
        output_dir=str(tmp_path / "run"),
        n_train=800,
        n_eval=200,
        applicable_workarounds=[],
        ngc_image="nvcr.io/nvidia/pytorch:25.10-py3",
        gpu_count=1,
        gpu_name="NVIDIA H100 80GB HBM3",
        driver_major=580,
        vram_gb_per_gpu=80.0,
        model_facts={"license": "apache-2.0"},
    )
    cfg = RunConfig(**{**fields, **overrides})
    creds = Credentials({"HF_TOKEN": token} if token else {})
    ctx = RunContext(cfg, SessionLog(cfg.out / "session.jsonl", creds), creds)
    ctx.save()
    run = ctx.run_dir
    final = run / "checkpoints" / "final"
    final.mkdir(parents=True)
    (final / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTForImageClassification"]}))
    (final / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)))
    (final / "preprocessor_config.json").write_text("{}")
    (final / "training_args.bin").write_bytes(b"pickle" + FAKE_TOKEN.encode())
    reports = run / "reports"
    (reports / "inference_samples").mkdir(parents=True)
    (reports / "eval_results.json").write_text(json.dumps({"primary_metric": "accuracy", "accuracy": 0.91, "eval_loss": 0.3}))
    (reports / "baseline_results.json").write_text(json.dumps({"primary_metric": "accuracy", "accuracy": 0.12}))
    for i in range(5):
        (reports / "inference_samples" / f"sample_{i}.json").write_text(json.dumps({"pred": "7", "label": "7"}))
    (run / "Dockerfile").write_text("FROM nvcr.io/nvidia/pytorch:25.10-py3\nCOPY . /workspace\n")
    (run / "requirements.txt").write_text("transformers>=5\ndatasets\n")
    (run / "train.py").write_text("print('train')\n")
    (run / "tests").mkdir()
    (run / "tests" / "test_project.py").write_text("def test_x():\n    pass\n")
    (run / "data").mkdir()
    (run / "data" / "notes.txt").write_text("cached data is not pushed\n")
    (run / ".env").write_text(f"HF_TOKEN={FAKE_TOKEN}\n")
    (run / "logs").mkdir()
    (run / "logs" / "train.log").write_text(f"token {FAKE_TOKEN}\n")
    return ctx


def load_card(server, repo_id):
    """README.md downloaded from the local Hub by huggingface_hub and parsed by ModelCard, as a user's client does."""
    from tao_finetune.tools.probe import hub_env

    with hub_env():
        return ModelCard.load(repo_id)


def repo_files(server, repo_id):
    d = server.repo_dir(repo_id)
    return {p: (d / p).read_bytes() for p in server.files(d)}


def test_push_refused_when_push_to_hub_false(hub_server, tmp_path):
    ctx = make_ctx(tmp_path, push_to_hub=False)
    with pytest.raises(ToolError, match="push_to_hub is false"):
        call(hub.hf_push, ctx)
    assert hub_server.requests == []


def test_push_refused_without_token(hub_server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    ctx = make_ctx(tmp_path, token=None)
    with pytest.raises(ToolError, match="HF_TOKEN is not set"):
        call(hub.hf_push, ctx)
    assert hub_server.requests == []


def test_push_one_commit_with_card_and_no_secret_anywhere(hub_server, tmp_path):
    ctx = make_ctx(tmp_path)
    out = call(hub.hf_push, ctx)
    repo_id = f"{USER}/vit-tiny-demo-finetuned"
    assert out["repo_id"] == repo_id
    assert out["url"] == f"{hub_server.url}/{repo_id}"
    assert hub_server.paths("GET").count("/api/whoami-v2") == 1
    commits = [r for r in hub_server.requests if "/commit/" in r.path]
    assert len(commits) == 1

    files = repo_files(hub_server, repo_id)
    assert set(files) == {
        "README.md", "config.json", "model.safetensors", "preprocessor_config.json",
        "results/eval_results.json", "results/baseline_results.json", "config.yaml", "Dockerfile", "requirements.txt",
        "train.py", "tests/test_project.py", *{f"inference_samples/sample_{i}.json" for i in range(5)},
    }
    assert files["model.safetensors"] == (ctx.run_dir / "checkpoints/final/model.safetensors").read_bytes()

    # the card read back from the Hub with huggingface_hub, as a Hub user's client reads it
    card = load_card(hub_server, repo_id)
    assert card.data.base_model == MODEL_ID and card.data.license == "apache-2.0" and card.data.datasets == ["acme/digits"]
    assert card.data.pipeline_tag == "image-classification" and card.data.library_name == "transformers"
    name, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    got = {(r.metric_type, r.metric_name): r.metric_value for r in results}
    assert got[("accuracy", "accuracy")] == 0.91 and got[("accuracy", "accuracy (base model, before fine-tuning)")] == 0.12
    assert got[("eval_loss", "eval_loss")] == 0.3 and {r.dataset_type for r in results} == {"acme/digits"}
    assert card_mod.check_card(str(card)) == []
    text = files["README.md"].decode()
    assert "**accuracy: 12.0 % → 91.0 %** (+79.0 pts)" in text
    assert "| learning_rate | 5e-05 | default |" in text
    assert f'pipeline("image-classification", model="{repo_id}")' in text
    assert f"hf download {repo_id} --local-dir vit-tiny-demo-run" in text and "python train.py" in text

    state = RunState.load(ctx.run_dir)
    assert state.records["hub"]["url"] == out["url"] and state.records["hub"]["commit"] == out["commit"]
    assert state.push.confirmed and state.push.confirmed_sha == hub_server.sha(hub_server.repo_dir(repo_id)) == out["commit"]

    token = FAKE_TOKEN.encode()
    for path, data in files.items():
        assert token not in data, path
    for r in hub_server.requests:
        assert token not in r.body, r.path
        assert all(FAKE_TOKEN not in v for k, v in r.headers.items() if k.lower() != "authorization"), r.path
    auth = [v for r in hub_server.requests for k, v in r.headers.items() if k.lower() == "authorization"]
    assert auth and set(auth) == {f"Bearer {FAKE_TOKEN}"}
    log = (ctx.run_dir / "session.jsonl").read_text()
    assert FAKE_TOKEN not in log and '"kind": "hub_push"' in log
    assert FAKE_TOKEN not in json.dumps(out)


def test_secret_in_an_uploaded_file_refuses_the_push(hub_server, tmp_path):
    ctx = make_ctx(tmp_path)
    (ctx.run_dir / "Dockerfile").write_text(f"FROM x\nENV HF_TOKEN={FAKE_TOKEN}\n")
    with pytest.raises(ToolError, match="refusing to push: Dockerfile") as err:
        call(hub.hf_push, ctx)
    assert FAKE_TOKEN not in str(err.value)
    assert not any("/commit/" in p for p in hub_server.paths())
    assert "hub" not in RunState.load(ctx.run_dir).records


@pytest.mark.parametrize("where", ["checkpoints/final/model.safetensors", "reports/inference_samples/sample_0.json", "Dockerfile"])
@pytest.mark.parametrize("form", ["b64", "b64url", "hex", "reversed"])
def test_encoded_secret_in_a_text_or_binary_file_refuses_the_push(hub_server, tmp_path, where, form):
    import base64

    ctx = make_ctx(tmp_path)
    raw = b"pad" + FAKE_TOKEN.encode() + b"!"
    enc = {"b64": base64.b64encode(raw), "b64url": base64.urlsafe_b64encode(raw), "hex": raw.hex().encode(),
           "reversed": raw[::-1]}[form]
    target = ctx.run_dir / where
    target.write_bytes(target.read_bytes() + b"\x00\x01" + enc + b"\x00")
    with pytest.raises(ToolError, match=f"refusing to push: .*{where.rsplit('/', 1)[-1]}") as err:
        call(hub.hf_push, ctx)
    assert FAKE_TOKEN not in str(err.value)
    assert not any("/commit/" in p for p in hub_server.paths())
    assert RunState.load(ctx.run_dir).push is None


def test_pickled_weights_are_never_uploaded(hub_server, tmp_path):
    ctx = make_ctx(tmp_path)
    final = ctx.run_dir / "checkpoints" / "final"
    (final / "pytorch_model.bin").write_bytes(b"pickle")
    (final / "extra.pt").write_bytes(b"pickle")
    out = call(hub.hf_push, ctx)
    assert not any(f.endswith((".bin", ".pt")) for f in repo_files(hub_server, out["repo_id"]))
    (final / "model.safetensors").unlink()
    with pytest.raises(ToolError, match="safetensors only"):
        call(hub.hf_push, ctx)


def test_push_the_hub_does_not_confirm_fails_gate6(hub_server, tmp_path, monkeypatch):
    ctx = make_ctx(tmp_path)
    real = hub.HfApi.model_info

    def stale(self, repo_id, *a, **kw):
        info = real(self, repo_id, *a, **kw)
        info.sha = "0" * 40
        return info

    monkeypatch.setattr(hub.HfApi, "model_info", stale)
    with pytest.raises(ToolError, match="push not confirmed"):
        call(hub.hf_push, ctx)
    state = RunState.load(ctx.run_dir)
    assert state.push is not None and not state.push.confirmed and "hub" not in state.records
    assert any("Hub push confirmed" in m for m in gates.gate6(ctx.run_dir, state))


def test_configured_repo_skips_whoami(hub_server, tmp_path):
    ctx = make_ctx(tmp_path, hf_model_repo="acme-org/digits-vit")
    out = call(hub.hf_push, ctx)
    assert out["repo_id"] == "acme-org/digits-vit"
    assert "/api/whoami-v2" not in hub_server.paths()
    assert "README.md" in repo_files(hub_server, "acme-org/digits-vit")


def test_repo_name_without_namespace_gets_the_whoami_user(hub_server, tmp_path):
    ctx = make_ctx(tmp_path, hf_model_repo="digits-vit")
    assert call(hub.hf_push, ctx)["repo_id"] == f"{USER}/digits-vit"


def test_forbidden_maps_to_no_write_access(tmp_path):
    httpx2 = pytest.importorskip("httpx2")
    from huggingface_hub.errors import HfHubHTTPError

    ctx = make_ctx(tmp_path)
    response = httpx2.Response(403, request=httpx2.Request("POST", "http://127.0.0.1/api/repos/create"))
    err = hub._hub_error(ctx, HfHubHTTPError("403 Forbidden", response=response), "push failed", "acme/x")
    assert str(err) == "push failed: HF_TOKEN has no write access to 'acme/x' (403 forbidden); use a write token or set hf_model_repo"


def test_rejected_token_is_a_one_line_401(tmp_path, monkeypatch):
    with LocalHub(tmp_path / "hub", token="hf_" + "Z" * 34) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
        monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(hf_constants, "ENDPOINT", server.url)
        ctx = make_ctx(tmp_path)
        with pytest.raises(ToolError) as err:
            call(hub.hf_push, ctx)
    msg = str(err.value)
    assert "401" in msg and "\n" not in msg and FAKE_TOKEN not in msg


def test_unreachable_hub_is_a_network_error(tmp_path, monkeypatch):
    with LocalHub(tmp_path / "hub") as server:
        dead = server.url
    monkeypatch.setenv("HF_ENDPOINT", dead)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", dead)
    ctx = make_ctx(tmp_path)
    with pytest.raises(ToolError, match="network error reaching the Hub"):
        call(hub.hf_push, ctx)
    assert "Hub repo pushed" in gates.gate6(ctx.run_dir, RunState.load(ctx.run_dir))  # a failed push is a failed gate


def test_token_from_env_file_only_is_used_and_not_left_in_environ(hub_server, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    ctx = make_ctx(tmp_path)
    call(hub.hf_push, ctx)
    assert "HF_TOKEN" not in os.environ


def test_emitted_skill_is_complete_and_meets_gate6(hub_server, tmp_path):
    ctx = make_ctx(tmp_path)
    pushed = call(hub.hf_push, ctx)
    out = call(hub.emit_rerun_skill, ctx)
    assert out["written"] == "skills/run-vit-tiny-demo/SKILL.md"
    text = (ctx.run_dir / out["written"]).read_text()
    assert gates.check_skill_text(text) == []
    _, front, body = text.split("---", 2)
    meta = yaml.safe_load(front)
    assert meta["name"] == "run-vit-tiny-demo" and meta["license"] == "Apache-2.0"
    assert meta["metadata"]["hub_url"] == pushed["url"]
    assert meta["metadata"]["baseline"] == "0.1200" and meta["metadata"]["finetuned"] == "0.9100"
    assert meta["metadata"]["n_train"] == "800" and meta["metadata"]["image"] == "nvcr.io/nvidia/pytorch:25.10-py3"
    assert "allowed-tools" in meta and len(meta["compatibility"]) <= 500
    assert body.lstrip().startswith("<!-- Copyright (c) ") and "NVIDIA CORPORATION" in body.split("-->")[0]
    assert "| accuracy | 0.1200 → 0.9100 (Δ +0.7900) |" in body
    assert "docker build -t run-vit-tiny-demo:latest ." in body
    assert f"tao-finetune run --config {ctx.run_dir / 'config.yaml'} --output-dir {ctx.run_dir}-rerun --yes" in body
    assert gates.gate6(ctx.run_dir, RunState.load(ctx.run_dir)) == []


def test_skill_without_push_says_not_pushed(tmp_path):
    ctx = make_ctx(tmp_path, push_to_hub=False)
    out = call(hub.emit_rerun_skill, ctx)
    meta = yaml.safe_load((ctx.run_dir / out["written"]).read_text().split("---", 2)[1])
    assert meta["metadata"]["hub_url"] == "not pushed"
    assert gates.gate6(ctx.run_dir, ctx.state) == []


def test_skill_with_a_leftover_placeholder_fails_and_writes_nothing(tmp_path):
    ctx = make_ctx(tmp_path, push_to_hub=False)
    with pytest.raises(ToolError, match="placeholders left: <todo>"):
        call(hub.emit_rerun_skill, ctx, notes="Re-check <todo> before rerunning.")
    assert not gates.skill_path(ctx.run_dir, ctx.config.model_dump()).exists()


def test_template_checks():
    values = {"a": "x"}
    good = "---\nname: <a>\ndescription: d\nlicense: L\ncompatibility: c\nmetadata:\n  k: v\nallowed-tools: Read\n---\n<!-- Copyright (c) 2026, NVIDIA CORPORATION. -->\nbody <a>\n"
    assert hub.fill_skill_template(good, values).startswith('---\nname: "x"')
    with pytest.raises(ToolError, match="placeholders left: <unknown_field>"):
        hub.fill_skill_template(good + "<unknown_field>\n", values)
    with pytest.raises(ToolError, match="copyright"):
        hub.fill_skill_template(good.replace("<!-- Copyright (c) 2026, NVIDIA CORPORATION. -->\n", ""), values)
    with pytest.raises(ToolError, match="allowed-tools"):
        hub.fill_skill_template(good.replace("allowed-tools: Read\n", ""), values)
    with pytest.raises(ToolError, match="not valid YAML"):
        hub.fill_skill_template(good.replace("description: d", "description: [d"), values)


def test_shipped_template_fills_every_placeholder(tmp_path):
    ctx = make_ctx(tmp_path, push_to_hub=False)
    template = hub.read_reference_text("pipeline-skill-template.md")
    names = {m[1:-1] for m in gates.PLACEHOLDER.findall(template)}
    assert names and names <= set(hub.skill_values(ctx))


def test_card_and_skill_report_the_sizes_actually_used(tmp_path):
    import json as _json

    from tao_finetune.agent.config import RunConfig
    from tao_finetune.tools.hub import used_sizes

    cfg = RunConfig(model_id="org/m", dataset_id="d", output_dir=str(tmp_path))
    assert used_sizes(cfg, tmp_path) == (10000, 1000)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "meta.json").write_text(_json.dumps({"n_train": 1438, "n_eval": 359}))
    assert used_sizes(cfg, tmp_path) == (1438, 359)


def local_model(tmp_path, name_or_path=None, readme=None):
    d = tmp_path / "my-vit"
    d.mkdir()
    conf = {"model_type": "vit"}
    if name_or_path:
        conf["_name_or_path"] = name_or_path
    (d / "config.json").write_text(json.dumps(conf))
    if readme:
        (d / "README.md").write_text(readme)
    return d


def test_card_for_a_local_copy_of_a_hub_model_names_the_hub_id(hub_server, tmp_path):
    d = local_model(tmp_path, name_or_path="google/vit-base-patch16-224")
    ctx = make_ctx(tmp_path, hf_model_repo="acme-org/local-vit")
    ctx.config.model_id = str(d)
    ctx.config.model_facts = {"license": "apache-2.0"}
    call(hub.hf_push, ctx)
    card = load_card(hub_server, "acme-org/local-vit")
    assert card.data.base_model == "google/vit-base-patch16-224"
    assert "local copy of [google/vit-base-patch16-224]" in card.text


def test_card_for_a_local_base_omits_base_model_and_asks_for_a_license(hub_server, tmp_path):
    d = local_model(tmp_path, name_or_path=str(tmp_path / "somewhere"))
    ctx = make_ctx(tmp_path, hf_model_repo="acme-org/local-vit", model_facts={})
    ctx.config.model_id = str(d)
    ctx.config.dataset_id = None
    ctx.config.local_dataset_path = str(tmp_path / "images")
    with pytest.raises(NeedsUser, match="names no license"):
        call(hub.hf_push, ctx)
    assert not any("/commit/" in p for p in hub_server.paths())
    ctx.config.license = "MIT"
    call(hub.hf_push, ctx)
    card = load_card(hub_server, "acme-org/local-vit")
    assert card.data.base_model is None and card.data.datasets is None and card.data.license == "mit"
    assert "local folder (`my-vit`) that names no Hub model" in card.text and str(tmp_path) not in str(card)
    _, results = model_index_to_eval_results(card.data.to_dict()["model-index"])
    assert results[0].dataset_name == "a local folder dataset images" and results[0].dataset_type == "auto"
    assert card_mod.check_card(str(card)) == []


def test_unknown_license_becomes_other_with_a_name_and_link(tmp_path):
    ctx = make_ctx(tmp_path, model_facts={"license": "Llama-Community-Custom"})
    assert card_mod.license_fields(ctx.config, MODEL_ID) == {
        "license": "other", "license_name": "llama-community-custom", "license_link": f"{hub.endpoint()}/{MODEL_ID}"}


def test_check_card_catches_what_a_hub_user_would_hit():
    good = "---\nlicense: mit\nbase_model: a/b\npipeline_tag: image-classification\nlibrary_name: transformers\n" \
           "model-index:\n- name: m\n  results:\n  - task: {type: image-classification}\n    dataset: {name: d, type: d}\n" \
           "    metrics: [{type: accuracy, value: 0.9}]\n---\nbody\n"
    assert card_mod.check_card(good) == []
    assert card_mod.check_card(good.replace("base_model: a/b", "base_model: /home/me/model")) == ["base_model '/home/me/model' is not a Hub id"]
    assert card_mod.check_card(good.replace("license: mit", "license: other")) == ["license is 'other' without license_name"]
    assert "Invalid `model_index`" in card_mod.check_card(good.replace("task: {type: image-classification}", "task: 3"))[0]
    assert card_mod.check_card(good, ["config.yaml"], []) == ["required file 'config.yaml' is not pushed"]


@pytest.mark.parametrize("private", [True, False])
def test_hub_private_creates_the_repo_private(hub_server, tmp_path, private):
    """--private (hub_private) reaches create_repo: the Hub stand-in records the visibility huggingface_hub sends."""
    from huggingface_hub import HfApi

    ctx = make_ctx(tmp_path, hub_private=private)
    out = call(hub.hf_push, ctx)
    create = [r for r in hub_server.requests if r.path.endswith("/repos/create")]
    body = json.loads(create[0].body)  # huggingface_hub >= 2 sends "visibility", 1.x (the floor) sends "private"
    assert len(create) == 1 and (body.get("visibility") == "private" or body.get("private") is True) is private
    assert HfApi(endpoint=hub_server.url, token=FAKE_TOKEN).model_info(out["repo_id"]).private is private
