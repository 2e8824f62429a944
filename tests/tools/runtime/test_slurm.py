"""The slurm platform's pure parts on recorded outputs: sbatch scripts, the N-node torchrun launch, job states, the audit."""

import os
import stat
import subprocess
from pathlib import Path

import pytest

from tao_finetune.agent.cli import build_parser, config_from_args
from tao_finetune.agent.config import RunConfig, SlurmSpec
from tao_finetune.tools.base import ToolError
from tao_finetune.tools.runtime import slurm

DATA = Path(__file__).parent / "data" / "slurm"


def read(name: str) -> str:
    return (DATA / name).read_text()


def cfg(tmp_path, **kw) -> RunConfig:
    base = dict(model_id="acme/tiny", dataset_id="acme/data", output_dir=str(tmp_path / "run"), platform="slurm")
    return RunConfig(**{**base, **kw})


def render(c: RunConfig, kind="train", argv=("python", "train.py"), mode="venv", image=None):
    python = "/opt/venv/bin/python" if mode == "venv" else "python"  # what SlurmPlatform._python gives
    return slurm.render_script(c, kind, list(argv), c.out, mode=mode, python=python,
                               env={"HF_HUB_OFFLINE": "1", "TAO_PROJECT_DIR": str(c.out)}, hf_home="/cache/hf", image=image)


def test_set_slurm_keys_are_validated_and_recorded_as_user_input(tmp_path):
    args = build_parser().parse_args(["run", "--model-id", "acme/tiny", "--dataset-id", "acme/data", "--output-dir", str(tmp_path / "r"),
                                      "--platform", "slurm", "--set", "slurm.nodes=4", "--set", "slurm.gpus_per_node=8",
                                      "--set", "slurm.time=12:00:00", "--set", "slurm.partition=gpu", "--set", "slurm.mem=500G"])
    c, keys = config_from_args(args)
    assert c.platform == "slurm" and c.slurm.nodes == 4 and c.slurm.gpus_per_node == 8
    assert c.slurm.time == "12:00:00"  # not YAML's base-60 integer 43200
    assert {"slurm.nodes", "slurm.gpus_per_node", "slurm.time", "slurm.partition", "slurm.mem", "platform"} <= set(keys)
    with pytest.raises(Exception, match="slurm.nodes"):
        RunConfig(model_id="x", slurm={"nodes": 0})
    with pytest.raises(Exception, match="slurm.gpu"):
        RunConfig(model_id="x", slurm={"gpu": 1})


def test_the_training_script_requests_what_config_yaml_says(tmp_path):
    c = cfg(tmp_path, gpu_count=8, slurm=SlurmSpec(partition="gpu", account="proj1", qos="high", constraint="h100",
                                                    cpus_per_task=96, mem="500G", time="1-00:00:00", signal_s=300))
    s = render(c)
    lines = s.text.splitlines()
    for want in ("#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1", "#SBATCH --gres=gpu:8", "#SBATCH --partition=gpu",
                 "#SBATCH --account=proj1", "#SBATCH --qos=high", "#SBATCH --constraint=h100", "#SBATCH --cpus-per-task=96",
                 "#SBATCH --mem=500G", "#SBATCH --time=1-00:00:00", "#SBATCH --requeue", "#SBATCH --signal=B:USR1@300",
                 f"#SBATCH --output={c.out}/logs/train.log", "#SBATCH --open-mode=append", f"#SBATCH --chdir={c.out}"):
        assert want in lines, want
    assert "trap tao_requeue USR1" in s.text and 'scontrol requeue "$SLURM_JOB_ID"' in s.text
    assert "--standalone --nproc_per_node=8 train.py" in s.text
    assert s.nodes == 1 and s.gpus == 8 and s.credentials == []


def test_other_jobs_use_one_node_one_gpu_no_requeue_and_the_job_time(tmp_path):
    c = cfg(tmp_path, gpu_count=8, slurm=SlurmSpec(nodes=4, job_time="00:30:00"))
    s = render(c, "eval", ("python", "run_eval.py"))
    assert "#SBATCH --nodes=1" in s.text and "#SBATCH --gres=gpu:1" in s.text and "#SBATCH --time=00:30:00" in s.text
    assert "#SBATCH --no-requeue" in s.text and "--signal" not in s.text and "torch.distributed.run" not in s.text
    assert "srun --nodes=1 --ntasks-per-node=1 --kill-on-bad-exit=1 /opt/venv/bin/python run_eval.py" in s.text
    prep = render(c, "prepare", ("python", "prepare_data.py"))
    assert "--gres" not in prep.text and "HF_HUB_OFFLINE" in prep.text  # the env given is written as is


def test_cpu_runs_request_no_gpu(tmp_path):
    s = render(cfg(tmp_path, gpu_count=0, allow_cpu=True))
    assert "--gres" not in s.text and "srun --nodes=1 --ntasks-per-node=1 --kill-on-bad-exit=1 /opt/venv/bin/python train.py &" in s.text


def test_each_job_names_the_credentials_of_the_shared_policy(tmp_path):
    assert render(cfg(tmp_path), "prepare", ("python", "prepare_data.py")).credentials == ["HF_TOKEN"]
    assert render(cfg(tmp_path), "eval", ("python", "run_eval.py")).credentials == []
    assert render(cfg(tmp_path, wandb=True)).credentials == ["WANDB_API_KEY", "WANDB_PROJECT"]


def test_container_modes(tmp_path):
    c = cfg(tmp_path, gpu_count=1, dataset_id=None, local_dataset_path=str(tmp_path))
    py = render(c, mode="pyxis", image="nvcr.io/nvidia/pytorch:25.10-py3").text
    assert "--container-image=nvcr.io/nvidia/pytorch:25.10-py3" in py and f"--container-workdir={c.out}" in py
    assert f"{c.out}:{c.out}" in py and "/cache/hf:/cache/hf" in py and f"{tmp_path}:{tmp_path}" in py
    assert " python train.py" in py  # the image's python, not the host's
    ap = render(c, mode="apptainer", image="/images/pt.sif").text
    assert "apptainer exec --nv --bind" in ap and f"--pwd {c.out} /images/pt.sif python train.py" in ap
    with pytest.raises(ToolError, match="pyxis needs a container image"):
        render(c, mode="pyxis", image=None)


@pytest.mark.parametrize("argv,want", [
    (["python", "train.py"], ["train.py"]),
    (["torchrun", "--standalone", "--nproc_per_node=4", "train.py", "--x"], ["train.py", "--x"]),
    (["python", "-m", "pytest", "-q", "tests/"], ["-m", "pytest", "-q", "tests/"]),
])
def test_script_argv(argv, want):
    assert slurm.script_argv(argv) == want


def _fake_bin(tmp_path: Path, nodes: list[str]) -> Path:
    """scontrol prints the node list (recorded format: one host per line); srun runs its command once per node."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/bash\n[ \"$1 $2\" = 'show hostnames' ] || exit 1\nprintf '%s\\n' " +
                                      " ".join(nodes) + "\n")
    (bin_dir / "srun").write_text(
        "#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"
        f"for i in $(seq 0 $(( {len(nodes)} - 1 ))); do SLURM_NODEID=$i \"$@\"; done\n")
    (bin_dir / "python").write_text("#!/bin/bash\necho \"node=$SLURM_NODEID argv=$*\"\n")
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)
    return bin_dir


@pytest.mark.parametrize("n", [2, 4, 16])
def test_multi_node_launch_runs_torchrun_with_a_c10d_rendezvous_on_the_first_host(tmp_path, n):
    nodes = [f"gpu{i:03d}" for i in range(7, 7 + n)]
    bin_dir = _fake_bin(tmp_path, nodes)
    lines = slurm.launch_lines(script=["train.py", "--smoke"], python="python", nodes=n, gpus=8, port=29511, srun_opts=[], prefix=[])
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": f"gpu[007-{6 + n:03d}]",
           "SLURM_NNODES": str(n), "SLURM_JOB_ID": "4242"}
    out = subprocess.run(["bash", "-c", "set -eu\n" + "\n".join(lines)], capture_output=True, text=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    runs = [ln for ln in out.stdout.splitlines() if ln.startswith("node=")]
    assert len(runs) == n
    for i, ln in enumerate(runs):
        assert ln == (f"node={i} argv=-m torch.distributed.run --nnodes={n} --node_rank={i} --nproc_per_node=8 --rdzv_id=4242 "
                      f"--rdzv_backend=c10d --rdzv_endpoint=gpu007:29511 train.py --smoke")
    assert f"rendezvous c10d on gpu007:29511 for {n} nodes" in out.stdout


def test_multi_node_training_script_asks_for_n_nodes(tmp_path):
    s = render(cfg(tmp_path, gpu_count=8, slurm=SlurmSpec(nodes=4)), argv=("torchrun", "--standalone", "--nproc_per_node=8", "train.py"))
    assert "#SBATCH --nodes=4" in s.text and "#SBATCH --gres=gpu:8" in s.text
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1' in s.text and "--rdzv_backend=c10d" in s.text


def test_job_states_from_recorded_scontrol_and_squeue():
    done = slurm.job_state_from_scontrol("4", read("scontrol_job_completed.txt"))
    assert (done.state, done.exit_code, done.active, done.restarts) == ("COMPLETED", 0, False, 0)
    rq = slurm.job_state_from_scontrol("5", read("scontrol_job_requeued_completed.txt"))
    assert rq.state == "COMPLETED" and rq.restarts == 1 and rq.time_limit == "00:01:00"
    failed = slurm.job_state_from_scontrol("15", read("scontrol_job_failed.txt"))
    assert failed.state == "FAILED" and failed.exit_code == 3 and failed.evidence() == ""
    held = slurm.job_state_from_scontrol("1", read("scontrol_job_pending_held.txt"))
    assert held.state == "PENDING" and held.reason == "JobHeldUser" and held.active and held.exit_code is None
    assert read("squeue_pending_held.txt").strip() == "PENDING|JobHeldUser"
    cancelled = slurm.job_state_from_scontrol("1", read("scontrol_job_cancelled.txt"))
    assert cancelled.state == "CANCELLED" and "cancelled outside this run" in cancelled.evidence()


@pytest.mark.parametrize("state,reason,needle,entry", [
    ("OUT_OF_MEMORY", "OutOfMemory", "OutOfMemoryError", "oom"),
    ("TIMEOUT", "TimeLimit", "SLURM_TIMEOUT", "slurm_timeout"),
    ("NODE_FAIL", "NodeDown", "SLURM_NODE_FAIL", "slurm_node_fail"),
])
def test_failure_states_map_to_playbook_evidence(state, reason, needle, entry):
    from tao_finetune.tools.jobs import consult_playbook

    line = read("scontrol_job_failed.txt").replace("JobState=FAILED Reason=NonZeroExitCode", f"JobState={state} Reason={reason}")
    js = slurm.job_state_from_scontrol("15", line)
    assert js.state == state and needle in js.evidence()
    assert consult_playbook("some log\n" + js.evidence())["id"] == entry


def test_sacct_allocation_line():
    text = "77|TIMEOUT|0:0|TimeLimit|00:01:00|gpu007\n77.batch|CANCELLED|0:15||\n"
    js = slurm.job_state_from_sacct("77", text)
    assert js.state == "TIMEOUT" and js.time_limit == "00:01:00" and js.source == "sacct"


def test_recorded_refusal_becomes_one_line_naming_the_resource():
    part = slurm.parse_sinfo(read("sinfo_ci_cpu_node.txt"))["debug"]
    msg = slurm.submit_error(read("sbatch_gpu_refused.txt"), SlurmSpec(gpus_per_node=1), 1, 1, part)
    assert "\n" not in msg and "gpus_per_node=1 but the nodes of partition 'debug' have 0 GPU(s)" in msg
    assert slurm.NO_CONFIG in msg
    msg = slurm.submit_error(read("sbatch_gpu_refused.txt"), SlurmSpec(mem="64G"), 1, 0, None)
    assert "mem=64G" in msg and "\n" not in msg
    other = slurm.submit_error("sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job submission failed: "
                               "Invalid partition name specified", SlurmSpec(partition="nope"), 1, 0)
    assert "\n" not in other and "Invalid partition name specified" in other and "partition=nope" in other


def test_sinfo_of_a_gpu_cluster():
    parts = slurm.parse_sinfo(read("sinfo_gpu_cluster.txt"))
    gpu = parts["gpu"]
    assert gpu["default"] and gpu["nodes"] == 32 and gpu["usable_nodes"] == 30 and gpu["gpus_per_node"] == 8
    assert gpu["gpu_type"] == "h100" and gpu["features"] == ["h100", "ib"] and gpu["states"]["drained"] == 2
    assert parts["a100"]["gpus_per_node"] == 4 and parts["a100"]["gpu_type"] == "a100"
    assert parts["cpu"]["gpus_per_node"] == 0 and parts["maint"]["usable_nodes"] == 0
    assert slurm.pick_partition(parts, None)["name"] == "gpu" and slurm.pick_partition(parts, "a100")["name"] == "a100"
    assert slurm.parse_gres_gpus("gpu:4") == (4, None) and slurm.parse_gres_gpus("(null)") == (0, None)


def _facts(sinfo: str, **kw) -> slurm.SlurmFacts:
    kw = {"srun_help": "", **kw}
    return slurm.SlurmFacts(sinfo=read(sinfo), ping="Slurmctld(primary) at ctl is UP\n", free_disk_gb=500.0, disk_path="/scratch", **kw)


def test_audit_of_a_gpu_partition_records_type_and_count(tmp_path):
    c = cfg(tmp_path, slurm=SlurmSpec(nodes=2))
    probe = "NVIDIA H100 80GB HBM3, 81559, 580.95.05\n"
    facts = _facts("sinfo_gpu_cluster.txt", gpu_probe=probe, srun_help="      --container-image=[USER@][REGISTRY#]IMAGE[:TAG]|PATH\n")
    items, record = slurm.assess_slurm(facts, c, {"HF_TOKEN": True})
    status = {i.name: i.status for i in items}
    assert all(v == "pass" for v in status.values()), items
    assert record["container"] == "pyxis" and record["gpu_type"] == "h100" and record["gpus_per_node"] == 8
    values = slurm.slurm_hardware_record(facts, record, c)
    assert values == {"gpu_count": 8, "gpu_name": "NVIDIA H100 80GB HBM3", "driver_major": 580, "vram_gb_per_gpu": 85.5}
    # no probe result: VRAM from the GPU type, driver unknown (0), a warning
    facts.gpu_probe, facts.gpu_probe_error = None, "srun: error: Unable to allocate resources: Invalid qos specification"
    items, record = slurm.assess_slurm(facts, c)
    assert {i.name: i.status for i in items}["driver"] == "warn"
    assert slurm.slurm_hardware_record(facts, record, c)["vram_gb_per_gpu"] == 80.0


def test_audit_fails_on_what_the_partition_cannot_give(tmp_path):
    facts = _facts("sinfo_gpu_cluster.txt")
    items, _ = slurm.assess_slurm(facts, cfg(tmp_path, slurm=SlurmSpec(partition="a100", gpus_per_node=8)))
    req = next(i for i in items if i.name == "request")
    assert req.status == "fail" and "gpus_per_node=8 but the nodes of 'a100' have 4" in req.detail
    items, _ = slurm.assess_slurm(facts, cfg(tmp_path, slurm=SlurmSpec(partition="maint")))
    assert next(i for i in items if i.name == "partition").status == "fail"
    items, _ = slurm.assess_slurm(facts, cfg(tmp_path, slurm=SlurmSpec(partition="nope")))
    assert items[-1].name == "partition" and "'a100', 'cpu', 'gpu', 'maint'" in items[-1].detail
    items, _ = slurm.assess_slurm(facts, cfg(tmp_path, slurm=SlurmSpec(container="apptainer")))
    assert next(i for i in items if i.name == "container").status == "fail"
    items, _ = slurm.assess_slurm(slurm.SlurmFacts(), cfg(tmp_path))
    assert [(i.name, i.status) for i in items] == [("slurm", "fail")]


def test_audit_of_the_ci_cpu_node(tmp_path):
    facts = _facts("sinfo_ci_cpu_node.txt")
    items, record = slurm.assess_slurm(facts, cfg(tmp_path))
    assert {i.name: i.status for i in items}["gpu"] == "fail"
    c = cfg(tmp_path, allow_cpu=True)
    items, record = slurm.assess_slurm(facts, c)
    assert all(i.status in ("pass", "warn") for i in items) and record["container"] == "venv"
    assert slurm.slurm_hardware_record(facts, record, c) == {"gpu_count": 0, "gpu_name": "cpu", "driver_major": 0, "vram_gb_per_gpu": 0.0}


def test_apptainer_is_detected_when_pyxis_is_absent():
    assert slurm.detect_container(slurm.SlurmFacts(srun_help="--container  Path to OCI bundle", apptainer="apptainer version 1.3.4")) == "apptainer"
    assert slurm.detect_container(slurm.SlurmFacts(srun_help="--container  Path to OCI bundle")) == "venv"


def test_mem_mb():
    assert slurm.mem_mb("64G") == 65536 and slurm.mem_mb("500M") == 500 and slurm.mem_mb("2048") == 2048 and slurm.mem_mb("x") == 0


def test_a_slow_controller_is_polled_again_not_taken_for_a_failure(tmp_path, monkeypatch):
    from tao_finetune.agent.context import RunContext
    from tao_finetune.agent.secrets import Credentials
    from tao_finetune.agent.session import SessionLog

    answers = [slurm.ControllerTimeout("squeue did not answer in 60s"), slurm.ControllerTimeout("again"),
               slurm.JobState("7", "COMPLETED", exit_code=0)]

    def fake_query(job_id):
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        return a

    monkeypatch.setattr(slurm, "query_job", fake_query)
    c = cfg(tmp_path)
    ctx = RunContext(c, SessionLog(c.out / "session.jsonl", Credentials({})), Credentials({}))
    seen = []
    plat = slurm.SlurmPlatform(echo=seen.append, poll_s=0.01)
    assert plat.wait(ctx, "eval", "7").state == "COMPLETED" and sum("retrying" in s for s in seen) == 2
    plat._save_record(ctx, "train", {"job_id": "8"})
    answers[:] = [slurm.ControllerTimeout("scontrol did not answer in 60s")]
    st = plat.status(ctx, "train")
    assert st["running"] and st["slurm_state"] == "UNKNOWN" and st["exit_code"] is None


def test_a_requeued_job_is_not_taken_for_an_ended_one_while_slurm_moves_it_back_to_pending(tmp_path, monkeypatch):
    """During a requeue the controller shows the job CANCELLED (restarts already 1) for a moment before PENDING; status
    asks again instead of reporting the training as failed (exit 1). A CI run met that moment."""
    from tao_finetune.agent.context import RunContext
    from tao_finetune.agent.secrets import Credentials
    from tao_finetune.agent.session import SessionLog

    answers = [slurm.JobState("9", "CANCELLED", exit_code=0, restarts=1), slurm.JobState("9", "CANCELLED", exit_code=0, restarts=1),
               slurm.JobState("9", "PENDING", reason="BeginTime", restarts=1)]
    monkeypatch.setattr(slurm, "query_job", lambda job_id: answers.pop(0))
    monkeypatch.setattr(slurm, "REQUEUE_SETTLE_S", 0.01)
    c = cfg(tmp_path)
    ctx = RunContext(c, SessionLog(c.out / "session.jsonl", Credentials({})), Credentials({}))
    plat = slurm.SlurmPlatform(echo=None, poll_s=0.01)
    plat._save_record(ctx, "train", {"job_id": "9"})
    st = plat.status(ctx, "train")
    assert st["running"] and st["exit_code"] is None and st["restarts"] == 1 and not answers
    # a job that stays ended after the settle time is ended (a cancel after its restart)
    answers[:] = [slurm.JobState("9", "CANCELLED", exit_code=0, restarts=1)] * (slurm.REQUEUE_SETTLE_TRIES + 1)
    st = plat.status(ctx, "train")
    assert not st["running"] and st["exit_code"] == 1
