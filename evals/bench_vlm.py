"""GPU figures for the image-text-to-text scaffold: a SmolVLM-256M-sized Idefics3 (random init, no weights here) with
LoRA on synthetic coloured-shape VQA, through the scaffold's own scripts: prepare, zero-shot baseline, train, merge,
eval. Prints samples/s, tokens/s, peak memory, loss first -> last and exact match baseline -> fine-tuned.

    python -m tao_finetune.evals.bench_vlm --out /tmp/bench-vlm [--n-train 2048] [--batch 32] [--epochs 1]

Sizes follow HuggingFaceTB/SmolVLM-256M-Instruct's config.json (SigLIP-B/16 at 512 px vision tower, pixel-shuffle
scale factor 4 -> 64 image tokens, SmolLM2-135M text model: 30 layers, hidden 576, 9 heads / 3 KV heads).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOLVLM_256M = {
    "vision": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
    "text": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
             "num_key_value_heads": 3, "max_position_embeddings": 8192, "initializer_range": 0.02, "rope_theta": 100000.0},
    "image_size": 512, "patch": 16, "scale_factor": 4, "vocab_size": 49280,
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n-train", type=int, default=2048)
    ap.add_argument("--n-eval", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--epochs", type=float, default=1)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--lora-r", type=int, default=16)
    ap.add_argument("--tiny", action="store_true", help="toy sizes and fp32 (a CPU dry run of this script)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT / "tests"))
    from vlm_data import shapes_vqa, tiny_smolvlm

    from tao_finetune.agent.config import RunConfig, save_config
    from tao_finetune.tools.project import copy_scaffold

    out = args.out.resolve()
    t0 = time.perf_counter()
    if args.tiny:
        model = tiny_smolvlm(out / "tiny-random")
    else:
        model = tiny_smolvlm(out / "smolvlm-256m-random", image_size=SMOLVLM_256M["image_size"], patch=SMOLVLM_256M["patch"],
                             scale_factor=SMOLVLM_256M["scale_factor"], vocab_size=SMOLVLM_256M["vocab_size"],
                             vision=SMOLVLM_256M["vision"], text=SMOLVLM_256M["text"])
    data = shapes_vqa(out / "vqa", n=args.n_train + args.n_eval, kinds=("colour", "shape"), size=128)
    proj = out / "project"
    copy_scaffold("image-text-to-text", proj)
    cfg = RunConfig(model_id=str(model), local_dataset_path=str(data), task_type="image-text-to-text",
                    column_renames={"query": "question"}, n_train=args.n_train, n_eval=args.n_eval, n_epochs=args.epochs,
                    lora_r=args.lora_r, output_dir=str(proj))
    cfg.hyperparameters = cfg.hyperparameters.model_copy(update={
        "training_method": "lora", "learning_rate": args.lr, "per_device_train_batch_size": args.batch,
        "per_device_eval_batch_size": 64, "gradient_accumulation_steps": 1, "warmup_ratio": 0.05, "logging_steps": 5,
        "lr_scheduler_type": "cosine", "precision": "fp32" if args.tiny else "bf16"})
    save_config(cfg, proj / "config.yaml")
    setup_s = time.perf_counter() - t0
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "TAO_SAVE_STEPS": "0"}
    walls = {}
    for name, script in (("prepare", ["prepare_data.py"]), ("baseline", ["run_eval.py", "--baseline"]),
                         ("train", ["train.py"]), ("merge", ["merge_lora.py"]), ("eval", ["run_eval.py"]), ("infer", ["infer.py"])):
        t = time.perf_counter()
        res = subprocess.run([sys.executable, *script], cwd=proj, env=env, capture_output=True, text=True)
        walls[name] = round(time.perf_counter() - t, 1)
        if res.returncode != 0:
            print(res.stdout[-3000:], res.stderr[-5000:])
            raise SystemExit(f"{name} failed")
    rep = lambda n: json.loads((proj / "reports" / n).read_text())
    recs = [json.loads(x) for x in (proj / "logs" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r and "event" not in r]
    steady = steps[len(steps) // 2:]
    summary, lora, base, tuned = rep("train_summary.json"), rep("lora.json"), rep("baseline_results.json"), rep("eval_results.json")
    row = {"device": summary["device"], "precision": summary["precision"], "total_params": lora["total_params"],
           "trainable_params": lora["trainable_params"], "steps": summary["total_steps"], "batch": args.batch,
           "train_samples_per_s": round(summary["train_samples_per_s"], 1),
           "steady_samples_per_s": round(sum(r["samples_per_s"] for r in steady) / len(steady), 1),
           "steady_tokens_per_s": round(sum(r["tokens_per_s"] for r in steady) / len(steady)),
           "peak_memory_gb": round(max(r.get("max_memory_gb") or 0 for r in steps), 2),
           "loss_first": round(steps[0]["loss"], 3), "loss_last": round(steps[-1]["loss"], 3),
           "exact_match_baseline": base["exact_match"], "exact_match_tuned": tuned["exact_match"],
           "merge_max_abs_logit_diff": rep("merge.json")["max_abs_logit_diff"], "setup_s": round(setup_s, 1), "wall_s": walls}
    print(json.dumps(row, indent=1))
    (out / "bench_vlm.json").write_text(json.dumps(row, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
