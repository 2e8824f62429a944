"""LocalPlatform: blocking and detached jobs, logs, exit codes, stop, env passing, the runtime check."""

import json
import os
import sys
import time

import pytest

from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from job_contract import FAILING_JOB, KILLED_JOB, check_failed_job, check_killed_job

from tao_finetune.tools import jobs
from tao_finetune.tools.base import ToolError
from tao_finetune.tools.runtime.local import LocalPlatform, hardware_facts, tail

TOKEN = "hf_" + "L" * 30


def make_ctx(tmp_path, **fields) -> RunContext:
    cfg = RunConfig(model_id="acme/tiny", dataset_id="acme/data", output_dir=str(tmp_path / "run"), platform="local", **fields)
    creds = Credentials({"HF_TOKEN": TOKEN})
    ctx = RunContext(cfg, SessionLog(cfg.out / ".tao" / "session.jsonl", creds), creds, platform=LocalPlatform())
    ctx.save()
    return ctx


def py(ctx, name, code):
    (ctx.run_dir / name).write_text(code)


def test_run_blocks_logs_and_returns_the_exit_code(tmp_path):
    ctx = make_ctx(tmp_path)
    py(ctx, "job.py", "import os, sys\nprint('cwd', os.getcwd())\nprint('oops', file=sys.stderr)\nsys.exit(3)\n")
    res = ctx.platform.run(ctx, "prepare", ["python", "job.py"])
    assert res.exit_code == 3 and not res.detached
    log = (ctx.run_dir / "logs" / "prepare.log").read_text()
    assert f"cwd {ctx.run_dir}" in log and "oops" in log and log.startswith("$ python job.py")
    assert "oops" in res.log_tail


def test_credentials_reach_the_job_by_name_but_never_the_log_tail(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "a" * 40)  # not in ctx.creds: must not leak through os.environ
    ctx = make_ctx(tmp_path)
    py(ctx, "job.py", "import os\nprint(os.environ.get('HF_TOKEN'), os.environ.get('WANDB_API_KEY'), os.environ['WANDB_MODE'])\n")
    res = ctx.platform.run(ctx, "prepare", ["python", "job.py"])
    assert res.exit_code == 0
    assert TOKEN not in res.log_tail and "[REDACTED] None disabled" in res.log_tail
    assert TOKEN not in (ctx.run_dir / "logs" / "prepare.log").read_text()  # the stored log too, not only the tail


def test_each_job_gets_only_its_credentials_and_logs_are_redacted_in_every_encoding(tmp_path, monkeypatch):
    import base64

    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-" + "k" * 30)
    monkeypatch.setenv("NGC_API_KEY", "nvapi-" + "n" * 30)
    ctx = make_ctx(tmp_path, wandb=True)
    ctx.creds = Credentials({"HF_TOKEN": TOKEN, "WANDB_API_KEY": "w" * 40, "ANTHROPIC_API_KEY": "sk-ant-" + "k" * 30,
                             "NGC_API_KEY": "nvapi-" + "n" * 30})
    names = ("HF_TOKEN", "WANDB_API_KEY", "ANTHROPIC_API_KEY", "NGC_API_KEY")
    py(ctx, "job.py", "import os\nprint(sorted(k for k in %r if os.environ.get(k)))\n" % (names,))
    seen = {kind: ctx.platform.run(ctx, kind, ["python", "job.py"]).log_tail.strip().splitlines()[-1]
            for kind in ("prepare", "smoke", "baseline", "train", "eval", "infer")}
    assert seen == {"prepare": "['HF_TOKEN']", "smoke": "[]", "baseline": "[]", "train": "['WANDB_API_KEY']", "eval": "[]", "infer": "[]"}
    enc = (TOKEN.encode().hex(), base64.b64encode(b"x" + TOKEN.encode()).decode(), base64.urlsafe_b64encode(TOKEN.encode()).decode(), TOKEN[::-1])
    py(ctx, "leak.py", "import sys\nfor e in sys.argv[1:]:\n    print('leak', e)\n")
    res = ctx.platform.run(ctx, "prepare", ["python", "leak.py", TOKEN, *enc])
    log = (ctx.run_dir / "logs" / "prepare.log").read_text()
    from leakcheck import recoverable

    assert all(recoverable(TOKEN, e) for e in enc)  # the checker itself sees each form
    assert res.log_tail.count("[REDACTED]") >= 5 and not recoverable(TOKEN, log) and not recoverable(TOKEN, res.log_tail)


def test_runtime_env_from_the_compat_fixes_is_applied(tmp_path):
    ctx = make_ctx(tmp_path)
    (ctx.run_dir / "meta").mkdir()
    (ctx.run_dir / "meta" / "runtime_env.json").write_text(json.dumps({"TAO_ATTN_IMPLEMENTATION": "eager"}))
    py(ctx, "job.py", "import os\nprint('attn', os.environ['TAO_ATTN_IMPLEMENTATION'], os.environ['TAO_PROJECT_DIR'])\n")
    res = ctx.platform.run(ctx, "smoke", ["python", "job.py"])
    assert f"attn eager {ctx.run_dir}" in res.log_tail


def test_detached_job_status_and_exit_code(tmp_path):
    ctx = make_ctx(tmp_path)
    py(ctx, "job.py", "import pathlib, time\nwhile not pathlib.Path('go').exists():\n    time.sleep(0.05)\nprint('finished')\nraise SystemExit(7)\n")
    res = ctx.platform.run(ctx, "train", ["python", "job.py"], detach=True)
    assert res.detached and int(res.handle) > 0
    st = ctx.platform.status(ctx, "train")
    assert st["running"] and st["exit_code"] is None
    with pytest.raises(ToolError, match="already running"):
        ctx.platform.run(ctx, "train", ["python", "job.py"], detach=True)
    (ctx.run_dir / "go").write_text("")
    deadline = time.monotonic() + 30
    while ctx.platform.status(ctx, "train")["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    st = ctx.platform.status(ctx, "train")
    assert st["exit_code"] == 7 and "finished" in st["log_tail"]
    # another platform object (the agent restarted) reads the same state from the files
    assert LocalPlatform().status(ctx, "train")["exit_code"] == 7


def test_a_job_ended_but_not_reaped_reads_as_ended_everywhere(tmp_path):
    """agent/lock.pid_alive is the one liveness check (run lock and local jobs): a zombie is not alive."""
    from tao_finetune.agent.lock import pid_alive

    ctx = make_ctx(tmp_path)
    ctx.platform = LocalPlatform(persistent=False)  # a plain child of this process, left unreaped below
    py(ctx, "job.py", "print('done')\n")
    pid = int(ctx.platform.run(ctx, "train", ["python", "job.py"], detach=True).handle)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            break
        time.sleep(0.05)
    assert state == "Z"  # exited; its parent (this test) has not waited for it: kill(pid, 0) still succeeds
    assert not pid_alive(pid) and pid_alive(os.getpid())
    st = LocalPlatform(persistent=False).status(ctx, "train")  # another agent process reads only the files and the PID
    assert not st["running"] and st["exit_code"] == 0
    ctx.platform._procs["train"].wait()
    assert not pid_alive(pid) and not pid_alive(2**31 - 1) and not pid_alive(2**80)


@pytest.mark.parametrize("persistent", [True, False], ids=["worker", "process"])
def test_a_failed_or_killed_job_is_reported_like_on_every_platform(tmp_path, persistent):
    ctx = make_ctx(tmp_path)
    ctx.platform = LocalPlatform(persistent=persistent)
    py(ctx, "fail.py", FAILING_JOB)
    py(ctx, "killed.py", KILLED_JOB)
    check_failed_job(ctx, ctx.platform.run(ctx, "eval", ["python", "fail.py"]), "eval")
    check_killed_job(ctx.platform.run(ctx, "infer", ["python", "killed.py"]), "infer")
    ctx.platform.run(ctx, "train", ["python", "killed.py"], detach=True)  # detached: status() reports the same
    deadline = time.monotonic() + 30
    while (st := ctx.platform.status(ctx, "train"))["running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert st["exit_code"] == 137 and st["oom_killed"] and jobs.consult_playbook(st["log_tail"])["id"] == "oom"


def test_stop_kills_the_whole_process_group(tmp_path):
    ctx = make_ctx(tmp_path)
    py(ctx, "job.py", "import subprocess, sys, time\n"
                      "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
                      "open('child.pid', 'w').write(str(child.pid))\ntime.sleep(60)\n")
    ctx.platform.run(ctx, "train", ["python", "job.py"], detach=True)
    pid_file = ctx.run_dir / "child.pid"
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    ctx.platform.stop(ctx, "train")
    st = ctx.platform.status(ctx, "train")
    assert not st["running"] and st["stopped"] and st["exit_code"] != 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{child}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            break
        if state in ("Z", "X"):
            break
        time.sleep(0.05)
    else:
        pytest.fail("child process survived stop()")


def test_status_of_a_job_never_started(tmp_path):
    ctx = make_ctx(tmp_path)
    assert ctx.platform.status(ctx, "train") == {"running": False, "exit_code": None, "started": False, "log_tail": ""}
    ctx.platform.stop(ctx, "train")


def test_build_checks_the_python_environment(tmp_path):
    ctx = make_ctx(tmp_path)
    rec = ctx.platform.build(ctx)
    assert rec["ok"] and rec["platform"] == "local" and rec["python"] == sys.executable
    assert rec["transformers"].startswith("5.") and rec["datasets"]
    bad = LocalPlatform(python=str(tmp_path / "no-python")).build(ctx)
    assert bad["ok"] is False and "not found" in bad["error"]


def test_build_reports_a_missing_package(tmp_path):
    venv_py = tmp_path / "fakepy"
    venv_py.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    venv_py.chmod(0o755)
    rec = LocalPlatform(python=str(venv_py)).build(make_ctx(tmp_path))
    assert rec["ok"] is False and "No module named" in rec["error"]


def test_torchrun_and_python_map_to_the_platform_python(tmp_path):
    plat = LocalPlatform(python="/opt/py/bin/python")
    assert plat._argv(["python", "train.py"]) == ["/opt/py/bin/python", "train.py"]
    assert plat._argv(["torchrun", "--nproc_per_node=2", "train.py"])[:3] == ["/opt/py/bin/python", "-m", "torch.distributed.run"]


def test_hardware_facts_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    facts = hardware_facts(tmp_path)
    assert facts["gpu_count"] == 0 and facts["gpu_name"] is None and facts["free_disk_gb"] > 0


def test_tail_of_a_missing_file(tmp_path):
    assert tail(tmp_path / "none.log") == ""


def test_jobs_share_one_warm_worker_with_separate_logs_and_exit_codes(tmp_path):
    ctx = make_ctx(tmp_path)
    py(ctx, "helper.py", "VALUE = 'one'\nCALLS = []\n")
    py(ctx, "job.py", "import os, sys, helper\nhelper.CALLS.append(sys.argv[1])\n"
                      "print('pid', os.getpid(), 'value', helper.VALUE, 'calls', len(helper.CALLS), 'argv', sys.argv[1:], "
                      "'token', os.environ.get('HF_TOKEN') is not None)\n")
    a = ctx.platform.run(ctx, "smoke", ["python", "job.py", "a"])
    b = ctx.platform.run(ctx, "baseline", ["python", "job.py", "b"])
    assert a.exit_code == 0 and b.exit_code == 0
    pid = lambda r: r.log_tail.split("pid ")[1].split()[0]  # noqa: E731
    assert pid(a) == pid(b) and pid(a) != str(__import__("os").getpid())  # one interpreter, not the agent's
    assert "calls 2 argv ['b']" in b.log_tail and "argv ['b']" not in a.log_tail  # modules stay imported; logs stay apart
    p = ctx.platform.run(ctx, "prepare", ["python", "job.py", "p"])  # policy gives prepare HF_TOKEN: its own process
    assert p.exit_code == 0 and pid(p) != pid(a) and "calls 1" in p.log_tail and "token True" in p.log_tail
    time.sleep(0.01)
    py(ctx, "helper.py", "VALUE = 'two'\nCALLS = []\n")  # a changed project file is imported afresh
    c = ctx.platform.run(ctx, "eval", ["python", "job.py", "c"])
    assert "value two calls 1" in c.log_tail and pid(c) == pid(a) and "token False" in c.log_tail
    py(ctx, "bad.py", "raise ValueError('broken job')\n")
    d = ctx.platform.run(ctx, "infer", ["python", "bad.py"])
    assert d.exit_code == 1 and "ValueError: broken job" in d.log_tail and (ctx.run_dir / "logs" / "infer.exit").read_text() == "1"
    e = ctx.platform.run(ctx, "merge", ["python", "job.py", "e"])  # a failed job ends the worker: a fresh one runs the next
    assert e.exit_code == 0 and pid(e) != pid(a)


def test_the_worker_collects_a_finished_jobs_cycles_before_the_next_job(tmp_path):
    """What a job leaves in reference cycles (a model and its optimizer, CUDA memory included) is collected between
    jobs, and the surviving heap frozen (tools/runtime/worker.settle), not whenever an automatic collection happens to
    fall inside the next job's training steps."""
    ctx = make_ctx(tmp_path)
    py(ctx, "leave.py", "import gc, sys, weakref\ngc.disable()\n"  # no automatic collection can do it for the worker
                        "class Model:\n    pass\nm = Model(); m.me = m\n"
                        "weakref.finalize(m, open(sys.argv[1], 'w').close)\ndel m\nprint('frozen', gc.get_freeze_count() > 0)\n")
    py(ctx, "check.py", "import gc, os, sys\nprint('collected', os.path.exists(sys.argv[1]), 'enabled', gc.isenabled())\n")
    a = ctx.platform.run(ctx, "smoke", ["python", "leave.py", str(tmp_path / "freed")])
    b = ctx.platform.run(ctx, "baseline", ["python", "check.py", str(tmp_path / "freed")])
    assert a.exit_code == 0 and b.exit_code == 0, (a.log_tail, b.log_tail)
    assert "collected True enabled True" in b.log_tail, b.log_tail


def test_the_warm_up_finds_a_hub_models_module_in_the_hub_cache(tmp_path):
    """A Hub model id (the common case) is resolved through the Hub cache probe_model filled, so the warm-up imports
    the model's transformers module ahead of the smoke job, as for a local folder."""
    import subprocess
    import sys

    cache = tmp_path / "hub"
    snap = cache / "models--acme--vitlike" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (cache / "models--acme--vitlike" / "refs").mkdir()
    (cache / "models--acme--vitlike" / "refs" / "main").write_text("a" * 40)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("model_id: acme/vitlike\n")
    local = tmp_path / "local-model"
    local.mkdir()
    (local / "config.json").write_text(json.dumps({"model_type": "conv-next"}))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import worker, pathlib\n"
            "print(worker._model_module(sys.argv[2]))\n"
            "pathlib.Path(sys.argv[2], 'config.yaml').write_text('model_id: ' + sys.argv[3] + '\\n')\n"
            "print(worker._model_module(sys.argv[2]))\n"
            "pathlib.Path(sys.argv[2], 'config.yaml').write_text('model_id: acme/not-cached\\n')\n"
            "print(worker._model_module(sys.argv[2]))\n")
    from tao_finetune.tools.runtime.local import WORKER

    out = subprocess.run([sys.executable, "-c", code, str(WORKER.parent), str(run), str(local)], capture_output=True,
                         text=True, timeout=120, env={**__import__("os").environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split() == ["transformers.models.vit.modeling_vit", "transformers.models.conv_next.modeling_conv_next", "None"]


def test_prewarm_starts_the_worker_and_plain_subprocess_mode_still_works(tmp_path, monkeypatch):
    ctx = make_ctx(tmp_path)
    monkeypatch.setenv("TAO_PREWARM", "0")
    assert not ctx.platform.prewarm(ctx)  # off: the first job starts the worker
    monkeypatch.setenv("TAO_PREWARM", "1")  # on a GPU host this is the default
    assert ctx.platform.prewarm(ctx)
    py(ctx, "job.py", "import sys\nprint('torch' in sys.modules)\n")
    assert ctx.platform.run(ctx, "smoke", ["python", "job.py"]).log_tail.strip().endswith("True")
    plain = LocalPlatform(persistent=False)
    assert not plain.prewarm(ctx)
    res = plain.run(ctx, "smoke", ["python", "job.py"])
    assert res.exit_code == 0 and res.log_tail.strip().endswith("False")


def test_a_training_outside_the_worker_ends_the_idle_worker_first(tmp_path):
    """torchrun (or a training given a credential) runs as its own process: the idle warm interpreter is ended first, so
    the GPU memory it holds (CUDA context, cached blocks, the eval batches) is the training's."""
    ctx = make_ctx(tmp_path)
    py(ctx, "job.py", "import os\nprint('pid', os.getpid())\n")
    res = ctx.platform.run(ctx, "smoke", ["python", "job.py"])
    worker = int(res.log_tail.split("pid ")[1].split()[0])
    assert not gone(worker)
    ctx.platform.run(ctx, "train", ["python", "-c", "print('own process')"], detach=True)
    deadline = time.monotonic() + 20
    while not gone(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(worker)
    while ctx.platform.status(ctx, "train")["running"] and time.monotonic() < deadline + 20:
        time.sleep(0.05)
    st = ctx.platform.status(ctx, "train")
    assert st["exit_code"] == 0 and "own process" in st["log_tail"]


# a job with train.py's preemption contract: SIGTERM -> write a checkpoint -> exit 75; `ready` says the handler is set
TRAPS_SIGTERM = ("import os, signal, sys, time\n"
                 "def preempted(*_):\n    open('checkpoint.txt', 'w').write('step 7')\n"
                 "    print('preempted: checkpoint written', flush=True)\n    sys.exit(75)\n"
                 "signal.signal(signal.SIGTERM, preempted)\n"
                 "open('ready', 'w').write(str(os.getpid()))\nprint('evaluating', flush=True)\n"
                 "while True:\n    time.sleep(0.05)\n")
IGNORES_SIGTERM = ("import os, signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                   "open('ready', 'w').write(str(os.getpid()))\nprint('evaluating', flush=True)\n"
                   "while True:\n    time.sleep(0.05)\n")


def cut_events(ctx):
    events = [json.loads(x) for x in (ctx.run_dir / ".tao" / "session.jsonl").read_text().splitlines()]
    return [e for e in events if e["kind"] == "job_cut"]


def gone(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def test_a_job_cut_at_the_deadline_gets_the_grace_period_for_its_checkpoint(tmp_path):
    """The worker gets SIGTERM first: train.py's preemption handler writes its checkpoint and exits 75."""
    from tao_finetune.agent.errors import LimitReached

    ctx = make_ctx(tmp_path)
    py(ctx, "job.py", TRAPS_SIGTERM)
    ctx.deadline = time.monotonic() + 3
    t0 = time.monotonic()
    with pytest.raises(LimitReached, match=r"--max-hours\) while the eval job ran: the job was stopped"):
        ctx.platform.run(ctx, "eval", ["python", "job.py"])
    assert time.monotonic() - t0 < 3 + 8  # well inside the 10 s grace: the job ended on its own
    assert (ctx.run_dir / "checkpoint.txt").read_text() == "step 7"
    assert "preempted: checkpoint written" in (ctx.run_dir / "logs" / "eval.log").read_text()
    assert [(e["job"], e["exit_code"]) for e in cut_events(ctx)] == [("eval", 75)]
    assert gone(int((ctx.run_dir / "ready").read_text())) and ctx.platform._worker is None


def test_a_job_that_ignores_sigterm_is_killed_after_the_grace_period(tmp_path):
    from tao_finetune.agent.errors import LimitReached

    ctx = make_ctx(tmp_path)
    ctx.platform = LocalPlatform(grace_s=1.0)
    py(ctx, "job.py", IGNORES_SIGTERM)
    ctx.deadline = time.monotonic() + 3
    with pytest.raises(LimitReached):
        ctx.platform.run(ctx, "eval", ["python", "job.py"])
    assert time.monotonic() - ctx.deadline >= 1.0  # SIGTERM was sent first and the grace was waited out
    assert [(e["job"], e["exit_code"]) for e in cut_events(ctx)] == [("eval", 137)]
    assert gone(int((ctx.run_dir / "ready").read_text()))
    ctx.deadline = None
    py(ctx, "fail.py", FAILING_JOB)  # the next job gets a fresh worker and the same failure report
    check_failed_job(ctx, ctx.platform.run(ctx, "eval", ["python", "fail.py"]), "eval")


def test_ctrl_c_during_a_blocking_job_gives_it_the_grace_period(tmp_path):
    """Ctrl-C (KeyboardInterrupt in the agent; the worker is in its own session) ends the job like a stop: SIGTERM first."""
    import _thread
    import signal
    import threading

    ctx = make_ctx(tmp_path)
    py(ctx, "job.py", TRAPS_SIGTERM)
    ready = ctx.run_dir / "ready"

    def press_ctrl_c() -> None:
        end = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < end:
            time.sleep(0.02)
        _thread.interrupt_main()  # SIGINT as a terminal sends it (a no-op while SIGINT is ignored: reset below)

    old = signal.signal(signal.SIGINT, signal.default_int_handler)  # a runner started in the background ignores SIGINT
    try:
        threading.Thread(target=press_ctrl_c, daemon=True).start()
        with pytest.raises(KeyboardInterrupt):
            ctx.platform.run(ctx, "eval", ["python", "job.py"])
    finally:
        signal.signal(signal.SIGINT, old)
    assert (ctx.run_dir / "checkpoint.txt").read_text() == "step 7"
    assert (ctx.run_dir / "logs" / "eval.exit").read_text() == "75" and gone(int(ready.read_text()))
