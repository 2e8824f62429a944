"""The opt-in run report: reports/report.html with the loss curve, metrics and inference samples, self-contained."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from tao_finetune.agent import gates
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.config import atomic_write_text
from tao_finetune.tools.base import NoArgs, ToolError, tool

W, H, PAD = 640, 240, 36


def loss_points(metrics: Path) -> list[tuple[int, float]]:
    """(step, loss) pairs from logs/metrics.jsonl, skipping event and non-finite records."""
    points = []
    if not metrics.is_file():
        return points
    for line in metrics.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        loss = rec.get("loss")
        if "event" not in rec and isinstance(rec.get("step"), int) and isinstance(loss, (int, float)) and loss == loss:
            points.append((rec["step"], float(loss)))
    return points


def svg_curve(points: list[tuple[int, float]]) -> str:
    """An inline SVG line chart of training loss against step."""
    if len(points) < 2:
        return "<p>not enough logged steps for a curve</p>"
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    sx = lambda x: PAD + (x - x0) / ((x1 - x0) or 1) * (W - 2 * PAD)
    sy = lambda y: H - PAD - (y - y0) / ((y1 - y0) or 1) * (H - 2 * PAD)
    path = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}" for i, (x, y) in enumerate(points))
    return (f'<svg width="{W}" height="{H}" xmlns="http://www.w3.org/2000/svg" role="img" aria-label="training loss">'
            f'<rect width="100%" height="100%" fill="#fff"/><path d="{path}" fill="none" stroke="#76b900" stroke-width="2"/>'
            f'<text x="{PAD}" y="{PAD - 10}" font-size="12">loss {y1:.3f} … {y0:.3f}</text>'
            f'<text x="{W - PAD}" y="{H - 8}" font-size="12" text-anchor="end">step {x1}</text></svg>')


def sample_html(folder: Path) -> str:
    """Images embedded as data URIs; text samples as preformatted JSON."""
    parts = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.suffix.lower() in (".png", ".jpg", ".jpeg"):
            mime = "png" if p.suffix.lower() == ".png" else "jpeg"
            data = base64.b64encode(p.read_bytes()).decode()
            parts.append(f'<figure><img src="data:image/{mime};base64,{data}" alt="{html.escape(p.name)}"><figcaption>{html.escape(p.name)}</figcaption></figure>')
        elif p.suffix.lower() in (".json", ".txt"):
            parts.append(f"<pre>{html.escape(p.read_text()[:2000])}</pre>")
    return "\n".join(parts) or "<p>no samples</p>"


def render_report(run_dir: Path, title: str) -> str:
    """The whole report page."""
    ev = gates.read_json(run_dir / "reports" / "eval_results.json")
    base = gates.read_json(run_dir / "reports" / "baseline_results.json")
    metric = ev.get("primary_metric")
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(base.get(k, '-')))}</td><td>{html.escape(str(v))}</td></tr>"
                   for k, v in ev.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto}}td,th{{padding:4px 12px;border-bottom:1px solid #ddd}}
figure{{display:inline-block;margin:6px}}img{{max-width:180px;image-rendering:pixelated}}</style></head><body>
<h1>{html.escape(title)}</h1><p>primary metric: <b>{html.escape(str(metric))}</b></p>
<h2>Metrics</h2><table><tr><th>metric</th><th>baseline</th><th>fine-tuned</th></tr>{rows}</table>
<h2>Training loss</h2>{svg_curve(loss_points(run_dir / "logs" / "metrics.jsonl"))}
<h2>Inference samples</h2>{sample_html(run_dir / "reports" / "inference_samples")}
</body></html>"""


@tool(step=5)
def write_report(ctx: RunContext, args: NoArgs) -> dict:
    """Write reports/report.html (loss curve, baseline vs fine-tuned metrics, inference samples) when emit_report is on."""
    if not ctx.config.emit_report:
        raise ToolError("emit_report is off in config.yaml; the report is opt-in")
    if gates.primary_metric(gates.read_json(ctx.run_dir / "reports" / "eval_results.json")) is None:
        raise ToolError("no reports/eval_results.json with a primary metric yet: docker_run job=eval first")
    out = ctx.run_dir / "reports" / "report.html"
    atomic_write_text(out, render_report(ctx.run_dir, f"{ctx.config.model_id} fine-tune"))
    return {"written": "reports/report.html", "bytes": out.stat().st_size}
