import pytest

from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools.base import NeedsUser, ToolError
from tao_finetune.tools.general import (AskUserArgs, ListFilesArgs, NoteArgs, ReadFileArgs, SetConfigArgs, ask_user, list_files, note,
                                        read_file, set_config)


@pytest.fixture
def ctx(tmp_path):
    cfg = RunConfig(model_id="org/m", dataset_id="d", output_dir=str(tmp_path / "run"), user_set=["n_train", "hyperparameters.weight_decay"])
    creds = Credentials({})
    c = RunContext(cfg, SessionLog(cfg.out / "session.jsonl", creds), creds)
    c.save()
    return c


def test_read_and_list_stay_inside_the_run_dir(ctx, tmp_path):
    (ctx.run_dir / "logs").mkdir()
    (ctx.run_dir / "logs" / "train.log").write_text("a\n" * 10 + "END")
    out = read_file(ctx, ReadFileArgs(path="logs/train.log", max_chars=3, tail=True))
    assert "\nEND\n" in out and out.startswith("<<<DATA origin='file:logs/train.log'")
    (ctx.run_dir / "train.py").write_text("print(1)")
    assert read_file(ctx, ReadFileArgs(path="train.py")) == "print(1)"
    assert "logs/train.log" in list_files(ctx, ListFilesArgs())
    assert not any(p.startswith(".tao") for p in list_files(ctx, ListFilesArgs()))
    (tmp_path / "secret.txt").write_text("s")
    (ctx.run_dir / "link").symlink_to(tmp_path / "secret.txt")
    for bad in ("../secret.txt", "/etc/passwd", "link"):
        with pytest.raises(ToolError, match="output dir"):
            read_file(ctx, ReadFileArgs(path=bad))
    with pytest.raises(ToolError, match="no such file"):
        read_file(ctx, ReadFileArgs(path="nope.txt"))


def test_set_config_respects_user_values_and_protected_keys(ctx):
    assert set_config(ctx, SetConfigArgs(key="hyperparameters.per_device_train_batch_size", value="16", reason="OOM at 32")).endswith("16")
    assert ctx.config.hyperparameters.per_device_train_batch_size == 16
    assert any("OOM at 32" in n for n in ctx.config.notes)
    with pytest.raises(NeedsUser, match="set by the user"):
        set_config(ctx, SetConfigArgs(key="weight_decay", value="0", reason="simpler"))
    for key, value in (("skip_baseline", "true"), ("n_epochs", "0.01"), ("hyperparameters.max_steps", "1"), ("max_steps", "1"),
                       ("push_to_hub", "false"), ("n_eval", "5"), ("hub_private", "true")):
        with pytest.raises(NeedsUser, match="protected"):
            set_config(ctx, SetConfigArgs(key=key, value=value, reason="faster"))
    assert not ctx.config.skip_baseline and ctx.config.hyperparameters.max_steps == -1 and ctx.config.push_to_hub
    assert not ctx.config.hub_private  # the repo's visibility is the user's: a model cannot flip it either way
    with pytest.raises(NeedsUser, match="approval"):
        set_config(ctx, SetConfigArgs(key="hyperparameters.training_method", value="lora", reason="OOM"))
    with pytest.raises(NeedsUser):
        set_config(ctx, SetConfigArgs(key="model_id", value="other/model", reason="smaller"))
    with pytest.raises(ToolError, match="invalid value"):
        set_config(ctx, SetConfigArgs(key="hyperparameters.learning_rate", value="-1", reason="x y z"))
    with pytest.raises(ToolError, match="unknown config key"):
        set_config(ctx, SetConfigArgs(key="hyperparameters.nope", value="1", reason="x y z"))
    with pytest.raises(ToolError, match="its own step"):
        set_config(ctx, SetConfigArgs(key="gpu_count", value="8", reason="x y z"))


def test_ask_user_and_note(ctx):
    with pytest.raises(NeedsUser, match="Which split"):
        ask_user(ctx, AskUserArgs(question="Which split holds the labels?"))
    ctx.config.emit_progress_log = True
    note(ctx, NoteArgs(text="card silent on the head class"))
    assert "card silent" in (ctx.run_dir / "PROGRESS.md").read_text()
    assert "card silent on the head class" in (ctx.run_dir / "config.yaml").read_text()
