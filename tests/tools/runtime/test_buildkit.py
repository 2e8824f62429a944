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

