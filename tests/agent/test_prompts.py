import pytest

from tao_finetune.agent.prompts import PromptError, load, render, render_text


def test_strict_rendering():
    assert render_text("a {{ x }} b {{y}}", {"x": 1, "y": 2}) == "a 1 b 2"
    with pytest.raises(PromptError, match="missing prompt variables: y"):
        render_text("{{ x }} {{ y }}", {"x": 1})
    with pytest.raises(PromptError, match="unused prompt variables: z"):
        render_text("{{ x }}", {"x": 1, "z": 2})


def test_shipped_prompts_render_with_their_variables():
    assert "{{" in load("system.md")
    text = render("task.md", model_id="m", request="r", resume="go")
    assert "m" in text and "{{" not in text
    with pytest.raises(PromptError):
        render("system.md", model_id="m")
