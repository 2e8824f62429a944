import json
import os

import pytest

from tao_finetune.agent.cli import build_parser, main

from servers.anthropic_api import FakeAnthropic, end_turn, tool_use

RUN_FLAGS = ["--model-id", "--dataset-id", "--local-dataset-path", "--local-dataset-format", "--task-type", "--n-train", "--n-eval",
             "--n-epochs", "--lora-r", "--output-dir", "--hf-model-repo", "--push-to-hub", "--no-push-to-hub", "--skip-baseline",
             "--emit-progress-log", "--emit-report", "--emit-unit-tests", "--config", "--set", "--llm", "--yes"]


def test_run_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    missing = [f for f in RUN_FLAGS if f not in out]
    assert not missing


def test_every_run_flag_has_help_and_lists_its_choices():
    run = build_parser()._subparsers._group_actions[0].choices["run"]
    for action in run._actions:
        assert action.help and action.help.strip(), action.option_strings
    by_flag = {s: a for a in run._actions for s in a.option_strings}
    assert by_flag["--local-dataset-format"].choices == ["auto", "imagefolder", "coco", "voc", "jsonl", "arrow", "parquet", "csv"]
    assert "text-classification" in by_flag["--task-type"].choices and by_flag["--platform"].choices == ["docker", "local", "slurm"]
    assert by_flag["--llm"].choices == ("anthropic", "autopilot", "replay")
    assert "(default: 10000)" in by_flag["--n-train"].help and "(default: on)" in by_flag["--push-to-hub"].help


def test_top_help_lists_subcommands(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for cmd in ("run", "inspect", "doctor", "status", "eval", "demo"):
        assert cmd in out
    assert set(build_parser()._subparsers._group_actions[0].choices) >= {"run", "inspect", "doctor", "status", "eval", "demo"}


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    assert main(["run", "--set", "n_train=-5", "--model-id", "a/b", "--output-dir", str(tmp_path / "o"), "--llm", "autopilot"]) == 2
    err = capsys.readouterr().err
    assert "n_train" in err and err.strip().count("\n") == 0
    assert main(["run", "--output-dir", str(tmp_path / "o")]) == 2
    assert main(["run", "--model-id", "a/b", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_anthropic_without_key_is_bad_input(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    assert main(["run", "--model-id", "a/b", "--output-dir", str(tmp_path / "o"), "--platform", "local", "--yes"]) == 2
    assert "ANTHROPIC_API_KEY" in capsys.readouterr().err


def test_other_models_run_in_the_same_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "x")
    out = tmp_path / "o"
    with FakeAnthropic([end_turn("stop")]) as server:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
        main(["run", "--model-id", "a/b", "--output-dir", str(out), "--platform", "local", "--yes", "--quiet"])
    assert main(["run", "--model-id", "c/d", "--output-dir", str(out), "--platform", "local", "--yes"]) == 2


def test_status_reports_gates(tmp_path, capsys):
    assert main(["status", "--output-dir", str(tmp_path)]) == 2
    (tmp_path / "config.yaml").write_text("model_id: a/b\n")
    assert main(["status", "--output-dir", str(tmp_path), "--json"]) == 4
    data = json.loads(capsys.readouterr().out)
    assert data["gates"]["1"]["met"] is False


def test_hf_push_first_is_refused_and_nothing_is_pushed(tmp_path, monkeypatch):
    """Done-when of the foundation: the real SDK, a local server, a model that calls hf_push first."""
    from servers.hub import LocalHub

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("HF_TOKEN", "hf_" + "T" * 34)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    out = tmp_path / "run"
    with LocalHub(tmp_path / "hub") as hub, FakeAnthropic([tool_use("hf_push", {}, id="p1"), end_turn("ok"), end_turn("ok"), end_turn("ok")]) as api:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        code = main(["run", "--model-id", "org/tiny", "--dataset-id", "org/data", "--output-dir", str(out), "--platform", "local",
                     "--yes", "--quiet", "--env-file", str(tmp_path / "none.env")])
        commits = [p for p in hub.paths() if "/commit/" in p or p.endswith("/repos/create")]
    result = api.requests[1]["messages"][-1]["content"][0]
    assert result["is_error"] and "refused" in result["content"] and "step 6" in result["content"]
    assert commits == []
    assert code == 4
    events = [json.loads(line) for line in (out / "session.jsonl").read_text().splitlines()]
    assert any(e["kind"] == "refused" and e["name"] == "hf_push" for e in events)
    assert "T" * 34 not in (out / "session.jsonl").read_text()


def test_status_json_on_a_dir_that_is_not_a_run_is_one_json_object(tmp_path, capsys):
    (tmp_path / "a-file").write_text("not a run")
    for d, needle in ((tmp_path, "config.yaml missing"), (tmp_path / "a-file", "config.yaml missing")):
        assert main(["status", "--output-dir", str(d), "--json"]) == 2
        out, err = capsys.readouterr()
        data = json.loads(out)  # stdout is still one JSON object, with the error in it
        assert data["exit_code"] == 2 and needle in data["error"] and needle in err, (out, err)
        assert main(["status", "--output-dir", str(d)]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and needle in err


def test_answer_on_a_run_with_no_pending_question_is_a_one_line_error(tmp_path, capsys):
    """`--answer` answers the question a run stopped on; with none pending it would reach the model as an answer to None."""
    from tao_finetune.agent.config import build_config, save_config

    fresh, idle = tmp_path / "fresh", tmp_path / "idle"
    idle.mkdir()
    save_config(build_config({"model_id": "a/b", "output_dir": str(idle)}), idle / "config.yaml")
    for out in (fresh, idle):
        argv = ["run", "--model-id", "a/b", "--output-dir", str(out), "--llm", "autopilot", "--yes", "--answer", "lora"]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "has no pending question" in err and len(err.strip().splitlines()) == 1, err
        assert main([*argv, "--json", "--quiet"]) == 2
        assert json.loads(capsys.readouterr().out)["status"] == "bad_input"
    assert not any(fresh.iterdir()) and sorted(p.name for p in idle.iterdir()) == ["config.yaml"]  # nothing written


def test_the_still_running_line_after_ctrl_c_prints_the_run_dir_as_text(tmp_path, capsys, monkeypatch):
    """A run dir whose path holds '[/bold]' was read as rich markup in the line printed after a Ctrl-C: an internal error."""
    import types

    from tao_finetune.agent import cli

    monkeypatch.setattr(cli, "running_jobs", lambda ctx: ["train"])
    run_dir = tmp_path / "[" / "bold]run"  # the path reads '.../[/bold]run'
    cli.after_interrupt(types.SimpleNamespace(run_dir=run_dir), interactive=False)
    assert f"still running: train (detached). Stop it with `tao-finetune stop {run_dir}`" in capsys.readouterr().err


def test_a_bug_before_any_run_dir_is_reported_redacted(tmp_path, capsys, monkeypatch):
    """A crash outside a run (no session to redact with) wrote its report and printed its line with the token in them."""
    from tao_finetune.agent import cli

    token = "hf_crashToken0123456789abcdefABCD"
    monkeypatch.setenv("HF_TOKEN", token)
    monkeypatch.setenv("TMPDIR", str(tmp_path))

    def buggy(args):
        raise RuntimeError(f"could not parse {token[::-1]} near {token}")

    monkeypatch.setattr(cli, "status_command", buggy)
    assert main(["status", "--output-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "internal error RuntimeError" in err and token not in err and token[::-1] not in err, err
    (report,) = (tmp_path / "tao-finetune" / ".tao").glob("crash-*.txt")
    text = report.read_text()
    assert "RuntimeError" in text and token not in text and token[::-1] not in text


def test_user_keys_are_leaves_and_local_paths_absolute(tmp_path, monkeypatch):
    from tao_finetune.agent.cli import config_from_args

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "model").mkdir()
    args = build_parser().parse_args(["run", "--model-id", "./model", "--local-dataset-path", "data", "--set", "learning_rate=1e-4",
                                      "--n-train", "50"])
    cfg, keys = config_from_args(args)
    assert keys == ["hyperparameters.learning_rate", "local_dataset_path", "n_train"]
    assert cfg.model_id == str(tmp_path / "model") and cfg.local_dataset_path == str(tmp_path / "data")
    args = build_parser().parse_args(["run", "--model-id", "org/name"])
    assert config_from_args(args)[0].model_id == "org/name"


@pytest.mark.parametrize("sets", [["hyperparameters.learning_rate.x=1"], ["n_epochs.value=2"],
                                  ["slurm.partition.name=gpu"]])
def test_a_set_below_a_plain_value_of_an_existing_run_is_a_one_line_error(tmp_path, capsys, sets):
    """Resuming a run dir: `--set a.b=x` where the run's config holds a plain value at `a` is bad input, not an internal error."""
    from tao_finetune.agent.config import build_config, save_config

    out = tmp_path / "o"
    out.mkdir()
    save_config(build_config({"model_id": "a/b", "output_dir": str(out), "slurm": {"partition": "debug"}}), out / "config.yaml")
    argv = ["run", "--model-id", "a/b", "--output-dir", str(out), "--llm", "autopilot", "--json", *[x for s in sets for x in ("--set", s)]]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "is not a section" in captured.err and len(captured.err.strip().splitlines()) == 1, captured.err
    assert json.loads(captured.out)["status"] == "bad_input"


@pytest.mark.parametrize("flags,env,key,expected", [
    ([], {}, True, True),  # the spec: W&B when WANDB_API_KEY is present
    ([], {}, False, False),
    ([], {"WANDB_MODE": "disabled"}, True, False),  # ... and not disabled
    (["--no-wandb"], {}, True, False),
    (["--wandb"], {}, False, True),  # asked for without a key: the project's tracker logs offline
])
def test_wandb_is_on_when_the_key_is_present_unless_disabled(tmp_path, monkeypatch, flags, env, key, expected):
    from tao_finetune.agent.cli import config_from_args, wandb_default
    from tao_finetune.agent.secrets import Credentials

    monkeypatch.delenv("WANDB_MODE", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    args = build_parser().parse_args(["run", "--model-id", "org/m", "--output-dir", str(tmp_path / "o"), *flags])
    cfg, user_keys = config_from_args(args)
    wandb_default(cfg, user_keys, Credentials({"WANDB_API_KEY": "k" * 40} if key else {}))
    assert cfg.wandb is expected


def test_the_python_api_maps_wandb_false_to_no_wandb():
    from tao_finetune.agent.api import argv_for

    assert "--no-wandb" in argv_for("org/m", wandb=False) and "--wandb" in argv_for("org/m", wandb=True)
    assert not {"--wandb", "--no-wandb"} & set(argv_for("org/m"))


def test_answer_yes_to_another_model_applies_it_in_a_headless_resume(tmp_path, monkeypatch):
    """`--answer yes` to a proposed model switch applies it (the user as source), as an inline answer does: not exit 2."""
    from tao_finetune.agent.config import load_config
    from tao_finetune.agent.state import RunState

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    out = tmp_path / "run"
    flags = ["--yes", "--quiet", "--env-file", str(tmp_path / "none.env")]
    switch = tool_use("set_request", {"model_id": "org/other-vit", "n_epochs": 5}, id="toolu_switch")
    with FakeAnthropic([switch, end_turn("waiting"), end_turn("waiting")]) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        code = main(["run", "--model-id", "org/tiny", "--dataset-id", "org/data", "--output-dir", str(out), "--platform", "local", *flags])
    assert code == 3  # a question: the switch needs the user's yes
    assert RunState.load(out).pending_choices
    with FakeAnthropic([end_turn("ok")] * 4) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        code = main(["run", "--model-id", "org/tiny", "--output-dir", str(out), "--answer", "yes", *flags])
    assert code == 4  # stopped at gate 1 again (the scripted model does no work), not refused with exit 2
    cfg = load_config(out / "config.yaml")
    assert cfg.model_id == "org/other-vit" and cfg.n_epochs == 5 and cfg.model_facts is None
    assert cfg.recipe["n_epochs"].rank == "user" and cfg.recipe["n_epochs"].source == "user"
    assert any("the user approved" in n and "org/other-vit" in n for n in cfg.notes)
    assert "Applied the user's choice: model_id=org/other-vit" in json.dumps(api.requests[0]["messages"])
