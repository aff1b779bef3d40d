"""Who may call: API keys (Bearer), a per-key rate limit, the tenant every lookup is scoped to."""

from __future__ import annotations

import math
import threading
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from torchdoctor.api.models import Principal
from torchdoctor.api.store.store import Store

bearer = HTTPBearer(auto_error=False, description="an API key from `torchdoctor keys create`")


class RateLimiter:
    """A token bucket per key: `per_minute` requests, refilled continuously (per process)."""

    def __init__(self, per_minute: int) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def retry_after(self, key: str) -> int:
        """0 when the request may go ahead (and is counted), else seconds to wait."""
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0
            self._buckets[key] = (tokens, now)
            return max(1, math.ceil((1.0 - tokens) / self.rate))


def too_many(detail: str, retry_after: int) -> HTTPException:
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS, detail, headers={"Retry-After": str(retry_after)}
    )


async def store_of(request: Request) -> Store:
    """Async: FastAPI runs a plain function dependency in a thread, a hop per request for an
    attribute read."""
    store: Store = request.app.state.store
    return store


def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller's key, checked and counted; 401 without a valid one, 429 over its rate."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "an API key is required (Authorization: Bearer ...)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    store: Store = request.app.state.store
    who = store.authenticate(credentials.credentials)
    if who is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "unknown or revoked API key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    limiter: RateLimiter = request.app.state.limiter
    wait = limiter.retry_after(who.key_id)
    if wait:
        raise too_many("rate limit exceeded for this API key", wait)
    return who


Caller = Annotated[Principal, Depends(principal)]
StoreDep = Annotated[Store, Depends(store_of)]
