"""A local stand-in for the Anthropic Messages API that plays scripted replies."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

Reply = tuple[int, dict[str, Any]] | dict[str, Any] | Callable[[dict[str, Any]], "tuple[int, dict[str, Any]] | dict[str, Any]"]


def message(content: list[dict[str, Any]], stop_reason: str, n: int = 0) -> dict[str, Any]:
    """A realistic Messages API body."""
    return {"id": f"msg_{n:04d}", "type": "message", "role": "assistant", "model": "claude-sonnet-5-5", "content": content,
            "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": 1200, "output_tokens": 80, "cache_read_input_tokens": 900, "cache_creation_input_tokens": 0}}


def tool_use(name: str, args: dict[str, Any] | None = None, id: str = "toolu_1", text: str = "") -> dict[str, Any]:
    content = ([{"type": "text", "text": text}] if text else []) + [{"type": "tool_use", "id": id, "name": name, "input": args or {}}]
    return message(content, "tool_use")


def end_turn(text: str = "done") -> dict[str, Any]:
    return message([{"type": "text", "text": text}], "end_turn")


def error(status: int, kind: str) -> tuple[int, dict[str, Any]]:
    return status, {"type": "error", "error": {"type": kind, "message": f"{kind} (scripted)"}}


@dataclass
class Raw:
    """A reply sent byte for byte (malformed bodies, wrong content types)."""

    body: bytes
    status: int = 200
    content_type: str = "application/json"


@dataclass
class Hang:
    """A reply that never comes: the server sleeps, then drops the connection."""

    seconds: float = 30.0


def sse(payload: dict[str, Any]) -> bytes:
    """A message body as the Messages API streams it (message_start ... message_stop)."""
    events: list[tuple[str, dict[str, Any]]] = []
    start = {**payload, "content": [], "stop_reason": None, "usage": {**payload.get("usage", {}), "output_tokens": 0}}
    events.append(("message_start", {"type": "message_start", "message": start}))
    for i, block in enumerate(payload.get("content", [])):
        if block["type"] == "text":
            events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": block["text"]}}))
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": i, "content_block": {**block, "input": {}}}))
            events.append(("content_block_delta", {"type": "content_block_delta", "index": i,
                                                   "delta": {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}}))
        events.append(("content_block_stop", {"type": "content_block_stop", "index": i}))
    events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": payload.get("stop_reason"), "stop_sequence": None},
                                     "usage": {"output_tokens": payload.get("usage", {}).get("output_tokens", 0)}}))
    events.append(("message_stop", {"type": "message_stop"}))
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events)


class FakeAnthropic:
    """Serves POST /v1/messages from a queue of replies; records each request."""

    def __init__(self, replies: list[Reply]):
        self.replies = list(replies)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
                outer.requests.append(body)
                outer.headers.append(dict(self.headers))
                auth = self.headers.get("x-api-key") or self.headers.get("authorization")
                if not self.path.startswith("/v1/messages"):
                    status, payload = error(404, "not_found_error")
                elif not auth:
                    status, payload = error(401, "authentication_error")
                elif not outer.replies:
                    status, payload = error(500, "api_error")
                else:
                    reply = outer.replies.pop(0)
                    reply = reply(body) if callable(reply) else reply
                    if isinstance(reply, Hang):
                        time.sleep(reply.seconds)
                        return
                    if isinstance(reply, Raw):
                        self.send_response(reply.status)
                        self.send_header("content-type", reply.content_type)
                        self.send_header("content-length", str(len(reply.body)))
                        self.end_headers()
                        self.wfile.write(reply.body)
                        return
                    status, payload = reply if isinstance(reply, tuple) else (200, reply)
                if body.get("stream") and status == 200:
                    data = sse(payload)
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    return
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.send_header("x-should-retry", "false")
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeAnthropic":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
