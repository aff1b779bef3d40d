"""Outcome classification: the service's own stops first, then the launcher, then the kernel,
then the exit status."""

from __future__ import annotations

import signal

import pytest

from torchdoctor.sandbox.launch import ERROR_PREFIX, SANDBOX_ERROR_STATUS
from torchdoctor.sandbox.outcome import Outcome, Stop, classify


def _classify(**overrides: object) -> tuple[Outcome, str]:
    arguments: dict[str, object] = {
        "stop": None,
        "exit_code": 0,
        "signal_number": None,
        "stderr": "",
        "cpu_s": 0.1,
        "cpu_limit_s": 10,
    }
    arguments.update(overrides)
    return classify(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("stop", "expected"),
    [
        (Stop.WALL, Outcome.TIMEOUT),
        (Stop.MEMORY, Outcome.MEMORY_LIMIT),
        (Stop.OUTPUT, Outcome.OUTPUT_LIMIT),
        (Stop.DISK, Outcome.KILLED),
    ],
)
def test_the_services_own_stop_decides(stop: Stop, expected: Outcome) -> None:
    outcome, _ = _classify(stop=stop, exit_code=None, signal_number=signal.SIGKILL)
    assert outcome is expected


def test_a_clean_exit_is_ok() -> None:
    assert _classify()[0] is Outcome.OK


def test_a_nonzero_exit_is_a_failure_with_its_status() -> None:
    outcome, reason = _classify(exit_code=2)
    assert outcome is Outcome.FAILED
    assert "2" in reason


def test_a_memory_error_under_the_address_space_limit_is_a_memory_limit() -> None:
    outcome, _ = _classify(exit_code=1, stderr="Traceback...\nMemoryError\n")
    assert outcome is Outcome.MEMORY_LIMIT


def test_the_launchers_own_failure_is_a_sandbox_error() -> None:
    stderr = f"{ERROR_PREFIX} could not become uid 5\n"
    outcome, reason = _classify(exit_code=SANDBOX_ERROR_STATUS, stderr=stderr)
    assert outcome is Outcome.SANDBOX_ERROR
    assert reason == "could not become uid 5"


def test_status_125_without_the_launcher_prefix_is_the_jobs_failure() -> None:
    assert _classify(exit_code=SANDBOX_ERROR_STATUS, stderr="x")[0] is Outcome.FAILED


def test_sigxcpu_and_a_kill_at_the_cpu_limit_are_timeouts() -> None:
    assert _classify(exit_code=None, signal_number=signal.SIGXCPU)[0] is Outcome.TIMEOUT
    at_limit = _classify(exit_code=None, signal_number=signal.SIGKILL, cpu_s=10.0)
    assert at_limit[0] is Outcome.TIMEOUT


def test_other_signals_are_kills_named_in_the_reason() -> None:
    outcome, reason = _classify(exit_code=None, signal_number=signal.SIGSEGV)
    assert outcome is Outcome.KILLED
    assert "SIGSEGV" in reason
