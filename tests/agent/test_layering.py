"""The core imports no tools: only the CLI (the composition root) wires tools/ and evals/ in."""

import ast
from pathlib import Path

from tao_finetune.agent import steps
from tao_finetune.agent.autopilot import ACTIONS
from tao_finetune.tools import all_tools

AGENT = Path(steps.__file__).resolve().parent


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports included)."""
    mods: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            mods.add(node.module)
            mods |= {f"{node.module}.{a.name}" for a in node.names}
    return mods


def test_no_core_module_imports_tools_or_evals():
    offenders = {}
    for path in sorted(AGENT.glob("*.py")):
        if path.name == "cli.py":
            continue
        bad = sorted(m for m in imported_modules(path) if m.startswith(("tao_finetune.tools", "tao_finetune.evals")))
        if bad:
            offenders[path.name] = bad
    assert not offenders, f"agent/ modules other than cli.py import tools/evals: {offenders}"


def test_the_import_check_catches_a_function_level_import(tmp_path):
    f = tmp_path / "x.py"
    f.write_text("def later():\n    from tao_finetune.tools.research import reference_recipe\n")
    assert "tao_finetune.tools.research" in imported_modules(f)


def test_evals_do_not_import_the_cli():
    harness = AGENT.parent / "evals" / "harness.py"
    assert not any(m.startswith("tao_finetune.agent.cli") for m in imported_modules(harness))


def test_every_tool_is_in_the_steps_table_with_its_own_step():
    tools = all_tools()
    steps.check_tools(tools)  # raises on a mismatch
    assert {t.name for t in tools} == set(steps.ANY_STEP_TOOLS) | {n for s in steps.STEPS for n in s.tools}


def test_a_tool_declaring_another_step_is_caught():
    from tao_finetune.agent.tooling import NoArgs, tool

    def probe_model(ctx, args: NoArgs) -> dict:
        """Probe in the wrong step."""

    wrong = tool(step=3, register=False)(probe_model)
    try:
        steps.check_tools([wrong])
    except ValueError as err:
        assert "step 3" in str(err) and "step 1" in str(err)
    else:
        raise AssertionError("a tool in the wrong step was accepted")


def test_autopilot_rules_and_prompt_follow_the_table():
    for act in ACTIONS:
        if act.tool != "docker_run":
            assert steps.step_of(act.tool) == act.step
    text = steps.prompt_list()
    for s in steps.STEPS:
        assert f"{s.number}. " in text and all(t in text for t in s.tools)
    assert steps.step_of("read_reference") == steps.ANY


def test_no_tool_imports_the_cli():
    """tools/ are wired in by the CLI, never the reverse (step1's output-dir check lives in agent/config.py)."""
    tools_dir = AGENT.parent / "tools"
    offenders = {str(p.relative_to(tools_dir)): sorted(m for m in imported_modules(p) if m.startswith("tao_finetune.agent.cli"))
                 for p in sorted(tools_dir.rglob("*.py"))}
    assert not {k: v for k, v in offenders.items() if v}, offenders


def test_an_autopilot_run_never_imports_the_anthropic_sdk():
    """The SDK takes 1-4 s to import, on the critical path before the job runner starts: the CLI, the autopilot and
    every tool load without it; only AnthropicClient imports it."""
    import subprocess
    import sys

    code = ("import sys, tao_finetune.agent.cli, tao_finetune.agent.autopilot, tao_finetune.agent.loop, tao_finetune.tools\n"
            "tao_finetune.tools.all_tools()\n"
            "print('anthropic' in sys.modules)\n"
            "from tao_finetune.agent.llm import AnthropicClient\n"
            "AnthropicClient(api_key='x', base_url='http://127.0.0.1:9')\n"
            "print('anthropic' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.split() == ["False", "True"], out.stdout
