import json

from tao_finetune.agent.cli import main


def test_a_failing_input_is_asked_about_once_not_retried(tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["run", "--model-id", "org/does-not-exist", "--dataset-id", "x/y", "--llm", "autopilot", "--platform", "local",
                 "--allow-cpu", "--no-push-to-hub", "--output-dir", str(run), "--yes", "--quiet"])
    assert code == 3
    err = capsys.readouterr().err
    assert "probe_model failed: model 'org/does-not-exist'" in err and "--answer" in err
    events = [json.loads(x) for x in (run / "session.jsonl").read_text().splitlines()]
    assert [e["name"] for e in events if e["kind"] == "tool_call"] == ["probe_model", "ask_user"]


def test_no_dataset_asks_for_a_pick(tmp_path, capsys):
    from tao_finetune.agent.demo import make_tiny_vit

    model = make_tiny_vit(tmp_path / "vit")
    code = main(["run", "--model-id", str(model), "--llm", "autopilot", "--platform", "local", "--allow-cpu", "--no-push-to-hub",
                 "--output-dir", str(tmp_path / "run"), "--yes", "--quiet"])
    assert code == 3
    assert "--dataset-id" in capsys.readouterr().err
