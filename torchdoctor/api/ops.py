"""Operations: liveness, readiness (store and sandbox), Prometheus metrics from the store."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request, Response, status
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector
from pydantic import BaseModel

from torchdoctor.api.models import AuditState
from torchdoctor.api.store.store import Store

router = APIRouter(tags=["operations"])
SANDBOX_TTL_S = 60.0


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    store: str
    sandbox: str


class StoreCollector(Collector):
    """Metrics read from the store at scrape time: right across worker processes, replicas and
    restarts."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Any]:
        by_state, finished, seconds, runs, tokens = self.store.metrics()
        audits = GaugeMetricFamily("torchdoctor_audits", "audits by state", labels=["state"])
        for state in AuditState:
            audits.add_metric([state.value], by_state.get(state.value, 0))
        yield audits
        yield SummaryMetricFamily(
            "torchdoctor_audit_duration_seconds",
            "time from first start to the end of finished audits",
            count_value=finished,
            sum_value=seconds,
        )
        yield CounterMetricFamily(
            "torchdoctor_sandbox_runs", "instrumented sandbox runs of finished audits", value=runs
        )
        yield CounterMetricFamily(
            "torchdoctor_llm_tokens", "LLM tokens spent by finished audits", value=tokens
        )


def metrics_registry(store: Store) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry


class SandboxCheck:
    """The sandbox's isolation, probed at most once a minute (a probe starts processes)."""

    def __init__(self, choice: str | None) -> None:
        self.choice = choice
        self._checked_at = -SANDBOX_TTL_S
        self._verdict = ""

    def verdict(self) -> str:
        if time.monotonic() - self._checked_at >= SANDBOX_TTL_S:
            from torchdoctor.sandbox.config import get_sandbox

            try:
                isolation = get_sandbox(self.choice).isolation
                degraded = " (degraded)" if isolation.degraded else ""
                self._verdict = f"ok: {isolation.backend}/{isolation.mechanism}{degraded}"
            except Exception as err:
                self._verdict = f"unavailable: {err}"
            self._checked_at = time.monotonic()
        return self._verdict


@router.get("/healthz", response_model=Health, summary="The process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="The store answers and the sandbox can run jobs",
    responses={503: {"model": Readiness, "description": "not ready"}},
)
def readyz(request: Request, response: Response) -> Readiness:
    store: Store = request.app.state.store
    try:
        store.ping()
        store_state = "ok"
    except Exception as err:
        store_state = f"unavailable: {type(err).__name__}"
    sandbox_state = request.app.state.sandbox_check.verdict()
    ready = store_state == "ok" and sandbox_state.startswith("ok")
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return Readiness(
        status="ok" if ready else "unavailable", store=store_state, sandbox=sandbox_state
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
def metrics(request: Request) -> Response:
    registry: CollectorRegistry = request.app.state.metrics
    return Response(generate_latest(registry), media_type="text/plain; version=0.0.4")
