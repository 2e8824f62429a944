import pytest
from pydantic import BaseModel, Field, ValidationError

from tao_finetune.tools import all_tools
from tao_finetune.tools.base import Tool, format_validation_error, tool


class Args(BaseModel):
    path: str = Field(description="where")
    n: int = Field(3, ge=1, description="how many")


def test_schema_is_derived_from_the_arguments_and_docstring():
    @tool(step=2, register=False)
    def thing(ctx, args: Args) -> str:
        """Do the thing."""
        return "ok"

    assert isinstance(thing, Tool) and thing.step == 2
    schema = thing.schema()
    assert schema["name"] == "thing" and schema["description"] == "Do the thing."
    assert schema["input_schema"]["required"] == ["path"]
    assert schema["input_schema"]["properties"]["n"]["minimum"] == 1


def test_tools_without_descriptions_do_not_register():
    with pytest.raises(TypeError, match="no docstring"):
        @tool(step=1, register=False)
        def silent(ctx, args: Args) -> str:
            return "x"

    class Bare(BaseModel):
        x: int

    with pytest.raises(TypeError, match="argument 'x' has no description"):
        @tool(step=1, register=False)
        def bare(ctx, args: Bare) -> str:
            """Doc."""

    with pytest.raises(TypeError, match="pydantic model"):
        @tool(step=1, register=False)
        def untyped(ctx, args) -> str:
            """Doc."""


def test_validation_errors_are_listed():
    with pytest.raises(ValidationError) as err:
        Args.model_validate({"n": 0})
    text = format_validation_error(err.value)
    assert "- path: Field required" in text and "- n:" in text


def test_every_shipped_tool_has_a_step_a_description_and_a_schema():
    tools = all_tools()
    names = {t.name for t in tools}
    assert {"probe_model", "probe_dataset", "qualify", "audit_hardware", "select_image", "fetch_docs", "record_recipe", "write_file",
            "docker_build", "docker_run", "train_status", "preflight", "hf_push", "emit_rerun_skill", "read_file", "ask_user"} <= names
    for t in tools:
        assert t.description and 0 <= t.step <= 6
        assert t.schema()["input_schema"]["type"] == "object"
    by_name = {t.name: t for t in tools}
    assert by_name["hf_push"].step == 6 and by_name["probe_model"].step == 1
