import json

import pytest
from PIL import Image

from tao_finetune.agent import gates
from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools.base import NoArgs, ToolError
from tao_finetune.tools.report import loss_points, write_report


@pytest.fixture
def ctx(tmp_path):
    cfg = RunConfig(model_id="org/m", dataset_id="d", output_dir=str(tmp_path / "run"), emit_report=True)
    c = RunContext(cfg, SessionLog(cfg.out / "session.jsonl", Credentials({})), Credentials({}))
    c.save()
    (c.run_dir / "logs").mkdir()
    recs = [{"event": "start", "total_steps": 30}] + [{"step": s, "loss": 2.0 / s} for s in (10, 20, 30)] + [{"step": 31, "loss": float("nan")}]
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
    assert "<svg" in page and 'd="M' in page and "data:image/png;base64," in page
    assert "<td>accuracy</td><td>0.1</td><td>0.93</td>" in page
    assert "reports/report.html (emit_report)" not in gates.check(5, ctx.run_dir, ctx.state).missing


def test_loss_points_skip_events_nan_and_junk(ctx):
    assert loss_points(ctx.run_dir / "logs" / "metrics.jsonl") == [(10, 0.2), (20, 0.1), (30, 2.0 / 30)]


def test_report_is_opt_in(ctx):
    ctx.config.emit_report = False
    with pytest.raises(ToolError, match="opt-in"):
        write_report(ctx, NoArgs())
