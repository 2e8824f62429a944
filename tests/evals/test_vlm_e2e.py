"""The VLM pipeline end to end with the autopilot: a tiny Idefics3 (SmolVLM-class) model, LoRA, merge, VQA accuracy."""

import json

import torch
from transformers import AutoModelForImageTextToText
from vlm_data import shapes_vqa, tiny_smolvlm

from tao_finetune.agent import gates
from tao_finetune.agent.cli import main
from tao_finetune.agent.state import RunState
from tao_finetune.evals.harness import Case, score_run

VLM_SETTINGS = ["--n-epochs", "5", "--n-eval", "40", "--set", "learning_rate=1e-2", "--set", "per_device_train_batch_size=8",
                "--set", "gradient_accumulation_steps=1", "--set", "precision=fp32", "--set", "per_device_eval_batch_size=40"]


def test_vlm_lora_runs_all_six_gates_and_merges(tmp_path, capsys):
    model = tiny_smolvlm(tmp_path / "tiny-smolvlm")
    data = shapes_vqa(tmp_path / "vqa", n=200)
    run = tmp_path / "run"
    code = main(["run", "--model-id", str(model), "--local-dataset-path", str(data), "--output-dir", str(run),
                 "--llm", "autopilot", "--platform", "local", "--allow-cpu", "--no-push-to-hub", "--lora-r", "8",
                 "--yes", "--quiet", *VLM_SETTINGS])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert gates.first_unmet(run, RunState.load(run)) is None
    cfg = (run / "config.yaml").read_text()
    assert "task_type: image-text-to-text" in cfg and "training_method: lora" in cfg
    base = json.loads((run / "reports" / "baseline_results.json").read_text())
    tuned = json.loads((run / "reports" / "eval_results.json").read_text())
    assert tuned["primary_metric"] == "exact_match" and base["zero_shot"] is True
    assert tuned["exact_match"] >= 0.8 and tuned["exact_match"] > base["exact_match"] + 0.5, (base, tuned)
    assert tuned["model"].endswith("checkpoints/merged")
    samples = json.loads((run / "reports" / "inference_summary.json").read_text())["samples"]
    assert len(samples) == 5 and all(s["question"] and s["reference"] for s in samples)
    assert len(list((run / "reports" / "inference_samples").glob("*.png"))) == 5
    lora = json.loads((run / "reports" / "lora.json").read_text())
    plain = AutoModelForImageTextToText.from_pretrained(model)
    text_linears = [m for n, m in plain.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.text_model.layers.")]
    assert lora["r"] == 8 and lora["within"] == "model.text_model" and lora["targets_derived"]
    assert lora["trainable_params"] == sum(8 * (m.in_features + m.out_features) for m in text_linears)
    merged = AutoModelForImageTextToText.from_pretrained(run / "checkpoints" / "merged")
    assert not any("lora" in n for n, _ in merged.named_parameters())
    changed = [n for n, p in merged.named_parameters() if not torch.equal(p, plain.get_parameter(n))]
    assert changed and all(n.startswith("model.text_model.layers.") for n in changed)
    assert json.loads((run / "reports" / "merge.json").read_text())["max_abs_logit_diff"] < 1e-3
    score = score_run(Case("vlm", []), run, 0, 0.0)
    assert score.refusals == 0 and score.gates_met == [1, 2, 3, 4, 5, 6]
    assert "exact_match:" in out and "→" in out
