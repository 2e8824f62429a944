"""The error playbook's decisions, the 3-strike rule, and docker_run / train_status against stub jobs on the LocalPlatform."""

import json
import textwrap

import pytest

from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.errors import ExitCode, LimitReached
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools import jobs
from tao_finetune.tools.base import NeedsUser, NoArgs, ToolError
from tao_finetune.tools.project import HEADER
from tao_finetune.tools.runtime.local import LocalPlatform


def make_ctx(tmp_path, **fields) -> RunContext:
    cfg = RunConfig(model_id="acme/tiny", task_type="image-classification", dataset_id="acme/data",
                    output_dir=str(tmp_path / "run"), platform="local", applicable_workarounds=[], **fields)
    creds = Credentials({"HF_TOKEN": "hf_" + "s" * 30})
    ctx = RunContext(cfg, SessionLog(cfg.out / ".tao" / "session.jsonl", creds), creds, platform=LocalPlatform())
    ctx.save()
    return ctx


def script(ctx, name, body):
    (ctx.run_dir / name).write_text(HEADER + textwrap.dedent(body))


def prepared(ctx):
    (ctx.run_dir / "data").mkdir(exist_ok=True)
    (ctx.run_dir / "data" / "meta.json").write_text(json.dumps({"n_train": 4, "n_eval": 2, "columns": ["image", "label"],
                                                               "label_names": ["a", "b"]}))


def run(ctx, job, **kw):
    return jobs.docker_run.fn(ctx, jobs.RunArgs(job=job, **kw))


@pytest.mark.parametrize("log, expected", [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "oom"),
    ('{"step": 40, "loss": NaN, "grad_norm": 1.0}', "nan_loss"),
    ("smoke FAILED: loss=nan grad_norm=nan", "nan_loss"),
    ("A module that was compiled using NumPy 1.x cannot be run in\nNumPy 2.0.1 as it may crash.", "numpy2_abi"),
    ("TypeError: scaled_dot_product_attention() got an unexpected keyword argument 'enable_gqa'", "sdpa_gqa"),
    ("columns ['text'] missing after renames; columns are ['sentence', 'label']", "missing_columns"),
    ("/opt/nvidia/nvidia_entrypoint.sh: line 67: exec: trainer: not found", "ngc_entrypoint"),
])
def test_consult_playbook_picks_the_entry(log, expected):
    assert jobs.consult_playbook(log)["id"] == expected


def test_consult_playbook_returns_none_for_unknown_errors():
    assert jobs.consult_playbook("ValueError: something new") is None


def test_oom_halves_the_batch_then_enables_checkpointing_then_asks(tmp_path):
    ctx = make_ctx(tmp_path)
    ctx.config.hyperparameters = ctx.config.hyperparameters.model_copy(update={"per_device_train_batch_size": 2})
    oom = jobs.consult_playbook("CUDA out of memory")
    assert "2 -> 1" in jobs.apply_fix(ctx, oom)
    hp = ctx.config.hyperparameters
    assert (hp.per_device_train_batch_size, hp.gradient_accumulation_steps, hp.gradient_checkpointing) == (1, 2, False)
    jobs.apply_fix(ctx, oom)
    assert ctx.config.hyperparameters.gradient_checkpointing is True
    with pytest.raises(NeedsUser, match="LoRA"):
        jobs.apply_fix(ctx, oom)
    assert ctx.config.hyperparameters.training_method == "full"
    saved = (ctx.run_dir / "config.yaml").read_text()
    assert "gradient_checkpointing: true" in saved and "per_device_train_batch_size: 1" in saved


def test_nan_divides_the_learning_rate_and_restarts_training(tmp_path):
    ctx = make_ctx(tmp_path)
    ckpt = ctx.run_dir / "checkpoints" / "step-0000010"
    ckpt.mkdir(parents=True)
    (ctx.run_dir / "logs").mkdir()
    (ctx.run_dir / "logs" / "metrics.jsonl").write_text('{"step": 10, "loss": NaN}\n')
    jobs.apply_fix(ctx, jobs.consult_playbook('"loss": NaN'))
    assert ctx.config.hyperparameters.learning_rate == pytest.approx(5e-6)
    assert not ckpt.exists() and not (ctx.run_dir / "logs" / "metrics.jsonl").exists()
    assert any("nan_loss" in n for n in ctx.config.notes)


def test_fixes_never_silently_override_user_set_values(tmp_path):
    ctx = make_ctx(tmp_path, user_set=["hyperparameters.learning_rate"])
    with pytest.raises(NeedsUser, match="learning_rate"):
        jobs.apply_fix(ctx, jobs.consult_playbook("loss=nan"))
    assert ctx.config.hyperparameters.learning_rate == 5e-5


def test_env_fix_writes_the_runtime_env(tmp_path):
    ctx = make_ctx(tmp_path)
    fix = jobs.consult_playbook("enable_gqa unexpected keyword")
    assert jobs.apply_fix(ctx, fix)
    assert json.loads((ctx.run_dir / "meta" / "runtime_env.json").read_text()) == {"TAO_ATTN_IMPLEMENTATION": "eager"}
    assert jobs.apply_fix(ctx, fix) is None


def test_loss_trend():
    assert jobs.loss_trend([2.3, 2.0, 1.5, 1.2, 0.9]) == "falling"
    assert jobs.loss_trend([2.3, 2.31, 2.29, 2.3, 2.3, 2.31]) == "flat"
    assert jobs.loss_trend([1.0, 1.5, 2.0, 3.0]) == "rising"
    assert jobs.loss_trend([2.3, 2.0, float("nan")]) == "nan"
    assert jobs.loss_trend([2.3, 2.0]) == "too_early"


def test_command_uses_torchrun_for_multi_gpu_training(tmp_path):
    ctx = make_ctx(tmp_path, gpu_count=4)
    assert jobs.command(ctx, "train") == ["torchrun", "--standalone", "--nproc_per_node=4", "train.py"]
    assert jobs.command(ctx, "smoke", 3) == ["python", "train.py", "--smoke", "--max_steps", "3"]
    assert jobs.command(make_ctx(tmp_path / "one", gpu_count=1), "train") == ["python", "train.py"]


def test_docker_run_step_depends_on_the_job():
    assert jobs.docker_run.step_of(jobs.RunArgs(job="smoke")) == 4
    assert jobs.docker_run.step_of(jobs.RunArgs(job="prepare")) == 4
    assert jobs.docker_run.step_of(jobs.RunArgs(job="train")) == 5


def test_docker_run_needs_prepared_data_and_the_script(tmp_path):
    ctx = make_ctx(tmp_path)
    with pytest.raises(ToolError, match="train.py is missing"):
        run(ctx, "smoke")
    script(ctx, "train.py", "print('x')\n")
    with pytest.raises(ToolError, match="job=prepare"):
        run(ctx, "smoke")


SMOKE_NAN = """\
import json, pathlib
pathlib.Path("reports").mkdir(exist_ok=True)
pathlib.Path("reports/smoke.json").write_text(json.dumps({"passed": False, "finite_loss": False, "loss": float("nan")}))
print("smoke FAILED: loss=nan grad_norm=0.5")
raise SystemExit(1)
"""


def test_a_failing_smoke_applies_the_playbook_and_asks_on_the_third_time(tmp_path):
    ctx = make_ctx(tmp_path)
    prepared(ctx)
    script(ctx, "train.py", SMOKE_NAN)
    with pytest.raises(ToolError) as first:
        run(ctx, "smoke")
    assert "nan_loss" in str(first.value) and "learning_rate" in str(first.value) and "attempt 1/2" in str(first.value)
    assert ctx.config.hyperparameters.learning_rate == pytest.approx(5e-6)
    with pytest.raises(ToolError):
        run(ctx, "smoke")
    with pytest.raises(NeedsUser, match="3 times"):
        run(ctx, "smoke")
    assert ctx.state.error_counts == {"smoke:nan_loss": 3}
    assert ctx.config.hyperparameters.learning_rate == pytest.approx(5e-7)


def test_an_unknown_failure_returns_the_log_tail_redacted(tmp_path, monkeypatch):
    ctx = make_ctx(tmp_path)
    prepared(ctx)
    script(ctx, "prepare_data.py", "import os\nprint('token', os.environ['HF_TOKEN'])\nraise ValueError('weird thing')\n")
    with pytest.raises(ToolError) as err:
        run(ctx, "prepare")
    assert "weird thing" in str(err.value) and "hf_" + "s" * 30 not in str(err.value) and "[REDACTED]" in str(err.value)


def test_docker_run_checks_outputs(tmp_path):
    ctx = make_ctx(tmp_path)
    prepared(ctx)
    script(ctx, "run_eval.py", """\
        import json, pathlib
        pathlib.Path("reports").mkdir(exist_ok=True)
        pathlib.Path("reports/baseline_results.json").write_text(json.dumps({"primary_metric": "accuracy", "accuracy": 0.5, "n_eval": 2}))
        """)
    assert run(ctx, "baseline")["accuracy"] == 0.5
    ctx.config.skip_baseline = True
    assert run(ctx, "baseline")["skipped"]
    with pytest.raises(ToolError, match="checkpoints/final"):
        run(ctx, "eval")


TRAIN_STUB = """\
import json, math, os, pathlib, sys, time
losses = [float(x) for x in os.environ["STUB_LOSSES"].split(",")]
log = pathlib.Path("logs/metrics.jsonl")
log.parent.mkdir(exist_ok=True)
def put(r):
    with log.open("a") as f:
        f.write(json.dumps(r) + "\\n")
put({"event": "start", "step": 0, "total_steps": len(losses) * 10, "warmup_steps": 0, "steps_per_epoch": int(os.environ.get("STUB_SPE", "0"))})
for i, loss in enumerate(losses):
    put({"step": (i + 1) * 10, "total_steps": len(losses) * 10, "loss": loss, "grad_norm": 1.0, "lr": 1e-4, "samples_per_s": 100.0})
if os.environ.get("STUB_HANG"):
    time.sleep(120)
final = pathlib.Path("checkpoints/final")
final.mkdir(parents=True, exist_ok=True)
(final / "model.safetensors").write_text("x")
put({"event": "done", "total_steps": len(losses) * 10, "final_loss": losses[-1]})
"""


def training_ctx(tmp_path, losses, hang=False, steps_per_epoch=0):
    env = {"STUB_LOSSES": ",".join(map(str, losses)), "STUB_SPE": str(steps_per_epoch), **({"STUB_HANG": "1"} if hang else {})}
    ctx = make_ctx(tmp_path)
    ctx.platform = LocalPlatform(extra_env=env)
    prepared(ctx)
    script(ctx, "train.py", TRAIN_STUB)
    return ctx


def test_train_runs_detached_and_reports_done(tmp_path):
    ctx = training_ctx(tmp_path, [2.3, 1.9, 1.5, 1.1, 0.8, 0.6])
    started = run(ctx, "train")
    assert started["started"] and started["handle"]
    st = jobs.train_status.fn(ctx, jobs.StatusArgs(wait_s=60))
    assert st["state"] == "done" and st["trend"] == "falling" and st["step"] == 60 and st["loss"] == 0.6
    assert ctx.state.records["train"]["loss"] == 0.6
    assert run(ctx, "train")["already_done"]


def test_train_status_stops_a_nan_run_and_lowers_the_lr(tmp_path):
    ctx = training_ctx(tmp_path, [2.3, 2.0, "nan"], hang=True)
    run(ctx, "train")
    with pytest.raises(ToolError, match="nan_loss"):
        jobs.train_status.fn(ctx, jobs.StatusArgs(wait_s=60))
    assert not ctx.platform.status(ctx, "train")["running"]
    assert ctx.config.hyperparameters.learning_rate == pytest.approx(5e-6)


def test_train_status_stops_a_flat_run(tmp_path):
    ctx = training_ctx(tmp_path, [2.30] * 8, hang=True)
    run(ctx, "train")
    with pytest.raises(ToolError, match="collator"):
        jobs.train_status.fn(ctx, jobs.StatusArgs(wait_s=60))
    assert not ctx.platform.status(ctx, "train")["running"]
    assert ctx.state.error_counts == {"train:flat_loss": 1}


def test_train_status_reports_running_without_waiting(tmp_path):
    ctx = training_ctx(tmp_path, [2.3, 2.1], hang=True)
    run(ctx, "train")
    assert run(ctx, "train")["running"]
    script(ctx, "run_eval.py", "print('never runs')\n")
    with pytest.raises(ToolError, match="still running"):
        run(ctx, "eval")
    st = jobs.train_status.fn(ctx, jobs.StatusArgs())
    assert st["state"] == "running"
    ctx.platform.stop(ctx, "train")
    assert jobs.train_status.fn(ctx, jobs.StatusArgs())["state"] == "stopped"


def test_docker_build_records_the_local_runtime(tmp_path):
    ctx = make_ctx(tmp_path)
    rec = jobs.docker_build.fn(ctx, NoArgs())
    assert rec["ok"] and rec["platform"] == "local" and ctx.state.records["build"]["ok"]


def test_docker_build_pins_requirements_from_the_environment_it_checked(tmp_path):
    """requirements.txt gets the versions `pip freeze` finds in the Python that runs the jobs; the freeze is recorded."""
    import importlib.metadata as md

    ctx = make_ctx(tmp_path)
    (ctx.run_dir / "requirements.txt").write_text("# torch comes with the base image\ntransformers>=5.0\nPyYAML\nnot-installed-pkg>=1\n")
    rec = jobs.docker_build.fn(ctx, NoArgs())
    req = (ctx.run_dir / "requirements.txt").read_text().splitlines()
    assert req[0].startswith("# pinned by tao-finetune from `pip freeze` in the local Python")
    assert f"transformers=={md.version('transformers')}" in req and f"PyYAML=={md.version('pyyaml')}" in req
    assert "not-installed-pkg>=1" in req and "# torch comes with the base image" in req
    lock = (ctx.run_dir / "requirements.lock.txt").read_text()
    assert f"torch=={md.version('torch')}" in lock
    assert rec["requirements"]["unpinned"] == ["not-installed-pkg>=1"]
    assert ctx.state.records["build"]["requirements"]["lock"] == "requirements.lock.txt"
    jobs.docker_build.fn(ctx, NoArgs())  # pinning again changes nothing but the header
    assert (ctx.run_dir / "requirements.txt").read_text().splitlines()[1:] == req[1:]


def test_build_check_lists_exactly_what_pip_lists(tmp_path):
    """The lock file comes from the build check's importlib.metadata list (no pip process on the critical path); it
    holds the same name==version lines as `pip list --format=freeze` of that Python, and pip is the fallback."""
    import subprocess

    ctx = make_ctx(tmp_path)
    rec = jobs.docker_build.fn(ctx, NoArgs())
    assert rec["ok"] and "freeze" not in rec and "freeze" not in ctx.state.records["build"]
    assert "importlib.metadata" in (ctx.run_dir / "requirements.lock.txt").read_text().splitlines()[0]
    lock = {ln for ln in (ctx.run_dir / "requirements.lock.txt").read_text().splitlines() if "==" in ln and not ln.startswith("#")}
    pip = subprocess.run([ctx.platform.python, "-m", "pip", "list", "--format=freeze"], capture_output=True, text=True, check=True)
    assert lock == {ln for ln in pip.stdout.splitlines() if "==" in ln}
    out, source = ctx.platform.freeze(ctx)  # handed out once: a second call asks pip itself
    assert "importlib" not in source
    assert {ln for ln in out.splitlines() if "==" in ln} == lock


EVAL_STUB = """\
import json, pathlib, sys
base = "--baseline" in sys.argv
acc = float(__import__("os").environ["STUB_BASE" if base else "STUB_ACC"])
pathlib.Path("reports").mkdir(exist_ok=True)
name = "baseline_results.json" if base else "eval_results.json"
pathlib.Path("reports", name).write_text(json.dumps({"primary_metric": "accuracy", "accuracy": acc, "n_eval": 200,
                                                     "prediction_histogram": [200, 0] if acc == 0.5 else [110, 90]}))
"""


def evaluated(tmp_path, losses, acc, base):
    from tao_finetune.agent import gates

    ctx = training_ctx(tmp_path, losses)
    ctx.platform.extra_env.update(STUB_ACC=str(acc), STUB_BASE=str(base))
    script(ctx, "run_eval.py", EVAL_STUB)
    run(ctx, "baseline")
    run(ctx, "train")
    jobs.train_status.fn(ctx, jobs.StatusArgs(wait_s=60))
    run(ctx, "eval")
    return ctx, gates


def test_jobs_record_evidence_and_a_file_changed_afterwards_voids_it(tmp_path):
    from tao_finetune.agent.state import verify_job

    ctx, gates = evaluated(tmp_path, [2.3, 1.9, 1.5, 1.1, 0.8, 0.6], 0.9, 0.5)
    ev = ctx.state.evidence
    assert {"baseline", "train", "eval"} <= set(ev)
    assert ev["train"].argv == ["python", "train.py"] and ev["train"].platform == "local" and ev["train"].exit_code == 0
    assert [f.path for f in ev["train"].outputs] == ["checkpoints/final/model.safetensors"]
    assert ev["train"].facts["first_loss"] == 2.3 and ev["train"].facts["last_loss"] == 0.6
    assert ev["eval"].started >= ev["train"].ended - 1
    assert gates.learning_verdict(ctx.run_dir, ctx.state)["learned"]
    assert all(verify_job(ctx.state, ctx.run_dir, j) is None for j in ("baseline", "train", "eval"))
    (ctx.run_dir / "reports" / "eval_results.json").write_text('{"primary_metric": "accuracy", "accuracy": 0.99}')
    (ctx.run_dir / "checkpoints" / "final" / "model.safetensors").write_text("forged")
    missing = gates.gate5(ctx.run_dir, ctx.state)
    assert any(m.startswith("eval job evidence (reports/eval_results.json changed") for m in missing)
    assert any(m.startswith("training job evidence (checkpoints/final/model.safetensors changed") for m in missing)
    import shutil

    shutil.rmtree(ctx.run_dir / "checkpoints" / "final")
    run(ctx, "train")  # a new training voids the old training's and eval's evidence
    assert "eval" not in ctx.state.evidence and "train" not in ctx.state.evidence
    jobs.train_status.fn(ctx, jobs.StatusArgs(wait_s=60))


@pytest.mark.parametrize("losses, acc, reason", [
    ([2.3, 2.3, 2.31, 2.3, 2.3, 2.3], 0.9, "training loss did not fall"),
    ([2.3, 1.9, 1.5, 1.1, 0.8, 0.6], 0.55, "does not beat the baseline 0.5000 by more than the noise margin 0.0707"),
    ([2.3, 1.9, 1.5, 1.1, 0.8, 0.6], 0.5, "predicts a single class"),
])
def test_a_model_that_did_not_learn_fails_gate5_with_the_evidence(tmp_path, losses, acc, reason):
    ctx, gates = evaluated(tmp_path, losses, acc, 0.5)
    verdict = gates.learning_verdict(ctx.run_dir, ctx.state)
    assert not verdict["learned"] and any(reason in r for r in verdict["reasons"])
    assert any(m.startswith("the model learnt") for m in gates.gate5(ctx.run_dir, ctx.state))
    question = gates.learning_question(ctx.run_dir, ctx.state)
    assert question.startswith(gates.LEARNING_MARK) and '"first_loss": 2.3' in question and '"baseline": 0.5' in question
    assert not gates.accept_learning(ctx.state, ctx.run_dir, question, "no, retrain")
    assert gates.accept_learning(ctx.state, ctx.run_dir, question, "accept")
    assert gates.learning_question(ctx.run_dir, ctx.state) is None
    assert not any(m.startswith("the model learnt") for m in gates.gate5(ctx.run_dir, ctx.state))
    assert ctx.state.learning_accepted.evidence["reasons"] == verdict["reasons"]


def test_noise_margin_is_two_standard_errors():
    from tao_finetune.agent.gates import noise_margin

    assert noise_margin(0.5, 100) == pytest.approx(0.1)
    assert noise_margin(0.1, 1000) == pytest.approx(2 * (0.09 / 1000) ** 0.5)
    assert noise_margin(12.0, 100) == 0.0 and noise_margin(0.5, 0) == 0.0


@pytest.mark.parametrize("form", ["plain", "b64", "hex", "reversed"])
def test_a_job_that_writes_its_credential_to_a_file_is_scrubbed_and_does_not_count(tmp_path, form):
    from leakcheck import leaks_under

    ctx = make_ctx(tmp_path)
    token = "hf_" + "s" * 30
    enc = {"plain": "t", "b64": "__import__('base64').b64encode(t.encode()).decode()", "hex": "t.encode().hex()",
           "reversed": "t[::-1]"}[form]
    script(ctx, "prepare_data.py", f"""\
        import json, os, pathlib
        t = os.environ["HF_TOKEN"]
        pathlib.Path("data").mkdir(exist_ok=True)
        pathlib.Path("data/meta.json").write_text(json.dumps({{"n_train": 1, "n_eval": 1, "columns": [], "label_names": []}}))
        pathlib.Path("data/stash.bin").write_bytes(b"\\x00\\x01" + ({enc}).encode() + b"\\x00")
        """)
    with pytest.raises(ToolError, match="wrote a credential into data/stash.bin"):
        run(ctx, "prepare")
    assert "prepare" not in ctx.state.evidence
    assert leaks_under(token, ctx.run_dir) == []


def test_the_loop_stops_on_a_model_that_did_not_learn_and_an_accepted_one_is_on_the_card(tmp_path):
    from tao_finetune.agent import gates
    from tao_finetune.agent.fakes import ScriptedClient, tool_call
    from tao_finetune.agent.loop import Agent
    from tao_finetune.tools import hub

    ctx = training_ctx(tmp_path, [2.3, 2.3, 2.31, 2.3, 2.3, 2.3])
    ctx.yes = True
    ctx.platform.extra_env.update(STUB_ACC="0.52", STUB_BASE="0.5")
    script(ctx, "run_eval.py", EVAL_STUB)
    turns = [tool_call("run_job", {"job": "train"}), tool_call("watch", {"wait_s": 60}), tool_call("run_job", {"job": "eval"}),
             tool_call("run_job", {"job": "baseline"})]
    import dataclasses

    # steps 1-4 are not the point here: the same functions as ungated tools under other names
    ungated = [dataclasses.replace(t, name=n, step=0, step_for=None) for t, n in ((jobs.docker_run, "run_job"), (jobs.train_status, "watch"))]
    result = Agent(ScriptedClient(turns), ctx, ungated, "s").run("go")
    assert result.code == 3 and result.message.startswith(gates.LEARNING_MARK)  # asked only once the baseline was there too
    assert "training loss did not fall (2.3 -> 2.3, trend flat)" in result.message and '"margin": 0.0707' in result.message
    assert ctx.state.pending_question == result.message
    assert gates.accept_learning(ctx.state, ctx.run_dir, ctx.state.pending_question, "accept")
    ctx.save()
    from tao_finetune.tools import card as card_mod

    ctx.config.license = "apache-2.0"
    card = str(card_mod.build_card(ctx, "acme/tiny-ft", []))
    assert "Accepted by the user without clear evidence of learning" in card and "training loss did not fall" in card


def test_trend_is_judged_against_the_losss_own_noise():
    noisy_flat = [2.3 + (0.05 if i % 2 else -0.05) for i in range(40)]
    ev = jobs.trend_evidence(noisy_flat)
    assert ev["trend"] == "flat" and abs(ev["change_in_se"]) < 2
    slow_fall = [2.3 - 0.004 * i + (0.05 if i % 2 else -0.05) for i in range(40)]  # 7 % down under noise of +-0.05
    ev = jobs.trend_evidence(slow_fall, list(range(10, 410, 10)))
    assert ev["trend"] == "falling" and ev["slope_per_100_steps"] < 0 and ev["steps_seen"] == 390
    assert {"first_smoothed", "last_smoothed", "noise", "window", "points"} <= set(ev)


def test_flat_is_never_judged_inside_warmup_the_first_epoch_or_the_first_half():
    assert jobs.flat_after(total=220, warmup=10, steps_per_epoch=44) == 110  # 1,400 images, batch 32, 5 epochs
    assert jobs.flat_after(total=80, warmup=0, steps_per_epoch=100) == 100
    assert jobs.flat_after(total=1000, warmup=600, steps_per_epoch=10) == 650


def wait_for_step(ctx, step, timeout=30):
    import time
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = jobs.train_status.fn(ctx, jobs.StatusArgs())
        if st["step"] >= step:
            return st
        time.sleep(0.2)
    raise AssertionError(f"the stub never reached step {step}")


def test_a_flat_run_still_in_its_first_epoch_keeps_running(tmp_path):
    ctx = training_ctx(tmp_path, [2.30] * 8, hang=True, steps_per_epoch=100)
    run(ctx, "train")
    st = wait_for_step(ctx, 80)
    assert st["state"] == "running" and st["trend"] == "flat" and st["flat_after"] == 100
    ctx.platform.stop(ctx, "train")


def test_a_retry_never_reads_the_previous_attempts_metrics(tmp_path):
    ctx = training_ctx(tmp_path, [2.3, 2.2, 2.0, 1.8, 1.5, 1.2, 1.0, 0.9], hang=True)
    old = [{"event": "start", "step": 0, "total_steps": 80, "warmup_steps": 0}] + [{"step": (i + 1) * 10, "total_steps": 80, "loss": 2.3} for i in range(8)]
    (ctx.run_dir / "logs").mkdir(exist_ok=True)
    (ctx.run_dir / "logs" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in old))
    assert run(ctx, "train")["attempt"] == 1
    assert jobs.train_status.fn(ctx, jobs.StatusArgs())["state"] == "running"  # the old flat log is not this attempt's
    st = wait_for_step(ctx, 80)
    assert st["state"] == "running" and st["trend"] == "falling" and st["first_loss"] == 2.3 and st["loss"] == 0.9
    ctx.platform.stop(ctx, "train")


def test_the_flat_loss_fix_is_applied_and_the_retry_says_what_changed(tmp_path):
    ctx = training_ctx(tmp_path, [2.30] * 8, hang=True)
    run(ctx, "train")
    with pytest.raises(ToolError, match="TAO_FLAT_LOSS|flat_loss") as err:
        jobs.train_status.fn(ctx, jobs.StatusArgs(wait_s=60))
    assert "learning_rate" in str(err.value) and "standard errors" in str(err.value)
    assert ctx.config.hyperparameters.learning_rate == pytest.approx(5e-6)
    again = run(ctx, "train")
    assert again["attempt"] == 2 and "learning_rate" in again["changed_since_last_attempt"]
    ctx.platform.stop(ctx, "train")


def test_a_status_wait_ends_the_run_at_its_deadline(tmp_path):
    import time
    ctx = training_ctx(tmp_path, [2.3, 2.1], hang=True)
    run(ctx, "train")
    ctx.deadline = time.monotonic() + 1.5
    t0 = time.monotonic()
    with pytest.raises(LimitReached, match=r"wall-time limit reached \(--max-hours\) while training ran .*keeps running detached") as err:
        jobs.train_status.fn(ctx, jobs.StatusArgs(wait_s=600))
    assert err.value.code == ExitCode.LIMIT and time.monotonic() - t0 < 10
    assert ctx.platform.status(ctx, "train")["running"]  # training is detached on every platform: it runs on
    ctx.platform.stop(ctx, "train")


SLOW_EVAL = "import os, time\nopen('eval.pid', 'w').write(str(os.getpid()))\nprint('evaluating', flush=True)\ntime.sleep(300)\n"


@pytest.mark.parametrize("persistent", [True, False], ids=["worker", "process"])
def test_a_blocking_job_is_cut_at_the_runs_deadline(tmp_path, persistent):
    import time

    from tao_finetune.agent.lock import pid_alive

    ctx = make_ctx(tmp_path)
    ctx.platform = LocalPlatform(persistent=persistent)
    prepared(ctx)
    script(ctx, "run_eval.py", SLOW_EVAL)
    ctx.deadline = time.monotonic() + 3
    t0 = time.monotonic()
    with pytest.raises(LimitReached, match=r"--max-hours\) while the baseline job ran: the job was stopped; raise it and re-run") as err:
        run(ctx, "baseline")
    assert err.value.code == ExitCode.LIMIT and time.monotonic() - t0 < 20
    assert not pid_alive(int((ctx.run_dir / "eval.pid").read_text()))
    assert "evaluating" in (ctx.run_dir / "logs" / "baseline.log").read_text()
    kinds = [json.loads(x)["kind"] for x in (ctx.run_dir / ".tao" / "session.jsonl").read_text().splitlines()]
    assert "job_cut" in kinds and "baseline" not in ctx.state.evidence


def test_the_loop_ends_with_the_limit_exit_code_when_a_job_outlives_max_hours(tmp_path):
    """Through the agent loop: a blocking job past --max-hours ends the run with exit 5, the state saved."""
    from tao_finetune.agent.fakes import ScriptedClient, tool_call
    from tao_finetune.agent.loop import Agent, Limits
    from tao_finetune.agent.state import RunState
    from tao_finetune.tools.base import tool

    @tool(step=1, register=False)
    def run_baseline(ctx, args: NoArgs) -> dict:
        """The real docker_run job=baseline (its step gates are not what this test is about)."""
        return jobs.docker_run.fn(ctx, jobs.RunArgs(job="baseline"))

    ctx = make_ctx(tmp_path)
    prepared(ctx)
    script(ctx, "run_eval.py", SLOW_EVAL)
    result = Agent(ScriptedClient([tool_call("run_baseline")]), ctx, [run_baseline], "system", Limits(max_wall_s=3)).run("go")
    assert result.code == ExitCode.LIMIT == 5 and "--max-hours" in result.message
    events = [json.loads(x) for x in (ctx.run_dir / ".tao" / "session.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events][-2:] == ["job_cut", "exit"] and events[-1]["code"] == 5
    assert RunState.load(ctx.run_dir).records.get("baseline") is None and "baseline" not in RunState.load(ctx.run_dir).evidence


def test_a_change_that_voids_the_training_keeps_what_it_produced_aside(tmp_path):
    """'Train two more epochs' on a finished run voided checkpoints/final and the eval by deleting them: a retrain that
    then fails had lost the model. They are moved under .tao/superseded/ instead (out of the gates' and the push's way)."""
    from tao_finetune.tools.jobs import restart_training

    (tmp_path / "checkpoints" / "final").mkdir(parents=True)
    (tmp_path / "checkpoints" / "final" / "model.safetensors").write_bytes(b"weights")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "eval_results.json").write_text('{"accuracy": 0.9}')
    gone = restart_training(tmp_path)
    assert gone == ["checkpoints/final", "reports/eval_results.json"]
    assert not (tmp_path / "checkpoints" / "final").exists() and not (tmp_path / "reports" / "eval_results.json").exists()
    (kept,) = (tmp_path / ".tao" / "superseded").iterdir()
    assert (kept / "checkpoints" / "final" / "model.safetensors").read_bytes() == b"weights"
    assert (kept / "reports" / "eval_results.json").read_text() == '{"accuracy": 0.9}'
    assert restart_training(tmp_path) == []  # nothing left to set aside: no second, empty archive
    assert len(list((tmp_path / ".tao" / "superseded").iterdir())) == 1
