"""The six steps as a state machine over the run directory: each gate is a predicate over files."""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from tao_finetune.agent.state import RunState, verify_job

STEP_NAMES = {
    1: "inspect & qualify",
    2: "hardware audit & image",
    3: "research the recipe",
    4: "generate project & smoke-test",
    5: "train, evaluate, infer",
    6: "push & emit rerun skill",
}
# every slot is read by the generated project (scaffolds: model_class / processor_class load the model and its
# processor, train_transforms decides augmentation, hyperparameters drive the loop); a slot no code reads is not gated
RECIPE_SLOTS = (
    "model_class",
    "processor_class",
    "train_transforms",
    "hyperparameters",
)
# recordable but not gated: no scaffold reads them yet (a model writing its own project may use them)
OPTIONAL_SLOTS = ("eval_transforms", "collator", "compute_metrics")
PROJECT_FILES = ("config.yaml", "Dockerfile", "requirements.txt", "prepare_data.py", "train.py", "run_eval.py", "infer.py", ".gitignore")
N_SAMPLES = 5
PLACEHOLDER = re.compile(r"<[a-z][a-z0-9_\-]*>")
SKILL_FIELDS = ("license:", "compatibility:", "metadata:", "allowed-tools:")


@dataclass(frozen=True)
class GateResult:
    """Whether a step's gate holds, and what is missing if not."""

    step: int
    missing: tuple[str, ...]

    @property
    def met(self) -> bool:
        return not self.missing


_PARSED: dict[str, dict] = {}  # config.yaml text -> parsed dict: gates run several times per agent turn


def _config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError):
        return {}
    if text not in _PARSED:
        try:
            data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError:
            data = None
        if len(_PARSED) > 8:
            _PARSED.clear()
        _PARSED[text] = data if isinstance(data, dict) else {}
    return copy.deepcopy(_PARSED[text])


def read_json(path: Path) -> dict:
    """A JSON object from a file, or {} when it is missing, malformed or not an object."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # missing, a directory, not UTF-8, not JSON
        return {}
    return data if isinstance(data, dict) else {}


def _blank(v: object) -> bool:
    return v is None or (isinstance(v, (str, list, dict)) and not v)


def uses_lora_merge(cfg: dict) -> bool:
    """VLM runs trained with LoRA are merged before eval (checkpoints/merged)."""
    hp = cfg.get("hyperparameters") or {}
    return cfg.get("task_type") == "image-text-to-text" and hp.get("training_method") == "lora"


def project_files(cfg: dict) -> tuple[str, ...]:
    """The files Step 4 must generate for this config."""
    return PROJECT_FILES + (("merge_lora.py",) if uses_lora_merge(cfg) else ())


def primary_metric(results: dict) -> float | None:
    """The numeric primary metric of an eval_results.json, or None."""
    name = results.get("primary_metric")
    value = results.get(name) if isinstance(name, str) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def gate1(run_dir: Path, state: RunState) -> list[str]:
    cfg = _config(run_dir)
    if not cfg:
        return ["config.yaml"]
    missing = [k for k in ("model_id", "task_type") if _blank(cfg.get(k))]
    if _blank(cfg.get("dataset_id")) and _blank(cfg.get("local_dataset_path")):
        missing.append("dataset (dataset_id or local_dataset_path)")
    if cfg.get("applicable_workarounds") is None:
        missing.append("applicable_workarounds")
    return missing


def gate2(run_dir: Path, state: RunState) -> list[str]:
    cfg = _config(run_dir)
    keys = ["gpu_count", "gpu_name", "driver_major", "vram_gb_per_gpu"]
    if cfg.get("platform", "docker") == "docker":
        keys.insert(0, "ngc_image")
    missing = [k for k in keys if cfg.get(k) is None]
    if not (state.records.get("audit") or {}).get("passed"):
        missing.append("hardware audit passed")
    return missing


def gate3(run_dir: Path, state: RunState) -> list[str]:
    cfg = _config(run_dir)
    recipe = cfg.get("recipe") or {}
    missing = []
    for slot in RECIPE_SLOTS:
        entry = recipe.get(slot) or {}
        if _blank(entry.get("value")) or _blank(entry.get("source")):
            missing.append(f"recipe.{slot}")
    if not (run_dir / "meta" / "recipe.md").is_file():
        missing.append("meta/recipe.md")
    return missing


def _evidence(run_dir: Path, state: RunState, job: str, label: str) -> list[str]:
    why = verify_job(state, run_dir, job)
    return [] if why is None else [f"{label} ({why})"]


def gate4(run_dir: Path, state: RunState) -> list[str]:
    cfg = _config(run_dir)
    missing = [f for f in project_files(cfg) if not (run_dir / f).is_file()]
    if not (state.records.get("build") or {}).get("ok"):
        missing.append("image built")
    if read_json(run_dir / "reports" / "smoke.json").get("passed") is not True:
        missing.append("smoke passed")
    else:
        missing += _evidence(run_dir, state, "smoke", "smoke job evidence")
    if cfg.get("emit_unit_tests"):
        if read_json(run_dir / "reports" / "unit_tests.json").get("passed") is not True:
            missing.append("unit tests passed (emit_unit_tests)")
        else:
            missing += _evidence(run_dir, state, "tests", "unit tests job evidence")
    pre = read_json(run_dir / "meta" / "preflight.json")
    if not pre:
        missing.append("preflight summary")
    else:
        missing += [f"preflight.{k}" for k, v in pre.items() if _blank(v)]
    return missing


LOWER_IS_BETTER = re.compile(r"(?i)loss|error|wer|cer|perplexity|mae|mse|rmse")
LEARNING_ITEM = "the model learnt"


def noise_margin(baseline: float, n: int) -> float:
    """Two standard errors of a proportion at the baseline's value over n eval examples (0 when it is not a proportion)."""
    if n <= 0 or not 0.0 <= baseline <= 1.0:
        return 0.0
    p = min(max(baseline, 1.0 / n), 1.0 - 1.0 / n) if n > 1 else 0.5
    return 2.0 * math.sqrt(p * (1.0 - p) / n)


def learning_verdict(run_dir: Path, state: RunState) -> dict | None:
    """Did training teach the model anything? None until train and eval evidence exist; else the evidence and `learned`.

    Learnt = the training loss fell (last logged losses below the first) and, with a baseline, the fine-tuned primary
    metric beats it by more than two standard errors of a proportion over the eval set (noise_margin).
    """
    cfg = _config(run_dir)
    train, ev = state.evidence.get("train"), state.evidence.get("eval")
    if train is None or ev is None or (not cfg.get("skip_baseline") and "baseline" not in state.evidence):
        return None
    res = read_json(run_dir / "reports" / "eval_results.json")
    name = str(res.get("primary_metric") or "metric")
    ft = primary_metric(res)
    out: dict = {"metric": name, "finetuned": ft, "reasons": []}
    first, last = train.facts.get("first_loss"), train.facts.get("last_loss", train.facts.get("loss"))
    trend = train.facts.get("trend")
    out.update(first_loss=first, last_loss=last, loss_trend=trend)
    numbers = isinstance(first, (int, float)) and isinstance(last, (int, float)) and math.isfinite(last)
    # the trend test (tools/jobs.trend_evidence: smoothed ends against the loss's own noise) decides when it could judge
    fell = trend == "falling" if trend in ("falling", "flat", "rising", "nan") else numbers and last < first
    if not fell:
        out["reasons"].append(f"training loss did not fall ({first} -> {last}, trend {trend})")
    if isinstance(res.get("prediction_histogram"), list):
        hist = res["prediction_histogram"]
        out["prediction_histogram"] = hist
        if sum(hist) > 0 and sum(1 for h in hist if h) == 1 and len(hist) > 1:
            out["reasons"].append("the model predicts a single class for every eval example")
    if not cfg.get("skip_baseline"):
        base = read_json(run_dir / "reports" / "baseline_results.json")
        bl = primary_metric({**base, "primary_metric": name})
        n = int(res.get("n_eval") or read_json(run_dir / "data" / "meta.json").get("n_eval") or 0)
        out.update(baseline=bl, n_eval=n)
        if ft is None or bl is None:
            out["reasons"].append("no comparable baseline and fine-tuned metric")
        else:
            margin = noise_margin(bl, n)
            gain = (bl - ft) if LOWER_IS_BETTER.search(name) else (ft - bl)
            out.update(margin=round(margin, 4), gain=round(gain, 4))
            if gain <= margin:
                out["reasons"].append(f"{name} {ft:.4f} does not beat the baseline {bl:.4f} by more than the noise margin {margin:.4f} (n={n})")
    out["learned"] = not out["reasons"]
    return out


def learning_missing(run_dir: Path, state: RunState) -> list[str]:
    verdict = learning_verdict(run_dir, state)
    if verdict is None or verdict["learned"] or state.learning_accepted is not None:
        return []
    return [f"{LEARNING_ITEM} ({'; '.join(verdict['reasons'])}; accept with --answer accept)"]


def learning_question(run_dir: Path, state: RunState) -> str | None:
    """The question to stop on when the eval shows the model did not learn (and the user has not accepted it)."""
    verdict = learning_verdict(run_dir, state)
    if verdict is None or verdict["learned"] or state.learning_accepted is not None:
        return None
    facts = {k: verdict.get(k) for k in ("metric", "baseline", "finetuned", "margin", "n_eval", "first_loss", "last_loss",
                                         "loss_trend", "prediction_histogram") if verdict.get(k) is not None}
    return (f"{LEARNING_MARK} {'; '.join(verdict['reasons'])}. Evidence: {json.dumps(facts)}. "
            "Keep this model anyway (the model card will say so), or change the recipe and train again?")


LEARNING_MARK = "Gate 5: the fine-tuned model did not clearly learn:"
ACCEPT = re.compile(r"(?i)^\s*(accept|accepted|keep|yes)\b")


def accept_learning(state: RunState, run_dir: Path, question: str | None, answer: str) -> bool:
    """Record the user's acceptance of a model that did not clearly learn, when that was the pending question."""
    import time

    from tao_finetune.agent.state import Acceptance

    if not question or not question.startswith(LEARNING_MARK) or not ACCEPT.match(answer or ""):
        return False
    verdict = learning_verdict(run_dir, state) or {}
    state.learning_accepted = Acceptance(what="model did not clearly beat the baseline / loss did not fall", answer=answer,
                                         evidence={k: v for k, v in verdict.items() if k != "learned"}, at=time.time())
    return True


def gate5(run_dir: Path, state: RunState) -> list[str]:
    cfg = _config(run_dir)
    merged = uses_lora_merge(cfg)
    ckpt = run_dir / "checkpoints" / ("merged" if merged else "final")
    missing = [] if ckpt.is_dir() and any(ckpt.iterdir()) else [f"checkpoints/{ckpt.name}/"]
    if not missing:
        missing += _evidence(run_dir, state, "train", "training job evidence")
        if merged:
            missing += _evidence(run_dir, state, "merge", "merge job evidence")
    if primary_metric(read_json(run_dir / "reports" / "eval_results.json")) is None:
        missing.append("reports/eval_results.json with a numeric primary metric")
    else:
        missing += _evidence(run_dir, state, "eval", "eval job evidence")
        tr, ev = state.evidence.get("train"), state.evidence.get("eval")
        if tr is not None and ev is not None and ev.started < tr.ended - 1:
            missing.append("eval job evidence (the eval ran before the last training finished)")
    if not cfg.get("skip_baseline"):
        if not (run_dir / "reports" / "baseline_results.json").is_file():
            missing.append("reports/baseline_results.json")
        else:
            missing += _evidence(run_dir, state, "baseline", "baseline job evidence")
    for name in ("report.html", "report.pdf"):
        if cfg.get("emit_report") and not (run_dir / "reports" / name).is_file():
            missing.append(f"reports/{name} (emit_report)")
    samples = run_dir / "reports" / "inference_samples"
    n = len([p for p in samples.iterdir() if p.is_file()]) if samples.is_dir() else 0
    if n < N_SAMPLES:
        missing.append(f"reports/inference_samples/ ({n}/{N_SAMPLES})")
    else:
        missing += _evidence(run_dir, state, "infer", "inference job evidence")
        inf = state.evidence.get("infer")
        if inf is not None and sum(1 for f in inf.outputs if f.path.startswith("reports/inference_samples/")) < N_SAMPLES:
            missing.append(f"inference job evidence ({N_SAMPLES} samples)")
    return missing + learning_missing(run_dir, state)


def skill_name(model_id: str) -> str:
    """The rerun skill's name: run-<short name> in lower-case letters, digits and hyphens (Agent Skills naming)."""
    short = model_id.rstrip("/").split("/")[-1].lower()
    return ("run-" + re.sub(r"[^a-z0-9-]+", "-", short).strip("-"))[:64]


def skill_path(run_dir: Path, cfg: dict) -> Path:
    """Where Step 6 writes the rerun skill."""
    return run_dir / "skills" / skill_name(str(cfg.get("model_id", "model"))) / "SKILL.md"


def check_skill_text(text: str) -> list[str]:
    """What a rerun SKILL.md lacks: front matter fields, copyright comment, no placeholders."""
    missing = []
    parts = text.split("---")
    if not text.startswith("---") or len(parts) < 3:
        return ["YAML front matter"]
    front = parts[1]
    missing += [f"front matter {f[:-1]}" for f in SKILL_FIELDS if f not in front]
    after = "---".join(parts[2:]).lstrip()
    if not (after.startswith("<!--") and "Copyright" in after.split("-->")[0]):
        missing.append("copyright HTML comment after the front matter")
    left = sorted(set(PLACEHOLDER.findall(text)))
    if left:
        missing.append(f"placeholders left: {', '.join(left)}")
    return missing


def gate6(run_dir: Path, state: RunState) -> list[str]:
    cfg = _config(run_dir)
    missing = []
    if cfg.get("push_to_hub", True):
        push = state.push
        if push is None:
            missing.append("Hub repo pushed")
        elif not push.confirmed:
            missing.append(f"Hub push confirmed (the Hub reports {push.confirmed_sha!r} for {push.repo_id}, the push made {push.commit!r})")
    path = skill_path(run_dir, cfg)
    if not path.is_file():
        missing.append(str(path.relative_to(run_dir)))
    else:
        missing += [f"SKILL.md: {m}" for m in check_skill_text(path.read_text())]
    return missing


GATES: dict[int, Callable[[Path, RunState], list[str]]] = {1: gate1, 2: gate2, 3: gate3, 4: gate4, 5: gate5, 6: gate6}


def check(step: int, run_dir: Path, state: RunState) -> GateResult:
    """Evaluate one step's gate."""
    return GateResult(step, tuple(GATES[step](run_dir, state)))


def first_unmet(run_dir: Path, state: RunState) -> int | None:
    """The first step whose gate is not met, or None when all six hold."""
    for step in GATES:
        if not check(step, run_dir, state).met:
            return step
    return None


def blocking(step: int, run_dir: Path, state: RunState) -> GateResult | None:
    """The first earlier gate that blocks a tool of `step`, or None when it may run."""
    for s in range(1, step):
        res = check(s, run_dir, state)
        if not res.met:
            return res
    return None
