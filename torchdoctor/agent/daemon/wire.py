"""The client's and the daemon's messages: length-prefixed JSON on a unix stream socket, the
request carrying the client's stdin, stdout, stderr and working folder as descriptors.

Stdlib only and light (the hook's client imports it on every call): the message shapes live in
`messages`, which only the daemon imports at run time (to validate requests with pydantic).
"""

from __future__ import annotations

import json
import os
import socket
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from torchdoctor.agent.daemon.messages import Reply, ReplyStatus, Request, RequestKind

MAX_MESSAGE = 1 << 20
MAX_FDS = 4
REPLY_STATUSES = frozenset({"accepted", "exit", "stale", "refused", "pong", "stopping"})
_LENGTH = struct.Struct("!I")


class WireError(Exception):
    """The other side closed early or sent something that is not a message."""


def request(
    kind: RequestKind,
    fingerprint: str = "",
    argv: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Request:
    return {"kind": kind, "fingerprint": fingerprint, "argv": list(argv), "env": env or {}}


def reply(
    status: ReplyStatus, code: int = 0, reason: str = "", pid: int = 0, fingerprint: str = ""
) -> Reply:
    return {
        "status": status,
        "code": code,
        "reason": reason,
        "pid": pid,
        "fingerprint": fingerprint,
    }


def send(sock: socket.socket, message: Request | Reply, fds: Sequence[int] = ()) -> None:
    body = json.dumps(message).encode()
    data = _LENGTH.pack(len(body)) + body
    sent = socket.send_fds(sock, [data], list(fds)) if fds else sock.send(data)
    if sent < len(data):
        sock.sendall(data[sent:])


def receive(sock: socket.socket) -> tuple[dict[str, object], list[int]]:
    """The next message as JSON data, and the descriptors that came with it."""
    # The length alone first: the descriptors come with the first byte, and the next message
    # (a reply right after "accepted") must stay in the socket.
    head, fds, _flags, _addr = socket.recv_fds(sock, _LENGTH.size, MAX_FDS)
    try:
        while head and len(head) < _LENGTH.size:
            more = sock.recv(_LENGTH.size - len(head))
            if not more:
                break
            head += more
        if len(head) < _LENGTH.size:
            raise WireError("the connection closed before a message")
        (length,) = _LENGTH.unpack(head)
        if length > MAX_MESSAGE:
            raise WireError(f"a message of {length} bytes is over the limit")
        body = bytearray()
        while len(body) < length:
            more = sock.recv(length - len(body))
            if not more:
                raise WireError("the connection closed in the middle of a message")
            body += more
        try:
            data = json.loads(bytes(body))
        except ValueError as err:
            raise WireError("a message that is not JSON") from err
        if not isinstance(data, dict):
            raise WireError("a message that is not a JSON object")
    except BaseException:
        close(fds)
        raise
    return data, fds


def receive_reply(sock: socket.socket) -> Reply:
    """The daemon's next reply, checked field by field (the client has no pydantic)."""
    data, fds = receive(sock)
    close(fds)
    expected = {"status": str, "code": int, "reason": str, "pid": int, "fingerprint": str}
    if set(data) != set(expected) or data["status"] not in REPLY_STATUSES:
        raise WireError(f"an unknown reply: {sorted(data)}")
    if not all(type(data[key]) is kind for key, kind in expected.items()):
        raise WireError("a reply with a field of the wrong type")
    return data  # type: ignore[return-value]


def close(fds: Sequence[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:  # a descriptor already closed
            continue
