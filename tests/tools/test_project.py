"""write_file confinement and the header rule, scaffold rendering with compat fixes, the preflight summary."""

import json
import os

import pytest

from tao_finetune.agent.config import RunConfig, Sourced
from tao_finetune.agent.context import RunContext
from tao_finetune.agent.secrets import Credentials
from tao_finetune.agent.session import SessionLog
from tao_finetune.tools import project
from tao_finetune.tools.base import NoArgs, ToolError

PY = project.HEADER + "print('hi')\n"


def make_ctx(tmp_path, **fields) -> RunContext:
    base = {"model_id": "google/vit-base-patch16-224", "task_type": "image-classification", "dataset_id": "cifar10",
            "output_dir": str(tmp_path / "run"), "ngc_image": "nvcr.io/nvidia/pytorch:25.01-py3",
            "applicable_workarounds": []}
    cfg = RunConfig(**{**base, **fields})
    creds = Credentials({"HF_TOKEN": "hf_" + "z" * 30})
    ctx = RunContext(cfg, SessionLog(cfg.out / ".tao" / "session.jsonl", creds), creds)
    ctx.save()
    return ctx


def write(ctx, path, content):
    return project.write_file.fn(ctx, project.WriteFileArgs(path=path, content=content))


def test_write_file_writes_inside_the_output_dir(tmp_path):
    ctx = make_ctx(tmp_path)
    out = write(ctx, "src/train.py", PY)
    assert out == {"path": "src/train.py", "bytes": len(PY)}
    assert (ctx.run_dir / "src" / "train.py").read_text() == PY
    write(ctx, "README.md", "no header needed\n")
    write(ctx, "tests/test_data.py", PY)
    write(ctx, "Dockerfile", "FROM x\n")
    assert (ctx.run_dir / "README.md").exists() and (ctx.run_dir / "tests" / "test_data.py").exists()


@pytest.mark.parametrize("path", ["config.yaml", "session.jsonl", ".tao/state.json", "reports/smoke.json", "reports/eval_results.json",
                                  "checkpoints/final/model.safetensors", "logs/train.log", "meta/preflight.json", "skills/run-x/SKILL.md",
                                  "data/meta.json", "model.safetensors", "weights.bin", ".env", "sub/.hidden.py", "./config.yaml",
                                  "Reports/x.json", "PROGRESS.md"])
def test_write_file_writes_only_project_sources(tmp_path, path):
    ctx = make_ctx(tmp_path)
    target = ctx.run_dir / path
    before = target.read_bytes() if target.exists() else None
    with pytest.raises(ToolError, match="write_file refuses"):
        write(ctx, path, "{}")
    assert (target.read_bytes() if target.exists() else None) == before


@pytest.mark.parametrize("path", ["/etc/passwd", "../escape.txt", "a/../../escape.txt"])
def test_write_file_refuses_absolute_and_parent_paths(tmp_path, path):
    ctx = make_ctx(tmp_path)
    with pytest.raises(ToolError):
        write(ctx, path, "x")
    assert not (tmp_path / "escape.txt").exists()


def test_write_file_refuses_a_symlink_escape(tmp_path):
    ctx = make_ctx(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, ctx.run_dir / "link")
    with pytest.raises(ToolError, match="outside"):
        write(ctx, "link/evil.txt", "x")
    assert list(outside.iterdir()) == []


def test_write_file_refuses_a_symlink_into_a_tool_owned_path(tmp_path):
    ctx = make_ctx(tmp_path)
    before = (ctx.run_dir / "config.yaml").read_text()
    os.symlink(ctx.run_dir / "config.yaml", ctx.run_dir / "settings.yaml")
    (ctx.run_dir / "reports").mkdir()
    os.symlink(ctx.run_dir / "reports", ctx.run_dir / "src")
    for path in ("settings.yaml", "src/eval_results.json"):
        with pytest.raises(ToolError, match="write_file refuses"):
            write(ctx, path, "{}")
    assert (ctx.run_dir / "config.yaml").read_text() == before and not (ctx.run_dir / "reports" / "eval_results.json").exists()


def test_write_file_refuses_python_without_the_header(tmp_path):
    ctx = make_ctx(tmp_path)
    with pytest.raises(ToolError, match="copyright header"):
        write(ctx, "train.py", "import torch\n")
    with pytest.raises(ToolError):
        write(ctx, "train.py", "# Copyright NVIDIA\n" + PY)
    assert not (ctx.run_dir / "train.py").exists()
    write(ctx, "run.py", "#!/usr/bin/env python\n" + PY)


def test_render_scaffold_fills_the_image_and_applies_compat_fixes(tmp_path):
    ctx = make_ctx(tmp_path, applicable_workarounds=["numpy2-abi", "sdpa-gqa-old-ngc", "ngc-entrypoint", "trust-remote-code"])
    out = project.render_scaffold.fn(ctx, project.RenderArgs())
    run = ctx.run_dir
    for f in ("Dockerfile", "requirements.txt", "prepare_data.py", "train.py", "run_eval.py", "infer.py", ".gitignore",
              "common.py", "sources.py", "task.py"):
        assert (run / f).is_file(), f
    docker = (run / "Dockerfile").read_text()
    assert docker.startswith("# Rendered") and "FROM nvcr.io/nvidia/pytorch:25.01-py3" in docker
    assert "{" not in docker and not any(ln.startswith("ENTRYPOINT") for ln in docker.splitlines())
    assert docker.index("pip install") < docker.index("TAO_ATTN_IMPLEMENTATION") < docker.index("COPY *.py")
    reqs = (run / "requirements.txt").read_text().splitlines()
    assert "numpy<2" in reqs and "numpy" not in reqs
    assert json.loads((run / "meta" / "runtime_env.json").read_text()) == {"TAO_ATTN_IMPLEMENTATION": "eager"}
    assert out["applied_workarounds"] == ["numpy2-abi", "sdpa-gqa-old-ngc", "ngc-entrypoint"]
    assert out["not_applied"] == ["trust-remote-code"]
    assert all(project.has_header((run / f).read_text()) for f in out["written"] if f.endswith(".py"))


def test_render_scaffold_keeps_edited_files_unless_overwrite(tmp_path):
    ctx = make_ctx(tmp_path, task_type="text-classification")
    project.render_scaffold.fn(ctx, project.RenderArgs())
    write(ctx, "train.py", PY)
    again = project.render_scaffold.fn(ctx, project.RenderArgs())
    assert "train.py" in again["kept"] and (ctx.run_dir / "train.py").read_text() == PY
    project.render_scaffold.fn(ctx, project.RenderArgs(overwrite=True))
    assert "AutoModelForSequenceClassification" in (ctx.run_dir / "task.py").read_text()
    assert (ctx.run_dir / "train.py").read_text() != PY


@pytest.mark.parametrize("task,own", [("image-classification", False), ("image-text-to-text", True)])
def test_render_scaffold_writes_one_train_py_the_task_own_one_replacing_the_common_one(tmp_path, task, own):
    ctx = make_ctx(tmp_path, task_type=task, model_id="HuggingFaceTB/SmolVLM-256M-Instruct" if own else "google/vit-base-patch16-224")
    out = project.render_scaffold.fn(ctx, project.RenderArgs())
    assert out["written"].count("train.py") == 1 and "train.py" not in out["kept"]
    names = [f.name for f in project.scaffold_files(task)]
    assert len(names) == len(set(names))
    src = project.SCAFFOLDS / (task if own else "common") / "train.py"
    text = (ctx.run_dir / "train.py").read_text()
    assert text == src.read_text() and "for step in range(start, total):" in text  # the loop itself, not a shim


def test_render_scaffold_refuses_tasks_without_a_scaffold_and_missing_images(tmp_path, monkeypatch):
    monkeypatch.setattr(project, "SCAFFOLD_TASKS", ("image-classification", "text-classification"))
    with pytest.raises(ToolError, match="no scaffold"):
        project.render_scaffold.fn(make_ctx(tmp_path / "a", task_type="object-detection"), project.RenderArgs())
    with pytest.raises(ToolError, match="no base image"):
        project.render_scaffold.fn(make_ctx(tmp_path / "b", ngc_image=None), project.RenderArgs())


def test_render_requirements_replaces_a_listed_package():
    text = "# comment\ntransformers>=5.0\nnumpy\n"
    assert project.render_requirements(text, ["numpy<2"]) == "# comment\ntransformers>=5.0\nnumpy<2\n"


def ready_for_preflight(ctx):
    ctx.config.recipe = {"model_class": Sourced(value="AutoModelForImageClassification", rank="live",
                                                source="https://huggingface.co/google/vit-base-patch16-224")}
    ctx.config.research_sources = ["https://huggingface.co/google/vit-base-patch16-224"]
    ctx.config.hf_model_repo = "me/vit-base-patch16-224-finetuned"
    ctx.config.gpu_count, ctx.config.gpu_name, ctx.config.vram_gb_per_gpu, ctx.config.driver_major = 1, "NVIDIA H100", 80.0, 580
    ctx.save()
    (ctx.run_dir / "data").mkdir()
    (ctx.run_dir / "data" / "meta.json").write_text(json.dumps(
        {"columns": ["image", "label"], "label_names": list("abcdefghij"), "n_train": 100, "n_eval": 20}))
    (ctx.run_dir / "reports").mkdir()
    (ctx.run_dir / "reports" / "smoke.json").write_text(json.dumps({"passed": True, "loss": 2.3, "grad_norm": 1.5}))


def test_preflight_prints_a_box_and_writes_the_fields(tmp_path, capsys):
    ctx = make_ctx(tmp_path, column_renames={"img": "image"})
    ready_for_preflight(ctx)
    out = project.preflight.fn(ctx, NoArgs())
    printed = capsys.readouterr().out
    assert "PREFLIGHT" in printed and printed.strip() == out["summary"]
    lines = out["summary"].splitlines()
    assert lines[0].startswith("┌─ PREFLIGHT") and lines[-1].startswith("└") and len({len(x) for x in lines}) == 1
    data = json.loads((ctx.run_dir / "meta" / "preflight.json").read_text())
    assert set(data) == set(project.PREFLIGHT_FIELDS) and all(data.values())
    assert data["push_target"] == "https://huggingface.co/me/vit-base-patch16-224-finetuned"
    assert "img->image" in data["columns"] and "PASSED" in data["smoke"] and "H100" in data["hardware"]
    assert data["image"] == "nvcr.io/nvidia/pytorch:25.01-py3" and data["wandb"] == "disabled"


def test_preflight_refuses_blank_fields(tmp_path, capsys):
    ctx = make_ctx(tmp_path, wandb=True)
    ready_for_preflight(ctx)
    (ctx.run_dir / "reports" / "smoke.json").write_text(json.dumps({"passed": False}))
    with pytest.raises(ToolError) as err:
        project.preflight.fn(ctx, NoArgs())
    assert "smoke" in str(err.value) and "wandb" in str(err.value)
    assert not (ctx.run_dir / "meta" / "preflight.json").exists()
    assert "(BLANK)" in capsys.readouterr().out


def test_project_readme_commands_exist_and_help_only_prints_help(tmp_path):
    """The generated README's commands name the project's scripts; each script's --help prints help and writes nothing."""
    import re
    import subprocess
    import sys

    ctx = make_ctx(tmp_path, task_type="text-classification", gpu_count=1)
    out = project.render_scaffold.fn(ctx, project.RenderArgs())
    run = ctx.run_dir
    assert "README.md" in out["written"]
    readme = (run / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    with_docker, without = (b.strip().splitlines() for b in blocks)
    assert with_docker[0] == "docker build -t run-vit-base-patch16-224:latest ." and all("--gpus all" in c for c in with_docker[1:])
    assert without[0] == "python -m pip install -r requirements.txt"
    assert [c.split()[1] for c in without[1:]] == ["prepare_data.py", "train.py", "run_eval.py", "train.py", "run_eval.py", "infer.py"]
    assert [c.split("run-vit-base-patch16-224:latest ")[1] for c in with_docker[1:]] == without[1:]
    for name in ("prepare_data.py", "train.py", "run_eval.py", "infer.py", "task.py", "common.py", "sources.py"):
        assert f"| `{name}` |" in readme
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    scripts = sorted({cmd.split()[1] for cmd in without[1:]})
    procs = {name: subprocess.Popen([sys.executable, name, "--help"], cwd=run, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}) for name in scripts}
    for name, proc in procs.items():
        stdout, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0 and stdout.startswith(f"usage: {name}"), (name, stderr[-500:])
    assert sorted(p.relative_to(run) for p in run.rglob("*") if "__pycache__" not in p.parts) == \
        [p for p in before if "__pycache__" not in p.parts]
