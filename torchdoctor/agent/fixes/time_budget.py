"""The fix stage's time limit (a GPU lease, a CI job's minutes), as an end rather than a last
start: a verification is started only when those measured so far say it would end in time.
A limit read as "start nothing after T" let a compile verification begin 18 s before T and
run past the device call's end, which lost the whole stage's report."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

COMPILE_COST = 2.0
"""A compiling fix's verification against an eager one's, until one compiling verification
is measured: each of its runs compiles first (on an H200, GPT-2's was still running after 78 s
where the eager ones took a median 61 s). Once measured, compiling ones are judged by their own
times: counting the measured compile (75 s on an H200) twice again kept the ladder's next rung
from starting with 250 s left."""


class TimeBudget:
    def __init__(self, deadline: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        """`deadline` is a `clock()` value; None: no limit."""
        self.deadline = deadline
        self._clock = clock
        self._spent: dict[bool, list[float]] = {False: [], True: []}
        """Seconds each verification took, by whether it compiled."""
        self._closing: bool | None = None
        """The closing check kept room for: None, or whether it compiles."""
        self._verified = 0
        """Fixes verified so far (`keep_for_closing_check`)."""

    @classmethod
    def of_spent(cls, limit: float, spent: Iterable[tuple[float, bool]]) -> TimeBudget:
        """A budget of verification seconds rather than of wall time, after the verifications
        `spent` ((seconds, compiled) each): an audit resumed from its checkpoint carries what
        its verifications took, not a clock, so a restart neither refunds nor loses time."""
        measured = list(spent)
        used = sum(seconds for seconds, _ in measured)
        budget = cls(limit, clock=lambda: used)
        for seconds, compiled in measured:
            budget._spent[compiled].append(seconds)
        return budget

    def past(self) -> bool:
        return self.deadline is not None and self._clock() >= self.deadline

    def keep_for_closing_check(self, compiles: bool) -> None:
        """One more fix verified: the stage ends with the verified fixes checked together once
        two are, so from then on a verification fits only if that check still fits after it
        (costed like a compiling one when any of the fixes compiles). Without it, a GPU-sized
        stage spent its whole budget on single fixes and the joint check ran past the device
        call's end, losing every result."""
        self._verified += 1
        self._closing = bool(self._closing) or compiles

    def fits(self, compiles: bool = False, adds_a_fix: bool = True) -> bool:
        """Whether a verification started now would end in time, and the closing check after
        it when there will be one (`keep_for_closing_check`): one fix verified already and
        this one `adds_a_fix` (a new fix, not another rung of the compile ladder for the same
        fix), or two already. Judged by the median of those of its kind measured so far (of
        the other kind, scaled by `COMPILE_COST`); with none measured yet, whether any time is
        left. Reserving it after a single fix kept GPT-2's ladder on an H200 from its
        step-as-one-graph rung (116 s measured, 164 s left) for a check that never runs."""
        if self.deadline is None:
            return True
        if self.past():
            return False
        if not any(self._spent.values()):
            return True
        expected = self._expected(compiles)
        closing = self._verified >= 2 or (adds_a_fix and self._verified >= 1)
        if closing and self._closing is not None:
            expected += self._expected(self._closing)
        return self._clock() + expected <= self.deadline

    def _expected(self, compiles: bool) -> float:
        same, other = self._spent[compiles], self._spent[not compiles]
        if same:
            return statistics.median(same)
        scale = COMPILE_COST if compiles else 1 / COMPILE_COST
        return statistics.median(other) * scale

    @contextmanager
    def measuring(self, compiles: bool = False) -> Iterator[None]:
        """Times one verification (`compiles`: one whose runs compile), for the next `fits`."""
        started = self._clock()
        try:
            yield
        finally:
            self._spent[compiles].append(self._clock() - started)
