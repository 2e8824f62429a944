"""PROGRESS.md, the run's journal (emit_progress_log): one line per event that happened, never one per thing not yet done.

✅ a gate became met (with what it recorded: image, smoke loss, metric baseline → fine-tuned, Hub URL),
⚠️ a fallback or a recovered error (a tool error the agent can retry, a gate that stopped holding), and
❌ a real failure; the final stop (done, question, limit, failure, interruption) is always the last line.
"""

from __future__ import annotations

import time
from pathlib import Path

from tao_finetune.agent import gates
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.errors import AskUser, Done, ExitCode, LoopExit

FILE = "PROGRESS.md"


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


def gate_details(step: int, run_dir: Path, ctx: RunContext) -> str:
    """What the gate's step produced, in a few words."""
    cfg, rec = ctx.config, ctx.state.records
    if step == 1:
        ds = cfg.dataset_id or (Path(cfg.local_dataset_path).name if cfg.local_dataset_path else "?")
        return f"{cfg.task_type}, {cfg.model_id} on {ds}"
    if step == 2:
        image = cfg.image or cfg.ngc_image or (rec.get("image") or {}).get("image")
        hw = f"{cfg.gpu_count} × {cfg.gpu_name}" if cfg.gpu_count and cfg.gpu_name else "CPU"
        return f"{hw}; image {image or 'local Python'}"
    if step == 3:
        n = len([s for s in gates.RECIPE_SLOTS if s in cfg.recipe])
        ranks = sorted({cfg.recipe[s].rank for s in gates.RECIPE_SLOTS if s in cfg.recipe})
        return f"{n} recipe slots ({', '.join(ranks)})"
    if step == 4:
        smoke = gates.read_json(run_dir / "reports" / "smoke.json")
        return f"smoke loss {_fmt(smoke.get('loss'))}, grad norm {_fmt(smoke.get('grad_norm'))}"
    if step == 5:
        ev = gates.read_json(run_dir / "reports" / "eval_results.json")
        base = gates.read_json(run_dir / "reports" / "baseline_results.json")
        name = str(ev.get("primary_metric") or "metric")
        b = gates.primary_metric({**base, "primary_metric": name}) if base else None
        train = gates.read_json(run_dir / "reports" / "train_summary.json")
        extra = f"; {train['total_steps']} steps in {float(train.get('train_runtime_s') or 0) / 60:.1f} min" if train.get("total_steps") else ""
        return f"{name} {_fmt(b)} → {_fmt(gates.primary_metric(ev))}{extra}"
    if step == 6:
        return f"Hub {(rec.get('hub') or {}).get('url') or 'not pushed'}; rerun skill written"
    return ""


class Journal:
    """Appends to output_dir/PROGRESS.md when the user asked for it (config emit_progress_log); silent otherwise."""

    def __init__(self, ctx: RunContext):
        self.ctx = ctx
        self.stopped = False

    @property
    def path(self) -> Path:
        return self.ctx.run_dir / FILE

    def line(self, mark: str, text: str) -> None:
        if not self.ctx.config.emit_progress_log:
            return
        text = self.ctx.creds.redact(" ".join(text.split()))
        with self.path.open("a") as f:
            f.write(f"- {time.strftime('%Y-%m-%d %H:%M:%S')} {mark} {text}\n")

    def gate(self, step: int, met: bool, missing: list[str]) -> None:
        """A gate transition just logged in the run state: newly met is ✅; met before and not any more is ⚠️;
        a gate not met yet is not an event (most are unmet until their step runs)."""
        name = gates.STEP_NAMES[step]
        history = [g for g in self.ctx.state.gates if g.step == step]
        was_met = len(history) >= 2 and history[-2].met
        if met:
            details = gate_details(step, self.ctx.run_dir, self.ctx)
            self.line("✅", f"step {step} ({name})" + (f": {details}" if details else ""))
        elif was_met:
            self.line("⚠️", f"step {step} ({name}) no longer holds: missing {', '.join(missing)}")

    def tool_error(self, name: str, text: str) -> None:
        """A tool error the agent is told about and can recover from."""
        first = text.splitlines()[0] if text else ""
        self.line("⚠️", f"{name}: {first[:200]}")

    def stop(self, result: LoopExit | BaseException) -> None:
        """The final line, written once whatever ended the run."""
        if self.stopped:
            return
        self.stopped = True
        if isinstance(result, Done):
            step5 = gate_details(5, self.ctx.run_dir, self.ctx) if gates.check(5, self.ctx.run_dir, self.ctx.state).met else ""
            self.line("✅", "run finished: all six gates met" + (f" ({step5})" if step5 else ""))
        elif isinstance(result, AskUser):
            self.line("⏸️", f"stopped for a decision: {result.message}")
        elif isinstance(result, LoopExit):
            mark = "⚠️" if result.code in (ExitCode.LIMIT, ExitCode.INTERRUPTED) else "❌"
            self.line(mark, f"run stopped (exit {int(result.code)}): {result.message}")
        elif isinstance(result, KeyboardInterrupt):
            self.line("⚠️", "run interrupted (Ctrl-C); re-run the same command to resume")
        else:
            self.line("❌", f"run crashed: {type(result).__name__}: {str(result).splitlines()[0][:200] if str(result) else ''}")
