"""The autopilot on recorded GPU hosts (nvidia-smi, nvcc, nvidia-ctk and docker info outputs of an H100 and an H200
box, replayed through TAO_HOST_FACTS): the GPU path of Steps 1-2 runs on a CPU machine, with no --set workaround."""

import json
from pathlib import Path

import pytest

from servers import step1_data as D
from tao_finetune.agent import gates
from tao_finetune.agent.cli import main
from tao_finetune.agent.config import load_config
from tao_finetune.agent.facts import HOST_FACTS_ENV, audit_of, load_host_facts
from tao_finetune.agent.state import RunState

HOSTS = Path(__file__).resolve().parent.parent / "tools" / "hosts"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-host")
    return {"model": D.save_vit(root / "vit"), "data": D.imagefolder(root / "data", per_class=20)}


def calls(run: Path) -> list[str]:
    return [e["name"] for e in map(json.loads, (run / "session.jsonl").read_text().splitlines()) if e["kind"] == "tool_call"]


@pytest.mark.parametrize(("host", "gpus", "gpu_name", "vram"), [("h100x2", 2, "NVIDIA H100 80GB HBM3", 85.5), ("h200", 1, "NVIDIA H200", 150.8)])
def test_steps_1_and_2_pass_on_a_recorded_gpu_host_with_docker(tmp_path, monkeypatch, inputs, host, gpus, gpu_name, vram):
    monkeypatch.setenv(HOST_FACTS_ENV, str(HOSTS / f"{host}.json"))
    monkeypatch.setenv("TAO_NGC_SUPPORT_MATRIX_URL", "http://127.0.0.1:9/support-matrix.html")  # offline: curated image table
    run = tmp_path / "run"
    code = main(["run", "--model-id", str(inputs["model"]), "--local-dataset-path", str(inputs["data"]), "--output-dir", str(run),
                 "--llm", "autopilot", "--platform", "docker", "--no-push-to-hub", "--yes", "--quiet", "--max-steps", "7"])
    assert code == 5  # the step limit, right after Step 2: no question asked on the way
    state = RunState.load(run)
    assert gates.first_unmet(run, state) == 3
    assert calls(run) == ["probe_model", "probe_dataset", "check_compat", "qualify", "audit_hardware", "select_image", "check_model_fit"]
    cfg = load_config(run / "config.yaml")
    assert (cfg.gpu_count, cfg.gpu_name, cfg.driver_major, cfg.vram_gb_per_gpu) == (gpus, gpu_name, 580, vram)
    assert cfg.ngc_image and cfg.ngc_image.startswith("nvcr.io/nvidia/pytorch:")
    fit = state.records["model_fit"]
    assert fit["fits"] is True and fit["bf16_gb"] == round(2 * cfg.model_facts.param_count / 1e9, 2) and "skipped" not in fit
    audit = audit_of(state.records)
    assert audit.passed and audit.replayed_from == str(HOSTS / f"{host}.json") and audit.host.cuda == "13.0"
    assert not any(k.startswith("model_facts") for k in cfg.user_set)


def test_all_six_gates_on_a_recorded_h200_host(tmp_path, monkeypatch, inputs):
    monkeypatch.setenv(HOST_FACTS_ENV, str(HOSTS / "h200.json"))
    run = tmp_path / "run"
    argv = ["run", "--model-id", str(inputs["model"]), "--local-dataset-path", str(inputs["data"]), "--output-dir", str(run),
            "--llm", "autopilot", "--platform", "local", "--no-push-to-hub", "--n-epochs", "1", "--yes", "--quiet"]
    code = main(argv)
    if code == 3:  # one epoch of a 10k-parameter ViT may not learn: gate 5 asks, and the answer keeps the model
        assert "did not clearly learn" in (RunState.load(run).pending_question or "")
        code = main([*argv, "--answer", "accept"])
    assert code == 0
    state = RunState.load(run)
    assert gates.first_unmet(run, state) is None
    cfg = load_config(run / "config.yaml")
    assert cfg.gpu_name == "NVIDIA H200" and state.records["model_fit"]["fits"] is True and not cfg.allow_cpu


def test_recorded_host_files_are_valid_and_a_bad_one_is_one_line(tmp_path, monkeypatch, capsys):
    for f in HOSTS.glob("*.json"):
        assert load_host_facts(f).smi_query
    bad = tmp_path / "host.json"
    bad.write_text(json.dumps({"smi_query": 3, "gpus": []}))
    monkeypatch.setenv(HOST_FACTS_ENV, str(bad))
    assert main(["doctor", "--platform", "local"]) == 2
    assert "host facts file" in capsys.readouterr().err
