"""The correctness gate: later-phase fixes wait on earlier phases' open critical findings."""

from __future__ import annotations

from torchdoctor.agent.gate import fix_gate
from torchdoctor.agent.models import Evidence, Finding, Severity, Status


def finding(fid: str, phase: int, severity: Severity, status: Status = Status.OPEN) -> Finding:
    return Finding(
        id=fid,
        rule="r",
        checkpoint={1: 1, 2: 3, 3: 5, 4: 6, 5: 10}[phase],
        phase=phase,
        severity=severity,
        title="t",
        file="m.py",
        line=1,
        end_line=1,
        evidence=[Evidence(source="test", message="m")],
        status=status,
    )


def test_performance_fix_blocked_while_a_phase_1_critical_is_open() -> None:
    critical = finding("TD-crit", 1, Severity.CRITICAL)
    perf = finding("TD-perf", 4, Severity.LOW)
    verdict = fix_gate([critical, perf])
    assert verdict.allowed == ["TD-crit"]
    assert "TD-crit" in verdict.blocked["TD-perf"]


def test_performance_fix_allowed_once_the_critical_is_verified() -> None:
    critical = finding("TD-crit", 1, Severity.CRITICAL, Status.VERIFIED)
    perf = finding("TD-perf", 4, Severity.LOW)
    assert fix_gate([critical, perf]).blocked == {}


def test_non_critical_earlier_findings_do_not_block() -> None:
    high = finding("TD-high", 2, Severity.HIGH)
    style = finding("TD-style", 5, Severity.INFO)
    assert fix_gate([high, style]).allowed == ["TD-high", "TD-style"]


def test_same_phase_critical_does_not_block_its_own_phase() -> None:
    critical = finding("TD-crit", 3, Severity.CRITICAL)
    other = finding("TD-other", 3, Severity.MEDIUM)
    assert fix_gate([critical, other]).blocked == {}
