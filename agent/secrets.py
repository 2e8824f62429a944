"""Credentials: loaded from ~/.config/tao/.env and the environment, passed on by name, never shown."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

KNOWN = ("HF_TOKEN", "WANDB_API_KEY", "WANDB_PROJECT", "ANTHROPIC_API_KEY", "NGC_API_KEY")
SECRET_NAMES = ("HF_TOKEN", "WANDB_API_KEY", "ANTHROPIC_API_KEY", "NGC_API_KEY", "HUGGING_FACE_HUB_TOKEN")
PATTERNS = (
    re.compile(r"hf_[A-Za-z0-9]{20,}"),
    re.compile(r"sk-ant-[A-Za-z0-9_\-]{20,}"),
    re.compile(r"(?i)(wandb[_-]?api[_-]?key\s*[=:]\s*)[A-Za-z0-9]{20,}"),
    re.compile(r"\b[a-f0-9]{40}\b(?=.*wandb)", re.IGNORECASE),
)
REDACTED = "[REDACTED]"
DEFAULT_ENV_FILE = Path("~/.config/tao/.env")


def parse_env_file(path: Path) -> dict[str, str]:
    """Parse KEY=VALUE lines (optional 'export', quotes); missing file gives {}."""
    out: dict[str, str] = {}
    try:
        lines = path.expanduser().read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, val = line.removeprefix("export ").split("=", 1)
        out[key.strip()] = val.strip().strip("'\"")
    return out


@dataclass
class Credentials:
    """Secret values held out of sight; only names and presence are ever exposed."""

    _values: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, env_file: Path | None = DEFAULT_ENV_FILE) -> "Credentials":
        """Environment first, then the .env file for what the environment lacks."""
        values = parse_env_file(env_file) if env_file else {}
        values.update({k: v for k, v in os.environ.items() if k in KNOWN or k in SECRET_NAMES})
        return cls({k: v for k, v in values.items() if v})

    def present(self, name: str) -> bool:
        """Whether a credential is set (the only thing the model learns)."""
        return bool(self._values.get(name))

    def presence(self) -> dict[str, bool]:
        """Presence booleans for every known credential."""
        return {k: self.present(k) for k in KNOWN}

    def env(self, names: tuple[str, ...] | list[str] = KNOWN) -> dict[str, str]:
        """Values for a child process environment (never for logs or the model)."""
        return {k: self._values[k] for k in names if k in self._values}

    def redact(self, text: str) -> str:
        """Remove every secret value and anything that looks like a token."""
        for name in SECRET_NAMES:
            val = self._values.get(name)
            if val and len(val) >= 4:
                text = text.replace(val, REDACTED)
        return redact_patterns(text)


def redact_patterns(text: str) -> str:
    """Pattern-based redaction for tokens we were not told about."""
    for pat in PATTERNS:
        text = pat.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    return text
