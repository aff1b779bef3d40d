"""The service's tables (SQLAlchemy 2). Every row that holds user data names its tenant."""

from __future__ import annotations

from sqlalchemy import Float, ForeignKey, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Times are epoch seconds (floats): one representation on SQLite and PostgreSQL."""


class ApiKeyRow(Base):
    """An API key: only a hash of its secret is kept."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class AuditRow(Base):
    """One submitted audit: its state machine, its lease, and its results once done. The
    report and the approval texts are loaded only where read: the state, lease and stream
    lookups that run many times an audit never copy them."""

    __tablename__ = "audits"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    state: Mapped[str] = mapped_column(String(32), index=True)
    options: Mapped[str] = mapped_column(Text)
    workdir: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    report: Mapped[str | None] = mapped_column(Text, nullable=True, deferred=True)
    approval_request: Mapped[str | None] = mapped_column(Text, nullable=True, deferred=True)
    approval_answer: Mapped[str | None] = mapped_column(Text, nullable=True, deferred=True)
    duration_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    sandbox_runs: Mapped[int] = mapped_column(Integer, default=0)
    llm_tokens: Mapped[int] = mapped_column(Integer, default=0)


class EventRow(Base):
    """One progress event of an audit; its global id is the SSE event id."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    audit_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("audits.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32))
    data: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)


class SessionRow(Base):
    """A review session: its state (`SessionState` as JSON) and a revision for safe updates."""

    __tablename__ = "sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128), index=True)
    source: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(Text)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


class SessionMessageRow(Base):
    """One message of a session; its global id orders the conversation."""

    __tablename__ = "session_messages"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(16))
    blocks: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float)
