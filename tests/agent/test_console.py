"""The live view of `run` and the training progress of `status`, read from the logs/metrics.jsonl the project writes."""

import json
import os
import re
import pty
import select
import subprocess
import sys
import textwrap
import time

from tao_finetune.agent.cli import main
from tao_finetune.agent.console import fmt_eta, progress_line, training_eta


def metrics(run, recs):
    (run / "logs").mkdir(parents=True, exist_ok=True)
    (run / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_eta_from_the_metrics_log(tmp_path):
    t0 = 1000.0
    metrics(tmp_path, [{"event": "start", "step": 0, "total_steps": 100, "time": t0},
                       *[{"step": s, "total_steps": 100, "loss": 2.0 / s, "samples_per_s": 512.0, "time": t0 + 2 * s} for s in (10, 20, 30)]])
    p = training_eta(tmp_path)
    assert p["step"] == 30 and p["total"] == 100 and abs(p["steps_per_s"] - 0.5) < 1e-9 and abs(p["eta_s"] - 140) < 1e-6
    assert progress_line(p) == "training step 30/100 (30 %) · loss 0.06667 · 512 samples/s · ETA 02:20"
    with (tmp_path / "logs" / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"event": "done", "total_steps": 100, "time": t0 + 200}) + "\n{partial")
    assert training_eta(tmp_path)["done"] and progress_line(training_eta(tmp_path)).endswith("· done")
    assert fmt_eta(3725) == "ETA 1:02:05" and fmt_eta(None) == "ETA --:--"


def test_status_shows_training_progress(tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("model_id: a/b\n")
    now = time.time()
    metrics(tmp_path, [{"event": "start", "step": 0, "total_steps": 40, "time": now - 10},
                       {"step": 10, "total_steps": 40, "loss": 1.25, "samples_per_s": 80.0, "time": now}])
    main(["status", "--output-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert "training step 10/40 (25 %) · loss 1.25 · 80 samples/s · ETA 00:30" in out
    main(["status", "--output-dir", str(tmp_path), "--json"])
    assert json.loads(capsys.readouterr().out)["training"]["step"] == 10


LIVE = textwrap.dedent('''
    import json, sys, time
    from pathlib import Path
    from rich.console import Console
    from tao_finetune.agent.console import LiveView

    run = Path(sys.argv[1])
    (run / "logs").mkdir(parents=True)
    log = (run / "logs" / "metrics.jsonl").open("a")
    view = LiveView(Console(), run, "normal", refresh_s=0.1, step=4)
    assert view.live_mode, "the pseudo-terminal is a terminal"
    with view:
        view.event({"kind": "tool_call", "name": "docker_build", "input": {}})
        for n in (1, 2, 3):
            view.job_output(f"[build] Step {n}/5 : RUN step {n}")
            time.sleep(0.3)
        view.event({"kind": "tool_result", "name": "docker_build", "is_error": False, "content": "{}"})
        view.event({"kind": "gate", "step": 4, "met": True})
        view.event({"kind": "tool_call", "name": "train_status", "input": {"wait_s": 60}})
        t0 = time.time()
        log.write(json.dumps({"event": "start", "step": 0, "total_steps": 50, "time": t0}) + "\\n"); log.flush()
        for s in range(5, 30, 5):
            time.sleep(0.3)
            log.write(json.dumps({"step": s, "total_steps": 50, "loss": 3.0 / s, "samples_per_s": 1234.5, "time": time.time()}) + "\\n")
            log.flush()
        time.sleep(0.6)
''')


def test_live_view_in_a_pseudo_terminal_shows_build_and_training_bars_with_eta(tmp_path):
    """Run the live view on a real pseudo-terminal (rich detects it as a terminal) and read what a person would see."""
    script = tmp_path / "live.py"
    script.write_text(LIVE)
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "30", "OMP_NUM_THREADS": "1"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "run")], stdin=slave, stdout=slave, stderr=slave,
                            env=env, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.time() + 120
    while time.time() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(timeout=30)
    os.close(master)
    raw = b"".join(chunks).decode("utf-8", errors="replace")
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)
    assert proc.returncode == 0, screen[-2000:]
    assert "step 4/6 generate project & smoke-test  ·  building the image" in screen
    assert "building image" in screen and "2/5 RUN step 3" in screen
    assert "✅ step 4/6 generate project & smoke-test" in screen
    assert "step 5/6 train, evaluate, infer  ·  training" in screen and "━" in screen
    assert "25/50" in screen and "loss 0.12" in screen and "1,234 samples/s" in screen and "ETA 00:0" in screen


def tiny_inputs(tmp_path):
    """An imagefolder with two empty classes and a config-only ViT folder: a run that stops early (max 2 model turns)."""
    data = tmp_path / "data" / "train"
    for c in ("a", "b"):
        (data / c).mkdir(parents=True)
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "vit", "architectures": ["ViTForImageClassification"]}))
    return model


def test_quiet_prints_only_the_result(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    model = tiny_inputs(tmp_path)
    code = main(["run", "--model-id", str(model), "--local-dataset-path", str(tmp_path / "data"), "--output-dir", str(tmp_path / "o"),
                 "--llm", "autopilot", "--platform", "local", "--allow-cpu", "--no-push-to-hub", "--yes", "--quiet", "--max-steps", "2"])
    out = capsys.readouterr()
    lines = [ln for ln in out.err.splitlines() if ln.strip()]
    assert code != 0 and len(lines) == 1 and lines[0].startswith(("stopped", "question")), out.err
    assert "→" not in out.err and "✅" not in out.err


def test_verbose_shows_tool_arguments_and_results(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    model = tiny_inputs(tmp_path)
    main(["run", "--model-id", str(model), "--local-dataset-path", str(tmp_path / "data"), "--output-dir", str(tmp_path / "o"),
          "--llm", "autopilot", "--platform", "local", "--allow-cpu", "--no-push-to-hub", "--yes", "--verbose", "--max-steps", "2"])
    out = capsys.readouterr()
    calls = [json.loads(line) for line in (tmp_path / "o" / "session.jsonl").read_text().splitlines()]
    call = next(e for e in calls if e.get("kind") == "tool_call")
    result = next(e for e in calls if e.get("kind") == "tool_result")
    text = re.sub(r"\s+", " ", out.err + out.out)
    assert f"→ {call['name']} {json.dumps(call['input'])}" in text  # the arguments, as the model sent them
    first = str(result["content"])[:60]
    assert ("✓ " if not result.get("is_error") else "✗ ") in text and re.sub(r"\s+", " ", first) in text  # and the result


def test_a_blocking_job_gets_a_bar_from_its_log_progress_lines(tmp_path):
    """prepare_data.py prints `progress: WHAT k/N` (sources.progress); lines of an earlier attempt do not count."""
    import io

    from rich.console import Console

    from tao_finetune.agent.console import LiveView, job_progress

    log = tmp_path / "logs" / "prepare.log"
    log.parent.mkdir(parents=True)
    log.write_text("progress: decoding images 90/90\nprepared 90 train\n")  # a previous attempt
    view = LiveView(Console(file=io.StringIO()), tmp_path)
    view.event({"kind": "tool_call", "name": "docker_run", "input": {"job": "prepare"}})
    view._job_update()
    assert not view.bar.tasks
    with log.open("a") as f:
        f.write("loading\nprogress: decoding images 120/400\n")
    view._job_update()
    task = view.bar.tasks[0]
    assert (task.description, task.completed, task.total, task.fields["info"]) == ("prepare", 120, 400, "decoding images")
    assert job_progress(tmp_path, "prepare") == ("decoding images", 120, 400) and job_progress(tmp_path, "smoke") is None
    view.event({"kind": "tool_result", "name": "docker_run", "is_error": False, "content": "{}"})
    assert not view.bar.tasks
