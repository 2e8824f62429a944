"""LoRA where it is offered: the classification scaffolds train adapters (head kept trainable) and export merged weights."""

import json

import torch
from test_scaffolds import call, digits, make_ctx, minilm, sentiment, steps_4_5  # noqa: F401 (fixtures)
from transformers import AutoModelForImageClassification, AutoModelForSequenceClassification


def expected_trainable(model, r: int) -> int:
    """LoRA A+B for every nn.Linear inside a numbered layer, plus the whole classifier head."""
    lora = sum(r * (m.in_features + m.out_features) for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and any(p.isdigit() for p in n.split(".")[:-1]))
    head = sum(p.numel() for n, m in model.named_children() if n != model.base_model_prefix for p in m.parameters())
    return lora + head


def lora_ctx(run, task, r, **fields):
    ctx = make_ctx(run, task, lora_r=r, **fields)
    hp = ctx.config.hyperparameters
    ctx.config.hyperparameters = hp.model_copy(update={"training_method": "lora", **fields.pop("_hp", {})})
    return ctx


def test_image_classification_trains_lora_with_the_requested_rank(tmp_path, digits):
    ctx = lora_ctx(tmp_path / "run", "image-classification", 4, model_id=str(digits["model"]),
                   local_dataset_path=str(digits["data"]), n_train=800, n_eval=200, n_epochs=8)
    ctx.config.hyperparameters = ctx.config.hyperparameters.model_copy(update={"learning_rate": 3e-3, "warmup_ratio": 0.05})
    ctx.save()
    out = steps_4_5(ctx)
    lora = json.loads((ctx.run_dir / "reports" / "lora.json").read_text())
    base = AutoModelForImageClassification.from_pretrained(digits["model"], num_labels=10)
    assert lora["r"] == 4 and lora["modules_to_save"] == ["classifier"] and lora["targets_derived"]
    assert lora["trainable_params"] == expected_trainable(base, 4)
    assert lora["trainable_params"] < 0.5 * lora["total_params"]
    assert out["eval"]["accuracy"] > out["baseline"]["accuracy"] + 0.25, (out["baseline"], out["eval"])
    final = ctx.run_dir / "checkpoints" / "final"
    assert not (final / "adapter_config.json").exists()  # merged: plain transformers weights
    merged = AutoModelForImageClassification.from_pretrained(final)
    assert not any("lora" in n for n, _ in merged.named_parameters())


def test_text_classification_trains_lora_on_minilm(tmp_path, sentiment):
    ctx = lora_ctx(tmp_path / "run", "text-classification", 8, model_id=str(minilm()), local_dataset_path=str(sentiment),
                   local_dataset_format="csv", column_renames={"sentence": "text", "sentiment": "label"},
                   n_train=160, n_eval=100, n_epochs=2)
    ctx.config.hyperparameters = ctx.config.hyperparameters.model_copy(
        update={"learning_rate": 1e-3, "per_device_train_batch_size": 16, "warmup_ratio": 0.1, "logging_steps": 2})
    ctx.save()
    out = steps_4_5(ctx)
    lora = json.loads((ctx.run_dir / "reports" / "lora.json").read_text())
    base = AutoModelForSequenceClassification.from_pretrained(minilm(), num_labels=2)
    assert lora["r"] == 8 and lora["trainable_params"] == expected_trainable(base, 8)
    assert lora["trainable_params"] < 0.1 * lora["total_params"]
    assert out["eval"]["accuracy"] >= 0.85 and out["eval"]["accuracy"] > out["baseline"]["accuracy"], (out["baseline"], out["eval"])
