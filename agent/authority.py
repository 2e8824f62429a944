"""The authority order for recipe values: user > live research > curated reference > model memory."""

from __future__ import annotations

from typing import Any

from tao_finetune.agent.config import RANKS, Rank, RunConfig, Sourced
from tao_finetune.agent.state import RunState


class AuthorityError(Exception):
    """A recipe write the authority order refuses."""


def specificity(source: str, model_id: str) -> int:
    """How specific a live source is to this model: model card/repo > author code > generic docs."""
    s = source.lower()
    mid = model_id.lower()
    if mid and mid in s:
        return 3
    if "github.com" in s or "/examples/" in s or "notebook" in s:
        return 2
    return 1


def record_live_attempt(state: RunState, slot: str, url: str, outcome: str) -> None:
    """Log a live research attempt for a slot (needed before a reference fallback)."""
    state.live_attempts.setdefault(slot, []).append({"url": url, "outcome": outcome})


def record_fetch(state: RunState, url: str, final_url: str, sha256: str) -> None:
    """Log a page fetched in this run (only fetch_docs calls this); a rank=live value must cite one of these URLs."""
    import time

    from tao_finetune.agent.state import FetchRecord

    state.fetches = [*state.fetches, FetchRecord(url=url, final_url=final_url, sha256=sha256, at=time.time())]


def fetched(state: RunState, url: str) -> bool:
    """Whether `url` (ignoring a #fragment and a trailing slash) was fetched in this run."""
    def norm(u: str) -> str:
        return u.split("#", 1)[0].rstrip("/")

    return any(norm(url) in (norm(f.url), norm(f.final_url)) for f in state.fetches)


def _attempts(state: RunState, slot: str) -> list[dict[str, str]]:
    return state.live_attempts.get(slot) or state.live_attempts.get("*") or (
        state.live_attempts.get("hyperparameters") if slot.startswith("hyperparameters.") else None) or []


def set_recipe(
    cfg: RunConfig,
    state: RunState,
    slot: str,
    value: Any,
    rank: Rank,
    source: str,
    reason: str = "",
) -> str:
    """Write a recipe value if the authority order allows it; returns what happened, raises AuthorityError if refused."""
    if rank == "live" and not source.startswith(("http://", "https://")):
        raise AuthorityError(f"live research for {slot!r} needs a source URL, got {source!r}")
    if rank == "live" and not fetched(state, source):
        raise AuthorityError(f"live source {source!r} for {slot!r} was not fetched in this run: fetch it with fetch_docs first, "
                             "then cite the URL it returned")
    if rank in ("reference", "memory"):
        tried = _attempts(state, slot)
        if not tried:
            raise AuthorityError(
                f"fallback to {'a reference' if rank == 'reference' else 'memory'} for {slot!r} refused: no failed live attempt is "
                "logged for it; fetch the model card / docs first"
            )
        if rank == "memory" and not state.reference_reads:
            raise AuthorityError(f"fallback to memory for {slot!r} refused: no curated reference was read first (read_reference)")
        if not reason:
            reason = "; ".join(f"{a['url']}: {a['outcome']}" for a in tried)
    current = cfg.recipe.get(slot)
    new = Sourced(value=value, rank=rank, source=source, reason=reason)
    if current is not None:
        if RANKS[rank] > RANKS[current.rank]:
            raise AuthorityError(
                f"{slot!r} already set from {current.rank} ({current.source}); a {rank} source cannot overwrite it"
            )
        if rank == "live" and current.rank == "live" and current.value != value:
            mine, theirs = specificity(source, cfg.model_id), specificity(current.source, cfg.model_id)
            cfg.note(f"conflict on {slot!r}: {current.source} says {current.value!r}, {source} says {value!r}")
            if mine < theirs:
                return f"kept {slot!r} from the more specific source {current.source}"
    cfg.recipe = {**cfg.recipe, slot: new}
    if rank == "live" and source not in cfg.research_sources:
        cfg.research_sources = [*cfg.research_sources, source]
    if rank in ("reference", "memory"):
        cfg.note(f"fallback to {rank} for {slot}: {source} ({new.reason})")
    return f"set {slot!r} from {rank} source {source}"


def user_recipe(cfg: RunConfig, keys: list[str]) -> None:
    """Mark user-set keys as rank-1 recipe values."""
    data = cfg.model_dump()
    for key in keys:
        if key.startswith("recipe."):
            continue
        node: Any = data
        for p in key.split("."):
            node = node.get(p) if isinstance(node, dict) else None
        cfg.recipe = {**cfg.recipe, key: Sourced(value=node, rank="user", source="user")}
    cfg.user_set = sorted(set(cfg.user_set) | set(keys))


IDENTITY_KEYS = ("model_id", "dataset_id", "dataset_config", "local_dataset_path", "local_dataset_format", "task_type")
"""Inputs that say what is trained on what: changing one voids Step 1's probes (they are re-run)."""


def user_change(cfg: RunConfig, overrides: dict[str, Any]) -> tuple[RunConfig, list[str], bool]:
    """Apply a change the user approved (an answer typed at a question, a confirmed request) the way --set does.

    Validated by the config model (ConfigError in one line), recorded with the user as source (user_set and a rank-1
    recipe entry, as `run --set` does through `user_recipe`). Returns the new config, the keys set and whether an
    identity input changed (then the Step 1 facts are cleared so the probes run again for the new model/dataset).
    """
    from tao_finetune.agent.config import build_config
    from tao_finetune.agent.policy import normalise_key

    data = cfg.model_dump()
    keys: list[str] = []
    for raw_key, value in overrides.items():
        key = normalise_key(str(raw_key))
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
        keys.append(key)
    changed = {k for k in keys if k in IDENTITY_KEYS and getattr(cfg, k) != data.get(k)}
    if data.get("dataset_id") and "dataset_id" in changed and "local_dataset_path" not in keys:
        data["local_dataset_path"] = None  # a Hub dataset replaces a local one (and the other way round)
    if data.get("local_dataset_path") and "local_dataset_path" in changed and "dataset_id" not in keys:
        data["dataset_id"] = data["dataset_config"] = None
    if changed:
        data["dataset_source"] = None  # recomputed from the dataset inputs
        data["applicable_workarounds"] = None
        if "model_id" in changed:
            data["model_facts"] = None
        if changed & {"dataset_id", "dataset_config", "local_dataset_path", "local_dataset_format"}:
            data["dataset_facts"] = None
        if "task_type" not in keys and "task_type" not in cfg.user_set:
            data["task_type"] = None
    new = build_config(data)
    user_recipe(new, [k for k in keys if k != "model_id"])
    return new, keys, bool(changed)
