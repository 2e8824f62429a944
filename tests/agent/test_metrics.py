"""The one reader of logs/metrics.jsonl, on the damage a live or crashed writer leaves, and its three consumers."""

import json

from tao_finetune.agent.console import training_eta
from tao_finetune.agent.metrics import read_records, training_steps
from tao_finetune.tools.jobs import training_progress
from tao_finetune.tools.report import loss_points

GOOD = [{"event": "start", "step": 0, "total_steps": 40, "time": 100.0},
        {"step": 10, "total_steps": 40, "loss": 2.0, "samples_per_s": 50.0, "time": 110.0},
        {"step": 20, "total_steps": 40, "loss": 1.0, "samples_per_s": 50.0, "time": 120.0}]


def line(rec) -> bytes:
    return (json.dumps(rec) + "\n").encode()


def damaged_log(path):
    """Blank lines, CRLF, non-UTF-8 bytes inside a record and on a line of their own, NUL padding (a crash on some
    filesystems), a JSON line that is not an object, a torn record in the middle and a half-written last line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        line(GOOD[0]) + b"\n   \n"
        + line(GOOD[1]).replace(b"\n", b"\r\n")
        + b'{"step": 15, "loss": 1.5, "note": "caf\xe9 \xff"}\n'
        + b"\xff\xfe garbage\n" + b"\x00" * 16 + b"\n" + b"[1, 2]\n" + b'{"step": 17, "lo\n'
        + line(GOOD[2]) + b'{"step": 30, "total_steps": 40, "loss": 0.'
    )


def test_tolerant_decoding_keeps_every_whole_record(tmp_path):
    log = tmp_path / "logs" / "metrics.jsonl"
    damaged_log(log)
    recs = read_records(log)
    assert [r.get("step") for r in recs] == [0, 10, 15, 20]
    assert recs[2]["note"] == "caf\ufffd \ufffd"  # bytes that are not UTF-8 are replaced, the record is kept
    assert [r["step"] for r in training_steps(log)] == [10, 15, 20]
    with log.open("ab") as f:  # the writer finishes its line: the record appears
        f.write(b"5}\n")
    assert read_records(log)[-1] == {"step": 30, "total_steps": 40, "loss": 0.5}


def test_offsets_missing_files_and_non_finite_losses(tmp_path):
    log = tmp_path / "metrics.jsonl"
    assert read_records(log) == [] and read_records(tmp_path) == []  # missing file, a directory
    log.write_bytes(line(GOOD[0]) + line(GOOD[1]))
    since = log.stat().st_size
    with log.open("ab") as f:
        f.write(line(GOOD[2]) + b'{"step": 30, "loss": NaN}\n{"step": true, "loss": 1.0}\n')
    assert [r["step"] for r in read_records(log, since)] == [20, 30, True]
    assert read_records(log, since + 10_000) == read_records(log)  # an offset past the end: the log was replaced
    assert [r["step"] for r in training_steps(log, since)] == [20]  # NaN loss and a boolean step are not steps


def test_console_jobs_and_report_read_the_same_damaged_log(tmp_path):
    damaged_log(tmp_path / "logs" / "metrics.jsonl")
    eta = training_eta(tmp_path)
    prog = training_progress(tmp_path)
    assert eta["step"] == prog["step"] == 20 and eta["total"] == prog["total_steps"] == 40 and eta["loss"] == prog["loss"] == 1.0
    assert abs(eta["eta_s"] - 20.0) < 1e-9  # 20 steps in 20 s since start, 20 to go
    assert loss_points(tmp_path / "logs" / "metrics.jsonl") == [(10, 2.0), (15, 1.5), (20, 1.0)]
