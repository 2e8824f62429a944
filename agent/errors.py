"""Every error and exit the core knows, and the one table of exit codes.

Tools raise ToolError (the model sees it) or NeedsUser (the run stops with a question); the loop ends with a
LoopExit whose `code` is an ExitCode. Anything else is a bug.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """Process exit codes of every `tao-finetune` command (documented in the README)."""

    OK = 0
    BUG = 1
    BAD_INPUT = 2
    QUESTION = 3
    GATE_FAILED = 4
    LIMIT = 5
    DIVERGED = 6  # `replay --strict`: the replay departed from the recording
    INTERRUPTED = 130


class ToolError(Exception):
    """An expected failure: the message goes back to the model as an is_error tool result."""


class NeedsUser(Exception):
    """The agent must stop and ask the user; the run ends with exit code 3 and can be resumed."""

    def __init__(self, question: str, how_to_answer: str = ""):
        super().__init__(question)
        self.question = question
        self.how_to_answer = how_to_answer


class LoopExit(Exception):
    """Ends the run with an exit code and a message."""

    code: int = ExitCode.BUG

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class Done(LoopExit):
    code = ExitCode.OK


class BadInput(LoopExit):
    code = ExitCode.BAD_INPUT


class GateFailed(LoopExit):
    code = ExitCode.GATE_FAILED


class LimitReached(LoopExit):
    code = ExitCode.LIMIT


class Interrupted(LoopExit):
    code = ExitCode.INTERRUPTED


class AskUser(LoopExit):
    code = ExitCode.QUESTION

    def __init__(self, question: str, how_to_answer: str = ""):
        super().__init__(question)
        self.how_to_answer = how_to_answer
