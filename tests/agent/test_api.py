"""The headless ways in: `run --json` (one JSON result, result.json), the Python API and `python -m tao_finetune`."""

import json
import os
import subprocess
import sys

import pytest

import tao_finetune
from tao_finetune.agent.cli import DEMO_SETTINGS, main
from tao_finetune.agent.result import RunResult, read_result
from servers.anthropic_api import FakeAnthropic, end_turn


def test_run_json_through_the_real_sdk_prints_only_the_result_with_tokens_and_cost(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    with FakeAnthropic([end_turn("I will wait."), end_turn("Still waiting."), end_turn("Done?")]) as api:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        code = main(["run", "--model-id", "org/tiny-vit", "--dataset-id", "org/digits", "--output-dir", str(run), "--platform", "local",
                     "--yes", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 4 and err == ""
    result = RunResult.model_validate_json(out)
    assert result.status == "gate_failed" and result.exit_code == 4 and "gate 1" in result.message
    assert [g.met for g in result.gates] == [False] * 6 and result.gates[0].name == "inspect & qualify"
    assert result.usage.turns == 3 and result.usage.input_tokens == 3600 and result.usage.output_tokens == 240
    assert result.usage.cache_read_input_tokens == 2700 and round(result.usage.cache_read_share, 3) == round(2700 / 6300, 3)
    assert result.usage.cost_usd == pytest.approx(3 * (1200 * 3 + 900 * 0.3 + 80 * 15) / 1e6)
    assert read_result(run) == result and result.hub_url is None


def test_run_json_on_bad_input_is_one_json_document(tmp_path, capsys):
    code = main(["run", "--output-dir", str(tmp_path / "x"), "--llm", "autopilot", "--json", "--quiet"])
    out, err = capsys.readouterr()
    assert code == 2 and err == ""
    result = json.loads(out)
    assert result["status"] == "bad_input" and "--model-id" in result["message"]


@pytest.mark.parametrize("flags,needle", [(["--max-steps", "abc"], "--max-steps: invalid int value: 'abc'"),
                                           (["--platform", "bogus"], "--platform: invalid choice: 'bogus'"),
                                           (["--n-train", "1e3x"], "--n-train: invalid int value"),
                                           (["--no-such-flag"], "unrecognized arguments: --no-such-flag")])
def test_run_json_on_a_flag_argparse_refuses_is_one_json_document(tmp_path, capsys, flags, needle):
    code = main(["run", "--model-id", "a/b", "--output-dir", str(tmp_path / "x"), "--llm", "autopilot", "--json", "--quiet", *flags])
    out, err = capsys.readouterr()
    assert code == 2 and err == ""
    result = RunResult.model_validate_json(out)
    assert result.status == "bad_input" and result.exit_code == 2 and needle in result.message
    code = main(["run", "--model-id", "a/b", "--output-dir", str(tmp_path / "x"), "--llm", "autopilot", *flags])
    out, err = capsys.readouterr()
    assert code == 2 and out == "" and needle in err and len(err.strip().splitlines()) == 1  # without --json: one line on stderr


def test_python_api_returns_bad_input_for_a_value_argparse_refuses(tmp_path, capsys):
    for kwargs, needle in (({"max_steps": "abc"}, "--max-steps"), ({"platform": "bogus"}, "--platform"), ({"n_train": "x"}, "--n-train")):
        result = tao_finetune.run("a/b", llm="autopilot", output_dir=str(tmp_path / "x"), **kwargs)  # never a SystemExit
        assert result.status == "bad_input" and result.exit_code == 2 and needle in result.message, result
    assert capsys.readouterr() == ("", "")


def test_run_json_on_a_locked_dir_or_a_bug_is_still_one_json_document(tmp_path, capsys, monkeypatch):
    """Failures outside the loop (the dir locked by another run, a bug before the loop) keep stdout one RunResult."""
    import socket

    from tao_finetune.agent import cli
    from tao_finetune.agent.lock import LOCK_FILE, _start_time

    run = tmp_path / "run"
    (run / ".tao").mkdir(parents=True)
    holder = os.getppid()  # a live process that is not this one
    (run / LOCK_FILE).write_text(json.dumps({"pid": holder, "host": socket.gethostname(), "start_time": _start_time(holder), "since": 1.0}))
    argv = ["run", "--model-id", "org/tiny-vit", "--dataset-id", "org/digits", "--output-dir", str(run), "--platform", "local",
            "--llm", "autopilot", "--yes", "--json", "--quiet"]
    assert main(argv) == 2
    result = RunResult.model_validate_json(capsys.readouterr().out)
    assert result.status == "bad_input" and f"in use by another tao-finetune (PID {holder}" in result.message
    assert tao_finetune.run("org/tiny-vit", dataset_id="org/digits", output_dir=str(run), platform="local", llm="autopilot").message == result.message
    (run / LOCK_FILE).unlink()

    def broken(*a, **k):
        raise RuntimeError("a bug in the platform factory")

    monkeypatch.setattr(cli, "make_platform", broken)
    assert main(argv) == 1
    out, err = capsys.readouterr()
    result = RunResult.model_validate_json(out)
    assert result.status == "error" and result.exit_code == 1 and "internal error RuntimeError: a bug in the platform factory" in result.message
    assert "crash report: " in result.message and "Traceback" not in out + err


def test_run_json_on_bad_input_holding_brackets_is_one_json_document(tmp_path, capsys):
    """A bad value printed in the error line may hold '[/bold]': plain text, not rich markup (which crashed before the JSON)."""
    code = main(["run", "--model-id", "a/b", "--output-dir", str(tmp_path / "x"), "--llm", "autopilot", "--set", "zzz[/bold]=1", "--json"])
    out, err = capsys.readouterr()
    assert code == 2 and "zzz[/bold]" in err and "internal error" not in err, err
    result = RunResult.model_validate_json(out)
    assert result.status == "bad_input" and "zzz[/bold]" in result.message


def test_a_bad_input_found_after_the_run_dir_opened_reports_its_own_message(tmp_path, monkeypatch):
    """A driver that cannot start (no replay file, no API key) fails once the dir is open: the result said 'all six gates
    already met' (a placeholder) instead of the error."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    for kwargs, needle in (({"llm": "replay"}, "--replay"), ({"llm": "replay", "replay": str(tmp_path / "none.jsonl")}, "none.jsonl"),
                           ({}, "ANTHROPIC_API_KEY")):
        result = tao_finetune.run("org/tiny-vit", dataset_id="org/digits", output_dir=str(tmp_path / "run"), platform="local",
                                  env_file=str(tmp_path / "none.env"), **kwargs)
        assert result.status == "bad_input" and needle in result.message and "already met" not in result.message, result.message
        assert read_result(tmp_path / "run") == result


def test_the_result_never_holds_a_credential(tmp_path, capsys, monkeypatch):
    """A loop that ends on an error quoting a token: the RunResult (stdout, the API, result.json) is redacted."""
    from tao_finetune.agent.loop import Agent

    token = "hf_resultToken0123456789abcdefXYZ"
    monkeypatch.setenv("HF_TOKEN", token)

    def crash(self):
        raise RuntimeError(f"the Hub refused {token}")

    monkeypatch.setattr(Agent, "step", crash)
    run = tmp_path / "run"
    argv = ["run", "--model-id", "org/tiny-vit", "--dataset-id", "org/digits", "--output-dir", str(run), "--platform", "local",
            "--llm", "autopilot", "--yes", "--json", "--quiet", "--env-file", str(tmp_path / "none.env")]
    assert main(argv) == 1
    out = capsys.readouterr().out
    result = RunResult.model_validate_json(out)
    assert "internal error RuntimeError: the Hub refused [REDACTED]" in result.message and token not in out
    assert token not in (run / "result.json").read_text()


def test_python_api_returns_a_question_without_printing(tmp_path, capsys):
    from tao_finetune.agent.demo import make_tiny_vit

    model = make_tiny_vit(tmp_path / "vit")
    capsys.readouterr()
    result = tao_finetune.run(str(model), llm="autopilot", platform="local", allow_cpu=True, push_to_hub=False,
                              output_dir=str(tmp_path / "run"))
    out, err = capsys.readouterr()
    assert (out, err) == ("", "")
    assert isinstance(result, tao_finetune.RunResult)
    assert result.status == "question" and result.exit_code == 3 and "no dataset given" in (result.question or "") and "--dataset-id" in (result.how_to_answer or "")
    assert read_result(tmp_path / "run") == result


def test_python_api_rejects_unknown_inputs_and_drivers():
    with pytest.raises(TypeError, match="unknown input"):
        tao_finetune.run("org/x", datset_id="typo")
    with pytest.raises(ValueError, match="llm must be one of"):
        tao_finetune.run("org/x", llm="gpt")


def test_python_api_full_run_reports_metrics_paths_and_gates(tmp_path):
    import torch

    from tao_finetune.agent.demo import demo_inputs

    with torch.random.fork_rng(devices=[]):  # a fixed init: some draws stay flat for half of 8 epochs and the flat-loss watch asks
        torch.manual_seed(2)
        inputs = demo_inputs(tmp_path / "inputs")
    sets = [s for flag, s in zip(DEMO_SETTINGS[::2], DEMO_SETTINGS[1::2]) if flag == "--set"]
    result = tao_finetune.run(inputs["model_id"], local_dataset_path=inputs["local_dataset_path"], llm="autopilot", platform="local",
                              allow_cpu=True, push_to_hub=False, output_dir=str(tmp_path / "run"), n_epochs=8, sets=sets)
    assert result.ok and result.status == "done", result.message
    assert all(g.met for g in result.gates)
    m = result.metrics
    assert m.name == "accuracy" and m.fine_tuned is not None and m.baseline is not None
    assert m.delta == pytest.approx(m.fine_tuned - m.baseline, abs=1e-6)  # delta is rounded to 6 places
    assert {"checkpoint", "samples", "rerun_skill", "config", "session"} <= set(result.paths)
    assert result.usage.turns > 0 and result.usage.cost_usd == 0.0  # the autopilot costs nothing


def test_python_dash_m_runs_the_cli():
    done = subprocess.run([sys.executable, "-m", "tao_finetune", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "tao-finetune" in done.stdout and "run" in done.stdout
