"""The local platform: jobs run in this machine's Python (or a run venv), cwd = the output dir.

`python script.py ...` jobs run in a persistent worker (tools/runtime/worker.py): one interpreter per run that keeps
torch, transformers, the CUDA context and the project's modules loaded between prepare, smoke, baseline, train, eval
and infer instead of seven cold starts; each job still has its own log, exit file and exit code, and a failed job ends
the worker. Other commands (torchrun, `python -m pytest`) and runs with persistent=False (or TAO_PERSISTENT_WORKER=0)
are plain subprocesses.

A blocking job cut at --max-hours or interrupted by Ctrl-C ends like a stopped one: SIGTERM to the worker's process
group, `grace_s` (STOP_GRACE_S, the same as `stop`) for train.py's preemption handler to write its checkpoint and exit
75, then SIGKILL (tools/runtime/outcome.py end_process).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tao_finetune.agent.context import JobKind, JobResult, RunContext
from tao_finetune.agent.lock import pid_alive
from tao_finetune.agent.policy import job_credentials
from tao_finetune.agent.secrets import KNOWN, SECRET_NAMES
from tao_finetune.tools.base import ToolError
from tao_finetune.tools.runtime.outcome import (STATUS_TAIL_CHARS, STOP_GRACE_S, Watchdog, end_process, exit_code, failure_tail,
                                                 oom_killed, read_exit_file, tail)

WORKER = Path(__file__).resolve().with_name("worker.py")
POLL_S = 0.02


def redact_log(ctx: RunContext, log: Path) -> None:
    """Rewrite a detached job's log with every credential form removed (the job writes it directly)."""
    try:
        ctx.creds.scrub_file(log)
    except OSError:
        pass


FREEZE_CODE = """def freeze():
    import importlib.metadata as md, re
    seen, out = set(), []
    for d in md.distributions():  # sys.path order: the first of a name is the one imported, as in pip's list
        name = (d.metadata['Name'] or '').strip()
        key = re.sub(r'[-_.]+', '-', name).lower()
        if name and key not in seen:
            seen.add(key)
            out.append(name + '==' + d.version)
    return sorted(out, key=str.lower)
"""
"""The build check's `pip list --format=freeze`, from importlib.metadata in the jobs' interpreter."""


class LocalPlatform:
    """Runs jobs in the run's persistent worker (or as subprocesses); detached jobs leave a pid file and an exit-code file in logs/."""

    name = "local"

    def __init__(self, python: str | None = None, extra_env: dict[str, str] | None = None, persistent: bool | None = None,
                 grace_s: float = STOP_GRACE_S):
        self.python = python or sys.executable
        self.grace_s = grace_s  # SIGTERM -> SIGKILL for stop, a --max-hours cut and Ctrl-C
        self.extra_env = dict(extra_env or {})
        self._procs: dict[str, subprocess.Popen] = {}
        if persistent is None:
            persistent = os.environ.get("TAO_PERSISTENT_WORKER", "1") != "0"
        self.persistent = persistent
        self._worker: subprocess.Popen | None = None
        self._worker_key = ""
        self._worker_job: Path | None = None  # exit file of the job the worker runs now
        self._frozen: tuple[str | None, str] = (None, "")  # (python, name==version lines) from the last build check

    # ------------------------------------------------------------ persistent worker
    def _key(self, ctx: RunContext, env: dict[str, str]) -> str:
        return json.dumps([str(ctx.run_dir.resolve()), self.python, sorted(env.items())])

    def _worker_busy(self) -> bool:
        return self._worker_job is not None and not self._worker_job.exists() and self._worker is not None \
            and self._worker.poll() is None

    def _kill_worker(self) -> None:
        """End the worker and the job it runs: its stdin closes (an idle worker, or one whose job exits 0 on SIGTERM,
        ends there), SIGTERM to its process group, `grace_s`, then SIGKILL (end_process); a second Ctrl-C kills at once."""
        w, self._worker, self._worker_job = self._worker, None, None
        if w is None or w.poll() is not None:
            return
        try:
            w.stdin.close()
        except (OSError, ValueError):
            pass
        end_process(w, self.grace_s, group=True)

    def _get_worker(self, ctx: RunContext) -> subprocess.Popen | None:
        """The run's warm worker (started if needed); None when it is busy with another job or cannot start."""
        env = self._env(ctx)
        key = self._key(ctx, env)
        w = self._worker
        if w is not None and w.poll() is None:
            if self._worker_busy():
                return None
            if self._worker_key == key:
                return w
            self._kill_worker()  # env or run dir changed: imports made under the old env are stale
        log = self._logs(ctx) / "worker.log"
        try:
            with log.open("ab") as out:
                w = subprocess.Popen([self.python, str(WORKER)], cwd=ctx.run_dir, env=env, stdin=subprocess.PIPE,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        except OSError:
            return None
        self._worker, self._worker_key, self._worker_job = w, key, None
        return w

    def _send(self, w: subprocess.Popen, req: dict) -> bool:
        try:
            w.stdin.write((json.dumps(req) + "\n").encode())
            w.stdin.flush()
            return True
        except (BrokenPipeError, OSError):
            return False

    def _worker_argv(self, argv: list[str]) -> bool:
        return self.persistent and len(argv) >= 2 and argv[0] in ("python", "python3") and argv[1].endswith(".py")

    def _submit(self, ctx: RunContext, kind: str, argv: list[str], code: str | None = None) -> subprocess.Popen | None:
        """Hand a job to the worker; None = run it as a plain subprocess instead (also for a job that policy gives a
        credential: it stays in that job's own process, never in the shared interpreter)."""
        if self._env(ctx, kind) != self._env(ctx):
            return None
        w = self._get_worker(ctx)
        if w is None:
            return None
        _, _, exit_file = self._files(ctx, kind)
        exit_file.unlink(missing_ok=True)
        log, _, _ = self._files(ctx, kind)
        if not self._send(w, {"kind": kind, "argv": argv[1:] if code is None else ["-c"], "code": code,
                              "log": str(log), "exit": str(exit_file)}):
            self._kill_worker()
            return None
        self._worker_job = exit_file
        return w

    def _wait(self, w: subprocess.Popen, exit_file: Path) -> int:
        """Block until the worker wrote the job's exit file (or died); Ctrl-C kills the worker and its job."""
        try:
            while not exit_file.exists():
                if w.poll() is not None:
                    if exit_file.exists():
                        break
                    self._worker = None
                    return w.returncode if w.returncode and w.returncode > 0 else (w.returncode or -1)
                time.sleep(POLL_S)
        except KeyboardInterrupt:
            self._kill_worker()
            raise
        code = read_exit_file(exit_file)
        return -1 if code is None else code

    def prewarm(self, ctx: RunContext) -> bool:
        """Start the run's worker now and let it import torch/transformers and create the CUDA context while the
        agent works on Steps 1-3; False when the worker is off, could not start, or this is no GPU host (there the
        worker starts with the first job instead: on a small CPU box a parallel import only competes with the agent).
        TAO_PREWARM=1 / 0 forces it on or off."""
        forced = os.environ.get("TAO_PREWARM", "")
        if not self.persistent or forced == "0" or (forced != "1" and not gpu_host()):
            return False
        ctx.run_dir.mkdir(parents=True, exist_ok=True)
        w = self._get_worker(ctx)
        return w is not None and self._send(w, {"op": "prewarm"})

    # ------------------------------------------------------------ helpers
    def _logs(self, ctx: RunContext) -> Path:
        d = ctx.run_dir / "logs"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def _env(self, ctx: RunContext, kind: str = "build") -> dict[str, str]:
        """The job's environment: this process's minus every credential, plus only the ones policy.job_credentials names."""
        base = {k: v for k, v in os.environ.items()
                if k not in SECRET_NAMES and k not in KNOWN and not k.startswith(("ANTHROPIC_", "NGC_")) and "TOKEN" not in k.upper()}
        runtime = ctx.run_dir / "meta" / "runtime_env.json"
        if runtime.is_file():
            base.update({str(k): str(v) for k, v in json.loads(runtime.read_text()).items()})
        base.update(self.extra_env)
        base.update(ctx.creds.env(job_credentials(kind, ctx.config.wandb)))
        base.update({"PYTHONUNBUFFERED": "1", "TAO_PROJECT_DIR": str(ctx.run_dir.resolve())})
        if not ctx.config.wandb:
            base["WANDB_MODE"] = "disabled"
        return base

    def _argv(self, argv: list[str]) -> list[str]:
        if not argv:
            raise ToolError("empty command")
        if argv[0] in ("python", "python3"):
            return [self.python, *argv[1:]]
        if argv[0] == "torchrun":
            return [self.python, "-m", "torch.distributed.run", *argv[1:]]
        return list(argv)

    def _running(self, kind: str, pid: int) -> bool:
        proc = self._procs.get(kind)
        if proc is not None and proc.pid == pid:
            return proc.poll() is None
        return pid_alive(pid)

    def _alive_pid(self, kind: str, pid: int) -> bool:
        w = self._worker
        if w is not None and w.pid == pid:
            return w.poll() is None
        return self._running(kind, pid)

    def _job_running(self, kind: str, info: dict, exit_file: Path) -> bool:
        pid = int(info["pid"])
        if info.get("worker"):  # the worker outlives its jobs: the job runs until its exit file exists
            if exit_file.exists():
                return False
            w = self._worker
            return w.poll() is None if (w is not None and w.pid == pid) else pid_alive(pid)
        return self._running(kind, pid)

    def _files(self, ctx: RunContext, kind: str) -> tuple[Path, Path, Path]:
        d = self._logs(ctx)
        return d / f"{kind}.log", d / f"{kind}.pid", d / f"{kind}.exit"

    # ------------------------------------------------------------ protocol
    def build(self, ctx: RunContext) -> dict:
        """Check that the run's Python imports torch and transformers (and datasets for prepare_data.py)."""
        cfg = ctx.config
        needs_datasets = bool(cfg.dataset_id) or cfg.local_dataset_format in ("arrow", "parquet")
        probe = "try:\n import datasets; dv = datasets.__version__\nexcept ImportError:\n dv = None\n" if needs_datasets else "dv = None\n"
        code = ("import json, sys, torch, transformers\n" + probe +
                "print(json.dumps({'python': sys.executable, 'python_version': sys.version.split()[0],"
                " 'torch': torch.__version__, 'transformers': transformers.__version__, 'datasets': dv,"
                " 'cuda': torch.cuda.is_available(), 'gpus': torch.cuda.device_count(), 'freeze': freeze()}))")
        code = FREEZE_CODE + code
        log, _, exit_file = self._files(ctx, "build")
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_bytes(b"")
        w = self._submit(ctx, "build", ["python", "-c"], code=code) if self.persistent else None
        if w is not None:  # the warm worker checks its own imports (free: a job needs them anyway)
            with Watchdog(ctx, "build", self._kill_worker) as dog:  # --max-hours ends the check too
                returncode = self._wait(w, exit_file)
            dog.check(exit_code(returncode))
            stdout = stderr = log.read_text(errors="replace")
        else:
            try:
                proc = subprocess.run([self.python, "-c", code], capture_output=True, text=True, timeout=300,
                                      env=self._env(ctx), cwd=ctx.run_dir)
            except FileNotFoundError:
                return {"ok": False, "platform": "local", "python": self.python, "error": f"python not found: {self.python!r}"}
            log.write_text(proc.stdout + proc.stderr)
            returncode, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        if returncode != 0:
            last = (stderr.strip().splitlines() or ["import failed"])[-1]
            return {"ok": False, "platform": "local", "python": self.python, "error": ctx.creds.redact(last)}
        info = json.loads(stdout.strip().splitlines()[-1])
        self._frozen = (self.python, "\n".join(info.pop("freeze", None) or []))  # freeze() hands it out once
        ok = info["datasets"] is not None or not needs_datasets
        rec = {"ok": bool(ok), "platform": "local", **info, "image": f"local:{info['python']}"}
        if not ok:
            rec["error"] = "prepare_data.py needs the datasets package: pip install datasets"
        return rec

    def freeze(self, ctx: RunContext) -> tuple[str, str]:
        """`pip list --format=freeze` of the Python that runs the jobs; returns (output, where it ran). The build check
        lists the same name==version lines from importlib.metadata in the jobs' own interpreter (no second process:
        pip's own import takes ~1 s, on the critical path of a run); pip runs only when that list is missing."""
        python, listed = self._frozen
        self._frozen = (None, "")
        if python == self.python and listed:
            return listed + "\n", f"the local Python {self.python} (importlib.metadata, read by the build check)"
        try:
            proc = subprocess.run([self.python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, timeout=120)
        except (FileNotFoundError, subprocess.TimeoutExpired) as err:
            raise ToolError(f"pip freeze failed: {err}") from None
        if proc.returncode != 0:
            raise ToolError(f"pip freeze failed: {(proc.stderr.strip().splitlines() or ['?'])[-1][:300]}")
        return proc.stdout, f"the local Python {self.python}"

    def run(self, ctx: RunContext, kind: JobKind, argv: list[str], detach: bool = False) -> JobResult:
        """Run a job in the output dir; blocking unless detach, output to logs/<kind>.log."""
        log, pid_file, exit_file = self._files(ctx, kind)
        cmd = self._argv(argv)
        if detach:
            if self.status(ctx, kind).get("running"):
                raise ToolError(f"job {kind!r} is already running; use train_status or stop it first")
            exit_file.unlink(missing_ok=True)
            if self._worker_argv(argv):
                with log.open("ab") as out:
                    out.write(f"\n$ {' '.join(argv)}\n".encode())
                w = self._submit(ctx, kind, argv)
                if w is not None:
                    pid_file.write_text(json.dumps({"pid": w.pid, "argv": argv, "started": time.time(), "worker": True}))
                    return JobResult(kind, 0, log, "", detached=True, handle=str(w.pid))
            if kind == "train" and self._worker is not None and not self._worker_busy():
                self._kill_worker()  # a training outside the warm interpreter (torchrun, a credential) gets its GPU memory
            wrapped = ["/bin/sh", "-c", 'trap "" HUP; "$@"; echo $? > "$TAO_EXIT_FILE"', "sh", *cmd]
            env = {**self._env(ctx, kind), "TAO_EXIT_FILE": str(exit_file)}
            with log.open("ab") as out:
                out.write(("\n" + ctx.creds.redact(f"$ {' '.join(argv)}") + "\n").encode())
                proc = subprocess.Popen(wrapped, cwd=ctx.run_dir, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            self._procs[kind] = proc
            pid_file.write_text(json.dumps({"pid": proc.pid, "argv": argv, "started": time.time()}))
            return JobResult(kind, 0, log, "", detached=True, handle=str(proc.pid))
        with log.open("wb") as out:
            out.write((ctx.creds.redact(f"$ {' '.join(argv)}") + "\n").encode())
        w = self._submit(ctx, kind, argv) if self._worker_argv(argv) else None
        if w is not None:
            with Watchdog(ctx, kind, self._kill_worker) as dog:  # --max-hours: the job (and its worker) end there
                code = exit_code(self._wait(w, exit_file))
            redact_log(ctx, log)  # the job wrote its log directly: every credential form is scrubbed from it
            dog.check(code)
            return JobResult(kind, code, log, failure_tail(kind, code, ctx.creds.redact(tail(log)), oom=oom_killed(code)))
        with log.open("w", encoding="utf-8") as out:
            out.write(ctx.creds.redact(f"$ {' '.join(argv)}") + "\n")
            out.flush()
            proc = subprocess.Popen(cmd, cwd=ctx.run_dir, env=self._env(ctx, kind), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            assert proc.stdout is not None
            with Watchdog(ctx, kind, lambda: end_process(proc, self.grace_s)) as dog:
                for raw in proc.stdout:  # every line is redacted before it is stored
                    out.write(ctx.creds.redact(raw.decode("utf-8", errors="replace")))
                    out.flush()
                code = exit_code(proc.wait())
        dog.check(code)
        return JobResult(kind, code, log, failure_tail(kind, code, ctx.creds.redact(tail(log)), oom=oom_killed(code)))

    def status(self, ctx: RunContext, kind: JobKind) -> dict:
        """running / exit_code / pid / log tail of a detached job."""
        log, pid_file, exit_file = self._files(ctx, kind)
        if not pid_file.exists():
            return {"running": False, "exit_code": None, "started": False, "log_tail": ""}
        redact_log(ctx, log)
        info = json.loads(pid_file.read_text())
        pid = int(info["pid"])
        running = self._job_running(kind, info, exit_file)
        code = None
        out = {"running": running, "exit_code": None, "pid": pid, "started": True, "stopped": bool(info.get("stopped")),
               "log_tail": ctx.creds.redact(tail(log, STATUS_TAIL_CHARS))}
        if not running:
            code = read_exit_file(exit_file)
            proc = self._procs.get(kind)
            w = self._worker
            if code is None and proc is not None and proc.pid == pid:
                code = proc.returncode
            elif code is None and w is not None and w.pid == pid and w.poll() is not None:
                code = w.returncode  # the job took the worker down with it (a signal, os._exit)
            out["exit_code"] = code = exit_code(code)  # None (ended without an exit record: killed) -> -1
            out["oom_killed"] = oom = oom_killed(code, stopped=out["stopped"])
            out["log_tail"] = failure_tail(kind, code, out["log_tail"], oom=oom, stopped=out["stopped"])
        return out

    def stop(self, ctx: RunContext, kind: JobKind) -> None:
        """Stop a detached job: SIGTERM to its process group, SIGKILL after `grace_s` (STOP_GRACE_S)."""
        _, pid_file, exit_file = self._files(ctx, kind)
        if not pid_file.exists():
            return
        info = json.loads(pid_file.read_text())
        pid = int(info["pid"])
        if info.get("worker") and not self._job_running(kind, info, exit_file):
            return  # the job is over; the worker stays for the next one
        for sig, wait in ((signal.SIGTERM, self.grace_s), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while self._alive_pid(kind, pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not self._alive_pid(kind, pid):
                break
        if self._worker is not None and self._worker.pid == pid:
            self._worker.poll()
            self._worker, self._worker_job = None, None
        info["stopped"] = time.time()
        pid_file.write_text(json.dumps(info))


def gpu_host() -> bool:
    """An NVIDIA driver is present (device nodes or nvidia-smi), without running anything."""
    return any(Path(p).exists() for p in ("/dev/nvidiactl", "/dev/nvidia0")) or shutil.which("nvidia-smi") is not None


def hardware_facts(path: Path | str = ".") -> dict:
    """GPU count, name, VRAM and driver from nvidia-smi (empty GPU facts without one), plus free disk at path."""
    facts: dict = {"gpu_count": 0, "gpu_name": None, "vram_gb_per_gpu": None, "driver_major": None,
                   "free_disk_gb": round(shutil.disk_usage(path).free / 1e9, 1)}
    smi = shutil.which("nvidia-smi")
    if not smi:
        return facts
    try:
        out = subprocess.run([smi, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30)
    except (subprocess.TimeoutExpired, OSError):
        return facts
    rows = [r.split(", ") for r in out.stdout.strip().splitlines() if r.count(",") >= 2] if out.returncode == 0 else []
    if rows:
        facts.update(gpu_count=len(rows), gpu_name=rows[0][0], vram_gb_per_gpu=round(float(rows[0][1]) / 1024, 1),
                     driver_major=int(rows[0][2].split(".")[0]))
    return facts
