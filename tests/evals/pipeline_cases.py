"""The spec's four example pipelines as recorded eval cases (evals/cases/pipeline-*.yaml + .session.jsonl).

Each case is a real autopilot run on CPU through the real tools and gates, on inputs this module builds offline (the
demo's tiny ViT + sklearn digits; a tiny random-init DETR + COCO shapes; a tiny SegFormer + mask folders; a tiny
Idefics3 + shapes VQA with LoRA), recorded in session format 2. `tao-finetune eval` replays each with
`replay --mode full --strict` (nothing runs: deterministic, no GPU, data or network).

Re-record (after a change that alters the conversation, e.g. a tool's result format), from the repo root:
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=<shim> python3 tests/evals/pipeline_cases.py [NAME ...]
It writes evals/cases/pipeline-NAME.{yaml,session.jsonl}; inputs and runs go under /tmp/tao-pipeline-cases/NAME/
(fixed paths, so the recorded text is the same on every machine that records; the run dir is no prefix of the inputs).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent / "references")]

from shapes import detection_coco, segmentation_folders, tiny_detr, tiny_segformer  # noqa: E402
from vlm_data import shapes_vqa, tiny_smolvlm  # noqa: E402

CASES = HERE.parent.parent / "evals" / "cases"
ROOT = Path("/tmp/tao-pipeline-cases")
COMMON = ["--platform", "local", "--allow-cpu", "--no-push-to-hub"]


def _classification(d: Path) -> list[str]:
    from tao_finetune.agent.demo import DEMO_SETTINGS, demo_inputs

    inputs = demo_inputs(d)
    return ["--model-id", inputs["model_id"], "--local-dataset-path", inputs["local_dataset_path"], *DEMO_SETTINGS]


def _detection(d: Path) -> list[str]:
    import torch

    torch.manual_seed(0)
    return ["--model-id", str(tiny_detr(d / "tiny-detr")), "--local-dataset-path", str(detection_coco(d / "coco", n=50)),
            "--task-type", "object-detection", "--n-epochs", "3", "--set", "learning_rate=3e-4",
            "--set", "per_device_train_batch_size=8", "--set", "logging_steps=3"]


def _segmentation(d: Path) -> list[str]:
    import torch

    torch.manual_seed(0)
    return ["--model-id", str(tiny_segformer(d / "tiny-segformer")), "--local-dataset-path", str(segmentation_folders(d / "masks", n=100)),
            "--task-type", "semantic-segmentation", "--n-epochs", "10", "--set", "learning_rate=5e-3",
            "--set", "per_device_train_batch_size=8", "--set", "logging_steps=5"]


def _vlm(d: Path) -> list[str]:
    return ["--model-id", str(tiny_smolvlm(d / "tiny-smolvlm")), "--local-dataset-path", str(shapes_vqa(d / "vqa", n=200)),
            "--lora-r", "8", "--n-epochs", "5", "--n-eval", "40", "--set", "learning_rate=1e-2",
            "--set", "per_device_train_batch_size=8", "--set", "gradient_accumulation_steps=1", "--set", "precision=fp32",
            "--set", "per_device_eval_batch_size=40"]


# name -> (what the case shows, input builder -> run flags, the metric floor the recording must show)
PIPELINES: dict[str, tuple[str, Callable[[Path], list[str]], float]] = {
    "image-classification": ("tiny ViT on sklearn digits (the demo)", _classification, 0.85),
    "object-detection": ("tiny random-init DETR on COCO-format shapes", _detection, 0.0),
    "semantic-segmentation": ("tiny random-init SegFormer on image + mask folders", _segmentation, 0.8),
    "image-text-to-text": ("tiny random-init Idefics3 (SmolVLM-class) with LoRA + merge on shapes VQA", _vlm, 0.8),
}


def build_inputs(name: str, where: Path) -> list[str]:
    """Build a pipeline's model and data under `where` (offline); returns the run flags that use them."""
    return PIPELINES[name][1](where)


def record(name: str, root: Path = ROOT, cases: Path = CASES) -> int:
    """Run the autopilot on the pipeline's inputs (answering 'accept' if gate 5 asks) and write the case files."""
    from tao_finetune.agent.cli import main

    what, _, floor = PIPELINES[name]
    shutil.rmtree(root / name, ignore_errors=True)
    flags = build_inputs(name, root / name / "inputs")
    run = root / name / "run"
    argv = ["run", *flags, *COMMON, "--output-dir", str(run), "--llm", "autopilot", "--yes", "--quiet"]
    code = main(argv)
    if code == 3:  # gate 5's learning check asked (a few CPU epochs of a random-init DETR): accept and resume
        code = main([*argv, "--answer", "accept"])
    if code != 0:
        raise SystemExit(f"{name}: the recording run ended with exit {code} (see {run / 'session.jsonl'})")
    cid = f"pipeline-{name}"
    shutil.copyfile(run / "session.jsonl", cases / f"{cid}.session.jsonl")
    (cases / f"{cid}.yaml").write_text(
        f"# {what}: a real CPU autopilot run recorded by tests/evals/pipeline_cases.py, replayed with every tool outcome\n"
        "# served (replay --mode full --strict: deterministic, no GPU, data or network). Re-record with that script.\n"
        f"id: {cid}\ndriver: replay\nreplay: {cid}.session.jsonl\nreplay_mode: full\n"
        f"args: [{', '.join(COMMON)}]\n"
        "expect:\n  exit_code: 0\n  gates_met: [1, 2, 3, 4, 5, 6]\n"
        f"  min_primary_metric: {floor}\n" + ("  beats_baseline: true\n" if floor else "") + "  not_pushed: true\n")
    return code


if __name__ == "__main__":
    for n in sys.argv[1:] or list(PIPELINES):
        record(n)
        print(f"recorded {n}")
