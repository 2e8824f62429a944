"""What every tool receives: the config, the run dir, the state, the session log and the platform."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from tao_finetune.agent.config import RunConfig, save_config
from tao_finetune.agent.errors import ToolError
from tao_finetune.agent.state import RunState

if TYPE_CHECKING:
    from tao_finetune.agent.secrets import Credentials
    from tao_finetune.agent.session import SessionLog

JobKind = Literal["prepare", "smoke", "baseline", "train", "eval", "infer", "merge", "tests"]


@dataclass
class JobResult:
    """The outcome of one job run on a platform."""

    kind: str
    exit_code: int
    log_path: Path
    log_tail: str = ""
    detached: bool = False
    handle: str = ""


class Platform(Protocol):
    """Where the generated project is built and its jobs run (local processes or Docker)."""

    name: str

    def build(self, ctx: "RunContext") -> dict:
        """Build the runtime for the project in ctx.run_dir; returns a record with 'ok' and details."""
        ...

    def run(self, ctx: "RunContext", kind: JobKind, argv: list[str], detach: bool = False) -> JobResult:
        """Run `argv` (e.g. ['python', 'train.py', '--smoke']) in the project; raises ToolError on expected failures."""
        ...

    def status(self, ctx: "RunContext", kind: JobKind) -> dict:
        """State of a detached job: running, exit_code, log tail."""
        ...

    def stop(self, ctx: "RunContext", kind: JobKind) -> None:
        """Stop a detached job."""
        ...


@dataclass
class RunContext:
    """Shared state for one run."""

    config: RunConfig
    session: "SessionLog"
    creds: "Credentials"
    state: RunState = field(default_factory=RunState)
    platform: Platform | None = None
    yes: bool = False
    deadline: float | None = None  # time.monotonic() when --max-hours runs out; tools that wait stop there

    @property
    def run_dir(self) -> Path:
        return self.config.out

    def save(self) -> None:
        """Persist config.yaml and the run state atomically."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.config, self.run_dir / "config.yaml")
        from tao_finetune.agent.policy import file_sha256

        self.state.config_sha256 = file_sha256(self.run_dir / "config.yaml")  # checked before every tool call (policy)
        self.state.save(self.run_dir)

    def confine(self, rel: str) -> Path:
        """Resolve a path inside the run dir; refuses absolute paths, '..' and symlink escapes."""
        p = Path(rel)
        if p.is_absolute() or ".." in p.parts:
            raise ToolError(f"path {rel!r} must be relative to the output dir, without '..'")
        root = self.run_dir.resolve()
        target = (root / p).resolve()
        if target != root and root not in target.parents:
            raise ToolError(f"path {rel!r} resolves outside the output dir")
        return target
