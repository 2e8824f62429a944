"""Image builds: BuildKit through `docker buildx` where the CLI has it, else the legacy builder with a logged line.

The engine here (Docker 20.10, CLI without the buildx plugin) takes the fallback, against the real daemon. The BuildKit
branch is driven through a stand-in `docker` CLI first on PATH: it answers `buildx version`, records the argv and the
context tar it is sent, prints BuildKit's plain progress, and tags an existing image through the real CLI.
"""

import io
import json
import os
import shutil
import stat
import sys
import tarfile
import textwrap
import uuid

import pytest
from rich.console import Console

from tao_finetune.agent.console import LiveView
from tao_finetune.tools.base import ToolError
from tao_finetune.tools.runtime.docker import DockerPlatform, buildkit_unavailable, run_image

from test_docker import engine_or_skip, make_ctx

BASE = "tao-base:bookworm"

STAND_IN = textwrap.dedent('''\
    #!{python}
    import json, os, subprocess, sys
    args = sys.argv[1:]
    if args[:2] == ["buildx", "version"]:
        print("github.com/docker/buildx v0.0.0-stand-in")
        sys.exit(0)
    if args[:2] == ["buildx", "build"]:
        out = os.environ["STAND_IN_OUT"]
        open(os.path.join(out, "argv.json"), "w").write(json.dumps(args))
        open(os.path.join(out, "context.tar"), "wb").write(sys.stdin.buffer.read())
        fail = os.environ.get("STAND_IN_FAIL") == "1"
        print("#0 building with \\"default\\" instance using docker driver", flush=True)
        print("#1 [internal] load build definition from Dockerfile", flush=True)
        print("#4 [1/3] FROM {base}", flush=True)
        if os.environ.get("STAND_IN_SLOW") == "1":  # a RUN step that takes a minute
            open(os.path.join(out, "pid"), "w").write(str(os.getpid()))
            print("#5 [2/3] RUN sleep 60", flush=True)
            import time; time.sleep(60)
        print("#5 [2/3] RUN " + ("false" if fail else "echo hi"), flush=True)
        if fail:
            print("#5 ERROR: process \\"/bin/sh -c false\\" did not complete successfully: exit code: 1", flush=True)
            sys.exit(1)
        print("#6 [3/3] COPY . /workspace", flush=True)
        print("#7 exporting to image", flush=True)
        sys.exit(subprocess.call([os.environ["REAL_DOCKER"], "tag", "{base}", args[args.index("--tag") + 1]]))
    os.execv(os.environ["REAL_DOCKER"], [os.environ["REAL_DOCKER"], *args])
''')


@pytest.fixture(scope="module")
def client():
    c = engine_or_skip()
    try:
        c.images.get(BASE)
    except Exception:
        pytest.skip(f"{BASE} missing; .ci/docker-up.sh builds it")
    return c


def project(root):
    (root / "Dockerfile").write_text(f"FROM {BASE}\nRUN echo {uuid.uuid4()}\nCOPY . /workspace\n")
    (root / "train.py").write_text("print('hi')\n")
    (root / "data").mkdir()
    (root / "data" / "big.npy").write_bytes(b"0" * 1024)


def test_without_buildx_the_legacy_builder_runs_and_the_log_says_why(client, tmp_path, monkeypatch):
    monkeypatch.delenv("TAO_DOCKER_BUILDER", raising=False)
    why = buildkit_unavailable()
    if why is None:
        pytest.skip("this docker CLI has buildx: the BuildKit branch runs instead")
    ctx = make_ctx(tmp_path / "run", model_id="acme/tao-legacy-test")
    project(ctx.run_dir)
    echoed = []
    rec = DockerPlatform(client, echo=echoed.append).build(ctx)
    try:
        line = f"BuildKit not used ({why}): building with the legacy builder (deprecated; install the docker buildx plugin)"
        log = (ctx.run_dir / "logs" / "build.log").read_text().splitlines()
        assert log[0] == line and echoed[0] == f"[build] {line}"
        assert rec["builder"] == "legacy" and rec["builder_note"] == why and "Step 1/3 : FROM tao-base:bookworm" in log
    finally:
        client.images.remove(rec["image"], force=True)


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    real = shutil.which("docker")
    if real is None:
        pytest.skip("no docker CLI")
    bin_dir, out = tmp_path / "bin", tmp_path / "stand-in"
    bin_dir.mkdir()
    out.mkdir()
    exe = bin_dir / "docker"
    exe.write_text(STAND_IN.format(python=sys.executable, base=BASE))
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("REAL_DOCKER", real)
    monkeypatch.setenv("STAND_IN_OUT", str(out))
    monkeypatch.delenv("TAO_DOCKER_BUILDER", raising=False)
    return out


def test_with_buildx_the_build_goes_through_buildkit_with_the_same_context(client, tmp_path, stand_in, monkeypatch):
    assert buildkit_unavailable() is None
    ctx = make_ctx(tmp_path / "run", model_id="acme/tao-buildkit-test")
    project(ctx.run_dir)
    echoed = []
    rec = DockerPlatform(client, echo=echoed.append).build(ctx)
    try:
        argv = json.loads((stand_in / "argv.json").read_text())
        assert argv[:2] == ["buildx", "build"] and "--load" in argv and argv[-1] == "-"
        assert argv[argv.index("--tag") + 1] == run_image("tao-buildkit-test", ctx.run_dir) and argv[argv.index("--network") + 1] == "host"
        names = tarfile.open(fileobj=io.BytesIO((stand_in / "context.tar").read_bytes())).getnames()
        assert "Dockerfile" in names and "train.py" in names and not any(n.startswith("data") for n in names)
        assert rec["builder"] == "buildkit" and rec["image"] == run_image("tao-buildkit-test", ctx.run_dir)
        assert client.images.get(rec["image"]).id == client.images.get(BASE).id
        assert "#6 [3/3] COPY . /workspace" in (ctx.run_dir / "logs" / "build.log").read_text()

        view = LiveView(Console(file=io.StringIO()), ctx.run_dir)  # the live view's build bar follows BuildKit's steps
        for line in echoed:
            view.job_output(line)
        task = view.bar.tasks[0]
        assert (task.description, task.completed, task.total, task.fields["info"]) == ("building image", 2, 3, "COPY . /workspace")
    finally:
        client.images.remove(run_image("tao-buildkit-test", ctx.run_dir))


def test_a_failed_buildkit_build_is_one_error_naming_the_step(client, tmp_path, stand_in, monkeypatch):
    monkeypatch.setenv("STAND_IN_FAIL", "1")
    ctx = make_ctx(tmp_path / "run", model_id="acme/tao-buildkit-fail")
    project(ctx.run_dir)
    with pytest.raises(ToolError) as err:
        DockerPlatform(client, echo=None).build(ctx)
    assert "failed (exit 1) at '#5 [2/3] RUN false'" in str(err.value) and "did not complete successfully" in str(err.value)



def build_containers(client, nonce):
    """Containers of a legacy build's RUN step (the step's command carries the nonce)."""
    return [c for c in client.containers.list(all=True) if nonce in " ".join(c.attrs["Config"].get("Cmd") or [])]


def test_a_real_build_is_cut_at_the_runs_deadline_and_the_rerun_resumes(client, tmp_path):
    """A slow RUN step on the local engine, through the agent loop: the build is ended at --max-hours (exit 5, job_cut,
    state saved, the step's container gone); the re-run builds from the layers cached before the cut."""
    import time

    from tao_finetune.agent.errors import ExitCode
    from tao_finetune.agent.fakes import ScriptedClient, tool_call
    from tao_finetune.agent.loop import Agent, Limits
    from tao_finetune.agent.state import RunState
    from tao_finetune.tools import jobs
    from tao_finetune.tools.base import NoArgs, tool

    @tool(step=1, register=False)
    def run_build(ctx, args: NoArgs) -> dict:
        """The real docker_build (its step gates are not what this test is about)."""
        return jobs.docker_build.fn(ctx, args)

    nonce = uuid.uuid4().hex
    ctx = make_ctx(tmp_path / "run", model_id="acme/tao-build-cut")
    ctx.platform = DockerPlatform(client, echo=None)
    (ctx.run_dir / "Dockerfile").write_text(f"FROM {BASE}\nRUN echo {nonce} > /nonce\nCOPY sleep_s /sleep_s\n"
                                            f"RUN echo step-{nonce} && sleep $(cat /sleep_s) && echo finished\n")
    (ctx.run_dir / "sleep_s").write_text("60")
    tag = run_image("tao-build-cut", ctx.run_dir)
    legacy = buildkit_unavailable() is not None
    try:
        t0 = time.monotonic()
        result = Agent(ScriptedClient([tool_call("run_build")]), ctx, [run_build], "system", Limits(max_wall_s=6)).run("go")
        assert result.code == ExitCode.LIMIT == 5 and "--max-hours" in result.message and time.monotonic() - t0 < 25
        events = [json.loads(x) for x in (ctx.run_dir / ".tao" / "session.jsonl").read_text().splitlines()]
        assert [e["kind"] for e in events][-2:] == ["job_cut", "exit"] and events[-2]["job"] == "build"
        assert RunState.load(ctx.run_dir).records.get("build") is None  # the state was saved without a build
        log = (ctx.run_dir / "logs" / "build.log").read_text()
        lines = log.splitlines()  # the step's output lines (the echoed command line holds the same words)
        assert f"step-{nonce}" in lines and "finished" not in lines and "build stopped at the run's deadline" in log
        if legacy:  # the daemon cancelled the build: its RUN container is killed and removed
            end = time.monotonic() + 15
            while build_containers(client, f"step-{nonce}") and time.monotonic() < end:
                time.sleep(0.2)
            assert not build_containers(client, f"step-{nonce}")
        with pytest.raises(Exception):
            client.images.get(tag)

        ctx.deadline = None  # the re-run (a larger --max-hours): the layers before the slow step come from the cache
        (ctx.run_dir / "sleep_s").write_text("0")
        rec = DockerPlatform(client, echo=None).build(ctx)
        log = (ctx.run_dir / "logs" / "build.log").read_text()
        assert rec["ok"] and client.images.get(tag) and "finished" in log.splitlines()
        if legacy:
            assert log.count("Using cache") >= 1  # RUN echo <nonce> ran before the cut and is not run again
    finally:
        try:
            client.images.remove(tag, force=True)
        except Exception:  # noqa: BLE001
            pass
        for img in client.images.list(filters={"dangling": True}):  # the layers cached by the cut build (this nonce's)
            try:
                if any(nonce in (h.get("CreatedBy") or "") for h in img.history()):
                    client.images.remove(img.id, force=True)
            except Exception:  # noqa: BLE001  (removed with its child already)
                pass


def test_a_buildkit_build_is_ended_at_the_runs_deadline(client, tmp_path, stand_in, monkeypatch):
    """buildx gets SIGTERM (its process group) at the deadline; the cut is reported like any job's."""
    import time

    from tao_finetune.agent.errors import ExitCode, LimitReached

    monkeypatch.setenv("STAND_IN_SLOW", "1")
    ctx = make_ctx(tmp_path / "run", model_id="acme/tao-buildkit-cut")
    project(ctx.run_dir)
    ctx.deadline = time.monotonic() + 2
    with pytest.raises(LimitReached, match=r"--max-hours\) while the build job ran: the job was stopped") as err:
        DockerPlatform(client, echo=None).build(ctx)
    assert err.value.code == ExitCode.LIMIT and time.monotonic() - ctx.deadline < 8  # SIGTERM ended it: no grace waited out
    pid = int((stand_in / "pid").read_text())
    assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] in "ZX"
    log = (ctx.run_dir / "logs" / "build.log").read_text()
    assert "#5 [2/3] RUN sleep 60" in log and "build stopped at the run's deadline" in log
    cut = [json.loads(x) for x in (ctx.run_dir / ".tao" / "session.jsonl").read_text().splitlines() if '"job_cut"' in x]
    assert [(e["job"], e["exit_code"]) for e in cut] == [("build", 143)]
