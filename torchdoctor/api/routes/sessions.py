"""Review sessions over HTTP: open one on an audit (or on new code), send it lines (commands
or questions), read its messages, follow it live (SSE), cancel its current audit.

A session's long commands (`run`, `fix`, `rerun`, `apply`) start or resume an audit through
the queue; the session is `busy` until that audit ends, and its answer then appears as a new
message. Follow progress with `GET /v1/sessions/{id}/events` (or the audit's own events).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Literal

from anyio import sleep, to_thread
from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from pydantic import BaseModel, ConfigDict, Field
from sse_starlette.sse import EventSourceResponse

from torchdoctor.agent.options import AuditChoices
from torchdoctor.agent.session.models import Message, SessionState, Waiting
from torchdoctor.agent.session.ports import SessionError
from torchdoctor.agent.state import ApprovalRequest
from torchdoctor.api.auth import Caller, StoreDep, too_many
from torchdoctor.api.dispatcher import wake_dispatcher
from torchdoctor.api.intake import (
    IntakeLimits,
    SubmissionRejected,
    copy_server_folder,
    prepare_workdir,
    write_file_map,
)
from torchdoctor.api.models import Principal
from torchdoctor.api.routes.common import ERRORS, audit_or_404
from torchdoctor.api.sessions import SessionConflict, SessionNotFound, SessionService
from torchdoctor.api.settings import ApiSettings
from torchdoctor.api.store.sessions import SessionRecord
from torchdoctor.api.store.store import Store

router = APIRouter(prefix="/v1/sessions", tags=["sessions"], responses=ERRORS)


def service_of(request: Request) -> SessionService:
    service: SessionService = request.app.state.sessions
    return service


Sessions = Annotated[SessionService, Depends(service_of)]


class SessionCreate(BaseModel):
    """Open a session on an audit of this tenant, or on new code (inline files or a server
    folder, audited first with `options`)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"audit_id": "0123456789abcdef0123456789abcdef", "lang": "fr"},
                {
                    "files": {"train.py": "import torch\n"},
                    "options": {"offline": True, "run": ["python train.py"], "steps": 6},
                },
            ]
        },
    )

    audit_id: str | None = Field(None, description="an existing audit of this tenant")
    files: dict[str, str] | None = Field(None, description="relative path -> UTF-8 text")
    path: str | None = Field(None, description="a folder under one of the server's allowed roots")
    options: AuditChoices | None = Field(
        None, description="for new code; for an audit, its own options are kept"
    )
    lang: Literal["en", "fr"] | None = Field(None, description="default: the audit's, else en")


class Line(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"text": "findings high"}]}
    )

    text: str = Field(min_length=1, max_length=4000, description="a command or a question")


class SessionView(BaseModel):
    """A session as `GET /v1/sessions/{id}` shows it."""

    id: str
    url: str
    source: str
    lang: Literal["en", "fr"]
    audit_id: str | None = Field(None, description="the audit whose report the session shows")
    busy: bool = Field(description="an audit the session started is still running")
    waiting: Waiting | None
    pending: ApprovalRequest | None = Field(None, description="verified diffs awaiting approval")
    decisions: dict[str, bool] = Field(description="staged approvals (finding id -> approved)")
    findings: int | None = Field(None, description="findings in the report, once there is one")
    created_at: float
    updated_at: float


def _view(request: Request, record: SessionRecord) -> SessionView:
    state = record.state
    return SessionView(
        id=record.id,
        url=str(request.url_for("get_session", session_id=record.id)),
        source=record.source,
        lang=state.lang,
        audit_id=state.audit_id,
        busy=state.busy,
        waiting=state.waiting,
        pending=state.pending,
        decisions=state.decisions,
        findings=len(state.report.findings) if state.report else None,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def _not_found(err: Exception) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, str(err))


def _new_audit(
    body: SessionCreate, who: Principal, store: Store, settings: ApiSettings
) -> tuple[str, str]:
    """Audit new code for the session: (audit id, what the session is on)."""
    if (body.files is None) == (body.path is None):
        raise HTTPException(
            status.HTTP_400_BAD_REQUEST, "give exactly one of 'audit_id', 'files' and 'path'"
        )
    if store.count_active(who.tenant) >= settings.max_running_per_tenant:
        raise too_many(
            f"tenant {who.tenant} already has {settings.max_running_per_tenant} audits running",
            30,
        )
    limits = IntakeLimits(
        settings.max_archive_files, settings.max_archive_bytes, settings.max_compression_ratio
    )
    audit_id = uuid.uuid4().hex
    workdir = settings.audits_dir / audit_id
    files, server_path = body.files, body.path
    try:
        if files is not None:
            prepare_workdir(workdir, lambda src: write_file_map(files, src, limits))
        else:
            prepare_workdir(
                workdir,
                lambda src: copy_server_folder(
                    Path(str(server_path)), settings.allowed_roots, src, limits
                ),
            )
    except SubmissionRejected as err:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, str(err)) from None
    store.create_audit(audit_id, who.tenant, body.options or AuditChoices(), str(workdir))
    return audit_id, "files" if files is not None else "path"


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SessionView,
    summary="Open a session on an audit, or on new code",
)
def create_session(
    body: SessionCreate, request: Request, who: Caller, store: StoreDep, sessions: Sessions
) -> SessionView:
    settings: ApiSettings = request.app.state.settings
    if body.audit_id is not None:
        if body.files is not None or body.path is not None:
            raise HTTPException(
                status.HTTP_400_BAD_REQUEST, "give exactly one of 'audit_id', 'files' and 'path'"
            )
        record = audit_or_404(store, body.audit_id, who)
        audit_id, choices, source = record.id, record.options, f"audit {record.id}"
    else:
        audit_id, source = _new_audit(body, who, store, settings)
        wake_dispatcher(request)
        choices = body.options or AuditChoices()
    state = SessionState(lang=body.lang or choices.lang or "en", choices=choices)
    created = sessions.create(
        who.tenant, source, state, lambda engine, first: engine.open(first, audit_id)
    )
    return _view(request, created)


@router.get("", response_model=list[SessionView], summary="This tenant's sessions, newest first")
def list_sessions(request: Request, who: Caller, sessions: Sessions) -> list[SessionView]:
    return [_view(request, r) for r in sessions.store.recent(who.tenant)]


@router.get("/{session_id}", response_model=SessionView, summary="A session's state")
def get_session(session_id: str, request: Request, who: Caller, sessions: Sessions) -> SessionView:
    try:
        return _view(request, sessions.settled(who.tenant, session_id))
    except SessionNotFound as err:
        raise _not_found(err) from None


@router.post(
    "/{session_id}/messages",
    response_model=list[Message],
    summary="Send a command or a question; the messages it added",
)
def send_message(session_id: str, line: Line, who: Caller, sessions: Sessions) -> list[Message]:
    """Commands: `findings [point|severity|status]`, `show ID`, `run "python x.py" [--steps N]`,
    `fix ID`, `approve ID|all`, `reject ID|all`, `apply`, `status ID wont-fix "reason"`,
    `ledger`, `rerun`, `help`. Anything else is a question for the LLM (when the server has
    one). A command that starts an audit answers at once; its result comes as a later message."""
    try:
        return sessions.send(who.tenant, session_id, line.text)
    except SessionNotFound as err:
        raise _not_found(err) from None
    except (SessionConflict, SessionError) as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from None


@router.get(
    "/{session_id}/messages", response_model=list[Message], summary="The conversation so far"
)
def list_messages(
    session_id: str,
    who: Caller,
    sessions: Sessions,
    after: Annotated[int, Query(ge=0, description="only messages with a larger id")] = 0,
) -> list[Message]:
    try:
        return sessions.messages(who.tenant, session_id, after)
    except SessionNotFound as err:
        raise _not_found(err) from None


@router.delete(
    "/{session_id}/audit",
    response_model=list[Message],
    summary="Cancel the audit the session waits on (the session goes on)",
)
def cancel_step(session_id: str, who: Caller, sessions: Sessions) -> list[Message]:
    try:
        return sessions.cancel(who.tenant, session_id)
    except SessionNotFound as err:
        raise _not_found(err) from None
    except SessionConflict as err:
        raise HTTPException(status.HTTP_409_CONFLICT, str(err)) from None


@router.get(
    "/{session_id}/events",
    summary="Server-sent events: new messages, and the progress of the audit it waits on",
    responses={200: {"content": {"text/event-stream": {}}, "description": "an SSE stream"}},
)
async def session_events(
    session_id: str,
    request: Request,
    who: Caller,
    sessions: Sessions,
    store: StoreDep,
    after: Annotated[int, Query(ge=0, description="messages after this id")] = 0,
) -> EventSourceResponse:
    """`message` events carry a `Message` (its id is the SSE id); `progress` events carry
    `{audit_id, kind, data}` from the awaited audit's own events; `state` events carry the
    session's `busy` flag whenever it changes. The stream runs until the client leaves."""
    try:
        await to_thread.run_sync(sessions.get, who.tenant, session_id)
    except SessionNotFound as err:
        raise _not_found(err) from None
    poll_s: float = request.app.state.poll_s

    async def stream() -> AsyncIterator[dict[str, str]]:
        last, busy = after, None
        record = await to_thread.run_sync(sessions.settled, who.tenant, session_id)
        followed = _followed(record)
        # the audit the session shows is news to a client that has not seen the messages that
        # came after `after` (an audit can finish before the client's first poll): its progress
        # is replayed; otherwise its history is skipped
        unseen = await to_thread.run_sync(sessions.store.messages, session_id, after)
        fresh = record.state.waiting is not None or bool(unseen)
        audit_after = 0 if fresh else await to_thread.run_sync(store.last_event_id, followed)
        while not await request.is_disconnected():
            record = await to_thread.run_sync(sessions.settled, who.tenant, session_id)
            for message in await to_thread.run_sync(sessions.store.messages, session_id, last):
                last = message.id
                yield {"id": str(last), "event": "message", "data": message.model_dump_json()}
            if (target := _followed(record)) != followed:
                followed, audit_after = target, 0
            if followed:
                for event in await to_thread.run_sync(store.events_after, followed, audit_after):
                    audit_after = event.id
                    data = {"audit_id": followed, "kind": event.kind, "data": event.data}
                    yield {"event": "progress", "data": json.dumps(data)}
            if record.state.busy != busy:  # after the progress, which a client reads first
                busy = record.state.busy
                yield {"event": "state", "data": json.dumps({"busy": busy})}
            await sleep(poll_s)

    return EventSourceResponse(stream(), ping=15)


def _followed(record: SessionRecord) -> str:
    """The audit whose progress the stream relays: the one awaited, else the one shown."""
    waiting = record.state.waiting
    return waiting.audit_id if waiting is not None else (record.state.audit_id or "")
