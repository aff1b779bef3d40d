"""The fix stage's time limit (a GPU lease, a CI job's minutes), as an end rather than a last
start: a verification is started only when those measured so far say it would end in time.
A limit read as "start nothing after T" let a compile verification begin 18 s before T and
run past the device call's end, which lost the whole stage's report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

COMPILE_COST = 2.0
"""A compiling fix's verification against an eager one's: each of its runs compiles first (on
an H200, GPT-2's was still running after 78 s where the eager ones took a median 61 s)."""


class TimeBudget:
    def __init__(self, deadline: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        """`deadline` is a `clock()` value; None: no limit."""
        self.deadline = deadline
        self._clock = clock
        self._spent: list[float] = []
        self._closing = 0.0

    def past(self) -> bool:
        return self.deadline is not None and self._clock() >= self.deadline

    def keep_for_closing_check(self, compiles: bool) -> None:
        """The stage ends with one more verification, the verified fixes together: from now on
        a verification fits only if that one still fits after it (costed like a compiling one
        when any of the fixes compiles). Without it, a GPU-sized stage spent its whole budget on
        single fixes and the joint check ran past the device call's end, losing every result."""
        self._closing = max(self._closing, COMPILE_COST if compiles else 1.0)

    def fits(self, compiles: bool = False) -> bool:
        """Whether a verification started now would end in time, and the closing check after
        it (`keep_for_closing_check`), judged by the median of those measured so far (a
        compiling one counts `COMPILE_COST` times); with none measured yet, whether any time is
        left."""
        if self.deadline is None:
            return True
        if self.past():
            return False
        if not self._spent:
            return True
        cost = (COMPILE_COST if compiles else 1.0) + self._closing
        expected = statistics.median(self._spent) * cost
        return self._clock() + expected <= self.deadline

    @contextmanager
    def measuring(self) -> Iterator[None]:
        """Times one verification, for the next `fits`."""
        started = self._clock()
        try:
            yield
        finally:
            self._spent.append(self._clock() - started)
