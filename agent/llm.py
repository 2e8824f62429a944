"""The LLM-client protocol and the Anthropic client (retries, prompt caching, cost accounting)."""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Protocol

import anthropic
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

DEFAULT_MODEL = "claude-sonnet-5-5"
# USD per million tokens (input, output); cache reads 0.1x input, 5-minute cache writes 1.25x.
PRICES: dict[str, tuple[float, float]] = {"haiku": (1.0, 5.0), "sonnet": (3.0, 15.0), "opus": (5.0, 25.0)}


@dataclass
class Usage:
    """Token counts of one call."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_input_tokens: int = 0
    cache_creation_input_tokens: int = 0

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Usage":
        d = d or {}
        return cls(**{k: int(d.get(k) or 0) for k in cls.__dataclass_fields__})


def cost_usd(model: str, usage: Usage) -> float:
    """List-price cost of one call; unknown model families are priced as Sonnet-class."""
    family = next((f for f in PRICES if f in model), "sonnet")
    pin, pout = PRICES[family]
    return (
        usage.input_tokens * pin
        + usage.cache_read_input_tokens * pin * 0.1
        + usage.cache_creation_input_tokens * pin * 1.25
        + usage.output_tokens * pout
    ) / 1e6


@dataclass
class LLMResponse:
    """One assistant turn in Messages-API shape."""

    content: list[dict[str, Any]]
    stop_reason: str | None
    model: str = ""
    usage: Usage = field(default_factory=Usage)
    cost: float = 0.0

    def tool_uses(self) -> list[dict[str, Any]]:
        return [b for b in self.content if b.get("type") == "tool_use"]

    def text(self) -> str:
        return "\n".join(b.get("text", "") for b in self.content if b.get("type") == "text").strip()


class LLMClient(Protocol):
    """Anything that answers a Messages-API request."""

    name: str

    def create(self, *, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> LLMResponse:
        """Return the next assistant turn."""
        ...


class LLMError(Exception):
    """The model service could not answer; the message is one line."""


class LLMAuthError(LLMError):
    """Credentials were refused; retrying will not help."""


def _transient(err: BaseException) -> bool:
    if isinstance(err, anthropic.APIConnectionError):
        return True
    if isinstance(err, anthropic.APIStatusError):
        return err.status_code in (408, 409, 429) or err.status_code >= 500
    return False


def with_cache_breakpoints(system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> tuple[list, list, list]:
    """Mark tools, system and the newest user turn as cacheable so a long run reads most input from cache."""
    cc = {"type": "ephemeral"}
    tools = [dict(t) for t in tools]
    if tools:
        tools[-1]["cache_control"] = cc
    sys_blocks = [{"type": "text", "text": system, "cache_control": cc}]
    messages = copy.deepcopy(messages)
    for msg in reversed(messages):
        if msg["role"] == "user":
            content = msg["content"]
            if isinstance(content, str):
                msg["content"] = content = [{"type": "text", "text": content}]
            if content:
                content[-1]["cache_control"] = cc
            break
    return sys_blocks, messages, tools


class AnthropicClient:
    """The real model through the `anthropic` SDK; ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY are honoured."""

    name = "anthropic"

    def __init__(self, model: str | None = None, max_attempts: int = 5, base_url: str | None = None, api_key: str | None = None, wait_max: float = 30.0):
        self.model = model or os.environ.get("TAO_MODEL") or DEFAULT_MODEL
        self.client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0)
        self.max_attempts = max_attempts
        self.wait_max = wait_max

    def create(self, *, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> LLMResponse:
        sys_blocks, msgs, tls = with_cache_breakpoints(system, messages, tools)
        retry = Retrying(
            retry=retry_if_exception(_transient),
            stop=stop_after_attempt(self.max_attempts),
            wait=wait_exponential(multiplier=0.5, max=self.wait_max),
            reraise=True,
        )
        try:
            msg = retry(self.client.messages.create, model=self.model, system=sys_blocks, messages=msgs, tools=tls, max_tokens=max_tokens)
        except (anthropic.AuthenticationError, anthropic.PermissionDeniedError) as err:
            raise LLMAuthError(f"the Anthropic API refused the credentials ({err.status_code}): set ANTHROPIC_API_KEY") from None
        except anthropic.APIStatusError as err:
            raise LLMError(f"the Anthropic API answered {err.status_code}: {str(err.message)[:200]}") from None
        except anthropic.APIConnectionError as err:
            raise LLMError(f"cannot reach the Anthropic API at {str(self.client.base_url)!r}: {err.__class__.__name__}") from None
        data = msg.model_dump(mode="json", exclude_none=True)
        usage = Usage.from_dict(data.get("usage"))
        return LLMResponse(data.get("content", []), data.get("stop_reason"), data.get("model", self.model), usage, cost_usd(self.model, usage))
