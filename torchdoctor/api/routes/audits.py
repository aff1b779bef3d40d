"""Submitting, following and cancelling audits."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Header, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sse_starlette import ServerSentEvent
from sse_starlette.sse import EventSourceResponse
from starlette.datastructures import UploadFile

from torchdoctor.agent.audit import AuditChoices
from torchdoctor.api.auth import Caller, StoreDep, too_many
from torchdoctor.api.dispatcher import wake_dispatcher
from torchdoctor.api.event_watch import EventWatch
from torchdoctor.api.intake import (
    IntakeLimits,
    SubmissionRejected,
    copy_server_folder,
    prepare_workdir,
    unpack_archive,
    write_file_map,
)
from torchdoctor.api.models import Accepted, AuditEvent, AuditState, AuditStatus, SubmitFiles
from torchdoctor.api.progress import progress_from
from torchdoctor.api.routes.common import ERRORS, audit_or_404, audit_url, no_such_audit
from torchdoctor.api.settings import ApiSettings
from torchdoctor.api.store.store import EVENT_PAGE

router = APIRouter(prefix="/v1/audits", tags=["audits"], responses=ERRORS)

LOOK_AGAIN_S = 5.0
"""The longest an event stream trusts the server's `EventWatch` before it reads its audit itself."""

_MULTIPART_SCHEMA = {
    "type": "object",
    "required": ["archive"],
    "properties": {
        "archive": {
            "type": "string",
            "format": "binary",
            "description": "a zip or tar(.gz) of the code to audit",
        },
        "options": {
            "type": "string",
            "description": "the audit options as JSON (AuditChoices)",
            "example": '{"offline": true, "fix": true, "run": ["python train.py"]}',
        },
    },
}
SUBMIT_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SubmitFiles"}},
            "multipart/form-data": {"schema": _MULTIPART_SCHEMA},
        },
    }
}


def _limits(settings: ApiSettings) -> IntakeLimits:
    return IntakeLimits(
        settings.max_archive_files, settings.max_archive_bytes, settings.max_compression_ratio
    )


def _bad(err: Exception) -> HTTPException:
    return HTTPException(status.HTTP_400_BAD_REQUEST, str(err))


def _options(text: str | None) -> AuditChoices:
    try:
        return AuditChoices.model_validate_json(text or "{}")
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "options"
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"options: {where}: {first['msg']}"
        ) from None


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=Accepted,
    openapi_extra=SUBMIT_BODY,
    summary="Submit code to audit (zip / tar.gz upload, or JSON)",
)
async def submit_audit(request: Request, who: Caller, store: StoreDep) -> JSONResponse:
    """Checks the submission whole, stores it under a new audit id and queues it; `202` with
    the audit's id and URL. Uploads are `multipart/form-data` with an `archive` file and an
    optional `options` JSON field; JSON bodies carry `files` (path -> text) or a server `path`."""
    settings: ApiSettings = request.app.state.settings
    if await to_thread.run_sync(store.count_active, who.tenant) >= settings.max_running_per_tenant:
        raise too_many(
            f"tenant {who.tenant} already has {settings.max_running_per_tenant} audits running",
            30,
        )
    audit_id = uuid.uuid4().hex
    workdir = settings.audits_dir / audit_id
    limits = _limits(settings)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if content_type == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=4)
            upload, options_field = form.get("archive"), form.get("options")
            if not isinstance(upload, UploadFile):
                raise SubmissionRejected("multipart submissions need an 'archive' file field")
            options = _options(options_field if isinstance(options_field, str) else None)
            archive: IO[bytes] = upload.file
            await to_thread.run_sync(
                prepare_workdir, workdir, lambda src: unpack_archive(archive, src, limits)
            )
        elif content_type == "application/json":
            try:
                body = SubmitFiles.model_validate_json(await request.body())
            except ValidationError as err:
                first = err.errors()[0]
                where = ".".join(str(p) for p in first["loc"]) or "body"
                raise HTTPException(
                    status.HTTP_422_UNPROCESSABLE_CONTENT, f"{where}: {first['msg']}"
                ) from None
            options = body.options
            if (body.files is None) == (body.path is None):
                raise SubmissionRejected("give exactly one of 'files' and 'path'")
            if body.files is not None:
                files = body.files
                await to_thread.run_sync(
                    prepare_workdir, workdir, lambda src: write_file_map(files, src, limits)
                )
            else:
                server_path = Path(str(body.path))
                roots = settings.allowed_roots
                await to_thread.run_sync(
                    prepare_workdir,
                    workdir,
                    lambda src: copy_server_folder(server_path, roots, src, limits),
                )
        else:
            raise HTTPException(
                status.HTTP_415_UNSUPPORTED_MEDIA_TYPE,
                "send multipart/form-data (an archive) or application/json",
            )
    except SubmissionRejected as err:
        raise _bad(err) from None
    await to_thread.run_sync(store.create_audit, audit_id, who.tenant, options, str(workdir))
    wake_dispatcher(request)
    url = audit_url(request, audit_id)
    accepted = Accepted(id=audit_id, url=url, state=AuditState.QUEUED)
    return JSONResponse(
        accepted.model_dump(mode="json"), status_code=202, headers={"Location": url}
    )


@router.get("", response_model=list[Accepted], summary="This tenant's audits, newest first")
def list_audits(request: Request, who: Caller, store: StoreDep) -> list[Accepted]:
    return [
        Accepted(id=r.id, url=audit_url(request, r.id), state=r.state)
        for r in store.list_audits(who.tenant)
    ]


@router.get("/{audit_id}", response_model=AuditStatus, summary="State and progress")
def get_audit(audit_id: str, request: Request, who: Caller, store: StoreDep) -> AuditStatus:
    progress = store.progress_record(audit_id, who.tenant)
    if progress is None:
        raise no_such_audit(audit_id)
    record = progress.record
    return AuditStatus(
        id=record.id,
        url=audit_url(request, record.id),
        state=record.state,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        attempts=record.attempts,
        error=record.error,
        phases=progress_from(progress.events),
        findings=progress.findings,
        pending_approval=record.state is AuditState.WAITING_APPROVAL
        and progress.approval_requested,
    )


@router.get(
    "/{audit_id}/events",
    summary="Server-sent events of the audit's progress (resumable with Last-Event-ID)",
    responses={200: {"content": {"text/event-stream": {}}, "description": "an SSE stream"}},
)
async def audit_events(
    audit_id: str,
    request: Request,
    who: Caller,
    store: StoreDep,
    last_event_id: Annotated[int | None, Header(ge=0)] = None,
    after: Annotated[int | None, Query(ge=0, description="same as Last-Event-ID")] = None,
) -> EventSourceResponse:
    """Each event has an increasing `id`, a type (`state`, `phase`, `point`, `gate`, `fix`,
    ...) and a JSON payload. The stream ends once the audit is done, failed or cancelled."""
    last = last_event_id if last_event_id is not None else (after or 0)
    # The first look doubles as the tenant check (a 404 before the stream starts).
    state, events = await to_thread.run_sync(
        store.state_and_events_after, audit_id, who.tenant, last, EVENT_PAGE
    )
    if state is None:
        raise no_such_audit(audit_id)
    watch: EventWatch = request.app.state.event_watch

    async def stream() -> AsyncIterator[bytes]:
        nonlocal last, state, events
        while True:
            if events:
                last = events[-1].id
                yield b"".join(_encoded(event) for event in events)
                if any(_ends(event) for event in events):
                    return  # the audit ended while this look read it: nothing comes after
            if len(events) < EVENT_PAGE:
                # Every event up to this look was sent, and the state was read before them:
                # a final one has nothing after it.
                if state is None or state.final:
                    return
                await watch.news(audit_id, last, timeout_s=LOOK_AGAIN_S)
            if await request.is_disconnected():
                return
            state, events = await to_thread.run_sync(
                store.state_and_events_after, audit_id, who.tenant, last, EVENT_PAGE
            )

    return EventSourceResponse(stream(), ping=15)


def _ends(event: AuditEvent) -> bool:
    """The event that records an audit's final state (the last it ever has). The stream reads
    the state before the events, so a look can return it with the state read still running:
    without this, the stream would wait for news that never comes (`LOOK_AGAIN_S`)."""
    if event.kind != "state":
        return False
    try:
        return AuditState(str(event.data.get("state"))).final
    except ValueError:
        return False


def _encoded(event: AuditEvent) -> bytes:
    """One event as the stream sends it; a look's events go out in one write."""
    return ServerSentEvent(id=str(event.id), event=event.kind, data=json.dumps(event.data)).encode()


@router.delete("/{audit_id}", response_model=Accepted, summary="Cancel (kills its sandbox jobs)")
def cancel_audit(audit_id: str, request: Request, who: Caller, store: StoreDep) -> Accepted:
    """A queued, running or waiting audit is cancelled; the server running it kills its
    worker and every sandbox job within a moment. A finished audit answers 409."""
    record = audit_or_404(store, audit_id, who)
    state = store.cancel(audit_id, who.tenant)
    if state is not AuditState.CANCELLED:
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"audit {audit_id} already ended ({record.state.value})"
        )
    return Accepted(id=audit_id, url=audit_url(request, audit_id), state=AuditState.CANCELLED)
