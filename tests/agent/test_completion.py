"""`tao-finetune completion bash|zsh`: the scripts parse, register, and complete what the CLI's parser defines."""

import shutil
import subprocess

import pytest

from tao_finetune.agent.cli import build_parser, main


def script(shell: str, capsys) -> str:
    assert main(["completion", shell]) == 0
    return capsys.readouterr().out


def bash(code: str) -> str:
    return subprocess.run(["bash", "--norc", "--noprofile", "-c", code], capture_output=True, text=True, timeout=60, check=True).stdout


def complete(path, *words: str) -> list[str]:
    """What bash offers after `tao-finetune WORDS...` (the last word is the one being completed)."""
    argv = " ".join(f"'{w}'" for w in ("tao-finetune", *words))
    return bash(f'source {path}; COMP_WORDS=({argv}); COMP_CWORD={len(words)}; _tao_finetune; printf "%s\\n" "${{COMPREPLY[@]}}"').split()


def test_bash_accepts_the_script_and_registers_the_completion(tmp_path, capsys):
    path = tmp_path / "tao.bash"
    path.write_text(script("bash", capsys))
    subprocess.run(["bash", "-n", str(path)], check=True, timeout=60)
    assert bash(f"source {path}; complete -p tao-finetune").strip() == "complete -o bashdefault -o default -F _tao_finetune tao-finetune"


def test_bash_completes_commands_flags_and_choices_from_the_parser(tmp_path, capsys):
    path = tmp_path / "tao.bash"
    path.write_text(script("bash", capsys))
    commands = set(build_parser()._subparsers._group_actions[0].choices)
    assert set(complete(path, "")) == commands | {"--help"}
    assert complete(path, "st") == ["stop", "status"]
    assert complete(path, "run", "--platform", "") == ["docker", "local", "slurm"]
    assert complete(path, "run", "--llm", "auto") == ["autopilot"]
    assert "text-classification" in complete(path, "run", "--task-type", "")
    assert complete(path, "run", "--no-push") == ["--no-push-to-hub"] and "--no-wandb" in complete(path, "run", "--no-w")
    assert complete(path, "replay", "--mode", "") == ["model", "full"]
    assert complete(path, "completion", "") == ["bash", "zsh"]
    assert complete(path, "run", "--model-id", "") == []  # a free value: nothing offered (bash falls back to files)
    (tmp_path / "my.yaml").write_text("model_id: a/b\n")
    assert bash(f'cd {tmp_path}; source {path}; COMP_WORDS=(tao-finetune run --config m); COMP_CWORD=3; _tao_finetune; echo "${{COMPREPLY[@]}}"').strip() == "my.yaml"


def test_zsh_accepts_the_script_and_compdef_registers_it(tmp_path, capsys):
    if shutil.which("zsh") is None:
        pytest.skip("zsh not installed (.ci/test-tools.sh installs it)")
    path = tmp_path / "_tao-finetune"
    text = script("zsh", capsys)
    path.write_text(text)
    assert text.startswith("#compdef tao-finetune\n")
    subprocess.run(["zsh", "-n", str(path)], check=True, timeout=60)
    out = subprocess.run(["zsh", "-f", "-c", f"autoload -U compinit && compinit -u -D && source {path} && print -r -- $_comps[tao-finetune]"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "_tao_finetune", out.stderr
    assert "'--platform=[where jobs run - docker containers, the local Python or a SLURM cluster (default - docker)]:platform:(docker local slurm)'" in text
