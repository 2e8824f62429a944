"""The six steps as a state machine over the run directory: each gate is a predicate over files."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import yaml

from tao_finetune.agent.state import RunState

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


def _config(run_dir: Path) -> dict:
    path = run_dir / "config.yaml"
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


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


def gate4(run_dir: Path, state: RunState) -> list[str]:
    cfg = _config(run_dir)
    missing = [f for f in project_files(cfg) if not (run_dir / f).is_file()]
    if not (state.records.get("build") or {}).get("ok"):
        missing.append("image built")
    if read_json(run_dir / "reports" / "smoke.json").get("passed") is not True:
        missing.append("smoke passed")
    if cfg.get("emit_unit_tests") and read_json(run_dir / "reports" / "unit_tests.json").get("passed") is not True:
        missing.append("unit tests passed (emit_unit_tests)")
    pre = read_json(run_dir / "meta" / "preflight.json")
    if not pre:
        missing.append("preflight summary")
    else:
        missing += [f"preflight.{k}" for k, v in pre.items() if _blank(v)]
    return missing


def gate5(run_dir: Path, state: RunState) -> list[str]:
    cfg = _config(run_dir)
    ckpt = run_dir / "checkpoints" / ("merged" if uses_lora_merge(cfg) else "final")
    missing = [] if ckpt.is_dir() and any(ckpt.iterdir()) else [f"checkpoints/{ckpt.name}/"]
    if primary_metric(read_json(run_dir / "reports" / "eval_results.json")) is None:
        missing.append("reports/eval_results.json with a numeric primary metric")
    if not cfg.get("skip_baseline") and not (run_dir / "reports" / "baseline_results.json").is_file():
        missing.append("reports/baseline_results.json")
    if cfg.get("emit_report") and not (run_dir / "reports" / "report.html").is_file():
        missing.append("reports/report.html (emit_report)")
    samples = run_dir / "reports" / "inference_samples"
    n = len([p for p in samples.iterdir() if p.is_file()]) if samples.is_dir() else 0
    if n < N_SAMPLES:
        missing.append(f"reports/inference_samples/ ({n}/{N_SAMPLES})")
    return missing


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
    if cfg.get("push_to_hub", True) and not (state.records.get("hub") or {}).get("url"):
        missing.append("Hub repo pushed")
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
