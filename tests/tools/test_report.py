import json
import shutil
import subprocess

import pytest
from PIL import Image

from tao_finetune.agent import gates
from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools.base import NoArgs, ToolError
from tao_finetune.tools.report import fmt, loss_points, smooth, write_report


@pytest.fixture
def ctx(tmp_path):
    cfg = RunConfig(model_id="org/m", dataset_id="d", output_dir=str(tmp_path / "run"), emit_report=True)
    c = RunContext(cfg, SessionLog(cfg.out / "session.jsonl", Credentials({})), Credentials({}))
    c.save()
    (c.run_dir / "logs").mkdir()
    recs = [{"event": "start", "total_steps": 30}] + [{"step": s, "loss": 2.0 / s, "lr": 5e-5 * (1 - s / 40), "samples_per_s": 900.0 + s}
                                                      for s in (10, 20, 30)] + [{"step": 31, "loss": float("nan")}]
    (c.run_dir / "logs" / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in recs) + "\n{broken\n")
    return c


def test_report_has_curve_metrics_and_samples(ctx):
    reports = ctx.run_dir / "reports"
    (reports / "inference_samples").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(reports / "inference_samples" / "sample_0.png")
    with pytest.raises(ToolError, match="eval"):
        write_report(ctx, NoArgs())
    (reports / "eval_results.json").write_text(json.dumps({"primary_metric": "accuracy", "accuracy": 0.93, "n_eval": 10}))
    (reports / "baseline_results.json").write_text(json.dumps({"primary_metric": "accuracy", "accuracy": 0.1}))
    assert "reports/report.html (emit_report)" in gates.check(5, ctx.run_dir, ctx.state).missing
    write_report(ctx, NoArgs())
    page = (reports / "report.html").read_text()
    assert page.count('<img class="plot"') == 4  # loss, learning rate, throughput, baseline vs fine-tuned
    assert "<h3>Training loss</h3>" in page and "<h3>Learning rate</h3>" in page and "<h3>Throughput</h3>" in page
    assert "data:image/png;base64," in page
    assert "<td>accuracy</td><td>10.0 %</td><td>93.0 %</td><td>+83.0 pts</td>" in page
    assert (reports / "report.pdf").read_bytes().startswith(b"%PDF")
    assert "reports/report.html (emit_report)" not in gates.check(5, ctx.run_dir, ctx.state).missing


def test_loss_points_skip_events_nan_and_junk(ctx):
    assert loss_points(ctx.run_dir / "logs" / "metrics.jsonl") == [(10, 0.2), (20, 0.1), (30, 2.0 / 30)]


def test_report_is_opt_in(ctx):
    ctx.config.emit_report = False
    with pytest.raises(ToolError, match="opt-in"):
        write_report(ctx, NoArgs())


def test_numbers_are_rounded_for_people():
    assert fmt(0.93456, "accuracy") == "93.5 %" and fmt(0.312345, "eval_loss") == "0.312"
    assert fmt(12345.678) == "12,346" and fmt(5e-05) == "5.0e-05" and fmt(1438) == "1,438" and fmt(None) == "-"


def test_smoothing_follows_the_trend_and_keeps_the_first_value():
    raw = [4.0, 1.0, 3.0, 0.5, 2.5, 0.4, 2.0, 0.3] * 4
    sm = smooth(raw)
    assert sm[0] == raw[0] and len(sm) == len(raw)
    assert max(sm[8:]) - min(sm[8:]) < max(raw) - min(raw)


def test_pdf_pages_render_to_png_with_plots_per_class_and_samples(ctx, tmp_path):
    """The PDF a person opens: pdftoppm (poppler-utils, installed by .ci/test-tools.sh) renders every page."""
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) not installed; .ci/test-tools.sh installs it")
    ctx.config.label_names = ["cat", "dog", "bird"]
    reports = ctx.run_dir / "reports"
    (reports / "inference_samples").mkdir(parents=True)
    samples = []
    for i, (t, p) in enumerate([("cat", "cat"), ("dog", "bird"), ("bird", "bird")]):
        Image.new("RGB", (32, 32), (200 * (i == 0), 200 * (i == 1), 200 * (i == 2))).save(reports / "inference_samples" / f"sample_{i}.png")
        samples.append({"file": f"sample_{i}.png", "true_label": t, "prediction": p, "score": 0.87654})
    (reports / "inference_summary.json").write_text(json.dumps({"samples": samples}))
    per = [{"precision": 0.9, "recall": 0.8, "f1": 0.847, "support": 10}, {"precision": 0.5, "recall": 0.6, "f1": 0.545, "support": 10},
           {"precision": 1.0, "recall": 0.9, "f1": 0.947, "support": 10}]
    (reports / "eval_results.json").write_text(json.dumps({"primary_metric": "accuracy", "accuracy": 0.7667, "macro_f1": 0.78, "n_eval": 30,
                                                           "eval_loss": 0.61234, "per_class": per}))
    (reports / "baseline_results.json").write_text(json.dumps({"primary_metric": "accuracy", "accuracy": 0.3333, "macro_f1": 0.2}))
    out = write_report(ctx, NoArgs())
    assert out["pdf_pages"] == 7  # summary, loss, lr, throughput, baseline vs fine-tuned, per-class F1, samples
    page = (reports / "report.html").read_text()
    assert "<td>dog</td><td>50.0 %</td><td>60.0 %</td><td>54.5 %</td><td>10</td>" in page
    assert "true_label: dog · prediction: bird · score: 0.877" in page
    png_dir = tmp_path / "png"
    png_dir.mkdir()
    subprocess.run(["pdftoppm", "-r", "40", "-png", str(reports / "report.pdf"), str(png_dir / "page")], check=True, timeout=120)
    pngs = sorted(png_dir.glob("page-*.png"))
    assert len(pngs) == 7
    with Image.open(pngs[0]) as first:
        assert first.size[1] > first.size[0]  # the summary page is A4 portrait
    for p in pngs:
        with Image.open(p) as im:
            gray = im.convert("L")
            lo, hi = gray.getextrema()
            assert hi - lo > 100, f"{p.name} is blank"
