import pytest

from tao_finetune.agent.fakes import ReplayClient, ScriptedClient, ScriptExhausted, final, tool_call
from tao_finetune.agent.loop import Agent, Limits

from agent_standins import STAND_INS


def test_scripted_client_runs_out_loudly():
    c = ScriptedClient([final("x")])
    assert c.create(system="s", messages=[], tools=[], max_tokens=1).text() == "x"
    with pytest.raises(ScriptExhausted):
        c.create(system="s", messages=[], tools=[], max_tokens=1)


def test_replay_reproduces_a_recorded_run(ctx, tmp_path):
    turns = [tool_call("fake_probe", {"text": "a"}), tool_call("fake_audit"), tool_call("fake_research"), tool_call("fake_project"),
             tool_call("fake_train"), tool_call("fake_push")]
    first = Agent(ScriptedClient(turns), ctx, STAND_INS, "s").run("go")
    assert first.code == 0
    from agent_standins import make_ctx

    ctx2 = make_ctx(tmp_path / "again")
    replayed = Agent(ReplayClient(ctx.run_dir / "session.jsonl"), ctx2, STAND_INS, "s").run("go")
    assert replayed.code == 0
    names = lambda c: [e["name"] for e in c.session.events("tool_call")]
    assert names(ctx2) == names(ctx)


def test_replay_of_missing_or_empty_log(tmp_path):
    with pytest.raises(FileNotFoundError, match="no session log"):
        ReplayClient(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no model responses"):
        ReplayClient(tmp_path / "empty.jsonl")
