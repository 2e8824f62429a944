"""The default platform: build the generated project into `run-<short>:<run dir digest>` and run its jobs on the local Docker daemon.

Builds use BuildKit through the docker CLI's buildx plugin when it is there (`docker buildx build --load --progress
plain -`, the context tar on stdin: https://docs.docker.com/reference/cli/docker/buildx/build/); the Docker SDK 7.x
cannot drive BuildKit (its `APIClient.build`, site-packages/docker/api/build.py, speaks the classic /build API only),
so without buildx the build falls back to the legacy builder through the SDK and says so in logs/build.log.
`TAO_DOCKER_BUILDER=legacy` forces the legacy builder.

A build still running at the run's deadline (--max-hours) is ended like a blocking job (outcome.Watchdog, event
job_cut, exit 5): buildx (in its own process group) gets SIGTERM, then SIGKILL after STOP_GRACE_S; a legacy build's
/build connection is shut, which makes the daemon cancel the build (it kills and removes the step's container). Layers
built before the cut stay cached, so the re-run's build resumes. Containers are started detached and waited on so exit
codes, OOM kills and logs can be read back (models/containers.py).

The runner (persistent=True; the default on a GPU host, TAO_PERSISTENT_WORKER=1/0 forces it): `python script.py` jobs
whose container would be the same (environment, network, mounts, devices: no job with a credential) run one after another
in one long-lived container of the run's image, in tools/runtime/worker.py, which keeps torch, transformers, the CUDA
context and the project's modules loaded between smoke, baseline, train, eval and infer instead of a cold container
each. Requests go through a FIFO in the mounted output dir (.tao/runner.fifo); each job still has its own log and exit
file in logs/, and a failed job ends the runner (the next job starts a fresh one). The runner starts, and imports the
stack, right after a successful build, while prepare runs in its own (networked) container. A blocking job cut at
--max-hours, interrupted, or a detached one stopped, ends with the runner: SIGTERM, STOP_GRACE_S, SIGKILL.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable

import docker
import requests
from docker.errors import APIError, DockerException, ImageNotFound, NotFound

from tao_finetune.agent.context import JobKind, JobResult, RunContext
from tao_finetune.agent.policy import job_credentials
from tao_finetune.tools.base import ToolError
from tao_finetune.tools.runtime.local import redact_log
from tao_finetune.tools.runtime.outcome import (STATUS_TAIL_CHARS, STOP_GRACE_S, Watchdog, end_process, exit_code, failure_tail,
                                                 oom_killed, read_exit_file, tail)

WORKDIR = "/workspace"
RUNNER_SCRIPT = ".tao/worker.py"  # a copy of tools/runtime/worker.py, in the mounted output dir
RUNNER_FIFO = ".tao/runner.fifo"  # job requests, one JSON line each
RUNNER_POLL_S = 0.02
RUNTIME_ENV = "meta/runtime_env.json"  # env vars of the applicable compat fixes (written by render_scaffold)
CONTAINER_HF_HOME = "/root/.cache/huggingface"
NETWORKED_JOBS = {"prepare"}  # every other job runs with network_mode none
TAIL_LINES = 40
CLIENT_TIMEOUT = 24 * 3600  # builds and log streams may be silent for long stretches
DEFAULT_EXCLUDES = [
    ".git", ".tao", "checkpoints", "data", "logs", "reports", "meta", "skills", "wandb",
    "**/__pycache__", "**/*.safetensors", "**/*.bin", "**/*.pt",
]
STEP = re.compile(r"^Step \d+/\d+ : (.*)$")
BUILDKIT_STEP = re.compile(r"^#\d+ \[(?:[^\]]+ )?\d+/\d+\] (.*)$")  # BuildKit plain progress: "#7 [3/6] RUN pip ..."
GIB = 1024**3

Echo = Callable[[str], None]


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def image_tag(short_name: str) -> str:
    """`run-<short>:latest`, with characters Docker refuses replaced."""
    safe = re.sub(r"[^a-z0-9_.-]+", "-", short_name.lower()).strip("-.") or "model"
    return f"run-{safe}:latest"


def run_image(short_name: str, run_dir: Path) -> str:
    """The image the agent builds and runs for one run dir: `run-<short>:<10 hex digits of the run dir's path>`, so two
    runs of one model on one engine never train in each other's image (the project README's hand-run commands keep
    `image_tag`'s `:latest`)."""
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:10]
    return f"{image_tag(short_name).rsplit(':', 1)[0]}:{digest}"


def container_name(kind: str, run_dir: Path) -> str:
    """`hft_<kind>_<10 hex digits of the run dir's absolute path>`: unique per run dir, so two runs on one host never
    collide, and the same in every process that works on that run dir (the agent, a rerun, `tao-finetune stop`)."""
    digest = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:10]
    return f"hft_{kind}_{digest}"


def default_shm_size() -> int:
    """Shared memory for data-loader workers: a quarter of host RAM, between 1 and 16 GiB."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 * GIB
    return int(min(16 * GIB, max(1 * GIB, total // 4)))


def network_mode(kind: str, wandb: bool) -> str:
    """Only prepare (Hub downloads) and, with wandb on, training (metrics upload) get the host network."""
    return "host" if kind in NETWORKED_JOBS or (wandb and kind == "train") else "none"


def buildkit_unavailable() -> str | None:
    """Why this build cannot use BuildKit, or None when `docker buildx` answers (TAO_DOCKER_BUILDER=legacy forces it off)."""
    if os.environ.get("TAO_DOCKER_BUILDER", "auto") == "legacy":
        return "TAO_DOCKER_BUILDER=legacy"
    exe = shutil.which("docker")
    if exe is None:
        return "no docker CLI on PATH for `docker buildx`"
    try:
        proc = subprocess.run([exe, "buildx", "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"`docker buildx version` did not answer ({err.__class__.__name__})"
    if proc.returncode != 0:
        return "the docker CLI has no buildx plugin"
    return None


def multi_gpu_argv(argv: list[str], gpu_count: int | None) -> list[str]:
    """`python train.py ...` becomes `torchrun --nproc_per_node=N train.py ...` when N > 1."""
    if gpu_count and gpu_count > 1 and argv and Path(argv[0]).name in ("python", "python3"):
        return ["torchrun", f"--nproc_per_node={gpu_count}", *argv[1:]]
    return argv


def _tail(path: Path, n: int = TAIL_LINES) -> str:
    try:
        with path.open(errors="replace") as f:
            return "".join(deque(f, maxlen=n)).rstrip()
    except FileNotFoundError:
        return ""


def _daemon_error(err: Exception) -> ToolError:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    first = str(err).splitlines()[0][:300] if str(err) else type(err).__name__
    return ToolError(
        f"Docker daemon not reachable at {host!r} ({first}); start it (sudo systemctl start docker) "
        "or use --platform local"
    )


def _start_error(ctx: RunContext, what: str, err: APIError) -> ToolError:
    """The one-line error of a container that would not start; a missing GPU runtime is named with its fix."""
    msg = str(err.explanation or err)
    if "could not select device driver" in msg:
        return ToolError(f"no GPU runtime in Docker ({msg[:200]}): install NVIDIA Container Toolkit and run "
                         "'sudo nvidia-ctk runtime configure --runtime=docker && sudo systemctl restart docker'")
    return ToolError(f"docker could not start {what}: {ctx.creds.redact(msg)[:400]}")


def _build_response(stream: Any) -> Any:
    """The HTTP response behind `APIClient.build(...)`'s stream: that method returns `self._stream_helper(response,
    decode=...)` (docker 7.x, site-packages/docker/api/build.py), a generator whose frame holds the response from its
    creation on; None if a docker SDK changed that."""
    frame = getattr(stream, "gi_frame", None)
    return frame.f_locals.get("response") if frame is not None else None


def _shut_stream(api: Any, response: Any) -> None:
    """Shut the socket of a streaming response both ways: the read blocked on it returns, and the daemon sees the
    client go (for /build: the build is cancelled). `APIClient._get_raw_response_socket` is the SDK's own way to it."""
    try:
        sock = api._get_raw_response_socket(response)
        getattr(sock, "_sock", sock).shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError, DockerException):
        pass


CUT_LINE = "build stopped at the run's deadline (--max-hours); layers built so far stay cached for the re-run\n"


class _LineWriter:
    """Splits a byte stream into redacted lines written to a log file and echoed."""

    def __init__(self, path: Path, redact: Callable[[str], str], echo: Echo | None, prefix: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = path.open("a", encoding="utf-8")
        self.redact, self.echo, self.prefix = redact, echo, prefix
        self.buf = ""

    def feed(self, chunk: bytes | str) -> None:
        self.buf += chunk.decode("utf-8", errors="replace") if isinstance(chunk, bytes) else chunk
        *lines, self.buf = self.buf.split("\n")
        for line in lines:
            self._emit(line)

    def _emit(self, line: str) -> None:
        line = self.redact(line.rstrip("\r"))
        self.file.write(line + "\n")
        self.file.flush()
        if self.echo:
            self.echo(f"{self.prefix}{line}")

    def close(self) -> None:
        if self.buf:
            self._emit(self.buf)
            self.buf = ""
        self.file.close()


class DockerPlatform:
    """Runs the project's jobs in containers of the image built from the output dir."""

    name = "docker"

    def __init__(
        self,
        client: docker.DockerClient | None = None,
        *,
        mem_limit: str | int | None = None,
        shm_size: str | int | None = None,
        ipc_host: bool = False,
        hf_cache: Path | None = None,
        echo: Echo | None = _stderr,
        persistent: bool | None = None,
        grace_s: float = STOP_GRACE_S,
    ):
        from tao_finetune.tools.runtime.local import gpu_host

        forced = os.environ.get("TAO_PERSISTENT_WORKER", "")
        self.persistent = persistent if persistent is not None else (forced == "1" or (forced != "0" and gpu_host()))
        self.grace_s = grace_s
        self._runner: tuple[Any, str, int] | None = None  # (container, key, FIFO write fd)
        self._client = client
        self.mem_limit = mem_limit
        self.shm_size = shm_size
        self.ipc_host = ipc_host
        self.hf_cache = hf_cache
        self.echo = echo
        self._followers: dict[str, threading.Thread] = {}

    @property
    def client(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.from_env(timeout=CLIENT_TIMEOUT)
            except DockerException as err:
                raise _daemon_error(err) from None
        return self._client

    def build(self, ctx: RunContext) -> dict:
        """Build the image (below); after a successful build the runner starts warming up (prewarm)."""
        rec = self._build(ctx)
        if rec.get("ok") and self.persistent:
            rec["runner"] = "warming" if self.prewarm(ctx) else "off"
        return rec

    def _build(self, ctx: RunContext) -> dict:
        """Build `run-<short>:<run dir digest>` (run_image) from the output dir (BuildKit or the classic builder, host network for pip)."""
        root = ctx.run_dir
        tag = run_image(ctx.config.short_name, root)
        if not (root / "Dockerfile").is_file():
            raise ToolError(f"no Dockerfile in {str(root)!r}: write the project files first")
        ignore = root / ".dockerignore"
        excludes = [
            ln.strip() for ln in ignore.read_text().splitlines() if ln.strip() and not ln.startswith("#")
        ] if ignore.is_file() else DEFAULT_EXCLUDES
        log_path = root / "logs" / "build.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        log_path.write_text("")
        out = _LineWriter(log_path, ctx.creds.redact, self.echo, "[build] ")
        why = buildkit_unavailable()
        if why is None:
            return self._buildx(ctx, tag, excludes, out, log_path)
        out.feed(f"BuildKit not used ({why}): building with the legacy builder (deprecated; install the docker buildx plugin)\n")
        step, error = "", ""
        responses: list[Any] = []

        def cut() -> None:  # --max-hours: the daemon cancels a build whose client went away
            for r in list(responses):
                _shut_stream(self.client.api, r)

        dog = Watchdog(ctx, "build", cut)
        try:
            with dog, docker.utils.tar(str(root), exclude=excludes) as context:
                stream = self.client.api.build(
                    fileobj=context, custom_context=True, tag=tag, network_mode="host",
                    rm=True, forcerm=True, decode=True, pull=False,
                )
                responses.append(_build_response(stream))
                if dog.fired.is_set():  # the deadline came while the context was sent
                    cut()
                for chunk in stream:
                    text = chunk.get("stream") or chunk.get("status") or ""
                    if text:
                        for ln in text.splitlines():
                            m = STEP.match(ln.strip())
                            if m:
                                step = ln.strip()
                        out.feed(text if text.endswith("\n") else text + "\n")
                    if "error" in chunk or "errorDetail" in chunk:
                        error = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message", "")
                        out.feed(f"ERROR: {error}\n")
        except Exception as err:  # noqa: BLE001  (after a cut the shut stream breaks, e.g. urllib3's ProtocolError)
            if not dog.fired.is_set():
                if not isinstance(err, (DockerException, requests.exceptions.ConnectionError)):
                    raise
                out.close()
                if isinstance(err, APIError):
                    raise ToolError(f"docker build of {tag!r} refused: {ctx.creds.redact(str(err.explanation or err))[:500]}") from None
                raise _daemon_error(err) from None
        if dog.fired.is_set():
            out.feed(CUT_LINE)
        out.close()
        dog.check()
        if error:
            raise ToolError(
                f"docker build of {tag!r} failed at {step or 'the start'!r}: {ctx.creds.redact(error)[:500]}\n"
                f"last lines of logs/build.log:\n{_tail(log_path)}"
            )
        try:
            image = self.client.images.get(tag)
        except ImageNotFound:
            raise ToolError(f"docker build reported no error but image {tag!r} is missing; see logs/build.log") from None
        return {"ok": True, "image": tag, "id": image.short_id, "log": "logs/build.log", "builder": "legacy", "builder_note": why}

    def _buildx(self, ctx: RunContext, tag: str, excludes: list[str], out: "_LineWriter", log_path: Path) -> dict:
        """`docker buildx build --load` with the same context tar (excludes applied) on stdin, host network for pip."""
        argv = [shutil.which("docker") or "docker", "buildx", "build", "--load", "--progress", "plain", "--network", "host",
                "--tag", tag, "-"]
        out.feed(f"BuildKit: {' '.join(argv[1:])}\n")
        step = ""
        try:  # its own process group: a cut or a Ctrl-C ends the CLI and its buildx plugin together (end_process)
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        except OSError as err:
            out.close()
            raise ToolError(f"docker buildx could not start: {err}") from None

        def send() -> None:
            try:
                with docker.utils.tar(str(ctx.run_dir), exclude=excludes) as context:
                    shutil.copyfileobj(context, proc.stdin)
            except (OSError, ValueError):
                pass  # buildx exited early; its output says why
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

        feeder = threading.Thread(target=send, name="tao-buildx-context", daemon=True)
        feeder.start()
        with Watchdog(ctx, "build", lambda: end_process(proc, STOP_GRACE_S, group=True)) as dog:  # --max-hours
            try:
                for raw in proc.stdout:
                    text = raw.decode("utf-8", errors="replace")
                    m = BUILDKIT_STEP.match(text.strip())
                    if m:
                        step = text.strip()
                    out.feed(text if text.endswith("\n") else text + "\n")
                code = proc.wait()
            except KeyboardInterrupt:  # the terminal's Ctrl-C does not reach its process group: end the build here
                end_process(proc, STOP_GRACE_S, group=True)
                out.close()
                raise
        feeder.join(timeout=30)
        if dog.fired.is_set():
            out.feed(CUT_LINE)
        out.close()
        dog.check(exit_code(code))
        if code != 0:
            raise ToolError(f"docker buildx build of {tag!r} failed (exit {code}) at {step or 'the start'!r}\n"
                            f"last lines of logs/build.log:\n{_tail(log_path)}")
        try:
            image = self.client.images.get(tag)
        except ImageNotFound:
            raise ToolError(f"docker buildx build reported success but image {tag!r} is missing; see logs/build.log") from None
        return {"ok": True, "image": tag, "id": image.short_id, "log": "logs/build.log", "builder": "buildkit"}

    def freeze(self, ctx: RunContext) -> tuple[str, str]:
        """`pip list --format=freeze` (pip freeze with name==version even for wheels installed from a file) inside the built image (no network); returns (output, where it ran)."""
        tag = run_image(ctx.config.short_name, ctx.run_dir)
        try:
            out = self.client.containers.run(tag, ["python", "-m", "pip", "list", "--format=freeze"], remove=True, network_mode="none",
                                              stdout=True, stderr=False)
        except (DockerException, requests.exceptions.ConnectionError) as err:
            raise ToolError(f"pip freeze in {tag!r} failed: {str(err)[:300]}") from None
        return out.decode(errors="replace"), f"image {tag}"

    def _environment(self, ctx: RunContext, kind: str) -> dict[str, str]:
        """Env for a job: credentials by name from ctx.creds, Hub and wandb switches; never logged."""
        cfg = ctx.config
        env: dict[str, str] = {}
        runtime = ctx.run_dir / RUNTIME_ENV
        if runtime.is_file():
            try:
                env.update({str(k): str(v) for k, v in json.loads(runtime.read_text()).items()})
            except (json.JSONDecodeError, AttributeError):
                raise ToolError(f"{RUNTIME_ENV} is not a JSON object of environment variables") from None
        env.update({"PYTHONUNBUFFERED": "1", "HF_HOME": CONTAINER_HF_HOME})
        if not cfg.wandb:
            env["WANDB_MODE"] = "disabled"
        elif os.environ.get("WANDB_MODE") in ("offline", "online", "disabled"):  # the user's choice reaches the tracker
            env["WANDB_MODE"] = os.environ["WANDB_MODE"]
        env.update(ctx.creds.env(job_credentials(kind, cfg.wandb)))
        if kind not in NETWORKED_JOBS:
            env["HF_HUB_OFFLINE"] = "1"
            env["HF_DATASETS_OFFLINE"] = "1"
        return env

    def _volumes(self, ctx: RunContext) -> dict[str, dict[str, str]]:
        cfg = ctx.config
        vols = {str(ctx.run_dir): {"bind": WORKDIR, "mode": "rw"}}
        cache = self.hf_cache or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
        # the caches only: HF_HOME also holds the user's `token` file, which a job must never see
        for sub in ("hub", "datasets", "modules"):
            (cache / sub).mkdir(parents=True, exist_ok=True)
            vols[str((cache / sub).resolve())] = {"bind": f"{CONTAINER_HF_HOME}/{sub}", "mode": "rw"}
        # a local dataset or model folder is visible at the same path as on the host; a relative one also under
        # /workspace, where the job's working directory is
        root = ctx.run_dir.resolve()
        local_model = cfg.model_id if Path(cfg.model_id).expanduser().is_dir() else None
        for raw in (cfg.local_dataset_path, local_model):
            if not raw:
                continue
            path = Path(raw).expanduser()
            host = path.resolve()
            if not host.exists() or root in (host, *host.parents):
                continue
            vols.setdefault(str(host), {"bind": str(host), "mode": "ro"})
            if not path.is_absolute() and ".." not in path.parts:
                vols.setdefault(f"{host}/", {"bind": f"{WORKDIR}/{path.as_posix()}", "mode": "ro"})
        return vols

    def _device_requests(self, ctx: RunContext) -> list[docker.types.DeviceRequest]:
        n = ctx.config.gpu_count
        if n == 0:
            return []
        return [docker.types.DeviceRequest(count=-1 if n is None else n, capabilities=[["gpu"]])]

    def _remove_stale(self, name: str, kind: str) -> None:
        try:
            old = self.client.containers.get(name)
        except NotFound:
            return
        if old.status == "running":
            if kind == "train":
                raise ToolError(f"container {name!r} is already running: check train_status or stop it first")
            old.remove(force=True)
        else:
            old.remove()

    def run(self, ctx: RunContext, kind: JobKind, argv: list[str], detach: bool = False) -> JobResult:
        """Run argv in a fresh container of the project image; detached for training, else wait and check the exit."""
        cfg = ctx.config
        tag = run_image(cfg.short_name, ctx.run_dir)
        name = container_name(kind, ctx.run_dir)
        try:
            self.client.images.get(tag)
        except ImageNotFound:
            raise ToolError(f"image {tag!r} not found: run docker_build first") from None
        except (DockerException, requests.exceptions.ConnectionError) as err:
            raise _daemon_error(err) from None
        command = multi_gpu_argv(list(argv), cfg.gpu_count) if kind == "train" else list(argv)
        kwargs = self._kwargs(ctx, kind, tag, command)
        log_path = ctx.run_dir / "logs" / f"{kind}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if self._runner_job(ctx, kind, tag, command, kwargs):
            runner = self._runner_for(ctx, kwargs)
            if runner is not None:
                return self._run_in_runner(ctx, kind, command, runner, log_path, detach)
        (ctx.run_dir / "logs" / f"{kind}.runner").unlink(missing_ok=True)  # this job's state is its own container's
        if kind == "train" and self._runner is not None and not self._runner_job_running(ctx):
            self._drop_runner()  # a training in its own container (torchrun, W&B online) gets the GPU memory the runner held
        try:
            self._remove_stale(name, kind)
            log_path.write_text("")
            self._stop_marker(ctx, kind).unlink(missing_ok=True)
            container = self.client.containers.run(**kwargs)
        except ImageNotFound:
            raise ToolError(f"image {tag!r} not found: run docker_build first") from None
        except APIError as err:
            raise _start_error(ctx, f"the {kind} container", err) from None
        except (DockerException, requests.exceptions.ConnectionError) as err:
            raise _daemon_error(err) from None
        ctx.session.event("container", job=kind, name=name, image=tag, argv=command, detach=detach)
        if detach:
            self._follow(ctx, container, kind, log_path)
            return JobResult(kind=kind, exit_code=0, log_path=log_path, detached=True, handle=name)
        with Watchdog(ctx, kind, lambda: container.stop(timeout=int(STOP_GRACE_S))) as dog:  # --max-hours ends the job there
            self._stream(ctx, container.logs(stream=True, follow=True), kind, log_path)
            code = exit_code(int(container.wait().get("StatusCode", -1)))
        container.reload()
        oom = oom_killed(code, oom_flag=bool(container.attrs.get("State", {}).get("OOMKilled")), stopped=dog.fired.is_set())
        container.remove(force=True)
        dog.check(code)
        text = failure_tail(kind, code, ctx.creds.redact(tail(log_path)), oom=oom)
        return JobResult(kind=kind, exit_code=code, log_path=log_path, log_tail=text)

    def _kwargs(self, ctx: RunContext, kind: str, tag: str, command: list[str]) -> dict[str, Any]:
        """containers.run() arguments of a job's container."""
        cfg = ctx.config
        kwargs: dict[str, Any] = dict(
            image=tag,
            command=command,
            name=container_name(kind, ctx.run_dir),
            working_dir=WORKDIR,
            environment=self._environment(ctx, kind),
            volumes=self._volumes(ctx),
            network_mode=network_mode(kind, cfg.wandb),
            device_requests=self._device_requests(ctx),
            labels={"tao-finetune.run": str(ctx.run_dir), "tao-finetune.kind": kind},
            init=True,  # signals reach python/torchrun, so stop() is prompt and workers are reaped
            detach=True,
        )
        if self.ipc_host:
            kwargs["ipc_mode"] = "host"
        else:
            kwargs["shm_size"] = self.shm_size or default_shm_size()
        if os.getuid() != 0:
            # files written to the mounted output dir belong to the user, not root
            kwargs["user"] = f"{os.getuid()}:{os.getgid()}"
            kwargs["environment"]["HOME"] = "/tmp"
        if self.mem_limit:
            kwargs["mem_limit"] = self.mem_limit
            kwargs["memswap_limit"] = self.mem_limit
        return kwargs

    # ------------------------------------------------------------ the runner (one warm container per run)
    def _runner_job(self, ctx: RunContext, kind: str, tag: str, command: list[str], kwargs: dict[str, Any]) -> bool:
        """A `python script.py` job whose container would be the plain jobs' one (smoke's: no credential, no network)
        runs in the runner; prepare, a training that reports to W&B online, torchrun and pytest get their own."""
        if not (self.persistent and len(command) >= 2 and command[0] in ("python", "python3") and command[1].endswith(".py")):
            return False
        return kind == "smoke" or self._runner_key(kwargs) == self._runner_key(self._kwargs(ctx, "smoke", tag, command))

    @staticmethod
    def _runner_key(kwargs: dict[str, Any]) -> str:
        """What makes two jobs' containers the same; a job whose container differs (a credential, the network) gets its own."""
        same = {k: kwargs.get(k) for k in ("image", "environment", "volumes", "network_mode", "user", "shm_size", "ipc_mode", "mem_limit")}
        same["devices"] = [d.get("Count") for d in kwargs.get("device_requests") or []]
        return json.dumps(same, sort_keys=True, default=str)

    def _runner_alive(self, container: Any) -> bool:
        try:
            container.reload()
        except NotFound:
            return False
        return container.status == "running"

    def _stop_runner(self, grace: bool = True) -> Any | None:
        """Stop this process's runner (SIGTERM, the grace period, SIGKILL), keeping the container so its exit state can
        be read; returns it. Its jobs' exit files stay."""
        runner, self._runner = self._runner, None
        if runner is None:
            return None
        container, _, fd = runner
        try:
            os.close(fd)
        except OSError:
            pass
        try:
            if self._runner_alive(container):
                container.stop(timeout=int(self.grace_s) if grace else 0)
        except (DockerException, requests.exceptions.ConnectionError):
            pass
        return container

    @staticmethod
    def _remove(container: Any | None) -> None:
        if container is None:
            return
        try:
            container.remove(force=True)
        except (DockerException, requests.exceptions.ConnectionError):
            pass

    def _drop_runner(self, grace: bool = True) -> None:
        """Stop and remove this process's runner."""
        self._remove(self._stop_runner(grace))

    def _runner_for(self, ctx: RunContext, kwargs: dict[str, Any]) -> tuple[Any, str, int] | None:
        """The run's runner for a job with these container arguments (started if needed); None when the job must run in
        its own container (its container differs from the runner's while the runner is busy, or a runner left by an
        earlier agent process still runs a job)."""
        try:  # a rebuilt image keeps its tag: the runner must run the image the job would run
            image_id = self.client.images.get(kwargs["image"]).id
        except ImageNotFound:
            return None
        except (DockerException, requests.exceptions.ConnectionError) as err:
            raise _daemon_error(err) from None
        key = image_id + self._runner_key(kwargs)
        if self._runner is not None:
            container, rkey, _ = self._runner
            if self._runner_alive(container):
                if self._runner_job_running(ctx):
                    return None  # busy with a detached job: this one gets its own container
                if rkey == key:
                    return self._runner
            self._drop_runner()
        name = container_name("runner", ctx.run_dir)
        try:
            old = self.client.containers.get(name)
        except NotFound:
            old = None
        except (DockerException, requests.exceptions.ConnectionError) as err:
            raise _daemon_error(err) from None
        if old is not None:
            if old.status == "running" and self._runner_job_running(ctx):
                return None  # an earlier agent process's runner still trains: leave it alone
            self._remove(old)
        script, fifo = ctx.run_dir / RUNNER_SCRIPT, ctx.run_dir / RUNNER_FIFO
        try:
            script.parent.mkdir(parents=True, exist_ok=True)
            tmp = script.with_name(script.name + ".tmp")
            shutil.copyfile(Path(__file__).resolve().with_name("worker.py"), tmp)
            os.replace(tmp, script)
            fifo.unlink(missing_ok=True)
            os.mkfifo(fifo, 0o600)
            fd = os.open(fifo, os.O_RDWR)  # never blocks; the runner reads end-of-file once this process has closed it
        except OSError as err:  # a filesystem without FIFOs (some network mounts): every job gets its own container
            ctx.session.event("note", text=f"no job runner: {RUNNER_FIFO} could not be made ({err.strerror or err})")
            self.persistent = False
            return None
        args = {**kwargs, "name": name, "labels": {**kwargs["labels"], "tao-finetune.kind": "runner"},
                "command": ["python", f"{WORKDIR}/{RUNNER_SCRIPT}", "--requests", f"{WORKDIR}/{RUNNER_FIFO}"]}
        try:
            container = self.client.containers.run(**args)
        except APIError as err:
            os.close(fd)
            raise _start_error(ctx, "the job runner", err) from None
        except (DockerException, requests.exceptions.ConnectionError) as err:
            os.close(fd)
            raise _daemon_error(err) from None
        self._runner = (container, key, fd)
        ctx.session.event("container", job="runner", name=name, image=kwargs["image"], argv=args["command"], detach=True)
        return self._runner

    def _runner_job_running(self, ctx: RunContext) -> bool:
        """A job of this run (a detached training) still runs in a runner: its exit file is missing and the runner
        container it was handed to (by id: a later runner has the same name) still runs."""
        for marker in (ctx.run_dir / "logs").glob("*.runner"):
            info = self._runner_info(ctx, marker.stem)
            if info is None or marker.with_suffix(".exit").exists():
                continue
            if self._runner_container(info) is not None:
                return True
        return False

    def _runner_container(self, info: dict) -> Any | None:
        """The running runner container a job was handed to, else None."""
        try:
            container = self.client.containers.get(info.get("id") or info.get("runner") or "")
        except NotFound:
            return None
        except (DockerException, requests.exceptions.ConnectionError) as err:
            raise _daemon_error(err) from None
        return container if container.status == "running" else None

    def _send(self, runner: tuple[Any, str, int], req: dict) -> bool:
        try:
            os.write(runner[2], (json.dumps(req) + "\n").encode())
            return True
        except OSError:
            return False

    def prewarm(self, ctx: RunContext, kind: JobKind = "smoke") -> bool:
        """Start the runner now (after a successful build, or at the start of a resumed run whose image exists) and let
        it import torch/transformers and create the CUDA context while the agent goes on; False when the runner is off,
        the image does not exist yet, or the runner could not start."""
        if not self.persistent:
            return False
        tag = run_image(ctx.config.short_name, ctx.run_dir)
        try:
            runner = self._runner_for(ctx, self._kwargs(ctx, kind, tag, ["python", "train.py"]))
        except ToolError:
            return False
        return runner is not None and self._send(runner, {"op": "prewarm"})

    def _run_in_runner(self, ctx: RunContext, kind: JobKind, command: list[str], runner: tuple[Any, str, int],
                       log_path: Path, detach: bool) -> JobResult:
        container = runner[0]
        exit_file = ctx.run_dir / "logs" / f"{kind}.exit"
        marker = ctx.run_dir / "logs" / f"{kind}.runner"
        if kind == "train" and self.status(ctx, kind).get("running"):
            raise ToolError(f"job {kind!r} is already running: check train_status or stop it first")
        exit_file.unlink(missing_ok=True)
        self._stop_marker(ctx, kind).unlink(missing_ok=True)
        log_path.write_text(ctx.creds.redact(f"$ {' '.join(command)}") + "\n")
        req = {"kind": kind, "argv": command[1:], "log": f"{WORKDIR}/logs/{kind}.log", "exit": f"{WORKDIR}/logs/{kind}.exit"}
        marker.write_text(json.dumps({"runner": container.name, "id": container.id, "argv": command, "started": time.time()}))
        if not self._send(runner, req):
            self._drop_runner(grace=False)
            marker.unlink(missing_ok=True)
            raise ToolError(f"the job runner {container.name!r} is gone; run the job again")
        ctx.session.event("container", job=kind, name=container.name, image=runner[0].attrs.get("Config", {}).get("Image"),
                          argv=command, detach=detach, runner=True)
        if detach:
            return JobResult(kind=kind, exit_code=0, log_path=log_path, detached=True, handle=container.name)
        try:
            with Watchdog(ctx, kind, self._stop_runner) as dog:  # --max-hours: the job and its runner end there
                code, oom = self._wait_runner_job(container, exit_file)
        except KeyboardInterrupt:
            self._drop_runner()
            raise
        if code != 0 or dog.fired.is_set():  # a failed job ends the worker (and so the runner): the next job gets a fresh one
            if self._runner is not None and self._runner[0].id == container.id:
                self._stop_runner()
            self._remove(container)
        redact_log(ctx, log_path)
        dog.check(code)
        text = failure_tail(kind, code, ctx.creds.redact(tail(log_path)), oom=oom_killed(code, oom_flag=oom, stopped=dog.fired.is_set()))
        return JobResult(kind=kind, exit_code=code, log_path=log_path, log_tail=text)

    def _wait_runner_job(self, container: Any, exit_file: Path, timeout: float | None = None) -> tuple[int | None, bool]:
        """Block until the job's exit file exists (its exit code) or the runner ended (the runner's exit code, OOM flag);
        (None, False) when timeout passed first."""
        start = last = time.monotonic()
        while not exit_file.exists():
            now = time.monotonic()
            if timeout is not None and now - start >= timeout:
                return None, False
            if now - last >= 0.5:  # the daemon is asked twice a second, the exit file fifty times
                last = now
                if not self._runner_alive(container):
                    if exit_file.exists():
                        break
                    state = container.attrs.get("State", {})
                    return exit_code(int(state.get("ExitCode", -1))), bool(state.get("OOMKilled"))
            time.sleep(RUNNER_POLL_S)
        code = read_exit_file(exit_file)
        return exit_code(-1 if code is None else code), False

    def _runner_status(self, ctx: RunContext, kind: JobKind, info: dict) -> dict:
        """status() of a job that ran in a runner: its exit file, else the runner's state."""
        log_path = ctx.run_dir / "logs" / f"{kind}.log"
        exit_file = ctx.run_dir / "logs" / f"{kind}.exit"
        redact_log(ctx, log_path)
        stopped = self._stop_marker(ctx, kind).exists()
        out = {"name": info.get("runner"), "exists": True, "started": True, "runner": True, "stopped": stopped,
               "log_tail": ctx.creds.redact(tail(log_path, STATUS_TAIL_CHARS))}
        code, oom = None, False
        if exit_file.exists():
            written = read_exit_file(exit_file)
            code = exit_code(-1 if written is None else written)
        else:
            try:
                container = self.client.containers.get(info.get("id") or info.get("runner") or "")
                running = self._runner_alive(container)
                state = container.attrs.get("State", {})
            except NotFound:
                running, state = False, {}
            except (DockerException, requests.exceptions.ConnectionError) as err:
                raise _daemon_error(err) from None
            if running:
                return {**out, "running": True, "status": "running", "exit_code": None}
            code, oom = exit_code(int(state["ExitCode"]) if "ExitCode" in state else None), bool(state.get("OOMKilled"))
        out.update(running=False, status="exited", exit_code=code)
        out["oom_killed"] = oom = oom_killed(code, oom_flag=oom, stopped=stopped)
        out["log_tail"] = failure_tail(kind, code, out["log_tail"], oom=oom, stopped=stopped)
        return out

    def _stream(self, ctx: RunContext, chunks: Iterable[bytes], kind: str, log_path: Path) -> None:
        out = _LineWriter(log_path, ctx.creds.redact, self.echo, f"[{kind}] ")
        try:
            for chunk in chunks:
                out.feed(chunk)
        except (DockerException, requests.exceptions.RequestException):
            pass  # the log stream broke; the container state is read separately
        finally:
            out.close()

    def _follow(self, ctx: RunContext, container: Any, kind: str, log_path: Path) -> None:
        def follow() -> None:
            self._stream(ctx, container.logs(stream=True, follow=True), kind, log_path)

        t = threading.Thread(target=follow, name=f"follow-{container.name}", daemon=True)
        t.start()
        self._followers[container.name] = t

    def wait(self, ctx: RunContext, kind: JobKind, timeout: float | None = None) -> dict:
        """Block until a detached job ends (or timeout seconds pass); returns status()."""
        info = self._runner_info(ctx, kind)
        if info is not None:
            try:
                container = self.client.containers.get(info.get("id") or info.get("runner") or "")
                self._wait_runner_job(container, ctx.run_dir / "logs" / f"{kind}.exit", timeout)
            except NotFound:
                pass
            return self.status(ctx, kind)
        name = container_name(kind, ctx.run_dir)
        try:
            self._container(ctx, kind).wait(timeout=timeout)
        except NotFound:
            pass
        except requests.exceptions.ReadTimeout:
            pass
        t = self._followers.get(name)
        if t:
            t.join(timeout=10)
        return self.status(ctx, kind)

    def status(self, ctx: RunContext, kind: JobKind) -> dict:
        """State of a job's container (or of the job in the run's runner): running, exit code, OOM kill and the redacted log tail."""
        info = self._runner_info(ctx, kind)
        if info is not None:
            return self._runner_status(ctx, kind, info)
        log_path = ctx.run_dir / "logs" / f"{kind}.log"
        try:
            container = self._container(ctx, kind)
            name = container.name
        except NotFound:
            name = container_name(kind, ctx.run_dir)
            return {"name": name, "exists": False, "started": False, "running": False, "exit_code": None,
                    "log_tail": ctx.creds.redact(tail(log_path, STATUS_TAIL_CHARS))}
        except (DockerException, requests.exceptions.ConnectionError) as err:
            raise _daemon_error(err) from None
        state = container.attrs.get("State", {})
        running = container.status == "running"
        follower = self._followers.get(name)
        if follower is None or (running and not follower.is_alive()):
            # nothing in this process follows the job (e.g. after a restart): rewrite the log from the daemon's copy
            log_path.parent.mkdir(parents=True, exist_ok=True)
            text = container.logs().decode("utf-8", errors="replace")
            log_path.write_text(ctx.creds.redact(text))
        code = None if running else exit_code(int(state.get("ExitCode", -1)))
        out = {
            "name": name,
            "exists": True,
            "started": True,
            "running": running,
            "status": container.status,
            "exit_code": code,
            "stopped": self._stop_marker(ctx, kind).exists(),
            "log_tail": ctx.creds.redact(tail(log_path, STATUS_TAIL_CHARS)),
        }
        if code is not None:
            out["oom_killed"] = oom = oom_killed(code, oom_flag=bool(state.get("OOMKilled")), stopped=out["stopped"])
            out["log_tail"] = failure_tail(kind, code, out["log_tail"], oom=oom, stopped=out["stopped"])
        return out

    def _container(self, ctx: RunContext, kind: str) -> Any:
        """The job's container by its name; else by the labels every container of this run carries (one started under
        another name, e.g. the global `hft_<kind>` of earlier versions). NotFound when there is none."""
        try:
            return self.client.containers.get(container_name(kind, ctx.run_dir))
        except NotFound:
            pass
        found = self.client.containers.list(all=True, filters={"label": [f"tao-finetune.run={ctx.run_dir}", f"tao-finetune.kind={kind}"]})
        if not found:
            raise NotFound(f"no {kind} container for {ctx.run_dir}")
        return found[0]

    @staticmethod
    def _runner_info(ctx: RunContext, kind: str) -> dict | None:
        """The marker of a job that was handed to a runner (None when it ran, or runs, in its own container)."""
        marker = ctx.run_dir / "logs" / f"{kind}.runner"
        try:
            info = json.loads(marker.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    @staticmethod
    def _stop_marker(ctx: RunContext, kind: str) -> Path:
        return ctx.run_dir / ".tao" / f"{kind}.stopped"

    def stop(self, ctx: RunContext, kind: JobKind) -> None:
        """Stop the job's container (kept, so its logs and exit code stay readable); a job in the runner is stopped with
        its runner (SIGTERM: train.py checkpoints and exits 75; SIGKILL after the grace period)."""
        info = self._runner_info(ctx, kind)
        if info is not None:
            if not self._runner_status(ctx, kind, info).get("running"):
                return
            marker = self._stop_marker(ctx, kind)
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text("stopped by the user or the agent\n")
            if self._runner is not None and self._runner[0].id == info.get("id"):
                self._stop_runner()  # kept until the next runner starts: its exit state stays readable
                return
            try:
                self.client.containers.get(info.get("id") or info.get("runner") or "").stop(timeout=int(self.grace_s))
            except NotFound:
                return
            except (DockerException, requests.exceptions.ConnectionError) as err:
                raise _daemon_error(err) from None
            return
        try:
            container = self._container(ctx, kind)
        except NotFound:
            return
        except (DockerException, requests.exceptions.ConnectionError) as err:
            raise _daemon_error(err) from None
        marker = self._stop_marker(ctx, kind)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("stopped by the user or the agent\n")
        try:
            container.stop(timeout=30)
        except NotFound:
            return
        except (DockerException, requests.exceptions.ConnectionError) as err:
            raise _daemon_error(err) from None

