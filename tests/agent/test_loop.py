import json

import pytest

from tao_finetune.agent import gates
from tao_finetune.agent.fakes import ScriptedClient, final, tool_call
from tao_finetune.agent.llm import AnthropicClient
from tao_finetune.agent.loop import Agent, Limits

from agent_standins import FAKE_TOKEN, STAND_INS
from servers.anthropic_api import FakeAnthropic, end_turn, error, message, tool_use

SCRIPT = [tool_use("fake_probe", {"text": "ok"}, id="t1"), tool_use("fake_audit", id="t2"), tool_use("fake_research", id="t3"),
          tool_use("fake_project", id="t4"), tool_use("fake_train", id="t5"), tool_use("fake_push", id="t6")]


def client(server, **kw):
    return AnthropicClient(base_url=server.url, api_key="test-key", wait_max=0.01, **kw)


def test_full_scripted_run_through_all_six_gates_over_http(ctx):
    with FakeAnthropic(SCRIPT) as server:
        result = Agent(client(server), ctx, STAND_INS, "system").run("fine-tune")
    assert result.code == 0, result.message
    assert gates.first_unmet(ctx.run_dir, ctx.state) is None
    assert len(server.requests) == 6
    second = server.requests[1]["messages"]
    assert second[-1]["content"][0]["type"] == "tool_result" and second[-1]["content"][0]["tool_use_id"] == "t1"
    assert {t["name"] for t in server.requests[0]["tools"]} == {t.name for t in STAND_INS}
    assert server.requests[0]["tools"][-1]["cache_control"] == {"type": "ephemeral"}
    assert server.requests[0]["system"][0]["cache_control"] == {"type": "ephemeral"}
    met = [e["step"] for e in ctx.session.events("gate") if e["met"]]
    assert met == [1, 2, 3, 4, 5, 6]
    state = json.loads((ctx.run_dir / ".tao" / "state.json").read_text())
    assert [g["step"] for g in state["gates"] if g["met"]] == [1, 2, 3, 4, 5, 6]


def test_tool_of_a_later_step_is_refused_and_does_not_run(ctx):
    with FakeAnthropic([tool_use("fake_push", id="p1"), end_turn("giving up")]) as server:
        result = Agent(client(server), ctx, STAND_INS, "system", Limits(max_nudges=0)).run("go")
    block = server.requests[1]["messages"][-1]["content"][0]
    assert block["is_error"] is True
    assert "refused" in block["content"] and "gate 1" in block["content"] and "task_type" in block["content"]
    assert "hub" not in ctx.state.records
    assert not (ctx.run_dir / "skills").exists()
    assert result.code == 4


def test_invalid_arguments_get_fix_and_retry_then_budget_ends_run(ctx):
    bad = [tool_use("fake_probe", {"count": 9}, id=f"b{i}") for i in range(4)]
    with FakeAnthropic(bad) as server:
        result = Agent(client(server), ctx, STAND_INS, "system").run("go")
    first = server.requests[1]["messages"][-1]["content"][0]
    assert first["is_error"] and "Fix the errors and try again" in first["content"]
    assert "text: Field required" in first["content"] and "count:" in first["content"]
    assert result.code == 1 and "invalid arguments 4 times" in result.message
    assert ctx.config.task_type is None


def test_overloaded_twice_then_success_takes_three_calls(ctx):
    with FakeAnthropic([error(529, "overloaded_error"), error(529, "overloaded_error"), end_turn("hi")]) as server:
        resp = client(server).create(system="s", messages=[{"role": "user", "content": "x"}], tools=[], max_tokens=100)
    assert len(server.requests) == 3
    assert resp.text() == "hi" and resp.usage.input_tokens == 1200 and resp.cost > 0


def test_unauthorized_is_not_retried_and_exits_as_bad_input(ctx):
    with FakeAnthropic([error(401, "authentication_error"), end_turn()]) as server:
        result = Agent(client(server), ctx, STAND_INS, "system").run("go")
    assert len(server.requests) == 1
    assert result.code == 2 and "refused the credentials" in result.message


def test_truncated_tool_use_is_never_executed(ctx):
    cut = message([{"type": "tool_use", "id": "c1", "name": "fake_probe", "input": {"text": "x"}}], "max_tokens")
    with FakeAnthropic([cut, end_turn("stop")]) as server:
        result = Agent(client(server), ctx, STAND_INS, "system", Limits(max_nudges=0)).run("go")
    assert ctx.config.task_type is None
    assert not ctx.session.events("tool_call")
    assert server.requests[1]["max_tokens"] == 2 * server.requests[0]["max_tokens"]
    assert all(m["role"] != "assistant" for m in server.requests[1]["messages"])
    assert result.code == 4


def test_planted_token_never_reaches_the_session_log(ctx):
    leak = tool_use("fake_probe", {"text": f"token={FAKE_TOKEN} "}, id="l1", text=f"I saw {FAKE_TOKEN}")
    with FakeAnthropic([leak, *SCRIPT[1:]]) as server:
        Agent(client(server), ctx, STAND_INS, "system").run(f"my token is {FAKE_TOKEN}")
    log = (ctx.run_dir / "session.jsonl").read_text()
    assert FAKE_TOKEN not in log and "[REDACTED]" in log
    assert all(FAKE_TOKEN not in json.dumps(r["messages"][1:]) for r in server.requests[1:])
    assert FAKE_TOKEN not in (ctx.run_dir / "config.yaml").read_text()


def test_a_token_in_a_continued_conversation_never_reaches_the_model(ctx):
    """`history` (a chat's earlier conversation, rebuilt from a session log or an intake file that may have been edited,
    or written before the token was configured) is redacted like the task before the first request."""
    history = [{"role": "user", "content": f"fine-tune it, token {FAKE_TOKEN}"},
               {"role": "assistant", "content": [{"type": "text", "text": f"ok, I note {FAKE_TOKEN}"}]}]
    client = ScriptedClient([final("waiting")])
    Agent(client, ctx, STAND_INS, "system", Limits(max_nudges=0)).run("go on", history=history)
    assert FAKE_TOKEN not in json.dumps(client.requests[0]["messages"]) and "[REDACTED]" in json.dumps(client.requests[0]["messages"])
    assert FAKE_TOKEN in history[0]["content"]  # the caller's list is not modified


def test_pause_turn_and_unknown_stop_reason_do_not_crash(ctx):
    turns = [{"content": [{"type": "text", "text": "thinking"}], "stop_reason": "pause_turn"},
             {"content": [{"type": "text", "text": "?"}], "stop_reason": "some_future_reason"}]
    result = Agent(ScriptedClient(turns), ctx, STAND_INS, "system", Limits(max_nudges=0)).run("go")
    assert result.code == 4 and "gate 1" in result.message


def test_refusal_stops_the_run(ctx):
    turns = [{"content": [{"type": "text", "text": "I can't help with that."}], "stop_reason": "refusal"}]
    result = Agent(ScriptedClient(turns), ctx, STAND_INS, "system").run("go")
    assert result.code == 1 and "refused" in result.message


def test_step_limit_and_cost_limit(ctx):
    many = [tool_call("fake_probe", {"text": "a"}) for _ in range(5)]
    result = Agent(ScriptedClient(many), ctx, STAND_INS, "system", Limits(max_steps=2)).run("go")
    assert result.code == 5 and "step limit" in result.message
    with FakeAnthropic(SCRIPT) as server:
        result = Agent(client(server), ctx, STAND_INS, "system", Limits(max_cost_usd=0.001)).run("go")
    assert "cost limit" in result.message and len(server.requests) == 0  # a full 8192-token reply could cost $0.12
    with FakeAnthropic(SCRIPT) as server:  # room for one worst-case call, not two: the cap is never overshot
        agent = Agent(client(server), ctx, STAND_INS, "system", Limits(max_cost_usd=0.13))
        result = agent.run("go")
    assert result.code == 5 and "could cost up to" in result.message and len(server.requests) >= 1 and agent.cost <= 0.13


def test_unknown_tool_is_an_error_result(ctx):
    turns = [tool_call("rm_rf", {}), final("ok")]
    c = ScriptedClient(turns)
    Agent(c, ctx, STAND_INS, "system", Limits(max_nudges=0)).run("go")
    block = c.requests[1]["messages"][-1]["content"][0]
    assert block["is_error"] and "unknown tool 'rm_rf'" in block["content"]


def test_same_error_three_times_stops_and_asks(ctx):
    from tao_finetune.agent.errors import ToolError
    from tao_finetune.agent.tooling import NoArgs, tool

    @tool(step=0, register=False)
    def flaky(ctx, args: NoArgs) -> str:
        """Always fails the same way."""
        raise ToolError("disk full")

    turns = [tool_call("flaky", {}) for _ in range(3)]
    result = Agent(ScriptedClient(turns), ctx, [*STAND_INS, flaky], "system").run("go")
    assert result.code == 3 and "same error happened 3 times" in result.message
    assert ctx.state.pending_question == result.message


def test_gate_refusals_are_their_own_category_not_errors(ctx):
    client = ScriptedClient([tool_call("fake_push", {}) for _ in range(4)])
    agent = Agent(client, ctx, STAND_INS, "system", Limits(max_steps=4))
    result = agent.run("go")
    assert result.code == 5 and "step limit" in result.message  # four refusals never become "the same error 3 times"
    assert agent.refusals == 4 and ctx.state.error_counts == {}
    last = client.requests[-1]["messages"][-1]["content"]
    assert last[0]["is_error"] and last[0]["content"].startswith("refused:")
    # every tool-result turn ends with the gate status as it is now
    assert last[-1]["type"] == "text" and last[-1]["text"].startswith("Gate status now:") and "step 1 (inspect & qualify): missing" in last[-1]["text"]


def test_resume_keeps_finished_gates(ctx):
    Agent(ScriptedClient([tool_call("fake_probe", {"text": "a"}), tool_call("fake_audit")]), ctx, STAND_INS, "s", Limits(max_steps=2)).run("go")
    assert gates.first_unmet(ctx.run_dir, ctx.state) == 3
    from tao_finetune.agent.state import RunState

    assert gates.first_unmet(ctx.run_dir, RunState.load(ctx.run_dir)) == 3


def test_nudge_then_gate_failure(ctx):
    c = ScriptedClient([final("done?"), final("really done")])
    result = Agent(c, ctx, STAND_INS, "system", Limits(max_nudges=1)).run("go")
    assert "is missing" in c.requests[1]["messages"][-1]["content"]
    assert result.code == 4


@pytest.mark.parametrize("key", ["model_id", "dataset_id"])
def test_a_tool_that_would_substitute_the_model_or_dataset_asks(ctx, key):
    from pydantic import BaseModel, Field

    from tao_finetune.tools.base import tool

    class A(BaseModel):
        model_id: str | None = Field(None, description="m")
        dataset_id: str | None = Field(None, description="d")

    @tool(step=0, register=False)
    def probe_other(ctx, args: A) -> str:
        """Probe something."""
        return "ran"

    result = Agent(ScriptedClient([tool_call("probe_other", {key: "other/thing"})]), ctx, [probe_other], "s").run("go")
    assert result.code == 3 and "never substitutes" in result.message
    assert not ctx.session.events("tool_result")


class ExplodingClient:
    name = "exploding"

    def create(self, **kw):
        raise RuntimeError("boom")


def test_progress_journal_when_asked(ctx):
    ctx.config.emit_progress_log = True
    Agent(ScriptedClient([tool_call("fake_push"), *[tool_call(n) for n in ()], tool_call("fake_probe", {"text": "a"})]), ctx, STAND_INS, "s",
          Limits(max_steps=2)).run("go")
    lines = (ctx.run_dir / "PROGRESS.md").read_text().splitlines()
    text = "\n".join(lines)
    assert "⚠️ fake_push: refused" in text and "✅ step 1 (inspect & qualify)" in text
    assert "❌" not in text and "step 2" not in text  # gates not reached yet are not events
    assert "⚠️ run stopped (exit 5): step limit reached (2 model turns" in lines[-1]


def test_progress_journal_writes_the_final_stop_of_a_failed_run(ctx):
    ctx.config.emit_progress_log = True
    result = Agent(ExplodingClient(), ctx, STAND_INS, "s").run("go")
    assert result.code == 1
    assert "❌ run stopped (exit 1): internal error RuntimeError: boom" in (ctx.run_dir / "PROGRESS.md").read_text().splitlines()[-1]
