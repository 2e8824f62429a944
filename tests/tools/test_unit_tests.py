"""emit_unit_tests: the rendered tests/ run as docker_run job=tests on the LocalPlatform, write reports/unit_tests.json and hold gate 4."""

import json
import re
import sys
from pathlib import Path

import pytest

from tao_finetune.agent import gates
from tao_finetune.agent.autopilot import ACTIONS, AutopilotClient
from tao_finetune.tools import jobs, project
from tao_finetune.tools.base import NoArgs, ToolError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "references"))
from test_scaffolds import call, digits, make_ctx, minilm, sentiment  # noqa: E402,F401  (fixtures and helpers)

ITEM = "unit tests passed (emit_unit_tests)"


def gate4(ctx) -> tuple[str, ...]:
    return gates.check(4, ctx.run_dir, ctx.state).missing


def report(ctx) -> dict:
    return json.loads((ctx.run_dir / "reports" / "unit_tests.json").read_text())


def next_call(ctx) -> tuple[str, dict]:
    """The autopilot's next Step 4 call (earlier steps' rules left out: this run skipped their probes)."""
    client = AutopilotClient(ctx, tuple(a for a in ACTIONS if a.step == 4))
    i, args = client.pick()
    return client.actions[i].tool, args


def image_ctx(tmp_path, digits, **fields):
    return make_ctx(tmp_path / "run", "image-classification", model_id=str(digits["model"]), local_dataset_path=str(digits["data"]),
                    local_dataset_format="imagefolder", n_train=64, n_eval=32, **fields)


def test_image_project_tests_pass_then_catch_a_broken_resize(tmp_path, digits):
    ctx = image_ctx(tmp_path, digits, emit_unit_tests=True)
    ctx.state.record("audit", {"passed": True})
    out = call(project.render_scaffold, ctx)
    run = ctx.run_dir
    assert "tests/test_project.py" in out["written"] and not (run / "test_project.py").exists()
    assert project.has_header((run / "tests" / "test_project.py").read_text())
    assert "pytest" in (run / "requirements.txt").read_text().splitlines()
    jobs.docker_build.fn(ctx, NoArgs())
    call(jobs.docker_run, ctx, job="prepare")
    call(jobs.docker_run, ctx, job="smoke")
    assert ITEM in gate4(ctx)
    assert next_call(ctx) == ("docker_run", {"job": "tests"})

    res = call(jobs.docker_run, ctx, job="tests")
    rep = report(ctx)
    assert rep["passed"] is True and re.fullmatch(r"\d+ passed in [\d.]+s", rep["summary"]), rep
    assert res["passed"] and res["summary"] == rep["summary"] and res["log"] == "logs/tests.log"
    assert ITEM not in gate4(ctx)
    assert next_call(ctx) == ("preflight", {})

    # a resize that forgets to convert the mode: grey, RGBA and palette images no longer become 3-channel pixels
    text = (run / "prepare_data.py").read_text()
    assert '    img = img.convert("RGB")\n' in text
    call(project.write_file, ctx, path="prepare_data.py", content=text.replace('    img = img.convert("RGB")\n', ""))
    (run / "reports" / "unit_tests.json").unlink()
    client = AutopilotClient(ctx, tuple(a for a in ACTIONS if a.step == 4))
    use = client.create(system="", messages=[], tools=[], max_tokens=1).tool_uses()[0]
    assert (use["name"], use["input"]) == ("docker_run", {"job": "tests"})
    with pytest.raises(ToolError) as err:
        call(jobs.docker_run, ctx, job="tests")
    # the autopilot cannot fix project code: it asks instead of re-running the same failing tests
    result = {"type": "tool_result", "tool_use_id": use["id"], "is_error": True, "content": str(err.value)}
    asked = client.create(system="", messages=[{"role": "user", "content": [result]}], tools=[], max_tokens=1).tool_uses()[0]
    assert asked["name"] == "ask_user" and "unit tests failed" in asked["input"]["question"]
    assert "unit tests failed" in str(err.value) and "--- log tail ---" in str(err.value)
    assert "test_every_mode_and_size_decodes_to_the_model_input" in str(err.value)
    rep = report(ctx)
    assert rep["passed"] is False and re.search(r"\d+ failed", rep["summary"]), rep
    assert ITEM in gate4(ctx)


def test_text_project_tests_pass_on_minilm(tmp_path, sentiment):
    ctx = make_ctx(tmp_path / "run", "text-classification", model_id=str(minilm()), local_dataset_path=str(sentiment),
                   local_dataset_format="csv", column_renames={"sentence": "text", "sentiment": "label"},
                   n_train=40, n_eval=20, emit_unit_tests=True)
    call(project.render_scaffold, ctx)
    call(jobs.docker_run, ctx, job="prepare")
    assert ITEM in gate4(ctx)
    res = call(jobs.docker_run, ctx, job="tests")
    assert res["passed"] and report(ctx)["passed"] is True, report(ctx)
    assert re.fullmatch(r"\d+ passed in [\d.]+s", res["summary"])
    assert ITEM not in gate4(ctx)


def test_unit_tests_off_writes_nothing_and_gate4_does_not_ask(tmp_path, digits):
    ctx = image_ctx(tmp_path, digits)
    out = call(project.render_scaffold, ctx)
    run = ctx.run_dir
    assert not (run / "tests").exists() and not any("test_project" in f for f in out["written"])
    assert not any(ln.startswith("pytest") for ln in (run / "requirements.txt").read_text().splitlines())
    assert ITEM not in gate4(ctx)
    with pytest.raises(ToolError, match="tests/ has no test_"):
        call(jobs.docker_run, ctx, job="tests")
    assert not (run / "reports" / "unit_tests.json").exists()


def test_turning_unit_tests_on_later_adds_the_file_and_pytest_and_rebuilds(tmp_path, digits):
    ctx = image_ctx(tmp_path, digits)
    call(project.render_scaffold, ctx)
    ctx.state.record("build", {"ok": True})
    ctx.config.emit_unit_tests = True
    out = call(project.render_scaffold, ctx)
    assert set(out["written"]) == {"tests/test_project.py", "requirements.txt"}
    assert (ctx.run_dir / "requirements.txt").read_text().splitlines().count("pytest") == 1
    assert ctx.state.records["build"]["ok"] is False
    assert call(project.render_scaffold, ctx)["written"] == []


@pytest.mark.parametrize("log, summary", [
    ("....\n11 passed in 6.13s\n", "11 passed in 6.13s"),
    ("F..\nFAILED tests/test_project.py::test_x - AssertionError\n1 failed, 2 passed in 3.20s\n", "1 failed, 2 passed in 3.20s"),
    ("==== 1 passed, 1 warning in 0.50s ====\n", "1 passed, 1 warning in 0.50s"),
    ("tests exited with code 4\nlast log lines:\nERROR: file or directory not found: tests/\n", "ERROR: file or directory not found: tests/"),
    ("", "no output"),
])
def test_pytest_summary_is_the_closing_line(log, summary):
    assert jobs.pytest_summary(log) == summary
