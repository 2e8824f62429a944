from tao_finetune.agent.secrets import REDACTED, Credentials, parse_env_file, redact_patterns


def test_env_file_and_environment(tmp_path, monkeypatch):
    env = tmp_path / ".env"
    env.write_text("# creds\nexport HF_TOKEN='hf_fromfileAAAAAAAAAAAAAAAAAAAAAA'\nWANDB_API_KEY=abc123\nWANDB_PROJECT=proj\nJUNK\n")
    assert parse_env_file(env)["WANDB_PROJECT"] == "proj"
    monkeypatch.setenv("HF_TOKEN", "hf_fromenvBBBBBBBBBBBBBBBBBBBBBBBB")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    creds = Credentials.load(env)
    assert creds.present("HF_TOKEN") and creds.present("WANDB_API_KEY") and not creds.present("NGC_API_KEY")
    assert creds.env(["HF_TOKEN"]) == {"HF_TOKEN": "hf_fromenvBBBBBBBBBBBBBBBBBBBBBBBB"}
    assert "hf_from" not in repr(creds)
    assert Credentials.load(tmp_path / "missing").presence()["WANDB_API_KEY"] is False


def test_redaction_by_value_and_pattern():
    creds = Credentials({"WANDB_API_KEY": "shortish-key-9", "HF_TOKEN": "hf_" + "x" * 30})
    text = f"key shortish-key-9 and hf_{'x' * 30} and stranger hf_{'Z' * 25} and sk-ant-{'a' * 30}"
    out = creds.redact(text)
    assert "shortish-key-9" not in out and "x" * 30 not in out and "Z" * 25 not in out and "sk-ant-" + "a" * 30 not in out
    assert out.count(REDACTED) == 4
    assert redact_patterns("WANDB_API_KEY=" + "f" * 40) == "WANDB_API_KEY=" + REDACTED


def test_a_damaged_default_env_file_is_one_line_for_every_command(tmp_path, monkeypatch, capsys):
    """~/.config/tao/.env that is not UTF-8 (or is a folder) was an internal error in stop, doctor --config and inspect,
    which read it without `run`'s checks: the one loader now refuses it in one line, exit 2."""
    import pytest

    from tao_finetune.agent.cli import main
    from tao_finetune.agent.config import ConfigError, build_config, save_config

    home = tmp_path / "home"
    (home / ".config" / "tao").mkdir(parents=True)
    (home / ".config" / "tao" / ".env").write_bytes(b"HF_TOKEN=\xff\xfe\n")
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(ConfigError, match=r"is not UTF-8 text \(byte 9\)"):
        Credentials.load()
    with pytest.raises(ConfigError, match="is not a file"):
        parse_env_file(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    save_config(build_config({"model_id": "org/m", "output_dir": str(run), "platform": "local"}), run / "config.yaml")
    for argv in (["stop", str(run)], ["doctor", "--platform", "local", "--config", str(run / "config.yaml")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "is not UTF-8 text" in err and "internal error" not in err and len(err.strip().splitlines()) == 1, err
