"""The spec's four example pipelines ship as recorded eval cases that replay deterministically under --strict, through
`tao-finetune eval` and `tao-finetune replay --mode full`; an edited recording is caught; the inputs build offline."""

import json
import sys
from pathlib import Path

import pytest

from tao_finetune.agent.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_cases import CASES, PIPELINES, build_inputs  # noqa: E402

IDS = [f"pipeline-{name}" for name in PIPELINES]
METRIC = {"image-classification": "accuracy", "object-detection": "map", "semantic-segmentation": "mean_iou",
          "image-text-to-text": "exact_match"}


def test_eval_replays_the_four_pipelines_and_scores_them(tmp_path, capsys):
    argv = ["eval", "--out", str(tmp_path), "--json"]
    for cid in IDS:
        argv += ["--case", cid]
    assert main(argv) == 0
    scores = {s["id"]: s for s in json.loads((tmp_path / "results.json").read_text())}
    assert sorted(scores) == sorted(IDS)
    for cid, s in scores.items():
        assert s["passed"] and s["exit_code"] == 0 and s["gates_met"] == [1, 2, 3, 4, 5, 6], s
        assert s["primary_metric"] is not None and s["baseline_metric"] is not None and s["steps"] >= 20, s
    assert scores["pipeline-image-classification"]["primary_metric"] > 0.85
    assert scores["pipeline-image-text-to-text"]["primary_metric"] > scores["pipeline-image-text-to-text"]["baseline_metric"]


@pytest.mark.parametrize("name", list(PIPELINES))
def test_each_recording_is_a_real_run_of_its_pipeline_and_replays_strictly(name, tmp_path, capsys):
    session = CASES / f"pipeline-{name}.session.jsonl"
    events = [json.loads(line) for line in session.read_text().splitlines()]
    start = next(e for e in events if e["kind"] == "start")
    assert events[0] == {**events[0], "kind": "session", "version": 2} and start["client"] == "autopilot"
    detected = [json.loads(e["content"])["task_type"] for e in events if e["kind"] == "tool_result" and e["name"] == "qualify"]
    assert (start["config"]["task_type"] or detected[0]) == name and start["config"]["platform"] == "local"
    calls = [e["input"].get("job") for e in events if e["kind"] == "tool_call" and e["name"] == "docker_run"]
    assert {"prepare", "smoke", "baseline", "train", "eval", "infer"} <= set(calls)
    if name == "image-text-to-text":
        assert "merge" in calls  # a LoRA VLM run: the adapter merged (checkpoints/merged) before eval
    evals = [json.loads(e["content"]) for e in events if e["kind"] == "tool_result" and not e["is_error"]
             and '"job": "eval"' in e["content"][:20]]
    assert evals and evals[-1]["primary_metric"] == METRIC[name]
    code = main(["replay", str(session), "--mode", "full", "--strict", "--output-dir", str(tmp_path / "replay")])
    assert code == 0, capsys.readouterr().out
    assert "no divergence" in capsys.readouterr().out


@pytest.mark.parametrize("name,metric", [("image-classification", "accuracy"),  # a later model turn read the result
                                         ("object-detection", "map")])  # the invocation's last result: none did
def test_an_edited_recording_fails_its_case(name, metric, tmp_path, capsys):
    cid = f"pipeline-{name}"
    lines = (CASES / f"{cid}.session.jsonl").read_text().splitlines()
    i = max(k for k, line in enumerate(lines) if '"kind": "tool_result"' in line and '\\"job\\": \\"eval\\"' in line)
    edited = lines[i].replace(f'\\"{metric}\\": 0.', f'\\"{metric}\\": 0.99', 1)
    assert edited != lines[i]
    lines[i] = edited
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / "edited.session.jsonl").write_text("\n".join(lines) + "\n")
    (cases / "edited.yaml").write_text((CASES / f"{cid}.yaml").read_text().replace(cid, "edited"))
    assert main(["eval", "--cases-dir", str(cases), "--out", str(tmp_path / "out"), "--json"]) == 1
    score = json.loads((tmp_path / "out" / "results.json").read_text())[0]
    assert score["exit_code"] == 6 and any("exit code 6" in f for f in score["failures"])
    assert "DIVERGENCE" in capsys.readouterr().out


def test_the_case_inputs_build_offline_and_step_1_accepts_them(tmp_path, capsys):
    for name in ("object-detection", "semantic-segmentation", "image-text-to-text"):
        flags = build_inputs(name, tmp_path / name)
        inputs = flags[: flags.index("--local-dataset-path") + 2]
        assert Path(inputs[1]).is_dir() and Path(inputs[3]).exists()
        assert main(["inspect", *inputs, "--json"]) == 0, capsys.readouterr()
        facts = json.loads(capsys.readouterr().out)
        assert facts["task_type"] == name, facts
