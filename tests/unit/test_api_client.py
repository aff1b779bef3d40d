"""The user's client against a small server on 127.0.0.1: a rate-limited event stream is
waited out as its Retry-After says and resumed where it was; a refusal is one line that says
when to retry. (A server restart mid-stream: tests/api/test_restart.py.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from torchdoctor.agent.audit import AuditChoices
from torchdoctor.api.client import Client, ClientError

STREAM = (
    'id: 1\nevent: state\ndata: {"state": "running"}\n\n'
    'id: 2\nevent: state\ndata: {"state": "done"}\n\n'
)


class Handler(BaseHTTPRequestHandler):
    asked: ClassVar[list[tuple[str, str | None, float]]] = []

    def do_GET(self) -> None:
        self.asked.append((self.path, self.headers.get("Last-Event-ID"), time.monotonic()))
        if len(self.asked) == 1:
            self._answer(429, b'{"detail": "slow down"}', "application/json", {"Retry-After": "1"})
        else:
            self._answer(200, STREAM.encode(), "text/event-stream", {})

    def do_POST(self) -> None:
        body = b'{"detail": "tenant acme already has 4 audits running"}'
        self._answer(429, body, "application/json", {"Retry-After": "30"})

    def _answer(self, code: int, body: bytes, kind: str, headers: dict[str, str]) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Handler.asked = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_rate_limited_stream_is_waited_out_then_followed(server: str) -> None:
    events = list(Client(server, "td_x_y").events("a1", after=0))
    assert [(e.id, e.data["state"]) for e in events] == [(1, "running"), (2, "done")]
    (first, _, at), (again, resumed_from, later) = Handler.asked
    assert first == again == "/v1/audits/a1/events" and resumed_from == "0"
    assert later - at >= 1.0


def test_a_refused_submission_says_when_to_retry(server: str) -> None:
    with pytest.raises(ClientError) as refused:
        Client(server, "td_x_y").submit(b"", AuditChoices())
    assert str(refused.value) == "429: tenant acme already has 4 audits running (retry after 30 s)"
