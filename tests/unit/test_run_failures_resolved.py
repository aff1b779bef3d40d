"""A crash the verified fixes remove is recorded as fixed in the ledger, not left open."""

from __future__ import annotations

from torchdoctor.agent.fixes.models import SmokeRun
from torchdoctor.agent.fixing import resolved_run_failures
from torchdoctor.agent.models import Evidence, Finding, Fix, Severity, Status, Verification


def _finding(
    fid: str, rule: str, *, fix: Fix | None = None, status: Status = Status.OPEN
) -> Finding:
    return Finding(
        id=fid,
        rule=rule,
        checkpoint=2 if rule.startswith("probe-") else 1,
        phase=1,
        severity=Severity.HIGH,
        title=rule,
        file="train.py",
        line=23,
        end_line=23,
        evidence=[Evidence(source="torchdoctor-probes", kind="probe", message="it failed")],
        status=status,
        fix=fix,
    )


def _fix(*, runs: bool) -> Fix:
    return Fix(
        diff="--- a\n+++ b\n",
        verified=True,
        verification=[
            Verification(step="patch-applies", ok=True),
            Verification(step="smoke-run", ok=runs),
        ],
    )


CRASHED = SmokeRun(ok=False, detail="script-error: RuntimeError: view size is not compatible")


def test_the_crash_is_fixed_by_a_fix_whose_run_completes() -> None:
    crash = _finding("TD-crash", "probe-script-error")
    hang = _finding("TD-hang", "probe-hang", status=Status.WONT_FIX)
    fix = _finding("TD-view", "flatten-view-of-transposed", fix=_fix(runs=True))
    resolved = resolved_run_failures([crash, hang, fix], [fix], CRASHED)
    assert [f.id for f in resolved] == ["TD-crash"]  # a won't-fix decision is the user's
    assert resolved[0].status is Status.FIXED
    assert "TD-view" in resolved[0].evidence[-1].message
    assert "view size" in resolved[0].evidence[-1].message


def test_nothing_is_resolved_without_a_completed_run_or_a_failed_original() -> None:
    crash = _finding("TD-crash", "probe-script-error")
    no_run = _finding("TD-static", "flatten-view-of-transposed", fix=_fix(runs=False))
    assert resolved_run_failures([crash], [no_run], CRASHED) == []
    ran = _finding("TD-view", "flatten-view-of-transposed", fix=_fix(runs=True))
    assert resolved_run_failures([crash], [ran], SmokeRun(ok=True)) == []
    assert resolved_run_failures([crash], [ran], None) == []
