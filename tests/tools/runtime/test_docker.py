"""DockerPlatform against the real engine (CI starts it with .ci/docker-up.sh); skipped when no daemon answers."""

import json
import os
import textwrap
import uuid

import docker
import pytest

from job_contract import FAILING_JOB, KILLED_JOB, check_failed_job, check_killed_job

from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools.base import ToolError
from tao_finetune.tools.runtime.docker import (
    DockerPlatform,
    container_name,
    default_shm_size,
    image_tag,
    run_image,
    multi_gpu_argv,
    network_mode,
)

BASE_IMAGE = "tao-base-torch:cpu"
TOKEN = "hf_" + "Zq7" * 12

JOB = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    import yaml

    mode = sys.argv[1]
    cfg = yaml.safe_load(Path("config.yaml").read_text())
    print("cwd", os.getcwd(), "model", cfg["model_id"], flush=True)
    if mode == "net":
        print("interfaces", sorted(os.listdir("/sys/class/net")), flush=True)
    elif mode == "fail":
        print("about to fail: bad column 'img'", flush=True)
        sys.exit(3)
    elif mode == "oom":
        blocks = []
        for _ in range(64):
            blocks.append(bytearray(16 * 1024 * 1024))
            for i in range(0, len(blocks[-1]), 4096):
                blocks[-1][i] = 1
        print("survived", flush=True)
    elif mode == "creds":
        tok = os.environ.get("HF_TOKEN", "")
        print("HF_TOKEN present:", bool(tok), "offline:", os.environ.get("HF_HUB_OFFLINE"), flush=True)
        print("leaked value:", tok, flush=True)
        print("wandb:", os.environ.get("WANDB_MODE"), "compat:", os.environ.get("TAO_COMPAT_FLAG"), flush=True)
    elif mode == "ls":
        for path in sys.argv[2:]:
            print("ls", path, sorted(os.listdir(path)), flush=True)
    elif mode == "sleep":
        print("sleeping", flush=True)
        time.sleep(120)
    Path("reports").mkdir(exist_ok=True)
    Path("reports", mode + ".txt").write_text("done")
''')

TRAIN = textwrap.dedent('''
    import json, torch
    from pathlib import Path
    torch.manual_seed(0)
    x = torch.randn(256, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(60):
        loss = torch.nn.functional.mse_loss(model(x).squeeze(-1), y)
        opt.zero_grad(); loss.backward(); opt.step()
        if step % 10 == 0:
            print(json.dumps({"step": step, "loss": round(loss.item(), 4)}), flush=True)
    out = Path("checkpoints/final"); out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "model.pt")
    print("final loss", round(loss.item(), 5), flush=True)
''')

DOCKERFILE = f"""FROM {BASE_IMAGE}
WORKDIR /workspace
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
"""


def engine_or_skip():
    """The engine, or a skip (a failure when TAO_REQUIRE_DOCKER=1, as in CI)."""
    give_up = pytest.fail if os.environ.get("TAO_REQUIRE_DOCKER") == "1" else pytest.skip
    try:
        client = docker.from_env(timeout=10)
        client.ping()
    except docker.errors.DockerException as err:
        give_up(f"Docker daemon not reachable ({str(err)[:80]}); start it with .ci/docker-up.sh")
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        give_up(f"base image {BASE_IMAGE!r} missing; build it with .ci/docker-up.sh")
    return client


def make_ctx(root, model_id="acme/tao-docker-test", creds=None, **cfg):
    creds = creds or Credentials({})
    config = RunConfig(model_id=model_id, output_dir=str(root), push_to_hub=False, gpu_count=0, **cfg)
    root.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(config=config, session=SessionLog(root / ".tao" / "session.jsonl", creds), creds=creds)
    ctx.save()
    return ctx


def write_project(root, dockerfile=DOCKERFILE):
    (root / "Dockerfile").write_text(dockerfile)
    # the nonce defeats the layer cache, so every test session really runs pip
    (root / "requirements.txt").write_text(f"# {uuid.uuid4()}\ntorch==2.13.0\ntransformers\npyyaml\n")
    (root / "job.py").write_text(JOB)
    (root / "train.py").write_text(TRAIN)


@pytest.fixture(scope="module")
def client():
    return engine_or_skip()


@pytest.fixture(scope="module")
def built(client, tmp_path_factory):
    root = tmp_path_factory.mktemp("project") / "out"
    ctx = make_ctx(root)
    write_project(root)
    (root / "checkpoints").mkdir()
    (root / "checkpoints" / "huge.safetensors").write_bytes(b"0" * 1024)
    record = DockerPlatform(client, echo=None).build(ctx)
    yield ctx, record
    for c in client.containers.list(all=True, filters={"label": f"tao-finetune.run={ctx.run_dir}"}):
        c.remove(force=True)
    client.images.remove(record["image"], force=True)


def test_build_streams_log_and_tags_image(client, built):
    ctx, record = built
    assert record["ok"] is True and record["image"] == run_image("tao-docker-test", ctx.run_dir) and record["image"].startswith("run-tao-docker-test:")
    log = (ctx.run_dir / "logs" / "build.log").read_text()
    assert "Step 1/5 : FROM tao-base-torch:cpu" in log
    assert "Requirement already satisfied: torch==2.13.0" in log  # nothing downloaded: the base has it
    files = client.containers.run(record["image"], ["ls", "/workspace"], network_mode="none", remove=True).decode()
    assert "job.py" in files and "checkpoints" not in files  # run outputs stay out of the build context


def test_requirements_are_pinned_from_pip_freeze_in_the_built_image(client, built):
    from tao_finetune.tools.project import pin_requirements

    ctx, record = built
    freeze, source = DockerPlatform(client, echo=None).freeze(ctx)
    assert source == f"image {record['image']}" and "torch==2.13.0" in freeze
    out = pin_requirements(ctx, freeze, source)
    req = (ctx.run_dir / "requirements.txt").read_text().splitlines()
    assert req[0].startswith(f"# pinned by tao-finetune from `pip freeze` in image {record['image']}")
    assert [r.split("==")[0] for r in req[2:]] == ["torch", "transformers", "pyyaml"] and all("==" in r for r in req[2:])
    assert out["unpinned"] == [] and "transformers==" in (ctx.run_dir / "requirements.lock.txt").read_text()


def test_failed_build_names_the_step_and_tail(client, tmp_path):
    root = tmp_path / "out"
    ctx = make_ctx(root, model_id="acme/tao-broken-build")
    write_project(root, dockerfile=f"FROM {BASE_IMAGE}\nRUN echo compiling && echo 'fatal: no such module' && exit 3\n")
    with pytest.raises(ToolError) as exc:
        DockerPlatform(client, echo=None).build(ctx)
    msg = str(exc.value)
    assert "failed at \"Step 2/2 : RUN echo compiling" in msg
    assert "fatal: no such module" in msg and "non-zero code: 3" in msg
    assert "fatal: no such module" in (root / "logs" / "build.log").read_text()


def test_run_job_in_project_dir_with_host_network_for_prepare(client, built):
    ctx, _ = built
    lines = []
    result = DockerPlatform(client, echo=lines.append).run(ctx, "prepare", ["python", "job.py", "net"])
    assert result.exit_code == 0 and not result.detached
    assert "cwd /workspace model acme/tao-docker-test" in result.log_path.read_text()
    assert (ctx.run_dir / "reports" / "net.txt").read_text() == "done"  # output dir mounted read-write
    assert any(line.startswith("[prepare] interfaces") for line in lines)
    assert "'lo'" in result.log_tail and len(result.log_tail.split("interfaces")[1].split(",")) > 1


def test_smoke_runs_without_network(client, built):
    ctx, _ = built
    result = DockerPlatform(client, echo=None).run(ctx, "smoke", ["python", "job.py", "net"])
    assert "interfaces ['lo']" in result.log_path.read_text()


def test_detached_training_logs_and_wait(client, built):
    ctx, _ = built
    platform = DockerPlatform(client, echo=None)
    result = platform.run(ctx, "train", ["python", "train.py"], detach=True)
    assert result.detached and result.handle == container_name("train", ctx.run_dir)
    attrs = client.containers.get(result.handle).attrs["HostConfig"]
    assert attrs["NetworkMode"] == "none" and attrs["Init"] is True
    assert attrs["ShmSize"] == default_shm_size() and attrs["IpcMode"] != "host"
    assert attrs["DeviceRequests"] in (None, [])
    status = platform.wait(ctx, "train", timeout=120)
    assert status["running"] is False and status["exit_code"] == 0 and status["oom_killed"] is False
    assert status["started"] is True and status["stopped"] is False
    log = (ctx.run_dir / "logs" / "train.log").read_text()
    losses = [json.loads(line)["loss"] for line in log.splitlines() if line.startswith("{")]
    assert len(losses) == 6 and losses[-1] < losses[0] / 10
    assert (ctx.run_dir / "checkpoints" / "final" / "model.pt").stat().st_size > 0
    assert "final loss" in status["log_tail"]
    # a fresh platform (e.g. after an agent restart) still reads the finished job
    again = DockerPlatform(client, echo=None).status(ctx, "train")
    assert again["exit_code"] == 0 and "final loss" in again["log_tail"]


def test_stop_detached_job(client, built):
    ctx, _ = built
    platform = DockerPlatform(client, echo=None)
    platform.run(ctx, "train", ["python", "job.py", "sleep"], detach=True)
    with pytest.raises(ToolError, match="already running"):
        platform.run(ctx, "train", ["python", "job.py", "sleep"], detach=True)
    assert platform.status(ctx, "train")["exit_code"] is None
    platform.stop(ctx, "train")
    status = platform.status(ctx, "train")
    assert status["running"] is False and status["exit_code"] != 0
    assert status["stopped"] is True and status["oom_killed"] is False
    platform.stop(ctx, "eval")  # nothing to stop is not an error


def test_two_runs_on_one_host_have_their_own_containers_and_stop_finds_each(client, built, tmp_path):
    ctx, record = built
    other = make_ctx(tmp_path / "other")  # another run dir of the same model: its own image tag (the same image here)
    (other.run_dir / "job.py").write_text(JOB)
    assert run_image(ctx.config.short_name, ctx.run_dir) != run_image(other.config.short_name, other.run_dir)
    other_tag = run_image(other.config.short_name, other.run_dir)
    client.images.get(record["image"]).tag(*other_tag.split(":"))
    assert container_name("train", ctx.run_dir) != container_name("train", other.run_dir)
    assert container_name("train", ctx.run_dir) == container_name("train", ctx.run_dir / ".." / ctx.run_dir.name)
    a, b = DockerPlatform(client, echo=None), DockerPlatform(client, echo=None)
    try:
        a.run(ctx, "train", ["python", "job.py", "sleep"], detach=True)
        b.run(other, "train", ["python", "job.py", "sleep"], detach=True)  # no collision with the first run's container
        assert a.status(ctx, "train")["running"] and b.status(other, "train")["running"]
        DockerPlatform(client, echo=None).stop(other, "train")  # `tao-finetune stop` is another process: a fresh platform
        assert not b.status(other, "train")["running"] and b.status(other, "train")["stopped"]
        assert a.status(ctx, "train")["running"]
        # a container of this run under another name (the global `hft_train` of earlier versions) is found by its labels
        a.stop(ctx, "train")
        client.containers.get(container_name("train", ctx.run_dir)).remove(force=True)
        legacy = client.containers.run(record["image"], ["sleep", "120"], name=f"hft_train_{uuid.uuid4().hex[:8]}",
                                       labels={"tao-finetune.run": str(ctx.run_dir), "tao-finetune.kind": "train"},
                                       detach=True, init=True, network_mode="none")
        assert a.status(ctx, "train")["running"] and a.status(ctx, "train")["name"] == legacy.name
        DockerPlatform(client, echo=None).stop(ctx, "train")
        legacy.reload()
        assert legacy.status == "exited"
    finally:
        for c in client.containers.list(all=True, filters={"label": f"tao-finetune.run={other.run_dir}"}):
            c.remove(force=True)
        client.images.remove(other_tag)


def test_nonzero_exit_returns_log_tail(client, built):
    ctx, _ = built
    res = DockerPlatform(client, echo=None).run(ctx, "eval", ["python", "job.py", "fail"])
    assert res.exit_code == 3 and "about to fail: bad column 'img'" in res.log_tail
    assert res.log_tail.rstrip().endswith("TAO_JOB_EXIT: the eval job exited with code 3")
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(container_name("eval", ctx.run_dir))


def test_a_failed_or_killed_job_is_reported_like_on_every_platform(client, built):
    ctx, _ = built
    (ctx.run_dir / "fail.py").write_text(FAILING_JOB)  # the output dir is mounted at /workspace
    (ctx.run_dir / "killed.py").write_text(KILLED_JOB)
    platform = DockerPlatform(client, echo=None)
    check_failed_job(ctx, platform.run(ctx, "eval", ["python", "fail.py"]), "eval")
    check_killed_job(platform.run(ctx, "infer", ["python", "killed.py"]), "infer")


def test_a_blocking_job_is_cut_at_the_runs_deadline(client, built):
    import time

    from tao_finetune.agent.errors import ExitCode, LimitReached

    ctx, _ = built
    ctx.deadline = time.monotonic() + 3
    try:
        with pytest.raises(LimitReached, match=r"--max-hours\) while the eval job ran: the job was stopped") as err:
            DockerPlatform(client, echo=None).run(ctx, "eval", ["python", "job.py", "sleep"])
    finally:
        ctx.deadline = None
    assert err.value.code == ExitCode.LIMIT
    assert "sleeping" in (ctx.run_dir / "logs" / "eval.log").read_text()
    with pytest.raises(docker.errors.NotFound):
        client.containers.get(container_name("eval", ctx.run_dir))


def test_oom_kill_is_reported(client, built):
    ctx, _ = built
    res = DockerPlatform(client, mem_limit="128m", echo=None).run(ctx, "smoke", ["python", "job.py", "oom"])
    assert res.exit_code == 137 and "survived" not in res.log_tail
    assert res.log_tail.rstrip().splitlines()[-1].startswith("OutOfMemoryError: the smoke job was killed (exit 137)")
    assert "halve the batch size" in res.log_tail


def test_missing_image(client, tmp_path):
    ctx = make_ctx(tmp_path / "out", model_id="acme/never-built-model")
    with pytest.raises(ToolError, match=r"run-never-built-model:[0-9a-f]{10}' not found: run docker_build first"):
        DockerPlatform(client, echo=None).run(ctx, "smoke", ["python", "train.py"])


def test_no_gpu_runtime_is_named(client, built):
    if "nvidia" in (client.info().get("Runtimes") or {}):
        pytest.skip("this daemon has a GPU runtime")
    ctx, _ = built
    ctx.config.gpu_count = 1
    try:
        with pytest.raises(ToolError, match="no GPU runtime in Docker.*could not select device driver"):
            DockerPlatform(client, echo=None).run(ctx, "smoke", ["python", "job.py", "net"])
    finally:
        ctx.config.gpu_count = 0


def test_credentials_pass_by_name_and_never_reach_logs(client, built):
    ctx, _ = built
    creds = Credentials({"HF_TOKEN": TOKEN})
    ctx2 = RunContext(config=ctx.config, session=SessionLog(ctx.run_dir / ".tao" / "creds.jsonl", creds), creds=creds)
    (ctx.run_dir / "meta").mkdir(exist_ok=True)
    (ctx.run_dir / "meta" / "runtime_env.json").write_text('{"TAO_COMPAT_FLAG": "eager"}')
    lines = []
    try:
        result = DockerPlatform(client, echo=lines.append).run(ctx2, "infer", ["python", "job.py", "creds"])
    finally:
        (ctx.run_dir / "meta" / "runtime_env.json").unlink()
    log = result.log_path.read_text()
    assert "HF_TOKEN present: False offline: 1" in log  # only prepare downloads, so only prepare gets HF_TOKEN
    assert "wandb: disabled compat: eager" in log
    result = DockerPlatform(client, echo=lines.append).run(ctx2, "prepare", ["python", "job.py", "creds"])
    log = result.log_path.read_text()
    assert "HF_TOKEN present: True offline: None" in log
    assert TOKEN not in log and TOKEN not in result.log_tail and TOKEN not in "\n".join(lines)
    assert "leaked value: [REDACTED]" in log
    assert TOKEN not in (ctx.run_dir / ".tao" / "creds.jsonl").read_text()


def test_local_model_and_data_are_mounted(client, built, tmp_path):
    ctx, record = built
    model = tmp_path / "tiny-model"
    data = tmp_path / "digits"
    (model).mkdir()
    (model / "config.json").write_text("{}")
    (data / "train").mkdir(parents=True)
    local = RunConfig(**{**ctx.config.model_dump(), "model_id": str(model), "local_dataset_path": str(data)})
    ctx2 = RunContext(config=local, session=ctx.session, creds=ctx.creds)
    repo, tag = run_image("tiny-model", ctx2.run_dir).split(":")
    client.images.get(record["image"]).tag(repo, tag)
    try:
        result = DockerPlatform(client, echo=None).run(ctx2, "prepare", ["python", "job.py", "ls", str(model), str(data)])
    finally:
        client.images.remove(f"{repo}:{tag}")
    log = result.log_path.read_text()
    assert f"ls {model} ['config.json']" in log and f"ls {data} ['train']" in log


def test_daemon_down(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-daemon.sock")
    ctx = make_ctx(tmp_path / "out")
    write_project(ctx.run_dir)
    platform = DockerPlatform(echo=None)
    with pytest.raises(ToolError, match="Docker daemon not reachable at 'unix://.*no-daemon.sock'"):
        platform.run(ctx, "smoke", ["python", "train.py"])
    with pytest.raises(ToolError, match="not reachable"):
        platform.build(ctx)


def test_helpers():
    assert image_tag("ViT_Base.Patch16") == "run-vit_base.patch16:latest"
    assert image_tag("Weird name!") == "run-weird-name:latest"
    assert multi_gpu_argv(["python", "train.py", "--smoke"], 4) == ["torchrun", "--nproc_per_node=4", "train.py", "--smoke"]
    assert multi_gpu_argv(["python", "train.py"], 1) == ["python", "train.py"]
    assert 1024**3 <= default_shm_size() <= 16 * 1024**3
    assert network_mode("prepare", wandb=False) == "host"
    assert network_mode("train", wandb=False) == "none" and network_mode("train", wandb=True) == "host"
    assert network_mode("eval", wandb=True) == "none"


def test_the_users_wandb_mode_reaches_the_training_container(tmp_path, monkeypatch):
    """With W&B on, WANDB_MODE=offline (or disabled) from the user's shell is passed to the job; with W&B off it is disabled."""
    key = "k" * 40
    on = make_ctx(tmp_path / "on", creds=Credentials({"WANDB_API_KEY": key}), wandb=True)
    off = make_ctx(tmp_path / "off", wandb=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    env = DockerPlatform(client=None, echo=None)._environment(on, "train")
    assert env["WANDB_MODE"] == "offline" and env["WANDB_API_KEY"] == key
    assert DockerPlatform(client=None, echo=None)._environment(off, "train")["WANDB_MODE"] == "disabled"
    monkeypatch.delenv("WANDB_MODE")
    assert "WANDB_MODE" not in DockerPlatform(client=None, echo=None)._environment(on, "train")
