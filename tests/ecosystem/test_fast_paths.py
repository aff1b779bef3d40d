"""What keeps a pre-commit audit fast: no `--version` subprocess for peers that are this
environment's own, no durable checkpoints for an audit that is cheaper to redo than to resume.
(The figures are printed by benchmarks/latency.py.)"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

import torchdoctor.agent.checks.linters.base as linter_base
from tests.conftest import EXAMPLES
from torchdoctor.agent.audit import AuditOptions, run_audit
from torchdoctor.agent.checks.linters.bandit import BanditAdapter
from torchdoctor.agent.checks.linters.ruff import RuffAdapter


def test_own_peer_versions_come_from_metadata_not_a_subprocess(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not (Path(sys.executable).parent / "ruff").exists():
        pytest.skip("ruff is not installed next to this interpreter")

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(linter_base, "run_tool", no_subprocess)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    from importlib import metadata

    assert RuffAdapter().version() == metadata.version("ruff")


def test_a_foreign_peer_still_reports_its_own_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bandit"
    fake.write_text("#!/bin/sh\necho 'bandit 9.8.7'\n", encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert BanditAdapter().version() == "9.8.7"


def test_static_audit_keeps_no_durable_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "train.py"
    shutil.copyfile(EXAMPLES / "train_buggy.py", target)
    report = run_audit(AuditOptions(target=target, write_ledger=False)).report
    assert report.findings
    home = Path(os.environ["TORCHDOCTOR_HOME"])
    assert not (home / "checkpoints.sqlite").exists()
