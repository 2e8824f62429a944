"""tao-finetune: a gated LLM agent that fine-tunes Hugging Face models on local NVIDIA GPUs."""

__version__ = "0.1.0"
