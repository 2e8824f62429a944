"""Run state kept beside config.yaml: gate history, typed evidence of the work done, error counters.

Evidence is written only by the tool that did the work (a job tool, the push tool); a gate holds only when the
record exists and the files it names still have the recorded sha256 digests. Nothing the model can write counts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, Field, PrivateAttr, ValidationError

from tao_finetune.agent.config import ConfigError, atomic_write_text

STATE_FILE = ".tao/state.json"


class GateRecord(BaseModel):
    """One evaluation of a gate."""

    step: int
    met: bool
    missing: list[str]
    at: float


class FileDigest(BaseModel):
    """A file a job produced, by path relative to the run dir, with its size and sha256."""

    path: str
    size: int
    sha256: str


class JobEvidence(BaseModel):
    """What one job ran and what it produced (written by the job tools only)."""

    job: str
    argv: list[str]
    platform: str
    image: str | None = None
    exit_code: int
    started: float
    ended: float
    outputs: list[FileDigest] = Field(default_factory=list)
    inputs: list[FileDigest] = Field(default_factory=list, description="the project sources the job ran (audit trail of job code)")
    facts: dict[str, Any] = Field(default_factory=dict, description="numbers the tool read from the outputs (losses, metric)")


class PushRecord(BaseModel):
    """A Hub push: the commit the tool made and the Hub's own answer when it was re-read."""

    repo_id: str
    url: str
    commit: str
    commit_url: str | None = None
    confirmed_sha: str | None = Field(None, description="the repo's sha as the Hub reported it after the push")
    files: list[str] = Field(default_factory=list)
    at: float

    @property
    def confirmed(self) -> bool:
        return bool(self.commit) and self.confirmed_sha == self.commit


class FetchRecord(BaseModel):
    """A live page fetched by fetch_docs in this run (the only URLs a rank=live recipe value may cite)."""

    url: str
    final_url: str
    sha256: str
    at: float


class Acceptance(BaseModel):
    """The user accepted a result a gate questioned (e.g. a model that did not beat its baseline)."""

    what: str
    answer: str
    evidence: dict[str, Any] = Field(default_factory=dict)
    at: float


class RunState(BaseModel):
    """What the run has done that is not a file of its own."""

    records: dict[str, Any] = Field(default_factory=dict)
    evidence: dict[str, JobEvidence] = Field(default_factory=dict)
    push: PushRecord | None = None
    fetches: list[FetchRecord] = Field(default_factory=list)
    reference_reads: list[str] = Field(default_factory=list)
    learning_accepted: Acceptance | None = None
    gates: list[GateRecord] = Field(default_factory=list)
    live_attempts: dict[str, list[dict[str, str]]] = Field(default_factory=dict)
    error_counts: dict[str, int] = Field(default_factory=dict)
    pending_question: str | None = None
    config_sha256: str | None = Field(None, description="digest of config.yaml as the agent last wrote it (tamper check)")
    _written_sha256: str | None = PrivateAttr(None)
    _load_note: str | None = PrivateAttr(default=None)

    @property
    def load_note(self) -> str | None:
        """One line when load() had to repair a corrupt state file, else None."""
        return self._load_note

    @classmethod
    def load(cls, run_dir: Path, repair: bool = True) -> "RunState":
        """Read the state of a run dir, or a fresh state.

        A corrupt file (not UTF-8, not JSON, wrong types) is repaired: every field that still validates is kept, the
        rest start empty (the gates re-derive what they can from the run dir's files), the damaged file is kept as
        state.json.corrupt-<time> when `repair`, and `load_note` says what happened in one line.
        """
        path = run_dir / STATE_FILE
        if not path.exists():
            return cls()
        raw: Any = None
        try:
            raw = json.loads(path.read_bytes().decode("utf-8"))
            return cls.model_validate(raw)
        except (ValueError, ValidationError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            reason = " ".join(str(err).split())[:120]
        except IsADirectoryError:
            raise ConfigError(f"{str(path)!r} is a directory, not the run state file: move it away") from None
        kept: dict[str, Any] = {}
        for name in cls.model_fields:
            if isinstance(raw, dict) and name in raw:
                try:
                    cls.model_validate({name: raw[name]})
                    kept[name] = raw[name]
                except ValidationError:
                    pass
        state = cls.model_validate(kept)
        note = f"{STATE_FILE} was corrupt ({reason}); kept {', '.join(sorted(kept)) or 'nothing'}, the gates re-check the rest from the run dir"
        if repair:
            backup = path.with_name(f"state.json.corrupt-{int(time.time() * 1000)}")
            path.replace(backup)
            note += f"; the damaged file is {backup.name}"
        state._load_note = note
        return state

    def save(self, run_dir: Path) -> None:
        """Write atomically; the digest of what was written is kept for the tamper check."""
        text = self.model_dump_json(indent=1)
        atomic_write_text(run_dir / STATE_FILE, text)
        self._written_sha256 = hashlib.sha256(text.encode()).hexdigest()

    @property
    def written_sha256(self) -> str | None:
        """sha256 of the state file as this process last wrote it (None before the first save)."""
        return self._written_sha256

    def record(self, key: str, value: Any) -> None:
        """Store a step result (e.g. 'build', 'audit')."""
        self.records[key] = value

    def log_gate(self, step: int, met: bool, missing: list[str]) -> bool:
        """Append a gate result if it changed since the last one for that step; True if appended."""
        last = next((g for g in reversed(self.gates) if g.step == step), None)
        if last and last.met == met and last.missing == missing:
            return False
        self.gates.append(GateRecord(step=step, met=met, missing=missing, at=time.time()))
        return True


# ---------------------------------------------------------------- digests
_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: Path) -> str:
    """sha256 of a file, cached by (path, size, mtime) so re-checking large checkpoints after every tool stays cheap."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _CACHE:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        _CACHE[key] = h.hexdigest()
    return _CACHE[key]


def digest_files(run_dir: Path, paths: Iterable[Path]) -> list[FileDigest]:
    """Digests of the given files (relative to run_dir), sorted by path; missing files are skipped."""
    root = run_dir.resolve()
    out = []
    for p in sorted(set(paths)):
        if p.is_file() and not p.is_symlink():
            out.append(FileDigest(path=str(p.resolve().relative_to(root)), size=p.stat().st_size, sha256=sha256_file(p)))
    return out


def project_sources(run_dir: Path) -> list[Path]:
    """The generated project's code and build inputs (what a job runs)."""
    top = [p for p in run_dir.glob("*") if p.suffix in (".py", ".txt", ".toml", ".cfg") or p.name == "Dockerfile"]
    return top + list((run_dir / "tests").glob("*.py"))


def record_job(state: RunState, run_dir: Path, job: str, argv: list[str], platform: str, image: str | None, exit_code: int,
               started: float, outputs: Iterable[Path], facts: dict[str, Any] | None = None) -> JobEvidence:
    """Record a finished job with digests of what it produced and of the code it ran (called by the job tools after checking the outputs)."""
    ev = JobEvidence(job=job, argv=list(argv), platform=platform, image=image, exit_code=exit_code, started=started,
                     ended=time.time(), outputs=digest_files(run_dir, outputs), inputs=digest_files(run_dir, project_sources(run_dir)),
                     facts=dict(facts or {}))
    state.evidence = {**state.evidence, job: ev}
    return ev


def verify_job(state: RunState, run_dir: Path, job: str) -> str | None:
    """None when the job's evidence exists and every recorded output still matches its digest, else why not."""
    ev = state.evidence.get(job)
    if ev is None:
        return f"no record of a {job} job"
    if ev.exit_code != 0:
        return f"{job} job exited {ev.exit_code}"
    if not ev.outputs:
        return f"{job} job recorded no outputs"
    for f in ev.outputs:
        p = run_dir / f.path
        try:
            if not p.is_file() or p.stat().st_size != f.size or sha256_file(p) != f.sha256:
                return f"{f.path} changed since the {job} job wrote it"
        except OSError:
            return f"{f.path} is unreadable"
    return None


def files_since(root: Path, since: float) -> list[Path]:
    """Files under root modified at or after `since` (seconds), skipping .tao/ and .git/."""
    if not root.is_dir():
        return []
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".tao", ".git")]
        for name in filenames:
            p = Path(dirpath) / name
            try:
                if not p.is_symlink() and p.stat().st_mtime >= since - 1:
                    out.append(p)
            except OSError:
                continue
    return out
