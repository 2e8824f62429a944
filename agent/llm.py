"""The LLM-client protocol and the Anthropic client (retries, prompt caching, cost accounting)."""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_before_delay, wait_exponential

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
        d = d if isinstance(d, dict) else {}

        def count(v: Any) -> int:
            try:
                return max(0, int(v or 0))
            except (TypeError, ValueError):
                return 0

        return cls(**{k: count(d.get(k)) for k in cls.__dataclass_fields__})


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


class LLMDeadline(LLMError):
    """The run's overall deadline (--max-hours) passed while waiting for the model."""


class MalformedResponse(Exception):
    """The API answered 200 with a body that is not a Messages-API message (retried like a 5xx)."""


# Replies above this many tokens are streamed: the SDK refuses non-streaming requests it expects to take
# over 10 minutes (anthropic 2.15 `_base_client._calculate_nonstreaming_timeout`: 3600 s * max_tokens / 128k > 600 s,
# i.e. above ~21k tokens, or above MODEL_NONSTREAMING_TOKENS for some models), and a stream keeps a long reply alive.
STREAM_ABOVE_TOKENS = 8192
REQUEST_TIMEOUT_S = 300.0  # per request (for a stream: the longest silence between two chunks)
MAX_ATTEMPTS = 5  # per call, 429/5xx/529/timeouts/malformed bodies; all within the run's deadline
WAIT_MAX_S = 30.0  # longest back-off between two attempts
CHARS_PER_TOKEN = 3.0  # conservative: fewer characters per token means a higher projected cost


def projected_cost_usd(model: str, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> float:
    """An upper estimate of one call's cost: the whole prompt uncached at the cache-write price plus a full max_tokens reply."""
    chars = len(system) + len(json.dumps(messages, default=str)) + len(json.dumps(tools, default=str))
    return cost_usd(model, Usage(cache_creation_input_tokens=int(chars / CHARS_PER_TOKEN), output_tokens=max_tokens))


def parse_message(data: Any) -> tuple[list[dict[str, Any]], str | None, dict[str, Any]]:
    """Content, stop reason and usage of a Messages-API body; MalformedResponse when it is not one."""
    if not isinstance(data, dict):
        raise MalformedResponse(f"the body is {type(data).__name__}, not a message object")
    content = data.get("content")
    if not isinstance(content, list) or not all(isinstance(b, dict) and isinstance(b.get("type"), str) for b in content):
        raise MalformedResponse("'content' is not a list of typed blocks")
    for b in content:
        if b["type"] == "tool_use" and not (isinstance(b.get("id"), str) and isinstance(b.get("name"), str) and isinstance(b.get("input"), dict)):
            raise MalformedResponse("a tool_use block lacks id, name or an object input")
    stop = data.get("stop_reason")
    if stop is not None and not isinstance(stop, str):
        raise MalformedResponse("'stop_reason' is not a string")
    usage = data.get("usage")
    return content, stop, usage if isinstance(usage, dict) else {}


def _transient(err: BaseException) -> bool:
    import anthropic

    if isinstance(err, (anthropic.APIConnectionError, anthropic.APIResponseValidationError, MalformedResponse, json.JSONDecodeError)):
        return True
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
    """The real model through the `anthropic` SDK; ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY are honoured.

    Each request has its own timeout; `deadline` (a time.monotonic() value, set by the loop from --max-hours) bounds
    the request and all its retries. Replies above STREAM_ABOVE_TOKENS are streamed (`messages.stream`, then
    `get_final_message()`). A 200 whose body is not a message is retried like a 5xx, then reported in one line.
    """

    name = "anthropic"

    def __init__(self, model: str | None = None, max_attempts: int | None = None, base_url: str | None = None, api_key: str | None = None,
                 wait_max: float | None = None, request_timeout: float | None = None, deadline: float | None = None):
        import anthropic  # here, not at module import: the SDK takes 1-4 s to import and autopilot/replay runs never use it

        self.model = model or os.environ.get("TAO_MODEL") or DEFAULT_MODEL
        self.client = anthropic.Anthropic(base_url=base_url, api_key=api_key, max_retries=0)
        self.max_attempts = max_attempts or MAX_ATTEMPTS
        self.wait_max = WAIT_MAX_S if wait_max is None else wait_max
        self.request_timeout = request_timeout or REQUEST_TIMEOUT_S
        self.deadline = deadline
        self.on_text: Any = None  # set (chat): every reply is streamed and its text deltas passed here as they arrive

    def projected_cost(self, *, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> float:
        return projected_cost_usd(self.model, system, messages, tools, max_tokens)

    def _left(self) -> float:
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def _once(self, **kw: Any) -> tuple[list[dict[str, Any]], str | None, dict[str, Any], str]:
        left = self._left()
        if left <= 0:
            raise LLMDeadline("the run's wall-time limit (--max-hours) passed while waiting for the model")
        timeout = min(self.request_timeout, left)  # a float: anthropic 2.15 rejects httpx objects (it uses httpx2)
        if kw["max_tokens"] > STREAM_ABOVE_TOKENS or self.on_text is not None:
            with self.client.messages.stream(**kw, timeout=timeout) as stream:
                if self.on_text is not None:  # anthropic 2.15 lib/streaming/_messages.py MessageStream.text_stream
                    for delta in stream.text_stream:
                        self.on_text(delta)
                msg = stream.get_final_message()
            data: Any = msg.model_dump(mode="json", exclude_none=True)
        else:
            raw = self.client.messages.with_raw_response.create(**kw, timeout=timeout)
            try:
                data = json.loads(raw.http_response.content)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise MalformedResponse(f"the body is not JSON ({err.__class__.__name__})") from None
        content, stop, usage = parse_message(data)
        return content, stop, usage, data.get("model") or self.model

    def create(self, *, system: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> LLMResponse:
        import anthropic

        sys_blocks, msgs, tls = with_cache_breakpoints(system, messages, tools)
        stop = stop_after_attempt(self.max_attempts)
        if self.deadline is not None:
            stop = stop | stop_before_delay(max(0.0, self._left()))
        retry = Retrying(retry=retry_if_exception(_transient), stop=stop, wait=wait_exponential(multiplier=0.5, max=self.wait_max), reraise=True)
        base = str(self.client.base_url)
        try:
            content, stop_reason, usage_d, model = retry(self._once, model=self.model, system=sys_blocks, messages=msgs, tools=tls, max_tokens=max_tokens)
        except (anthropic.AuthenticationError, anthropic.PermissionDeniedError) as err:
            raise LLMAuthError(f"the Anthropic API refused the credentials ({err.status_code}): set ANTHROPIC_API_KEY") from None
        except anthropic.APIStatusError as err:
            raise LLMError(f"the Anthropic API answered {err.status_code}: {' '.join(str(err.message).split())[:200]}") from None
        except anthropic.APITimeoutError:
            if self._left() <= 0:
                raise LLMDeadline(f"the run's wall-time limit (--max-hours) passed while waiting for the Anthropic API at {base!r}") from None
            raise LLMError(f"the Anthropic API at {base!r} did not answer within {self.request_timeout:.0f} s ({self.max_attempts} attempts)") from None
        except anthropic.APIConnectionError as err:
            raise LLMError(f"cannot reach the Anthropic API at {base!r}: {err.__class__.__name__}") from None
        except (MalformedResponse, anthropic.APIResponseValidationError, json.JSONDecodeError) as err:
            raise LLMError(f"the Anthropic API at {base!r} sent a malformed response {self.max_attempts} times: {' '.join(str(err).split())[:200]}") from None
        usage = Usage.from_dict(usage_d)
        return LLMResponse(content, stop_reason, model, usage, cost_usd(self.model, usage))
