"""An exclusive lock on a run's output dir, so two runs never interleave their session log or jobs.

The lock is `.tao/lock`, created with O_CREAT|O_EXCL and holding the owner's PID, host and process start time.
A lock whose process is gone (or whose PID now belongs to a different process) is stale and is taken over.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from tao_finetune.agent.errors import BadInput

LOCK_FILE = ".tao/lock"


def _start_time(pid: int) -> str | None:
    """The kernel's start time of a process (field 22 of /proc/PID/stat), to tell a reused PID apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists and is not a zombie (an exited child nobody reaped, state Z/X in
    /proc/PID/stat); the one liveness check of the run lock and the local platform's jobs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def read_lock(run_dir: Path) -> dict | None:
    """The lock's record, or None when there is none; an unreadable lock reads as {} (stale)."""
    try:
        data = json.loads((run_dir / LOCK_FILE).read_text())
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def holder(run_dir: Path) -> int | None:
    """PID of the live process holding the run dir's lock, or None."""
    info = read_lock(run_dir)
    if not info:
        return None
    try:
        pid = int(info.get("pid"))
    except (TypeError, ValueError):
        return None
    if info.get("host") not in (None, socket.gethostname()):
        return pid  # another host's process cannot be checked: treat as held
    if not pid_alive(pid):
        return None
    started = info.get("start_time")
    if started and _start_time(pid) not in (None, started):
        return None  # the PID was reused by another process
    return pid


class RunLock:
    """`with RunLock(run_dir):` holds the run dir exclusively; a second holder gets BadInput (exit 2) naming the PID."""

    def __init__(self, run_dir: Path, command: str = "run"):
        self.path = run_dir / LOCK_FILE
        self.run_dir = run_dir
        self.command = command
        self.took_over: dict | None = None
        self.held = False

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "start_time": _start_time(os.getpid()),
                             "command": self.command, "since": time.time()})
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                pid = holder(self.run_dir)
                if pid is not None and pid != os.getpid():
                    info = read_lock(self.run_dir) or {}
                    since = time.strftime("%H:%M:%S", time.localtime(info["since"])) if isinstance(info.get("since"), (int, float)) else "?"
                    raise BadInput(f"{str(self.run_dir)!r} is in use by another tao-finetune (PID {pid}, since {since}): wait for it to end, "
                                   f"or stop it with `tao-finetune stop {self.run_dir}`") from None
                self.took_over = read_lock(self.run_dir)
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                f.write(record)
            self.held = True
            return self
        raise BadInput(f"could not take the lock {str(self.path)!r}: another process keeps re-creating it")

    def release(self) -> None:
        if self.held:
            info = read_lock(self.run_dir)
            if info and info.get("pid") == os.getpid():
                self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
