"""The image-text-to-text scaffold on its own: answer-only labels, exact LoRA resume, merge, and the opt-in unit tests."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from vlm_data import shapes_vqa, tiny_smolvlm

from tao_finetune.agent.config import RunConfig, save_config
from tao_finetune.tools.project import SCAFFOLDS, copy_scaffold

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def vqa(tmp_path_factory):
    root = tmp_path_factory.mktemp("vlm")
    return {"model": tiny_smolvlm(root / "tiny-smolvlm"), "data": shapes_vqa(root / "vqa", n=60, kinds=("colour", "shape"))}


def project(path, vqa, **hp):
    copy_scaffold("image-text-to-text", path)
    cfg = RunConfig(model_id=str(vqa["model"]), local_dataset_path=str(vqa["data"]), local_dataset_format="jsonl", task_type="image-text-to-text",
                    column_renames={"query": "question"}, n_train=48, n_eval=12, n_epochs=2, lora_r=4, output_dir=str(path))
    cfg.hyperparameters = cfg.hyperparameters.model_copy(update={"training_method": "lora", "learning_rate": 5e-3,
                                                                 "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                                                                 "precision": "fp32", "logging_steps": 1, **hp})
    # what Step 1 decides for a single-file jsonl: train from "train", hold out a fifth for eval
    cfg.project = cfg.project.model_copy(update={"data_files": {"train": [str(vqa["data"] / "train.jsonl")]}, "local_dataset_format": "jsonl",
                                                 "splits": cfg.project.splits.model_copy(update={"train_split": "train", "eval_fraction": 0.2})})
    save_config(cfg, path / "config.yaml")
    return path


def py(path, *argv, **env):
    res = subprocess.run([sys.executable, *argv], cwd=path, env={**ENV, **env}, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res.stdout


def test_collator_puts_loss_on_the_answer_tokens_only(tmp_path, vqa):
    path = project(tmp_path / "p", vqa)
    py(path, "prepare_data.py")
    sys.path.insert(0, str(path))
    try:
        os.environ["TAO_PROJECT_DIR"] = str(path)
        # another test may have imported the scaffold's `common` (with paths fixed at import time): import this project's own
        sys.modules.pop("task", None), sys.modules.pop("common", None)
        import task  # the rendered project's module

        proc = task.load_processor(str(vqa["model"]))
        rows = task.read_rows("train")[:4]
        batch = task.Collator(proc, train=True)(rows)
    finally:
        sys.path.remove(str(path))
        os.environ.pop("TAO_PROJECT_DIR")
        sys.modules.pop("task", None), sys.modules.pop("common", None)
    tok = proc.tokenizer
    eos = tok.convert_tokens_to_ids("<end_of_utterance>")
    for j, row in enumerate(rows):
        kept = batch["labels"][j][batch["labels"][j] != -100].tolist()
        assert kept == tok(row["answers"][0], add_special_tokens=False)["input_ids"] + [eos]
    image_id = tok.convert_tokens_to_ids("<image>")
    assert (batch["input_ids"] == image_id).sum() == 4 * proc.image_seq_len
    assert not ((batch["labels"] == image_id).any() or (batch["labels"] == tok.pad_token_id).any())


def test_lora_training_resumes_exactly_and_merges(tmp_path, vqa):
    path = project(tmp_path / "p", vqa)
    py(path, "prepare_data.py")
    meta = json.loads((path / "data" / "meta.json").read_text())
    assert meta["n_train"] == 48 and meta["roles"] == {"image": "image", "question": "question", "answer": "answer"}
    py(path, "train.py", TAO_SAVE_STEPS="4")
    straight = load_file(path / "checkpoints" / "final" / "adapter_model.safetensors")
    ckpts = sorted((path / "checkpoints").glob("step-*"))
    assert [c.name for c in ckpts] == ["step-0000004", "step-0000008"]  # 12 steps in all; the final step is not a step checkpoint
    shutil.rmtree(path / "checkpoints" / "final")
    shutil.rmtree(ckpts[-1])
    out = py(path, "train.py", TAO_SAVE_STEPS="4")
    assert "resume" in (path / "logs" / "metrics.jsonl").read_text()
    resumed = load_file(path / "checkpoints" / "final" / "adapter_model.safetensors")
    assert straight.keys() == resumed.keys() and all(torch.allclose(straight[k], resumed[k], atol=1e-6) for k in straight), out
    py(path, "merge_lora.py")
    merge = json.loads((path / "reports" / "merge.json").read_text())
    assert merge["class"] == "Idefics3ForConditionalGeneration" and merge["max_abs_logit_diff"] < 1e-3
    assert not (path / "checkpoints" / "merged" / "adapter_config.json").exists()
    py(path, "run_eval.py")
    res = json.loads((path / "reports" / "eval_results.json").read_text())
    assert res["model"].endswith("checkpoints/merged") and 0 <= res["exact_match"] <= 1 and res["n_eval"] == 12


def test_generated_unit_tests_pass_on_the_project(tmp_path, vqa):
    path = project(tmp_path / "p", vqa)
    (path / "tests").mkdir()
    shutil.copyfile(SCAFFOLDS / "image-text-to-text" / "test_project.py", path / "tests" / "test_project.py")
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/"], cwd=path, env=ENV,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:]
    assert " passed" in res.stdout
