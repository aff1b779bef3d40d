"""The shapes of the client's and the daemon's messages (JSON objects on the wire).

TypedDicts, so the stdlib-only client builds and reads them as plain dicts without importing
`typing` at run time (it names them in annotations only), while the daemon validates every
request against them with pydantic.
"""

from __future__ import annotations

from typing import Literal

from typing_extensions import TypedDict  # pydantic validates typing.TypedDict only from 3.12

RequestKind = Literal["audit", "ping", "stop"]
ReplyStatus = Literal["accepted", "exit", "stale", "refused", "pong", "stopping"]


class Request(TypedDict):
    kind: RequestKind
    fingerprint: str
    argv: list[str]
    env: dict[str, str]


class Reply(TypedDict):
    status: ReplyStatus
    code: int
    reason: str
    pid: int
    fingerprint: str
