"""The FastAPI application: routes, auth state, limits, CORS, and the dispatcher's lifetime.

`torchdoctor serve` runs `create_app()` under uvicorn; `app` is the same for `uvicorn
torchdoctor.api.app:app` and LangGraph's `http.app`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from torchdoctor import __version__
from torchdoctor.api import ops
from torchdoctor.api.auth import RateLimiter
from torchdoctor.api.dispatcher import Dispatcher
from torchdoctor.api.event_watch import EventWatch
from torchdoctor.api.executor import Executor, executor_for
from torchdoctor.api.models import SubmitFiles
from torchdoctor.api.routes import approvals, audits, results, review, sessions
from torchdoctor.api.session_driver import session_service
from torchdoctor.api.settings import ApiSettings
from torchdoctor.api.store.engine import open_engine
from torchdoctor.api.store.store import Store
from torchdoctor.api.web.pages import mount_review_page

DESCRIPTION = """\
Submit PyTorch code, follow its 12-point audit live, approve the verified fixes, fetch the
report, the ledger and the patch; review it in a chat session (`/v1/sessions`). Every call
but the health checks needs an API key (`torchdoctor keys create --tenant NAME`) as
`Authorization: Bearer td_...`.
"""


class BodyLimit:
    """413 for a body over `limit` bytes, by its Content-Length or as it streams in."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _too_large(self.limit)(scope, receive, send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge:
            await _too_large(self.limit)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body larger than {limit} bytes"}, status_code=413)


def _one_line(exc: RequestValidationError) -> str:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return f"{where}: {first.get('msg', 'invalid')}" if where else str(first.get("msg"))


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, plus the JSON submission's schema (the submit route reads its body
    itself, to take multipart uploads too)."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schema = SubmitFiles.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(schema.pop("$defs", {}))
    schemas["SubmitFiles"] = schema
    app.openapi_schema = document
    return document


def create_app(
    settings: ApiSettings | None = None, executor: Executor | None = None, poll_s: float = 0.25
) -> FastAPI:
    settings = settings or ApiSettings()
    store = Store(open_engine(settings.url))
    pool = executor or executor_for(settings)
    event_watch = EventWatch(store, poll_s)
    dispatcher = Dispatcher(
        store, pool, settings.lease_seconds, interval_s=poll_s, on_news=event_watch.wake
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.audits_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tasks = [asyncio.create_task(loop.run_forever()) for loop in (dispatcher, event_watch)]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            pool.close()

    app = FastAPI(
        title="torchdoctor",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
    )
    app.state.settings = settings
    app.state.store = store
    app.state.dispatcher = dispatcher
    app.state.event_watch = event_watch
    app.state.sessions = session_service(store, settings)
    app.state.limiter = RateLimiter(settings.rate_limit_per_minute)
    app.state.metrics = ops.metrics_registry(store)
    app.state.sandbox_check = ops.SandboxCheck(settings.sandbox)
    app.state.poll_s = poll_s

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _one_line(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers: dict[str, Any] = dict(exc.headers or {})
        return JSONResponse(
            {"detail": str(exc.detail)}, status_code=exc.status_code, headers=headers
        )

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.include_router(audits.router)
    app.include_router(results.router)
    app.include_router(approvals.router)
    app.include_router(sessions.router)
    app.include_router(review.router)
    app.include_router(ops.router)
    mount_review_page(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    return app
