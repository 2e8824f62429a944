"""Credentials: loaded from ~/.config/tao/.env and the environment, passed on by name, never shown."""

from __future__ import annotations

import base64
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

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
    """Parse KEY=VALUE lines (optional 'export', quotes); missing file gives {}. The one reader of credentials files: a
    folder, bytes that are not UTF-8 or an unreadable file is a ConfigError in one line (exit 2), for every command."""
    from tao_finetune.agent.config import ConfigError

    out: dict[str, str] = {}
    where = f"--env-file {str(path)!r}"
    if path.expanduser().exists() and not path.expanduser().is_file():
        raise ConfigError(f"{where} is not a file (a KEY=VALUE text file is expected)")
    try:
        lines = path.expanduser().read_bytes().decode("utf-8").splitlines()
    except FileNotFoundError:
        return out
    except UnicodeDecodeError as err:
        raise ConfigError(f"{where} is not UTF-8 text (byte {err.start})") from None
    except OSError as err:
        raise ConfigError(f"{where} cannot be read: {err.strerror}") from None
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

    def secrets(self) -> list[str]:
        """The secret values long enough to search for (WANDB_PROJECT is a name, not a secret)."""
        return [v for k, v in self._values.items() if k in SECRET_NAMES and len(v) >= 4]

    def forms(self) -> list[str]:
        """Every searchable form of every secret: plain, base64 (std + url-safe, any alignment), hex, reversed."""
        out: set[str] = set()
        for val in self.secrets():
            out |= encoded_forms(val)
        return sorted(out, key=len, reverse=True)

    def redact(self, text: str) -> str:
        """Remove every secret value (in any encoded form) and anything that looks like a token."""
        for form in self.forms():
            if form in text:
                text = text.replace(form, REDACTED)
        return redact_patterns(text)

    def leaks_in(self, data: bytes) -> bool:
        """Whether raw bytes (text or binary) hold a secret in any form, or a token-like string."""
        if any(form.encode() in data for form in self.forms()):
            return True
        text = data.decode("latin-1")
        return redact_patterns(text) != text

    def scan_file(self, path: Path, chunk: int = 8 << 20) -> bool:
        """Whether a file of any size holds a secret in any form (read in overlapping chunks)."""
        forms = [f.encode() for f in self.forms()]
        overlap = max((len(f) for f in forms), default=0) + 256
        tail = b""
        with path.open("rb") as f:
            while True:
                block = f.read(chunk)
                if not block:
                    return False
                if self.leaks_in(tail + block):
                    return True
                tail = block[-overlap:]

    def scrub_file(self, path: Path) -> bool:
        """Rewrite a file with every secret form replaced (text: '[REDACTED]'; binary: 'X' of the same length); True if changed."""
        data = path.read_bytes()
        if not self.leaks_in(data):
            return False
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
        if text is not None and "\x00" not in text:
            new = self.redact(text).encode()
        else:
            new = data
            for form in self.forms():
                new = new.replace(form.encode(), b"X" * len(form))
            latin = new.decode("latin-1")
            for pat in PATTERNS:
                latin = pat.sub(lambda m: "X" * len(m.group(0)), latin)
            new = latin.encode("latin-1")
        tmp = path.with_name(f".{path.name}.scrub")
        tmp.write_bytes(new)
        os.replace(tmp, path)
        return True


def _b64_core(raw: bytes, encode) -> set[str]:
    """The base64 characters fixed by `raw` alone, at each of the 3 byte alignments it can have inside a longer stream."""
    out = set()
    for k in range(3):
        enc = encode(b"\0" * k + raw + b"\0\0\0").decode()
        first = -(-8 * k // 6)
        last = (8 * (k + len(raw))) // 6
        core = enc[first:last]
        if len(core) >= 8:
            out.add(core)
    return out


def encoded_forms(value: str) -> set[str]:
    """A secret as the forms a job might use to smuggle it past plain redaction."""
    raw = value.encode()
    forms = {value, value[::-1], raw.hex(), raw.hex().upper()}
    forms |= _b64_core(raw, base64.b64encode) | _b64_core(raw, base64.urlsafe_b64encode)
    forms |= _b64_core(value[::-1].encode(), base64.b64encode)
    return {f for f in forms if len(f) >= 4}


def redact_patterns(text: str) -> str:
    """Pattern-based redaction for tokens we were not told about."""
    for pat in PATTERNS:
        text = pat.sub(lambda m: (m.group(1) if m.groups() else "") + REDACTED, text)
    return text
