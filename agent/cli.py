"""The `tao-finetune` command: run the agent, inspect a model + dataset, audit the host, show or replay a run."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from tao_finetune.agent import gates
from tao_finetune.agent.config import ConfigError, RunConfig, apply_overrides, build_config, check_output_dir, load_config
from tao_finetune.agent.errors import ExitCode, LoopExit, ToolError
from tao_finetune.agent.session import SessionFormatError, SessionLog
from tao_finetune.agent.state import RunState

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_ASK, EXIT_GATE = ExitCode.OK, ExitCode.BUG, ExitCode.BAD_INPUT, ExitCode.QUESTION, ExitCode.GATE_FAILED
console = Console(stderr=True, highlight=False, soft_wrap=True)
LLMS = ("anthropic", "autopilot", "replay")
JOB_KINDS = ("train", "prepare", "smoke", "tests", "baseline", "eval", "infer", "merge")
SECOND_PRESS_S = 10.0  # after a Ctrl-C with training still running, a second press within this time stops it too
# the run in progress, so the top-level handler can still write its exit event and put a crash report beside it
_ACTIVE: dict[str, Any] = {"run_dir": None, "session": None}


class BadArgs(SystemExit):
    """A command line argparse refused: exit 2 with one line (`main` prints it, or puts it in `run --json`'s result)."""

    def __init__(self, message: str):
        super().__init__(ExitCode.BAD_INPUT)
        self.message = message


class OneLineParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage block), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise BadArgs(f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)")

# (flag, config key, type) for every spec input that is a plain value
VALUE_FLAGS: list[tuple[str, str, Any]] = [
    ("--model-id", "model_id", str),
    ("--dataset-id", "dataset_id", str),
    ("--dataset-config", "dataset_config", str),
    ("--local-dataset-path", "local_dataset_path", str),
    ("--local-dataset-format", "local_dataset_format", str),
    ("--task-type", "task_type", str),
    ("--n-train", "n_train", int),
    ("--n-eval", "n_eval", int),
    ("--n-epochs", "n_epochs", float),
    ("--lora-r", "lora_r", int),
    ("--output-dir", "output_dir", str),
    ("--hf-model-repo", "hf_model_repo", str),
    ("--platform", "platform", str),
    ("--image", "image", str),
]
BOOL_FLAGS: list[tuple[str, str]] = [
    ("--skip-baseline", "skip_baseline"),
    ("--emit-progress-log", "emit_progress_log"),
    ("--emit-report", "emit_report"),
    ("--emit-unit-tests", "emit_unit_tests"),
    ("--allow-cpu", "allow_cpu"),
    ("--private", "hub_private"),
]


def field_help(key: str) -> tuple[str, list[str] | None]:
    """Help text and choices for a run flag, from RunConfig's field description, default and Literal type."""
    import typing

    field = RunConfig.model_fields[key]
    choices = None
    for arg in (field.annotation, *typing.get_args(field.annotation)):
        if typing.get_origin(arg) is typing.Literal:
            choices = [str(c) for c in typing.get_args(arg)]
    default = None if field.is_required() else field.default
    shown = {True: "on", False: "off"}.get(default, default) if default is not None else None
    text = (field.description or key.replace("_", " ")) + (f" (default: {shown})" if shown is not None and shown != "" else "")
    return text.replace("%", "%%"), choices


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="fine-tune a model through the six gated steps (resumes an existing output dir)",
                       description="Fine-tune a Hugging Face model through the six gated steps. Re-running on the same output dir resumes at the first unmet gate.")
    for flag, key, typ in VALUE_FLAGS:
        help_, choices = field_help(key)
        p.add_argument(flag, dest=key, type=typ, default=None, choices=choices, help=help_,
                       metavar="{" + ",".join(choices) + "}" if choices else key.upper())
    p.add_argument("--push-to-hub", dest="push_to_hub", action=argparse.BooleanOptionalAction, default=None, help=field_help("push_to_hub")[0])
    for flag, key in BOOL_FLAGS:
        p.add_argument(flag, dest=key, action="store_true", default=None, help=field_help(key)[0])
    p.add_argument("--wandb", dest="wandb", action=argparse.BooleanOptionalAction, default=None, help=field_help("wandb")[0])
    p.add_argument("--config", type=Path, help="a config.yaml to start from (a finished run's config.yaml repeats that run)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="set any config value (repeatable), e.g. --set learning_rate=1e-4")
    p.add_argument("--llm", choices=LLMS, default="anthropic", help="who drives the run: the Anthropic API (default), the built-in autopilot (no key, no network), or a replay")
    p.add_argument("--model", dest="llm_model", default=None, help="Anthropic model id (default: TAO_MODEL or a current Sonnet-class model)")
    p.add_argument("--replay", type=Path, metavar="SESSION.jsonl", help="session.jsonl to replay (with --llm replay)")
    p.add_argument("--answer", default=None, help="your answer to the question a previous run stopped on")
    p.add_argument("--request", default="", help="the request in your own words (kept in the session log)")
    p.add_argument("--yes", action="store_true", help="never prompt; a question ends the run with exit code 3")
    p.add_argument("--env-file", type=Path, default=Path("~/.config/tao/.env"), help="credentials file (default ~/.config/tao/.env)")
    p.add_argument("--max-steps", type=int, default=250, help="model turns at most")
    p.add_argument("--max-cost", type=float, default=25.0, help="USD at most for model calls")
    p.add_argument("--max-hours", type=float, default=24.0, help="wall time at most")
    p.add_argument("--stop-before-step", type=int, choices=range(2, 7), default=None, metavar="N",
                   help="stop (exit 0) once the gates of steps 1..N-1 hold, e.g. 4 to plan without building or training")
    p.add_argument("--system-prompt", type=Path, default=None, metavar="FILE",
                   help="a system prompt file to use instead of prompts/system.md (same variables, rendered strictly; for prompt evals)")
    p.add_argument("--quiet", action="store_true", help="print only the result, no live view or job output (with --json: only the JSON result)")
    p.add_argument("--verbose", action="store_true", help="also print tool arguments and results, model text and job output")
    p.add_argument("--json", action="store_true", help="print one JSON result on stdout (status, exit code, gates, metrics, paths, Hub URL, tokens, cost); "
                   "it is also written to OUTPUT_DIR/result.json")


def leaf_keys(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys of the leaves of a nested dict (a section is never a key of its own)."""
    keys = []
    for k, v in data.items():
        if not prefix and k == "recipe" and isinstance(v, dict):
            keys += [f"recipe.{slot}" for slot in v]
        else:
            keys += leaf_keys(v, f"{prefix}{k}.") if isinstance(v, dict) and v else [f"{prefix}{k}"]
    return keys


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, list[str]]:
    """Merge an existing run's config, --config, flags and --set; returns the config and the user-set keys."""
    data: dict[str, Any] = {}
    file_keys: list[str] = []
    if args.config:
        loaded = load_config(args.config)
        data = loaded.model_dump(exclude_defaults=True)
        # A run's own config.yaml (it records user_set/recipe): only what that run's user set is user input; recorded
        # facts and researched values keep their rank and source. A hand-written config: every value in it is the user's.
        file_keys = list(loaded.user_set) if (loaded.user_set or loaded.recipe) else leaf_keys(data)
    flags = {key: getattr(args, key) for _, key, _ in VALUE_FLAGS}
    flags.update({key: getattr(args, key) for _, key in BOOL_FLAGS})
    flags["push_to_hub"] = args.push_to_hub
    flags["wandb"] = getattr(args, "wandb", None)  # --wandb/--no-wandb (chat's inputs come through --set)
    given = {k: v for k, v in flags.items() if v is not None}
    data.update(given)
    data, set_keys = apply_overrides(data, args.sets)
    for key in leaf_keys(data):
        node: Any = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, str) and "\x00" in node:
            raise ConfigError(f"{key} holds a NUL byte: {node[:60]!r}")
    if not data.get("model_id"):
        raise ConfigError("a model is required: --model-id ORG/NAME (or model_id in --config)")
    if not isinstance(data["model_id"], str) or not data["model_id"].strip() or "\x00" in data["model_id"]:
        raise ConfigError(f"model_id must be a Hub id ORG/NAME or a local folder, got {data['model_id']!r}")
    local = data.get("local_dataset_path")
    if local is not None:
        if not isinstance(local, str) or not local.strip() or "\x00" in local:
            raise ConfigError(f"local_dataset_path must be a path, got {local!r}")
        if not Path(local).expanduser().exists():
            raise ConfigError(f"--local-dataset-path {local!r} does not exist: give an existing file or folder")
    for key in ("local_dataset_path", "model_id"):
        value = data.get(key)
        if value and (key == "local_dataset_path" or value.startswith((".", "/", "~")) or Path(value).is_dir()):
            data[key] = str(Path(value).expanduser().resolve())
    out = Path(data.get("output_dir") or build_config({"model_id": data["model_id"]}).output_dir).resolve()
    check_output_dir(out)
    existing = out / "config.yaml"
    user_keys = sorted((set(file_keys) | set(leaf_keys(given)) | set(set_keys)) - {"model_id"})
    if existing.exists():
        prev = load_config(existing)
        if prev.model_id != data["model_id"]:
            raise ConfigError(f"{str(out)!r} holds a run of {prev.model_id!r}, not {data['model_id']!r}: choose another --output-dir")
        merged = prev.model_dump()
        for key in user_keys:
            node, src = merged, data
            parts = key.split(".")
            for part in parts[:-1]:
                node, src = node.setdefault(part, {}), src.get(part, {})
                if not isinstance(node, dict):  # the run's config holds a plain value there
                    raise ConfigError(f"--set {key!r}: {part!r} is not a section")
            if parts[-1] in src:
                node[parts[-1]] = src[parts[-1]]
        data = merged
    data["output_dir"] = str(out)
    cfg = build_config(data)
    return cfg, [k for k in user_keys if k != "output_dir"]


def wandb_default(cfg: RunConfig, user_keys: list[str], creds) -> None:
    """The spec's rule: W&B is on when WANDB_API_KEY is present, unless WANDB_MODE=disabled or --no-wandb/--wandb was given."""
    if "wandb" not in user_keys and not cfg.wandb and creds.present("WANDB_API_KEY") and os.environ.get("WANDB_MODE") != "disabled":
        cfg.wandb = True


def match_choice(choices: dict[str, dict[str, Any]], answer: str) -> dict[str, Any] | None:
    """The overrides of the pending choice the answer names ('lora', 'yes, use LoRA'); None for a negated or other answer."""
    words = re.findall(r"[a-z0-9_']+", answer.lower())
    if not words or {"no", "not", "don't", "dont", "never"} & set(words):
        return None
    for key, overrides in choices.items():
        if key.lower() in words:
            return dict(overrides)
    return None


def check_limits(args: argparse.Namespace) -> None:
    """--max-steps/--max-cost/--max-hours must be positive finite numbers."""
    for flag, value in (("--max-steps", args.max_steps), ("--max-cost", args.max_cost), ("--max-hours", args.max_hours)):
        if not math.isfinite(value) or value <= 0:
            raise ConfigError(f"{flag} must be a positive number, got {value}")


def load_credentials(env_file: Path):
    """Credentials from the environment and --env-file; a file that is not a readable UTF-8 text file is a ConfigError."""
    from tao_finetune.agent.secrets import Credentials

    return Credentials.load(env_file)  # parse_env_file: the one-line ConfigError of a bad file, for every command


def make_platform(cfg: RunConfig, echo=None):
    if cfg.platform == "slurm":
        from tao_finetune.tools.runtime.slurm import SlurmPlatform

        return SlurmPlatform()
    if cfg.platform == "local":
        from tao_finetune.tools.runtime.local import LocalPlatform

        return LocalPlatform()
    from tao_finetune.tools.runtime.docker import DockerPlatform

    return DockerPlatform(echo=echo)


def make_client(args: argparse.Namespace, ctx):
    if args.llm == "autopilot":
        from tao_finetune.agent.autopilot import AutopilotClient

        return AutopilotClient(ctx)
    if args.llm == "replay":
        from tao_finetune.agent.fakes import ReplayClient

        if not args.replay:
            raise ConfigError("--llm replay needs --replay SESSION.jsonl")
        try:
            return ReplayClient(args.replay)
        except (FileNotFoundError, IsADirectoryError, SessionFormatError, ValueError) as err:
            raise ConfigError(f"--replay: {' '.join(str(err).split())}") from None
        except OSError as err:
            raise ConfigError(f"--replay {str(args.replay)!r} cannot be read: {err.strerror}") from None
    from tao_finetune.agent.llm import AnthropicClient

    if not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
        raise ConfigError("ANTHROPIC_API_KEY is not set: export it, or use --llm autopilot (no key, no network)")
    return AnthropicClient(model=args.llm_model)


def summary(run_dir: Path, state: RunState) -> str:
    """The closing lines: metric baseline -> fine-tuned, URLs and paths."""
    ev = gates.read_json(run_dir / "reports" / "eval_results.json")
    base = gates.read_json(run_dir / "reports" / "baseline_results.json")
    value, b = gates.primary_metric(ev), gates.primary_metric({**base, "primary_metric": ev.get("primary_metric")})
    lines = []
    if value is not None:
        delta = f" (Δ {value - b:+.4f})" if b is not None else ""
        lines.append(f"{ev['primary_metric']}: {f'{b:.4f}' if b is not None else 'n/a'} → {value:.4f}{delta}")
    hub = (state.records.get("hub") or {}).get("url")
    lines.append(f"hub: {hub or 'not pushed'}")
    from tao_finetune.agent.metrics import tracking_lines

    lines += tracking_lines(run_dir)  # reports/tracking.json, written by the project's Tracker: TensorBoard, W&B
    lines.append(f"samples: {run_dir / 'reports' / 'inference_samples'}")
    cfg_short = next(iter(sorted((run_dir / 'skills').glob('run-*/SKILL.md'))), None) if (run_dir / "skills").is_dir() else None
    lines.append(f"rerun skill: {cfg_short or 'not emitted'}")
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> int:
    from tao_finetune.agent.lock import RunLock

    check_limits(args)
    cfg, user_keys = config_from_args(args)
    run_dir = cfg.out
    if args.answer and not RunState.load(run_dir, repair=False).pending_question:  # before anything is written
        raise ConfigError(f"--answer {args.answer!r}: the run in {str(run_dir)!r} has no pending question; re-run without "
                          "--answer (`tao-finetune status` shows a pending question)")
    creds = load_credentials(args.env_file)
    wandb_default(cfg, user_keys, creds)
    from tao_finetune.agent.console import LiveView

    view = LiveView(console, run_dir, "quiet" if args.quiet else "verbose" if args.verbose else "normal")
    with RunLock(run_dir) as lock:
        _ACTIVE["run_dir"] = run_dir
        try:
            session = SessionLog(run_dir / "session.jsonl", creds, echo=None if args.quiet else view.event)
        except SessionFormatError as err:
            raise ConfigError(f"{err}: move session.jsonl away to start a new log") from None
        _ACTIVE["session"] = session
        notes = [session.repaired]
        if lock.took_over is not None:
            notes.append(f"took over a stale lock of PID {lock.took_over.get('pid', '?')} (that process is gone)")
        return _run_locked(args, cfg, user_keys, creds, session, notes, view)


def _run_locked(args: argparse.Namespace, cfg: RunConfig, user_keys: list[str], creds, session: SessionLog, notes: list[str | None],
                view) -> int:
    from tao_finetune.agent.authority import user_recipe
    from tao_finetune.agent.context import RunContext
    from tao_finetune.agent import steps

    run_dir = cfg.out
    state = RunState.load(run_dir)
    chosen = match_choice(state.pending_choices, args.answer) if args.answer else None
    if chosen:  # the user agreed to a proposed change: applied as an inline answer is (one path: authority.user_change)
        from tao_finetune.agent.authority import user_change
        from tao_finetune.tools.jobs import restart_training

        cfg, keys, identity = user_change(cfg, chosen)  # a new model or dataset is allowed here: the user approved it
        user_keys = sorted(set(user_keys) | {k for k in keys if k != "model_id"})
        cfg.note(f"the user approved {', '.join(f'{k}={v!r}' for k, v in chosen.items())} (--answer {args.answer!r})")
        gone = restart_training(run_dir) if set(keys) - NO_RESET_KEYS else []
        state.pending_choices = {}
    notes.append(state.load_note)
    for note in filter(None, notes):
        session.event("note", text=note)
        console.print(f"[yellow]note:[/] {escape(note)}")
    user_recipe(cfg, user_keys)
    ctx = RunContext(cfg, session, creds, state, yes=args.yes or not sys.stdin.isatty())
    if args.answer and gates.accept_learning(state, run_dir, state.pending_question, args.answer):
        session.event("accepted", what="gate 5: model kept without clear evidence of learning", answer=args.answer)
        ctx.save()
    first = gates.first_unmet(run_dir, state)
    args.outcome = {"run_dir": run_dir, "message": "all six gates already met"}
    if first is None:  # a finished run is never rewritten: config.yaml and the state are not saved before this point
        console.print("[green]all six gates already met[/]")
        session.event("exit", code=int(EXIT_OK), message="all six gates already met", steps=0, cost_usd=0.0)
        print(summary(run_dir, state))
        return EXIT_OK
    ctx.platform = make_platform(cfg, echo=None if args.quiet else view.job_output)
    client = make_client(args, ctx)  # a missing API key fails here, before anything is written
    if first <= 5 and hasattr(ctx.platform, "prewarm"):
        ctx.save()  # config.yaml first: the job runner reads the model id from it
        ctx.platform.prewarm(ctx)  # it imports torch and creates the CUDA context while Steps 1-3 run
    from tao_finetune.agent.loop import Agent, Limits
    from tao_finetune.agent.prompts import render
    from tao_finetune.tools import all_tools

    ctx.save()
    tools = all_tools()
    steps.check_tools(tools)
    system = render("system.md", **system_vars(ctx)) if not args.system_prompt else render_prompt_file(args.system_prompt, system_vars(ctx))
    resume = f"Steps 1-{first - 1} are done (their gates hold); continue at step {first} ({gates.STEP_NAMES[first]})." if first > 1 else "Start at step 1."
    if args.answer:
        resume += f"\nThe previous run asked: {state.pending_question!r}. The user's answer: {args.answer}"
        session.event("user", question=state.pending_question, answer=args.answer)
        state.pending_question = None
        ctx.save()
    if chosen:
        resume += f"\nApplied the user's choice: {', '.join(f'{k}={v}' for k, v in chosen.items())}; reset: {', '.join(gone) or 'nothing'}."
        session.event("user_choice", answer=args.answer, applied=chosen, reset=gone)
    task = render("task.md", model_id=cfg.model_id, request=args.request or "(headless run; inputs are in config.yaml)", resume=resume)
    limits = Limits(max_steps=args.max_steps, max_cost_usd=args.max_cost, max_wall_s=args.max_hours * 3600,
                    stop_before_step=args.stop_before_step)
    ask = None if ctx.yes else (lambda q: view.paused(prompt_user, q))
    view.step = first
    with view:
        result = Agent(client, ctx, tools, system, limits, ask=ask, on_answer=None if ctx.yes else (lambda q, a: apply_answer(ctx, q, a))).run(task)
    args.outcome = {"run_dir": run_dir, "message": result.message, "how": getattr(result, "how_to_answer", "") or None}
    if result.code == EXIT_OK:
        console.print(f"[bold green]done[/]: {escape(result.message)}")
        print(summary(run_dir, state))
    elif result.code == EXIT_ASK:
        console.print(f"[bold yellow]question[/]: {escape(result.message)}")
        console.print(f"to answer: {escape(getattr(result, 'how_to_answer', '') or 're-run the same command with --answer TEXT')}")
    elif result.code == ExitCode.INTERRUPTED:
        console.print(f"[bold yellow]interrupted[/]: {escape(result.message)}")
        after_interrupt(ctx, interactive=not ctx.yes)
    else:
        console.print(f"[bold red]stopped[/]: {escape(result.message)}")
    return result.code


NO_RESET_KEYS = frozenset({"push_to_hub", "hf_model_repo", "hub_private", "emit_progress_log", "emit_report", "emit_unit_tests", "license", "wandb"})
"""Inputs whose change leaves the training valid; any other approved change voids it (tools/jobs.py restart_training)."""


def apply_answer(ctx, question, answer: str) -> str | None:
    """An answer typed at a question: when it picks one of the question's choices ("yes" to a proposed change), apply it
    as `--answer`/`--set` would (agent/authority.py user_change: validated, the user recorded as source), void the training
    it invalidates, and say what changed; None when the answer applies nothing."""
    from tao_finetune.agent.authority import user_change
    from tao_finetune.tools.jobs import restart_training

    chosen = match_choice(getattr(question, "choices", None) or {}, answer)
    if not chosen:
        return None
    try:
        new, keys, identity = user_change(ctx.config, chosen)
    except ConfigError as err:
        ctx.session.event("note", text=f"answer not applied: {err}")
        return f"Not applied: {err}"
    ctx.config = new
    listed = ", ".join(f"{k}={v!r}" for k, v in chosen.items())
    new.note(f"the user approved {listed} (answer: {' '.join(answer.split())[:120]!r})")
    ctx.state.pending_choices = {}
    gone = restart_training(ctx.run_dir) if set(keys) - NO_RESET_KEYS else []
    ctx.save()
    ctx.session.event("user_choice", answer=answer, applied=chosen, reset=gone)
    return (f"Applied the user's choice: {listed} (source: user)" + ("; Step 1 runs again for the new input" if identity else "")
            + (f"; reset: {', '.join(gone)}" if gone else "") + ".")


def chat_command(args: argparse.Namespace) -> int:
    """`tao-finetune chat`: the request in natural language, a confirmed plan, the run and follow-ups in one conversation."""
    from tao_finetune.agent.chat import Chat, Wiring
    from tao_finetune.agent.loop import Limits
    from tao_finetune.agent.prompts import render
    from tao_finetune.tools import all_tools

    check_limits(args)
    defaults = list(args.sets)
    if args.platform:
        defaults.append(f"platform={args.platform}")
    if args.allow_cpu:
        defaults.append("allow_cpu=true")
    apply_overrides({}, defaults)  # a malformed --set is a one-line error before anything starts
    creds = load_credentials(args.env_file)
    client = make_client(argparse.Namespace(llm="anthropic", llm_model=args.llm_model, replay=None), None)
    blank = {key: None for _, key, _ in VALUE_FLAGS} | {key: None for _, key in BOOL_FLAGS}

    def open_config(inputs: dict[str, Any], defaults: list[str], output_dir: Path | None):
        sets = [*defaults, *(f"{k}={json.dumps(v)}" for k, v in inputs.items())]
        ns = argparse.Namespace(**{**blank, "config": None, "push_to_hub": None, "sets": sets,
                                   "output_dir": str(output_dir) if output_dir else None})
        cfg, keys = config_from_args(ns)
        wandb_default(cfg, keys, creds)
        return cfg, keys

    def on_open(run_dir: Path, session: SessionLog) -> None:
        _ACTIVE.update(run_dir=run_dir, session=session)

    tools = all_tools()
    wiring = Wiring(tools=tools, client=client, credentials=creds, open_config=open_config, make_platform=make_platform,
                    system_for=lambda ctx: render("system.md", **system_vars(ctx)), apply_answer=apply_answer,
                    after_interrupt=after_interrupt, summary=summary,
                    limits=Limits(max_steps=args.max_steps, max_cost_usd=args.max_cost, max_wall_s=args.max_hours * 3600),
                    defaults=defaults, intake_system=lambda given: render("chat.md", defaults=", ".join(given) or "none"), on_open=on_open,
                    output_dir=args.output_dir)
    return Chat(wiring, console, "verbose" if args.verbose else "normal").main(args.resume, args.request)


def add_chat_parser(sub: argparse._SubParsersAction) -> None:
    cp = sub.add_parser("chat", help="say what to fine-tune in your own words; follow the run and continue the conversation",
                        description="An interactive fine-tune: describe it in your own words, confirm what the agent understood "
                                    "(y/n/edit), watch the six steps, answer its questions inline, then ask follow-ups "
                                    "('train two more epochs', 'now push it'). Ctrl-C stops (exit 130) and prints the --resume "
                                    "command that continues the conversation. Needs ANTHROPIC_API_KEY (ANTHROPIC_BASE_URL honoured).")
    cp.add_argument("--resume", type=Path, default=None, metavar="DIR|FILE",
                    help="continue the conversation recorded in DIR/session.jsonl (an earlier chat's or run's output dir), "
                         "or an intake stopped before its run started (the FILE the interrupted chat printed)")
    cp.add_argument("--request", default=None, metavar="TEXT", help="your first message (instead of typing it at the prompt)")
    cp.add_argument("--output-dir", type=Path, default=None, metavar="DIR", help="run directory (default ./output/<model short name>)")
    cp.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                    help="a default for the request (repeatable; any config key, as `run --set`); what you say in the chat overrides it")
    cp.add_argument("--platform", choices=("docker", "local", "slurm"), default=None, help="where jobs run (default: docker; the request may name it)")
    cp.add_argument("--allow-cpu", action="store_true", help=field_help("allow_cpu")[0])
    cp.add_argument("--model", dest="llm_model", default=None, metavar="MODEL", help="Anthropic model id (default: TAO_MODEL or a current Sonnet-class model)")
    cp.add_argument("--env-file", type=Path, default=Path("~/.config/tao/.env"), help="credentials file (default ~/.config/tao/.env)")
    cp.add_argument("--max-steps", type=int, default=250, help="model turns at most per request or follow-up")
    cp.add_argument("--max-cost", type=float, default=25.0, help="USD at most for model calls per request or follow-up")
    cp.add_argument("--max-hours", type=float, default=24.0, help="wall time at most per request or follow-up")
    cp.add_argument("--verbose", action="store_true", help="also print tool arguments and results and job output")
    cp.set_defaults(handler=chat_command)


def render_prompt_file(path: Path, variables: dict[str, Any]) -> str:
    """Render a user-supplied system prompt file strictly (a ConfigError names what does not match)."""
    from tao_finetune.agent.prompts import PromptError, render_text

    try:
        text = path.expanduser().read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"--system-prompt {str(path)!r} cannot be read: {err.__class__.__name__}") from None
    try:
        return render_text(text, variables)
    except PromptError as err:
        raise ConfigError(f"--system-prompt {str(path)!r}: {err.args[0]}") from None


def prompt_user(question: str) -> str | None:
    """Ask on the terminal; an empty answer or a closed stdin is no answer (the run stops with the question)."""
    try:
        return console.input(f"[bold yellow]? {escape(question)}[/]\n> ").strip() or None
    except EOFError:
        return None


def running_jobs(ctx) -> list[str]:
    """Kinds of the run's jobs that are still running on its platform (the platform's own status)."""
    if ctx.platform is None:
        return []
    out = []
    for kind in JOB_KINDS:
        try:
            if ctx.platform.status(ctx, kind).get("running"):
                out.append(kind)
        except (ToolError, OSError, ValueError):
            continue
    return out


def stop_jobs(ctx, kinds: list[str]) -> list[str]:
    """Stop the given jobs through the platform; returns one line per job."""
    lines = []
    for kind in kinds:
        try:
            ctx.platform.stop(ctx, kind)
            lines.append(f"stopped {kind}")
        except (ToolError, OSError) as err:
            lines.append(f"could not stop {kind}: {' '.join(str(err).split())[:200]}")
    return lines


def after_interrupt(ctx, interactive: bool) -> None:
    """After one Ctrl-C: say whether training still runs and how to stop or resume it; a second press stops it."""
    jobs = running_jobs(ctx)
    if not jobs:
        console.print("no job of this run is running; re-run the same command to resume")
        return
    d = ctx.run_dir
    console.print(escape(f"still running: {', '.join(jobs)} (detached). Stop it with `tao-finetune stop {d}`; "
                         f"re-running the same command resumes and picks it up"))  # the path is text, not markup
    if not interactive:
        return
    console.print(f"press Ctrl-C again within {SECOND_PRESS_S:.0f} s to stop {', '.join(jobs)} now")
    try:
        time.sleep(SECOND_PRESS_S)
    except KeyboardInterrupt:
        for line in stop_jobs(ctx, jobs):
            console.print(escape(line))
        ctx.session.event("note", text=f"second Ctrl-C: stopped {', '.join(jobs)}")


def system_vars(ctx) -> dict[str, Any]:
    """Variables for prompts/system.md."""
    from tao_finetune.agent import references, steps

    cfg = ctx.config
    dataset = cfg.dataset_id or cfg.local_dataset_path or "none given: recommend 3-5 and wait for the user's pick"
    return {
        "model_id": cfg.model_id,
        "dataset": f"{dataset} (source: {cfg.dataset_source})",
        "task_type": cfg.task_type or "not detected yet",
        "output_dir": str(ctx.run_dir),
        "platform": cfg.platform,
        "push_to_hub": cfg.push_to_hub,
        "credentials": ", ".join(f"{k}={'yes' if v else 'no'}" for k, v in ctx.creds.presence().items()),
        "user_set": ", ".join(cfg.user_set) or "none",
        "steps": steps.prompt_list(),
        "references": references.index(),
    }


def status_command(args: argparse.Namespace) -> int:
    try:
        return _status(args)
    except (ConfigError, SessionFormatError) as err:
        if not args.json:
            raise
        console.print(f"[red]error:[/] {escape(_one_line(err))}")
        print(json.dumps({"error": _one_line(err), "exit_code": int(EXIT_BAD_INPUT)}, indent=1))  # --json: stdout stays one object
        return EXIT_BAD_INPUT


def _status(args: argparse.Namespace) -> int:
    run_dir = args.output_dir.resolve()
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"no run in {str(run_dir)!r} (config.yaml missing)")
    state = RunState.load(run_dir, repair=False)  # read-only: a damaged state is repaired by the next `run`
    if state.load_note:
        console.print(f"[yellow]note:[/] {escape(state.load_note)} (not repaired: status only reads)")
    from tao_finetune.agent.lock import holder

    agent_pid = holder(run_dir)
    rows = {}
    for step in gates.GATES:
        res = gates.check(step, run_dir, state)
        rows[step] = {"name": gates.STEP_NAMES[step], "met": res.met, "missing": list(res.missing)}
    if args.json:
        from tao_finetune.agent.console import training_eta

        from tao_finetune.agent.metrics import tracking

        t = tracking(run_dir)
        print(json.dumps({"gates": rows, "training": training_eta(run_dir), "tracking": t.model_dump() if t else None,
                          "pending_question": state.pending_question, "agent_pid": agent_pid}, indent=1))
    else:
        for step, r in rows.items():
            print(f"{'✅' if r['met'] else '❌'} step {step} {r['name']}" + ("" if r["met"] else f": missing {', '.join(r['missing'])}"))
        from tao_finetune.agent.console import progress_line, training_eta

        train = training_eta(run_dir)
        if train and train.get("total"):
            print(progress_line(train))
        from tao_finetune.agent.metrics import tracking_lines

        for line in tracking_lines(run_dir):  # where the curves are: the TensorBoard command, the W&B run
            print(line)
        if state.pending_question:
            print(f"pending question: {state.pending_question}")
        if agent_pid is not None:
            print(f"running: the agent (PID {agent_pid}); `tao-finetune stop {run_dir}` stops it and its jobs")
    return EXIT_OK if all(r["met"] for r in rows.values()) else EXIT_GATE


def replay_command(args: argparse.Namespace) -> int:
    from tao_finetune.agent.prompts import render
    from tao_finetune.agent.replay import ReplayError, replay
    from tao_finetune.tools import all_tools

    session = args.session.expanduser().resolve()
    out = (args.output_dir or session.parent.with_name(session.parent.name + "-replay")).expanduser().resolve()
    load_credentials(args.env_file)  # a folder or non-UTF-8 --env-file: the one-line ConfigError, before anything is touched
    try:
        report = replay(session, out, args.mode, tools=all_tools(), platform_factory=make_platform,
                        system_for=lambda ctx: render("system.md", **system_vars(ctx)), env_file=args.env_file.expanduser(),
                        apply_answer=apply_answer)
    except ReplayError as err:
        console.print(f"[red]error:[/] {escape(_one_line(err))}")  # user text (paths, values): never rich markup
        return EXIT_BAD_INPUT
    for i, (code, rec) in enumerate(zip(report.exit_codes, report.recorded_exit_codes), start=1):
        print(f"invocation {i}/{report.segments}: exit {code} (recorded {rec if rec is not None else 'none'})")
    for d in report.divergences:
        print(f"DIVERGENCE {d.line()}")
    if not report.divergences:
        print(f"no divergence ({args.mode} replay in {out})")
    if report.divergences and args.strict:
        return ExitCode.DIVERGED
    return report.exit_code


def stop_command(args: argparse.Namespace) -> int:
    """Interrupt the agent holding DIR's lock (as a Ctrl-C would), then stop every running job of the run."""
    from tao_finetune.agent.context import RunContext
    from tao_finetune.agent.lock import holder
    from tao_finetune.agent.secrets import Credentials

    run_dir = args.dir.resolve()
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"no run in {str(run_dir)!r} (config.yaml missing)")
    cfg = load_config(run_dir / "config.yaml")
    cfg.output_dir = str(run_dir)
    lines = []
    pid = holder(run_dir)
    if pid is not None and pid != os.getpid():
        try:
            # SIGTERM, not SIGINT: a run started as a background job of a script (`tao-finetune run ... &`) inherits SIGINT
            # ignored, while main() turns SIGTERM into the same interrupt (exit 130, exit event, jobs reported)
            os.kill(pid, signal.SIGTERM)
            end = time.monotonic() + max(0.0, args.wait_s)
            while holder(run_dir) == pid and time.monotonic() < end:
                time.sleep(0.2)
            lines.append(f"interrupted the agent (PID {pid})" + ("" if holder(run_dir) != pid else ", which has not exited yet"))
        except ProcessLookupError:
            pass
        except PermissionError:
            lines.append(f"cannot signal the agent (PID {pid}): it belongs to another user")
    creds = Credentials.load()
    ctx = RunContext(cfg, SessionLog(run_dir / "session.jsonl", creds), creds, RunState.load(run_dir, repair=False))
    ctx.platform = make_platform(cfg)
    lines += stop_jobs(ctx, running_jobs(ctx))
    if len(lines) > (1 if pid else 0):
        ctx.session.event("note", text="tao-finetune stop: " + "; ".join(lines))
    print("\n".join(lines) if lines else f"nothing of {str(run_dir)!r} is running")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="tao-finetune", description="Fine-tune Hugging Face models on local NVIDIA GPUs, gated step by step.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(sub)
    add_chat_parser(sub)
    from tao_finetune.tools.hardware import add_doctor_parser, doctor_command
    from tao_finetune.tools.step1 import add_inspect_parser, inspect_command

    add_inspect_parser(sub)
    sub.choices["inspect"].set_defaults(handler=inspect_command)
    add_doctor_parser(sub)
    sub.choices["doctor"].set_defaults(handler=doctor_command)
    from tao_finetune.tools.k8s import add_render_k8s_parser

    add_render_k8s_parser(sub)
    sp = sub.add_parser("stop", help="stop a run: its agent (if running) and its jobs and containers",
                        description="Stop the run in DIR: interrupt its agent process (if one holds the dir) and stop its jobs/containers "
                                    "through the run's platform. Re-running the same `run` command resumes.")
    sp.add_argument("dir", type=Path, metavar="DIR", help="the run's output dir")
    sp.add_argument("--wait-s", type=float, default=30.0, help="how long to wait for the agent process to exit (default 30)")
    st = sub.add_parser("status", help="show which gates of a run dir hold, training progress with ETA, a pending question")
    st.add_argument("--output-dir", type=Path, required=True, help="the run's output dir")
    st.add_argument("--json", action="store_true", help="print one JSON object (gates, training, pending question)")
    rp = sub.add_parser("replay", help="replay a recorded session.jsonl and report where it departs from the recording",
                        description="Replay every invocation recorded in a session log (inputs are taken from the log). "
                                    "--mode model serves the recorded model turns and runs the tools; --mode full also serves "
                                    "the recorded tool outcomes (nothing runs). The first divergence of each invocation is reported.")
    rp.add_argument("session", type=Path, help="the session.jsonl to replay")
    rp.add_argument("--mode", choices=("model", "full"), default="model", help="model: tools run for real (default); full: nothing runs")
    rp.add_argument("--output-dir", type=Path, default=None, help="where the replay runs (default: <session folder>-replay); emptied first when it is an earlier replay's, refused when it holds other files")
    rp.add_argument("--strict", action="store_true", help="a divergence exits with code 6")
    rp.add_argument("--env-file", type=Path, default=Path("~/.config/tao/.env"), help="credentials for tools that need them (model mode)")
    rp.set_defaults(handler=replay_command)
    from tao_finetune.evals.harness import add_eval_parser, eval_command

    add_eval_parser(sub)
    sub.choices["eval"].set_defaults(handler=lambda a: eval_command(a, main))
    dm = sub.add_parser("demo", help="offline demo: a tiny ViT fine-tuned on real scikit-learn digits by the autopilot (no GPU, key or network)")
    dm.add_argument("--output-dir", type=Path, default=Path("./output/demo"))
    dm.add_argument("--inputs-dir", type=Path, default=Path("./output/demo-inputs"), help="where the demo model and data are written")
    dm.add_argument("--platform", choices=("local", "docker", "slurm"), default="local")
    dm.add_argument("--image", default=None, help="base image for --platform docker")
    dm.set_defaults(handler=demo_command)
    from tao_finetune.agent.completion import add_completion_parser, completion_command

    add_completion_parser(sub)
    sub.choices["completion"].set_defaults(handler=lambda a: completion_command(a, parser))
    return parser


from tao_finetune.agent.demo import DEMO_SETTINGS  # noqa: E402  (re-exported)


def demo_command(args: argparse.Namespace) -> int:
    from tao_finetune.agent.demo import demo_inputs

    console.print("building the demo model (2-layer ViT, random init) and data (sklearn digits as a 32 px imagefolder) ...")
    inputs = demo_inputs(args.inputs_dir.resolve())
    argv = ["run", "--model-id", inputs["model_id"], "--local-dataset-path", inputs["local_dataset_path"], "--output-dir", str(args.output_dir),
            "--llm", "autopilot", "--platform", args.platform, "--allow-cpu", "--no-push-to-hub", "--yes", *DEMO_SETTINGS]
    if args.image:
        argv += ["--image", args.image]
    return main(argv)


LAST_RESULT: "RunResult | None" = None  # noqa: F821  # the last run's result in this process (read by tao_finetune.run())


def run_with_result(args: argparse.Namespace) -> int:
    """`run`, then its RunResult: written to result.json, printed as JSON with --json, a usage line otherwise."""
    import contextlib
    import time

    from tao_finetune.agent.result import RunResult, build_result, write_result

    global LAST_RESULT
    LAST_RESULT = None
    t0 = time.monotonic()
    quiet_json = args.json and args.quiet
    if quiet_json:
        console.quiet = True
    sink = open(os.devnull, "w") if quiet_json else sys.stderr
    code, message = EXIT_ERROR, ""
    try:
        with contextlib.redirect_stdout(sink) if args.json else contextlib.nullcontext():
            code = run_command(args)
    except ConfigError as err:
        code, message = EXIT_BAD_INPUT, str(err)
        if not args.json:
            raise
        console.print(f"[red]error:[/] {escape(_one_line(err))}")
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - --json: stdout stays one RunResult, whatever failed
        if not args.json:
            raise
        console.quiet = False  # the one error line still reaches stderr
        code, message = _failure(err)
    finally:
        console.quiet = False
        if sink is not sys.stderr:
            sink.close()
    outcome = getattr(args, "outcome", None)
    if outcome and message:  # failed after the run dir opened: its result, with this failure as the message
        outcome = {"run_dir": outcome["run_dir"], "message": message}
    if outcome:
        result = build_result(outcome["run_dir"], code, outcome.get("message", ""), outcome.get("how"), time.monotonic() - t0)
        write_result(result)
        if result.usage.turns and not args.json and not args.quiet and args.llm != "autopilot":
            console.print(f"usage: {result.usage.line()}")
    else:
        status = {EXIT_BAD_INPUT: "bad_input", ExitCode.INTERRUPTED: "interrupted"}.get(code, "error")
        result = RunResult(status=status, exit_code=code, message=message,
                           output_dir=str(args.output_dir or ""), wall_s=round(time.monotonic() - t0, 2))
    LAST_RESULT = result
    if args.json:
        print(result.model_dump_json(indent=1))
    return code


def _bad_args_result(message: str, raw: list[str]) -> int:
    """`run --json` with flags argparse refused: the bad_input RunResult on stdout (and as LAST_RESULT)."""
    from tao_finetune.agent.result import RunResult

    global LAST_RESULT
    if "--quiet" not in raw:
        sys.stderr.write(message + "\n")
    out = next((raw[i + 1] for i, a in enumerate(raw[:-1]) if a == "--output-dir"), "")
    LAST_RESULT = RunResult(status="bad_input", exit_code=EXIT_BAD_INPUT, message=message, output_dir=out)
    print(LAST_RESULT.model_dump_json(indent=1))
    return EXIT_BAD_INPUT


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:400] or err.__class__.__name__


def _exit_event(code: int, message: str) -> None:
    """Write the session's exit event when a run ends outside the agent loop (never raises)."""
    session = _ACTIVE.get("session")
    if session is None:
        return
    try:
        session.event("exit", code=int(code), message=message)
    except Exception:  # noqa: BLE001 - the disk may be what failed
        pass


def main(argv: list[str] | None = None) -> int:
    """Every command ends in an exit code and, on failure, one line: never a traceback (a bug writes a crash report)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except BadArgs as err:
        raw = list(sys.argv[1:] if argv is None else argv)
        if raw[:1] == ["run"] and "--json" in raw:  # still one JSON result (tao_finetune.run() reads it too), never a bare line
            return _bad_args_result(err.message, raw)
        sys.stderr.write(err.message + "\n")
        return int(err.code)
    handlers = {"run": run_with_result, "status": status_command, "stop": stop_command}
    previous = _sigterm_as_ctrl_c()
    try:
        return _dispatch(args, handlers)
    finally:
        _ACTIVE.update(run_dir=None, session=None)
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _sigterm_as_ctrl_c():
    """SIGTERM (kill, systemd, a container stop) ends a command like Ctrl-C: exit 130, exit event written, jobs reported."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        return None


def _dispatch(args: argparse.Namespace, handlers: dict[str, Any]) -> int:
    try:
        if args.command in handlers:
            return handlers[args.command](args)
        return args.handler(args)
    except (Exception, KeyboardInterrupt) as err:  # noqa: BLE001 - every failure ends in one line (`_failure`)
        return _failure(err)[0]


def _credentials_redactor():
    """Redaction without a run's session (a crash before one opened): the environment's and the default .env's
    credentials, else the token patterns alone."""
    from tao_finetune.agent.secrets import Credentials

    try:
        return Credentials.load().redact
    except (OSError, ValueError):
        return Credentials({}).redact


def _failure(err: BaseException) -> tuple[int, str]:
    """A command's failure as one line on stderr (and the session's exit event): its exit code and that line.
    A bug (anything unexpected) also gets a crash report with the redacted traceback."""
    if isinstance(err, (ConfigError, SessionFormatError)):
        code, msg = EXIT_BAD_INPUT, _one_line(err)
    elif isinstance(err, LoopExit):  # e.g. the run dir is locked by another run (exit 2)
        console.print(f"[red]error:[/] {escape(_one_line(err))}")
        return err.code, _one_line(err)
    elif isinstance(err, ToolError):  # a platform that cannot be reached (stop, doctor)
        console.print(f"[red]error:[/] {escape(_one_line(err))}")
        return EXIT_ERROR, _one_line(err)
    elif isinstance(err, KeyboardInterrupt):
        console.print("[yellow]interrupted[/]: progress is saved; re-run the same command to resume")
        _exit_event(ExitCode.INTERRUPTED, "interrupted (Ctrl-C)")
        return ExitCode.INTERRUPTED, "interrupted (Ctrl-C): progress is saved; re-run the same command to resume"
    elif isinstance(err, OSError):  # the machine, not the code: a full disk, a vanished folder, permissions
        where = f": {err.filename}" if err.filename else ""
        code, msg = EXIT_ERROR, f"{err.strerror or _one_line(err)}{where}"
    else:  # a bug: one line here, the traceback in a crash report
        from tao_finetune.agent.loop import crash_report

        where = _ACTIVE.get("run_dir") or Path(os.environ.get("TMPDIR", "/tmp")) / "tao-finetune"
        session = _ACTIVE.get("session")
        redact = session.creds.redact if session else _credentials_redactor()
        path = crash_report(where, err, redact)
        code, msg = EXIT_ERROR, redact(f"internal error {err.__class__.__name__}: {_one_line(err)[:200]}; crash report: {path}")
    console.print(f"[red]error:[/] {escape(msg)}")
    _exit_event(code, msg)
    return code, msg


if __name__ == "__main__":
    sys.exit(main())
