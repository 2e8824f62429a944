"""Tools for any step: reading the run dir, asking the user, recording config values and notes."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, ValidationError

from tao_finetune.agent import policy
from tao_finetune.agent.config import RunConfig, parse_value
from tao_finetune.agent.context import RunContext
from tao_finetune.tools.base import NeedsUser, ToolError, tool

MAX_READ = 30_000
FREE_KEYS = ("hyperparameters.",)  # everything else is a user input (policy.PROTECTED_KEYS) or recorded by its step's tools


class ReadFileArgs(BaseModel):
    path: str = Field(description="path relative to the output dir")
    max_chars: int = Field(MAX_READ, ge=1, le=200_000, description="read at most this many characters (from the end when tail=true)")
    tail: bool = Field(False, description="return the end of the file instead of its start (for logs)")


@tool(step=0)
def read_file(ctx: RunContext, args: ReadFileArgs) -> str:
    """Read a text file inside the output dir (config, logs, reports, generated code)."""
    path = ctx.confine(args.path)
    if not path.is_file():
        raise ToolError(f"no such file in the output dir: {args.path!r}")
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        raise ToolError(f"cannot read {args.path!r}: {err.strerror}") from None
    if len(text) > args.max_chars:
        text = text[-args.max_chars:] if args.tail else text[: args.max_chars]
    try:
        policy.check_writable(args.path)
    except ToolError:  # not a project source the model wrote: logs, data, fetched pages, reports are outside text
        return policy.data_block(f"file:{args.path}", text)
    return text


class ListFilesArgs(BaseModel):
    path: str = Field(".", description="folder relative to the output dir")
    max_entries: int = Field(200, ge=1, le=2000, description="list at most this many entries")


@tool(step=0)
def list_files(ctx: RunContext, args: ListFilesArgs) -> list[str]:
    """List files under a folder of the output dir (recursive, hidden state files excluded)."""
    root = ctx.confine(args.path)
    if not root.is_dir():
        raise ToolError(f"no such folder in the output dir: {args.path!r}")
    out = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(ctx.run_dir)
        if any(part.startswith(".tao") for part in rel.parts):
            continue
        out.append(str(rel) + ("/" if p.is_dir() else ""))
        if len(out) >= args.max_entries:
            out.append("[... more entries]")
            break
    return out


class AskUserArgs(BaseModel):
    question: str = Field(min_length=3, description="one clear question; say what you will do with each possible answer")


@tool(step=0)
def ask_user(ctx: RunContext, args: AskUserArgs) -> str:
    """Stop and ask the user a question (a decision you may not take yourself)."""
    raise NeedsUser(args.question, "re-run the same command with --answer TEXT (or with the flag the question names)")


class SetConfigArgs(BaseModel):
    key: str = Field(description="dotted config key, e.g. hyperparameters.per_device_train_batch_size or n_train")
    value: str = Field(description="the new value, YAML-parsed (e.g. 16, 1e-4, true)")
    reason: str = Field(min_length=3, description="why, in one line (recorded in notes)")


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        node = node[part]
    return node


@tool(step=0)
def set_config(ctx: RunContext, args: SetConfigArgs) -> str:
    """Change one hyperparameter that the user did not set; recorded with its reason. User inputs (model, dataset, method, subset sizes, epochs, baseline, push, ...) and user-set keys become a question to the user."""
    cfg = ctx.config
    key = policy.normalise_key(args.key)
    why = policy.needs_user(cfg, key)
    if why:
        value = parse_value(args.value)
        raise NeedsUser(f"changing {key!r} to {value!r} needs the user's approval: {why} ({args.reason})", f"re-run with --set {key}={args.value}",
                        choices={"yes": {key: value}})
    if not key.startswith(FREE_KEYS):
        raise ToolError(f"{key!r} is recorded by its own step's tools, not set_config")
    data = cfg.model_dump()
    try:
        old = _get(data, key)
    except KeyError:
        raise ToolError(f"unknown config key {key!r}") from None
    parts = key.split(".")
    node = data
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = parse_value(args.value)
    try:
        new_cfg = RunConfig.model_validate(data)
    except ValidationError as err:
        e = err.errors()[0]
        raise ToolError(f"invalid value {args.value!r} for {key!r}: {e['msg']}") from None
    ctx.config = new_cfg
    new_cfg.note(f"set {key}: {old!r} -> {_get(new_cfg.model_dump(), key)!r} ({args.reason})")
    ctx.save()
    return f"{key} = {_get(new_cfg.model_dump(), key)!r}"


class NoteArgs(BaseModel):
    text: str = Field(min_length=3, description="the note, one line (evidence, a fallback reason, a decision)")


@tool(step=0)
def note(ctx: RunContext, args: NoteArgs) -> str:
    """Append a note to config.yaml notes (and PROGRESS.md when enabled)."""
    from tao_finetune.agent.progress import Journal

    ctx.config.note(args.text)
    Journal(ctx).line("📝", args.text)
    ctx.save()
    return "noted"
