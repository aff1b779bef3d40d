"""An audit already made of the same bytes, with the same choices, is not made again.

An offline static audit (no runs, fixes or artifacts asked for, none configured by the
upload, the deterministic reasoner) is a function of the submitted files, the choices, the
server's settings, torchdoctor's code and the peers' versions: the key covers all of them. A
finished one keeps its report and ledger (`keep`); the server finishes a repeat from them at
once, without a worker process (`finish_reused`), and a repeat claimed while its first is
still running waits for it without holding a worker slot (`Dispatcher`). The same argument
as the other result caches (`result_cache`) makes sharing them across tenants safe: what is
kept derives only from the bytes its key names. `TORCHDOCTOR_RESULT_CACHE=0` turns it off.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor import __version__
from torchdoctor.agent import result_cache
from torchdoctor.agent.checks.fingerprint import code_fingerprint
from torchdoctor.agent.ledger import LEDGER_NAME
from torchdoctor.agent.models import AuditReport
from torchdoctor.agent.safefs import GuardedTree
from torchdoctor.api.models import AuditEvent, AuditRecord, AuditState
from torchdoctor.api.store.store import Store

MAX_ENTRIES = 500
MAX_FILE_BYTES = 64 * 2**20
"""A file larger than this is not hashed: such an audit is simply not reused."""


class KeptAudit(BaseModel):
    """What a repeat of an audit is finished with."""

    model_config = ConfigDict(extra="forbid")

    report: AuditReport
    ledger: str | None = None
    events: list[tuple[str, dict[str, Any]]] = Field(default_factory=list)
    """Its progress through the phases and points, replayed for each repeat."""


_KEPT = result_cache.ResultCache("audits", KeptAudit, MAX_ENTRIES)


def reuse_key(record: AuditRecord) -> str | None:
    """The audit's content key; None when its choices ask for anything but an offline static
    audit, or its tree cannot be read whole (links, odd names: the audit itself will say why)."""
    choices = record.options
    if not result_cache.enabled() or not choices.offline:
        return None  # a configured LLM answers differently each time
    if choices.run or choices.discover or choices.fix:
        return None
    if choices.artifacts or choices.mypy:
        return None
    digest = hashlib.sha256()
    settings = sorted((k, v) for k, v in os.environ.items() if k.startswith("TORCHDOCTOR_"))
    head = [__version__, code_fingerprint(), peer_versions(), choices.model_dump_json()]
    digest.update(repr([*head, settings]).encode())
    tree = GuardedTree(Path(record.workdir) / "src")
    for entry in tree.walk():
        if entry.refused is not None:
            return None
        if tree.lstat(entry.relpath).st_size > MAX_FILE_BYTES:
            return None
        digest.update(entry.relpath.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(hashlib.sha256(tree.read_bytes(entry.relpath)).digest())
    return digest.hexdigest()


@functools.cache
def peer_versions() -> str:
    """The peer linters this process would run, with their versions (read once)."""
    from torchdoctor.agent.checks.linters.runner import default_adapters

    return repr(sorted((a.name, a.version()) for a in default_adapters() if a.available()))


PROGRESS_KINDS = frozenset({"phase", "point", "gate"})


def keep(key: str, report: AuditReport, tree: Path, events: list[AuditEvent]) -> None:
    """Keep a finished audit for its repeats, with the ledger it wrote into `tree` and its
    progress `events`, if nothing in it could differ the next time: no run in the sandbox,
    the deterministic reasoner, no fix or artifact."""
    if report.provenance.reasoner != "offline" or report.provenance.extra.get("runs"):
        return
    if any(f.fix is not None for f in report.findings) or report.artifacts:
        return
    try:
        ledger: str | None = GuardedTree(tree).read_text(LEDGER_NAME)
    except OSError:
        ledger = None
    progress = [(e.kind, e.data) for e in events if e.kind in PROGRESS_KINDS]
    _KEPT.store(key, KeptAudit(report=report, ledger=ledger, events=progress))


def kept(key: str) -> KeptAudit | None:
    return _KEPT.load(key)


def finish_reused(store: Store, record: AuditRecord, owner: str, reused: KeptAudit) -> None:
    """Finish a claimed audit with a kept one's report (under its own id and times) and
    ledger, written into its own tree as its worker would have (links refused: the ledger
    is then left out, as the worker would have had to)."""
    now = time.time()
    started = record.started_at or now
    provenance = reused.report.provenance.model_copy(
        update={
            "audit_id": record.id,
            "started_at": datetime.fromtimestamp(started, UTC).isoformat(timespec="seconds"),
            "duration_s": now - started,
            "extra": {**reused.report.provenance.extra, "reused": True},
        }
    )
    report = reused.report.model_copy(update={"provenance": provenance})
    if reused.ledger is not None:
        with contextlib.suppress(OSError):
            GuardedTree(Path(record.workdir) / "src").write_text(LEDGER_NAME, reused.ledger)
    replayed = [(kind, data, now) for kind, data in reused.events]
    note = {"message": "same code and choices as an earlier audit"}
    store.finish(
        record.id,
        owner,
        AuditState.DONE,
        report=report.model_dump_json(),
        events=[*replayed, ("progress", note, now)],
    )
