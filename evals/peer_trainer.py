"""The peer for evals/bench_gpu.py: the Hugging Face Trainer pipeline of transformers' image-classification example.

It follows examples/pytorch/image-classification/run_image_classification.py (transformers v5.x) step for step: an
imagefolder loaded with `datasets.load_dataset("imagefolder", data_files=...)`, label maps from the ClassLabel
feature, `AutoModelForImageClassification` + `AutoImageProcessor`, torchvision transforms applied on the fly with
`with_transform` (train: RandomResizedCrop, RandomHorizontalFlip, ToTensor, Normalize; eval: Resize, CenterCrop,
ToTensor, Normalize), the same collate_fn, `Trainer(...).train()`, `save_model`, `evaluate`, with the accuracy
computed by numpy instead of `evaluate.load("accuracy")` (no network on the benchmark host). It is written here, not
copied: this workplace keeps third-party code out of the repo; the command-line flags are the example's (parsed by
HfArgumentParser into TrainingArguments), so the same invocation runs the upstream script unchanged.

    python evals/peer_trainer.py --model_name_or_path M --train_dir D/train --validation_dir D/validation \
        --output_dir OUT --do_train --do_eval --bf16 --per_device_train_batch_size 128 --num_train_epochs 2 ...

Prints and writes OUT/all_results.json with the Trainer's train_samples_per_second and train_runtime.
Sources: https://huggingface.co/docs/transformers/main/en/main_classes/trainer (Trainer, TrainingArguments),
https://huggingface.co/docs/datasets/main/en/image_load#imagefolder, https://docs.pytorch.org/vision/stable/transforms.html
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class DataArgs:
    train_dir: str = field(metadata={"help": "imagefolder of the train split"})
    validation_dir: str | None = field(default=None, metadata={"help": "imagefolder of the validation split"})
    image_column_name: str = field(default="image")
    label_column_name: str = field(default="label")


@dataclass
class ModelArgs:
    model_name_or_path: str = field(metadata={"help": "local model folder or Hub id"})
    ignore_mismatched_sizes: bool = field(default=False)


def collate_fn(examples):
    pixel_values = torch.stack([e["pixel_values"] for e in examples])
    labels = torch.tensor([e["label"] for e in examples])
    return {"pixel_values": pixel_values, "labels": labels}


def main() -> int:
    from datasets import load_dataset
    from torchvision.transforms import (CenterCrop, Compose, Normalize, RandomHorizontalFlip, RandomResizedCrop, Resize,
                                        ToTensor)
    from transformers import (AutoConfig, AutoImageProcessor, AutoModelForImageClassification, HfArgumentParser, Trainer,
                              TrainingArguments)

    model_args, data_args, training_args = HfArgumentParser((ModelArgs, DataArgs, TrainingArguments)).parse_args_into_dataclasses()
    files = {"train": os.path.join(data_args.train_dir, "**")}
    if data_args.validation_dir:
        files["validation"] = os.path.join(data_args.validation_dir, "**")
    dataset = load_dataset("imagefolder", data_files=files)
    labels = dataset["train"].features[data_args.label_column_name].names
    label2id = {name: str(i) for i, name in enumerate(labels)}
    id2label = {str(i): name for i, name in enumerate(labels)}

    def compute_metrics(p):
        return {"accuracy": float((np.argmax(p.predictions, axis=1) == p.label_ids).mean())}

    config = AutoConfig.from_pretrained(model_args.model_name_or_path, num_labels=len(labels), label2id=label2id,
                                        id2label=id2label, finetuning_task="image-classification")
    model = AutoModelForImageClassification.from_pretrained(model_args.model_name_or_path, config=config,
                                                            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes)
    image_processor = AutoImageProcessor.from_pretrained(model_args.model_name_or_path)
    if "shortest_edge" in image_processor.size:
        size = image_processor.size["shortest_edge"]
    else:
        size = (image_processor.size["height"], image_processor.size["width"])
    normalize = Normalize(mean=image_processor.image_mean, std=image_processor.image_std)
    train_tf = Compose([RandomResizedCrop(size), RandomHorizontalFlip(), ToTensor(), normalize])
    val_tf = Compose([Resize(size), CenterCrop(size), ToTensor(), normalize])
    col = data_args.image_column_name

    def train_transforms(batch):
        batch["pixel_values"] = [train_tf(img.convert("RGB")) for img in batch[col]]
        return batch

    def val_transforms(batch):
        batch["pixel_values"] = [val_tf(img.convert("RGB")) for img in batch[col]]
        return batch

    dataset["train"].set_transform(train_transforms)
    if "validation" in dataset:
        dataset["validation"].set_transform(val_transforms)
    trainer = Trainer(model=model, args=training_args, train_dataset=dataset["train"] if training_args.do_train else None,
                      eval_dataset=dataset.get("validation") if training_args.do_eval else None,
                      compute_metrics=compute_metrics, processing_class=image_processor, data_collator=collate_fn)
    if training_args.do_train:
        result = trainer.train()
        trainer.save_model()
        trainer.log_metrics("train", result.metrics)
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
    if training_args.do_eval:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return 0


if __name__ == "__main__":
    sys.exit(main())
