"""Where the terminal's session lives: in this machine's store with audits run here (`Local`),
or on a server (`Remote`, over `/v1/sessions`). The REPL sees one interface."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

import httpx
from pydantic import TypeAdapter

from torchdoctor.agent.context import Progress
from torchdoctor.agent.session.engine import SessionEngine
from torchdoctor.agent.session.local import LocalDriver
from torchdoctor.agent.session.models import Message
from torchdoctor.agent.session.questions import llm_answerer
from torchdoctor.api.client import ClientError
from torchdoctor.api.sessions import SessionService
from torchdoctor.api.store.sessions import SessionRecord, SessionStore
from torchdoctor.api.store.store import Store

LOCAL_TENANT = "local"
"""The tenant of sessions on this machine's own files."""

_MESSAGES: TypeAdapter[list[Message]] = TypeAdapter(list[Message])


class Backend(Protocol):
    session_id: str

    def history(self) -> list[Message]: ...

    def send(self, text: str, progress: Progress) -> list[Message]:
        """Send one line and wait until the session is idle again; the new messages."""
        ...

    def cancel(self) -> list[Message]:
        """Cancel the step under way (Ctrl-C); the messages that says."""
        ...

    def finding_ids(self) -> list[str]: ...


def local_service(store: Store, sandbox: str | None = None) -> SessionService:
    def engine_for(record: SessionRecord) -> SessionEngine:
        target = Path(record.source)
        root = target if target.is_dir() else target.parent
        answerer = llm_answerer(root, offline=record.state.choices.offline)
        return SessionEngine(LocalDriver(target, sandbox), answerer)

    return SessionService(SessionStore(store.engine), engine_for)


class Local:
    def __init__(self, service: SessionService, session_id: str) -> None:
        self.service = service
        self.session_id = session_id

    def history(self) -> list[Message]:
        return self.service.messages(LOCAL_TENANT, self.session_id)

    def send(self, text: str, progress: Progress) -> list[Message]:
        return self.service.send(LOCAL_TENANT, self.session_id, text, progress)

    def cancel(self) -> list[Message]:
        return self.service.cancel(LOCAL_TENANT, self.session_id)

    def finding_ids(self) -> list[str]:
        report = self.service.get(LOCAL_TENANT, self.session_id).state.report
        return [f.id for f in report.findings] if report else []


class Remote:
    def __init__(self, http: httpx.Client, session_id: str) -> None:
        self.http = http
        self.session_id = session_id
        self._last = 0

    def call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as err:
            raise ClientError(f"{self.http.base_url}: {err}") from None
        if not response.is_success:
            try:
                detail = response.json().get("detail", response.text)
            except ValueError:
                detail = response.text
            raise ClientError(f"{response.status_code}: {' '.join(str(detail).split())}")
        return response

    def _messages(self, response: httpx.Response) -> list[Message]:
        messages = _MESSAGES.validate_json(response.content)
        if messages:
            self._last = max(self._last, messages[-1].id)
        return messages

    def history(self) -> list[Message]:
        return self._messages(self.call("GET", f"/v1/sessions/{self.session_id}/messages"))

    def send(self, text: str, progress: Progress) -> list[Message]:
        url = f"/v1/sessions/{self.session_id}/messages"
        said = self._messages(self.call("POST", url, json={"text": text}))
        self.follow(progress)
        later = self.call("GET", url, params={"after": self._last})
        return said + self._messages(later)

    def follow(self, progress: Progress) -> None:
        """Progress of the audit the session waits on, until it is idle."""
        url = f"/v1/sessions/{self.session_id}/events"
        try:
            with self.http.stream(
                "GET",
                url,
                params={"after": self._last},
                timeout=httpx.Timeout(60.0, read=None),
            ) as response:
                if not response.is_success:
                    response.read()
                    raise ClientError(f"{response.status_code}: {response.text[:200]}")
                fields: dict[str, str] = {}
                for line in response.iter_lines():
                    if line:
                        name, _, value = line.partition(":")
                        fields[name] = value.removeprefix(" ")
                        continue
                    kind, data = fields.get("event"), fields.get("data")
                    fields = {}
                    if kind == "state" and data and not json.loads(data)["busy"]:
                        return
                    if kind == "progress" and data:
                        event = json.loads(data)
                        progress({"event": event["kind"], **event["data"]})
        except httpx.HTTPError as err:
            raise ClientError(f"{self.http.base_url}: {err}") from None

    def cancel(self) -> list[Message]:
        return self._messages(self.call("DELETE", f"/v1/sessions/{self.session_id}/audit"))

    def finding_ids(self) -> list[str]:
        view = self.call("GET", f"/v1/sessions/{self.session_id}").json()
        if not view.get("audit_id") or view.get("findings") is None:
            return []
        found = self.call("GET", f"/v1/audits/{view['audit_id']}/findings").json()
        return [str(f["id"]) for f in found]
