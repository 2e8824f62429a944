"""Tools' view of the core: the @tool decorator and the errors a tool may raise (re-exported from agent/)."""

from __future__ import annotations

from tao_finetune.agent.errors import NeedsUser, ToolError  # noqa: F401  (re-exported: tools raise these)
from tao_finetune.agent.tooling import REGISTRY, NoArgs, Step, Tool, format_validation_error, tool  # noqa: F401
