"""The user's side: pack a folder (honouring .gitignore and excludes), submit it, follow the
audit's events (through a server's restart), answer approvals, download the report and the
patch."""

from __future__ import annotations

import fnmatch
import io
import json
import os
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pathspec

from torchdoctor.agent.audit import AuditChoices
from torchdoctor.agent.workspace import SKIPPED_DIRS

RECONNECT_S = 60.0
"""How long a follower keeps trying to reach a server that went away (a restart, a crash the
next server takes over from) before it gives up."""
MAX_RETRY_AFTER_S = 60.0


class ClientError(RuntimeError):
    """The server refused or could not be reached; the message is one line."""


def packed_files(root: Path, excludes: list[str]) -> list[Path]:
    """Files under `root` to send: not ignored by any .gitignore on the way, not excluded, not
    in a tool or virtual-environment folder, not a link."""
    chosen: list[Path] = []
    specs: list[tuple[Path, pathspec.GitIgnoreSpec]] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        ignore_file = here / ".gitignore"
        if ignore_file.is_file():
            lines = ignore_file.read_text(encoding="utf-8", errors="replace").splitlines()
            specs.append((here, pathspec.GitIgnoreSpec.from_lines(lines)))

        def ignored(path: Path, is_dir: bool) -> bool:
            rel = path.relative_to(root).as_posix()
            if any(fnmatch.fnmatch(rel, pattern) for pattern in excludes):
                return True
            verdict = False  # as git: the deepest .gitignore's last matching pattern wins
            for base, spec in specs:
                if path.is_relative_to(base):
                    inner = path.relative_to(base).as_posix() + ("/" if is_dir else "")
                    include = spec.check_file(inner).include
                    verdict = verdict if include is None else include
            return verdict

        dirs[:] = sorted(
            d for d in dirs if d not in SKIPPED_DIRS and not ignored(here / d, is_dir=True)
        )
        for name in sorted(files):
            path = here / name
            if not path.is_symlink() and path.is_file() and not ignored(path, is_dir=False):
                chosen.append(path)
    return chosen


def pack(root: Path, excludes: list[str]) -> bytes:
    """A tar.gz of `root`'s files (or of one file), paths relative to it."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        if root.is_file():
            tar.add(root, arcname=root.name, recursive=False)
        else:
            for path in packed_files(root, excludes):
                tar.add(path, arcname=path.relative_to(root).as_posix(), recursive=False)
    return buffer.getvalue()


@dataclass
class ServerEvent:
    id: int
    kind: str
    data: dict[str, Any]


class Client:
    def __init__(self, server: str, key: str, timeout_s: float = 60.0) -> None:
        self.http = httpx.Client(
            base_url=server.rstrip("/"),
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
        )

    def _check(self, response: httpx.Response) -> httpx.Response:
        if response.is_success:
            return response
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        retry = response.headers.get("retry-after")
        later = f" (retry after {retry} s)" if retry else ""
        raise ClientError(f"{response.status_code}: {' '.join(str(detail).split())}{later}")

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._check(self.http.request(method, url, **kwargs))
        except httpx.HTTPError as err:
            raise ClientError(f"{self.http.base_url}: {err}") from None

    def submit(self, archive: bytes, options: AuditChoices) -> str:
        response = self._call(
            "POST",
            "/v1/audits",
            files={"archive": ("code.tar.gz", archive, "application/gzip")},
            data={"options": options.model_dump_json(exclude_defaults=True)},
        )
        return str(response.json()["id"])

    def status(self, audit_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/audits/{audit_id}").json()
        return result

    def events(self, audit_id: str, after: int = 0) -> Iterator[ServerEvent]:
        """The audit's events until its stream ends. A dropped stream or an unreachable server
        is tried again (with Last-Event-ID, backing off) for up to `RECONNECT_S`; a rate limit
        is waited out as its Retry-After says."""
        last, failing_since, pause = after, None, 0.25
        while True:
            try:
                with self.http.stream(
                    "GET",
                    f"/v1/audits/{audit_id}/events",
                    headers={"Last-Event-ID": str(last)},
                    timeout=httpx.Timeout(60.0, read=None),
                ) as response:
                    if response.status_code == 429:
                        time.sleep(_retry_after(response))
                        continue
                    if not response.is_success:
                        response.read()
                        self._check(response)
                    failing_since, pause = None, 0.25
                    for event in parse_sse(response.iter_lines()):
                        last = event.id
                        yield event
                return
            except httpx.TransportError as err:
                failing_since = failing_since or time.monotonic()
                if time.monotonic() - failing_since > RECONNECT_S:
                    raise ClientError(
                        f"{self.http.base_url}: {err} (for {RECONNECT_S:g} s)"
                    ) from None
                time.sleep(pause)
                pause = min(pause * 2, 5.0)
            except httpx.HTTPError as err:
                raise ClientError(f"{self.http.base_url}: {err}") from None

    def approvals(self, audit_id: str) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", f"/v1/audits/{audit_id}/approvals").json()
        return result

    def approve(self, audit_id: str, decisions: list[dict[str, Any]]) -> None:
        self._call("POST", f"/v1/audits/{audit_id}/approvals", json={"decisions": decisions})

    def text(self, audit_id: str, what: str, **params: str) -> str:
        return self._call("GET", f"/v1/audits/{audit_id}/{what}", params=params).text


def _retry_after(response: httpx.Response) -> float:
    """The seconds a 429 asks to wait (1 s when it does not say; never over a minute)."""
    try:
        return min(max(float(response.headers.get("retry-after", "1")), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return 1.0


def parse_sse(lines: Iterator[str]) -> Iterator[ServerEvent]:
    """Server-sent events from a line stream (comments and pings skipped)."""
    fields: dict[str, str] = {}
    for line in lines:
        if not line:
            if "data" in fields and "id" in fields:
                yield ServerEvent(
                    int(fields["id"]), fields.get("event", "message"), json.loads(fields["data"])
                )
            fields = {}
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        fields[name] = value[1:] if value.startswith(" ") else value


def describe(event: ServerEvent) -> str | None:
    """One progress line for an event, or None for the uninteresting ones."""
    data = event.data
    if event.kind == "state":
        return f"state: {data.get('state')}" + (f" ({data['error']})" if data.get("error") else "")
    if event.kind == "phase":
        return f"phase {data.get('phase')}"
    if event.kind == "point":
        return f"point {data.get('point')}: {data.get('findings')} finding(s)"
    if event.kind == "fix":
        return str(data.get("message", "fix"))
    return None
