"""Step 1d / 2c: match known incompatibilities (references/compat_rules.yaml) against probe and hardware facts."""

from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from tao_finetune.agent import references
from tao_finetune.tools.base import NoArgs, tool

Phase = Literal["probe", "hardware"]
FixKind = Literal["dockerfile", "requirements", "config", "env"]
OPS = ("eq", "ne", "in", "not_in", "lt", "le", "gt", "ge", "contains", "matches", "exists")
NGC_TAG = re.compile(r":(\d{2})\.(\d{2})")


class Fix(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: FixKind
    value: Any


class Rule(BaseModel):
    """One known incompatibility."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9\-]*$")
    phase: Phase
    description: str
    detect: dict[str, Any]
    fix: Fix
    source: str


class RuleError(ValueError):
    """A malformed rule file."""


def _check_cond(cond: Any, where: str) -> None:
    if not isinstance(cond, dict) or not cond:
        raise RuleError(f"{where}: a condition must be a non-empty mapping")
    if "all" in cond or "any" in cond:
        key = "all" if "all" in cond else "any"
        if len(cond) != 1 or not isinstance(cond[key], list) or not cond[key]:
            raise RuleError(f"{where}: {key!r} takes a non-empty list and nothing else")
        for i, c in enumerate(cond[key]):
            _check_cond(c, f"{where}.{key}[{i}]")
        return
    if "not" in cond:
        if len(cond) != 1:
            raise RuleError(f"{where}: 'not' takes one condition and nothing else")
        _check_cond(cond["not"], f"{where}.not")
        return
    ops = [k for k in cond if k != "fact"]
    if "fact" not in cond or len(ops) != 1 or ops[0] not in OPS:
        raise RuleError(f"{where}: a leaf is {{fact: path, <op>: value}} with op in {OPS}, got {sorted(cond)}")
    if ops[0] == "matches":
        re.compile(str(cond["matches"]))


def parse_rules(data: Any) -> list[Rule]:
    """Validate a rules document; raises RuleError naming the bad rule."""
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        raise RuleError("rules file must hold a 'rules' list")
    out, seen = [], set()
    for i, raw in enumerate(data["rules"]):
        try:
            rule = Rule.model_validate(raw)
        except ValueError as err:
            raise RuleError(f"rule #{i}: {str(err).splitlines()[0]}") from None
        if rule.id in seen:
            raise RuleError(f"rule id {rule.id!r} appears twice")
        seen.add(rule.id)
        _check_cond(rule.detect, rule.id)
        out.append(rule)
    return out


@lru_cache(maxsize=1)
def load_rules() -> tuple[Rule, ...]:
    """The packaged rules."""
    text = references.read_text("compat_rules.yaml")
    return tuple(parse_rules(yaml.safe_load(text)))


def get_rule(rule_id: str) -> Rule | None:
    return next((r for r in load_rules() if r.id == rule_id), None)


_MISSING = object()


def lookup(facts: dict[str, Any], path: str) -> Any:
    node: Any = facts
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _version(v: Any) -> tuple[float, ...] | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, (int, float)):
        return (float(v),)
    if isinstance(v, str) and re.fullmatch(r"\d+(\.\d+)*", v.strip()):
        return tuple(float(p) for p in v.strip().split("."))
    return None


def _leaf(value: Any, op: str, arg: Any) -> bool:
    if op == "exists":
        return (value is not _MISSING and value is not None) == bool(arg)
    if value is _MISSING or value is None:
        return False
    if op == "eq":
        return value == arg
    if op == "ne":
        return value != arg
    if op == "in":
        return value in arg
    if op == "not_in":
        return value not in arg
    if op == "contains":
        return arg in value if isinstance(value, (list, tuple, str, dict)) else False
    if op == "matches":
        return re.search(str(arg), str(value)) is not None
    a, b = _version(value), _version(arg)
    if a is None or b is None:
        return False
    return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]


def holds(cond: dict[str, Any], facts: dict[str, Any]) -> bool:
    """Evaluate a condition tree over facts (no code is executed)."""
    if "all" in cond:
        return all(holds(c, facts) for c in cond["all"])
    if "any" in cond:
        return any(holds(c, facts) for c in cond["any"])
    if "not" in cond:
        return not holds(cond["not"], facts)
    op = next(k for k in cond if k != "fact")
    return _leaf(lookup(facts, cond["fact"]), op, cond[op])


def derive(facts: dict[str, Any]) -> dict[str, Any]:
    """Add derived facts: hardware.ngc_version ("YY.MM") from the NGC image tag."""
    hw = dict(facts.get("hardware") or {})
    image = hw.get("ngc_image") or ""
    m = NGC_TAG.search(str(image))
    if m and "ngc_version" not in hw:
        hw["ngc_version"] = f"{m.group(1)}.{m.group(2)}"
    return {**facts, "hardware": hw}


def evaluate_rules(facts: dict[str, Any], phase: Phase, rules: tuple[Rule, ...] | list[Rule] | None = None) -> list[dict[str, Any]]:
    """The rules of one phase whose detect condition holds: id, description, fix, source."""
    facts = derive(facts)
    out = []
    for r in rules if rules is not None else load_rules():
        if r.phase == phase and holds(r.detect, facts):
            out.append({"id": r.id, "description": r.description, "fix": r.fix.model_dump(), "source": r.source})
    return out


def facts_from_config(cfg: Any) -> dict[str, Any]:
    """The fact namespace the rules see, built from a RunConfig."""
    hp = cfg.hyperparameters
    return {
        "model": cfg.model_facts.model_dump() if cfg.model_facts else {},
        "dataset": cfg.dataset_facts.model_dump() if cfg.dataset_facts else {},
        "task": cfg.task_type,
        "training_method": hp.training_method,
        "gradient_checkpointing": hp.gradient_checkpointing,
        "platform": cfg.platform,
        "hardware": {"gpu_name": cfg.gpu_name, "gpu_count": cfg.gpu_count, "driver_major": cfg.driver_major,
                     "vram_gb_per_gpu": cfg.vram_gb_per_gpu, "ngc_image": cfg.image or cfg.ngc_image},
    }


def apply_matches(cfg: Any, phase: Phase) -> list[dict[str, Any]]:
    """Evaluate one phase and merge its matches into cfg.applicable_workarounds (other phases' ids are kept)."""
    matches = evaluate_rules(facts_from_config(cfg), phase)
    phase_ids = {r.id for r in load_rules() if r.phase == phase}
    kept = [i for i in (cfg.applicable_workarounds or []) if i not in phase_ids]
    cfg.applicable_workarounds = [*kept, *(m["id"] for m in matches)]
    return matches


@tool(step=1)
def check_compat(ctx, args: NoArgs) -> dict:
    """Walk the known-incompatibility rules against the probe facts; records matching rule ids in config.applicable_workarounds (hardware-dependent rules are re-checked in Step 2)."""
    matches = apply_matches(ctx.config, "probe")
    ctx.save()
    return {"applicable_workarounds": ctx.config.applicable_workarounds, "matches": matches}
