"""A scripted OpenAI-compatible HTTP server on 127.0.0.1, standing in for a hosted model.

It is not a model: each test scripts the replies (`Reply`) that `/v1/chat/completions` returns,
in order, and `/v1/models` reports the model and, optionally, its context length. It counts every
request (so tests can assert that a cached re-run made none) and fills each response's `usage`
with a deterministic token estimate (characters / 4), the way a real server reports tokens.
The capability probe (a json_schema request named `torchdoctor_probe`) is answered without
consuming the script: 200 when structured outputs are on, 400 otherwise.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def tokens(chars: int) -> int:
    return (chars + 3) // 4


@dataclass
class Reply:
    """One scripted answer: a message (content and/or tool calls) or an HTTP error."""

    content: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    status: int = 200
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    document: Any = None
    """A whole response body to send as is (odd endpoints), instead of a built completion."""

    @classmethod
    def raw(cls, document: Any) -> Reply:
        return cls(document=document)

    @classmethod
    def json(cls, payload: Any) -> Reply:
        return cls(content=json.dumps(payload))

    @classmethod
    def error(cls, status: int, **headers: str) -> Reply:
        return cls(status=status, headers=headers)

    @classmethod
    def tool(cls, name: str, arguments: dict[str, Any], call_id: str = "call_1") -> Reply:
        call = {
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments)},
        }
        return cls(tool_calls=[call])


EMPTY_ANSWER: dict[str, list[Any]] = {"points": []}
"""A valid answer that adds nothing, for any batch of points."""


class StubLLM:
    def __init__(
        self,
        model: str = "stub-model",
        structured_outputs: bool = True,
        json_object: bool = True,
        context_length: int | None = None,
        refuses: tuple[str, ...] = (),
        fallback: Callable[[dict[str, Any]], Reply] | None = None,
        models_document: Any = None,
        probe_document: Any = None,
    ) -> None:
        self.model = model
        self.structured_outputs = structured_outputs
        self.json_object = json_object
        self.context_length = context_length
        self.models_document = models_document
        """`GET /v1/models`'s whole body when set (odd endpoints), else a list with the model."""
        self.probe_document = probe_document
        """The capability probe's whole answer when set (odd endpoints)."""
        self.refuses = refuses
        """Request parameters this 'model' rejects, as OpenAI's reasoning models do."""
        self.fallback = fallback or (lambda _request: Reply.json(EMPTY_ANSWER))
        self.script: deque[Reply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.chat_calls = 0
        self.probe_calls = 0
        self.model_calls = 0
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def http_calls(self) -> int:
        return self.chat_calls + self.probe_calls + self.model_calls

    def push(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def reset_counts(self) -> None:
        with self._lock:
            self.requests.clear()
            self.chat_calls = self.probe_calls = self.model_calls = 0
            self.prompt_tokens = self.completion_tokens = 0

    def __enter__(self) -> StubLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- request handling -------------------------------------------------------------------

    def _answer_chat(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        fmt = body.get("response_format") or {}
        is_probe = fmt.get("type") == "json_schema" and (
            fmt.get("json_schema", {}).get("name") == "torchdoctor_probe"
        )
        with self._lock:
            self.requests.append(body)
            if is_probe:
                self.probe_calls += 1
            else:
                self.chat_calls += 1
        for name in self.refuses:
            if name in body:
                message = f"Unsupported parameter: '{name}' is not supported with this model."
                return 400, _error(message), {}
        if fmt.get("type") == "json_schema" and not self.structured_outputs:
            return 400, _error("response_format json_schema is not supported"), {}
        if fmt.get("type") == "json_object" and not self.json_object:
            return 400, _error("response_format json_object is not supported"), {}
        if is_probe:
            if self.probe_document is not None:
                return 200, self.probe_document, {}
            return 200, self._completion(body, Reply.json({"ok": True})), {}
        with self._lock:
            reply = self.script.popleft() if self.script else None
        reply = reply or self.fallback(body)
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if reply.delay_s:
            time.sleep(reply.delay_s)
        with self._lock:
            self.in_flight -= 1
        if reply.status != 200:
            return reply.status, _error(f"scripted HTTP {reply.status}"), reply.headers
        if reply.document is not None:
            return 200, reply.document, reply.headers
        return 200, self._completion(body, reply), reply.headers

    def _completion(self, body: dict[str, Any], reply: Reply) -> dict[str, Any]:
        sent = sum(len(str(m.get("content") or "")) for m in body.get("messages", []))
        sent += len(json.dumps(body["tools"])) if body.get("tools") else 0
        produced = len(reply.content or "") + len(json.dumps(reply.tool_calls or []))
        usage = {"prompt_tokens": tokens(sent), "completion_tokens": tokens(produced)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        with self._lock:
            self.prompt_tokens += usage["prompt_tokens"]
            self.completion_tokens += usage["completion_tokens"]
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.tool_calls:
            message["tool_calls"] = reply.tool_calls
        return {
            "id": f"chatcmpl-{self.chat_calls}",
            "object": "chat.completion",
            "created": 0,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if reply.tool_calls else "stop",
                }
            ],
            "usage": usage,
        }

    def _models(self) -> Any:
        with self._lock:
            self.model_calls += 1
        if self.models_document is not None:
            return self.models_document
        entry: dict[str, Any] = {
            "id": self.model,
            "object": "model",
            "created": 0,
            "owned_by": "stub",
        }
        if self.context_length is not None:
            entry["max_model_len"] = self.context_length
        return {"object": "list", "data": [entry]}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def _send(self, status: int, payload: Any, headers: dict[str, str]) -> None:
                text = payload if isinstance(payload, str) else json.dumps(payload)
                data = text.encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    return

            def do_GET(self) -> None:
                if self.path.rstrip("/").endswith("/v1/models"):
                    self._send(200, stub._models(), {})
                else:
                    self._send(404, _error("not found"), {})

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                if self.path.rstrip("/").endswith("/v1/chat/completions"):
                    self._send(*stub._answer_chat(body))
                else:
                    self._send(404, _error("not found"), {})

        return Handler


def _error(message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "code": None}}
