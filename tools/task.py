"""Step 1: task detection from model + dataset evidence, dataset recommendations, and the accept/reject verdict."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any, get_args

import yaml
from pydantic import BaseModel, Field

from tao_finetune.agent import gates, references
from tao_finetune.agent.config import Columns, TaskType, user_columns
from tao_finetune.agent.facts import DatasetFacts, ModelFacts
from tao_finetune.tools.base import NeedsUser, NoArgs, ToolError, tool
from tao_finetune.tools.compat import apply_matches

TASKS: tuple[str, ...] = get_args(TaskType)
HEADS = (  # architecture suffix -> task
    ("ForImageClassification", "image-classification"),
    ("ForObjectDetection", "object-detection"),
    ("ForSemanticSegmentation", "semantic-segmentation"),
    ("ForImageTextToText", "image-text-to-text"),
    ("ForVision2Seq", "image-text-to-text"),
    ("ForVisualQuestionAnswering", "image-text-to-text"),
    ("ForSequenceClassification", "text-classification"),
)
UNSUPPORTED_HEADS = (("ForCausalLM", "text-generation"), ("ForSpeechSeq2Seq", "speech recognition"), ("ForCTC", "speech recognition"),
                     ("ForAudioClassification", "audio classification"), ("ForTokenClassification", "token classification"),
                     ("ForQuestionAnswering", "extractive question answering"), ("ForMaskGeneration", "mask generation"),
                     ("ForDepthEstimation", "depth estimation"), ("ForInstanceSegmentation", "instance segmentation"))
PIPELINES = {
    "image-classification": "image-classification", "object-detection": "object-detection",
    "image-segmentation": "semantic-segmentation", "image-text-to-text": "image-text-to-text",
    "visual-question-answering": "image-text-to-text", "image-to-text": "image-text-to-text",
    "text-classification": "text-classification", "sentiment-analysis": "text-classification",
    "zero-shot-classification": "text-classification",
}
# backbones whose checkpoints ship one head but that transformers also offers for another task
ALSO = {
    "segformer": {"semantic-segmentation", "image-classification"},
    "mobilevit": {"semantic-segmentation", "image-classification"},
    "mobilevitv2": {"semantic-segmentation", "image-classification"},
    "beit": {"semantic-segmentation", "image-classification"},
    "data2vec-vision": {"semantic-segmentation", "image-classification"},
    "dpt": {"semantic-segmentation"},
}
VLM_TYPES = {"idefics3", "smolvlm", "idefics2", "llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "qwen3_vl",
             "paligemma", "gemma3", "mllama", "florence2", "blip-2", "instructblip", "internvl", "pixtral", "aya_vision"}
TEXT_ENCODERS = {"bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "xlm-roberta", "albert", "mpnet",
                 "modernbert", "camembert", "ernie", "longformer", "funnel", "xlnet", "megatron-bert", "nomic_bert"}
LORA_PARAMS = 70e9
NO_DERIVATIVES = re.compile(r"(^|-)nd(-|$)")


def model_tasks(facts: ModelFacts) -> tuple[list[str], list[str], str | None]:
    """Tasks the model supports (strongest evidence first), the evidence lines, and an unsupported task if that is all it is."""
    tasks: list[str] = []
    evidence: list[str] = []
    unsupported = None

    def add(task: str, why: str) -> None:
        if task not in tasks:
            tasks.append(task)
        evidence.append(f"{task}: {why}")

    for arch in facts.get("architectures") or []:
        for suffix, task in HEADS:
            if arch.endswith(suffix):
                add(task, f"architecture {arch}")
        if arch.endswith("ForConditionalGeneration") and (facts.get("model_type") in VLM_TYPES or facts.get("vision_model_type")):
            add("image-text-to-text", f"architecture {arch} with a vision tower")
        for suffix, name in UNSUPPORTED_HEADS:
            if arch.endswith(suffix) and not tasks:
                unsupported = unsupported or f"{name} (architecture {arch})"
    pt = facts.get("pipeline_tag")
    if pt in PIPELINES:
        add(PIPELINES[pt], f"pipeline_tag {pt}")
    elif pt and not tasks:
        unsupported = unsupported or f"{pt} (pipeline_tag)"
    for tag in facts.get("tags") or []:
        if tag in PIPELINES:
            add(PIPELINES[tag], f"tag {tag}")
    for cls in facts.get("card_classes") or []:
        for suffix, task in HEADS:
            if cls.endswith(suffix):
                add(task, f"model card names {cls}")
    for p in facts.get("card_pipelines") or []:
        if p in PIPELINES:
            add(PIPELINES[p], f"model card uses pipeline({p!r})")
    mt = facts.get("model_type") or ""
    if mt in VLM_TYPES:
        add("image-text-to-text", f"model_type {mt} is a vision-language model")
    for extra in sorted(ALSO.get(mt, ())):
        if extra not in tasks:
            tasks.append(extra)
            evidence.append(f"{extra}: model_type {mt} also has a {extra} head in transformers (discovery path)")
    if not tasks and mt in TEXT_ENCODERS:
        tasks.append("text-classification")
        evidence.append(f"text-classification: card silent on a head; {mt} is a text encoder, AutoModelForSequenceClassification adds one (discovery path)")
    if not tasks and (facts.get("image_size") or facts.get("image_processor_type")) and mt and not facts.get("vision_model_type"):
        tasks.append("image-classification")
        evidence.append(f"image-classification: card silent on a head; {mt} is a vision backbone, AutoModelForImageClassification adds one (discovery path)")
    if tasks:
        unsupported = None
    return tasks, evidence, unsupported


def dataset_task(facts: DatasetFacts) -> tuple[str | None, str]:
    """The task a dataset's schema fits, with the evidence."""
    from tao_finetune.tools.dataset import _label_tier

    cols = {k.lower(): v for k, v in facts.columns.items()}
    types = {k: v.type for k, v in cols.items()}
    images = [k for k, t in types.items() if t in ("Image", "image", "image-path") or cols[k].image_sizes is not None]
    has_image = bool(images)
    if "objects" in cols or any(v.boxes_per_sample is not None for v in cols.values()):
        return "object-detection", "dataset has per-image boxes (objects column)"
    if len(images) >= 2 or facts.mask_values is not None or any(k in ("annotation", "mask", "segmentation") for k in images):
        return "semantic-segmentation", f"dataset pairs images with masks ({', '.join(images)})"
    if has_image and any(k in cols for k in ("question", "messages", "conversations", "answer", "caption", "multiple_choice_answer")):
        return "image-text-to-text", "dataset pairs images with question/answer or chat text"
    labels = [k for k, v in cols.items() if k not in images and _label_tier(k, v)]
    if has_image and labels:
        return "image-classification", f"dataset pairs images with one class label ({labels[0]!r})"
    if not has_image and labels and any(v.text_chars is not None and k not in labels for k, v in cols.items()):
        return "text-classification", f"dataset pairs text with a class label ({labels[0]!r})"
    return None, "dataset schema fits no supported task"


def detect_task(model_facts: ModelFacts, dataset_facts: DatasetFacts | None, user_task: str | None = None) -> tuple[str, list[str]]:
    """Decide the task; raises ToolError for unsupported models and NeedsUser when model and dataset disagree."""
    tasks, evidence, unsupported = model_tasks(model_facts)
    notes = [f"task evidence (model): {e}" for e in evidence]
    d_task, d_why = dataset_task(dataset_facts) if dataset_facts else (None, "")
    if dataset_facts:
        notes.append(f"task evidence (dataset): {d_task or 'none'} - {d_why}")
    if user_task:
        if user_task not in TASKS:
            raise ToolError(f"task_type {user_task!r} is not supported; supported: {', '.join(TASKS)}")
        if tasks and user_task not in tasks:
            raise NeedsUser(
                f"you asked for {user_task} but the model fits {', '.join(tasks)} ({'; '.join(evidence[:3])}); proceed anyway or change the model?",
                "rerun with a model for that task, or with --task-type " + tasks[0],
            )
        return user_task, notes + [f"task {user_task}: given by the user"]
    if unsupported and not tasks:
        raise ToolError(f"unsupported task: the model is for {unsupported}; supported: {', '.join(TASKS)}")
    if not tasks and not d_task:
        raise NeedsUser(
            f"cannot tell the task of {model_facts.get('model_id')!r}: no head class, pipeline tag or card hint",
            "rerun with --task-type " + "|".join(TASKS),
        )
    if d_task and tasks and d_task not in tasks:
        raise NeedsUser(
            f"the model fits {', '.join(tasks)} but the dataset looks like {d_task} ({d_why}); which task?",
            "rerun with --task-type <task>, or pick a dataset that matches the model",
        )
    task = d_task if d_task and (not tasks or d_task in tasks) else tasks[0]
    return task, notes + [f"task {task}: chosen from {'model and dataset' if d_task and tasks else 'model' if tasks else 'dataset'} evidence"]


# ---------------------------------------------------------------- recommendations
def recommendations(task: str) -> list[dict[str, Any]]:
    """The curated picks for a task."""
    return list((references.load_yaml("dataset_recommendations.yaml") or {}).get(task) or [])


def needs_dataset(task: str) -> NeedsUser:
    picks = recommendations(task)
    lines = "; ".join(f"{p['id']} ({p['size']}, license {p['license']}): {p['why']}" for p in picks)
    return NeedsUser(f"no dataset given; picks for {task}: {lines}", f"rerun with --dataset-id <one of: {', '.join(p['id'] for p in picks)}> or --local-dataset-path PATH")


class RecommendArgs(BaseModel):
    task_type: TaskType | None = Field(None, description="task to recommend for; default: the configured or detected task")


@tool(step=1)
def recommend_datasets(ctx, args: RecommendArgs) -> dict:
    """List 3-5 curated Hub datasets (id, size, license, why) for the task. When the run has no dataset, the run stops here and asks the user to pick one."""
    cfg = ctx.config
    task = args.task_type or cfg.task_type
    if not task:
        if not cfg.model_facts:
            raise ToolError("task unknown: call probe_model first (or pass task_type)")
        task, notes = detect_task(cfg.model_facts, None)
        for n in notes:
            cfg.note(n)
    if not cfg.dataset_id and not cfg.local_dataset_path:
        cfg.task_type = task
        ctx.save()
        raise needs_dataset(task)
    return {"task_type": task, "datasets": recommendations(task)}


# ---------------------------------------------------------------- verdict
def license_problems(model_facts: dict[str, Any], dataset_facts: dict[str, Any], push: bool) -> tuple[list[str], list[str]]:
    """(reject reasons, warnings) from the model and dataset licenses."""
    rejects, warns = [], []
    for what, lic in (("model", model_facts.get("license")), ("dataset", (dataset_facts or {}).get("license"))):
        if not isinstance(lic, str):
            continue
        low = lic.lower()
        if NO_DERIVATIVES.search(low):
            rejects.append(f"{what} license {lic!r} forbids derivatives (a fine-tuned model is one)")
        elif "-nc" in low or "noncommercial" in low:
            warns.append(f"{what} license {lic!r} is non-commercial: the fine-tuned model inherits that")
        elif low in ("other", "unknown") and push:
            warns.append(f"{what} license is {lic!r}: read its terms before pushing the fine-tuned model")
    return rejects, warns


MIN_EXAMPLES = 3  # one example for the smoke step, one held out for eval, one more to train on


def trainability_problems(task: str | None, df: dict[str, Any]) -> list[str]:
    """Why a dataset cannot train the task at all: too few examples, fewer than two classes, no boxes, no masks.

    Counts are trusted only where they cover whole splits (local datasets; Hub split sizes from the builder info);
    label counts of a Hub dataset come from a streamed sample and are not used here.
    """
    from tao_finetune.tools.dataset import MASK_NAMES

    out: list[str] = []
    splits = df.get("splits") or {}
    sizes = list(splits.values())
    if sizes and all(isinstance(n, int) for n in sizes) and sum(sizes) < MIN_EXAMPLES:
        out.append(f"{sum(sizes)} example(s) in all splits; a smoke step and an eval need at least {MIN_EXAMPLES}")
    local = df.get("source") == "local"
    counts = df.get("label_counts") or {}
    if local and task in ("image-classification", "text-classification") and counts:
        seen = sorted({str(name) for c in counts.values() for name, n in (c or {}).items() if n})
        if len(seen) < 2:
            out.append(f"{len(seen)} class(es) with examples ({', '.join(seen) or 'none'}); classification needs at least two")
    if local and task == "object-detection":
        boxes = ((df.get("columns") or {}).get("objects") or {}).get("boxes_per_sample") or {}
        if not any(n for c in counts.values() for n in (c or {}).values()) and not boxes.get("max"):
            out.append("no annotations (bounding boxes) in any split; object detection needs boxes")
    if local and task == "semantic-segmentation":
        cols = df.get("columns") or {}
        if cols and not any(k.lower() in MASK_NAMES and k.lower() not in ("label", "labels") or "mask" in k.lower() for k in cols):
            out.append(f"no mask column among {sorted(cols)}; semantic segmentation needs a mask per image")
    return out


def lora_unavailable(cfg: Any) -> str | None:
    """One line when the model cannot take LoRA (probe_model counted no nn.Linear inside its repeated blocks, the
    layers the scaffolds derive LoRA targets from); None when it can or the count is unknown. Where this is set, LoRA
    is neither offered nor accepted."""
    from tao_finetune.tools.probe import lora_target_count  # probe imports huggingface_hub: keep task.py light

    mf = cfg.model_facts
    if mf is None:
        return None
    count = lora_target_count(mf) if isinstance(mf, ModelFacts) else mf.get("lora_targets")
    if count is None or count > 0:
        return None
    kind = mf.get("model_type") or "this architecture"
    return (f"{cfg.model_id} ({kind}) cannot take LoRA: it has no nn.Linear inside its repeated blocks, where LoRA "
            "targets are derived from; full fine-tuning only")


def verdict(cfg: Any) -> dict[str, Any]:
    """Accept or reject the run from config facts; reasons and warnings in plain words."""
    mf, df = cfg.model_facts or {}, cfg.dataset_facts or {}
    rejects, warns = license_problems(mf, df, cfg.push_to_hub)
    n = mf.get("param_count") or 0
    lora = cfg.hyperparameters.training_method == "lora"
    no_lora = lora_unavailable(cfg) if lora or n >= LORA_PARAMS else None  # counted only where it decides something
    if lora and no_lora:
        rejects.append(f"training_method lora: {no_lora}")
    if n >= 5 * LORA_PARAMS:
        rejects.append(f"model has {n / 1e9:.0f}B parameters: too large to fine-tune on any single host here, even with LoRA")
    elif n >= LORA_PARAMS and not lora:
        rejects.append(f"model has {n / 1e9:.0f}B parameters: full fine-tuning needs 8x80 GB or more; "
                       + (f"and {no_lora}" if no_lora else "use LoRA (--set training_method=lora)"))
    elif n >= 30e9 and not lora:
        warns.append(f"model has {n / 1e9:.0f}B parameters: full fine-tuning needs several 80 GB GPUs; Step 2 checks the fit")
    errors = [i.message for i in df.issues_at("error")] if df else []
    rejects += [f"dataset unusable: {m}" for m in errors]
    if not errors:
        rejects += [f"dataset cannot train {cfg.task_type}: {m}" for m in trainability_problems(cfg.task_type, df)]
    if mf.get("auto_map"):
        warns.append("model needs trust_remote_code (custom code in its repo)")
    return {"verdict": "reject" if rejects else "accept", "reasons": rejects, "warnings": warns}


CLASSIFICATION = ("image-classification", "text-classification")


def fill_project(cfg: Any, facts: DatasetFacts, task: str) -> dict[str, Any]:
    """Step 1's decisions into `config.project`: column roles (with evidence), renames, label names, the split plan
    (seed, stratification), the files read and the files skipped. Raises NeedsUser when a role is ambiguous."""
    from tao_finetune.tools.dataset import check_dataset_for_task, expected_sizes, label_names_for

    renames, layout = check_dataset_for_task(facts, task, cfg.column_renames, user_columns(cfg))
    columns = Columns.model_validate(layout["columns"])
    cfg.column_renames = renames
    cfg.dataset_facts = facts.model_copy(update={"layout": layout})
    if task in CLASSIFICATION and "label_names" not in cfg.user_set:
        names, origin = label_names_for(facts, columns.label or "", renames)
        if not names and cfg.model_facts and cfg.model_facts.label_names:
            names, origin = list(cfg.model_facts.label_names), "the model's id2label"
        cfg.label_names = names
        if origin:
            cfg.note(f"label names ({len(names)}) from {origin}")
    elif facts.label_names and "label_names" not in cfg.user_set:
        cfg.label_names = list(facts.label_names)
    for role, why in columns.evidence.items():
        cfg.note(f"column {role} = {getattr(columns, role)!r}: {why}")
    planned = layout.get("planned_split") or {}
    splits = cfg.project.splits.model_copy(update={
        "train_split": layout.get("train_split"), "eval_split": layout.get("eval_split"),
        "eval_fraction": planned.get("eval_fraction", cfg.project.splits.eval_fraction),
        "stratify_by": planned.get("stratify_by_column") if planned else None})
    exp_train, exp_eval = expected_sizes(facts, splits.model_copy(update={"n_train": cfg.n_train, "n_eval": cfg.n_eval}), renames)
    splits = splits.model_copy(update={"expected_train": exp_train, "expected_eval": exp_eval})
    cfg.project = cfg.project.model_copy(update={
        "columns": columns, "splits": splits, "skip_files": list(facts.skip_files), "data_files": dict(facts.data_files),
        "local_dataset_format": facts.format if facts.source == "local" else cfg.project.local_dataset_format})
    if planned:
        strat = f", stratified by {splits.stratify_by!r}" if splits.stratify_by else ""
        cfg.note(f"no eval split: prepare_data.py holds out {splits.eval_fraction:.0%} of {splits.train_split!r} with seed {cfg.hyperparameters.seed}{strat}")
    return layout


def qualify_config(cfg: Any) -> dict[str, Any]:
    """Task, column check, verdict and compat walk over the probed facts; mutates cfg. Raises NeedsUser / ToolError."""
    from tao_finetune.tools.dataset import annotation_plan

    if not cfg.model_facts:
        raise ToolError("call probe_model first")
    if not cfg.dataset_id and not cfg.local_dataset_path:
        task, notes = detect_task(cfg.model_facts, None, cfg.task_type)
        cfg.task_type = task
        raise needs_dataset(task)
    if not cfg.dataset_facts:
        raise ToolError("call probe_dataset first")
    user_task = cfg.task_type if "task_type" in cfg.user_set else None
    task, notes = detect_task(cfg.model_facts, cfg.dataset_facts, user_task)
    for n in notes:
        cfg.note(n)
    cfg.task_type = task
    if task == "image-text-to-text" and "hyperparameters.training_method" not in cfg.user_set:
        cfg.hyperparameters = cfg.hyperparameters.model_copy(update={"training_method": "lora"})
        cfg.note("training_method lora: vision-language models are fine-tuned with LoRA by default")
    v = verdict(cfg)
    if v["verdict"] == "reject":
        return {**v, "task_type": task}
    layout = fill_project(cfg, cfg.dataset_facts, task)
    renames = cfg.column_renames
    plan = annotation_plan(cfg.dataset_facts, task)
    if plan:
        reason = plan.pop("reason")
        cfg.project = cfg.project.model_copy(update=plan)
        cfg.note(f"{task}: {', '.join(f'{k}={v}' for k, v in plan.items())} ({reason})")
    for w in v["warnings"]:
        cfg.note(f"qualify warning: {w}")
    matches = apply_matches(cfg, "probe")
    return {**v, "task_type": task, "column_renames": renames, "layout": layout, "label_names": cfg.label_names[:30],
            "num_labels": len(cfg.label_names), "applicable_workarounds": cfg.applicable_workarounds,
            "workaround_fixes": {m["id"]: m["fix"] for m in matches}}


@tool(step=1)
def qualify(ctx, args: NoArgs) -> dict:
    """Decide accept/reject from the probed model and dataset: detect the task (evidence to notes), verify dataset columns (renames recorded), walk compat rules, write the config.yaml skeleton and check gate 1. Call after probe_model and probe_dataset."""
    try:
        result = qualify_config(ctx.config)
    finally:
        ctx.save()
    ctx.state.record("qualify", {"verdict": result["verdict"], "reasons": result["reasons"]})
    ctx.save()
    if result["verdict"] == "reject":
        raise ToolError("rejected: " + "; ".join(result["reasons"]))
    gate = gates.check(1, ctx.run_dir, ctx.state)
    if not gate.met:
        raise ToolError(f"gate 1 not met, missing: {', '.join(gate.missing)}")
    return {**result, "gate1": "met"}
