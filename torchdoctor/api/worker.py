"""One audit in its own process, forked by the executor's fork server (`run`).

It records the audit's progress events and its outcome in the store. Its server keeps its
lease and kills it (with its sandbox jobs) when the audit is cancelled; it dies with that
server, and the audit is then resumed by the next server to claim it.
"""

from __future__ import annotations

import functools
import logging
import os
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import psutil
from sqlalchemy.exc import SQLAlchemyError

from torchdoctor.agent import result_cache
from torchdoctor.agent.audit import (
    AuditOptions,
    AuditOutcome,
    ResumeError,
    resume_audit,
    run_audit,
)
from torchdoctor.agent.config import ConfigError
from torchdoctor.agent.models import AuditReport, Target
from torchdoctor.agent.state import ApprovalAnswer
from torchdoctor.agent.workspace import InputError
from torchdoctor.api import logs
from torchdoctor.api.event_batch import EventBatch
from torchdoctor.api.models import AuditRecord, AuditState
from torchdoctor.api.processes import kill_tree
from torchdoctor.api.reuse import keep, reuse_key
from torchdoctor.api.settings import ApiSettings
from torchdoctor.api.store.engine import open_engine
from torchdoctor.api.store.store import Store

log = logging.getLogger("torchdoctor.worker")


class ServerWatch(threading.Thread):
    """Kills this worker, with its sandbox jobs, when the server that claimed its audit dies:
    the audit is then resumed from its checkpoint by the next server that claims it. (The fork
    server is this process's parent, not the server; it exits once no one holds it.)"""

    def __init__(self, server_pid: int, interval_s: float = 0.5) -> None:
        super().__init__(daemon=True, name="server-watch")
        self.server = psutil.Process(server_pid)
        self.interval_s = interval_s

    def run(self) -> None:
        while self.server.is_running():  # False once gone, or its pid reused
            time.sleep(self.interval_s)
        log.info("server gone: stopping")
        kill_tree(os.getpid())


def ready() -> None:
    """A no-op job that boots the fork server (its imports are this module's and `PRELOAD`'s)."""


def audit_options(record: AuditRecord, settings: ApiSettings) -> AuditOptions:
    """The user's choices on the audit's own copy; the server decides the rest. Fixes and
    artifacts asked for are written to that copy only once approved (the graph's approval
    interrupt)."""
    choices = record.options
    return AuditOptions(
        **choices.model_dump(),
        target=source_dir(record),
        search_parents=False,  # the upload's own pyproject.toml only, never the server's
        sandbox=settings.sandbox,
        write_ledger=True,
        apply=choices.fix or bool(choices.artifacts),  # offered artifacts wait on approval too
        force=True,
    )


def source_dir(record: AuditRecord) -> Path:
    return Path(record.workdir) / "src"


def counters(report: AuditReport) -> tuple[int, int]:
    """(sandbox runs, LLM tokens) for the metrics."""
    runs = report.provenance.extra.get("runs", [])
    usage = report.provenance.extra.get("usage", {})
    tokens = sum(int(v) for k, v in usage.items() if "tokens" in k and isinstance(v, int))
    return len(runs) if isinstance(runs, list) else 0, tokens


def without_server_paths(report: AuditReport) -> AuditReport:
    """The report names the submitted tree as `.`, never the server's folder."""
    return report.model_copy(update={"target": Target(path=".", kind=report.target.kind)})


def drive(
    store: Store,
    record: AuditRecord,
    settings: ApiSettings,
    events: EventBatch,
    *,
    retried: bool = False,
) -> AuditOutcome:
    """Start the audit's graph, or resume it from its checkpoint (after a crash, a retry of
    its Ray task, or with the user's answer to its approval question)."""

    def progress(event: dict[str, Any]) -> None:
        kind = str(event.get("event", "progress"))
        events.add(kind, {k: v for k, v in event.items() if k != "event"})

    _, answer_text = store.approval(record.id, None)
    answer = ApprovalAnswer.model_validate_json(answer_text) if answer_text else None
    approver = (lambda _question: answer) if answer is not None else None
    if retried or record.attempts > 1 or answer is not None:
        try:
            return resume_audit(record.id, progress, approver=approver)
        except ResumeError:
            pass  # nothing checkpointed (a static audit is redone faster than resumed)
    return run_audit(
        audit_options(record, settings), progress, approver=approver, audit_id=record.id
    )


def work(
    store: Store, record: AuditRecord, owner: str, settings: ApiSettings, *, retried: bool = False
) -> None:
    key = reuse_key(record)  # of the tree as submitted, before the audit writes its ledger
    try:
        with EventBatch(store, record.id) as events:  # written before the final state
            outcome = drive(store, record, settings, events, retried=retried)
    except (InputError, ConfigError) as err:
        store.finish(record.id, owner, AuditState.FAILED, error=str(err))
        return
    report = without_server_paths(outcome.report)
    if outcome.pending is not None:
        store.wait_for_approval(
            record.id, owner, outcome.pending.model_dump_json(), report.model_dump_json()
        )
        return
    runs, tokens = counters(report)
    if key is not None:
        keep(key, report, source_dir(record), store.events_after(record.id, 0))
    store.finish(
        record.id,
        owner,
        AuditState.DONE,
        report=report.model_dump_json(),
        sandbox_runs=runs,
        llm_tokens=tokens,
    )


@functools.cache
def store_for(url: str) -> Store:
    """This process's store on `url`, made once. The fork server makes the workers' own
    (`preload`), so each worker inherits the engine with its dialect set up, its ORM mappers
    configured and its reads compiled: ~25 ms of CPU that each worker paid again on its
    first queries."""
    return Store(open_engine(url))


def warm_store() -> None:
    """Run the worker's reads once on its store, then close the engine's connections: the
    fork server keeps the engine, never a connection that a fork would share. A database
    that cannot be read yet costs the warm-up only (each worker connects, or fails, itself)."""
    store = store_for(ApiSettings().url)
    try:
        store.get_audit("", None)
        store.approval("", None)
        store.events_after("", 0)
    except SQLAlchemyError:
        log.warning("the store could not be warmed", exc_info=True)
    finally:
        store.engine.dispose()


def warm_audit() -> None:
    """One offline static audit of the warm-up sample (`warm_up.SAMPLE`), as a worker runs
    it, in the fork server itself: what an audit sets up on first use (the rules' data
    tables, the peers' adapters, code tables and evidence merge, the report and the ledger's
    rendering) is then inherited ready by every worker instead of being set up again in each
    (~15 ms of CPU an audit on the bundled examples). Nothing of it is kept: the result caches
    are off for it (its results would be a stranger's cache entries), its folder is removed,
    and its threads have ended before the fork server forks. An audit that fails here costs
    the warm-up only."""
    from torchdoctor.agent.checks.linters.warm_up import SAMPLE

    saved = os.environ.get(result_cache.ENABLED_ENV)
    os.environ[result_cache.ENABLED_ENV] = "0"
    before = set(threading.enumerate())
    try:
        with tempfile.TemporaryDirectory(prefix="td-warm-audit-") as scratch:
            target = Path(scratch) / "src"
            target.mkdir()
            (target / "train.py").write_text(SAMPLE, encoding="utf-8")
            options = AuditOptions(
                target=target, offline=True, search_parents=False, write_ledger=True, force=True
            )
            run_audit(options, lambda _event: None)
    except Exception:
        log.warning("the warm-up audit failed", exc_info=True)
    finally:
        if saved is None:
            os.environ.pop(result_cache.ENABLED_ENV, None)
        else:
            os.environ[result_cache.ENABLED_ENV] = saved
        for thread in set(threading.enumerate()) - before:  # the peers' pool, on its way out
            thread.join(timeout=5.0)


def run(audit_id: str, owner: str, server_pid: int, recorded: Connection | None = None) -> None:
    """The worker's entry point: run one claimed audit and record how it ended, then close
    `recorded` (the executor then lets this worker's slot go while it exits)."""
    try:
        ServerWatch(server_pid).start()
    except psutil.NoSuchProcess:
        return
    record_outcome(audit_id, owner, forked=True)
    if recorded is not None:
        recorded.close()


def run_on_cluster(audit_id: str, owner: str) -> None:
    """The entry point of an audit's Ray task. Ray ties the task to the server that started
    it (it dies with that server) and retries it when its node dies: every attempt resumes
    from the audit's checkpoint when there is one, so what was done is not done again."""
    record_outcome(audit_id, owner, retried=True)


def record_outcome(
    audit_id: str, owner: str, *, retried: bool = False, forked: bool = False
) -> None:
    logs.configure()
    logs.audit_id_var.set(audit_id)
    settings = ApiSettings()
    store = store_for(settings.url)
    if forked:  # connections its parent's pool may hold stay the parent's, never closed here
        store.engine.dispose(close=False)
    record = store.get_audit(audit_id, None)
    if record is None:
        log.error("no such audit")
        return
    try:
        work(store, record, owner, settings, retried=retried)
    except Exception as err:
        log.exception("audit failed")
        store.finish(audit_id, owner, AuditState.FAILED, error=f"internal error: {err}")
