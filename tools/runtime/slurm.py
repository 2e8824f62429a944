"""The SLURM platform: every job of Steps 4-5 is a batch job submitted with `sbatch --parsable` and polled to its end.

The batch script is generated from config.yaml's `slurm:` section (partition, account, QoS, constraint, nodes, GPUs per
node, CPUs, memory, time limit) and written to `.tao/slurm/<job>.sbatch`; the job writes `logs/<job>.log`, which is
streamed to the console like the other platforms' logs. Credentials never enter the script: they are in the environment
of the `sbatch` process and named in `--export`. Jobs run in a pyxis/enroot container (`srun --container-image`), in
Apptainer (`apptainer exec --nv`) or in the submitting host's Python (a venv on a shared filesystem), as the audit found.

Training: one task per node; several GPUs or nodes run `torchrun` with a c10d rendezvous on the first host of
`scontrol show hostnames`; `--signal=B:USR1@<signal_s>` warns the batch shell before the time limit, which passes SIGTERM
to the training (it writes a checkpoint and exits 75, see the scaffold's train.py) and requeues the job; the requeued
job resumes from that checkpoint.

Sources: https://slurm.schedmd.com/sbatch.html (--parsable, --export, --signal, --requeue, --open-mode),
https://slurm.schedmd.com/squeue.html (job state codes, reasons), https://slurm.schedmd.com/scontrol.html (show job,
show hostnames, requeue), https://slurm.schedmd.com/scancel.html (--signal to the steps only),
https://github.com/NVIDIA/pyxis (srun --container-image/--container-mounts/--container-workdir),
https://apptainer.org/docs/user/main/cli/apptainer_exec.html (--nv, --bind, --pwd),
https://docs.pytorch.org/docs/stable/elastic/run.html (torchrun --nnodes --rdzv-backend=c10d --rdzv-endpoint).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from tao_finetune.agent.config import RunConfig, SlurmSpec, atomic_write_text
from tao_finetune.agent.context import JobKind, JobResult, RunContext
from tao_finetune.agent.policy import job_credentials
from tao_finetune.agent.secrets import KNOWN, SECRET_NAMES
from tao_finetune.tools.base import ToolError
from tao_finetune.tools.runtime.local import redact_log
from tao_finetune.tools.runtime.outcome import STATUS_TAIL_CHARS, Watchdog, exit_code, failure_tail, oom_killed, tail

ACTIVE = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
          "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD", "STOPPED", "SPECIAL_EXIT"}
REQUEUE_SETTLE_TRIES, REQUEUE_SETTLE_S = 5, 1.0  # an ended-looking job that was requeued is asked again for up to 5 s
# terminal states that are not a plain exit code, with the evidence line the error playbook matches
STATE_EVIDENCE = {
    "OUT_OF_MEMORY": "OutOfMemoryError: SLURM job {job} ended OUT_OF_MEMORY (the job's memory limit, slurm.mem, was exceeded)",
    "TIMEOUT": "SLURM_TIMEOUT: job {job} reached its time limit {limit}",
    "NODE_FAIL": "SLURM_NODE_FAIL: job {job} lost a node ({reason})",
    "BOOT_FAIL": "SLURM_NODE_FAIL: job {job} could not boot its node ({reason})",
    "PREEMPTED": "SLURM_PREEMPTED: job {job} was preempted",
    "DEADLINE": "SLURM_TIMEOUT: job {job} reached its deadline",
    "CANCELLED": "SLURM_CANCELLED: job {job} was cancelled outside this run ({reason})",
}
NO_CONFIG = "Requested node configuration is not available"
PREEMPTED_EXIT = 75  # the scaffold's exit code after a checkpoint on SIGTERM/SIGUSR1
POLL_S = 2.0
PENDING_ECHO_S = 30.0
CMD_TIMEOUT = 60
CONTROLLER_PATIENCE_S = 900.0

Echo = Callable[[str], None]


def _stderr(line: str) -> None:
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# ---------------------------------------------------------------- pure parts (unit-tested on recorded outputs)


def resolve_gpus(cfg: RunConfig) -> int:
    """GPUs per node of the training job: slurm.gpus_per_node, else what the audit recorded (0 on CPU)."""
    if cfg.slurm.gpus_per_node is not None:
        return cfg.slurm.gpus_per_node
    return int(cfg.gpu_count or 0)


def request_summary(spec: SlurmSpec, nodes: int, gpus: int) -> str:
    """The resources of a request in the words of config.yaml's slurm: keys."""
    parts = [f"partition={spec.partition or '(default)'}", f"nodes={nodes}", f"gpus_per_node={gpus}"]
    parts += [f"{k}={getattr(spec, k)}" for k in ("cpus_per_task", "mem", "constraint", "account", "qos") if getattr(spec, k)]
    return ", ".join(parts)


def submit_error(stderr: str, spec: SlurmSpec, nodes: int, gpus: int, partition: dict | None = None) -> str:
    """One line for a refused submission, naming the resource that cannot be had when the partition facts tell."""
    msg = " ".join(ln.split("error:", 1)[-1].strip() for ln in stderr.strip().splitlines() if ln.strip())[:300] or "no message"
    if NO_CONFIG in stderr or "Node count specification invalid" in stderr:
        culprit = ""
        if partition:
            have_gpus, have_nodes = int(partition.get("gpus_per_node") or 0), int(partition.get("nodes") or 0)
            have_cpus, have_mem = int(partition.get("cpus_per_node") or 0), int(partition.get("mem_mb_per_node") or 0)
            if gpus > have_gpus:
                culprit = f"gpus_per_node={gpus} but the nodes of partition {partition.get('name')!r} have {have_gpus} GPU(s)"
            elif have_nodes and nodes > have_nodes:
                culprit = f"nodes={nodes} but partition {partition.get('name')!r} has {have_nodes} node(s)"
            elif spec.cpus_per_task and have_cpus and spec.cpus_per_task > have_cpus:
                culprit = f"cpus_per_task={spec.cpus_per_task} but its nodes have {have_cpus} CPUs"
            elif spec.mem and have_mem and mem_mb(spec.mem) > have_mem:
                culprit = f"mem={spec.mem} but its nodes have {have_mem} MB"
            elif spec.constraint:
                culprit = f"constraint={spec.constraint!r} matches no node of partition {partition.get('name')!r}"
        what = culprit or request_summary(spec, nodes, gpus)
        return (f"SLURM cannot place the job: {what} ({NO_CONFIG}); change it with --set slurm.<key>=... "
                "or pick another partition (--set slurm.partition=NAME)")
    return f"sbatch refused the job: {msg} (request: {request_summary(spec, nodes, gpus)})"


def mem_mb(text: str) -> int:
    """'64G' / '500M' / '1T' / '2048' (MB) in MB."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        return 0
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024 * 1024}[m.group(2).upper()]
    return int(int(m.group(1)) * scale)


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol show job -o ID` (one line of Key=Value pairs) as a dict; values may hold spaces only in the last keys."""
    out: dict[str, str] = {}
    for m in re.finditer(r"(\w[\w:/]*)=(.*?)(?=\s+\w[\w:/]*=|\s*$)", text.strip()):
        out.setdefault(m.group(1), m.group(2))
    return out


@dataclass
class JobState:
    """A SLURM job as the poller sees it."""

    job_id: str
    state: str  # PENDING, RUNNING, COMPLETED, FAILED, TIMEOUT, ... ('' = unknown to the controller)
    reason: str = ""
    exit_code: int | None = None
    signal: int = 0
    restarts: int = 0
    time_limit: str = ""
    nodes: str = ""
    source: str = ""

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def returncode(self) -> int:
        """The exit code in the platforms' one convention (tools/runtime/outcome.py): 128+N for a job killed by signal N,
        1 for an ended job that is not COMPLETED yet exited 0 (TIMEOUT, NODE_FAIL, a cancel), -1 when unknown."""
        if self.exit_code is None:
            return -1
        code = exit_code(self.exit_code if not self.signal or self.exit_code else -self.signal)
        return 1 if code == 0 and self.state != "COMPLETED" else code

    def oom(self, stopped: bool = False) -> bool:
        """OUT_OF_MEMORY, or a SIGKILL nobody asked for (tools/runtime/outcome.oom_killed)."""
        return oom_killed(self.returncode(), oom_flag=self.state == "OUT_OF_MEMORY", stopped=stopped or self.state == "CANCELLED")

    def evidence(self) -> str:
        """The line for the error playbook when the state says more than the exit code."""
        tmpl = STATE_EVIDENCE.get(self.state)
        return tmpl.format(job=self.job_id, limit=self.time_limit or "?", reason=self.reason or "no reason given") if tmpl else ""


def job_state_from_scontrol(job_id: str, text: str) -> JobState:
    """JobState from `scontrol show job -o`; ExitCode is 'code:signal'."""
    kv = parse_scontrol(text)
    code, sig = (kv.get("ExitCode", "") + ":").split(":")[:2]
    state = kv.get("JobState", "").split()[0] if kv.get("JobState") else ""
    return JobState(job_id, state.rstrip("+"), "" if kv.get("Reason") in (None, "None") else kv["Reason"],
                    int(code) if code.lstrip("-").isdigit() and state not in ACTIVE else None,
                    int(sig) if sig.isdigit() else 0, int(kv.get("Restarts", "0") or 0), kv.get("TimeLimit", ""),
                    kv.get("NodeList", ""), "scontrol")


def job_state_from_sacct(job_id: str, text: str) -> JobState | None:
    """JobState from `sacct -n -P -X -j ID -o JobID,State,ExitCode,Reason,Timelimit,NodeList` (the allocation line)."""
    for line in text.strip().splitlines():
        parts = line.split("|")
        if len(parts) < 3 or parts[0].split(".")[0] != job_id or "." in parts[0]:
            continue
        state = parts[1].split()[0].rstrip("+")
        code, sig = (parts[2] + ":").split(":")[:2]
        return JobState(job_id, state, parts[3] if len(parts) > 3 and parts[3] != "None" else "",
                        int(code) if code.isdigit() and state not in ACTIVE else None, int(sig) if sig.isdigit() else 0,
                        0, parts[4] if len(parts) > 4 else "", parts[5] if len(parts) > 5 else "", "sacct")
    return None


# ---------------------------------------------------------------- the batch script


def script_argv(argv: list[str]) -> list[str]:
    """['python', 'train.py', ...] or ['torchrun', ..., 'train.py', ...] -> ['train.py', ...] (or ['-m', 'pytest', ...])."""
    if not argv:
        raise ToolError("empty command")
    if Path(argv[0]).name in ("python", "python3"):
        return list(argv[1:])
    if argv[0] == "torchrun":
        rest = list(argv[1:])
        while rest and rest[0].startswith("-"):
            rest.pop(0)
        return rest
    raise ToolError(f"the slurm platform runs python scripts only, not {argv[0]!r}")


def container_prefix(mode: str, image: str | None, binds: list[str], workdir: str) -> tuple[list[str], list[str]]:
    """(srun options, command prefix) of a container mode; venv mode has neither."""
    if mode == "pyxis":
        if not image:
            raise ToolError("pyxis needs a container image: --image NAME (or select_image) or --set slurm.container=venv")
        return [f"--container-image={image}", f"--container-mounts={','.join(f'{b}:{b}' for b in binds)}",
                f"--container-workdir={workdir}", "--no-container-remap-root"], []
    if mode == "apptainer":
        if not image:
            raise ToolError("apptainer needs an image (a .sif path or docker://NAME): --image NAME or --set slurm.container=venv")
        return [], ["apptainer", "exec", "--nv", "--bind", ",".join(binds), "--pwd", workdir, image]
    return [], []


def launch_lines(*, script: list[str], python: str, nodes: int, gpus: int, port: int, srun_opts: list[str],
                 prefix: list[str]) -> list[str]:
    """The lines of the batch script that start the job's step: one task per node; torchrun for several GPUs or nodes.

    Several nodes: c10d rendezvous on the first host of `scontrol show hostnames $SLURM_JOB_NODELIST`, nnodes and
    node rank from SLURM_NNODES / SLURM_NODEID (evaluated on each node), rendezvous id = the job id.
    """
    srun = ["srun", f"--nodes={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1", *srun_opts]
    if nodes == 1 and gpus <= 1:
        return [shlex.join([*srun, *prefix, python, *script])]
    if nodes == 1:
        return [shlex.join([*srun, *prefix, python, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={gpus}", *script])]
    per_node = (f"exec {shlex.quote(python)} -m torch.distributed.run --nnodes=\"$SLURM_NNODES\" --node_rank=\"$SLURM_NODEID\" "
                f"--nproc_per_node={max(gpus, 1)} --rdzv_id=\"$SLURM_JOB_ID\" --rdzv_backend=c10d "
                f"--rdzv_endpoint=\"$TAO_RDZV_HOST:{port}\" {shlex.join(script)}")
    return [
        'TAO_RDZV_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export TAO_RDZV_HOST",
        'echo "[tao] rendezvous c10d on $TAO_RDZV_HOST:' + str(port) + ' for $SLURM_NNODES nodes"',
        shlex.join([*srun, *prefix, "bash", "-c", per_node]),
    ]


@dataclass
class Script:
    """A rendered batch script and what it requests."""

    text: str
    nodes: int
    gpus: int
    credentials: list[str] = field(default_factory=list)


def render_script(cfg: RunConfig, kind: str, argv: list[str], run_dir: Path, *, mode: str, python: str,
                  env: dict[str, str], hf_home: str, image: str | None = None) -> Script:
    """The sbatch script of one job. `env` holds non-secret variables only; credentials come through --export."""
    spec = cfg.slurm
    train = kind == "train"
    nodes = spec.nodes if train else 1
    gpus = resolve_gpus(cfg) if kind not in ("prepare",) else 0
    if not train:
        gpus = min(gpus, 1)
    run = str(run_dir.resolve())
    log = f"{run}/logs/{kind}.log"
    head = ["#!/bin/bash", f"#SBATCH --job-name=tao-{re.sub(r'[^A-Za-z0-9_.-]+', '-', cfg.short_name)}-{kind}",
            f"#SBATCH --nodes={nodes}", "#SBATCH --ntasks-per-node=1", f"#SBATCH --output={log}", "#SBATCH --open-mode=append",
            f"#SBATCH --chdir={run}", f"#SBATCH --time={spec.time if train else spec.job_time}"]
    if gpus:
        head.append(f"#SBATCH --gres=gpu:{gpus}")
    for key, opt in (("partition", "partition"), ("account", "account"), ("qos", "qos"), ("constraint", "constraint"),
                     ("cpus_per_task", "cpus-per-task"), ("mem", "mem")):
        value = getattr(spec, key)
        if value not in (None, ""):
            head.append(f"#SBATCH --{opt}={value}")
    requeue = train and spec.requeue
    head.append("#SBATCH --requeue" if requeue else "#SBATCH --no-requeue")
    if requeue:
        head.append(f"#SBATCH --signal=B:USR1@{spec.signal_s}")
    binds = sorted({run, hf_home, *[p for p in _local_inputs(cfg) if p]})
    srun_opts, prefix = container_prefix(mode, image, binds, run)
    body = ["set -u", f"cd {shlex.quote(run)}",
            'echo "[tao] job $SLURM_JOB_ID on $SLURM_JOB_NODELIST restart ${SLURM_RESTART_COUNT:-0} $(date -u +%FT%TZ)"']
    body += [f"export {k}={shlex.quote(v)}" for k, v in sorted(env.items())]
    launch = launch_lines(script=script_argv(argv), python=python, nodes=nodes, gpus=gpus, port=spec.rdzv_port,
                          srun_opts=srun_opts, prefix=prefix)
    if requeue:
        body += [
            "tao_requeue() {",
            f'  echo "[tao] time limit in {spec.signal_s}s: SIGTERM to the training (checkpoint), then requeue"',
            '  scancel --signal=TERM "$SLURM_JOB_ID"',
            '  wait "$TAO_CHILD"',
            '  echo "[tao] training exited $? after the signal; requeue job $SLURM_JOB_ID"',
            '  scontrol requeue "$SLURM_JOB_ID"',
            "  exit 0",
            "}",
            "trap tao_requeue USR1",
            *launch[:-1], launch[-1] + " &",
            "TAO_CHILD=$!",
            'wait "$TAO_CHILD"',
            "code=$?",
        ]
    else:
        body += [*launch, "code=$?"]
    body += ['echo "[tao] exit $code"', 'exit "$code"']
    return Script("\n".join(head + [""] + body) + "\n", nodes, gpus, list(job_credentials(kind, cfg.wandb)))


def _local_inputs(cfg: RunConfig) -> list[str]:
    """Local dataset/model folders the job must see (bound into containers)."""
    out = []
    for raw in (cfg.local_dataset_path, cfg.model_id):
        if raw and Path(raw).expanduser().is_dir():
            out.append(str(Path(raw).expanduser().resolve()))
    return out


# ---------------------------------------------------------------- the platform


class ControllerTimeout(ToolError):
    """A SLURM client command did not answer in time (a busy or restarting slurmctld); polling retries it."""


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise ToolError(f"{argv[0]} not found: the slurm platform needs the SLURM client commands on PATH") from None
    except subprocess.TimeoutExpired:
        raise ControllerTimeout(f"{argv[0]} did not answer in {timeout:.0f}s: is slurmctld reachable? (scontrol ping)") from None


def accounting_enabled() -> bool:
    """Whether sacct can answer (AccountingStorageType is not accounting_storage/none)."""
    if not shutil.which("sacct"):
        return False
    out = _run(["scontrol", "show", "config"]).stdout
    m = re.search(r"^AccountingStorageType\s*=\s*(\S+)", out, re.MULTILINE)
    return bool(m) and m.group(1) != "accounting_storage/none"


def query_job(job_id: str) -> JobState:
    """squeue while the job is queued or running; then scontrol show job; sacct when the controller forgot it."""
    q = _run(["squeue", "-h", "-j", job_id, "-o", "%T|%r"])
    if q.returncode == 0 and q.stdout.strip():
        state, _, reason = q.stdout.strip().splitlines()[0].partition("|")
        if state in ACTIVE:
            js = JobState(job_id, state, "" if reason in ("None", "") else reason, source="squeue")
            sc = _run(["scontrol", "show", "job", "-o", job_id])
            if sc.returncode == 0:
                full = job_state_from_scontrol(job_id, sc.stdout)
                js.restarts, js.time_limit, js.nodes = full.restarts, full.time_limit, full.nodes
            return js
    sc = _run(["scontrol", "show", "job", "-o", job_id])
    if sc.returncode == 0 and "JobState=" in sc.stdout:
        return job_state_from_scontrol(job_id, sc.stdout)
    if accounting_enabled():
        sa = _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode,Reason,Timelimit,NodeList"])
        found = job_state_from_sacct(job_id, sa.stdout) if sa.returncode == 0 else None
        if found:
            return found
    return JobState(job_id, "", source="none")


class LogFollower(threading.Thread):
    """Echoes the new lines of a job's log file (redacted) while the job runs."""

    def __init__(self, path: Path, redact: Callable[[str], str], echo: Echo | None, prefix: str, offset: int):
        super().__init__(daemon=True)
        self.path, self.redact, self.echo, self.prefix, self.offset = path, redact, echo, prefix, offset
        self.done = threading.Event()
        self.buf = ""

    def poll(self) -> None:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except FileNotFoundError:
            return
        self.offset += len(chunk)
        self.buf += chunk.decode("utf-8", errors="replace")
        *lines, self.buf = self.buf.split("\n")
        if self.echo:
            for line in lines:
                self.echo(f"{self.prefix}{self.redact(line.rstrip(chr(13)))}")

    def run(self) -> None:
        while not self.done.wait(0.5):
            self.poll()
        self.poll()
        if self.buf and self.echo:
            self.echo(f"{self.prefix}{self.redact(self.buf)}")

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)


class SlurmPlatform:
    """Runs each job as a SLURM batch job; detached training is polled through its job id in `.tao/slurm/train.json`."""

    name = "slurm"

    def __init__(self, *, echo: Echo | None = _stderr, poll_s: float = POLL_S, hf_home: Path | None = None):
        self.echo = echo
        self.poll_s = poll_s
        self.hf_home = hf_home
        self._followers: dict[str, LogFollower] = {}

    # ------------------------------------------------------------ helpers
    @staticmethod
    def _dir(ctx: RunContext) -> Path:
        d = ctx.run_dir / ".tao" / "slurm"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _record(self, ctx: RunContext, kind: str) -> dict:
        path = self._dir(ctx) / f"{kind}.json"
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def _save_record(self, ctx: RunContext, kind: str, rec: dict) -> None:
        atomic_write_text(self._dir(ctx) / f"{kind}.json", json.dumps(rec, indent=1))

    def _mode(self, ctx: RunContext) -> str:
        """The container mode: slurm.container, else what the audit detected, else venv."""
        mode = ctx.config.slurm.container
        if mode != "auto":
            return mode
        audit = ((ctx.state.records.get("audit") or {}).get("slurm") or {})
        return audit.get("container") or "venv"

    def _python(self, ctx: RunContext, mode: str) -> str:
        if mode == "venv":
            return ctx.config.slurm.python or sys.executable
        return "python"

    def _hf_home(self) -> str:
        home = self.hf_home or Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
        home.mkdir(parents=True, exist_ok=True)
        return str(home.resolve())

    def _job_env(self, ctx: RunContext, kind: str) -> dict[str, str]:
        """Non-secret variables set in the script: the compat fixes' runtime env, Hub/wandb switches, the project dir."""
        env: dict[str, str] = {}
        runtime = ctx.run_dir / "meta" / "runtime_env.json"
        if runtime.is_file():
            try:
                env.update({str(k): str(v) for k, v in json.loads(runtime.read_text()).items()})
            except (json.JSONDecodeError, AttributeError):
                raise ToolError("meta/runtime_env.json is not a JSON object of environment variables") from None
        env.update({"PYTHONUNBUFFERED": "1", "TAO_PROJECT_DIR": str(ctx.run_dir.resolve()), "HF_HOME": self._hf_home()})
        if not ctx.config.wandb:
            env["WANDB_MODE"] = "disabled"
        if kind != "prepare":
            env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        return {k: v for k, v in env.items() if k not in SECRET_NAMES}

    def _submit_env(self, ctx: RunContext, names: list[str]) -> dict[str, str]:
        """sbatch's own environment: this process's minus every credential, plus the job's credentials (by name)."""
        base = {k: v for k, v in os.environ.items() if k not in SECRET_NAMES and k not in KNOWN}
        base.update(ctx.creds.env(names))
        return base

    def _partition_facts(self, ctx: RunContext) -> dict | None:
        return ((ctx.state.records.get("audit") or {}).get("slurm") or {}).get("partition")

    def submit(self, ctx: RunContext, kind: str, argv: list[str]) -> str:
        """Write the script and `sbatch --parsable` it; returns the job id, or a one-line ToolError."""
        cfg = ctx.config
        mode = self._mode(ctx)
        script = render_script(cfg, kind, argv, ctx.run_dir, mode=mode, python=self._python(ctx, mode),
                               env=self._job_env(ctx, kind), hf_home=self._hf_home(), image=cfg.image or cfg.ngc_image)
        path = self._dir(ctx) / f"{kind}.sbatch"
        atomic_write_text(path, script.text)
        names = [n for n in script.credentials if ctx.creds.present(n)]
        export = ",".join(["ALL", *names])
        (ctx.run_dir / "logs").mkdir(parents=True, exist_ok=True)
        proc = _run(["sbatch", "--parsable", f"--export={export}", str(path)], env=self._submit_env(ctx, names))
        if proc.returncode != 0:
            raise ToolError(submit_error(ctx.creds.redact(proc.stderr or proc.stdout), cfg.slurm, script.nodes, script.gpus,
                                         self._partition_facts(ctx)))
        job_id = proc.stdout.strip().split(";")[0].strip()
        if not job_id.isdigit():
            raise ToolError(f"sbatch --parsable printed no job id: {proc.stdout.strip()[:200]!r}")
        ctx.session.event("slurm_submit", job=kind, job_id=job_id, script=str(path.relative_to(ctx.run_dir)),
                          nodes=script.nodes, gpus_per_node=script.gpus, export=export)
        return job_id

    def _echo(self, text: str) -> None:
        if self.echo:
            self.echo(text)

    def _follow(self, ctx: RunContext, kind: str, log: Path, offset: int) -> LogFollower:
        old = self._followers.pop(kind, None)
        if old:
            old.stop()
        f = LogFollower(log, ctx.creds.redact, self.echo, f"[{kind}] ", offset)
        f.start()
        self._followers[kind] = f
        return f

    def wait(self, ctx: RunContext, kind: str, job_id: str, timeout_s: float | None = None) -> JobState:
        """Poll until the job leaves the queue (PENDING reasons are echoed); scancel on Ctrl-C."""
        last, last_echo = "", 0.0
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        silent_since: float | None = None
        try:
            while True:
                try:
                    js = query_job(job_id)
                    silent_since = None
                except ControllerTimeout as err:  # keep polling a slow controller for a while; the job runs on regardless
                    silent_since = silent_since or time.monotonic()
                    if time.monotonic() - silent_since > CONTROLLER_PATIENCE_S:
                        raise ToolError(f"SLURM job {job_id} ({kind}): {err} for {CONTROLLER_PATIENCE_S:.0f}s") from None
                    self._echo(f"[{kind}] {err}; retrying")
                    time.sleep(self.poll_s)
                    continue
                if js.state and not js.active:
                    return js
                if js.state == "" and deadline is None:
                    raise ToolError(f"SLURM job {job_id} ({kind}) is unknown to the controller (squeue/scontrol/sacct)")
                now = time.monotonic()
                key = f"{js.state}:{js.reason}"
                if js.state == "PENDING" and (key != last or now - last_echo > PENDING_ECHO_S):
                    self._echo(f"[{kind}] SLURM job {job_id} PENDING ({js.reason or 'no reason yet'})")
                    last_echo = now
                elif key != last and js.state:
                    self._echo(f"[{kind}] SLURM job {job_id} {js.state}")
                last = key
                if deadline is not None and now > deadline:
                    return js
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            _run(["scancel", job_id])
            self._echo(f"[{kind}] interrupted: scancel {job_id}")
            raise

    # ------------------------------------------------------------ protocol
    def build(self, ctx: RunContext) -> dict:
        """Check on a compute node (a real batch job) that the job's Python imports torch and transformers."""
        mode = self._mode(ctx)
        probe = ctx.run_dir / ".tao" / "slurm" / "probe_env.py"
        self._dir(ctx)
        probe.write_text(
            "import json, sys, torch, transformers\n"
            "try:\n    import datasets; dv = datasets.__version__\nexcept ImportError:\n    dv = None\n"
            "print('TAO_BUILD ' + json.dumps({'python': sys.executable, 'python_version': sys.version.split()[0],"
            " 'torch': torch.__version__, 'transformers': transformers.__version__, 'datasets': dv,"
            " 'cuda': torch.cuda.is_available(), 'gpus': torch.cuda.device_count()}))\n")
        log = ctx.run_dir / "logs" / "build.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("")
        try:
            res = self.run(ctx, "build", ["python", ".tao/slurm/probe_env.py"])  # type: ignore[arg-type]
        except ToolError as err:
            return {"ok": False, "platform": "slurm", "container": mode, "error": str(err).splitlines()[0]}
        line = next((ln for ln in reversed(res.log_tail.splitlines()) if ln.startswith("TAO_BUILD ")), "")
        if res.exit_code != 0 or not line:
            last = (res.log_tail.strip().splitlines() or ["import failed"])[-1]
            return {"ok": False, "platform": "slurm", "container": mode, "error": ctx.creds.redact(last)[:300]}
        info = json.loads(line.removeprefix("TAO_BUILD "))
        cfg = ctx.config
        needs_datasets = bool(cfg.dataset_id) or cfg.local_dataset_format in ("arrow", "parquet")
        ok = info["datasets"] is not None or not needs_datasets
        image = cfg.image or cfg.ngc_image if mode != "venv" else f"slurm-venv:{info['python']}"
        rec = {"ok": bool(ok), "platform": "slurm", "container": mode, **info, "image": image,
               "job_id": self._record(ctx, "build").get("job_id")}
        if not ok:
            rec["error"] = "prepare_data.py needs the datasets package in the job's Python: pip install datasets"
        return rec

    def run(self, ctx: RunContext, kind: JobKind, argv: list[str], detach: bool = False) -> JobResult:
        """Submit the job; detached (training) returns at once, else stream the log until it ends."""
        log = ctx.run_dir / "logs" / f"{kind}.log"
        if detach:
            st = self.status(ctx, kind)
            if st.get("running"):
                raise ToolError(f"job {kind!r} is already queued or running (SLURM job {st.get('job_id')}); use train_status or stop it first")
        (ctx.run_dir / ".tao" / f"{kind}.stopped").unlink(missing_ok=True)
        offset = log.stat().st_size if log.exists() else 0
        if not detach:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("")
            offset = 0
        job_id = self.submit(ctx, kind, argv)
        self._save_record(ctx, kind, {"job_id": job_id, "argv": argv, "submitted": time.time(), "log_offset": offset})
        self._echo(f"[{kind}] submitted SLURM job {job_id}")
        follower = self._follow(ctx, kind, log, offset)
        if detach:
            return JobResult(kind, 0, log, "", detached=True, handle=job_id)
        try:
            with Watchdog(ctx, kind, lambda: _run(["scancel", job_id])) as dog:  # --max-hours ends the job there
                js = self.wait(ctx, kind, job_id)
        finally:
            follower.stop()
            self._followers.pop(kind, None)
        redact_log(ctx, log)  # the job wrote its log itself: remove every credential form
        if dog.fired.is_set():
            ctx.session.event("slurm_end", job=kind, job_id=job_id, state=js.state, exit_code=js.returncode(), reason="deadline")
        dog.check(js.returncode())
        code = js.returncode()
        text = failure_tail(kind, code, ctx.creds.redact(tail(log)), oom=js.oom(), state=js.evidence())
        ctx.session.event("slurm_end", job=kind, job_id=job_id, state=js.state, exit_code=code, reason=js.reason)
        return JobResult(kind, code, log, text, handle=job_id)

    def status(self, ctx: RunContext, kind: JobKind) -> dict:
        """running (queued counts), exit_code, the SLURM state and PENDING reason, and the log tail."""
        rec = self._record(ctx, kind)
        log = ctx.run_dir / "logs" / f"{kind}.log"
        if not rec.get("job_id"):
            return {"running": False, "exit_code": None, "started": False, "log_tail": ""}
        try:
            js = query_job(str(rec["job_id"]))
        except ControllerTimeout as err:  # not an ended job: report it as still running and let the caller poll again
            return {"running": True, "started": True, "job_id": rec["job_id"], "slurm_state": "UNKNOWN", "reason": str(err),
                    "exit_code": None, "stopped": False, "log_tail": ctx.creds.redact(tail(log, STATUS_TAIL_CHARS))}
        stopped = (ctx.run_dir / ".tao" / f"{kind}.stopped").exists()
        for _ in range(REQUEUE_SETTLE_TRIES):  # a requeued job shows an ended state (CANCELLED) for a moment before PENDING
            if js.active or js.restarts < 1 or stopped:
                break
            time.sleep(REQUEUE_SETTLE_S)
            try:
                js = query_job(str(rec["job_id"]))
            except ControllerTimeout:
                break
        running = js.active
        if running and kind not in self._followers:
            self._follow(ctx, kind, log, log.stat().st_size if log.exists() else 0)
        if not running and kind in self._followers:
            self._followers.pop(kind).stop()
        if not running:
            redact_log(ctx, log)
        text = ctx.creds.redact(tail(log, STATUS_TAIL_CHARS))
        out = {"running": running, "started": True, "job_id": rec["job_id"], "slurm_state": js.state or "UNKNOWN",
               "stopped": stopped, "restarts": js.restarts}
        if js.reason:
            out["pending_reason" if js.state == "PENDING" else "reason"] = js.reason
        if running:
            out["exit_code"] = None
        else:
            out["exit_code"] = code = js.returncode()
            out["oom_killed"] = oom = js.oom(stopped)
            text = failure_tail(kind, code, text, oom=oom, stopped=stopped, state=js.evidence())
        out["log_tail"] = text
        return out

    def stop(self, ctx: RunContext, kind: JobKind, grace_s: float = 60.0) -> None:
        """SIGTERM to the job's steps (training writes a checkpoint and exits), then scancel after `grace_s`."""
        rec = self._record(ctx, kind)
        if not rec.get("job_id"):
            return
        job_id = str(rec["job_id"])
        marker = ctx.run_dir / ".tao" / f"{kind}.stopped"
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("stopped by the user or the agent\n")
        js = query_job(job_id)
        if not js.active:
            return
        if js.state == "RUNNING":
            _run(["scancel", "--signal=TERM", job_id])
            js = self.wait(ctx, kind, job_id, timeout_s=grace_s)
        if js.active:
            _run(["scancel", job_id])
            self.wait(ctx, kind, job_id, timeout_s=30)
        follower = self._followers.pop(kind, None)
        if follower:
            follower.stop()


# ---------------------------------------------------------------- Step 2 on this platform: sinfo/scontrol, not local GPUs

SINFO_FORMAT = "%P|%a|%D|%c|%m|%G|%f|%l|%T"
GPU_PROBE = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"]
# VRAM by GPU type name when no probe job could read it (GB, the largest common variant)
VRAM_GB = {"gb200": 186.0, "b200": 180.0, "h200": 141.0, "h100": 80.0, "gh200": 96.0, "a100": 80.0, "l40s": 48.0,
           "l40": 48.0, "a6000": 48.0, "a40": 48.0, "a10": 24.0, "l4": 24.0, "v100": 32.0, "t4": 16.0}


@dataclass
class SlurmFacts:
    """Raw observations of the cluster from the submit host; None = the command failed or is missing."""

    sinfo: str | None = None
    ping: str | None = None
    srun_help: str | None = None
    apptainer: str | None = None
    enroot: str | None = None
    gpu_probe: str | None = None  # nvidia-smi query from a one-GPU job on the partition, when it has GPUs
    gpu_probe_error: str = ""
    free_disk_gb: float | None = None
    disk_path: str = ""


def parse_gres_gpus(gres: str) -> tuple[int, str | None]:
    """GPUs per node and type from a sinfo %G field: 'gpu:h100:8(S:0-1)', 'gpu:4', 'gpu:a100:4,shard:8', '(null)'."""
    count, kind = 0, None
    for item in (gres or "").split(","):
        m = re.match(r"gpu(?::([A-Za-z0-9_.-]+))?:(\d+)", item.strip())
        if m:
            count += int(m.group(2))
            kind = kind or m.group(1)
    return count, kind


def parse_sinfo(text: str | None) -> dict[str, dict]:
    """Partitions from `sinfo -h -o '%P|%a|%D|%c|%m|%G|%f|%l|%T'`, lines of one partition merged (min per node)."""
    parts: dict[str, dict] = {}
    for line in (text or "").splitlines():
        f = line.strip().split("|")
        if len(f) < 9:
            continue
        name = f[0].rstrip("*")
        gpus, gpu_type = parse_gres_gpus(f[5])
        cpus = int(re.sub(r"\D", "", f[3]) or 0)
        mem = int(re.sub(r"\D", "", f[4]) or 0)
        state = f[8].rstrip("*~#$@^-!%")
        p = parts.setdefault(name, {"name": name, "default": f[0].endswith("*"), "available": f[1], "nodes": 0,
                                     "usable_nodes": 0, "cpus_per_node": cpus, "mem_mb_per_node": mem,
                                     "gpus_per_node": gpus, "gpu_type": gpu_type, "features": set(), "time_limit": f[7],
                                     "states": {}})
        n = int(f[2] or 0)
        p["nodes"] += n
        if state in ("idle", "mixed", "allocated", "completing", "planned", "reserved"):
            p["usable_nodes"] += n
        p["states"][state] = p["states"].get(state, 0) + n
        p["cpus_per_node"] = min(p["cpus_per_node"], cpus) if p["cpus_per_node"] else cpus
        p["mem_mb_per_node"] = min(p["mem_mb_per_node"], mem) if p["mem_mb_per_node"] else mem
        if gpus and (not p["gpus_per_node"] or gpus < p["gpus_per_node"]):
            p["gpus_per_node"], p["gpu_type"] = gpus, gpu_type or p["gpu_type"]
        if f[6] not in ("(null)", ""):
            p["features"] |= set(f[6].split(","))
    for p in parts.values():
        p["features"] = sorted(p["features"])
    return parts


def pick_partition(parts: dict[str, dict], wanted: str | None) -> dict | None:
    """The configured partition, else the default one (marked '*'), else the only one."""
    if wanted:
        return parts.get(wanted)
    return next((p for p in parts.values() if p["default"]), next(iter(parts.values()), None) if len(parts) == 1 else None)


def detect_container(facts: SlurmFacts) -> str:
    """pyxis when srun has --container-image (the pyxis SPANK plugin), else apptainer/singularity on PATH, else venv."""
    if facts.srun_help and "--container-image" in facts.srun_help:
        return "pyxis"
    if facts.apptainer:
        return "apptainer"
    return "venv"


def assess_slurm(facts: SlurmFacts, cfg: RunConfig, credentials: dict[str, bool] | None = None,
                 min_disk_gb: float = 100.0) -> tuple[list, dict]:
    """Audit items (tools.hardware.Item) and the record: partition facts, container mode, GPU type and count."""
    from tao_finetune.tools.hardware import Item, credential_item, parse_gpus

    spec = cfg.slurm
    items: list = []
    parts = parse_sinfo(facts.sinfo)
    record: dict = {"partitions": sorted(parts), "partition": None, "container": detect_container(facts)}
    if facts.ping is None and not parts:
        items.append(Item("slurm", "fail", "no SLURM controller answers (sinfo/scontrol ping failed)",
                          "start slurmctld/slurmd and munged (or run on a login node of the cluster); check: scontrol ping"))
        return items, record
    items.append(Item("slurm", "pass", (facts.ping or "sinfo answers").strip().splitlines()[0][:160]))
    part = pick_partition(parts, spec.partition)
    if part is None:
        want = spec.partition or "a default partition"
        items.append(Item("partition", "fail", f"{want} not found among {sorted(parts)}",
                          "pick one with --set slurm.partition=NAME"))
        return items, record
    record["partition"] = {k: v for k, v in part.items() if k != "states"} | {"states": part["states"]}
    detail = (f"{part['name']}: {part['usable_nodes']}/{part['nodes']} node(s) usable, {part['cpus_per_node']} CPUs, "
              f"{part['mem_mb_per_node']} MB, {part['gpus_per_node']} GPU(s) per node"
              + (f" ({part['gpu_type']})" if part["gpu_type"] else "") + f", time limit {part['time_limit']}")
    if part["available"] != "up" or not part["usable_nodes"]:
        items.append(Item("partition", "fail", f"{detail}; state {part['available']} {part['states']}",
                          "ask the cluster admins, or pick another partition with --set slurm.partition=NAME"))
    else:
        items.append(Item("partition", "pass", detail))
    want_gpus = spec.gpus_per_node if spec.gpus_per_node is not None else part["gpus_per_node"]
    if part["gpus_per_node"]:
        items.append(Item("gpu", "pass", f"{part['gpus_per_node']} x {part['gpu_type'] or 'gpu'} per node"))
    elif cfg.allow_cpu:
        items.append(Item("gpu", "warn", f"partition {part['name']!r} has no GPUs (no gpu GRES); running on CPU because allow_cpu is set"))
    else:
        items.append(Item("gpu", "fail", f"partition {part['name']!r} has no GPUs (no gpu GRES in sinfo)",
                          "pick a GPU partition with --set slurm.partition=NAME, or rerun with --allow-cpu"))
    if want_gpus > part["gpus_per_node"]:
        items.append(Item("request", "fail", f"gpus_per_node={want_gpus} but the nodes of {part['name']!r} have {part['gpus_per_node']}",
                          "lower --set slurm.gpus_per_node or pick another partition"))
    elif spec.nodes > part["nodes"]:
        items.append(Item("request", "fail", f"nodes={spec.nodes} but {part['name']!r} has {part['nodes']}",
                          "lower --set slurm.nodes or pick another partition"))
    else:
        items.append(Item("request", "pass", request_summary(spec, spec.nodes, want_gpus)))
    detected = record["container"]
    mode = spec.container if spec.container != "auto" else detected
    record["container"] = mode
    if mode == "pyxis" and detected != "pyxis":
        items.append(Item("container", "fail", "slurm.container=pyxis but srun has no --container-image (pyxis not installed)",
                          "install pyxis + enroot, or --set slurm.container=venv"))
    elif mode == "apptainer" and not facts.apptainer:
        items.append(Item("container", "fail", "slurm.container=apptainer but apptainer/singularity is not on PATH",
                          "install Apptainer, or --set slurm.container=venv"))
    elif mode == "venv":
        py = spec.python or sys.executable
        ok = Path(py).is_file() or bool(shutil.which(py))
        items.append(Item("container", "pass" if ok else "fail",
                          f"venv: jobs run {py} (no pyxis or Apptainer found; the nodes must share this path)",
                          "" if ok else "--set slurm.python=/path/to/venv/bin/python (a Python the compute nodes can run)"))
    else:
        items.append(Item("container", "pass", f"{mode}: jobs run in a container image (--image or the selected NGC image)"))
    gpus = parse_gpus(facts.gpu_probe)
    if part["gpus_per_node"]:
        if gpus:
            items.append(Item("driver", "pass", f"{gpus[0].name}, driver {gpus[0].driver_version} (probe job)"))
        else:
            items.append(Item("driver", "warn", f"no GPU probe job result ({facts.gpu_probe_error or 'not run'}); VRAM from the GPU type"))
    if facts.free_disk_gb is None:
        items.append(Item("disk", "warn", "free disk unknown"))
    elif facts.free_disk_gb < min_disk_gb:
        items.append(Item("disk", "warn", f"{facts.free_disk_gb:.0f} GB free at {facts.disk_path} < {min_disk_gb:.0f} GB (MIN_DISK_GB)",
                          "free space or set MIN_DISK_GB"))
    else:
        items.append(Item("disk", "pass", f"{facts.free_disk_gb:.0f} GB free at {facts.disk_path}"))
    items += [credential_item(name, present) for name, present in (credentials or {}).items()]
    record["gpu_type"], record["gpus_per_node"] = part["gpu_type"], part["gpus_per_node"]
    return items, record


def slurm_hardware_record(facts: SlurmFacts, record: dict, cfg: RunConfig) -> dict:
    """gpu_count (GPUs per node the jobs use), gpu_name, driver_major, vram_gb_per_gpu for config.yaml."""
    from tao_finetune.tools.hardware import parse_gpus

    part = record.get("partition") or {}
    have = int(part.get("gpus_per_node") or 0)
    if not have:
        return {"gpu_count": 0, "gpu_name": "cpu", "driver_major": 0, "vram_gb_per_gpu": 0.0} if cfg.allow_cpu else {}
    use = min(have, cfg.slurm.gpus_per_node) if cfg.slurm.gpus_per_node is not None else have
    probe = parse_gpus(facts.gpu_probe)
    kind = (part.get("gpu_type") or "").lower()
    vram = probe[0].vram_gb if probe else next((v for k, v in VRAM_GB.items() if k in kind), 0.0)
    driver = int(probe[0].driver_version.split(".")[0]) if probe and probe[0].driver_version.split(".")[0].isdigit() else 0
    return {"gpu_count": use, "gpu_name": probe[0].name if probe else (part.get("gpu_type") or "gpu"),
            "driver_major": driver, "vram_gb_per_gpu": vram}


def _out(argv: list[str], timeout: float = 30) -> str | None:
    exe = shutil.which(argv[0])
    if not exe:
        return None
    try:
        proc = subprocess.run([exe, *argv[1:]], capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout + proc.stderr if proc.returncode == 0 else None


def collect_slurm_facts(cfg: RunConfig, disk_path: Path | None = None, probe_gpus: bool = True) -> SlurmFacts:
    """Run sinfo, scontrol ping, srun --help and, on a GPU partition, a one-GPU nvidia-smi probe job (check-only)."""
    facts = SlurmFacts(sinfo=_out(["sinfo", "-h", "-o", SINFO_FORMAT]), ping=_out(["scontrol", "ping"]),
                       srun_help=_out(["srun", "--help"]))
    facts.apptainer = _out(["apptainer", "--version"]) or _out(["singularity", "--version"])
    facts.enroot = _out(["enroot", "version"])
    part = pick_partition(parse_sinfo(facts.sinfo), cfg.slurm.partition)
    if probe_gpus and part and part["gpus_per_node"]:
        argv = ["srun", "--nodes=1", "--ntasks=1", "--gres=gpu:1", "--time=5", *(
            [f"--partition={part['name']}"]), *([f"--account={cfg.slurm.account}"] if cfg.slurm.account else []),
            *([f"--qos={cfg.slurm.qos}"] if cfg.slurm.qos else []), *GPU_PROBE]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            if proc.returncode == 0:
                facts.gpu_probe = proc.stdout
            else:
                facts.gpu_probe_error = (proc.stderr.strip().splitlines() or ["failed"])[-1][:200]
        except (OSError, subprocess.TimeoutExpired) as err:
            facts.gpu_probe_error = f"{type(err).__name__}: {err}"[:200]
    path = disk_path or Path.cwd()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        facts.free_disk_gb, facts.disk_path = round(shutil.disk_usage(path).free / 1e9, 1), str(path)
    except OSError:
        pass
    return facts
