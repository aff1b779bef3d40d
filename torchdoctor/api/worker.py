"""One audit in its own process, forked by the executor's fork server (`run`).

It records the audit's progress events and its outcome in the store. Its server keeps its
lease and kills it (with its sandbox jobs) when the audit is cancelled; it dies with that
server, and the audit is then resumed by the next server to claim it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import psutil

from torchdoctor.agent.audit import ApplyRefused, AuditOptions, run_audit
from torchdoctor.agent.config import ConfigError
from torchdoctor.agent.models import AuditReport
from torchdoctor.agent.workspace import InputError
from torchdoctor.api import logs
from torchdoctor.api.models import AuditRecord, AuditState
from torchdoctor.api.settings import ApiSettings
from torchdoctor.api.store.engine import open_engine
from torchdoctor.api.store.store import Store

log = logging.getLogger("torchdoctor.worker")


def die_with_server() -> None:
    """SIGKILL this process when its parent dies (Linux): the fork server, which itself exits
    with the server. Exit now if the parent is already gone."""
    parent = os.getppid()
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if parent == 1 or not psutil.pid_exists(parent):
        os._exit(1)


def ready() -> None:
    """A no-op job that boots the fork server (its imports are this module's)."""


def audit_options(record: AuditRecord, settings: ApiSettings) -> AuditOptions:
    """The user's choices on the audit's own copy; the server decides the rest."""
    return AuditOptions(
        **record.options.model_dump(),
        target=source_dir(record),
        sandbox=settings.sandbox,
        write_ledger=True,
    )


def source_dir(record: AuditRecord) -> Path:
    return Path(record.workdir) / "src"


def counters(report: AuditReport) -> tuple[int, int]:
    """(sandbox runs, LLM tokens) for the metrics."""
    runs = report.provenance.extra.get("runs", [])
    usage = report.provenance.extra.get("usage", {})
    tokens = sum(int(v) for k, v in usage.items() if "tokens" in k and isinstance(v, int))
    return len(runs) if isinstance(runs, list) else 0, tokens


def work(store: Store, record: AuditRecord, owner: str, settings: ApiSettings) -> None:
    def progress(event: dict[str, Any]) -> None:
        kind = str(event.get("event", "progress"))
        store.add_event(record.id, kind, {k: v for k, v in event.items() if k != "event"})

    try:
        outcome = run_audit(audit_options(record, settings), progress=progress)
    except (InputError, ConfigError, ApplyRefused) as err:
        store.finish(record.id, owner, AuditState.FAILED, error=str(err))
        return
    runs, tokens = counters(outcome.report)
    store.finish(
        record.id,
        owner,
        AuditState.DONE,
        report=outcome.report.model_dump_json(),
        sandbox_runs=runs,
        llm_tokens=tokens,
    )


def run(audit_id: str, owner: str) -> None:
    """The worker's entry point: run one claimed audit and record how it ended."""
    die_with_server()
    logs.configure()
    logs.audit_id_var.set(audit_id)
    settings = ApiSettings()
    store = Store(open_engine(settings.url))
    record = store.get_audit(audit_id, None)
    if record is None:
        log.error("no such audit")
        return
    try:
        work(store, record, owner, settings)
    except Exception as err:
        log.exception("audit failed")
        store.finish(audit_id, owner, AuditState.FAILED, error=f"internal error: {err}")
