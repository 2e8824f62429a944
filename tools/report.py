"""The opt-in run report: reports/report.html (self-contained) and reports/report.pdf, plots drawn with matplotlib.

Plots: training loss (raw and smoothed), learning rate, throughput against step; baseline vs fine-tuned metrics;
per-class F1 (classification). Numbers are rounded for people (percentages, 3 significant digits, thousands separators).
matplotlib API used (3.8+): matplotlib.figure.Figure (no pyplot, so no global state and no display needed),
Figure.savefig(format="png"/"svg"), matplotlib.backends.backend_pdf.PdfPages(path).savefig(fig).
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from tao_finetune.agent import gates
from tao_finetune.agent.config import atomic_write_text
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.metrics import training_steps, tracking_lines
from tao_finetune.tools.base import NoArgs, ToolError, tool

GREEN, GREY, BLUE = "#76b900", "#9e9e9e", "#1f77b4"
PCT_METRICS = {"accuracy", "macro_f1", "f1", "precision", "recall", "map", "mean_iou", "top5_accuracy"}
META_KEYS = {"primary_metric", "n_eval", "num_labels", "model", "baseline", "task", "eval_runtime_s", "eval_samples_per_s", "per_class"}


def train_records(metrics: Path) -> list[dict[str, Any]]:
    """Per-step training records from logs/metrics.jsonl (events, junk lines and non-finite losses skipped)."""
    return training_steps(metrics)


def loss_points(metrics: Path) -> list[tuple[int, float]]:
    """(step, loss) pairs from logs/metrics.jsonl, skipping event and non-finite records."""
    return [(r["step"], float(r["loss"])) for r in train_records(metrics)]


def smooth(values: list[float], weight: float | None = None) -> list[float]:
    """Bias-corrected exponential moving average (as TensorBoard's smoothing); weight grows with the series length."""
    if not values:
        return []
    w = weight if weight is not None else min(0.9, max(0.0, 1 - 5 / len(values)))
    out, avg = [], 0.0
    for i, v in enumerate(values, 1):
        avg = w * avg + (1 - w) * v
        out.append(avg / (1 - w**i) if w > 0 else v)
    return out


def fmt(v: Any, name: str = "") -> str:
    """A number as a person reads it: 91.2 % for rates, 3 significant digits, 1,234 for large values."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "-" if v is None else str(v)
    if not math.isfinite(v):
        return str(v)
    if name in PCT_METRICS and 0 <= v <= 1:
        return f"{100 * v:.1f} %"
    if isinstance(v, int) or (abs(v) >= 1000 and float(v).is_integer()):
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if v != 0 and abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.3g}"


def _series(recs: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], float(r[key])) for r in recs if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _figure(w: float = 7.5, h: float = 3.2):
    from matplotlib.figure import Figure

    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def plot_curves(recs: list[dict]) -> list[tuple[str, Any]]:
    """(title, Figure) for loss (raw + smoothed), learning rate and throughput against step."""
    figs = []
    steps, loss = _series(recs, "loss")
    if len(steps) >= 2:
        fig, ax = _figure()
        ax.plot(steps, loss, color=GREY, alpha=0.6, linewidth=1, label="raw")
        ax.plot(steps, smooth(loss), color=GREEN, linewidth=2, label="smoothed (EMA)")
        ax.set(xlabel="optimizer step", ylabel="training loss", title="Training loss")
        ax.grid(alpha=0.3)
        ax.legend()
        figs.append(("Training loss", fig))
    for key, title, ylabel in (("lr", "Learning rate", "learning rate"), ("samples_per_s", "Throughput", "samples / s")):
        xs, ys = _series(recs, key)
        if len(xs) >= 2:
            fig, ax = _figure(7.5, 2.6)
            ax.plot(xs, ys, color=BLUE, linewidth=1.5)
            ax.set(xlabel="optimizer step", ylabel=ylabel, title=title)
            if key == "lr":
                ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
            ax.grid(alpha=0.3)
            figs.append((title, fig))
    return figs


def _numbers(d: dict) -> dict[str, float]:
    return {k: float(v) for k, v in d.items() if k not in META_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}


def plot_metrics(ev: dict, base: dict, label_names: list[str]) -> list[tuple[str, Any]]:
    """Baseline vs fine-tuned bars for the rate metrics, and per-class F1 when eval_results has per_class."""
    figs = []
    names = [k for k in _numbers(ev) if k in PCT_METRICS]
    if names:
        fig, ax = _figure(7.5, 2.8)
        x = list(range(len(names)))
        b = [_numbers(base).get(k, 0.0) for k in names]
        f = [_numbers(ev)[k] for k in names]
        bars_b = ax.bar([i - 0.2 for i in x], b, width=0.4, color=GREY, label="baseline (before)")
        bars_f = ax.bar([i + 0.2 for i in x], f, width=0.4, color=GREEN, label="fine-tuned")
        ax.bar_label(bars_b, labels=[fmt(v, "accuracy") for v in b], fontsize=8)
        ax.bar_label(bars_f, labels=[fmt(v, "accuracy") for v in f], fontsize=8)
        ax.set_xticks(x, names)
        ax.set(ylabel="score (0-1)", ylim=(0, 1.12), title="Baseline vs fine-tuned")
        ax.legend(loc="upper left", fontsize=8)
        figs.append(("Baseline vs fine-tuned", fig))
    per = ev.get("per_class")
    if isinstance(per, list) and per and all(isinstance(p, dict) for p in per):
        labels = [label_names[i] if i < len(label_names) else str(i) for i in range(len(per))]
        shown = list(range(len(per)))[:40]
        fig, ax = _figure(7.5, max(2.4, 0.22 * len(shown) + 1))
        f1 = [float(per[i].get("f1", 0.0)) for i in shown]
        bpc = base.get("per_class") if isinstance(base.get("per_class"), list) else []
        ys = list(range(len(shown)))
        if len(bpc) == len(per):
            ax.barh([y + 0.2 for y in ys], [float(bpc[i].get("f1", 0.0)) for i in shown], height=0.4, color=GREY, label="baseline")
        ax.barh([y - 0.2 for y in ys], f1, height=0.4, color=GREEN, label="fine-tuned")
        ax.set_yticks(ys, [labels[i] for i in shown], fontsize=7)
        ax.invert_yaxis()
        ax.set(xlabel="F1", xlim=(0, 1), title="Per-class F1" + (f" (first 40 of {len(per)})" if len(per) > 40 else ""))
        ax.legend(fontsize=8)
        figs.append(("Per-class F1", fig))
    return figs


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


def _metric_rows(ev: dict, base: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    for k, v in _numbers(ev).items():
        b = _numbers(base).get(k)
        delta = "-" if b is None else (f"{100 * (v - b):+.1f} pts" if k in PCT_METRICS else f"{v - b:+.3g}")
        rows.append((k, fmt(b, k) if base else "skipped", fmt(v, k), delta))
    return rows


def _per_class_rows(ev: dict, label_names: list[str]) -> list[tuple[str, ...]]:
    per = ev.get("per_class") if isinstance(ev.get("per_class"), list) else []
    return [(label_names[i] if i < len(label_names) else str(i), fmt(p.get("precision"), "precision"), fmt(p.get("recall"), "recall"),
             fmt(p.get("f1"), "f1"), fmt(p.get("support"))) for i, p in enumerate(per) if isinstance(p, dict)]


def _samples(run_dir: Path) -> list[dict[str, Any]]:
    """Inference samples: inference_summary.json entries (file, true_label, prediction, score), else the folder's files."""
    folder = run_dir / "reports" / "inference_samples"
    summary = gates.read_json(run_dir / "reports" / "inference_summary.json").get("samples")
    if isinstance(summary, list) and summary:
        return [{**s, "path": folder / str(s.get("file", ""))} for s in summary if isinstance(s, dict)]
    return [{"file": p.name, "path": p} for p in sorted(folder.iterdir())] if folder.is_dir() else []


def _table_html(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    th = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def sample_html(samples: list[dict[str, Any]]) -> str:
    """Images embedded as data URIs with true/predicted labels; text samples as preformatted text."""
    parts = []
    for s in samples:
        p: Path = s["path"]
        caption = " · ".join(f"{k}: {fmt(s[k])}" for k in ("true_label", "prediction", "score") if k in s) or p.name
        if p.suffix.lower() in (".png", ".jpg", ".jpeg") and p.is_file():
            mime = "png" if p.suffix.lower() == ".png" else "jpeg"
            data = base64.b64encode(p.read_bytes()).decode()
            parts.append(f'<figure><img src="data:image/{mime};base64,{data}" alt="{html.escape(p.name)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        elif p.suffix.lower() in (".json", ".txt") and p.is_file():
            parts.append(f"<figure><pre>{html.escape(p.read_text(errors='replace')[:2000])}</pre><figcaption>{html.escape(caption)}</figcaption></figure>")
    return "\n".join(parts) or "<p>no samples</p>"


def collect(run_dir: Path, label_names: list[str]) -> dict[str, Any]:
    """Everything both report formats show, read once."""
    reports = run_dir / "reports"
    ev, base = gates.read_json(reports / "eval_results.json"), gates.read_json(reports / "baseline_results.json")
    meta = gates.read_json(run_dir / "data" / "meta.json")
    names = label_names or [str(n) for n in meta.get("label_names") or []]
    recs = train_records(run_dir / "logs" / "metrics.jsonl")
    return {
        "ev": ev, "base": base, "labels": names, "recs": recs,
        "summary": gates.read_json(reports / "train_summary.json"),
        "figures": plot_curves(recs) + plot_metrics(ev, base, names),
        "samples": _samples(run_dir),
        "tracking": tracking_lines(run_dir, absolute=False),  # the TensorBoard command, the W&B URL or offline run
    }


def _facts(data: dict, title: str) -> list[tuple[str, str]]:
    ev, base, s = data["ev"], data["base"], data["summary"]
    metric = str(ev.get("primary_metric") or "metric")
    b, f = gates.primary_metric({**base, "primary_metric": metric}) if base else None, gates.primary_metric(ev)
    rows = [("primary metric", f"{metric}: {fmt(b, metric) if b is not None else 'no baseline'} → {fmt(f, metric)}"),
            ("eval examples", fmt(ev.get("n_eval")))]
    if s:
        rows += [("optimizer steps", fmt(s.get("total_steps"))), ("training time", f"{float(s.get('train_runtime_s') or 0) / 60:.1f} min"),
                 ("throughput", f"{fmt(s.get('train_samples_per_s'))} samples/s"), ("final loss", fmt(s.get("final_loss"))),
                 ("precision", str(s.get("precision") or "-")), ("device", f"{s.get('world_size') or 1} × {s.get('device') or 'CPU'}")]
    rows += [tuple(line.split(": ", 1)) for line in data.get("tracking") or []]
    return rows


def render_report(run_dir: Path, title: str, label_names: list[str] | None = None, data: dict | None = None) -> str:
    """The whole HTML page (plots as embedded PNG)."""
    data = data or collect(run_dir, label_names or [])
    figs = "".join(f'<h3>{html.escape(t)}</h3><img class="plot" alt="{html.escape(t)}" src="data:image/png;base64,{base64.b64encode(_png(f)).decode()}">'
                   for t, f in data["figures"]) or "<p>not enough logged steps for plots</p>"
    per = _per_class_rows(data["ev"], data["labels"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}}td,th{{padding:4px 12px;border-bottom:1px solid #ddd;text-align:left}}
figure{{display:inline-block;margin:6px;vertical-align:top}}figure img{{max-width:200px;image-rendering:pixelated}}img.plot{{max-width:100%}}
pre{{max-width:420px;white-space:pre-wrap}}</style></head><body>
<h1>{html.escape(title)}</h1>
{_table_html(("", ""), _facts(data, title))}
<h2>Metrics</h2>{_table_html(("metric", "baseline", "fine-tuned", "change"), _metric_rows(data["ev"], data["base"]))}
{"<h2>Per class</h2>" + _table_html(("class", "precision", "recall", "F1", "support"), per) if per else ""}
<h2>Training</h2>{figs}
<h2>Inference samples</h2>{sample_html(data["samples"])}
</body></html>"""


def write_pdf(path: Path, title: str, data: dict) -> int:
    """report.pdf: a summary page (facts + metric tables), one page per plot, a samples page; returns the page count."""
    from matplotlib.backends.backend_pdf import PdfPages
    from matplotlib.figure import Figure

    pages = 0
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".report.", suffix=".pdf")
    os.close(fd)
    try:
        with PdfPages(tmp) as pdf:
            page = Figure(figsize=(8.27, 11.69))
            page.text(0.06, 0.96, title, fontsize=16, weight="bold", va="top")
            y = 0.91
            for k, v in _facts(data, title):
                page.text(0.06, y, k, fontsize=10, color="#555")
                page.text(0.32, y, v, fontsize=10)
                y -= 0.025
            rows = _metric_rows(data["ev"], data["base"])
            per = _per_class_rows(data["ev"], data["labels"])[:30]
            for header, body in ((("metric", "baseline", "fine-tuned", "change"), rows),
                                 (("class", "precision", "recall", "F1", "support"), per)):
                if not body:
                    continue
                h = min(0.03 * (len(body) + 1), y - 0.05)
                ax = page.add_axes((0.06, y - 0.02 - h, 0.88, h))
                ax.axis("off")
                ax.table(cellText=[list(r) for r in body], colLabels=list(header), loc="upper left", cellLoc="left")
                y -= h + 0.04
            pdf.savefig(page)
            pages += 1
            for _, fig in data["figures"]:
                pdf.savefig(fig)
                pages += 1
            imgs = [s for s in data["samples"] if s["path"].suffix.lower() in (".png", ".jpg", ".jpeg") and s["path"].is_file()][:12]
            if imgs:
                from PIL import Image

                page = Figure(figsize=(8.27, 11.69), layout="constrained")
                page.suptitle("Inference samples")
                axes = page.subplots(4, 3).flatten()
                for ax in axes:
                    ax.axis("off")
                for ax, s in zip(axes, imgs):
                    with Image.open(s["path"]) as im:
                        ax.imshow(im.convert("RGB"))
                    ax.set_title(" · ".join(f"{k.split('_')[0]}: {fmt(s[k])}" for k in ("true_label", "prediction", "score") if k in s)
                                 or s["path"].name, fontsize=8)
                pdf.savefig(page)
                pages += 1
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return pages


@tool(step=5)
def write_report(ctx: RunContext, args: NoArgs) -> dict:
    """Write reports/report.html and reports/report.pdf (loss raw + smoothed, learning rate, throughput, baseline vs fine-tuned, per-class metrics, inference samples) when emit_report is on."""
    if not ctx.config.emit_report:
        raise ToolError("emit_report is off in config.yaml; the report is opt-in")
    if gates.primary_metric(gates.read_json(ctx.run_dir / "reports" / "eval_results.json")) is None:
        raise ToolError("no reports/eval_results.json with a primary metric yet: docker_run job=eval first")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ToolError("the report needs matplotlib: pip install 'tao-finetune[report]'") from None
    title = f"{ctx.config.model_id} fine-tune"
    data = collect(ctx.run_dir, list(ctx.config.label_names))
    out = ctx.run_dir / "reports" / "report.html"
    atomic_write_text(out, render_report(ctx.run_dir, title, data=data))
    pdf = ctx.run_dir / "reports" / "report.pdf"
    pages = write_pdf(pdf, title, data)
    return {"written": ["reports/report.html", "reports/report.pdf"], "html_bytes": out.stat().st_size, "pdf_pages": pages}
