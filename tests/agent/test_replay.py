"""`tao-finetune replay`: a recorded multi-invocation session replayed whole in both modes, and each kind of divergence
(edited tool result, dropped turn, missing file, log that ends early, torn line) caught under --strict."""

import json
import shutil

import pytest

from tao_finetune.agent.cli import main
from servers.anthropic_api import FakeAnthropic, end_turn, tool_use


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A two-invocation session through the real SDK: probe, note, list, ask -> exit 3; --answer -> note, end turns -> exit 4."""
    from tao_finetune.agent.demo import make_tiny_vit

    root = tmp_path_factory.mktemp("rec")
    model = make_tiny_vit(root / "vit")
    run = root / "run"
    first = [tool_use("probe_model", {}, id="toolu_a"), tool_use("note", {"text": "probed"}, id="toolu_b"),
             tool_use("list_files", {"path": "."}, id="toolu_c"), tool_use("ask_user", {"question": "Which dataset?"}, id="toolu_d")]
    second = [tool_use("note", {"text": "the user picked digits"}, id="toolu_e"), end_turn("waiting"), end_turn("still"), end_turn("stop")]
    argv = ["run", "--model-id", str(model), "--dataset-id", "org/digits", "--output-dir", str(run), "--platform", "local", "--yes", "--quiet"]
    mp = pytest.MonkeyPatch()
    try:
        with FakeAnthropic(first + second) as api:
            mp.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
            mp.setenv("ANTHROPIC_BASE_URL", api.url)
            assert main(argv) == 3
            assert main([*argv, "--answer", "use org/digits"]) == 4
    finally:
        mp.undo()
    return {"session": run / "session.jsonl", "model": model, "root": root}


def events(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def write(path, evs):
    path.write_text("".join(json.dumps(e) + "\n" for e in evs))


@pytest.mark.parametrize("mode", ["full", "model"])
def test_a_multi_invocation_session_replays_whole_without_divergence(recorded, tmp_path, capsys, mode):
    out = tmp_path / "replay"
    code = main(["replay", str(recorded["session"]), "--mode", mode, "--output-dir", str(out), "--strict"])
    text = capsys.readouterr().out
    assert code == 4, text
    assert "invocation 1/2: exit 3 (recorded 3)" in text and "invocation 2/2: exit 4 (recorded 4)" in text
    assert "no divergence" in text
    names = [e["name"] for e in events(out / "session.jsonl") if e["kind"] == "tool_call"]
    assert names == ["probe_model", "note", "list_files", "ask_user", "note"]
    answers = [e["answer"] for e in events(out / "session.jsonl") if e["kind"] == "user"]
    assert answers == ["use org/digits"]


def edited(recorded, tmp_path, change):
    d = tmp_path / "rec"
    d.mkdir()
    evs = events(recorded["session"])
    evs = change(evs)
    write(d / "session.jsonl", evs)
    return d / "session.jsonl"


def test_an_edited_tool_result_is_caught_in_both_modes(recorded, tmp_path, capsys):
    def change(evs):
        for e in evs:
            if e["kind"] == "tool_result" and e["name"] == "list_files":
                e["content"] = e["content"].replace("config.yaml", "secret-plan.txt")
        return evs

    session = edited(recorded, tmp_path, change)
    assert main(["replay", str(session), "--mode", "model", "--output-dir", str(tmp_path / "m"), "--strict"]) == 6
    out = capsys.readouterr().out
    assert "DIVERGENCE invocation 1, turn 3, tool 'list_files': the tool result differs" in out
    assert main(["replay", str(session), "--mode", "full", "--output-dir", str(tmp_path / "f"), "--strict"]) == 6
    out = capsys.readouterr().out
    assert "DIVERGENCE invocation 1, turn 4: the conversation sent to the model differs" in out


def test_a_dropped_turn_is_caught(recorded, tmp_path, capsys):
    def change(evs):
        i = next(i for i, e in enumerate(evs) if e["kind"] == "response" and e["content"][-1].get("name") == "note")
        return evs[:i] + evs[i + 1:]

    session = edited(recorded, tmp_path, change)
    assert main(["replay", str(session), "--mode", "model", "--output-dir", str(tmp_path / "m"), "--strict"]) == 6
    assert "DIVERGENCE invocation 1, turn 2, tool 'note': expected a tool_call of 'note'" in capsys.readouterr().out
    assert main(["replay", str(session), "--mode", "full", "--output-dir", str(tmp_path / "f"), "--strict"]) == 6
    assert "DIVERGENCE invocation 1" in capsys.readouterr().out


def test_a_missing_file_is_caught_in_model_mode_only(recorded, tmp_path, capsys):
    moved = recorded["root"] / "vit-moved"
    shutil.move(recorded["model"], moved)
    try:
        assert main(["replay", str(recorded["session"]), "--mode", "model", "--output-dir", str(tmp_path / "m"), "--strict"]) == 6
        assert "tool 'probe_model': the tool failed this time" in capsys.readouterr().out
        assert main(["replay", str(recorded["session"]), "--mode", "full", "--output-dir", str(tmp_path / "f"), "--strict"]) == 4
        assert "no divergence" in capsys.readouterr().out
    finally:
        shutil.move(moved, recorded["model"])


def test_a_log_that_ends_early_and_a_torn_line(recorded, tmp_path, capsys):
    lines = recorded["session"].read_text().splitlines()
    cut = next(i for i, x in enumerate(lines) if json.loads(x)["kind"] == "tool_call" and json.loads(x)["name"] == "list_files")
    d = tmp_path / "rec"
    d.mkdir()
    (d / "session.jsonl").write_text("\n".join(lines[:cut]) + "\n" + lines[cut][: len(lines[cut]) // 2])
    code = main(["replay", str(d / "session.jsonl"), "--mode", "full", "--output-dir", str(tmp_path / "f"), "--strict"])
    out = capsys.readouterr().out
    assert code == 6 and "DIVERGENCE invocation 1" in out and "Traceback" not in out


@pytest.mark.parametrize("content,needle", [(None, "no session log"), ("not json\n{}\n", "line 1 is not JSON"),
                                            ('{"kind": "note", "t": 1}\n', "no 'start' event"),
                                            ('{"kind": "start", "task": "x"}\n', "format version 1")])
def test_bad_session_files_are_one_line_errors(tmp_path, capsys, content, needle):
    path = tmp_path / "session.jsonl"
    if content is not None:
        path.write_text(content)
    assert main(["replay", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1


def test_replay_refuses_to_overwrite_the_recorded_run(recorded, capsys):
    assert main(["replay", str(recorded["session"]), "--output-dir", str(recorded["session"].parent)]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_replay_never_empties_a_folder_it_did_not_write(recorded, tmp_path, capsys):
    """--output-dir is emptied before a replay only when it is new, empty or an earlier replay's; a folder with other
    files (a careless `--output-dir .`, another run, one holding the recording itself) is refused and kept whole."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.txt").write_text("years of work")
    assert main(["replay", str(recorded["session"]), "--mode", "full", "--output-dir", str(mine)]) == 2
    err = capsys.readouterr().err
    assert "thesis.txt" in err and "choose a new or empty folder" in err and len(err.strip().splitlines()) == 1, err
    assert (mine / "thesis.txt").read_text() == "years of work" and sorted(p.name for p in mine.iterdir()) == ["thesis.txt"]
    # the recording's parent's parent holds the recording: refused, recording intact
    before = recorded["session"].read_bytes()
    assert main(["replay", str(recorded["session"]), "--mode", "full", "--output-dir", str(recorded["root"])]) == 2
    assert "holds the session log" in capsys.readouterr().err and recorded["session"].read_bytes() == before
    # a new folder, then the same folder again (an earlier replay's: emptied and replayed afresh)
    out = tmp_path / "out"
    for _ in range(2):
        assert main(["replay", str(recorded["session"]), "--mode", "full", "--output-dir", str(out), "--strict"]) == 4
        assert "no divergence" in capsys.readouterr().out
    assert sum(1 for e in events(out / "session.jsonl") if e["kind"] == "start") == 2  # one replay's two invocations


def _first(evs, kind):
    return next(e for e in evs if e["kind"] == kind)


@pytest.mark.parametrize("change,needle", [
    (lambda evs: _first(evs, "response").pop("content"), "response event: content: Field required"),
    (lambda evs: _first(evs, "response").update(content="probe it"), "response event: content: Input should be a valid list"),
    (lambda evs: _first(evs, "response")["content"][-1].pop("input"), "response event: content: tool_use block needs"),
    (lambda evs: _first(evs, "tool_result").pop("id"), "tool_result event: id: Field required"),
    (lambda evs: _first(evs, "tool_call").update(name=7), "tool_call event: name: Input should be a valid string"),
    (lambda evs: _first(evs, "exit").update(code="three"), "exit event: code: Input should be a valid integer"),
    (lambda evs: _first(evs, "session").update(version=99), "session event: version: Input should be less than or equal to 2"),
    (lambda evs: _first(evs, "session").update(version="two"), "session event: version: Input should be a valid integer"),
    (lambda evs: _first(evs, "start").update(history=[1, "x"]), "start event: history: message 0: not a message object"),
    (lambda evs: _first(evs, "start").update(history="hello"), "start event: history: not a list of messages"),
])
@pytest.mark.parametrize("mode", ["full", "model"])
def test_an_event_edited_into_the_wrong_shape_is_a_one_line_error(recorded, tmp_path, capsys, change, needle, mode):
    session = edited(recorded, tmp_path, lambda evs: change(evs) and None or evs)
    assert main(["replay", str(session), "--mode", mode, "--output-dir", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    err = captured.err
    assert needle in err and "is not a replayable session log" in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in captured.out + err and "internal error" not in err


def test_a_session_path_with_brackets_is_printed_as_text(tmp_path, capsys):
    """Error lines print user text (paths, values) as plain text: '[/bold]' in a path was read as rich markup and crashed."""
    odd = tmp_path / "[" / "bold]session.jsonl"  # the path reads '.../[/bold]session.jsonl'
    odd.parent.mkdir()
    odd.write_text("{not json\n{}\n")
    assert main(["replay", str(odd), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "[/bold]session.jsonl" in err and "internal error" not in err and len(err.strip().splitlines()) == 1, err


def test_a_bad_env_file_is_a_one_line_error_before_the_output_dir_is_touched(recorded, tmp_path, capsys):
    """replay read --env-file on its own: a folder was an OSError (exit 1), bytes that are not UTF-8 an internal error."""
    binary = tmp_path / "binary.env"
    binary.write_bytes(b"\xff\xfe")
    for env_file, needle in ((tmp_path, "is not a file"), (binary, "is not UTF-8 text")):
        out = tmp_path / "out"
        assert main(["replay", str(recorded["session"]), "--mode", "full", "--output-dir", str(out), "--env-file", str(env_file)]) == 2
        err = capsys.readouterr().err
        assert needle in err and "internal error" not in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
