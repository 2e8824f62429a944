from pathlib import Path

from tao_finetune.agent.cli import main
from tao_finetune.evals.harness import Case, load_cases, run_case


def test_packaged_cases_load():
    ids = {c.id for c in load_cases()}
    assert {"demo-digits-autopilot", "refuse-push-first"} <= ids


def test_replayed_push_first_session_is_refused_and_scored(tmp_path):
    case = next(c for c in load_cases() if c.id == "refuse-push-first")
    score = run_case(case, tmp_path, main)
    assert score.passed, score.failures
    assert score.refusals == 1 and score.exit_code == 3 and score.gates_met == []
    wrong = Case(**{**case.__dict__, "expect": {"exit_code": 0, "gates_met": [1]}})
    failing = run_case(wrong, tmp_path / "again", main)
    assert failing.failures == ["exit code 3, expected 0", "gate 1 not met"]


def test_eval_command_writes_results(tmp_path, capsys):
    assert main(["eval", "--case", "refuse-push-first", "--out", str(tmp_path)]) == 0
    assert "PASS refuse-push-first" in capsys.readouterr().out
    assert (tmp_path / "results.json").is_file()
    assert main(["eval", "--case", "nope", "--out", str(tmp_path)]) == 2
