"""Issue 10: every bad input and every fault ends in one clear line and a documented exit code, never a traceback.

A table of hostile inputs and faults across `run`, `inspect`, `status`, `stop`, `doctor`, `eval` and the tools. The CLI
cases run `main()` in-process (fast) and check the exit code, that stderr holds exactly one message line (notes
aside) matching the expected text, and that no traceback was printed. Faults come from the real producers: the
local Anthropic stand-in (5xx, malformed bodies, hangs), recorded sessions, a patched writer for a full disk, live
and dead processes holding the lock, and subprocess runs that are killed or interrupted.
"""

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from servers import step1_data as D
from servers.anthropic_api import FakeAnthropic, Hang, Raw, end_turn, error, message, tool_use
from tao_finetune.agent import llm
from tao_finetune.agent.cli import main
from tao_finetune.agent.errors import ExitCode
from tao_finetune.agent.lock import LOCK_FILE, RunLock, _start_time
from tao_finetune.agent.session import FORMAT_VERSION, SessionFormatError, SessionLog, read_events
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.state import RunState
from tao_finetune.tools import jobs
from tao_finetune.tools.base import ToolError

OK, BUG, BAD, ASK, GATE, LIMIT, INT = 0, 1, 2, 3, 4, 5, 130
REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------ helpers
def w(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


def ev(kind: str, **data) -> str:
    return json.dumps({"t": 1.0, "kind": kind, **data}) + "\n"


def replay_file(t: Path, n: int = 3, name: str = "rec.jsonl") -> Path:
    """A recorded session of n end_turn responses (a model that never calls a tool: the run ends at gate 1, exit 4)."""
    body = ev("session", version=1) + "".join(ev("response", content=[{"type": "text", "text": "nothing to do"}], stop_reason="end_turn")
                                            for _ in range(n))
    return w(t / name, body)


def run_args(t: Path, *extra: str, llm_: str = "replay", out: str = "o") -> list[str]:
    base = ["run", "--model-id", "acme/tiny", "--output-dir", str(t / out), "--platform", "local", "--yes", "--quiet",
            "--env-file", str(t / "none.env"), "--llm", llm_]
    if llm_ == "replay" and "--replay" not in extra:
        base += ["--replay", str(replay_file(t))]
    return base + list(extra)


def existing_run(t: Path) -> Path:
    """A run dir made by a real (replayed) run."""
    assert main(run_args(t)) == GATE
    return t / "o"


def invoke(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse
        code = exit_.code
    out, err = capsys.readouterr()
    return int(code), out, err


def message_lines(err: str) -> list[str]:
    return [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("note:")]


def assert_one_line(code: int, out: str, err: str, expected_code: int, pattern: str, lines: int = 1) -> None:
    assert "Traceback" not in out + err, out + err
    assert code == expected_code, f"exit {code} != {expected_code}: {err or out}"
    msgs = message_lines(err)
    assert len(msgs) == lines, f"expected {lines} message line(s), got: {msgs}"
    assert re.search(pattern, msgs[0]), f"{pattern!r} not in {msgs[0]!r}"


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(autouse=True)
def fast_api(monkeypatch):
    """Retries without back-off and short request timeouts (the behaviour is the same, the suite stays fast)."""
    monkeypatch.setattr(llm, "WAIT_MAX_S", 0.0)
    monkeypatch.setattr(llm, "REQUEST_TIMEOUT_S", 1.0)
    monkeypatch.setattr(llm, "MAX_ATTEMPTS", 3)


# ------------------------------------------------------------------ bad CLI input: exit 2, one line
def bomb_png(path: Path) -> Path:
    """A small PNG that declares 100,000 x 100,000 pixels (10^10 > 2x PIL's MAX_IMAGE_PIXELS)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
    return w(path, data)


CLI_BAD = [
    # argparse: types, choices, missing values
    ("n-train-not-int", lambda t: run_args(t, "--n-train", "ten"), BAD, r"--n-train.*invalid int"),
    ("n-eval-float", lambda t: run_args(t, "--n-eval", "1.5"), BAD, r"--n-eval.*invalid int"),
    ("n-epochs-text", lambda t: run_args(t, "--n-epochs", "many"), BAD, r"--n-epochs.*invalid float"),
    ("lora-r-text", lambda t: run_args(t, "--lora-r", "x"), BAD, r"--lora-r"),
    ("max-steps-text", lambda t: run_args(t, "--max-steps", "lots"), BAD, r"--max-steps"),
    ("max-cost-text", lambda t: run_args(t, "--max-cost", "$5"), BAD, r"--max-cost"),
    ("max-hours-text", lambda t: run_args(t, "--max-hours", "1h"), BAD, r"--max-hours"),
    ("llm-unknown", lambda t: run_args(t, "--llm", "gpt"), BAD, r"--llm.*invalid choice"),
    ("unknown-flag", lambda t: run_args(t, "--frobnicate"), BAD, r"unrecognized arguments"),
    ("flag-without-value", lambda t: ["run", "--model-id"], BAD, r"expected one argument"),
    ("unknown-command", lambda t: ["train"], BAD, r"invalid choice"),
    ("no-command", lambda t: [], BAD, r"required"),
    ("status-without-dir", lambda t: ["status"], BAD, r"--output-dir"),
    ("stop-without-dir", lambda t: ["stop"], BAD, r"DIR"),
    ("demo-bad-platform", lambda t: ["demo", "--platform", "k8s"], BAD, r"invalid choice"),
    ("doctor-bad-platform", lambda t: ["doctor", "--platform", "k8s"], BAD, r"invalid choice"),
    ("inspect-bad-format", lambda t: ["inspect", "--model-id", "a/b", "--local-dataset-format", "xls"], BAD, r"invalid choice"),
    # limits
    ("max-steps-zero", lambda t: run_args(t, "--max-steps", "0"), BAD, r"--max-steps must be a positive"),
    ("max-steps-negative", lambda t: run_args(t, "--max-steps", "-3"), BAD, r"--max-steps must be a positive"),
    ("max-cost-zero", lambda t: run_args(t, "--max-cost", "0"), BAD, r"--max-cost must be a positive"),
    ("max-cost-nan", lambda t: run_args(t, "--max-cost", "nan"), BAD, r"--max-cost must be a positive"),
    ("max-cost-inf", lambda t: run_args(t, "--max-cost", "inf"), BAD, r"--max-cost must be a positive"),
    ("max-hours-negative", lambda t: run_args(t, "--max-hours", "-1"), BAD, r"--max-hours must be a positive"),
    # --set and config values
    ("set-without-equals", lambda t: run_args(t, "--set", "learning_rate"), BAD, r"--set expects key=value"),
    ("set-negative-n-train", lambda t: run_args(t, "--set", "n_train=-5"), BAD, r"n_train"),
    ("set-lr-text", lambda t: run_args(t, "--set", "learning_rate=fast"), BAD, r"learning_rate"),
    ("set-lr-zero", lambda t: run_args(t, "--set", "learning_rate=0"), BAD, r"learning_rate"),
    ("set-unknown-key", lambda t: run_args(t, "--set", "no_such_key=1"), BAD, r"no_such_key"),
    ("set-bad-platform", lambda t: run_args(t, "--set", "platform=k8s"), BAD, r"platform"),
    ("flag-bad-task", lambda t: run_args(t, "--task-type", "mind-reading"), BAD, r"task.type"),
    ("n-train-zero", lambda t: run_args(t, "--n-train", "0"), BAD, r"n_train"),
    ("n-epochs-negative", lambda t: run_args(t, "--n-epochs", "-1"), BAD, r"n_epochs"),
    ("no-model", lambda t: ["run", "--output-dir", str(t / "o"), "--llm", "autopilot"], BAD, r"a model is required"),
    ("empty-model", lambda t: ["run", "--model-id", "  ", "--output-dir", str(t / "o"), "--llm", "autopilot"], BAD, r"model_id"),
    # --config files
    ("config-missing", lambda t: run_args(t, "--config", str(t / "nope.yaml")), BAD, r"config file not found"),
    ("config-directory", lambda t: run_args(t, "--config", str((t / "cfgdir").mkdir() or t / "cfgdir")), BAD, r"is a directory"),
    ("config-not-utf8", lambda t: run_args(t, "--config", str(w(t / "c.yaml", b"model_id: \xff\xfe\n"))), BAD, r"not UTF-8"),
    ("config-bad-yaml", lambda t: run_args(t, "--config", str(w(t / "c.yaml", "model_id: [unclosed\n"))), BAD, r"not valid YAML"),
    ("config-a-list", lambda t: run_args(t, "--config", str(w(t / "c.yaml", "- a\n- b\n"))), BAD, r"must hold a mapping"),
    ("config-a-scalar", lambda t: run_args(t, "--config", str(w(t / "c.yaml", "42\n"))), BAD, r"must hold a mapping"),
    ("config-wrong-type", lambda t: run_args(t, "--config", str(w(t / "c.yaml", "model_id: a/b\nn_train: lots\n"))), BAD, r"n_train"),
    ("config-unknown-key", lambda t: run_args(t, "--config", str(w(t / "c.yaml", "model_id: a/b\nbogus: 1\n"))), BAD, r"bogus"),
    ("config-binary", lambda t: run_args(t, "--config", str(w(t / "c.yaml", os.urandom(64) + b"\x00"))), BAD, r"config file"),
    ("config-hyperparams-list", lambda t: run_args(t, "--config", str(w(t / "c.yaml", "model_id: a/b\nhyperparameters: [1]\n"))), BAD,
     r"hyperparameters"),
    # --env-file
    ("env-file-directory", lambda t: run_args(t, "--env-file", str((t / "envdir").mkdir() or t / "envdir")), BAD, r"--env-file .* is not a file"),
    ("env-file-not-utf8", lambda t: run_args(t, "--env-file", str(w(t / "x.env", b"HF_TOKEN=\xff\xfe\n"))), BAD, r"--env-file .* not UTF-8"),
    # --output-dir
    ("output-dir-is-a-file", lambda t: run_args(t, "--output-dir", str(w(t / "f.txt", "x"))), BAD, r"--output-dir .* is a file"),
    ("output-dir-under-a-file", lambda t: run_args(t, "--output-dir", str(w(t / "f.txt", "x") / "sub")), BAD, r"cannot be created"),
    ("output-dir-nul", lambda t: run_args(t, "--output-dir", str(t / "a\x00b")), BAD, r"NUL byte"),
    ("output-dir-long-name", lambda t: run_args(t, "--output-dir", str(t / ("n" * 300))), BAD, r"over 255 bytes"),
    # --replay
    ("replay-without-file", lambda t: run_args(t, "--replay", "") [:-2] + [], BAD, r"--llm replay needs --replay"),
    ("replay-missing", lambda t: run_args(t, "--replay", str(t / "none.jsonl")), BAD, r"--replay: no session log"),
    ("replay-directory", lambda t: run_args(t, "--replay", str((t / "rd").mkdir() or t / "rd")), BAD, r"--replay: .* is a directory"),
    ("replay-not-json", lambda t: run_args(t, "--replay", str(w(t / "r.jsonl", "hello\nworld\n"))), BAD, r"--replay: .* line 1"),
    ("replay-not-utf8", lambda t: run_args(t, "--replay", str(w(t / "r.jsonl", b"\xff\xfe\xfd\n"))), BAD, r"--replay: .* not UTF-8"),
    ("replay-empty", lambda t: run_args(t, "--replay", str(w(t / "r.jsonl", ""))), BAD, r"--replay: .* no model responses"),
    ("replay-no-responses", lambda t: run_args(t, "--replay", str(w(t / "r.jsonl", ev("start") + ev("exit", code=0)))), BAD,
     r"no model responses"),
    ("replay-future-version", lambda t: run_args(t, "--replay", str(w(t / "r.jsonl", ev("session", version=99) + ev("response", content=[])))),
     BAD, r"format version 99"),
    ("replay-json-arrays", lambda t: run_args(t, "--replay", str(w(t / "r.jsonl", "[1]\n[2]\n"))), BAD, r"line 1 is not a JSON event"),
    # dataset path and model
    ("dataset-path-missing", lambda t: run_args(t, "--local-dataset-path", str(t / "nodata")), BAD, r"does not exist"),
    ("dataset-path-nul", lambda t: run_args(t, "--local-dataset-path", "da\x00ta"), BAD, r"local_dataset_path"),
    ("anthropic-without-key", lambda t: run_args(t, llm_="anthropic"), BAD, r"ANTHROPIC_API_KEY is not set"),
    # status / stop / doctor / eval
    ("status-no-run", lambda t: ["status", "--output-dir", str(t)], BAD, r"no run in"),
    ("status-config-is-dir", lambda t: ["status", "--output-dir", str((t / "config.yaml").mkdir() or t)], BAD, r"no run in"),
    ("status-dir-is-file", lambda t: ["status", "--output-dir", str(w(t / "f", "x"))], BAD, r"no run in"),
    ("stop-no-run", lambda t: ["stop", str(t / "nothing")], BAD, r"no run in"),
    ("stop-bad-config", lambda t: ["stop", str(w(t / "r" / "config.yaml", "model_id: [\n").parent)], BAD, r"not valid YAML"),
    ("doctor-config-missing", lambda t: ["doctor", "--config", str(t / "no.yaml")], BAD, r"config file not found"),
    ("doctor-config-dir", lambda t: ["doctor", "--config", str(t)], BAD, r"is a directory"),
    ("doctor-config-garbage", lambda t: ["doctor", "--config", str(w(t / "c.yaml", b"\x00\xff"))], BAD, r"config file"),
    ("eval-cases-dir-missing", lambda t: ["eval", "--cases-dir", str(t / "none"), "--out", str(t / "e")], BAD, r"is not a folder"),
    ("eval-case-bad-yaml", lambda t: ["eval", "--cases-dir", str(w(t / "c" / "x.yaml", "id: [\n").parent), "--out", str(t / "e")], BAD,
     r"eval case 'x.yaml'"),
    ("eval-case-a-list", lambda t: ["eval", "--cases-dir", str(w(t / "c" / "x.yaml", "- 1\n").parent), "--out", str(t / "e")], BAD,
     r"must hold a mapping"),
    ("eval-case-unknown-key", lambda t: ["eval", "--cases-dir", str(w(t / "c" / "x.yaml", "id: a\nargs: []\nfoo: 1\n").parent),
                                         "--out", str(t / "e")], BAD, r"eval case 'x.yaml'"),
    ("eval-case-not-utf8", lambda t: ["eval", "--cases-dir", str(w(t / "c" / "x.yaml", b"id: \xff\n").parent), "--out", str(t / "e")], BAD,
     r"eval case 'x.yaml'"),
]


@pytest.mark.parametrize("argv, code, pattern", [c[1:] for c in CLI_BAD], ids=[c[0] for c in CLI_BAD])
def test_bad_cli_input_is_one_line(capsys, tmp_path, monkeypatch, argv, code, pattern):
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    assert_one_line(*invoke(capsys, argv(tmp_path)), code, pattern)


# ------------------------------------------------------------------ damaged run dirs: repaired with a note, or refused
def with_run(mutate):
    def build(t: Path) -> list[str]:
        run = existing_run(t)
        mutate(run)
        return run_args(t, "--replay", str(replay_file(t, name="again.jsonl")))
    return build


def status_of(mutate):
    def build(t: Path) -> list[str]:
        run = existing_run(t)
        mutate(run)
        return ["status", "--output-dir", str(run)]
    return build


DAMAGED = [
    ("state-garbage", with_run(lambda r: w(r / ".tao/state.json", "{not json")), GATE, r"gate 1"),
    ("state-not-utf8", with_run(lambda r: w(r / ".tao/state.json", b"\xff\xfe")), GATE, r"gate 1"),
    ("state-wrong-types", with_run(lambda r: w(r / ".tao/state.json", '{"records": 5, "gates": "x"}')), GATE, r"gate 1"),
    ("state-a-list", with_run(lambda r: w(r / ".tao/state.json", "[]")), GATE, r"gate 1"),
    ("state-empty", with_run(lambda r: w(r / ".tao/state.json", "")), GATE, r"gate 1"),
    ("state-is-a-dir", with_run(lambda r: ((r / ".tao/state.json").unlink(), (r / ".tao/state.json").mkdir())), BAD, r"is a directory"),
    ("session-torn-last-line", with_run(lambda r: w(r / "session.jsonl", (r / "session.jsonl").read_text() + '{"t": 1, "kind": "resp')),
     GATE, r"gate 1"),
    ("session-missing-newline", with_run(lambda r: w(r / "session.jsonl", (r / "session.jsonl").read_text().rstrip("\n"))), GATE, r"gate 1"),
    ("session-corrupt-middle", with_run(lambda r: w(r / "session.jsonl", "garbage\n" + (r / "session.jsonl").read_text())), BAD,
     r"line 1 is not a JSON event.*move session.jsonl away"),
    ("session-future-version", with_run(lambda r: w(r / "session.jsonl", ev("session", version=FORMAT_VERSION + 1))), BAD, r"format version"),
    ("session-version-not-a-number", with_run(lambda r: w(r / "session.jsonl", ev("session", version="two"))), BAD, r"format version 'two'"),
    ("session-is-a-dir", with_run(lambda r: ((r / "session.jsonl").unlink(), (r / "session.jsonl").mkdir())), BAD, r"is a directory"),
    ("config-yaml-garbage", with_run(lambda r: w(r / "config.yaml", "model_id: [\n")), BAD, r"not valid YAML"),
    ("config-yaml-not-utf8", with_run(lambda r: w(r / "config.yaml", b"\xff")), BAD, r"not UTF-8"),
    ("config-yaml-other-model", with_run(lambda r: w(r / "config.yaml", "model_id: other/model\n")), BAD, r"holds a run of 'other/model'"),
    ("config-yaml-bad-value", with_run(lambda r: w(r / "config.yaml", "model_id: acme/tiny\nn_train: -1\n")), BAD, r"n_train"),
    ("stale-lock-dead-pid", with_run(lambda r: w(r / LOCK_FILE, json.dumps({"pid": dead_pid(), "since": 1.0}))), GATE, r"gate 1"),
    ("stale-lock-garbage", with_run(lambda r: w(r / LOCK_FILE, "\x00garbage")), GATE, r"gate 1"),
    ("stale-lock-reused-pid", with_run(lambda r: w(r / LOCK_FILE, json.dumps({"pid": os.getppid(), "start_time": "1"}))), GATE, r"gate 1"),
    ("reports-garbage", with_run(lambda r: w(r / "reports/eval_results.json", b"\xff{")), GATE, r"gate 1"),
    ("status-state-garbage", status_of(lambda r: w(r / ".tao/state.json", "{")), GATE, None),
    ("status-state-not-utf8", status_of(lambda r: w(r / ".tao/state.json", b"\xff")), GATE, None),
    ("status-state-dir", status_of(lambda r: ((r / ".tao/state.json").unlink(), (r / ".tao/state.json").mkdir())), BAD, r"is a directory"),
    ("status-config-garbage", status_of(lambda r: w(r / "config.yaml", "::\x00")), GATE, None),
    ("status-results-dir", status_of(lambda r: (r / "reports/eval_results.json").mkdir(parents=True)), GATE, None),
    ("status-results-binary", status_of(lambda r: w(r / "reports/baseline_results.json", os.urandom(32))), GATE, None),
    ("status-meta-garbage", status_of(lambda r: w(r / "meta/preflight.json", "[1, 2")), GATE, None),
]


@pytest.mark.parametrize("build, code, pattern", [c[1:] for c in DAMAGED], ids=[c[0] for c in DAMAGED])
def test_damaged_run_dirs_are_repaired_or_refused_in_one_line(capsys, tmp_path, build, code, pattern):
    argv = build(tmp_path)
    capsys.readouterr()
    got, out, err = invoke(capsys, argv)
    if pattern is None:  # status: the gate table on stdout, at most a note on stderr
        assert "Traceback" not in out + err and got == code and "step 1" in out
        assert not message_lines(err)
        return
    assert_one_line(got, out, err, code, pattern)
    if code == GATE:  # the run went on: the repair is noted in the session log and the run ended with an exit event
        events = read_events(tmp_path / "o" / "session.jsonl")
        assert events[-1]["kind"] == "exit" and events[-1]["code"] == GATE


def test_repairs_are_noted(capsys, tmp_path):
    run = existing_run(tmp_path)
    w(run / ".tao/state.json", '{"pending_question": "which split?", "records": 7}')
    w(run / "session.jsonl", (run / "session.jsonl").read_text() + '{"t": 1, "kind": "to')
    w(run / LOCK_FILE, json.dumps({"pid": dead_pid()}))
    capsys.readouterr()
    assert main(run_args(tmp_path, "--replay", str(replay_file(tmp_path, name="b.jsonl")))) == GATE
    err = capsys.readouterr().err
    notes = [ln for ln in err.splitlines() if ln.startswith("note:")]
    assert len(notes) == 3 and any("torn last line" in n for n in notes) and any("stale lock" in n for n in notes)
    assert any("kept pending_question" in n for n in notes)
    texts = [e["text"] for e in read_events(run / "session.jsonl") if e["kind"] == "note"]
    assert any("torn" in t for t in texts) and any("state.json was corrupt" in t for t in texts)
    assert list((run / ".tao").glob("state.json.corrupt-*"))


# ------------------------------------------------------------------ the model service misbehaves
def api_run(t: Path, *extra: str) -> list[str]:
    return run_args(t, *extra, llm_="anthropic")


BODY_OK = end_turn("nothing to do")
API = [
    ("401", [error(401, "authentication_error")], BAD, r"refused the credentials \(401\)"),
    ("403", [error(403, "permission_error")], BAD, r"refused the credentials \(403\)"),
    ("400", [error(400, "invalid_request_error")], BUG, r"answered 400"),
    ("404", [error(404, "not_found_error")], BUG, r"answered 404"),
    ("413", [error(413, "request_too_large")], BUG, r"answered 413"),
    ("500-every-time", [error(500, "api_error")] * 3, BUG, r"answered 500"),
    ("529-every-time", [error(529, "overloaded_error")] * 3, BUG, r"answered 529"),
    ("429-every-time", [error(429, "rate_limit_error")] * 3, BUG, r"answered 429"),
    ("503-then-ok", [error(503, "api_error")] + [BODY_OK] * 3, GATE, r"gate 1"),
    ("not-json", [Raw(b"<html>oops</html>")] * 3, BUG, r"malformed response 3 times.*not JSON"),
    ("truncated-json", [Raw(b'{"content": [{"type": "te')] * 3, BUG, r"malformed response"),
    ("empty-body", [Raw(b"")] * 3, BUG, r"malformed response"),
    ("json-array", [Raw(b"[1, 2, 3]")] * 3, BUG, r"body is list"),
    ("json-null", [Raw(b"null")] * 3, BUG, r"body is NoneType"),
    ("content-not-list", [Raw(json.dumps({**BODY_OK, "content": "hi"}).encode())] * 3, BUG, r"'content' is not a list"),
    ("block-without-type", [Raw(json.dumps({**BODY_OK, "content": [{"text": "x"}]}).encode())] * 3, BUG, r"typed blocks"),
    ("tool-use-without-id", [Raw(json.dumps(message([{"type": "tool_use", "name": "x", "input": {}}], "tool_use")).encode())] * 3, BUG,
     r"tool_use block lacks"),
    ("tool-input-not-object", [Raw(json.dumps(message([{"type": "tool_use", "id": "a", "name": "x", "input": "rm -rf"}], "tool_use")).encode())]
     * 3, BUG, r"tool_use block lacks"),
    ("stop-reason-number", [Raw(json.dumps({**BODY_OK, "stop_reason": 7}).encode())] * 3, BUG, r"stop_reason"),
    ("not-utf8", [Raw(b"\xff\xfe\xfd", content_type="text/plain")] * 3, BUG, r"malformed"),
    ("usage-garbage", [{**BODY_OK, "usage": {"input_tokens": "many", "output_tokens": None}}] * 3, GATE, r"gate 1"),
    ("malformed-then-ok", [Raw(b"oops")] + [BODY_OK] * 3, GATE, r"gate 1"),
    ("refusal", [message([{"type": "text", "text": "I won't."}], "refusal")], BUG, r"refused to continue"),
    ("unknown-tool", [tool_use("rm_rf", {"path": "/"})] + [BODY_OK] * 3, GATE, r"gate 1"),
    ("hang-past-request-timeout", [Hang(3)] * 3, BUG, r"did not answer within 1 s"),
    ("cost-cap-before-any-call", [BODY_OK] * 3, LIMIT, r"cost limit.*--max-cost \$0\.01.*re-run the same command"),
    ("step-limit", [tool_use("note", {"text": "a note"})] * 3, LIMIT, r"step limit reached \(1 model turns"),
]
API_EXTRA = {"cost-cap-before-any-call": ["--max-cost", "0.01"], "step-limit": ["--max-steps", "1"]}


@pytest.mark.parametrize("replies, code, pattern", [c[1:] for c in API], ids=[c[0] for c in API])
def test_api_faults_end_in_one_line(capsys, tmp_path, monkeypatch, replies, code, pattern):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    case = next(c[0] for c in API if c[1] is replies)
    with FakeAnthropic(replies) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        got = invoke(capsys, api_run(tmp_path, *API_EXTRA.get(case, [])))
    assert_one_line(*got, code, pattern)
    events = read_events(tmp_path / "o" / "session.jsonl")
    assert events[-1]["kind"] == "exit" and events[-1]["code"] == code


def test_unreachable_api_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
    assert_one_line(*invoke(capsys, api_run(tmp_path)), BUG, r"cannot reach the Anthropic API at 'http://127.0.0.1:9")


def test_a_hanging_api_ends_at_the_runs_deadline(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    monkeypatch.setattr(llm, "REQUEST_TIMEOUT_S", 30.0)
    with FakeAnthropic([Hang(20)] * 3) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        t0 = time.monotonic()
        got = invoke(capsys, api_run(tmp_path, "--max-hours", "0.0005"))  # 1.8 s
    assert time.monotonic() - t0 < 10
    assert_one_line(*got, LIMIT, r"wall-time limit \(--max-hours\).*re-run the same command to resume")


def test_truncated_replies_are_retried_with_streaming(capsys, tmp_path, monkeypatch):
    """Two max_tokens stops double max_tokens to 32,768, which the SDK only allows streamed: the retry streams."""
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    cut = message([{"type": "text", "text": "a long reply that is cut"}], "max_tokens")
    with FakeAnthropic([cut, cut, tool_use("note", {"text": "now whole"})] + [BODY_OK] * 3) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        got = invoke(capsys, api_run(tmp_path))
    assert_one_line(*got, GATE, r"gate 1")
    assert [r["max_tokens"] for r in api.requests[:3]] == [8192, 16384, 32768]
    assert [bool(r.get("stream")) for r in api.requests[:3]] == [False, True, True]
    calls = [e for e in read_events(tmp_path / "o" / "session.jsonl") if e["kind"] == "tool_call"]
    assert [c["name"] for c in calls] == ["note"]


def test_the_cost_cap_is_not_overshot(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    with FakeAnthropic([tool_use("note", {"text": f"note {i}"}, id=f"t{i}") for i in range(40)]) as api:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
        got = invoke(capsys, api_run(tmp_path, "--max-cost", "0.2"))
    assert_one_line(*got, LIMIT, r"cost limit")
    spent = sum(e.get("cost_usd", 0) for e in read_events(tmp_path / "o" / "session.jsonl") if e["kind"] == "response")
    assert 0 < spent <= 0.2 and len(api.requests) >= 2


# ------------------------------------------------------------------ faults of the machine and the process
def test_a_second_run_on_a_live_dir_exits_2_naming_the_pid(capsys, tmp_path):
    run = existing_run(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        w(run / LOCK_FILE, json.dumps({"pid": holder.pid, "start_time": _start_time(holder.pid), "since": time.time()}))
        capsys.readouterr()
        before = (run / "session.jsonl").read_text()
        assert_one_line(*invoke(capsys, run_args(tmp_path)), BAD, rf"in use by another tao-finetune \(PID {holder.pid}, since")
        assert (run / "session.jsonl").read_text() == before  # nothing interleaved
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_exclusive_and_released():
    import tempfile

    from tao_finetune.agent.errors import BadInput

    with tempfile.TemporaryDirectory() as d:
        a = RunLock(Path(d)).acquire()
        fake_other = json.loads((Path(d) / LOCK_FILE).read_text()) | {"pid": os.getppid(), "start_time": _start_time(os.getppid())}
        a.release()
        assert not (Path(d) / LOCK_FILE).exists()
        w(Path(d) / LOCK_FILE, json.dumps(fake_other))
        with pytest.raises(BadInput, match=f"PID {os.getppid()}"):
            RunLock(Path(d)).acquire()


@pytest.mark.parametrize("where", ["session", "config"])
def test_a_full_disk_is_one_line(capsys, tmp_path, monkeypatch, where):
    """A patched writer raises ENOSPC part-way through the run."""
    from tao_finetune.agent import config as config_mod
    from tao_finetune.agent import session as session_mod

    existing_run(tmp_path)
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "x"))
    if where == "session":
        real = session_mod.SessionLog.event

        def event(self, kind, **data):
            if kind == "start":
                raise full
            return real(self, kind, **data)
        monkeypatch.setattr(session_mod.SessionLog, "event", event)
    else:
        monkeypatch.setattr(config_mod, "atomic_write_text", lambda *a, **k: (_ for _ in ()).throw(full))
    capsys.readouterr()
    assert_one_line(*invoke(capsys, run_args(tmp_path, "--replay", str(replay_file(tmp_path, name="b.jsonl")))), BUG,
                    r"No space left on device")
    assert (tmp_path / "o" / "config.yaml").is_file()  # what was produced before is intact


def test_a_bug_prints_one_line_and_a_crash_report_and_writes_the_exit_event(capsys, tmp_path, monkeypatch):
    from tao_finetune.agent import fakes

    def broken(self, **kw):
        raise RuntimeError("something nobody expected\nwith a second line")
    monkeypatch.setattr(fakes.ReplayClient, "create", broken)
    got = invoke(capsys, run_args(tmp_path))
    assert_one_line(*got, BUG, r"internal error RuntimeError: something nobody expected with a second line; crash report: ")
    report = Path(message_lines(got[2])[0].split("crash report: ")[1])
    assert report.is_file() and "Traceback" in report.read_text() and report.parent == tmp_path / "o" / ".tao"
    events = read_events(tmp_path / "o" / "session.jsonl")
    assert events[-1]["kind"] == "exit" and events[-1]["code"] == BUG


def test_a_bug_outside_the_loop_is_one_line_too(capsys, tmp_path, monkeypatch):
    from tao_finetune.agent import cli

    monkeypatch.setattr(cli, "system_vars", lambda ctx: 1 / 0)
    got = invoke(capsys, run_args(tmp_path))
    assert_one_line(*got, BUG, r"internal error ZeroDivisionError: .*crash report: .*\.tao/crash-")
    events = read_events(tmp_path / "o" / "session.jsonl")
    assert events[-1]["kind"] == "exit" and events[-1]["code"] == BUG


def test_a_replay_that_ends_early_is_one_line(capsys, tmp_path):
    rec = w(tmp_path / "short.jsonl", ev("response", content=[{"type": "tool_use", "id": "a", "name": "note", "input": {"text": "hello"}}],
                                         stop_reason="tool_use"))
    assert_one_line(*invoke(capsys, run_args(tmp_path, "--replay", str(rec))), BUG, r"replay client has no turn left.*recorded session ends")


def test_ctrl_c_exits_130_and_writes_the_exit_event(capsys, tmp_path, monkeypatch):
    from tao_finetune.agent import fakes

    def press(self, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(fakes.ReplayClient, "create", press)
    got = invoke(capsys, run_args(tmp_path))
    assert_one_line(*got, INT, r"interrupted \(Ctrl-C\).*re-run the same command to resume", lines=2)
    assert "no job of this run is running" in got[2]
    events = read_events(tmp_path / "o" / "session.jsonl")
    assert events[-1]["kind"] == "exit" and events[-1]["code"] == INT


def test_sigterm_is_handled_like_ctrl_c(capsys, tmp_path, monkeypatch):
    from tao_finetune.agent import fakes

    def terminate(self, **kw):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    monkeypatch.setattr(fakes.ReplayClient, "create", terminate)
    before = signal.getsignal(signal.SIGTERM)
    got = invoke(capsys, run_args(tmp_path))
    assert_one_line(*got, INT, r"interrupted \(Ctrl-C\)", lines=2)
    assert read_events(tmp_path / "o" / "session.jsonl")[-1]["code"] == INT
    assert signal.getsignal(signal.SIGTERM) == before  # the handler is the command's only


def test_a_pending_question_survives_ctrl_c(tmp_path):
    from tao_finetune.agent.fakes import ScriptedClient, tool_call
    from tao_finetune.agent.loop import Agent
    from tao_finetune.tools import all_tools

    sys.path.insert(0, str(Path(__file__).parent))
    from agent_standins import make_ctx

    ctx = make_ctx(tmp_path)
    ctx.yes = False

    def ctrl_c(question):
        raise KeyboardInterrupt
    turns = [tool_call("ask_user", {"question": "LoRA or full fine-tuning?"})]
    result = Agent(ScriptedClient(turns), ctx, all_tools(), "system", ask=ctrl_c).run("go")
    assert result.code == INT
    assert "LoRA or full" in RunState.load(ctx.run_dir).pending_question


def subprocess_run(t: Path, api_url: str, sigint=signal.SIG_DFL) -> subprocess.Popen:
    """The run as a subprocess; SIGINT's disposition set explicitly (a test runner started in the background inherits it
    ignored, and Python then never turns Ctrl-C into KeyboardInterrupt)."""
    env = {**os.environ, "ANTHROPIC_API_KEY": "sk-test", "ANTHROPIC_BASE_URL": api_url, "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
    argv = [sys.executable, "-c", "import sys; from tao_finetune.agent.cli import main; sys.exit(main())", *api_run(t)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))


def wait_for(pred, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["sigint", "stop", "sigkill"])
def test_a_real_run_interrupted_stopped_or_killed(capsys, tmp_path, how):
    """A run blocked on the API: SIGINT and `tao-finetune stop` end it with 130 and an exit event; after SIGKILL the next run takes over."""
    with FakeAnthropic([Hang(30)] * 4) as api:
        proc = subprocess_run(tmp_path, api.url)
        try:
            assert wait_for(lambda: len(api.requests) >= 1), proc.communicate(timeout=5)
            if how == "sigint":
                proc.send_signal(signal.SIGINT)
            elif how == "stop":
                code, out, _ = invoke(capsys, ["status", "--output-dir", str(tmp_path / "o")])
                assert f"running: the agent (PID {proc.pid})" in out
                code, out, err = invoke(capsys, ["stop", str(tmp_path / "o"), "--wait-s", "20"])
                assert code == OK and f"interrupted the agent (PID {proc.pid})" in out and "Traceback" not in out + err
            else:
                proc.kill()
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert "Traceback" not in out + err
    events = read_events(tmp_path / "o" / "session.jsonl")
    if how == "sigkill":
        assert proc.returncode == -signal.SIGKILL and (tmp_path / "o" / LOCK_FILE).exists()
        capsys.readouterr()
        assert main(run_args(tmp_path)) == GATE
        assert "stale lock" in capsys.readouterr().err
        return
    assert proc.returncode == INT, err
    assert message_lines(err)[0].startswith("interrupted: interrupted (Ctrl-C)")
    assert events[-1]["kind"] == "exit" and events[-1]["code"] == INT
    assert not (tmp_path / "o" / LOCK_FILE).exists()


def test_stop_reaches_a_run_started_in_the_background_with_sigint_ignored(capsys, tmp_path):
    """`tao-finetune run ... &` in a script starts with SIGINT ignored; `stop` still ends it like Ctrl-C (exit 130)."""
    with FakeAnthropic([Hang(30)] * 4) as api:
        proc = subprocess_run(tmp_path, api.url, sigint=signal.SIG_IGN)
        try:
            assert wait_for(lambda: len(api.requests) >= 1), proc.communicate(timeout=5)
            code, out, err = invoke(capsys, ["stop", str(tmp_path / "o"), "--wait-s", "20"])
            assert code == OK and f"interrupted the agent (PID {proc.pid})" in out and "has not exited" not in out
            out, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == INT, err
    events = read_events(tmp_path / "o" / "session.jsonl")
    assert events[-1]["kind"] == "exit" and events[-1]["code"] == INT


def test_stop_with_nothing_running(capsys, tmp_path):
    run = existing_run(tmp_path)
    capsys.readouterr()
    code, out, err = invoke(capsys, ["stop", str(run)])
    assert code == OK and "nothing of" in out and "is running" in out and not err


# ------------------------------------------------------------------ inspect: datasets that cannot train are rejected in one line
@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    """A ViT classifier's config alone (Step 1 reads config.json; no weights needed, so no model is built)."""
    return D.write_config(tmp_path_factory.mktemp("models") / "vit", model_type="vit", architectures=["ViTForImageClassification"],
                          image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          id2label={"0": "a", "1": "b", "2": "c"}, label2id={"a": 0, "b": 1, "c": 2})


@pytest.fixture(scope="module")
def detr(tmp_path_factory):
    return D.write_config(tmp_path_factory.mktemp("models") / "detr", model_type="detr", architectures=["DetrForObjectDetection"],
                          use_timm_backbone=False)


@pytest.fixture(scope="module")
def segformer(tmp_path_factory):
    return D.write_config(tmp_path_factory.mktemp("models") / "seg", model_type="segformer", architectures=["SegformerForSemanticSegmentation"])


def one_class(root: Path) -> Path:
    for i in range(4):
        w(root / "cat" / f"{i}.png", b"")
        D.digit_image(i).save(root / "cat" / f"{i}.png")
    return root


def images_csv(root: Path, n: int = 6, labels=("a", "b")) -> Path:
    (root / "imgs").mkdir(parents=True)
    rows = []
    for i in range(n):
        D.digit_image(i).save(root / "imgs" / f"{i}.png")
        rows.append({"image": f"imgs/{i}.png", "label": labels[i % len(labels)]})
    return D.csv_file(root / "train.csv", rows)


def coco_without_annotations(root: Path) -> Path:
    D.coco(root, n=4)
    p = root / "annotations" / "instances_train.json"
    data = json.loads(p.read_text())
    p.write_text(json.dumps({**data, "annotations": []}))
    return root


def seg_without_masks(root: Path) -> Path:
    for i in range(4):
        (root / "images").mkdir(parents=True, exist_ok=True)
        D.digit_image(i).save(root / "images" / f"{i}.png")
    return root


def with_bomb(root: Path) -> Path:
    D.imagefolder(root)
    bomb_png(root / "0" / "bomb.png") if (root / "0").is_dir() else bomb_png(next(p for p in root.iterdir() if p.is_dir()) / "bomb.png")
    return root


INSPECT = [
    ("one-class", "vit", one_class, BAD, r"1 class\(es\) with examples \(cat\); classification needs at least two"),
    ("one-image", "vit", lambda r: (D.digit_image(1).save(w(r / "a" / "1.png", b"") ), r)[1], BAD, r"1 example\(s\)"),
    ("two-images", "vit", lambda r: (D.digit_image(1).save(w(r / "a" / "1.png", b"")), D.digit_image(2).save(w(r / "b" / "2.png", b"")), r)[2],
     BAD, r"a smoke step and an eval need at least 3"),
    ("csv-one-label", "vit", lambda r: images_csv(r, labels=("only",)), BAD, r"classification needs at least two"),
    ("csv-relative-paths", "vit", lambda r: images_csv(r), OK, r"accepted"),
    ("coco-no-annotations", "detr", coco_without_annotations, BAD, r"no annotations"),
    ("seg-no-masks", "segformer", seg_without_masks, BAD, r"no mask column"),
    ("decompression-bomb", "vit", with_bomb, OK, r"accepted"),
    ("all-images-corrupt", "vit", lambda r: [D.corrupt(w(r / c / "x.png", b"")) for c in "ab"] and r, BAD, r"no readable image"),
    ("empty-folder", "vit", lambda r: (r.mkdir(), r)[1], BAD, r"."),
    ("garbage-jsonl", "vit", lambda r: w(r / "train.jsonl", b"\xff\xfe{{{\n"), BAD, r"."),
    ("csv-header-only", "vit", lambda r: w(r / "train.csv", "image,label\n"), BAD, r"."),
    ("dataset-is-a-binary-file", "vit", lambda r: w(r / "data.bin", os.urandom(256)), BAD, r"."),
    ("missing-dataset", "vit", lambda r: r / "none", BAD, r"does not exist"),
    ("missing-model", None, lambda r: D.imagefolder(r), BAD, r"does not exist"),
    ("output-dir-is-a-file", "vit", lambda r: (D.imagefolder(r), w(r.parent / "out", "x"))[0], BAD, r"--output-dir .* is a file"),
]


@pytest.mark.parametrize("model, make, code, pattern", [c[1:] for c in INSPECT], ids=[c[0] for c in INSPECT])
def test_inspect_rejects_in_one_line(request, capsys, tmp_path, model, make, code, pattern):
    data = make(tmp_path / "data")
    model_path = str(request.getfixturevalue(model)) if model else str(tmp_path / "no-model")
    task = ["--task-type", "semantic-segmentation"] if model == "segformer" else []
    if (tmp_path / "out").is_file():
        task += ["--output-dir", str(tmp_path / "out")]
    got, out, err = invoke(capsys, ["inspect", "--model-id", model_path, "--local-dataset-path", str(data), "--json", *task])
    assert "Traceback" not in out + err
    report = json.loads(out.strip().splitlines()[-1])
    assert got == code == report["exit_code"], report["message"]
    assert "\n" not in report["message"] and re.search(pattern, report["message"]), report["message"]


def test_csv_relative_paths_reach_prepare(tmp_path):
    """Step 1 and the scaffold's reader resolve a CSV's relative image paths against the CSV's folder."""
    sys.path.insert(0, str(REPO / "references" / "scaffolds" / "common"))
    try:
        import sources
    finally:
        sys.path.pop(0)
    csv_path = images_csv(tmp_path / "d")
    rows = sources._read_rows(csv_path)
    assert all(Path(r["image"]).is_file() and Path(r["image"]).is_absolute() for r in rows)


# ------------------------------------------------------------------ the tools: hostile arguments are one-line ToolErrors
@pytest.fixture
def tctx(tmp_path):
    sys.path.insert(0, str(Path(__file__).parent))
    from agent_standins import make_ctx

    return make_ctx(tmp_path)


WRITE_PATHS = [
    ("nul-byte", "train\x00.py", r"NUL byte"),
    ("empty", "", r"empty"),
    ("blank", "   ", r"empty"),
    ("long-name", "a" * 300 + ".txt", r"too long"),
    ("long-path", "/".join(["d" * 200] * 6), r"too long"),
    # the write policy (agent/policy.py) may refuse a path before the path checks do: either way, one line naming it
    ("absolute", "/etc/passwd", r"must be relative|refuses '/etc/passwd'"),
    ("dotdot", "../escape.txt", r"without '\.\.'|refuses '\.\./escape.txt'"),
    ("dotdot-inside", "meta/../../x", r"without '\.\.'|refuses 'meta/\.\./\.\./x'"),
    ("the-run-dir", ".", r"is a directory|'\.' is not a file path"),
    ("a-directory", "meta", r"is a directory|refuses 'meta'"),
    ("parent-is-a-file", "config.yaml/x.txt", r"cannot write"),
    ("py-without-header", "evil.py", r"header|copyright|Apache"),
    ("evaluate-py", "evaluate.py", r"shadows the Hugging Face `evaluate` library"),
]


@pytest.mark.parametrize("path, pattern", [c[1:] for c in WRITE_PATHS], ids=[c[0] for c in WRITE_PATHS])
def test_write_file_refuses_hostile_paths_in_one_line(tctx, path, pattern):
    from tao_finetune.tools.project import WriteFileArgs, write_file

    (tctx.run_dir / "meta").mkdir(exist_ok=True)
    with pytest.raises(ToolError) as err:
        write_file.fn(tctx, WriteFileArgs(path=path, content="print('hi')\n"))
    assert "\n" not in str(err.value) and re.search(pattern, str(err.value))


def test_write_file_symlink_escape_is_refused(tctx, tmp_path):
    from tao_finetune.tools.project import WriteFileArgs, write_file

    (tctx.run_dir / "out").symlink_to(tmp_path)
    with pytest.raises(ToolError, match="outside the output dir"):
        write_file.fn(tctx, WriteFileArgs(path="out/x.txt", content="x"))


IMAGES = [
    ("bomb", lambda p: bomb_png(p), r"decompression bomb"),
    ("empty", lambda p: w(p, b""), r"empty file"),
    ("garbage", lambda p: w(p, os.urandom(100)), r"cannot be decoded"),
    ("png-header-only", lambda p: w(p, b"\x89PNG\r\n\x1a\n"), r"cannot be decoded"),
    ("truncated-png", lambda p: (Image.new("RGB", (64, 64), "red").save(p), w(p, p.read_bytes()[:80]))[1], r"cannot be decoded"),
    ("missing", lambda p: p, r"missing"),
    ("directory", lambda p: (p.mkdir(), p)[1], r"cannot be decoded"),
    ("text-named-png", lambda p: w(p, "hello"), r"cannot be decoded"),
]


@pytest.mark.parametrize("make, pattern", [c[1:] for c in IMAGES], ids=[c[0] for c in IMAGES])
def test_check_image_never_raises(tmp_path, make, pattern):
    from tao_finetune.tools.dataset import check_image

    size, why = check_image(make(tmp_path / "x.png"))
    assert size is None and re.search(pattern, why)


MALFORMED = [
    ("string", "hello"), ("list", [1]), ("none", None), ("content-missing", {"stop_reason": "end_turn"}),
    ("content-dict", {"content": {"type": "text"}}), ("content-strings", {"content": ["hi"]}),
    ("block-type-int", {"content": [{"type": 3}]}), ("tool-no-name", {"content": [{"type": "tool_use", "id": "a", "input": {}}]}),
    ("tool-input-list", {"content": [{"type": "tool_use", "id": "a", "name": "x", "input": []}]}),
    ("stop-reason-list", {"content": [], "stop_reason": ["end_turn"]}),
]


@pytest.mark.parametrize("body", [c[1] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
def test_malformed_message_bodies_are_recognised(body):
    with pytest.raises(llm.MalformedResponse):
        llm.parse_message(body)


@pytest.mark.parametrize("usage", [None, "x", [], {"input_tokens": "many"}, {"output_tokens": -5}, {"input_tokens": 1e30}, {"input_tokens": {}}])
def test_usage_garbage_counts_as_zero(usage):
    u = llm.Usage.from_dict(usage)
    assert all(isinstance(v, int) and v >= 0 for v in vars(u).values())


SESSION_TEXTS = [
    ("torn-object", '{"t": 1, "kind": "a"}\n{"t": 2, "ki', 1, True),
    ("torn-garbage", '{"t": 1, "kind": "a"}\n\x00\x01', 1, True),
    ("last-line-not-event", '{"t": 1, "kind": "a"}\n[1, 2]\n', 1, True),
    ("no-final-newline", '{"t": 1, "kind": "a"}', 1, False),
    ("blank-lines", '\n\n{"t": 1, "kind": "a"}\n\n', 1, False),
]


@pytest.mark.parametrize("text, n, torn", [c[1:] for c in SESSION_TEXTS], ids=[c[0] for c in SESSION_TEXTS])
def test_session_log_repairs_a_torn_tail(tmp_path, text, n, torn):
    p = w(tmp_path / "s.jsonl", text)
    assert len(read_events(p)) == n
    log = SessionLog(p, Credentials({}))
    assert bool(log.repaired) is torn
    log.event("after")
    events = read_events(p)
    assert events[-1]["kind"] == "after" and all(isinstance(e, dict) for e in events)


@pytest.mark.parametrize("text, pattern", [
    ('{"t": 1, "kind": "a"}\nnot json\n{"t": 2, "kind": "b"}\n', r"line 2"),
    ('{"kind": 5}\n{"t": 2, "kind": "b"}\n', r"line 1"),
    (ev("session", version=FORMAT_VERSION + 1), r"format version"),
    (ev("session", version="two"), r"format version 'two'"),
    (ev("session", version=[2]), r"format version \[2\]"),
    (b"\xff\xfe\n", r"not UTF-8"),
], ids=["middle-garbage", "kind-not-string", "future-version", "version-not-a-number", "version-a-list", "not-utf8"])
def test_session_log_refuses_damage_beyond_the_tail(tmp_path, text, pattern):
    p = w(tmp_path / "s.jsonl", text)
    with pytest.raises(SessionFormatError, match=pattern):
        SessionLog(p, Credentials({}))


@pytest.mark.parametrize("body, kept", [
    (b"{", []), (b"\x00\x00", []), (b'{"pending_question": "q", "records": []}', ["pending_question"]),
    (b'{"error_counts": {"a": "x"}, "records": {"audit": {"passed": true}}}', ["records"]), (b"null", []), (b'"state"', []),
], ids=["truncated", "binary", "keeps-question", "keeps-records", "null", "string"])
def test_corrupt_state_keeps_what_validates(tmp_path, body, kept):
    w(tmp_path / ".tao" / "state.json", body)
    state = RunState.load(tmp_path)
    assert state.load_note and f"kept {', '.join(kept) or 'nothing'}" in state.load_note and "\n" not in state.load_note
    assert list((tmp_path / ".tao").glob("state.json.corrupt-*")) and not (tmp_path / ".tao" / "state.json").exists()


@pytest.mark.parametrize("losses, trend", [
    ([], "too_early"), ([2.3], "too_early"), ([float("nan")] * 5, "nan"), ([2.0, 1.9, float("inf")], "nan"),
    ([2.3, 2.3, 2.3, 2.3], "flat"), ([0.0] * 10, "flat"), ([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.2, 0.1], "falling"),
    ([1.0, 1.1, 1.3, 1.6, 2.0, 2.6, 3.3, 4.0], "rising"),
], ids=["empty", "one", "all-nan", "inf", "constant", "zeros", "falling", "rising"])
def test_loss_trend_edges(losses, trend):
    assert jobs.loss_trend(losses) == trend


@pytest.mark.parametrize("text", ["", "garbage\n", '{"step": "x", "loss": "y"}\n', '[1]\n{"event": "start"}\n', '{"step": 1, "loss": null}\n',
                                  b"\xff\xfe\n"], ids=["empty", "garbage", "wrong-types", "array", "null-loss", "binary"])
def test_training_progress_survives_a_damaged_metrics_log(tmp_path, text):
    w(tmp_path / jobs.METRICS, text)
    prog = jobs.training_progress(tmp_path)
    assert prog["trend"] in ("too_early", "nan", "flat") and "trend_evidence" in prog


def test_train_status_refuses_when_nothing_was_started(tctx):
    from tao_finetune.tools.runtime.local import LocalPlatform

    tctx.platform = LocalPlatform()
    with pytest.raises(ToolError, match="training was not started"):
        jobs.train_status.fn(tctx, jobs.StatusArgs())


def test_exit_codes_are_the_documented_ones():
    assert [int(c) for c in ExitCode] == [0, 1, 2, 3, 4, 5, 6, 130]
    readme = (REPO / "README.md").read_text()
    for code in ("0", "1", "2", "3", "4", "5", "6", "130"):
        assert re.search(rf"\|\s*{code}\s*\|", readme), f"exit code {code} missing from the README table"
    assert "tao-finetune stop" in readme and "Ctrl-C" in readme


def test_ctrl_c_with_training_running_says_so_and_stop_ends_it(capsys, tmp_path, monkeypatch):
    """The detached job keeps running after one Ctrl-C and the user is told; a second press (or `stop`) ends it."""
    from tao_finetune.agent import cli, fakes
    from tao_finetune.tools.runtime.local import LocalPlatform

    run = existing_run(tmp_path)
    plat = LocalPlatform()
    ctx = ctx_for(run, plat)
    plat.run(ctx, "train", ["python", "-c", "import time; time.sleep(60)"], detach=True)
    try:
        monkeypatch.setattr(fakes.ReplayClient, "create", lambda self, **kw: (_ for _ in ()).throw(KeyboardInterrupt()))
        capsys.readouterr()
        code, out, err = invoke(capsys, run_args(tmp_path, "--replay", str(replay_file(tmp_path, name="b.jsonl"))))
        assert code == INT and "Traceback" not in err
        assert f"still running: train (detached). Stop it with `tao-finetune stop {run}`" in err
        assert plat.status(ctx, "train")["running"]
        import types

        press = types.SimpleNamespace(**{k: getattr(time, k) for k in ("time", "monotonic", "perf_counter")},
                                      sleep=lambda s: (_ for _ in ()).throw(KeyboardInterrupt()))
        monkeypatch.setattr(cli, "time", press)  # the second press (cli's own clock only: the platform's sleeps stay real)
        cli.after_interrupt(ctx, interactive=True)
        assert "stopped train" in capsys.readouterr().err
        assert not plat.status(ctx, "train")["running"]
    finally:
        plat.stop(ctx, "train")


def ctx_for(run: Path, plat):
    from tao_finetune.agent.config import load_config
    from tao_finetune.agent.context import RunContext

    cfg = load_config(run / "config.yaml")
    creds = Credentials({})
    ctx = RunContext(cfg, SessionLog(run / "session.jsonl", creds), creds, platform=plat)
    return ctx


def test_stop_stops_a_running_job(capsys, tmp_path):
    from tao_finetune.tools.runtime.local import LocalPlatform

    run = existing_run(tmp_path)
    plat = LocalPlatform()
    ctx = ctx_for(run, plat)
    plat.run(ctx, "train", ["python", "-c", "import time; time.sleep(60)"], detach=True)
    try:
        capsys.readouterr()
        code, out, err = invoke(capsys, ["stop", str(run)])
        assert code == OK and out.strip() == "stopped train" and not err
        assert not plat.status(ctx, "train")["running"]
        assert any("tao-finetune stop: stopped train" in e.get("text", "") for e in read_events(run / "session.jsonl"))
    finally:
        plat.stop(ctx, "train")
