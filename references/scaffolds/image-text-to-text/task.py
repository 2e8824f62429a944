# SPDX-FileCopyrightText: Copyright (c) 2026 NVIDIA CORPORATION & AFFILIATES. All rights reserved.
# SPDX-License-Identifier: Apache-2.0
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
# http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Image-text-to-text (VQA) specifics: config view, chat prompts through the model's processor, the answer-only-loss
collator, model loading (LoRA on the text model), generation-based evaluation, LoRA merge and rendered samples; the
training loop is train.py.

Sources (transformers 5.24 and peft 0.21, installed source checked):
- https://huggingface.co/docs/transformers/main/en/tasks/image_text_to_text (AutoModelForImageTextToText,
  AutoProcessor, processor.apply_chat_template with {"type": "image"} content, generate + batch_decode)
- transformers/models/idefics3/processing_idefics3.py (Idefics3Processor: <image> expanded to image_seq_len tokens
  between <fake_token_around_image>, images as one list per prompt, pixel_attention_mask) and
  transformers/modeling_utils.py get_decoder (the text model LoRA is restricted to)
- https://github.com/huggingface/smollm/blob/main/vision/finetuning/Smol_VLM_FT.ipynb (labels = input ids with pad and
  image tokens at -100; here everything but the answer is -100)
- peft/peft_model.py (get_peft_model, PeftModel.from_pretrained, merge_and_unload), peft/tuners/lora/config.py
- https://visualqa.org/evaluation.html (answer normalisation, accuracy = min(1, matches / 3))
"""

from __future__ import annotations

import json
import os
import re
import shutil
import string
import time
from pathlib import Path

import numpy as np
import torch

import common
from common import CKPT, DATA, REPORTS, Runtime, derive_lora_targets, hp, lora_spec, lora_summary, seed_all, write_json

AUTO_CLASS_NAME = "AutoModelForImageTextToText"
MERGED = CKPT / "merged"
PRIMARY = "exact_match"


# ---------------------------------------------------------------- config


def settings(cfg: dict) -> dict:
    """The values this project reads, from config.yaml's `project:` section (ProjectSpec); while that section is not
    filled yet (or when load_config already returned it), from the same-named run-config fields."""
    proj = cfg.get("project") if isinstance(cfg.get("project"), dict) and cfg["project"].get("model_id") else None
    src = proj if proj is not None else cfg
    splits, cols, h = src.get("splits") or {}, src.get("columns") or {}, dict(hp(src))
    method = "lora" if "lora" in (src.get("training_method"), h.get("training_method")) else "full"
    out = dict(src)  # every ProjectSpec field passes through (split plan, data files, skipped files for sources.py)
    out.update(
        column_renames=dict(src.get("column_renames") or {}), label_names=list(src.get("label_names") or []), hyperparameters=h,
        n_train=int(splits.get("n_train", src.get("n_train", cfg.get("n_train", 10000)))),
        n_eval=int(splits.get("n_eval", src.get("n_eval", cfg.get("n_eval", 1000)))),
        n_epochs=float(src.get("n_epochs", cfg.get("n_epochs", 3))), training_method=method,
        lora=dict(src.get("lora") or {}), lora_r=cfg.get("lora_r"), wandb=bool(cfg.get("wandb")),
        columns={**cols, **{role: cols.get(role) or role for role in ("image", "question", "answer")}})
    out["columns"].setdefault("label", None)
    if not out["model_id"]:
        raise SystemExit("config.yaml has no model_id (project.model_id)")
    return out


def image_cap(model_id: str) -> int | None:
    """The longest image edge the processor ever uses (images are stored no larger)."""
    from transformers import AutoProcessor

    try:
        ip = AutoProcessor.from_pretrained(model_id).image_processor
    except (OSError, ValueError, AttributeError):
        return None
    size = getattr(ip, "size", None) or {}
    edge = size.get("longest_edge") if isinstance(size, dict) else getattr(size, "longest_edge", None)
    return int(edge) if edge else None


def answer_list(value) -> list[str]:
    """Reference answers from a string, a list of strings, VQA answer dicts or a {'text': [...]} dict."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    if isinstance(value, dict):
        return answer_list(value.get("text", value.get("answer")))
    if isinstance(value, (list, tuple)):
        out = []
        for v in value:
            out += answer_list(v)
        return out
    return [str(value)]


# ---------------------------------------------------------------- metrics

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans({c: " " for c in string.punctuation})


def normalize(text: str) -> str:
    """Lower-case, punctuation and articles removed, whitespace collapsed (the VQA / SQuAD normalisation)."""
    return " ".join(_ARTICLES.sub(" ", str(text).lower().translate(_PUNCT)).split())


def score(preds: list[str], refs: list[list[str]]) -> dict:
    """Normalised exact match against any reference, and VQA accuracy min(1, matching references / 3)."""
    em, vqa = [], []
    for p, rs in zip(preds, refs):
        n = normalize(p)
        hits = sum(n == normalize(r) for r in rs)
        em.append(float(hits > 0))
        vqa.append(min(1.0, hits / 3.0) if len(rs) >= 3 else float(hits > 0))
    return {"exact_match": float(np.mean(em)) if em else 0.0, "vqa_accuracy": float(np.mean(vqa)) if vqa else 0.0}


# ---------------------------------------------------------------- data


def read_rows(split: str) -> list[dict]:
    path = DATA / f"{split}.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run prepare_data.py first")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load_image(row: dict):
    from PIL import Image

    with Image.open(DATA / row["image"]) as img:
        return img.convert("RGB")


def user_turn(question: str) -> dict:
    return {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}


class Collator:
    """Chat prompts through the model's own template and processor; train batches carry labels on the answer only."""

    def __init__(self, processor, train: bool):
        self.p, self.train = processor, train
        tok = processor.tokenizer
        eos = getattr(processor, "end_of_utterance_token", None) or tok.eos_token
        self.eos_id = tok.convert_tokens_to_ids(eos) if eos else None

    def prompt(self, question: str) -> str:
        return self.p.apply_chat_template([user_turn(question)], add_generation_prompt=True)

    def __call__(self, rows: list[dict]) -> dict:
        images = [[load_image(r)] for r in rows]
        prompts = [self.prompt(r["question"]) for r in rows]
        if not self.train:
            self.p.tokenizer.padding_side = "left"  # generation continues every prompt from its last token
            return dict(self.p(text=prompts, images=images, padding=True, return_tensors="pt"))
        fulls, tails = [], []
        for r, prompt in zip(rows, prompts):
            turns = [user_turn(r["question"]), {"role": "assistant", "content": [{"type": "text", "text": r["answers"][0]}]}]
            full = self.p.apply_chat_template(turns)
            if not full.startswith(prompt):
                raise SystemExit("the chat template's answer turn does not extend its generation prompt; cannot mask the prompt")
            fulls.append(full)
            tails.append(full[len(prompt):])
        self.p.tokenizer.padding_side = "right"
        batch = dict(self.p(text=fulls, images=images, padding=True, return_tensors="pt"))
        ids, mask = batch["input_ids"], batch["attention_mask"]
        labels = torch.full_like(ids, -100)
        for j, tail in enumerate(tails):
            n = int(mask[j].sum())
            seq = ids[j, :n].tolist()
            tail_ids = self.p.tokenizer(tail, add_special_tokens=False)["input_ids"]
            if tail_ids and seq[n - len(tail_ids):] == tail_ids:
                start = n - len(tail_ids)
            else:  # the answer merged with the prompt's last token: count the prompt's own tokens instead
                start = len(self.p(text=[prompts[j]], images=[images[j]])["input_ids"][0])
            stop = n
            if self.eos_id is not None and self.eos_id in seq[start:]:
                stop = start + seq[start:].index(self.eos_id) + 1  # the answer and its end-of-turn token
            labels[j, start:stop] = ids[j, start:stop]
        batch["labels"] = labels
        return batch


class BatchSet(torch.utils.data.Dataset):
    """Item i is micro-batch i, collated (in loader workers when there are any)."""

    def __init__(self, rows: list[dict], batches: list[np.ndarray], collate: Collator):
        self.rows, self.batches, self.collate = rows, batches, collate

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.collate([self.rows[int(j)] for j in self.batches[i]])


def make_loader(rows, batches, collate, workers: int, pin: bool) -> torch.utils.data.DataLoader:
    kw = {"prefetch_factor": 4} if workers > 0 else {}
    return torch.utils.data.DataLoader(BatchSet(rows, batches, collate), batch_size=None, shuffle=False,
                                       num_workers=workers, pin_memory=pin, **kw)


def to_device(batch: dict, rt: Runtime) -> dict:
    return {k: v.to(rt.device, non_blocking=True) for k, v in batch.items()}


# ---------------------------------------------------------------- models


def load_processor(source: str):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(source)


def load_vlm(source: str, dtype=None):
    """AutoModelForImageTextToText with SDPA where the architecture has it (TAO_ATTN_IMPLEMENTATION overrides)."""
    from transformers import AutoModelForImageTextToText

    kw = {"dtype": dtype} if dtype is not None else {}
    attn = os.environ.get("TAO_ATTN_IMPLEMENTATION", "sdpa")
    try:
        return AutoModelForImageTextToText.from_pretrained(source, attn_implementation=attn, **kw)
    except ValueError as err:
        if "attention implementation" not in str(err) and "attn_implementation" not in str(err):
            raise
        return AutoModelForImageTextToText.from_pretrained(source, **kw)


def text_model_name(model) -> str | None:
    """The dotted name of the language model inside the VLM (LoRA targets are derived under it)."""
    try:
        dec = model.get_decoder()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    return next((n for n, m in model.named_modules() if m is dec and n), None)


def train_model(cfg: dict, rt: Runtime, resume: Path | None):
    """Full fine-tuning (fp32 master weights) or LoRA on the text model (base frozen in the autocast dtype)."""
    spec = lora_spec(cfg)
    if spec is None:
        return load_vlm(str(resume or cfg["model_id"]), torch.float32), None
    base = load_vlm(cfg["model_id"], rt.amp_dtype or torch.float32)
    if hp(cfg).get("gradient_checkpointing"):
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    from peft import LoraConfig, PeftModel, get_peft_model

    if resume is not None:
        model = PeftModel.from_pretrained(base, str(resume), is_trainable=True)
        conf = model.peft_config["default"]
        return model, {**lora_summary(model, sorted(conf.target_modules), False, None), "r": conf.r, "within": text_model_name(base)}
    derived = spec["target_modules"] is None
    targets = derive_lora_targets(base, text_model_name(base)) if derived else list(spec["target_modules"])
    conf = LoraConfig(r=spec["r"], lora_alpha=spec["alpha"], lora_dropout=spec["dropout"], target_modules=targets)
    model = get_peft_model(base, conf)
    summary = {**lora_summary(model, targets, derived, None), "r": spec["r"], "alpha": spec["alpha"],
               "dropout": spec["dropout"], "within": text_model_name(base)}
    return model, summary


def eval_model(source: str, rt: Runtime):
    model = load_vlm(source, rt.amp_dtype or torch.float32).to(rt.device)
    model.eval()
    return model


def max_new_tokens(processor, rows: list[dict]) -> int:
    """Room for the longest training answer plus its end-of-turn token."""
    tok = processor.tokenizer
    longest = max((len(tok(a, add_special_tokens=False)["input_ids"]) for r in rows for a in r["answers"][:1]), default=8)
    return int(min(64, longest + 2))


def generate(model, processor, rows: list[dict], rt: Runtime, batch_size: int, new_tokens: int) -> list[str]:
    """Greedy answers for rows, batch by batch (left-padded prompts)."""
    collate = Collator(processor, train=False)
    out: list[str] = []
    for i in range(0, len(rows), batch_size):
        batch = to_device(collate(rows[i:i + batch_size]), rt)
        with torch.no_grad(), rt.autocast():
            gen = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False)
        new = gen[:, batch["input_ids"].shape[1]:]
        out += [t.strip() for t in processor.batch_decode(new, skip_special_tokens=True)]
    return out


# ---------------------------------------------------------------- merge, evaluation, samples


def merge(argv: list[str] | None = None) -> int:
    """merge_lora.py: base model + checkpoints/final adapter -> checkpoints/merged (plain transformers weights)."""
    import argparse

    argparse.ArgumentParser(description="Merge the LoRA adapter in checkpoints/final into checkpoints/merged.").parse_args(argv)
    cfg = settings(common.load_config())
    final = common.final_dir()
    if lora_spec(cfg) is None:
        print("training_method is full: checkpoints/final already holds plain weights; nothing to merge")
        return 0
    if not (final / "adapter_config.json").is_file():
        raise SystemExit("checkpoints/final has no adapter_config.json: run train.py (LoRA) first")
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    base = load_vlm(cfg["model_id"])  # the checkpoint's own dtype
    peft_model = PeftModel.from_pretrained(base, str(final))
    check = Collator(load_processor(str(final)), train=True)([read_rows("eval")[0]])
    check.pop("labels")
    peft_model.eval()
    with torch.no_grad():
        before = peft_model(**check).logits.float()
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        after = merged(**check).logits.float()
    tmp = CKPT / ".tmp-merged"
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    load_processor(str(final)).save_pretrained(tmp)
    reloaded = AutoModelForImageTextToText.from_pretrained(tmp)  # plain transformers, no peft
    leftover = [n for n, _ in reloaded.named_parameters() if "lora_" in n]
    if leftover:
        raise SystemExit(f"merged checkpoint still holds LoRA weights: {leftover[:3]}")
    shutil.rmtree(MERGED, ignore_errors=True)
    os.replace(tmp, MERGED)
    diff = float((before - after).abs().max())
    report = {"base": cfg["model_id"], "adapter": str(final), "merged": str(MERGED), "max_abs_logit_diff": diff,
              "params": sum(p.numel() for p in reloaded.parameters()), "class": type(reloaded).__name__}
    write_json(REPORTS / "merge.json", report)
    print(json.dumps(report))
    return 0


def evaluate(argv: list[str] | None = None) -> int:
    """run_eval.py: zero-shot model_id (--baseline) or the fine-tuned model, scored by generation on the eval split."""
    import argparse

    ap = argparse.ArgumentParser(description="Evaluate by generation on data/eval.jsonl.")
    ap.add_argument("--baseline", action="store_true", help="zero-shot model_id -> reports/baseline_results.json")
    args = ap.parse_args(argv)
    cfg = settings(common.load_config())
    h = hp(cfg)
    rt = Runtime(cfg)
    seed_all(int(h.get("seed", 42)))
    source = cfg["model_id"] if args.baseline else str(tuned_source(cfg))
    out = REPORTS / ("baseline_results.json" if args.baseline else "eval_results.json")
    processor = load_processor(source)
    model = eval_model(source, rt)
    rows = read_rows("eval")
    new_tokens = max_new_tokens(processor, read_rows("train"))
    t0 = time.perf_counter()
    preds = generate(model, processor, rows, rt, int(h.get("per_device_eval_batch_size", 16)), new_tokens)
    dt = time.perf_counter() - t0
    metrics = score(preds, [r["answers"] for r in rows])
    REPORTS.mkdir(parents=True, exist_ok=True)
    with (REPORTS / ("baseline_predictions.jsonl" if args.baseline else "predictions.jsonl")).open("w") as f:
        for r, p in zip(rows, preds):
            f.write(json.dumps({"question": r["question"], "answers": r["answers"], "prediction": p}, ensure_ascii=False) + "\n")
    res = {"primary_metric": PRIMARY, **metrics, "n_eval": len(rows), "model": source, "baseline": args.baseline,
           "zero_shot": args.baseline, "max_new_tokens": new_tokens, "eval_runtime_s": round(dt, 3),
           "eval_samples_per_s": len(rows) / dt if dt > 0 else None, "task": "image-text-to-text"}
    write_json(out, res)
    print(json.dumps({k: res[k] for k in ("primary_metric", "exact_match", "vqa_accuracy", "n_eval")}))
    rt.close()
    return 0


def tuned_source(cfg: dict) -> Path:
    """The fine-tuned weights: checkpoints/merged for LoRA runs, checkpoints/final for full fine-tuning."""
    if lora_spec(cfg) is not None:
        if not (MERGED / "config.json").is_file():
            raise SystemExit("checkpoints/merged is missing: run merge_lora.py after train.py")
        return MERGED
    if not (common.final_dir() / "config.json").is_file():
        raise SystemExit("checkpoints/final is missing: run train.py first")
    return common.final_dir()


def infer(argv: list[str] | None = None) -> int:
    """infer.py: answer a few eval questions with the fine-tuned model; each sample shows image, question, reference, answer."""
    import argparse

    ap = argparse.ArgumentParser(description="Write answered VQA samples from the fine-tuned model.")
    ap.add_argument("--n", type=int, default=5, help="number of samples")
    args = ap.parse_args(argv)
    cfg = settings(common.load_config())
    rt = Runtime(cfg)
    source = str(tuned_source(cfg))
    processor = load_processor(source)
    model = eval_model(source, rt)
    rows = read_rows("eval")
    idx = np.sort(np.random.default_rng(int(hp(cfg).get("seed", 42))).choice(len(rows), size=min(args.n, len(rows)), replace=False))
    chosen = [rows[int(i)] for i in idx]
    preds = generate(model, processor, chosen, rt, len(chosen), max_new_tokens(processor, read_rows("train")))
    out_dir = REPORTS / "inference_samples"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    summary = []
    for j, (i, row, pred) in enumerate(zip(idx, chosen, preds)):
        item = {"index": int(i), "image": row["image"], "question": row["question"], "reference": row["answers"][0],
                "answer": pred, "correct": score([pred], [row["answers"]])["exact_match"] == 1.0}
        item["file"] = write_sample(out_dir, j, int(i), row, item)
        summary.append(item)
    write_json(REPORTS / "inference_summary.json", {"samples": summary, "model": source})
    print(json.dumps(summary))
    rt.close()
    return 0


def write_sample(out_dir: Path, j: int, i: int, row: dict, item: dict) -> str:
    """The image with the question, the reference and the model's answer drawn under it."""
    import textwrap

    from PIL import Image, ImageDraw

    img = load_image(row)
    scale = max(1, 256 // max(img.size))
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST) if scale > 1 else img
    if max(img.size) > 512:
        img.thumbnail((512, 512))
    width = max(img.width, 320)
    lines = [("Q: " + item["question"], "black"), ("reference: " + item["reference"], "black"),
             ("answer: " + (item["answer"] or "(empty)"), "darkgreen" if item["correct"] else "red")]
    wrapped = [(w, c) for text, c in lines for w in textwrap.wrap(text, max(20, width // 7)) or [""]]
    canvas = Image.new("RGB", (width, img.height + 8 + 16 * len(wrapped)), "white")
    canvas.paste(img, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, (text, colour) in enumerate(wrapped):
        draw.text((4, img.height + 4 + 16 * k), text, fill=colour)
    name = f"sample_{j}_idx{i}.png"
    canvas.save(out_dir / name)
    return name
