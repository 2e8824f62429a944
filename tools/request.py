"""set_request: the run inputs a person asked for in their own words, validated by the config model, applied on their yes.

The argument model is derived from RunConfig (and the two hyperparameters a person names most): the same types,
choices and descriptions as the `run` flags, every field optional. In `tao-finetune chat` the request is shown as a
table and applied when the person confirms; mid-run (and in a headless run) it becomes a question whose "yes" applies
it as if the user had passed --set (agent/authority.py `user_change`: one path, the user recorded as source).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from tao_finetune.agent.authority import user_change
from tao_finetune.agent.config import ConfigError, Hyperparameters, RunConfig, build_config
from tao_finetune.agent.context import RunContext
from tao_finetune.tools.base import NeedsUser, ToolError, tool

REQUEST_KEYS = ("model_id", "dataset_id", "dataset_config", "local_dataset_path", "local_dataset_format", "task_type", "n_train",
                "n_eval", "n_epochs", "lora_r", "push_to_hub", "hf_model_repo", "hub_private", "skip_baseline", "platform", "allow_cpu",
                "emit_report", "wandb")
HYPER_KEYS = ("training_method", "learning_rate")


def _field(annotation: Any, description: str | None) -> tuple[Any, Any]:
    return (annotation | None, Field(None, description=(description or "") + " (omit unless the user said it)"))


RequestArgs: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "RequestArgs",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Run inputs the user asked for; every field optional.",
    **{k: _field(RunConfig.model_fields[k].annotation, RunConfig.model_fields[k].description) for k in REQUEST_KEYS},
    **{k: _field(Hyperparameters.model_fields[k].annotation,
                 Hyperparameters.model_fields[k].description or k.replace("_", " ")) for k in HYPER_KEYS},
)


def wanted_changes(current: RunConfig | None, args: BaseModel) -> dict[str, Any]:
    """Config key -> value for every input the request sets to something other than the current value."""
    wanted = {(f"hyperparameters.{k}" if k in HYPER_KEYS else k): v for k, v in args.model_dump(exclude_none=True).items()}
    path = wanted.get("local_dataset_path")
    if path is not None:
        p = Path(str(path)).expanduser()
        if not p.exists():
            raise ToolError(f"local_dataset_path {str(path)!r} does not exist on this machine: ask the user for the right path")
        wanted["local_dataset_path"] = str(p.resolve())
    model = wanted.get("model_id")
    if isinstance(model, str) and (model.startswith((".", "/", "~")) or Path(model).expanduser().is_dir()):
        wanted["model_id"] = str(Path(model).expanduser().resolve())
    if current is None:
        return wanted
    now = current.model_dump()

    def value(key: str) -> Any:
        node: Any = now
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    return {k: v for k, v in wanted.items() if value(k) != v}


@tool(step=0)
def set_request(ctx: RunContext | None, args: RequestArgs) -> str:  # type: ignore[valid-type]
    """Record the run inputs the user asked for in their own words (model, dataset, epochs, subset sizes, LoRA, push to the Hub, platform, ...). Give only what the user said; never invent a model or a dataset. Nothing applies until the user confirms: they are shown what you understood and answer yes, no or an edit."""
    current = ctx.config if ctx is not None else None
    changes = wanted_changes(current, args)
    if current is None and not changes.get("model_id"):
        raise ToolError("model_id is required: ask the user which model to fine-tune (a Hub id org/name or a local folder)")
    if not changes:
        return "nothing to change: the run already has these values"
    try:
        user_change(current or build_config({"model_id": changes["model_id"]}), changes)
    except ConfigError as err:
        raise ToolError(f"{err}; fix the request (or ask the user)") from None
    listed = ", ".join(f"{k}={v!r}" for k, v in changes.items())
    raise NeedsUser(f"apply this request? {listed}", "re-run with --answer yes to apply it (as if passed with --set)", choices={"yes": changes})
