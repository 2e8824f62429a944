"""The eval harness: case validation, fresh run folders, the scorecard, --repeat and --compare, and the rule cases."""

import json

import pytest
import yaml

from tao_finetune.agent.cli import main
from tao_finetune.evals.harness import Case, CaseError, Driver, load_cases, run_case


def test_packaged_cases_load():
    ids = {c.id for c in load_cases()}
    assert {"demo-digits-autopilot", "refuse-push-first", "rule-skip-smoke", "rule-substitute-dataset", "rule-write-evaluate-py",
            "rule-forge-evidence", "rule-read-secret"} <= ids


@pytest.mark.parametrize("data,needle", [
    ({"id": "x", "args": [], "expect": {"exit_code": 0, "gates_mett": [1]}}, "unknown expectation(s) gates_mett"),
    ({"id": "x", "args": [], "expectations": {}}, "unknown key(s) expectations"),
    ({"id": "x", "args": [], "driver": "gpt"}, "driver must be one of"),
    ({"args": []}, "needs 'id' and 'args'"),
    (["not", "a", "mapping"], "must hold a mapping"),
    ({"id": "../../outside", "args": []}, "id must be a plain name"),  # its run folder would be made outside --out
    ({"id": 5, "args": []}, "id must be a plain name"),
    ({"id": "x", "args": "--yes"}, "args must be a list of strings"),
])
def test_bad_cases_are_rejected_with_one_line(tmp_path, data, needle, capsys):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(CaseError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_cases(tmp_path)
    assert main(["eval", "--cases-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_replayed_push_first_session_is_refused_and_scored(tmp_path):
    case = next(c for c in load_cases() if c.id == "refuse-push-first")
    score = run_case(case, tmp_path, main=main)
    assert score.passed, score.failures
    assert score.refusals == 1 and score.exit_code == 3 and score.gates_met == []
    wrong = Case(**{**case.__dict__, "expect": {"exit_code": 0, "gates_met": [1]}})
    failing = run_case(wrong, tmp_path, main=main)
    assert failing.failures == ["exit code 3, expected 0", "gate 1 not met"]
    assert failing.run_dir != score.run_dir  # a fresh folder, never the earlier run resumed


def test_every_eval_run_is_fresh_and_the_scorecard_has_tokens(tmp_path, capsys):
    argv = ["eval", "--case", "refuse-push-first", "--out", str(tmp_path), "--repeat", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "eval scorecard" in out and "tokens in/out" in out and "2/2 passed" in out
    assert main([*argv[:-2], "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["steps"] == 2 and {"tokens_in", "tokens_out", "cache_read_share", "cost_usd", "seconds"} <= set(rows[0])
    dirs = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("refuse-push-first"))
    assert dirs == ["refuse-push-first", "refuse-push-first.2", "refuse-push-first.3"]  # three runs, three folders
    assert main(["eval", "--case", "nope", "--out", str(tmp_path)]) == 2


def test_eval_bad_input_is_one_line_exit_2_and_json_stays_json(tmp_path, capsys):
    """--out naming a file was an OSError (exit 1); a case id with '[/bold]' was read as rich markup; --json printed nothing."""
    (tmp_path / "a-file").write_text("x")
    for argv, needle in ((["--case", "refuse-push-first", "--out", str(tmp_path / "a-file")], "is a file, not a folder"),
                         (["--case", "no[/bold]such"], "no eval cases match ['no[/bold]such']")):
        argv = ["eval", *argv] if "--out" in argv else ["eval", *argv, "--out", str(tmp_path / "out")]
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert needle in err and len(err.strip().splitlines()) == 1 and "internal error" not in err, err
        assert main([*argv, "--json"]) == 2
        data = json.loads(capsys.readouterr().out)
        assert data["exit_code"] == 2 and needle in data["error"]


def test_compare_prints_two_drivers_side_by_side(tmp_path, capsys):
    prompt = tmp_path / "p.md"
    prompt.write_text("x")
    assert Driver.parse(f"prompt:{prompt}").system_prompt == str(prompt)
    with pytest.raises(CaseError):
        Driver.parse("gpt-5")
    assert main(["eval", "--case", "refuse-push-first", "--out", str(tmp_path), "--compare", "replay", "autopilot"]) == 0
    out = capsys.readouterr().out
    assert "replay vs autopilot" in out and out.count("1/1 pass") >= 2


RULES = ["rule-skip-smoke", "rule-substitute-dataset", "rule-write-evaluate-py", "rule-forge-evidence", "rule-read-secret"]


@pytest.mark.parametrize("case_id", RULES)
def test_rule_cases_are_stopped_by_code(tmp_path, case_id):
    case = next(c for c in load_cases() if c.id == case_id)
    score = run_case(case, tmp_path, main=main)
    assert score.passed, (score.failures, score.exit_code)
    assert score.exit_code != 0


def test_the_scorecard_prints_failures_as_text():
    """A failure names files of the run (the model's to name): '[/bold]' in one was read as rich markup at the very end."""
    from rich.console import Console

    from tao_finetune.evals.harness import Score, scorecard

    s = Score("c", "autopilot", 4, [1], 0, 0, 3, 0.0, 1.0, None, None, ["secret found in [/bold]x.py"])
    console = Console(record=True, width=400)
    console.print(scorecard([s]))
    assert "FAIL secret found in [/bold]x.py" in console.export_text()
