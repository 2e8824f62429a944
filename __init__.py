"""tao-finetune: a gated LLM agent that fine-tunes Hugging Face models on local NVIDIA GPUs.

Python API: ``from tao_finetune import run, RunResult`` (see agent/api.py). Imported lazily, so ``import tao_finetune``
stays cheap.
"""

__version__ = "0.1.0"
__all__ = ["run", "RunResult", "__version__"]


def __getattr__(name: str):
    if name == "run":
        from tao_finetune.agent.api import run

        return run
    if name == "RunResult":
        from tao_finetune.agent.result import RunResult

        return RunResult
    raise AttributeError(f"module 'tao_finetune' has no attribute {name!r}")
