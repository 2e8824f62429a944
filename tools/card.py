"""The model card pushed as README.md: built with huggingface_hub's ModelCard / ModelCardData / EvalResult, checked before the push.

huggingface_hub 2.4 API used (site-packages/huggingface_hub/repocard.py, repocard_data.py):
ModelCardData(base_model, datasets, license, license_name, license_link, library_name, pipeline_tag, tags, metrics,
model_name, eval_results=[EvalResult(task_type, dataset_type, dataset_name, metric_type, metric_value, ...)]);
ModelCard(content) parses the front matter back (a model-index that does not parse raises ValueError);
RepoCard.validate() POSTs the card to {ENDPOINT}/api/validate-yaml (400 -> ValueError; done here with httpx);
model_index_to_eval_results(model_index) reads the metrics back as the Hub does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.repocard_data import model_index_to_eval_results

from tao_finetune.agent import gates
from tao_finetune.agent.config import RunConfig
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.errors import NeedsUser, ToolError
from tao_finetune.agent.metrics import tracking
from tao_finetune.tools.probe import endpoint, is_local_ref, split_card

# A Hub repo id: "name" (legacy canonical models) or "namespace/name"; letters, digits, '-', '_', '.'; no path syntax.
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]{0,95}/)?[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
TASK_TITLES = {
    "image-classification": "Image Classification",
    "object-detection": "Object Detection",
    "semantic-segmentation": "Image Segmentation",
    "image-text-to-text": "Image-Text-to-Text",
    "text-classification": "Text Classification",
}
PIPELINE_TAGS = {"semantic-segmentation": "image-segmentation"}
# eval_results.json keys that are bookkeeping, not metrics
NOT_METRICS = {"n_eval", "num_labels", "eval_runtime_s", "eval_samples_per_s", "baseline", "model", "task", "primary_metric"}
# Hub license ids (https://huggingface.co/docs/hub/repositories-licenses); anything else becomes other + license_name.
HUB_LICENSES = {
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0",
    "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0",
    "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "cdla-sharing-1.0",
    "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0", "etalab-2.0", "eupl-1.1",
    "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc", "h-research",
    "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr", "mpl-2.0", "odc-by", "odbl", "openmdw-1.0",
    "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license",
    "fair-noncommercial-research-license", "llama2", "llama3", "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma",
    "grok2-community", "unknown", "other",
}


def is_hub_id(ref: str | None) -> bool:
    """A string that names a Hub repo (not a local path, not a URL)."""
    return bool(ref) and not is_local_ref(str(ref)) and bool(HUB_ID.match(str(ref))) and ".." not in str(ref)


def _local_model_dir(cfg: RunConfig) -> Path | None:
    if not is_local_ref(cfg.model_id):
        return None
    p = Path(cfg.model_id).expanduser()
    return p if p.is_dir() else None


def _local_card(cfg: RunConfig) -> dict[str, Any]:
    d = _local_model_dir(cfg)
    readme = d / "README.md" if d else None
    return split_card(readme.read_text(errors="replace"))[0] if readme and readme.is_file() else {}


def base_model(cfg: RunConfig) -> tuple[str | None, str]:
    """(Hub id of the base model or None, a sentence for the card about where the base came from)."""
    if is_hub_id(cfg.model_id):
        return cfg.model_id, ""
    d = _local_model_dir(cfg)
    found: list[str] = []
    if d is not None:
        try:
            conf = json.loads((d / "config.json").read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError):
            conf = {}
        card_base = _local_card(cfg).get("base_model")
        found = [v for v in (conf.get("_name_or_path") if isinstance(conf, dict) else None,
                             card_base[0] if isinstance(card_base, list) and card_base else card_base) if isinstance(v, str)]
    for ref in found:
        if is_hub_id(ref):
            return ref, f"The base model was a local copy of [{ref}]({endpoint()}/{ref}) (recorded in its config/card)."
    name = Path(cfg.model_id).name or "model"
    return None, (f"The base model was a local folder (`{name}`) that names no Hub model, "
                  "so `base_model` is omitted from this card.")


def dataset_ref(cfg: RunConfig) -> tuple[str | None, str]:
    """(Hub dataset id or None, a readable name)."""
    if cfg.dataset_id and is_hub_id(cfg.dataset_id):
        return cfg.dataset_id, cfg.dataset_id + (f" ({cfg.dataset_config})" if cfg.dataset_config else "")
    if cfg.local_dataset_path:
        fmt = cfg.local_dataset_format if cfg.local_dataset_format != "auto" else "folder"
        return None, f"a local {fmt} dataset `{Path(cfg.local_dataset_path).name}`"
    return None, cfg.dataset_id or "an unnamed dataset"


def license_fields(cfg: RunConfig, base_id: str | None) -> dict[str, str]:
    """license (+ license_name/license_link for 'other'): the user's `license`, else the base model's card, else ask."""
    facts = cfg.model_facts or {}
    lic = cfg.license or facts.get("license") or _local_card(cfg).get("license")
    if not lic:
        where = f"the base model {base_id!r}" if base_id else "the local base model"
        raise NeedsUser(f"{where} names no license, and the pushed model card needs one (the fine-tune inherits the base model's terms)",
                        "re-run with --set license=<Hub license id, e.g. apache-2.0 or other>")
    lic = str(lic[0] if isinstance(lic, list) and lic else lic).strip().lower()
    if lic in HUB_LICENSES and lic != "other":
        return {"license": lic}
    name = re.sub(r"[^a-z0-9.-]+", "-", (lic if lic != "other" else f"{(base_id or 'base-model').split('/')[-1]}-license").lower()).strip("-")
    out = {"license": "other", "license_name": name}
    if base_id:
        out["license_link"] = f"{endpoint()}/{base_id}"
    return out


def _numbers(data: dict) -> dict[str, float]:
    return {k: float(v) for k, v in data.items()
            if k not in NOT_METRICS and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}


def eval_results(cfg: RunConfig, run_dir: Path) -> list[EvalResult]:
    """Fine-tuned metrics, then the base model's (baseline) primary metric, on the eval split."""
    ev = gates.read_json(run_dir / "reports" / "eval_results.json")
    base = gates.read_json(run_dir / "reports" / "baseline_results.json")
    primary = str(ev.get("primary_metric") or "metric")
    task = cfg.task_type or "image-classification"
    ds_id, ds_name = dataset_ref(cfg)
    common = {
        "task_type": PIPELINE_TAGS.get(task, task),
        "task_name": TASK_TITLES.get(task, task),
        "dataset_type": ds_id or (cfg.local_dataset_format if cfg.local_dataset_path else "unknown"),
        "dataset_name": ds_name.strip("`").replace("`", ""),
        "dataset_config": cfg.dataset_config if ds_id else None,
        "dataset_split": "held-out eval subset" if not cfg.project.splits.eval_split else cfg.project.splits.eval_split,
    }
    out: list[EvalResult] = []
    nums = _numbers(ev)
    for name in [primary, *sorted(k for k in nums if k != primary)]:
        if name in nums:
            out.append(EvalResult(**common, metric_type=name, metric_name=name, metric_value=round(nums[name], 4)))
    b = gates.primary_metric({**base, "primary_metric": primary}) if base else None
    if b is not None:
        out.append(EvalResult(**common, metric_type=primary, metric_name=f"{primary} (base model, before fine-tuning)",
                              metric_value=round(b, 4)))
    return out


def _fmt(v: float | None, pct: bool = False) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f} %" if pct else f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _samples_section(run_dir: Path, uploaded: set[str]) -> list[str]:
    summary = gates.read_json(run_dir / "reports" / "inference_summary.json").get("samples") or []
    if not summary:
        return ["Inference samples are in `inference_samples/`.", ""]
    from tao_finetune.tools.hub import _table

    rows, images = [], []
    for s in summary[:8]:
        f = str(s.get("file") or "")
        rows.append((str(s.get("true_label", "")), str(s.get("prediction", "")), _fmt(s.get("score"))))
        rp = f"inference_samples/{f}"
        if f.lower().endswith((".png", ".jpg", ".jpeg")) and rp in uploaded:
            images.append(f"![{s.get('true_label')} → {s.get('prediction')}]({rp})")
    lines = [_table(("true label", "prediction", "score"), rows), ""]
    if images:
        lines += [" ".join(images), ""]
    return lines


def _tracking_section(run_dir: Path, uploaded: set[str]) -> list[str]:
    """Where the training curves are: the TensorBoard event files pushed under runs/ (the Hub's Metrics tab reads
    them), the W&B run (its URL, or an offline run left on the training machine). Empty when the run recorded none."""
    t = tracking(run_dir)
    lines = []
    if t and t.tensorboard and t.tensorboard.logdir and any(p.startswith("runs/") and ".tfevents." in p for p in uploaded):
        lines.append("- TensorBoard: the event files are in `runs/` of this repo (`tensorboard --logdir runs` after a download).")
    if t and t.wandb and t.wandb.url:
        lines.append(f"- Weights & Biases: {t.wandb.url}")
    elif t and t.wandb and t.wandb.run_dir:
        lines.append(f"- Weights & Biases: an offline run, `{t.wandb.run_dir}` in the training directory (not uploaded; `wandb sync` uploads it).")
    return ["### Training curves", "", *lines, ""] if lines else []


def _rerun_section(ctx: RunContext, repo_id: str, skill_rel: str | None) -> list[str]:
    from tao_finetune.tools.jobs import command

    cfg = ctx.config
    tag = f"{cfg.short_name}-ft"
    jobs = ["prepare", *([] if cfg.skip_baseline else ["baseline"]), "train"]
    jobs += ["merge"] if gates.uses_lora_merge(cfg.model_dump()) else []
    jobs += ["eval", "infer"]
    run = f'docker run --rm --gpus all --shm-size=16g -v "$PWD":/workspace -w /workspace {tag} '
    cmds = [f"hf download {repo_id} --local-dir {cfg.short_name}-run", f"cd {cfg.short_name}-run",
            f"docker build -t {tag} ."]
    cmds += [run + " ".join(command(ctx, job)) for job in jobs]
    lines = [
        "This repo holds the whole training project (`config.yaml` is its only input; `Dockerfile`, "
        "`requirements.txt` (pinned from the built image) and the scripts are the ones that produced these weights; "
        "`PROJECT.md` explains each script). To train again:",
        "",
        "```bash",
        *cmds,
        "```",
        "",
    ]
    if skill_rel:
        lines += [f"The rerun skill [`{skill_rel}`]({skill_rel}) repeats the run with tao-finetune and lists the recipe with its sources.", ""]
    return lines


def build_card(ctx: RunContext, repo_id: str, uploaded: list[str]) -> ModelCard:
    """The model card for repo_id; `uploaded` is the list of repo paths pushed with it (for links)."""
    from tao_finetune.tools.hub import _hp_rows, _metrics, _table, used_sizes

    cfg, run_dir = ctx.config, ctx.run_dir
    files = set(uploaded)
    task = cfg.task_type or "image-classification"
    base_id, base_note = base_model(cfg)
    ds_id, ds_name = dataset_ref(cfg)
    lic = license_fields(cfg, base_id)
    adapter = any(p.endswith("adapter_config.json") and "/" not in p for p in files)
    results = eval_results(cfg, run_dir)
    m = _metrics(run_dir)
    data = ModelCardData(
        base_model=base_id,
        datasets=[ds_id] if ds_id else None,
        library_name="peft" if adapter else "transformers",
        pipeline_tag=PIPELINE_TAGS.get(task, task),
        tags=["tao-finetune", task, *(["lora"] if cfg.hyperparameters.training_method == "lora" else [])],
        metrics=[m["name"]],
        model_name=repo_id.split("/")[-1],
        eval_results=results or None,
        **lic,
    )
    n_train, n_eval = used_sizes(cfg, run_dir)
    base_link = f"[{base_id}]({endpoint()}/{base_id})" if base_id else f"a local model (`{Path(cfg.model_id).name}`)"
    ds_link = f"[{ds_id}]({endpoint()}/datasets/{ds_id})" if ds_id else ds_name
    pct = m["name"] in ("accuracy", "macro_f1", "f1", "precision", "recall")
    delta = "n/a" if m["delta"] is None else (f"{100 * m['delta']:+.1f} pts" if pct else f"{m['delta']:+.3g}")
    ev = gates.read_json(run_dir / "reports" / "eval_results.json")
    base = gates.read_json(run_dir / "reports" / "baseline_results.json")
    metric_rows = [(k, _fmt(_numbers(base).get(k), pct and k != "eval_loss") if base else "skipped", _fmt(v, pct and k != "eval_loss"))
                   for k, v in _numbers(ev).items()]
    train = gates.read_json(run_dir / "reports" / "train_summary.json")
    hardware = f"{cfg.gpu_count} × {cfg.gpu_name}" if cfg.gpu_count and cfg.gpu_name else "CPU"
    setup = [
        ("base model", base_id or Path(cfg.model_id).name),
        ("dataset", ds_name.replace("`", "")),
        ("examples", f"{n_train:,} train / {n_eval:,} eval"),
        ("epochs", f"{cfg.n_epochs:g}"),
        ("method", cfg.hyperparameters.training_method + (f" (r={cfg.lora_r})" if cfg.hyperparameters.training_method == "lora" else "")),
        ("hardware", hardware),
        ("container image", cfg.image or cfg.ngc_image or ("local Python environment" if cfg.platform == "local" else "not recorded")),
    ]
    if train.get("train_runtime_s") is not None:
        setup.append(("training time", f"{float(train['train_runtime_s']) / 60:.1f} min"))
    if train.get("train_samples_per_s"):
        setup.append(("throughput", f"{float(train['train_samples_per_s']):,.0f} samples/s"))
    body = [
        f"# {repo_id.split('/')[-1]}",
        "",
        f"{base_link} fine-tuned for **{task}** on {ds_link} with tao-finetune.",
        f"**{m['name']}: {_fmt(m['baseline'], pct)} → {_fmt(m['finetuned'], pct)}** ({delta}) on {n_eval:,} held-out examples.",
        "",
    ]
    from tao_finetune.tools.hub import acceptance_note

    if note := acceptance_note(run_dir):
        body += [note, ""]
    if base_note:
        body += [base_note, ""]
    body += [
        "## Results",
        "",
        "Baseline = the base model with a freshly initialised head, evaluated on the same examples before training.",
        "",
        _table(("metric", "baseline", "fine-tuned"), metric_rows) if metric_rows else "No metrics recorded.",
        "",
        "Raw numbers: `results/eval_results.json`, `results/baseline_results.json`"
        + (", report: `reports/report.html`" if "reports/report.html" in files else "") + ".",
        "",
        "## Training setup",
        "",
        _table(("", ""), setup),
        "",
        "### Hyperparameters",
        "",
        "Each value with where it came from (user > live documentation > curated reference > default).",
        "",
        _table(("hyperparameter", "value", "source"), _hp_rows(cfg)),
        "",
        *_tracking_section(run_dir, files),
        "## Samples",
        "",
        *_samples_section(run_dir, files),
        "## How to use",
        "",
        _inference_snippet(task, repo_id),
        "",
        "## How to re-run",
        "",
        *_rerun_section(ctx, repo_id, next((p for p in uploaded if p.startswith("skills/") and p.endswith("SKILL.md")), None)),
        "## License",
        "",
        (f"`{lic['license']}`, inherited from the base model." if lic["license"] != "other"
         else f"`other` (`{lic['license_name']}`): the base model's own terms apply" + (f", see {lic['license_link']}." if "license_link" in lic else ".")),
        "",
    ]
    return ModelCard("---\n" + data.to_yaml() + "\n---\n\n" + "\n".join(body))


def _inference_snippet(task: str, repo_id: str) -> str:
    if task == "image-text-to-text":
        return (
            "```python\nfrom transformers import AutoModelForImageTextToText, AutoProcessor\n\n"
            f'processor = AutoProcessor.from_pretrained("{repo_id}")\n'
            f'model = AutoModelForImageTextToText.from_pretrained("{repo_id}")\n'
            'messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is in the image?"}]}]\n'
            "prompt = processor.apply_chat_template(messages, add_generation_prompt=True)\n"
            'inputs = processor(text=prompt, images=[image], return_tensors="pt")\n'
            "print(processor.batch_decode(model.generate(**inputs, max_new_tokens=32), skip_special_tokens=True)[0])\n```"
        )
    arg = '"An example sentence."' if task == "text-classification" else '"path/to/image.jpg"'
    return ("```python\nfrom transformers import pipeline\n\n"
            f'pipe = pipeline("{PIPELINE_TAGS.get(task, task)}", model="{repo_id}")\nprint(pipe({arg}))\n```')


def check_card(text: str, required_files: list[str] | None = None, uploaded: list[str] | None = None) -> list[str]:
    """Problems a Hub user would hit, read back the way the Hub does; [] when the card is good."""
    try:
        card = ModelCard(text)
    except (ValueError, yaml.YAMLError) as err:
        return [f"card does not parse: {str(err).splitlines()[0]}"]
    d = card.data
    problems = []
    if d.base_model is not None:
        bases = d.base_model if isinstance(d.base_model, list) else [d.base_model]
        problems += [f"base_model {b!r} is not a Hub id" for b in bases if not is_hub_id(b)]
    for ds in (d.datasets if isinstance(d.datasets, list) else [d.datasets] if d.datasets else []):
        if not is_hub_id(ds):
            problems.append(f"dataset {ds!r} is not a Hub id")
    if not d.license:
        problems.append("license is missing")
    elif d.license == "other" and not d.get("license_name"):
        problems.append("license is 'other' without license_name")
    for key in ("pipeline_tag", "library_name"):
        if not d.get(key):
            problems.append(f"{key} is missing")
    index = d.to_dict().get("model-index")
    if not index:
        problems.append("model-index is missing (no metrics)")
    else:
        try:
            _, results = model_index_to_eval_results(index)
        except (KeyError, TypeError, ValueError) as err:
            problems.append(f"model-index does not read back: {err}")
        else:
            if not any(isinstance(r.metric_value, (int, float)) for r in results):
                problems.append("model-index has no numeric metric")
    if "<" in text and re.search(r"<[a-z_]+>", card.text):
        problems.append("an unfilled <placeholder> is left in the card")
    if uploaded is not None:
        problems += [f"required file {f!r} is not pushed" for f in (required_files or []) if f not in uploaded]
    return problems


def validate_on_hub(card: ModelCard) -> str | None:
    """The Hub's own YAML check, as RepoCard.validate() does it (POST {endpoint}/api/validate-yaml; 400 = rejected).

    Posted to endpoint() (the HF_ENDPOINT of now) rather than through card.validate(), which uses the endpoint
    huggingface_hub read at import. 400 -> ToolError; any other answer or no answer -> the reason it was skipped.
    """
    try:
        r = httpx.post(f"{endpoint()}/api/validate-yaml", json={"repoType": "model", "content": str(card)},
                       headers={"Accept": "text/plain"}, timeout=30)
    except httpx.HTTPError as err:
        return f"the Hub at {endpoint()} could not validate the card ({type(err).__name__}); checked locally only"
    if r.status_code == 400:
        raise ToolError(f"the Hub rejected the model card: {r.text.strip().splitlines()[0][:300] if r.text.strip() else 'no reason given'}")
    if r.status_code >= 300:
        return f"the Hub at {endpoint()} did not validate the card (HTTP {r.status_code}); checked locally only"
    return None
