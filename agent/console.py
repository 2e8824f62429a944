"""What `tao-finetune run` shows while it works, and the training progress `status` prints.

On a terminal: a rich Live view (rich >= 13: rich.live.Live, rich.progress.Progress) with the step the run is in
(n/6), the current tool on one line, a progress bar with loss, throughput and ETA during training (read from
logs/metrics.jsonl, the same file the project writes), a bar over the Dockerfile steps during an image build, and the
job's last log line during data preparation and evaluation. Finished steps and errors scroll above.
Elsewhere (a pipe, CI) plain lines. --quiet: nothing until the result; --verbose: tool arguments and results too.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import Any, Literal

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.text import Text

from tao_finetune.agent import gates
from tao_finetune.agent.metrics import METRICS_LOG, read_records

Mode = Literal["quiet", "normal", "verbose"]
# legacy builder "Step 2/5 : RUN ..." and BuildKit plain progress "#7 [2/5] RUN ..." ("[stage 2/5]" in multi-stage builds)
BUILD_STEP = re.compile(r"^\[build\] (?:Step (\d+)/(\d+) : |#\d+ \[(?:[^\]]+ )?(\d+)/(\d+)\] )(.*)$")
JOB_LINE = re.compile(r"^\[(\w+)\] (.*)$")
JOB_PROGRESS = re.compile(r"^progress: (.+?) (\d+)/(\d+)\s*$")  # printed by the project's sources.progress (prepare_data.py)
TOOL_WORDS = {"docker_build": "building the image", "train_status": "training", "hf_push": "pushing to the Hub"}


def training_eta(run_dir: Path) -> dict[str, Any] | None:
    """step, total, loss, samples/s, steps/s, eta_s and done from logs/metrics.jsonl; None before training logs anything."""
    recs = read_records(run_dir / METRICS_LOG)
    if not recs:
        return None
    i0 = max((i for i, r in enumerate(recs) if r.get("event") in ("start", "resume")), default=0)
    start = recs[i0] if recs[i0].get("event") in ("start", "resume") else {}
    tail = recs[i0:]
    steps = [r for r in tail if isinstance(r.get("step"), int) and "event" not in r]
    done = any(r.get("event") == "done" for r in tail)
    last = steps[-1] if steps else {}
    total = last.get("total_steps") or start.get("total_steps")
    step = int(last.get("step") or start.get("step") or 0)
    first_step = int(start.get("step") or 0)
    timed = [r for r in steps if isinstance(r.get("time"), (int, float))]
    rate = None
    if isinstance(start.get("time"), (int, float)) and timed and timed[-1]["step"] > first_step and timed[-1]["time"] > start["time"]:
        rate = (timed[-1]["step"] - first_step) / (timed[-1]["time"] - start["time"])
    elif len(timed) >= 2 and timed[-1]["time"] > timed[0]["time"]:
        rate = (timed[-1]["step"] - timed[0]["step"]) / (timed[-1]["time"] - timed[0]["time"])
    eta = 0.0 if done else ((total - step) / rate if rate and total else None)
    return {"step": step, "total": total, "loss": last.get("loss"), "samples_per_s": last.get("samples_per_s"),
            "steps_per_s": rate, "eta_s": eta, "done": done, "epoch": last.get("epoch")}


def log_size(run_dir: Path, job: str) -> int:
    try:
        return (run_dir / "logs" / f"{job}.log").stat().st_size
    except OSError:
        return 0


def job_progress(run_dir: Path, job: str, since: int = 0, tail_bytes: int = 16384) -> tuple[str, int, int] | None:
    """(what, done, total) from the last `progress: WHAT k/N` line of logs/<job>.log written after byte `since` (the
    log is appended to across attempts), else None."""
    try:
        with (run_dir / "logs" / f"{job}.log").open("rb") as f:
            size = f.seek(0, 2)
            f.seek(max(since if since <= size else 0, size - tail_bytes))
            lines = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        m = JOB_PROGRESS.match(line.strip())
        if m and int(m.group(3)) > 0:
            return m.group(1), int(m.group(2)), int(m.group(3))
    return None


def fmt_eta(seconds: float | None) -> str:
    if seconds is None:
        return "ETA --:--"
    s = int(round(seconds))
    return f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"ETA {s // 60:02d}:{s % 60:02d}"


def progress_line(p: dict[str, Any]) -> str:
    """One line of training progress, for `status` and plain output."""
    total = p.get("total")
    pct = f" ({100 * p['step'] / total:.0f} %)" if total else ""
    parts = [f"training step {p['step']}/{total or '?'}{pct}"]
    if isinstance(p.get("loss"), (int, float)):
        parts.append(f"loss {p['loss']:.4g}")
    if p.get("samples_per_s"):
        parts.append(f"{p['samples_per_s']:,.0f} samples/s")
    parts.append("done" if p.get("done") else fmt_eta(p.get("eta_s")))
    return " · ".join(parts)


class LiveView:
    """Session-log and job-output sink for `run`; use as a context manager around the agent loop."""

    def __init__(self, console: Console, run_dir: Path, mode: Mode = "normal", refresh_s: float = 0.5, step: int = 1):
        self.console, self.run_dir, self.mode, self.refresh_s = console, run_dir, mode, refresh_s
        self.live_mode = mode == "normal" and console.is_terminal
        self.step = step
        self.tool, self.tool_args, self.last_line = "", {}, ""
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self.bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(bar_width=30), MofNCompleteColumn(),
                            TextColumn("{task.fields[info]}"), console=console)
        self.train_task: Any = None
        self.build_task: Any = None
        self.job_task: Any = None  # data preparation's bar, from its log's progress lines
        self._job_since = 0
        self.live: Live | None = None
        self._thread: threading.Thread | None = None
        self._train_seen = 0.0
        self.chat = False  # `tao-finetune chat`: model text shown as it arrives, and a row with the six steps' state
        self.met: dict[int, bool] = {}
        self.streamed = ""  # the model's reply so far, while it streams (chat)

    def __enter__(self) -> "LiveView":
        if self.live_mode:
            self.live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)
            self.live.__enter__()
            self._thread = threading.Thread(target=self._poll, name="tao-live", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=2)
        if self.live:
            self.live.__exit__(None, None, None)
            self.live = None

    def paused(self, fn, *args):
        """Call fn (e.g. a prompt) with the live view stopped: rich cannot redraw over an input line."""
        if self.live:
            self.live.stop()
        try:
            return fn(*args)
        finally:
            if self.live:
                self.live.start()

    def print(self, text: str | Text) -> None:
        if self.mode != "quiet":
            (self.live.console if self.live else self.console).print(text)

    def event(self, ev: dict[str, Any]) -> None:
        """SessionLog echo: one session event."""
        if self.mode == "quiet":
            return
        kind = ev.get("kind")
        with self._lock:
            if kind == "tool_call":
                self.tool, self.tool_args, self.last_line = str(ev.get("name", "")), ev.get("input") or {}, ""
                if self.tool == "docker_run":
                    self._job_since = log_size(self.run_dir, str(self.tool_args.get("job")))
                if self.mode == "verbose":
                    self.print(Text.assemble(("→ ", "cyan"), (self.tool, "cyan"), " ", json.dumps(self.tool_args)[:2000]))
                elif not self.live_mode:
                    self.print(Text.assemble(("→ ", "cyan"), self.label()))
            elif kind == "tool_result":
                content = str(ev.get("content") or "")
                if ev.get("is_error"):
                    self.print(Text.assemble(("  ✗ ", "red"), f"{ev.get('name')}: {content.splitlines()[0][:300] if content else ''}"))
                elif self.mode == "verbose":
                    self.print(Text.assemble(("  ✓ ", "green"), content[:2000]))
                if ev.get("name") == "docker_build" and self.build_task is not None:
                    self.bar.remove_task(self.build_task)
                    self.build_task = None
                if ev.get("name") in ("train_status", "docker_run"):
                    self._train_update(force=True)
                if self.job_task is not None:
                    self.bar.remove_task(self.job_task)
                    self.job_task = None
                self.tool = ""
            elif kind == "gate" and not ev.get("met"):
                self.met[int(ev["step"])] = False
            elif kind == "gate" and ev.get("met"):
                step = int(ev["step"])
                self.met[step] = True
                self.print(Text.assemble(("✅ ", "green"), (f"step {step}/6 ", "bold"), gates.STEP_NAMES[step]))
                self.step = min(6, step + 1)
            elif kind == "response" and (self.mode == "verbose" or self.chat):
                self.streamed = ""
                text = " ".join(b.get("text", "") for b in ev.get("content") or [] if b.get("type") == "text").strip()
                if text:
                    self.print(Text(text[:4000], style="" if self.chat else "dim"))
            elif kind == "note" and self.mode == "verbose":
                self.print(Text(f"  note: {ev.get('text')}", style="dim"))
        self._refresh()

    def stream_text(self, delta: str) -> None:
        """Model-client echo (chat): a piece of the reply as it streams; shown in the live view until the turn is complete."""
        with self._lock:
            self.streamed += delta
        self._refresh()

    def job_output(self, line: str) -> None:
        """Platform echo: one line of a job's or the image build's output (shown in full only with --verbose)."""
        if self.mode == "quiet":
            return
        with self._lock:
            m = BUILD_STEP.match(line)
            if m:
                n, total = int(m.group(1) or m.group(3)), int(m.group(2) or m.group(4))
                if self.build_task is None:
                    self.build_task = self.bar.add_task("building image", total=total, info="")
                self.bar.update(self.build_task, completed=n - 1, total=total, info=m.group(5)[:60])
            mj = JOB_LINE.match(line)
            self.last_line = (mj.group(2) if mj else line).strip()[:200]
            if self.mode == "verbose":
                self.print(Text(line, style="dim"))
        self._refresh()

    def label(self) -> str:
        if self.tool == "docker_run":
            return f"job {self.tool_args.get('job', '?')}"
        return TOOL_WORDS.get(self.tool, self.tool.replace("_", " "))

    def _train_update(self, force: bool = False) -> None:
        try:
            mtime = (self.run_dir / "logs" / "metrics.jsonl").stat().st_mtime
        except OSError:
            return
        if mtime == self._train_seen and not force:
            return
        self._train_seen = mtime
        p = training_eta(self.run_dir)
        if not p or not p.get("total"):
            return
        if p["done"]:
            if self.train_task is not None:
                self.bar.remove_task(self.train_task)
                self.train_task = None
                self.print(Text.assemble(("  ", ""), (progress_line(p), "green")))
            return
        info = " · ".join(x for x in (
            f"loss {p['loss']:.4g}" if isinstance(p.get("loss"), (int, float)) else "",
            f"{p['samples_per_s']:,.0f} samples/s" if p.get("samples_per_s") else "", fmt_eta(p.get("eta_s"))) if x)
        if self.train_task is None:
            self.train_task = self.bar.add_task("training", total=p["total"], info=info)
        self.bar.update(self.train_task, completed=p["step"], total=p["total"], info=info)
        if not self.live_mode and self.mode == "normal":
            self.print(Text(f"  {progress_line(p)}", style="dim"))

    def _render(self) -> Group:
        head = Text.assemble((f"step {self.step}/6 ", "bold"), (gates.STEP_NAMES.get(self.step, ""), "bold"))
        if self.tool:
            head.append("  ·  ")
            head.append(self.label(), style="cyan")
        parts: list[Any] = [head]
        if self.chat:
            parts.insert(0, self.steps_row())
        if self.bar.tasks:
            parts.append(self.bar)
        if self.chat and self.streamed:
            parts.append(Text(" ".join(self.streamed.split())[-300:], style="italic", overflow="ellipsis"))
        if self.tool and self.last_line:
            parts.append(Text(f"  {self.last_line}", style="dim", overflow="ellipsis", no_wrap=True))
        return Group(*parts)

    def steps_row(self) -> Text:
        """The six steps on one line: ✅ met, ▶ the current one, · not reached."""
        row = Text()
        for n, name in gates.STEP_NAMES.items():
            mark, style = ("✅", "green") if self.met.get(n) else ("▶", "bold cyan") if n == self.step else ("·", "dim")
            row.append(f"{mark} {n} {name}", style=style)
            row.append("   ")
        return row

    def _refresh(self) -> None:
        if self.live:
            with self._lock:
                self.live.update(self._render())

    def _job_update(self) -> None:
        """A bar for a blocking job that reports progress (prepare_data.py's decoding/tokenizing)."""
        job = self.tool_args.get("job") if self.tool == "docker_run" else None
        p = job_progress(self.run_dir, str(job), self._job_since) if job and job != "train" else None
        if p is None:
            return
        what, done, total = p
        if self.job_task is None:
            self.job_task = self.bar.add_task(str(job), total=total, info=what)
        self.bar.update(self.job_task, completed=done, total=total, info=what)

    def _poll(self) -> None:
        while not self._stop.wait(self.refresh_s):
            with self._lock:
                self._train_update()
                self._job_update()
            self._refresh()
