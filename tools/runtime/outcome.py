"""How a job's end is reported, the same on every platform (local, docker, slurm): the exit code, the log tail, and
one evidence line the error playbook (references/error_playbook.yaml) matches when the exit code says more than the log.

A platform never raises for a job that ran and failed: `run` returns a JobResult with the exit code and this tail, and
`status` of an ended detached job returns the same fields (`exit_code`, `oom_killed`, `log_tail`), so tools/jobs.py
handles every failure through one path (handle_failure: playbook match, repeat count, fix).

Exit codes: a job killed by signal N is reported as 128+N on every platform (the shell's convention, what `docker wait`
and a shell wrapper report), not as subprocess's -N. Exit 137 (SIGKILL) of a job nobody stopped is taken as the
out-of-memory killer (the kernel's, a container's memory limit) unless the platform knows better.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from tao_finetune.agent.errors import LimitReached

TAIL_CHARS = 3000  # the tail a blocking job returns (and the failure message carries)
STATUS_TAIL_CHARS = 1500  # the tail of status() while polling a detached job
SIGKILL_EXIT = 128 + signal.SIGKILL
STOP_GRACE_S = 10.0  # SIGTERM -> SIGKILL: the time a stopped or cut job gets for train.py's preemption checkpoint


def tail(path: Path, chars: int = TAIL_CHARS) -> str:
    """The last `chars` characters of a text file ('' if absent)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def exit_code(code: int | None) -> int:
    """One convention for every platform: -N (killed by signal N, as subprocess reports it) becomes 128+N; None = -1."""
    if code is None:
        return -1
    return 128 - code if code < 0 and -code < 64 else code


def read_exit_file(path: Path) -> int | None:
    """The exit code a job's exit file holds (the worker and the shell wrapper write it); None when the file is missing
    or holds no number."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.lstrip("-").isdigit() else None


def oom_killed(code: int, *, oom_flag: bool = False, stopped: bool = False) -> bool:
    """The platform saw an OOM kill, or the job died of SIGKILL without being stopped (the OOM killer's signal)."""
    return bool(oom_flag) or (code == SIGKILL_EXIT and not stopped)


def evidence_line(kind: str, code: int, *, oom: bool = False, stopped: bool = False, state: str = "") -> str:
    """The line appended to a failed job's log tail ('' for a success or a stop the user asked for).

    `state` is a platform's own evidence when it has one (SLURM's TIMEOUT, NODE_FAIL, OUT_OF_MEMORY lines)."""
    if stopped or code == 0 and not state:
        return ""
    if state:
        return state
    if oom:
        return (f"OutOfMemoryError: the {kind} job was killed (exit {code}) by the out-of-memory killer: halve the batch size "
                "and double gradient_accumulation_steps, or enable gradient checkpointing")
    if code > 128 and code - 128 < 64:
        try:
            name = signal.Signals(code - 128).name
        except ValueError:
            name = f"signal {code - 128}"
        return f"TAO_JOB_EXIT: the {kind} job was killed by {name} (exit {code})"
    return f"TAO_JOB_EXIT: the {kind} job exited with code {code}"


def failure_tail(kind: str, code: int, log_tail: str, *, oom: bool = False, stopped: bool = False, state: str = "") -> str:
    """The log tail with the evidence line appended (unchanged for a success or a stop)."""
    line = evidence_line(kind, code, oom=oom, stopped=stopped, state=state)
    return f"{log_tail.rstrip()}\n{line}" if line else log_tail


def end_process(proc: subprocess.Popen, grace_s: float = STOP_GRACE_S, *, group: bool = False) -> int:
    """End a process the platform started, the way `stop` does: SIGTERM (to its whole process group with `group`: a job's
    data-loader workers, a CLI's plugin), up to `grace_s` for it to exit (train.py's preemption handler writes a
    checkpoint and exits 75), then SIGKILL. With `group`, whatever is left of the group is killed once the leader is gone.
    A Ctrl-C during the grace kills at once and is re-raised. Returns the exit code (exit_code's convention)."""

    def send(sig: int) -> None:
        try:
            if group:
                os.killpg(proc.pid, sig)
            elif proc.poll() is None:
                proc.send_signal(sig)
        except (ProcessLookupError, PermissionError):
            pass

    if proc.poll() is None:
        send(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
        except KeyboardInterrupt:
            send(signal.SIGKILL)
            proc.wait(timeout=10)
            raise
    if group:
        send(signal.SIGKILL)  # stragglers of the group (the leader has exited)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:  # unkillable (D state): reported as still running
        return -1
    return exit_code(proc.returncode)


class Watchdog:
    """Cuts a blocking job at the run's deadline (ctx.deadline, from --max-hours): at that moment `cut()` stops the job
    (the platform's own stop: end the process group with a grace period, stop the container, scancel, end an image build),
    and `check()` after the job's wait raises LimitReached, so the run ends with ExitCode.LIMIT (5) like every other
    limit; the loop saves the run state. Leaving the `with` block waits for a cut that started to finish.

        with Watchdog(ctx, kind, cut) as dog:
            ...wait for the job...
        dog.check(code)
    """

    def __init__(self, ctx, kind: str, cut: Callable[[], None]):
        self.ctx, self.kind, self.cut = ctx, kind, cut
        self.fired = threading.Event()
        self._timer: threading.Timer | None = None

    def _fire(self) -> None:
        self.fired.set()
        try:
            self.cut()
        except Exception:  # noqa: BLE001  (the waiting thread sees the job end, or the check below reports the cut)
            pass

    def __enter__(self) -> "Watchdog":
        deadline = getattr(self.ctx, "deadline", None)
        if deadline is not None:
            self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            if self.fired.is_set():
                self._timer.join(STOP_GRACE_S + 60)  # the cut is under way (a grace period): the job is gone after it

    def check(self, code: int | None = None) -> None:
        """LimitReached when the deadline cut the job (after the platform cleaned up); `code` is the job's exit code
        (exit_code's convention) where the platform has one, recorded in the job_cut event."""
        if self.fired.is_set():
            extra = {} if code is None else {"exit_code": code}
            self.ctx.session.event("job_cut", job=self.kind, reason="deadline (--max-hours)", **extra)
            raise LimitReached(deadline_message(f"while the {self.kind} job ran: the job was stopped"))


def deadline_message(what: str) -> str:
    """The one wording of a run cut at --max-hours (agent/loop.py's own check says the same)."""
    return f"wall-time limit reached (--max-hours) {what}; raise it and re-run the same command to resume"
