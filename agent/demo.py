"""The built-in demo: a tiny ViT made from a config, fine-tuned on real scikit-learn digits, offline on CPU."""

from __future__ import annotations

import json
from pathlib import Path

DIGITS_PX = 32
# the demo's run settings (the eval harness reuses them); no accumulation: the batch set here is the effective batch
DEMO_SETTINGS = ["--n-epochs", "30", "--set", "learning_rate=1e-3", "--set", "per_device_train_batch_size=32", "--set", "warmup_ratio=0.05",
                 "--set", "lr_scheduler_type=cosine",
                 "--set", "recipe.train_transforms=none: resize and normalise only (digits are not flip-invariant)"]


def make_digits_imagefolder(root: Path, test_fraction: float = 0.2, seed: int = 0) -> Path:
    """Write sklearn's 1,797 real 8x8 digits, upscaled to 32 px, as an imagefolder with train/ and test/ splits."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    if (root / "train").is_dir() and (root / "test").is_dir():
        return root
    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.images))
    n_test = int(len(order) * test_fraction)
    for rank, idx in enumerate(order):
        split = "test" if rank < n_test else "train"
        label = str(digits.target[idx])
        img = (digits.images[idx] / 16.0 * 255).astype("uint8")
        folder = root / split / label
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").convert("RGB").resize((DIGITS_PX, DIGITS_PX), Image.NEAREST).save(folder / f"{idx:04d}.png")
    return root


def make_tiny_vit(path: Path, num_labels: int = 10, seed: int = 2) -> Path:
    """Save a 2-layer ViT (random init from `seed`, ~75k parameters) with its image processor, as a local model folder.

    The init is seeded: how fast a model this small learns depends on the draw (some draws stay flat long enough for the
    flat-loss watch to ask), and the demo and the tests must behave the same on every machine.
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    if (path / "config.json").is_file():
        return path
    labels = {i: str(i) for i in range(num_labels)}
    config = ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128, image_size=DIGITS_PX,
                       patch_size=4, num_labels=num_labels, id2label=labels, label2id={v: k for k, v in labels.items()})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ViTForImageClassification(config)
    model.save_pretrained(path)
    ViTImageProcessor(size={"height": DIGITS_PX, "width": DIGITS_PX}, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(path)
    card = "---\nlicense: apache-2.0\npipeline_tag: image-classification\ntags: [vision, image-classification]\n---\n# tiny-vit\nA 2-layer ViT for 32 px digits, random init.\n"
    (path / "README.md").write_text(card)
    return path


def demo_inputs(work: Path) -> dict[str, str]:
    """Build the demo model and data under `work`; returns the run flags they need."""
    model = make_tiny_vit(work / "tiny-vit")
    data = make_digits_imagefolder(work / "digits")
    (work / "demo.json").write_text(json.dumps({"model": str(model), "data": str(data)}))
    return {"model_id": str(model), "local_dataset_path": str(data)}
