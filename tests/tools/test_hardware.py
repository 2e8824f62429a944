import argparse
import json
import shutil

import pytest

from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools import hardware as hw
from tao_finetune.tools.base import NeedsUser

H100_QUERY = "NVIDIA H100 80GB HBM3, 81559, 580.95.05\nNVIDIA H100 80GB HBM3, 81559, 580.95.05\n"
BANNER_580 = """+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 580.95.05              Driver Version: 580.95.05      CUDA Version: 13.0     |
+-----------------------------------------+------------------------+----------------------+
"""
BANNER_535 = """| NVIDIA-SMI 535.183.01             Driver Version: 535.183.01   CUDA Version: 12.2     |"""
NVCC_13 = "nvcc: NVIDIA (R) Cuda compiler driver\nCuda compilation tools, release 13.0, V13.0.88\n"
CTK_119 = "NVIDIA Container Toolkit CLI version 1.19.0\ncommit: 4c0c1d2\n"
INFO_NVIDIA = {"ServerVersion": "28.5.1", "Runtimes": {"nvidia": {"path": "nvidia-container-runtime"}, "runc": {"path": "runc"}}}
INFO_PLAIN = {"ServerVersion": "28.5.1", "Runtimes": {"runc": {"path": "runc"}}, "DefaultRuntime": "runc"}
NO_DRIVER = 'could not select device driver "" with capabilities: [[gpu]]'


def good_host(**over):
    facts = hw.HostFacts(
        docker_version="28.5.1",
        docker_info=INFO_NVIDIA,
        smi_query=H100_QUERY,
        smi_banner=BANNER_580,
        nvcc_output=NVCC_13,
        ctk_output=CTK_119,
        gpu_smoke=(True, "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-1)"),
        free_disk_gb=800.0,
        disk_path="/var/lib/docker",
    )
    for k, v in over.items():
        setattr(facts, k, v)
    return facts


def by_name(items):
    return {i.name: i for i in items}


def test_good_host_passes_and_records_hardware():
    facts = good_host()
    items = hw.assess(facts)
    assert hw.passed(items)
    assert {i.status for i in items} == {"pass"}
    assert hw.hardware_record(facts, allow_cpu=False) == {
        "gpu_count": 2, "gpu_name": "NVIDIA H100 80GB HBM3", "driver_major": 580, "vram_gb_per_gpu": 85.5,
    }
    assert hw.host_summary(facts).cuda == "13.0"
    assert hw.host_summary(facts).container_toolkit == "1.19.0"


def test_old_driver_fails_with_install_steps():
    facts = good_host(
        smi_query="NVIDIA A100-SXM4-40GB, 40960, 535.183.01\n", smi_banner=BANNER_535
    )
    items = by_name(hw.assess(facts))
    assert items["driver"].status == "fail"
    assert "535.183.01" in items["driver"].detail and "580" in items["driver"].detail
    assert "nvidia-driver-580" in items["driver"].fix
    assert items["cuda"].status == "fail"
    assert hw.driver_major(facts) == 535
    assert not hw.passed(list(items.values()))
    question = hw.failure_question(list(items.values()))
    assert "nothing was installed" in question and "nvidia-driver-580" in question


def test_newer_driver_branch_is_fine():
    facts = good_host(smi_query="NVIDIA B200, 183359, 590.10.02\n", smi_banner="Driver Version: 590.10.02 CUDA Version: 13.1")
    items = by_name(hw.assess(facts))
    assert items["driver"].status == "pass" and items["cuda"].status == "pass"


def test_no_container_toolkit_fails_and_smoke_error_names_the_runtime_fix():
    facts = good_host(ctk_output=None, docker_info=INFO_PLAIN, gpu_smoke=(False, f"500 Server Error: {NO_DRIVER}"))
    items = by_name(hw.assess(facts))
    assert items["container_toolkit"].status == "fail"
    assert "nvidia-container-toolkit=1.19.0-1" in items["container_toolkit"].fix
    assert items["gpu_runtime"].status == "warn"
    assert items["gpu_smoke"].status == "fail"
    assert "could not select device driver" in items["gpu_smoke"].detail
    assert items["gpu_smoke"].fix == hw.RUNTIME_FIX
    assert not hw.passed(list(items.values()))


def test_unavailable_smoke_image_only_warns():
    items = by_name(hw.assess(good_host(gpu_smoke=(None, "image 'ubuntu:24.04' not available: pull access denied"))))
    assert items["gpu_smoke"].status == "warn" and "--smoke-image" in items["gpu_smoke"].fix
    assert hw.passed(list(items.values()))


def test_old_container_toolkit_fails():
    items = by_name(hw.assess(good_host(ctk_output="NVIDIA Container Toolkit CLI version 1.14.3\n")))
    assert items["container_toolkit"].status == "fail"
    assert "1.14.3" in items["container_toolkit"].detail


def test_cdi_counts_as_gpu_runtime():
    info = {"ServerVersion": "28.5.1", "Runtimes": {"runc": {}}, "DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=all"}]}
    assert hw.gpu_runtime(info) == "CDI"
    assert hw.gpu_runtime(INFO_PLAIN) is None


def test_no_gpu_fails_unless_allow_cpu():
    facts = good_host(smi_query=None, smi_banner=None, ctk_output=None, gpu_smoke=None, nvcc_output=None)
    items = by_name(hw.assess(facts))
    assert items["gpu"].status == "fail"
    assert "--allow-cpu" in items["gpu"].fix
    assert items["container_toolkit"].status == "skip"
    assert hw.hardware_record(facts, allow_cpu=False) == {}

    cpu_items = hw.assess(facts, allow_cpu=True)
    assert hw.passed(cpu_items)
    assert by_name(cpu_items)["gpu"].status == "warn"
    assert hw.hardware_record(facts, allow_cpu=True) == {
        "gpu_count": 0, "gpu_name": "cpu", "driver_major": 0, "vram_gb_per_gpu": 0.0,
    }


def test_daemon_down_fails_on_docker_and_is_skipped_on_local():
    facts = good_host(docker_version=None, docker_error="Error while fetching server API version", docker_info={})
    assert by_name(hw.assess(facts))["docker"].status == "fail"
    local = by_name(hw.assess(facts, platform="local"))
    assert local["docker"].status == "skip"
    assert local["container_toolkit"].status == "skip"
    assert hw.passed(list(local.values()))


def test_low_disk_warns_and_threshold_is_configurable(monkeypatch):
    facts = good_host(free_disk_gb=40.0)
    assert by_name(hw.assess(facts))["disk"].status == "warn"
    monkeypatch.setenv("MIN_DISK_GB", "20")
    assert by_name(hw.assess(facts, min_disk_gb=hw.min_disk_gb()))["disk"].status == "pass"
    monkeypatch.setenv("MIN_DISK_GB", "lots")
    assert hw.min_disk_gb() == hw.DEFAULT_MIN_DISK_GB


def test_only_needed_credentials_are_checked():
    assert hw.needed_credentials(push_to_hub=False, gated=False, wandb=False) == []
    assert hw.needed_credentials(push_to_hub=True, gated=False, wandb=False) == ["HF_TOKEN"]
    assert hw.needed_credentials(push_to_hub=False, gated=True, wandb=True) == ["HF_TOKEN", "WANDB_API_KEY"]
    items = by_name(hw.assess(good_host(), credentials={"HF_TOKEN": False}))
    assert items["credential HF_TOKEN"].status == "fail"
    assert "~/.config/tao/.env" in items["credential HF_TOKEN"].fix


def test_parsers_tolerate_noise():
    assert hw.parse_gpus("No devices were found\n") == []
    assert hw.parse_gpus(" Tesla T4 , 15360 , 550.54.15 ") == [hw.GPU("Tesla T4", 15360, "550.54.15")]
    assert hw.ctk_version(hw.HostFacts(ctk_output="garbage")) is None
    assert hw.nvcc_cuda(hw.HostFacts(nvcc_output=NVCC_13)) == (13, 0)


def make_ctx(tmp_path, creds=None, **cfg):
    config = RunConfig(model_id="acme/vit-tiny", output_dir=str(tmp_path / "out"), **cfg)
    creds = creds or Credentials({})
    return RunContext(config=config, session=SessionLog(tmp_path / "session.jsonl", creds), creds=creds)


needs_gpu_less_host = pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this test expects a host without GPU")


@needs_gpu_less_host
def test_audit_tool_on_this_host_with_allow_cpu(tmp_path):
    ctx = make_ctx(tmp_path, platform="local", allow_cpu=True, push_to_hub=False)
    out = hw.audit_hardware(ctx, hw.NoArgs())
    assert out["passed"] is True
    cfg = ctx.config
    assert (cfg.gpu_count, cfg.gpu_name, cfg.driver_major, cfg.vram_gb_per_gpu) == (0, "cpu", 0, 0.0)
    saved = json.loads((cfg.out / ".tao" / "state.json").read_text())
    assert saved["records"]["audit"]["passed"] is True
    assert any(i["name"] == "gpu" and i["status"] == "warn" for i in saved["records"]["audit"]["items"])


@needs_gpu_less_host
def test_audit_tool_without_gpu_asks_the_user(tmp_path):
    ctx = make_ctx(tmp_path, platform="local", push_to_hub=True)
    with pytest.raises(NeedsUser) as exc:
        hw.audit_hardware(ctx, hw.NoArgs())
    assert "no NVIDIA GPU" in exc.value.question
    assert "HF_TOKEN" in exc.value.question
    assert ctx.state.records["audit"]["passed"] is False
    assert ctx.config.gpu_count is None


@needs_gpu_less_host
def test_doctor_exit_codes_and_lines(capsys, tmp_path):
    parser = argparse.ArgumentParser()
    hw.add_doctor_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["doctor", "--platform", "local"])
    assert args.func(args) == hw.DOCTOR_EXIT_FAIL
    out = capsys.readouterr().out
    assert "fail gpu" in out and "FAIL" in out

    args = parser.parse_args(["doctor", "--platform", "local", "--allow-cpu", "--json"])
    assert hw.doctor_command(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["passed"] is True

    cfg = tmp_path / "config.yaml"
    cfg.write_text("model_id: acme/vit-tiny\nwandb: true\npush_to_hub: false\nallow_cpu: true\n")
    args = parser.parse_args(["doctor", "--platform", "local", "--config", str(cfg), "--json"])
    rc = hw.doctor_command(args)
    names = {i["name"] for i in json.loads(capsys.readouterr().out)["items"]}
    assert "credential WANDB_API_KEY" in names and "credential HF_TOKEN" not in names
    assert rc in (0, hw.DOCTOR_EXIT_FAIL)


def test_doctor_bad_input_is_one_line_and_json_stays_one_object(capsys, tmp_path, monkeypatch):
    """A bad --config or TAO_HOST_FACTS file (its path even holding rich markup): one line, exit 2; --json: one object."""
    from tao_finetune.agent.cli import main

    from tao_finetune.agent.facts import HOST_FACTS_ENV

    bad_cfg, odd = tmp_path / "config.yaml", tmp_path / "[" / "bold]facts.json"  # the path reads '.../[/bold]facts.json'
    bad_cfg.write_text("model_id: [\n")
    odd.parent.mkdir()
    odd.write_text("{garbage")
    cases = [(["doctor", "--platform", "local", "--config", str(bad_cfg)], {}, "not valid YAML"),
             (["doctor", "--platform", "local"], {HOST_FACTS_ENV: str(odd)}, "is not JSON")]
    for argv, env, needle in cases:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert needle in err and len(err.strip().splitlines()) == 1 and "internal error" not in err, err
        assert main([*argv, "--json"]) == 2
        out, err = capsys.readouterr()
        data = json.loads(out)
        assert data["exit_code"] == 2 and needle in data["error"] and data["passed"] is False


def test_doctor_lines_print_host_text_as_text(capsys, tmp_path, monkeypatch):
    """The disk line names the working folder: '[/bold]' in it was read as rich markup and crashed doctor."""
    from tao_finetune.agent.cli import main

    cwd = tmp_path / "[" / "bold]work"  # the path reads '.../[/bold]work'
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    assert main(["doctor", "--platform", "local", "--allow-cpu"]) == 0
    out, err = capsys.readouterr()
    assert "[/bold]work" in out and "internal error" not in err, out + err


def test_gpu_smoke_on_a_daemon_without_gpu_runtime():
    docker = pytest.importorskip("docker")
    try:
        client = docker.from_env(timeout=10)
        client.images.get("tao-base:bookworm")
    except docker.errors.DockerException:
        pytest.skip("no Docker engine with tao-base:bookworm (start it with .ci/docker-up.sh)")
    if "nvidia" in (client.info().get("Runtimes") or {}):
        pytest.skip("this daemon has a GPU runtime")
    ok, detail = hw.gpu_smoke(client, "tao-base:bookworm")
    assert ok is False and "could not select device driver" in detail
    item = by_name(hw.assess(good_host(gpu_smoke=(ok, detail))))["gpu_smoke"]
    assert item.status == "fail" and item.fix == hw.RUNTIME_FIX
