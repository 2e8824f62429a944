"""The `tao-finetune` command: run the agent, inspect a model + dataset, audit the host, show or replay a run."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from tao_finetune.agent import gates
from tao_finetune.agent.config import ConfigError, RunConfig, apply_overrides, build_config, load_config
from tao_finetune.agent.session import SessionLog
from tao_finetune.agent.state import RunState

from tao_finetune.agent.errors import ExitCode

EXIT_OK, EXIT_ERROR, EXIT_BAD_INPUT, EXIT_ASK, EXIT_GATE = ExitCode.OK, ExitCode.BUG, ExitCode.BAD_INPUT, ExitCode.QUESTION, ExitCode.GATE_FAILED
console = Console(stderr=True, highlight=False, soft_wrap=True)
LLMS = ("anthropic", "autopilot", "replay")

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
    ("--wandb", "wandb"),
]


def add_run_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="fine-tune a model through the six gated steps (resumes an existing output dir)",
                       description="Fine-tune a Hugging Face model through the six gated steps. Re-running on the same output dir resumes at the first unmet gate.")
    for flag, key, typ in VALUE_FLAGS:
        p.add_argument(flag, dest=key, type=typ, default=None, metavar=key.upper())
    p.add_argument("--push-to-hub", dest="push_to_hub", action=argparse.BooleanOptionalAction, default=None, help="push the result to the Hub (default: on)")
    for flag, key in BOOL_FLAGS:
        p.add_argument(flag, dest=key, action="store_true", default=None)
    p.add_argument("--config", type=Path, help="a config.yaml to start from")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="set any config value (repeatable), e.g. --set learning_rate=1e-4")
    p.add_argument("--llm", choices=LLMS, default="anthropic", help="who drives the run: the Anthropic API (default), the built-in autopilot (no key, no network), or a replay")
    p.add_argument("--model", dest="llm_model", default=None, help="Anthropic model id (default: TAO_MODEL or a current Sonnet-class model)")
    p.add_argument("--replay", type=Path, help="session.jsonl to replay (with --llm replay)")
    p.add_argument("--answer", default=None, help="your answer to the question a previous run stopped on")
    p.add_argument("--request", default="", help="the request in your own words (kept in the session log)")
    p.add_argument("--yes", action="store_true", help="never prompt; a question ends the run with exit code 3")
    p.add_argument("--env-file", type=Path, default=Path("~/.config/tao/.env"), help="credentials file (default ~/.config/tao/.env)")
    p.add_argument("--max-steps", type=int, default=250, help="model turns at most")
    p.add_argument("--max-cost", type=float, default=25.0, help="USD at most for model calls")
    p.add_argument("--max-hours", type=float, default=24.0, help="wall time at most")
    p.add_argument("--quiet", action="store_true", help="print only the final summary")


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
    if args.config:
        data = load_config(args.config).model_dump(exclude_defaults=True)
    flags = {key: getattr(args, key) for _, key, _ in VALUE_FLAGS}
    flags.update({key: getattr(args, key) for _, key in BOOL_FLAGS})
    flags["push_to_hub"] = args.push_to_hub
    given = {k: v for k, v in flags.items() if v is not None}
    data.update(given)
    data, set_keys = apply_overrides(data, args.sets)
    if not data.get("model_id"):
        raise ConfigError("a model is required: --model-id ORG/NAME (or model_id in --config)")
    for key in ("local_dataset_path", "model_id"):
        value = data.get(key)
        if value and (key == "local_dataset_path" or value.startswith((".", "/", "~")) or Path(value).is_dir()):
            data[key] = str(Path(value).expanduser().resolve())
    out = Path(data.get("output_dir") or build_config({"model_id": data["model_id"]}).output_dir).resolve()
    existing = out / "config.yaml"
    user_keys = sorted((set(leaf_keys(data)) | set(set_keys)) - {"model_id"})
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
            if parts[-1] in src:
                node[parts[-1]] = src[parts[-1]]
        data = merged
    data["output_dir"] = str(out)
    cfg = build_config(data)
    return cfg, [k for k in user_keys if k != "output_dir"]


def make_platform(cfg: RunConfig):
    if cfg.platform == "local":
        from tao_finetune.tools.runtime.local import LocalPlatform

        return LocalPlatform()
    from tao_finetune.tools.runtime.docker import DockerPlatform

    return DockerPlatform()


def make_client(args: argparse.Namespace, ctx):
    if args.llm == "autopilot":
        from tao_finetune.agent.autopilot import AutopilotClient

        return AutopilotClient(ctx)
    if args.llm == "replay":
        from tao_finetune.agent.fakes import ReplayClient

        if not args.replay:
            raise ConfigError("--llm replay needs --replay SESSION.jsonl")
        return ReplayClient(args.replay)
    from tao_finetune.agent.llm import AnthropicClient

    if not (os.environ.get("ANTHROPIC_API_KEY") or os.environ.get("ANTHROPIC_AUTH_TOKEN")):
        raise ConfigError("ANTHROPIC_API_KEY is not set: export it, or use --llm autopilot (no key, no network)")
    return AnthropicClient(model=args.llm_model)


def echo_event(ev: dict[str, Any]) -> None:
    kind = ev["kind"]
    if kind == "tool_call":
        console.print(f"[cyan]→ {ev['name']}[/] {json.dumps(ev['input'])[:160]}")
    elif kind == "tool_result":
        mark = "[red]✗[/]" if ev["is_error"] else "[green]✓[/]"
        console.print(f"  {mark} {str(ev['content']).splitlines()[0][:200] if ev['content'] else ''}")
    elif kind == "gate" and ev["met"]:
        console.print(f"[bold green]gate {ev['step']} met[/] ({gates.STEP_NAMES[ev['step']]})")
    elif kind == "response":
        text = " ".join(b.get("text", "") for b in ev["content"] if b.get("type") == "text").strip()
        if text:
            console.print(f"[dim]{text[:400]}[/]")


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
    if (state.records.get("train") or {}).get("wandb_url"):
        lines.append(f"wandb: {state.records['train']['wandb_url']}")
    lines.append(f"samples: {run_dir / 'reports' / 'inference_samples'}")
    cfg_short = next(iter(sorted((run_dir / 'skills').glob('run-*/SKILL.md'))), None) if (run_dir / "skills").is_dir() else None
    lines.append(f"rerun skill: {cfg_short or 'not emitted'}")
    return "\n".join(lines)


def run_command(args: argparse.Namespace) -> int:
    from tao_finetune.agent.authority import user_recipe
    from tao_finetune.agent.context import RunContext
    from tao_finetune.agent.loop import Agent, Limits
    from tao_finetune.agent.prompts import render
    from tao_finetune.agent import steps
    from tao_finetune.agent.secrets import Credentials
    from tao_finetune.tools import all_tools

    cfg, user_keys = config_from_args(args)
    run_dir = cfg.out
    run_dir.mkdir(parents=True, exist_ok=True)
    creds = Credentials.load(args.env_file)
    session = SessionLog(run_dir / "session.jsonl", creds, echo=None if args.quiet else echo_event)
    state = RunState.load(run_dir)
    user_recipe(cfg, user_keys)
    ctx = RunContext(cfg, session, creds, state, yes=args.yes or not sys.stdin.isatty())
    ctx.platform = make_platform(cfg)
    ctx.save()
    client = make_client(args, ctx)
    tools = all_tools()
    steps.check_tools(tools)
    first = gates.first_unmet(run_dir, state)
    if first is None:
        console.print("[green]all six gates already met[/]")
        print(summary(run_dir, state))
        return EXIT_OK
    system = render("system.md", **system_vars(ctx))
    resume = f"Steps 1-{first - 1} are done (their gates hold); continue at step {first} ({gates.STEP_NAMES[first]})." if first > 1 else "Start at step 1."
    if args.answer:
        resume += f"\nThe previous run asked: {state.pending_question!r}. The user's answer: {args.answer}"
        session.event("user", question=state.pending_question, answer=args.answer)
        state.pending_question = None
    task = render("task.md", model_id=cfg.model_id, request=args.request or "(headless run; inputs are in config.yaml)", resume=resume)
    limits = Limits(max_steps=args.max_steps, max_cost_usd=args.max_cost, max_wall_s=args.max_hours * 3600)
    ask = None if ctx.yes else (lambda q: console.input(f"[bold yellow]? {q}[/]\n> ") or None)
    result = Agent(client, ctx, tools, system, limits, ask=ask).run(task)
    if result.code == EXIT_OK:
        console.print(f"[bold green]done[/]: {result.message}")
        print(summary(run_dir, state))
    elif result.code == EXIT_ASK:
        console.print(f"[bold yellow]question[/]: {result.message}")
        console.print(f"to answer: {getattr(result, 'how_to_answer', '') or 're-run the same command with --answer TEXT'}")
    else:
        console.print(f"[bold red]stopped[/]: {result.message}")
    return result.code


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
    run_dir = args.output_dir.resolve()
    if not (run_dir / "config.yaml").exists():
        console.print(f"[red]no run in {str(run_dir)!r}[/] (config.yaml missing)")
        return EXIT_BAD_INPUT
    state = RunState.load(run_dir)
    rows = {}
    for step in gates.GATES:
        res = gates.check(step, run_dir, state)
        rows[step] = {"name": gates.STEP_NAMES[step], "met": res.met, "missing": list(res.missing)}
    if args.json:
        print(json.dumps({"gates": rows, "pending_question": state.pending_question}, indent=1))
    else:
        for step, r in rows.items():
            print(f"{'✅' if r['met'] else '❌'} step {step} {r['name']}" + ("" if r["met"] else f": missing {', '.join(r['missing'])}"))
        if state.pending_question:
            print(f"pending question: {state.pending_question}")
    return EXIT_OK if all(r["met"] for r in rows.values()) else EXIT_GATE


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tao-finetune", description="Fine-tune Hugging Face models on local NVIDIA GPUs, gated step by step.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(sub)
    from tao_finetune.tools.hardware import add_doctor_parser, doctor_command
    from tao_finetune.tools.step1 import add_inspect_parser, inspect_command

    add_inspect_parser(sub)
    sub.choices["inspect"].set_defaults(handler=inspect_command)
    add_doctor_parser(sub)
    sub.choices["doctor"].set_defaults(handler=doctor_command)
    st = sub.add_parser("status", help="show which gates of a run dir hold")
    st.add_argument("--output-dir", type=Path, required=True)
    st.add_argument("--json", action="store_true")
    from tao_finetune.evals.harness import add_eval_parser

    add_eval_parser(sub)
    sub.choices["eval"].set_defaults(run_cli=main)  # the harness runs cases through this CLI, handed in (no import cycle)
    dm = sub.add_parser("demo", help="offline demo: a tiny ViT fine-tuned on real scikit-learn digits by the autopilot (no GPU, key or network)")
    dm.add_argument("--output-dir", type=Path, default=Path("./output/demo"))
    dm.add_argument("--inputs-dir", type=Path, default=Path("./output/demo-inputs"), help="where the demo model and data are written")
    dm.add_argument("--platform", choices=("local", "docker"), default="local")
    dm.add_argument("--image", default=None, help="base image for --platform docker")
    dm.set_defaults(handler=demo_command)
    return parser


from tao_finetune.agent.demo import DEMO_SETTINGS  # noqa: E402  (re-exported for callers of the CLI)


def demo_command(args: argparse.Namespace) -> int:
    from tao_finetune.agent.demo import demo_inputs

    console.print("building the demo model (2-layer ViT, random init) and data (sklearn digits as a 32 px imagefolder) ...")
    inputs = demo_inputs(args.inputs_dir.resolve())
    argv = ["run", "--model-id", inputs["model_id"], "--local-dataset-path", inputs["local_dataset_path"], "--output-dir", str(args.output_dir),
            "--llm", "autopilot", "--platform", args.platform, "--allow-cpu", "--no-push-to-hub", "--yes", *DEMO_SETTINGS]
    if args.image:
        argv += ["--image", args.image]
    return main(argv)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handlers = {"run": run_command, "status": status_command}
    try:
        if args.command in handlers:
            return handlers[args.command](args)
        return args.handler(args)
    except ConfigError as err:
        console.print(f"[red]error:[/] {err}")
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]: progress is saved; re-run the same command to resume")
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
