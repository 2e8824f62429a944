"""The one reader of the generated project's logs: logs/metrics.jsonl and reports/tracking.json.

The training loop appends one JSON object per line to logs/metrics.jsonl and flushes (common.log_jsonl); the agent
reads it while the job is still writing, so a reader meets a half-written last line, and after a crash or a full
disk torn lines, NUL padding or bytes that are not UTF-8. `read_records` takes what decodes and skips the rest;
`console` (live view, `status`), `tools/jobs` (train_status, the loss watch) and `tools/report` all read through it.

reports/tracking.json is written by the project's `Tracker` (common.py): where the TensorBoard event files and the
W&B run are. `tracking()` reads it into a typed record; `tracking_lines()` are the lines the end of a run, the model
card and the report show.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

METRICS_LOG = Path("logs") / "metrics.jsonl"
TRACKING = Path("reports") / "tracking.json"


def read_records(path: Path, offset: int = 0) -> list[dict[str, Any]]:
    """The JSON-object lines of a JSONL log, from byte `offset` on (an attempt's own records).

    An offset of 0, or one past the end (the log was replaced since), reads the whole file. Tolerant decoding: bytes
    that are not UTF-8 become U+FFFD, and blank lines, a truncated last line, torn lines and lines that are not a JSON
    object are skipped. A missing or unreadable file has no records.
    """
    try:
        with Path(path).open("rb") as f:
            size = f.seek(0, 2)
            f.seek(offset if 0 < offset <= size else 0)
            data = f.read()
    except OSError:
        return []
    out = []
    for line in data.decode("utf-8", errors="replace").split("\n"):
        line = line.strip().strip("\x00")
        if not line:
            continue
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def training_steps(path: Path, offset: int = 0) -> list[dict[str, Any]]:
    """Per-step training records (not events) with an integer step and a finite numeric loss."""
    return [r for r in read_records(path, offset)
            if "event" not in r and isinstance(r.get("step"), int) and not isinstance(r.get("step"), bool)
            and isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]


class TensorBoardRun(BaseModel):
    logdir: str | None = None  # relative to the run dir
    error: str | None = None


class WandbRun(BaseModel):
    mode: str | None = None  # online | offline
    url: str | None = None  # online runs only
    project: str | None = None
    run_dir: str | None = None  # the run's local files (offline: what `wandb sync` uploads), relative to the run dir
    error: str | None = None


class Tracking(BaseModel):
    """reports/tracking.json, as the project's Tracker writes it."""
    tensorboard: TensorBoardRun | None = None
    wandb: WandbRun | None = None


def tracking(run_dir: Path) -> Tracking | None:
    """The run's tracking record; None when the project wrote none (no training yet) or it does not validate."""
    try:
        return Tracking.model_validate_json((Path(run_dir) / TRACKING).read_bytes())
    except (OSError, ValidationError, ValueError):
        return None


def tracking_lines(run_dir: Path, absolute: bool = True) -> list[str]:
    """What a person runs to see the training curves: the TensorBoard command and the W&B URL or offline run.

    absolute: paths under the run dir as absolute paths (the console); else relative (the card, inside the repo).
    """
    t = tracking(run_dir)
    if t is None:
        return []
    where = (lambda rel: str((Path(run_dir) / rel).resolve())) if absolute else (lambda rel: rel)
    lines = []
    if t.tensorboard and t.tensorboard.logdir:
        lines.append(f"tensorboard: tensorboard --logdir {where(t.tensorboard.logdir)}")
    elif t.tensorboard and t.tensorboard.error:
        lines.append(f"tensorboard: not written ({t.tensorboard.error})")
    if t.wandb and t.wandb.url:
        lines.append(f"wandb: {t.wandb.url}")
    elif t.wandb and t.wandb.run_dir:
        lines.append(f"wandb: offline run {where(t.wandb.run_dir)} (upload: wandb sync {where(t.wandb.run_dir)})")
    elif t.wandb and t.wandb.error:
        lines.append(f"wandb: not logged ({t.wandb.error})")
    return lines
