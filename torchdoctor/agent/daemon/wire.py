"""The client's and the daemon's messages: length-prefixed JSON on a unix stream socket, the
request carrying the client's stdin, stdout, stderr and working folder as descriptors.

Stdlib only (the client imports it); the daemon validates what it receives with pydantic.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

MAX_MESSAGE = 1 << 20
MAX_FDS = 4
_LENGTH = struct.Struct("!I")


class WireError(Exception):
    """The other side closed early or sent something that is not a message."""


@dataclass
class Request:
    kind: Literal["audit", "ping", "stop"]
    fingerprint: str = ""
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Reply:
    status: Literal["accepted", "exit", "stale", "refused", "pong", "stopping"]
    code: int = 0
    reason: str = ""
    pid: int = 0
    fingerprint: str = ""


def send(sock: socket.socket, message: Request | Reply, fds: Sequence[int] = ()) -> None:
    body = json.dumps(asdict(message)).encode()
    data = _LENGTH.pack(len(body)) + body
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def receive(sock: socket.socket) -> tuple[dict[str, object], list[int]]:
    """The next message as JSON data, and the descriptors that came with it."""
    # The length alone first: the descriptors come with the first byte, and the next message
    # (a reply right after "accepted") must stay in the socket.
    head, fds, _flags, _addr = socket.recv_fds(sock, _LENGTH.size, MAX_FDS)
    while head and len(head) < _LENGTH.size:
        more = sock.recv(_LENGTH.size - len(head))
        if not more:
            break
        head += more
    if len(head) < _LENGTH.size:
        _close(fds)
        raise WireError("the connection closed before a message")
    (length,) = _LENGTH.unpack(head)
    if length > MAX_MESSAGE:
        _close(fds)
        raise WireError(f"a message of {length} bytes is over the limit")
    body = bytearray()
    while len(body) < length:
        more = sock.recv(length - len(body))
        if not more:
            _close(fds)
            raise WireError("the connection closed in the middle of a message")
        body += more
    try:
        data = json.loads(bytes(body[:length]))
    except ValueError as err:
        _close(fds)
        raise WireError("a message that is not JSON") from err
    if not isinstance(data, dict):
        _close(fds)
        raise WireError("a message that is not a JSON object")
    return data, fds


def receive_reply(sock: socket.socket) -> Reply:
    data, fds = receive(sock)
    _close(fds)
    try:
        return Reply(**data)  # type: ignore[arg-type]
    except TypeError as err:
        raise WireError(f"an unknown reply: {err}") from err


def _close(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)
