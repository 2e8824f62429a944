"""DockerPlatform's runner (persistent=True): `python script.py` jobs share one long-lived container of the run's image
running tools/runtime/worker.py, against the real engine (CI starts it with .ci/docker-up.sh)."""
import json
import os
import time

import docker
import pytest
from job_contract import FAILING_JOB, KILLED_JOB, check_failed_job, check_killed_job
from test_docker import BASE_IMAGE, engine_or_skip, make_ctx

from tao_finetune.agent.secrets import Credentials
from tao_finetune.tools.runtime.docker import DockerPlatform, container_name

# a job that says which interpreter ran it: its PID and how many jobs this interpreter has run (a module-level counter)
JOB = """
import os, sys, time
from pathlib import Path
import counter
counter.CALLS.append(sys.argv[1])
print("pid", os.getpid(), "calls", len(counter.CALLS), "arg", sys.argv[1], "token", bool(os.environ.get("HF_TOKEN")), flush=True)
if sys.argv[1] == "sleep":
    time.sleep(120)
if sys.argv[1] == "trap":
    import signal
    def ckpt(signum, frame):
        Path("checkpoints").mkdir(exist_ok=True)
        Path("checkpoints", "step-1").write_text("saved on SIGTERM")
        print("checkpoint written", flush=True)
        sys.exit(75)
    signal.signal(signal.SIGTERM, ckpt)
    print("training", flush=True)
    time.sleep(120)
Path("reports").mkdir(exist_ok=True)
Path("reports", sys.argv[1] + ".txt").write_text("done")
"""


@pytest.fixture(scope="module")
def client():
    return engine_or_skip()


@pytest.fixture(scope="module")
def image(client, tmp_path_factory):
    """The run's image: the base image plus the project (no pip step, so the build takes seconds)."""
    root = tmp_path_factory.mktemp("runner") / "out"
    ctx = make_ctx(root)
    (root / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nWORKDIR /workspace\nCOPY . .\n")
    (root / "requirements.txt").write_text("pyyaml\n")
    rec = DockerPlatform(client, echo=None, persistent=False).build(ctx)
    assert rec["ok"], rec
    yield rec["image"]
    client.images.remove(rec["image"], force=True)


@pytest.fixture
def run(client, image, tmp_path):
    """A run dir whose image is the module's image (the tag is per run dir: re-tagged for this one)."""
    from tao_finetune.tools.runtime.docker import run_image

    ctx = make_ctx(tmp_path / "out")
    client.images.get(image).tag(run_image(ctx.config.short_name, ctx.run_dir))
    (ctx.run_dir / "job.py").write_text(JOB)
    (ctx.run_dir / "counter.py").write_text("CALLS = []\n")
    yield ctx
    for c in client.containers.list(all=True, filters={"label": f"tao-finetune.run={ctx.run_dir}"}):
        c.remove(force=True)
    client.images.remove(run_image(ctx.config.short_name, ctx.run_dir))


def pid(res) -> str:
    return res.log_tail.split("pid ")[1].split()[0]


def test_jobs_share_one_warm_runner_with_their_own_logs_and_exit_files(client, run):
    ctx = run
    platform = DockerPlatform(client, echo=None, persistent=True)
    a = platform.run(ctx, "smoke", ["python", "job.py", "a"])
    b = platform.run(ctx, "baseline", ["python", "job.py", "b"])
    assert a.exit_code == 0 and b.exit_code == 0, (a.log_tail, b.log_tail)
    assert pid(a) == pid(b) and "calls 2 arg b" in b.log_tail and "arg b" not in a.log_tail
    assert (ctx.run_dir / "logs" / "smoke.exit").read_text() == "0" and (ctx.run_dir / "reports" / "b.txt").is_file()
    runner = client.containers.get(container_name("runner", ctx.run_dir))
    assert runner.status == "running" and runner.labels["tao-finetune.kind"] == "runner"
    assert runner.attrs["HostConfig"]["NetworkMode"] == "none"  # the jobs' own container settings
    events = [json.loads(x) for x in (ctx.run_dir / ".tao" / "session.jsonl").read_text().splitlines()]
    jobs = [e for e in events if e.get("kind") == "container" and e.get("runner")]
    assert [e["job"] for e in jobs] == ["smoke", "baseline"] and all(e["name"] == runner.name for e in jobs)
    # a job whose container differs (prepare: the network and, here, HF_TOKEN) runs in its own container
    ctx.creds = Credentials({"HF_TOKEN": "hf_" + "Rk4" * 12})
    p = platform.run(ctx, "prepare", ["python", "job.py", "p"])
    assert p.exit_code == 0 and "calls 1" in p.log_tail and "token True" in p.log_tail  # a fresh interpreter
    assert client.containers.get(container_name("runner", ctx.run_dir)).id == runner.id  # the runner stayed
    c = platform.run(ctx, "eval", ["python", "job.py", "c"])
    assert pid(c) == pid(a) and "calls 3" in c.log_tail and "token False" in c.log_tail


def test_a_failed_or_killed_job_is_reported_like_on_every_platform_and_ends_the_runner(client, run):
    ctx = run
    (ctx.run_dir / "fail.py").write_text(FAILING_JOB)
    (ctx.run_dir / "killed.py").write_text(KILLED_JOB)
    platform = DockerPlatform(client, echo=None, persistent=True)
    runner_id = lambda: client.containers.get(container_name("runner", ctx.run_dir)).id  # noqa: E731
    first = platform.run(ctx, "smoke", ["python", "job.py", "a"])
    before = runner_id()
    assert first.exit_code == 0
    check_failed_job(ctx, platform.run(ctx, "eval", ["python", "fail.py"]), "eval")
    with pytest.raises(docker.errors.NotFound):  # the failed job ended its runner, which is removed
        runner_id()
    again = platform.run(ctx, "baseline", ["python", "job.py", "b"])  # a fresh runner: state after a failure is not trusted
    assert again.exit_code == 0 and "calls 1" in again.log_tail and runner_id() != before
    check_killed_job(platform.run(ctx, "infer", ["python", "killed.py"]), "infer")
    ok = platform.run(ctx, "smoke", ["python", "job.py", "c"])
    assert ok.exit_code == 0 and "calls 1" in ok.log_tail


def test_detached_training_in_the_runner_waits_stops_with_its_grace_and_reads_back_from_a_fresh_platform(client, run):
    ctx = run
    platform = DockerPlatform(client, echo=None, persistent=True, grace_s=5)
    platform.run(ctx, "smoke", ["python", "job.py", "a"])
    res = platform.run(ctx, "train", ["python", "job.py", "t"], detach=True)
    assert res.detached and res.handle == container_name("runner", ctx.run_dir)
    st = platform.wait(ctx, "train", timeout=60)
    assert st["running"] is False and st["exit_code"] == 0 and st["runner"] and "calls 2 arg t" in st["log_tail"]
    again = DockerPlatform(client, echo=None, persistent=True).status(ctx, "train")  # e.g. after an agent restart
    assert again["exit_code"] == 0 and "arg t" in again["log_tail"]
    platform.run(ctx, "train", ["python", "job.py", "trap"], detach=True)
    deadline = time.monotonic() + 30
    while "training" not in (ctx.run_dir / "logs" / "train.log").read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert platform.status(ctx, "train")["running"] is True
    busy = platform.run(ctx, "smoke", ["python", "job.py", "s"])  # the runner is busy training: its own container, no wait
    assert busy.exit_code == 0 and "calls 1 arg s" in busy.log_tail
    assert platform.status(ctx, "train")["running"] is True
    platform.stop(ctx, "train")
    st = platform.status(ctx, "train")
    assert st["running"] is False and st["exit_code"] == 75 and st["stopped"] is True and st["oom_killed"] is False
    assert (ctx.run_dir / "checkpoints" / "step-1").read_text() == "saved on SIGTERM"
    after = platform.run(ctx, "eval", ["python", "job.py", "e"])  # the next job gets a new runner
    assert after.exit_code == 0 and "calls 1" in after.log_tail


def test_a_blocking_job_in_the_runner_is_cut_at_the_runs_deadline(client, run):
    from tao_finetune.agent.errors import ExitCode, LimitReached

    ctx = run
    platform = DockerPlatform(client, echo=None, persistent=True, grace_s=1)
    platform.run(ctx, "smoke", ["python", "job.py", "a"])
    ctx.deadline = time.monotonic() + 3
    try:
        with pytest.raises(LimitReached, match=r"--max-hours\) while the eval job ran: the job was stopped") as err:
            platform.run(ctx, "eval", ["python", "job.py", "sleep"])
    finally:
        ctx.deadline = None
    assert err.value.code == ExitCode.LIMIT
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(container_name("runner", ctx.run_dir))


def test_a_training_in_its_own_container_ends_the_idle_runner_first(client, run):
    ctx = run
    platform = DockerPlatform(client, echo=None, persistent=True)
    assert platform.run(ctx, "smoke", ["python", "job.py", "a"]).exit_code == 0
    client.containers.get(container_name("runner", ctx.run_dir))
    res = platform.run(ctx, "train", ["python", "-c", "print('own container')"], detach=True)
    assert res.handle == container_name("train", ctx.run_dir)
    with pytest.raises(docker.errors.NotFound):  # the runner's GPU memory is the training's
        client.containers.get(container_name("runner", ctx.run_dir))
    st = platform.wait(ctx, "train", timeout=60)
    assert st["exit_code"] == 0 and "runner" not in st and "own container" in st["log_tail"]


def test_the_runner_starts_warming_after_a_build(client, tmp_path):
    ctx = make_ctx(tmp_path / "out")
    (ctx.run_dir / "Dockerfile").write_text(f"FROM {BASE_IMAGE}\nWORKDIR /workspace\nCOPY . .\n")
    (ctx.run_dir / "requirements.txt").write_text("pyyaml\n")
    platform = DockerPlatform(client, echo=None, persistent=True)
    rec: dict = {}
    try:
        rec = platform.build(ctx)
        assert rec["ok"] and rec["runner"] == "warming"
        runner = client.containers.get(container_name("runner", ctx.run_dir))
        deadline = time.monotonic() + 90
        while '"prewarm"' not in runner.logs().decode() and time.monotonic() < deadline:
            time.sleep(0.5)
        line = next(ln for ln in runner.logs().decode().splitlines() if '"prewarm"' in ln)
        assert json.loads(line)["prewarm"]["torch"]  # torch and transformers imported before the first job
        res = platform.run(ctx, "smoke", ["python", "-c", "pass"])  # not `python script.py`: its own container
        assert res.exit_code == 0
    finally:
        for c in client.containers.list(all=True, filters={"label": f"tao-finetune.run={ctx.run_dir}"}):
            c.remove(force=True)
        if rec.get("image"):
            client.images.remove(rec["image"], force=True)


def test_without_fifos_every_job_gets_its_own_container(client, run, monkeypatch):
    ctx = run

    def no_fifo(*_a, **_k):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(os, "mkfifo", no_fifo)
    platform = DockerPlatform(client, echo=None, persistent=True)
    res = platform.run(ctx, "smoke", ["python", "job.py", "a"])
    assert res.exit_code == 0 and not platform.persistent
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(container_name("runner", ctx.run_dir))
    notes = [json.loads(x) for x in (ctx.run_dir / ".tao" / "session.jsonl").read_text().splitlines()]
    assert any("no job runner" in e.get("text", "") for e in notes if e.get("kind") == "note")


def test_a_missing_gpu_runtime_is_named_when_the_runner_starts(client, run):
    from tao_finetune.tools.base import ToolError

    if "nvidia" in (client.info().get("Runtimes") or {}):
        pytest.skip("this daemon has a GPU runtime")
    ctx = run
    ctx.config.gpu_count = 1
    with pytest.raises(ToolError, match="no GPU runtime in Docker.*could not select device driver"):
        DockerPlatform(client, echo=None, persistent=True).run(ctx, "smoke", ["python", "job.py", "a"])


def test_the_runner_is_on_by_default_on_a_gpu_host_only(monkeypatch):
    import tao_finetune.tools.runtime.local as local

    monkeypatch.delenv("TAO_PERSISTENT_WORKER", raising=False)
    monkeypatch.setattr(local, "gpu_host", lambda: True)
    assert DockerPlatform(echo=None).persistent is True
    monkeypatch.setattr(local, "gpu_host", lambda: False)
    assert DockerPlatform(echo=None).persistent is False
    monkeypatch.setenv("TAO_PERSISTENT_WORKER", "1")
    assert DockerPlatform(echo=None).persistent is True
    monkeypatch.setenv("TAO_PERSISTENT_WORKER", "0")
    monkeypatch.setattr(local, "gpu_host", lambda: True)
    assert DockerPlatform(echo=None).persistent is False
    assert os.environ["TAO_PERSISTENT_WORKER"] == "0"
