"""`tao-finetune inspect`: Step 1 on its own (no LLM): probe model and dataset, detect the task, verify columns, verdict."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any, get_args

from tao_finetune.agent import gates, policy
from tao_finetune.agent.errors import ExitCode
from tao_finetune.agent.config import ConfigError, DatasetFormat, TaskType, apply_overrides, build_config, check_output_dir
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools.base import NeedsUser, ToolError
from tao_finetune.tools.dataset import probe_dataset_facts
from tao_finetune.tools.probe import hub_env, probe_model_facts
from tao_finetune.tools.task import qualify_config

EXIT_ACCEPT, EXIT_REJECT, EXIT_ASK = ExitCode.OK, ExitCode.BAD_INPUT, ExitCode.QUESTION
MODEL_KEYS = ("model_id", "source", "model_type", "architectures", "pipeline_tag", "library_name", "license", "gated", "param_count",
              "bf16_gb", "num_attention_heads", "num_key_value_heads", "gqa", "image_size", "max_length", "num_labels",
              "processor_class", "image_processor_type", "tokenizer_class")
DATASET_KEYS = ("source", "dataset_id", "path", "format", "format_evidence", "splits", "columns", "label_names", "label_counts", "issues", "bbox_format")


def add_inspect_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `inspect` on the CLI's subparsers."""
    p = subparsers.add_parser("inspect", help="run Step 1 alone: probe model and dataset, detect the task, verify columns, accept/reject")
    p.add_argument("--model-id", required=True, help="Hub model id or local model folder")
    ds = p.add_mutually_exclusive_group()
    ds.add_argument("--dataset-id", help="Hub dataset id")
    ds.add_argument("--local-dataset-path", help="local dataset folder or file")
    p.add_argument("--local-dataset-format", choices=get_args(DatasetFormat), default="auto")
    p.add_argument("--dataset-config", default=None, help="Hub dataset configuration name")
    p.add_argument("--task-type", choices=get_args(TaskType), default=None)
    p.add_argument("--output-dir", type=Path, default=None, help="keep the config.yaml skeleton here (default: a temporary dir)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="set a config value, e.g. --set columns.label=sentiment (repeatable)")
    p.set_defaults(handler=inspect_command)
    return p


def _run(cfg_data: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    cfg = build_config({**cfg_data, "output_dir": str(out_dir)})
    creds = Credentials.load()
    ctx = RunContext(cfg, SessionLog(out_dir / "session.jsonl", creds), creds)
    report: dict[str, Any] = {"model_id": cfg.model_id}
    try:
        with hub_env(creds.env(["HF_TOKEN"])):
            cfg.model_facts = probe_model_facts(cfg.model_id, creds.present("HF_TOKEN"))
            model = cfg.model_facts.model_dump(mode="json")
            report["model"] = {k: model[k] for k in MODEL_KEYS}
            if cfg.dataset_id or cfg.local_dataset_path:
                cfg.dataset_facts = probe_dataset_facts(cfg, creds.present("HF_TOKEN"))
                dataset = cfg.dataset_facts.model_dump(mode="json", exclude_none=True)
                report["dataset"] = {k: dataset[k] for k in DATASET_KEYS if k in dataset}
                report["flags"] = policy.instruction_flags([str(x) for x in cfg.dataset_facts.label_names], "label") + \
                    policy.instruction_flags([str(c) for c in cfg.dataset_facts.columns], "column")
        result = qualify_config(cfg)
        ctx.save()
        report.update(result)
        report["columns"] = cfg.project.columns.model_dump(exclude_none=True)
        report["split_plan"] = cfg.project.splits.model_dump()
        report["skip_files"] = len(cfg.project.skip_files)
        if result["verdict"] == "accept":
            gate = gates.check(1, ctx.run_dir, ctx.state)
            report["gate1"] = "met" if gate.met else f"missing: {', '.join(gate.missing)}"
        report["exit_code"] = EXIT_ACCEPT if result["verdict"] == "accept" else EXIT_REJECT
        report["message"] = "accepted" if result["verdict"] == "accept" else "rejected: " + "; ".join(result["reasons"])
    except ToolError as err:
        report.update(verdict="reject", exit_code=EXIT_REJECT, message=str(err))
    except NeedsUser as q:
        report.update(verdict="needs_user", exit_code=EXIT_ASK, message=q.question, how_to_answer=q.how_to_answer)
    report["task_type"] = cfg.task_type
    report["notes"] = list(cfg.notes)
    report.setdefault("applicable_workarounds", cfg.applicable_workarounds)
    report["model"] = report.get("model") or None
    return json.loads(creds.redact(json.dumps(report, default=str)))


def _print_human(r: dict[str, Any]) -> None:
    print(f"verdict: {r['verdict']}  ({r['message']})")
    if r.get("how_to_answer"):
        print(f"answer: {r['how_to_answer']}")
    print(f"task: {r.get('task_type')}")
    m = r.get("model") or {}
    if m:
        print(f"model: {m.get('model_id')} [{m.get('source')}] type={m.get('model_type')} arch={','.join(m.get('architectures') or [])}"
              f" params={m.get('param_count')} bf16={m.get('bf16_gb')} GB heads={m.get('num_attention_heads')}/{m.get('num_key_value_heads')}"
              f" license={m.get('license')} gated={m.get('gated')}")
    d = r.get("dataset") or {}
    if d:
        print(f"dataset: format={d.get('format')} ({d.get('format_evidence')})")
        print(f"  splits: {d.get('splits')}")
        for col, info in (d.get("columns") or {}).items():
            extra = {k: v for k, v in info.items() if k != "type"}
            print(f"  column {col}: {info.get('type')}" + (f" {json.dumps(extra)}" if extra else ""))
        names = d.get("label_names") or []
        print(f"  labels ({len(names)}): {', '.join(map(str, names[:20]))}{' ...' if len(names) > 20 else ''}")
        for split, counts in (d.get("label_counts") or {}).items():
            print(f"  counts {split}: {json.dumps(counts)[:300]}")
        for i in d.get("issues") or []:
            print(f"  issue [{i['level']}] {i['kind']} x{i['count']}: {i['message']}")
    cols = r.get("columns") or {}
    for role, col in cols.items():
        if role != "evidence":
            print(f"column role {role}: {col!r}" + (f" ({cols['evidence'][role]})" if role in cols.get("evidence", {}) else ""))
    if r.get("column_renames"):
        print(f"column renames: {r['column_renames']}")
    if r.get("layout"):
        print(f"layout: {json.dumps(r['layout'])}")
    print(f"applicable workarounds: {r.get('applicable_workarounds')}")
    for f in r.get("flags") or []:
        print(f"warning: {f}")
    for n in r.get("notes") or []:
        print(f"note: {n}")


def inspect_command(args: argparse.Namespace) -> int:
    """Run Step 1 and print the findings; exit 0 accept, 2 reject or bad input, 3 needs a user decision."""
    data: dict[str, Any] = {"model_id": args.model_id, "dataset_id": args.dataset_id, "local_dataset_path": args.local_dataset_path,
                            "local_dataset_format": args.local_dataset_format, "dataset_config": args.dataset_config}
    user_set = ["task_type"] if args.task_type else []
    if args.task_type:
        data["task_type"] = args.task_type
    try:
        data, keys = apply_overrides(data, args.sets)
        data["user_set"] = sorted(set(user_set) | set(keys))
        if args.output_dir:
            check_output_dir(args.output_dir.resolve())
            report = _run(data, args.output_dir.resolve())
        else:
            with tempfile.TemporaryDirectory(prefix="tao-inspect-") as tmp:
                report = _run(data, Path(tmp))
    except ConfigError as err:
        report = {"verdict": "reject", "exit_code": EXIT_REJECT, "message": str(err)}
    if args.json:
        print(json.dumps(report, default=str))
    else:
        _print_human(report)
    return report["exit_code"]
