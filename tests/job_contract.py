"""The one report of a failed job that every platform gives (tools/runtime/outcome.py): the exit code, the job's own log
tail, one evidence line, and through it the same playbook match and the same error of tools/jobs.handle_failure.
Asserted the same way for local (worker and plain process), Docker and SLURM by their test files."""

import pytest

from tao_finetune.tools import jobs
from tao_finetune.tools.base import ToolError

# exits 3 after printing a line the playbook's label_range entry matches (an advice entry: nothing is changed)
FAILING_JOB = "import sys\nprint('step 1', flush=True)\nprint('IndexError: Target 7 is out of bounds.', flush=True)\nsys.exit(3)\n"
# dies of SIGKILL, as under the kernel's out-of-memory killer
KILLED_JOB = "import os, signal\nprint('allocating', flush=True)\nos.kill(os.getpid(), signal.SIGKILL)\n"


def check_failed_job(ctx, res, kind: str) -> str:
    """A job that ran FAILING_JOB: exit 3, the log tail, the evidence line, playbook label_range; returns the ToolError."""
    assert res.exit_code == 3 and not res.detached, (res.exit_code, res.log_tail)
    lines = res.log_tail.rstrip().splitlines()
    assert "step 1" in lines and "IndexError: Target 7 is out of bounds." in lines, res.log_tail
    assert lines[-1] == f"TAO_JOB_EXIT: the {kind} job exited with code 3"
    with pytest.raises(ToolError) as err:
        jobs.handle_failure(ctx, kind, res.exit_code, res.log_tail)
    msg = str(err.value)
    assert msg.startswith(f"{kind} failed (exit 3), attempt 1/2 for this error; playbook label_range: "), msg
    assert "IndexError: Target 7 is out of bounds." in msg
    return msg


def check_killed_job(res, kind: str) -> None:
    """A job that ran KILLED_JOB: exit 137 on every platform, reported as the out-of-memory killer (playbook oom)."""
    assert res.exit_code == 137, (res.exit_code, res.log_tail)
    lines = res.log_tail.rstrip().splitlines()
    assert "allocating" in lines and lines[-1].startswith(f"OutOfMemoryError: the {kind} job was killed (exit 137)"), res.log_tail
    assert jobs.consult_playbook(res.log_tail)["id"] == "oom"
