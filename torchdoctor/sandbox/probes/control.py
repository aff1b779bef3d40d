"""Stopping a user script from the outside: after N steps, or when its time budget runs out.

Both stops are `BaseException` subclasses so that a script's `except Exception:` cannot
swallow them. A time budget is enforced twice: SIGALRM raises `TimeBudgetExceeded` between
bytecodes of the main thread; a watchdog thread, a grace period later, writes the evidence
itself and ends the process when the script is stuck inside C code that never returns.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from types import FrameType


class StopRun(BaseException):
    """Raised by the harness once the requested number of steps has run."""


class TimeBudgetExceeded(BaseException):
    """Raised in the main thread when the wall-clock budget is spent."""


def _raise_budget(signum: int, frame: FrameType | None) -> None:
    raise TimeBudgetExceeded()


class Watchdog:
    """Interrupts the main thread at `budget_s`, then forces an exit `grace_s` later."""

    def __init__(self, budget_s: float, grace_s: float, on_stuck: Callable[[], None]) -> None:
        self.budget_s = budget_s
        self.grace_s = grace_s
        self._on_stuck = on_stuck
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="probes-watchdog", daemon=True)
        self._previous: object = None

    def start(self) -> None:
        self._previous = signal.signal(signal.SIGALRM, _raise_budget)
        signal.setitimer(signal.ITIMER_REAL, self.budget_s)
        self._thread.start()

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        self._done.set()

    def _watch(self) -> None:
        if self._done.wait(self.budget_s + self.grace_s):
            return
        try:
            self._on_stuck()
        finally:
            os._exit(0)
