"""Typed access to the service's tables: keys, audits (a DB-backed queue with leases), events.

Every audit lookup takes the caller's tenant: another tenant's audit is simply not found.
Each call is one Core statement or a few, built once at import and run on a pooled
connection: a server makes some twenty of these calls for each audit it takes (submission,
key lookups, claim, leases, event streams, status), and an ORM session for each cost it
~0.3 ms of CPU building and flushing, five to ten times the query itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Engine,
    Row,
    Table,
    bindparam,
    func,
    insert,
    or_,
    select,
    text,
    update,
)

from torchdoctor.agent.audit import AuditChoices
from torchdoctor.api.models import (
    AuditEvent,
    AuditProgressRecord,
    AuditRecord,
    AuditState,
    Principal,
)
from torchdoctor.api.store.tables import ApiKeyRow, AuditRow, EventRow

KEY_PREFIX = "td"
EVENT_PAGE = 500
"""The most events one look at an audit's events returns."""
KEYS = cast(Table, ApiKeyRow.__table__)
AUDITS = cast(Table, AuditRow.__table__)
EVENTS = cast(Table, EventRow.__table__)
_k, _a, _e = KEYS.c, AUDITS.c, EVENTS.c

_QUEUED, _RUNNING = AuditState.QUEUED.value, AuditState.RUNNING.value
_FINAL = [s.value for s in AuditState if s.final]
_RECORD = (
    _a.id,
    _a.tenant,
    _a.state,
    _a.options,
    _a.workdir,
    _a.created_at,
    _a.started_at,
    _a.finished_at,
    _a.attempts,
    _a.error,
)
_AUDIT = select(*_RECORD).where(_a.id == bindparam("audit_id"))
_PROGRESS = select(*_RECORD, _a.report, _a.approval_request).where(_a.id == bindparam("audit_id"))
_KEY = select(_k.id, _k.tenant, _k.secret_hash, _k.revoked_at).where(_k.id == bindparam("key_id"))
_ACTIVE = (
    select(func.count())
    .select_from(AUDITS)
    .where(
        _a.tenant == bindparam("tenant"), _a.state.in_([s.value for s in AuditState if s.active])
    )
)
_STATE = select(_a.state).where(_a.id == bindparam("audit_id"), _a.tenant == bindparam("tenant"))
_ALL_EVENTS = (
    select(_e.id, _e.kind, _e.data)
    .where(_e.audit_id == bindparam("audit_id"), _e.id > bindparam("after"))
    .order_by(_e.id)
)
_EVENTS_AFTER = _ALL_EVENTS.limit(bindparam("limit"))
_NEWEST = (
    select(_e.audit_id, func.max(_e.id))
    .where(_e.audit_id.in_(bindparam("audit_ids", expanding=True)))
    .group_by(_e.audit_id)
)
_LAST_EVENT = select(func.max(_e.id)).where(_e.audit_id == bindparam("audit_id"))
_ADD_EVENTS = insert(EVENTS)
_ORPHANED = (
    (_a.state == _RUNNING)
    & or_(_a.lease_until.is_(None), _a.lease_until < bindparam("now"))
    # never one this owner runs itself (a slow start can outlast its lease)
    & or_(_a.lease_owner.is_(None), _a.lease_owner != bindparam("owner"))
)
_CLAIMABLE = (
    select(_a.id).where(or_(_a.state == _QUEUED, _ORPHANED)).order_by(_a.created_at).limit(8)
)
_QUEUED_IDS = (
    select(_a.id).where(_a.state == _QUEUED).order_by(_a.created_at).limit(bindparam("limit"))
)
_TAKE = (
    update(AUDITS)
    .where(_a.id == bindparam("audit_id"), or_(_a.state == _QUEUED, _ORPHANED))
    .values(
        state=_RUNNING,
        lease_owner=bindparam("owner"),
        lease_until=bindparam("until"),
        attempts=_a.attempts + 1,
        started_at=func.coalesce(_a.started_at, bindparam("now")),
    )
)
_HELD_BY = (
    _a.id.in_(bindparam("audit_ids", expanding=True)),
    _a.lease_owner == bindparam("owner"),
    _a.state == _RUNNING,
)
_RENEW = update(AUDITS).where(*_HELD_BY).values(lease_until=bindparam("until"))
_HELD = select(_a.id).where(*_HELD_BY)
_RUN_BY = (
    _a.id == bindparam("audit_id"),
    _a.lease_owner == bindparam("owner"),
    _a.state == _RUNNING,
)
_FINISH = (
    update(AUDITS)
    .where(*_RUN_BY)
    .values(
        state=bindparam("to_state"),
        finished_at=bindparam("now"),
        lease_owner=None,
        lease_until=None,
        error=bindparam("the_error"),
        report=func.coalesce(bindparam("the_report", type_=_a.report.type), _a.report),
        duration_s=bindparam("now") - func.coalesce(_a.started_at, bindparam("now")),
        sandbox_runs=bindparam("runs"),
        llm_tokens=bindparam("tokens"),
    )
)
_PARK = (
    update(AUDITS)
    .where(*_RUN_BY)
    .values(
        state=AuditState.WAITING_APPROVAL.value,
        lease_owner=None,
        lease_until=None,
        approval_request=bindparam("request"),
        approval_answer=None,
        report=bindparam("the_report"),
    )
)


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _record(row: Row[*tuple[Any, ...]]) -> AuditRecord:
    return AuditRecord(
        id=row.id,
        tenant=row.tenant,
        state=AuditState(row.state),
        options=AuditChoices.model_validate_json(row.options),
        workdir=row.workdir,
        created_at=row.created_at,
        started_at=row.started_at,
        finished_at=row.finished_at,
        attempts=row.attempts,
        error=row.error,
    )


def _event_row(
    audit_id: str, kind: str, data: dict[str, Any], at: float | None = None
) -> dict[str, Any]:
    return {
        "audit_id": audit_id,
        "kind": kind,
        "data": json.dumps(data),
        "created_at": at or time.time(),
    }


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # keys -----------------------------------------------------------------------------

    def create_key(self, tenant: str) -> tuple[str, str]:
        """A new key for `tenant`: (key id, the full key, to be shown once)."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self.engine.begin() as connection:
            connection.execute(
                insert(KEYS).values(
                    id=key_id, tenant=tenant, secret_hash=_hash(secret), created_at=time.time()
                )
            )
        return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"

    def revoke_key(self, key_id: str) -> bool:
        with self.engine.begin() as connection:
            result = connection.execute(
                update(KEYS)
                .where(_k.id == key_id, _k.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            return bool(result.rowcount)

    def list_keys(self) -> list[tuple[str, str, float, float | None]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(_k.id, _k.tenant, _k.created_at, _k.revoked_at).order_by(_k.created_at)
            ).all()
            return [(r.id, r.tenant, r.created_at, r.revoked_at) for r in rows]

    def authenticate(self, token: str) -> Principal | None:
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX:
            return None
        with self.engine.connect() as connection:
            row = connection.execute(_KEY, {"key_id": parts[1]}).first()
        if row is None or row.revoked_at is not None:
            return None
        if not hmac.compare_digest(row.secret_hash, _hash(parts[2])):
            return None
        return Principal(key_id=row.id, tenant=row.tenant)

    # audits ---------------------------------------------------------------------------

    def create_audit(
        self, audit_id: str, tenant: str, options: AuditChoices, workdir: str
    ) -> AuditRecord:
        record = AuditRecord(
            id=audit_id,
            tenant=tenant,
            state=AuditState.QUEUED,
            options=options,
            workdir=workdir,
            created_at=time.time(),
        )
        with self.engine.begin() as connection:
            connection.execute(
                insert(AUDITS).values(
                    id=audit_id,
                    tenant=tenant,
                    state=_QUEUED,
                    options=options.model_dump_json(),
                    workdir=workdir,
                    created_at=record.created_at,
                    attempts=0,
                    sandbox_runs=0,
                    llm_tokens=0,
                )
            )
            connection.execute(_ADD_EVENTS, [_event_row(audit_id, "state", {"state": _QUEUED})])
        return record

    def get_audit(self, audit_id: str, tenant: str | None) -> AuditRecord | None:
        """The audit, if it exists and belongs to `tenant` (None: any tenant, for workers)."""
        with self.engine.connect() as connection:
            row = connection.execute(_AUDIT, {"audit_id": audit_id}).first()
        if row is None or (tenant is not None and row.tenant != tenant):
            return None
        return _record(row)

    def progress_record(self, audit_id: str, tenant: str) -> AuditProgressRecord | None:
        """The audit with its findings count, approval question and events, as one read: a
        status poll costs one transaction, not one per fact."""
        with self.engine.connect() as connection:
            row = connection.execute(_PROGRESS, {"audit_id": audit_id}).first()
            if row is None or row.tenant != tenant:
                return None
            events = _events_after(connection, audit_id, 0, None)
        return AuditProgressRecord(
            record=_record(row),
            findings=len(json.loads(row.report)["findings"]) if row.report else None,
            approval_requested=bool(row.approval_request),
            events=events,
        )

    def list_audits(self, tenant: str, limit: int = 100) -> list[AuditRecord]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(*_RECORD)
                .where(_a.tenant == tenant)
                .order_by(_a.created_at.desc())
                .limit(limit)
            ).all()
        return [_record(r) for r in rows]

    def count_active(self, tenant: str) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(_ACTIVE, {"tenant": tenant}).scalar() or 0)

    def claim(self, owner: str, lease_s: float) -> str | None:
        """Take one audit to run: a queued one, or a running one whose worker went silent
        (its server died): compare-and-set on the lease, so two servers never share one."""
        now = time.time()
        with self.engine.connect() as connection:
            candidates = connection.execute(_CLAIMABLE, {"now": now, "owner": owner}).scalars()
            ids: list[str] = list(candidates)
        for audit_id in ids:
            if self.claim_audit(audit_id, owner, lease_s, now):
                return audit_id
        return None

    def queued_ids(self, limit: int) -> list[str]:
        """The oldest queued audits' ids, oldest first (what `claim` would take next)."""
        with self.engine.connect() as connection:
            return list(connection.execute(_QUEUED_IDS, {"limit": limit}).scalars())

    def claim_audit(
        self, audit_id: str, owner: str, lease_s: float, now: float | None = None
    ) -> bool:
        """Take this audit to run if it is still claimable (compare-and-set, as `claim`)."""
        now = time.time() if now is None else now
        taking = {"audit_id": audit_id, "owner": owner, "now": now, "until": now + lease_s}
        with self.engine.begin() as connection:
            if connection.execute(_TAKE, taking).rowcount != 1:
                return False
            running = _event_row(audit_id, "state", {"state": _RUNNING})
            connection.execute(_ADD_EVENTS, [running])
            return True

    def renew_leases(self, audit_ids: list[str], owner: str, lease_s: float) -> set[str]:
        """Extend the leases of the audits `owner` runs; the ids it still holds (a cancelled
        audit, or one another server took over, is no longer held)."""
        if not audit_ids:
            return set()
        held = {"audit_ids": audit_ids, "owner": owner}
        with self.engine.begin() as connection:
            connection.execute(_RENEW, {**held, "until": time.time() + lease_s})
            return set(connection.execute(_HELD, held).scalars())

    def finish(
        self,
        audit_id: str,
        owner: str,
        state: AuditState,
        *,
        report: str | None = None,
        error: str | None = None,
        sandbox_runs: int = 0,
        llm_tokens: int = 0,
        events: list[tuple[str, dict[str, Any], float]] | None = None,
    ) -> bool:
        """Record the end of a run, unless the audit was cancelled or taken over meanwhile;
        `events` (its last progress) are written with it, in the same transaction."""
        now = time.time()
        ending = {
            "audit_id": audit_id,
            "owner": owner,
            "to_state": state.value,
            "now": now,
            "the_error": error,
            "the_report": report,
            "runs": sandbox_runs,
            "tokens": llm_tokens,
        }
        detail: dict[str, Any] = {"state": state.value}
        if error:
            detail["error"] = error
        with self.engine.begin() as connection:
            if connection.execute(_FINISH, ending).rowcount != 1:
                return False
            rows = [_event_row(audit_id, kind, data, at) for kind, data, at in events or []]
            connection.execute(_ADD_EVENTS, [*rows, _event_row(audit_id, "state", detail)])
            return True

    def wait_for_approval(self, audit_id: str, owner: str, request: str, report: str) -> bool:
        """The graph stopped at its approval interrupt: park the audit, free the worker."""
        parking = {"audit_id": audit_id, "owner": owner, "request": request, "the_report": report}
        with self.engine.begin() as connection:
            if connection.execute(_PARK, parking).rowcount != 1:
                return False
            waiting = {"state": AuditState.WAITING_APPROVAL.value}
            connection.execute(_ADD_EVENTS, [_event_row(audit_id, "state", waiting)])
            return True

    def answer_approval(self, audit_id: str, tenant: str, answer: str) -> bool:
        """Queue the audit again with the user's answer; the next worker resumes the graph."""
        with self.engine.begin() as connection:
            result = connection.execute(
                update(AUDITS)
                .where(
                    _a.id == audit_id,
                    _a.tenant == tenant,
                    _a.state == AuditState.WAITING_APPROVAL.value,
                )
                .values(state=_QUEUED, approval_answer=answer)
            )
            if result.rowcount != 1:
                return False
            connection.execute(_ADD_EVENTS, [_event_row(audit_id, "state", {"state": _QUEUED})])
            return True

    def approval(self, audit_id: str, tenant: str | None) -> tuple[str | None, str | None]:
        """(the pending request, the answer given) as stored JSON texts."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(_a.tenant, _a.approval_request, _a.approval_answer).where(_a.id == audit_id)
            ).first()
        if row is None or (tenant is not None and row.tenant != tenant):
            return None, None
        return row.approval_request, row.approval_answer

    def cancel(self, audit_id: str, tenant: str) -> AuditState | None:
        """Mark a live audit cancelled (its worker is killed by the dispatcher that runs it);
        the state it ends in, or None when not found."""
        cancelled = AuditState.CANCELLED.value
        with self.engine.begin() as connection:
            result = connection.execute(
                update(AUDITS)
                .where(_a.id == audit_id, _a.tenant == tenant, _a.state.not_in(_FINAL))
                .values(
                    state=cancelled, finished_at=time.time(), lease_owner=None, lease_until=None
                )
            )
            if result.rowcount == 1:
                connection.execute(
                    _ADD_EVENTS, [_event_row(audit_id, "state", {"state": cancelled})]
                )
                return AuditState.CANCELLED
            state = connection.execute(_STATE, {"audit_id": audit_id, "tenant": tenant}).scalar()
            return AuditState(state) if state is not None else None

    def report(self, audit_id: str, tenant: str | None) -> str | None:
        with self.engine.connect() as connection:
            row = connection.execute(select(_a.tenant, _a.report).where(_a.id == audit_id)).first()
        if row is None or (tenant is not None and row.tenant != tenant):
            return None
        return cast(str | None, row.report)

    def replace_report(self, audit_id: str, report: str) -> None:
        with self.engine.begin() as connection:
            connection.execute(update(AUDITS).where(_a.id == audit_id).values(report=report))

    def metrics(self) -> tuple[dict[str, int], int, float, int, int]:
        """(audits by state, finished count, their total seconds, sandbox runs, LLM tokens)."""
        with self.engine.connect() as connection:
            by_state = {
                state: int(count)
                for state, count in connection.execute(
                    select(_a.state, func.count()).group_by(_a.state)
                ).all()
            }
            finished, seconds, runs, tokens = connection.execute(
                select(
                    func.count(_a.duration_s),
                    func.coalesce(func.sum(_a.duration_s), 0.0),
                    func.coalesce(func.sum(_a.sandbox_runs), 0),
                    func.coalesce(func.sum(_a.llm_tokens), 0),
                )
            ).one()
        return by_state, int(finished), float(seconds or 0.0), int(runs), int(tokens)

    # events ---------------------------------------------------------------------------

    def add_event(self, audit_id: str, kind: str, data: dict[str, Any]) -> None:
        self.add_events(audit_id, [(kind, data, time.time())])

    def add_events(self, audit_id: str, events: list[tuple[str, dict[str, Any], float]]) -> None:
        """`(kind, data, when)` events in this order, in one transaction."""
        if not events:
            return
        rows = [_event_row(audit_id, kind, data, at) for kind, data, at in events]
        with self.engine.begin() as connection:
            connection.execute(_ADD_EVENTS, rows)

    def last_event_id(self, audit_id: str) -> int:
        """The id of the audit's newest event (0 when it has none)."""
        with self.engine.connect() as connection:
            return int(connection.execute(_LAST_EVENT, {"audit_id": audit_id}).scalar() or 0)

    def newest_event_ids(self, audit_ids: list[str]) -> dict[str, int]:
        """Each audit's newest event id (audits without events are left out), in one read."""
        with self.engine.connect() as connection:
            rows = connection.execute(_NEWEST, {"audit_ids": audit_ids}).all()
        return {audit_id: int(newest) for audit_id, newest in rows}

    def events_after(self, audit_id: str, after: int, limit: int = EVENT_PAGE) -> list[AuditEvent]:
        with self.engine.connect() as connection:
            return _events_after(connection, audit_id, after, limit)

    def state_and_events_after(
        self, audit_id: str, tenant: str, after: int, limit: int = EVENT_PAGE
    ) -> tuple[AuditState | None, list[AuditEvent]]:
        """What an event stream reads each time it looks (one connection, the state column
        alone): the audit's state (None: not this tenant's), read before its events after
        `after`, so an audit that ends in between still has its last events returned."""
        with self.engine.connect() as connection:
            state = connection.execute(_STATE, {"audit_id": audit_id, "tenant": tenant}).scalar()
            if state is None:
                return None, []
            return AuditState(state), _events_after(connection, audit_id, after, limit)


def _events_after(
    connection: Connection, audit_id: str, after: int, limit: int | None
) -> list[AuditEvent]:
    """The audit's events after `after`, oldest first (all of them when `limit` is None)."""
    where = {"audit_id": audit_id, "after": after}
    if limit is None:
        rows = connection.execute(_ALL_EVENTS, where).all()
    else:
        rows = connection.execute(_EVENTS_AFTER, {**where, "limit": limit}).all()
    return [AuditEvent(id=i, kind=kind, data=json.loads(data)) for i, kind, data in rows]
