"""Tests never leave the machine: every client that could reach out is pointed at loopback before it is imported."""

import os

# A dead loopback port: anything that forgets its local server fails fast instead of going out.
os.environ.setdefault("HF_ENDPOINT", "http://127.0.0.1:9")
os.environ.setdefault("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["WANDB_MODE"] = "disabled"
# shared 2-core runners: more torch threads than free cores makes training spin (measured 50x slower)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.pop("HF_TOKEN", None)
os.environ.pop("ANTHROPIC_API_KEY", None)
