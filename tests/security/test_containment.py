"""Every hostile script in attacks/ runs through every available backend and must be contained:
the typed outcome expected, no process left, nothing written or read outside the workspace,
the service and its sibling jobs unharmed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.security.attack_harness import ATTACK_LIMITS, ATTACKS, Arena, Attack
from torchdoctor.sandbox.models import Job, Outcome
from torchdoctor.sandbox.protocol import Sandbox
from torchdoctor.sandbox.workspace import WorkspaceError, stage_workspace


@pytest.mark.parametrize("attack", ATTACKS, ids=lambda a: a.name)
def test_attack_is_contained(attack: Attack, backend: tuple[str, Sandbox], arena: Arena) -> None:
    name, sandbox = backend
    verdict = arena.attack(sandbox, name, attack)
    assert verdict.contained, (verdict.violations, verdict.result.stdout[-500:])


def test_secrets_never_reach_the_job(backend: tuple[str, Sandbox], arena: Arena) -> None:
    _name, sandbox = backend
    assert os.environ["OPENAI_API_KEY"] == arena.env_secret
    result = sandbox.run(
        Job(workspace=arena.origin, command=["python3", "env_secret.py", "m", "{}"])
    )
    assert result.outcome is Outcome.OK
    assert "OPENAI_API_KEY" not in result.stdout
    assert "PATH=" in result.stdout


def test_collected_symlinks_return_nothing_from_the_host(
    backend: tuple[str, Sandbox], arena: Arena
) -> None:
    _name, sandbox = backend
    attack = next(a for a in ATTACKS if a.name == "symlink_escape")
    result = sandbox.run(arena.job(attack, "marker-symlink"))
    assert result.outcome is Outcome.OK
    assert result.files == []


def test_an_argv_beyond_the_kernel_limit_is_a_sandbox_error(
    backend: tuple[str, Sandbox], arena: Arena
) -> None:
    _name, sandbox = backend
    huge = ["python3", "-c", "pass", *(["A" * 100_000] * 400)]
    result = sandbox.run(Job(workspace=arena.origin, command=huge, limits=ATTACK_LIMITS))
    assert result.outcome is Outcome.SANDBOX_ERROR, result.reason


def test_a_source_symlink_leading_outside_is_refused(tmp_path: Path, arena: Arena) -> None:
    source = tmp_path / "repo"
    source.mkdir()
    (source / "train.py").write_text("print('hi')\n")
    (source / "leak").symlink_to(arena.secret_file)
    with pytest.raises(WorkspaceError, match="leaves the tree"):
        stage_workspace(source, tmp_path)


def test_the_job_holds_no_capabilities_and_cannot_gain_any(
    backend: tuple[str, Sandbox], arena: Arena
) -> None:
    _name, sandbox = backend
    code = (
        "status = dict(l.split(':', 1) for l in open('/proc/self/status') if ':' in l)\n"
        "print(*(status[k].strip() for k in ('CapEff', 'CapPrm', 'NoNewPrivs', 'Uid')))\n"
    )
    result = sandbox.run(
        Job(workspace=arena.origin, command=["python3", "-c", code], limits=ATTACK_LIMITS)
    )
    effective, permitted, no_new_privs, uids = result.stdout.split(" ", 3)
    assert int(effective, 16) == 0 and int(permitted, 16) == 0
    assert no_new_privs == "1"
    assert "0" not in uids.split()


def test_output_over_the_limit_is_reported_even_when_the_job_ends_at_once(
    backend: tuple[str, Sandbox], arena: Arena
) -> None:
    """A job that writes a little past the limit and exits races the service's own check:
    the outcome must still say its output was cut (docker once answered `ok` here)."""
    _name, sandbox = backend
    code = "import sys; sys.stdout.write('y' * (3 * 65_536)); sys.stdout.flush()"
    for _ in range(3):
        result = sandbox.run(
            Job(workspace=arena.origin, command=["python3", "-c", code], limits=ATTACK_LIMITS)
        )
        assert result.outcome is Outcome.OUTPUT_LIMIT, (result.outcome, result.reason)
        assert result.output_truncated
