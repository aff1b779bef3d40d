"""Typed access to the service's tables: keys, audits (a DB-backed queue with leases), events.

Every audit lookup takes the caller's tenant: another tenant's audit is simply not found.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, func, insert, or_, select, text, update
from sqlalchemy.orm import Session, sessionmaker, undefer

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


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def _record(row: AuditRow) -> AuditRecord:
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


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._sessions.begin() as session:
            yield session

    def ping(self) -> None:
        with self.engine.connect() as connection:
            connection.execute(text("SELECT 1"))

    # keys -----------------------------------------------------------------------------

    def create_key(self, tenant: str) -> tuple[str, str]:
        """A new key for `tenant`: (key id, the full key, to be shown once)."""
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self._session() as session:
            session.add(
                ApiKeyRow(
                    id=key_id, tenant=tenant, secret_hash=_hash(secret), created_at=time.time()
                )
            )
        return key_id, f"{KEY_PREFIX}_{key_id}_{secret}"

    def revoke_key(self, key_id: str) -> bool:
        with self._session() as session:
            result = session.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == key_id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=time.time())
            )
            return bool(getattr(result, "rowcount", 0))

    def list_keys(self) -> list[tuple[str, str, float, float | None]]:
        with self._session() as session:
            rows = session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)).all()
            return [(r.id, r.tenant, r.created_at, r.revoked_at) for r in rows]

    def authenticate(self, token: str) -> Principal | None:
        parts = token.split("_", 2)
        if len(parts) != 3 or parts[0] != KEY_PREFIX:
            return None
        with self._session() as session:
            row = session.get(ApiKeyRow, parts[1])
            if row is None or row.revoked_at is not None:
                return None
            if not hmac.compare_digest(row.secret_hash, _hash(parts[2])):
                return None
            return Principal(key_id=row.id, tenant=row.tenant)

    # audits ---------------------------------------------------------------------------

    def create_audit(
        self, audit_id: str, tenant: str, options: AuditChoices, workdir: str
    ) -> AuditRecord:
        row = AuditRow(
            id=audit_id,
            tenant=tenant,
            state=AuditState.QUEUED.value,
            options=options.model_dump_json(),
            workdir=workdir,
            created_at=time.time(),
            attempts=0,
            sandbox_runs=0,
            llm_tokens=0,
        )
        with self._session() as session:
            session.add(row)
            session.add(_event_row(audit_id, "state", {"state": AuditState.QUEUED.value}))
        return _record(row)

    def get_audit(self, audit_id: str, tenant: str | None) -> AuditRecord | None:
        """The audit, if it exists and belongs to `tenant` (None: any tenant, for workers)."""
        with self._session() as session:
            row = session.get(AuditRow, audit_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                return None
            return _record(row)

    def progress_record(self, audit_id: str, tenant: str) -> AuditProgressRecord | None:
        """The audit with its findings count, approval question and events, as one read: a
        status poll costs one transaction, not one per fact."""
        with self._session() as session:
            row = session.get(
                AuditRow,
                audit_id,
                options=[undefer(AuditRow.report), undefer(AuditRow.approval_request)],
            )
            if row is None or row.tenant != tenant:
                return None
            events = session.scalars(
                select(EventRow).where(EventRow.audit_id == audit_id).order_by(EventRow.id)
            ).all()
            return AuditProgressRecord(
                record=_record(row),
                findings=len(json.loads(row.report)["findings"]) if row.report else None,
                approval_requested=bool(row.approval_request),
                events=[AuditEvent(id=e.id, kind=e.kind, data=json.loads(e.data)) for e in events],
            )

    def list_audits(self, tenant: str, limit: int = 100) -> list[AuditRecord]:
        with self._session() as session:
            rows = session.scalars(
                select(AuditRow)
                .where(AuditRow.tenant == tenant)
                .order_by(AuditRow.created_at.desc())
                .limit(limit)
            ).all()
            return [_record(r) for r in rows]

    def count_active(self, tenant: str) -> int:
        active = [s.value for s in AuditState if s.active]
        with self._session() as session:
            count = session.scalar(
                select(func.count())
                .select_from(AuditRow)
                .where(AuditRow.tenant == tenant, AuditRow.state.in_(active))
            )
            return int(count or 0)

    def claim(self, owner: str, lease_s: float) -> str | None:
        """Take one audit to run: a queued one, or a running one whose worker went silent
        (its server died): compare-and-set on the lease, so two servers never share one."""
        now = time.time()
        orphaned = (
            (AuditRow.state == AuditState.RUNNING.value)
            & or_(AuditRow.lease_until.is_(None), AuditRow.lease_until < now)
            # never one this owner runs itself (a slow start can outlast its lease)
            & or_(AuditRow.lease_owner.is_(None), AuditRow.lease_owner != owner)
        )
        with self._session() as session:
            candidates = session.scalars(
                select(AuditRow.id)
                .where(or_(AuditRow.state == AuditState.QUEUED.value, orphaned))
                .order_by(AuditRow.created_at)
                .limit(8)
            ).all()
        for audit_id in candidates:
            with self._session() as session:
                result = session.execute(
                    update(AuditRow)
                    .where(
                        AuditRow.id == audit_id,
                        or_(AuditRow.state == AuditState.QUEUED.value, orphaned),
                    )
                    .values(
                        state=AuditState.RUNNING.value,
                        lease_owner=owner,
                        lease_until=now + lease_s,
                        attempts=AuditRow.attempts + 1,
                        started_at=func.coalesce(AuditRow.started_at, now),
                    )
                )
                if getattr(result, "rowcount", 0) == 1:
                    session.add(_event_row(audit_id, "state", {"state": "running"}))
                    return audit_id
        return None

    def renew_leases(self, audit_ids: list[str], owner: str, lease_s: float) -> set[str]:
        """Extend the leases of the audits `owner` runs; the ids it still holds (a cancelled
        audit, or one another server took over, is no longer held)."""
        if not audit_ids:
            return set()
        with self._session() as session:
            session.execute(
                update(AuditRow)
                .where(
                    AuditRow.id.in_(audit_ids),
                    AuditRow.lease_owner == owner,
                    AuditRow.state == AuditState.RUNNING.value,
                )
                .values(lease_until=time.time() + lease_s)
            )
            held = session.scalars(
                select(AuditRow.id).where(
                    AuditRow.id.in_(audit_ids),
                    AuditRow.lease_owner == owner,
                    AuditRow.state == AuditState.RUNNING.value,
                )
            ).all()
            return set(held)

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
    ) -> bool:
        """Record the end of a run, unless the audit was cancelled or taken over meanwhile."""
        now = time.time()
        with self._session() as session:
            row = session.get(AuditRow, audit_id)
            if row is None or row.lease_owner != owner or row.state != AuditState.RUNNING.value:
                return False
            row.state = state.value
            row.finished_at = now
            row.lease_owner = row.lease_until = None
            row.error = error
            if report is not None:
                row.report = report
            row.duration_s = now - (row.started_at or now)
            row.sandbox_runs, row.llm_tokens = sandbox_runs, llm_tokens
            detail: dict[str, Any] = {"state": state.value}
            if error:
                detail["error"] = error
            session.add(_event_row(audit_id, "state", detail))
            return True

    def wait_for_approval(self, audit_id: str, owner: str, request: str, report: str) -> bool:
        """The graph stopped at its approval interrupt: park the audit, free the worker."""
        with self._session() as session:
            row = session.get(AuditRow, audit_id)
            if row is None or row.lease_owner != owner or row.state != AuditState.RUNNING.value:
                return False
            row.state = AuditState.WAITING_APPROVAL.value
            row.lease_owner = row.lease_until = None
            row.approval_request, row.approval_answer, row.report = request, None, report
            session.add(_event_row(audit_id, "state", {"state": row.state}))
            return True

    def answer_approval(self, audit_id: str, tenant: str, answer: str) -> bool:
        """Queue the audit again with the user's answer; the next worker resumes the graph."""
        with self._session() as session:
            result = session.execute(
                update(AuditRow)
                .where(
                    AuditRow.id == audit_id,
                    AuditRow.tenant == tenant,
                    AuditRow.state == AuditState.WAITING_APPROVAL.value,
                )
                .values(state=AuditState.QUEUED.value, approval_answer=answer)
            )
            if getattr(result, "rowcount", 0) != 1:
                return False
            session.add(_event_row(audit_id, "state", {"state": AuditState.QUEUED.value}))
            return True

    def approval(self, audit_id: str, tenant: str | None) -> tuple[str | None, str | None]:
        """(the pending request, the answer given) as stored JSON texts."""
        with self._session() as session:
            row = session.get(AuditRow, audit_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                return None, None
            return row.approval_request, row.approval_answer

    def cancel(self, audit_id: str, tenant: str) -> AuditState | None:
        """Mark a live audit cancelled (its worker is killed by the dispatcher that runs it);
        the state it ends in, or None when not found."""
        with self._session() as session:
            row = session.get(AuditRow, audit_id)
            if row is None or row.tenant != tenant:
                return None
            if AuditState(row.state).final:
                return AuditState(row.state)
            row.state = AuditState.CANCELLED.value
            row.finished_at = time.time()
            row.lease_owner = row.lease_until = None
            session.add(_event_row(audit_id, "state", {"state": row.state}))
            return AuditState.CANCELLED

    def report(self, audit_id: str, tenant: str | None) -> str | None:
        with self._session() as session:
            row = session.get(AuditRow, audit_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                return None
            return row.report

    def replace_report(self, audit_id: str, report: str) -> None:
        with self._session() as session:
            session.execute(update(AuditRow).where(AuditRow.id == audit_id).values(report=report))

    def metrics(self) -> tuple[dict[str, int], int, float, int, int]:
        """(audits by state, finished count, their total seconds, sandbox runs, LLM tokens)."""
        with self._session() as session:
            by_state = {
                state: int(count)
                for state, count in session.execute(
                    select(AuditRow.state, func.count()).group_by(AuditRow.state)
                ).all()
            }
            finished, seconds, runs, tokens = session.execute(
                select(
                    func.count(AuditRow.duration_s),
                    func.coalesce(func.sum(AuditRow.duration_s), 0.0),
                    func.coalesce(func.sum(AuditRow.sandbox_runs), 0),
                    func.coalesce(func.sum(AuditRow.llm_tokens), 0),
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
        rows = [
            {
                "audit_id": audit_id,
                "kind": kind,
                "data": json.dumps(data),
                "created_at": at or time.time(),
            }
            for kind, data, at in events
        ]
        with self._session() as session:  # one bulk INSERT, no unit of work per row
            session.execute(insert(EventRow), rows)

    def last_event_id(self, audit_id: str) -> int:
        """The id of the audit's newest event (0 when it has none)."""
        with self._session() as session:
            newest = session.scalar(
                select(func.max(EventRow.id)).where(EventRow.audit_id == audit_id)
            )
            return int(newest or 0)

    def newest_event_ids(self, audit_ids: list[str]) -> dict[str, int]:
        """Each audit's newest event id (audits without events are left out), in one read."""
        with self._session() as session:
            rows = session.execute(
                select(EventRow.audit_id, func.max(EventRow.id))
                .where(EventRow.audit_id.in_(audit_ids))
                .group_by(EventRow.audit_id)
            ).all()
            return {audit_id: int(newest) for audit_id, newest in rows}

    def events_after(self, audit_id: str, after: int, limit: int = 500) -> list[AuditEvent]:
        with self._session() as session:
            return _events_after(session, audit_id, after, limit)

    def state_and_events_after(
        self, audit_id: str, tenant: str, after: int, limit: int = 500
    ) -> tuple[AuditState | None, list[AuditEvent]]:
        """What an event stream reads each time it looks (one transaction, the state column
        alone): the audit's state (None: not this tenant's), read before its events after
        `after`, so an audit that ends in between still has its last events returned."""
        with self._session() as session:
            row = session.execute(
                select(AuditRow.state).where(AuditRow.id == audit_id, AuditRow.tenant == tenant)
            ).first()
            if row is None:
                return None, []
            return AuditState(row.state), _events_after(session, audit_id, after, limit)


def _event_row(audit_id: str, kind: str, data: dict[str, Any], at: float | None = None) -> EventRow:
    return EventRow(
        audit_id=audit_id, kind=kind, data=json.dumps(data), created_at=at or time.time()
    )


def _events_after(session: Session, audit_id: str, after: int, limit: int) -> list[AuditEvent]:
    rows = session.execute(
        select(EventRow.id, EventRow.kind, EventRow.data)
        .where(EventRow.audit_id == audit_id, EventRow.id > after)
        .order_by(EventRow.id)
        .limit(limit)
    ).all()
    return [AuditEvent(id=i, kind=kind, data=json.loads(data)) for i, kind, data in rows]
