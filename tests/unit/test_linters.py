"""Peer linters as evidence: real tools on real fixture files, and real broken executables.

A tool's test is skipped only when the tool is not installed (`pip install torchdoctor[linters]`).
Broken tools are real scripts put first on PATH: one that exits 3, one that prints garbage, one
that hangs with a child process.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.checks.linters import (
    LinterRun,
    merge_linter_evidence,
    native_key,
    run_linters,
)
from torchdoctor.agent.checks.linters.bandit import BanditAdapter
from torchdoctor.agent.checks.linters.base import LinterResult, command_line_batches
from torchdoctor.agent.checks.linters.detect_secrets import DetectSecretsAdapter
from torchdoctor.agent.checks.linters.evidence import EvidenceFactory, classify
from torchdoctor.agent.checks.linters.mypy import MypyAdapter
from torchdoctor.agent.checks.linters.pip_audit import PipAuditAdapter
from torchdoctor.agent.checks.linters.ruff import RuffAdapter
from torchdoctor.agent.checks.linters.torchfix import TorchFixAdapter
from torchdoctor.agent.models import Severity

FIXTURES = Path(__file__).parents[1] / "fixtures" / "linters"
FILES = ["train_legacy.py", "settings.py", "clean.py"]


def _unless(installed: bool, package: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not installed, reason=f"{package} is not installed")


needs_torchfix = _unless(TorchFixAdapter().available(), "torchfix (flake8 plugin)")
needs_ruff = _unless(RuffAdapter().available(), "ruff")
needs_bandit = _unless(BanditAdapter().available(), "bandit")
needs_detect_secrets = _unless(DetectSecretsAdapter().available(), "detect-secrets")
needs_mypy = _unless(MypyAdapter().available(), "mypy")
needs_pip_audit = _unless(PipAuditAdapter().available(), "pip-audit")


@pytest.fixture(scope="module")
def real_run() -> LinterRun:
    return run_linters(FIXTURES, FILES, offline=True, timeout_s=120)


def result_of(run: LinterRun, tool: str) -> LinterResult:
    return next(r for r in run.results if r.tool == tool)


def found(run: LinterRun, tool: str) -> set[tuple[str | None, int | None, str]]:
    return {(e.file, e.line, e.data["code"]) for e in run.evidence if e.source == tool}


@needs_torchfix
def test_torchfix_reports_deprecations_unsafe_load_and_typo(real_run: LinterRun) -> None:
    assert result_of(real_run, "torchfix").status == "ok"
    assert {
        ("train_legacy.py", 12, "TOR102"),
        ("train_legacy.py", 16, "TOR101"),
        ("train_legacy.py", 25, "TOR401"),
        ("train_legacy.py", 27, "TOR002"),
        ("train_legacy.py", 30, "TOR003"),
    } <= found(real_run, "torchfix")
    load = next(e for e in real_run.evidence if e.data["code"] == "TOR102")
    assert load.kind == "linter" and load.source_version == real_run.tools["torchfix"]
    assert (load.data["items"], load.data["point"], load.data["severity"]) == (["11.2"], 11, "high")
    assert "> 12 |     return torch.load(path)" in load.excerpt


@needs_ruff
def test_ruff_reports_bare_except_with_a_relative_path(real_run: LinterRun) -> None:
    assert ("train_legacy.py", 32, "E722") in found(real_run, "ruff")
    bare = next(e for e in real_run.evidence if e.data["code"] == "E722")
    assert bare.data["items"] == ["2.2"] and bare.data["point"] == 2


@needs_bandit
def test_bandit_reports_unsafe_torch_load_as_safe_loading_item(real_run: LinterRun) -> None:
    assert {("train_legacy.py", 12, "B614"), ("train_legacy.py", 21, "B301")} <= found(
        real_run, "bandit"
    )
    shell = next(e for e in real_run.evidence if e.data["code"] == "B602")
    assert (shell.data["items"], shell.data["point"]) == ([], 11)


@needs_detect_secrets
def test_detect_secrets_reports_the_committed_key(real_run: LinterRun) -> None:
    assert found(real_run, "detect-secrets") == {("settings.py", 3, "AWS Access Key")}
    secret = next(e for e in real_run.evidence if e.source == "detect-secrets")
    assert secret.data["items"] == ["11.3"]
    assert "AKIA" not in secret.message  # the secret itself is never repeated in evidence


def test_clean_file_gets_no_evidence(real_run: LinterRun) -> None:
    assert not [e for e in real_run.evidence if e.file == "clean.py"]


@needs_mypy
def test_mypy_is_opt_in_and_reports_type_errors(real_run: LinterRun) -> None:
    assert "mypy" not in real_run.tools
    note = next(c for c in real_run.coverage if c.tool == "mypy")
    assert note.status == "not-checked" and "opt-in" in note.reason
    asked = run_linters(FIXTURES, ["typed_error.py"], [MypyAdapter()])
    assert found(asked, "mypy") == {("typed_error.py", 5, "operator")}


def test_coverage_names_the_items_each_tool_covers(real_run: LinterRun) -> None:
    items = {c.tool: c.items for c in real_run.coverage}
    assert items["torchfix"] == ["1.6"]
    assert items["pip-audit"] == ["11.1"]
    assert "2.2" in items["ruff"]


@needs_pip_audit
def test_pip_audit_offline_flag_marks_every_pin_unknown(real_run: LinterRun) -> None:
    result = result_of(real_run, "pip-audit")
    assert result.status == "not-run" and result.evidence == []
    assert result.notes == ["not checked: offline"]
    assert {"torch==2.5.1", "requests==2.19.0"} <= set(result.unknown)
    assert any(u.startswith("numpy (requirements.txt:4)") for u in result.unknown)
    note = next(c for c in real_run.coverage if c.tool == "pip-audit")
    assert note.status == "not-checked" and "not checked: offline" in note.reason


@needs_pip_audit
def test_real_pip_audit_without_network_is_not_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:  # a local port nothing listens on: every request is refused
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(var, dead)
    for var in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(var, "")
    result = PipAuditAdapter(timeout_s=60).run(FIXTURES, FILES)
    assert result.status != "ok" and result.evidence == []
    assert any("not checked: offline" in n for n in result.notes), result.notes
    assert {"torch==2.5.1", "requests==2.19.0"} <= set(result.unknown)


def fake_tool(folder: Path, name: str, body: str) -> Path:
    script = folder / name
    script.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
    script.chmod(script.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return script


@pytest.fixture
def fake_bin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ.get('PATH', '')}")
    return folder


def replay_pip_audit(fake_bin: Path, report: dict[str, object], stderr: str) -> None:
    """A pip-audit that prints a recorded JSON report, as the real one does offline/online."""
    fake_tool(
        fake_bin,
        "pip-audit",
        'if [ "$1" = "--version" ]; then echo "pip-audit 2.10.1"; exit 0; fi\n'
        f"cat <<'JSON'\n{json.dumps(report)}\nJSON\necho '{stderr}' >&2\nexit 0",
    )


def test_pip_audit_skipped_packages_are_unknown_never_clean(fake_bin: Path) -> None:
    reason = "Dependency not found on PyPI and could not be audited: {} ({})"
    replay_pip_audit(
        fake_bin,
        {
            "dependencies": [
                {"name": "requests", "skip_reason": reason.format("requests", "2.19.0")},
                {"name": "torch", "skip_reason": reason.format("torch", "2.5.1")},
            ],
            "fixes": [],
        },
        "No known vulnerabilities found, 2 dependencies skipped",
    )
    result = PipAuditAdapter().run(FIXTURES, FILES)
    assert result.status == "failed" and result.evidence == []
    assert result.notes == ["not checked: offline: pip-audit skipped all 2 packages"]
    assert len([u for u in result.unknown if "could not be audited" in u]) == 2


def test_pip_audit_audits_the_manifests_it_is_given(fake_bin: Path) -> None:
    replay_pip_audit(fake_bin, {"dependencies": [], "fixes": []}, "")
    given = {"deps/requirements.txt": "numpy\n"}
    result = PipAuditAdapter(manifests=given).run(FIXTURES, FILES)
    assert result.status == "not-run"
    assert result.unknown == ["numpy (deps/requirements.txt:1): no exact version"]


def test_pip_audit_vulnerability_points_at_the_manifest_line(fake_bin: Path) -> None:
    replay_pip_audit(
        fake_bin,
        {
            "dependencies": [
                {"name": "requests", "version": "2.19.0", "vulns": []},
                {
                    "name": "torch",
                    "version": "2.5.1",
                    "vulns": [
                        {
                            "id": "GHSA-53q9-r3pm-6pq6",
                            "fix_versions": ["2.6.0"],
                            "aliases": ["CVE-2025-32434"],
                        }
                    ],
                },
            ],
            "fixes": [],
        },
        "Found 1 known vulnerability in 1 package",
    )
    result = PipAuditAdapter().run(FIXTURES, FILES)
    assert result.status == "ok"
    [vuln] = result.evidence
    assert (vuln.file, vuln.line, vuln.data["code"]) == (
        "requirements.txt",
        2,
        "GHSA-53q9-r3pm-6pq6",
    )
    assert "CVE-2025-32434" in vuln.message and vuln.data["fix_versions"] == ["2.6.0"]
    assert "> 2 | torch==2.5.1" in vuln.excerpt


class MissingRuff(RuffAdapter):
    executable = "td-no-such-linter-anywhere"


def test_broken_missing_and_hanging_tools_become_coverage_notes(
    fake_bin: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "child.pid"
    fake_tool(fake_bin, "ruff", 'echo "ruff: internal panic" >&2; exit 3')
    fake_tool(fake_bin, "bandit", 'echo "<html>definitely not json</html>"; exit 0')
    fake_tool(
        fake_bin,
        "flake8",
        'if [ "$1" = "--version" ]; then echo "7.5.0 (TorchFix: 0.7.0) CPython"; exit 0; fi\n'
        'echo "Fatal Python error: init_import_site: Failed to import the site module" >&2\n'
        "exit 1",  # what flake8 really did while a package was being reinstalled
    )
    fake_tool(
        fake_bin,
        "detect-secrets",
        'if [ "$1" = "--version" ]; then echo "1.5.0"; exit 0; fi\n'
        f'sleep 60 & echo $! > "{pid_file}"; wait',
    )
    adapters = [
        RuffAdapter(),
        BanditAdapter(),
        TorchFixAdapter(),
        DetectSecretsAdapter(timeout_s=1),
        MissingRuff(),
    ]
    started = time.perf_counter()
    run = run_linters(FIXTURES, FILES, adapters)
    assert time.perf_counter() - started < 30
    statuses = [r.status for r in run.results]
    assert statuses == ["failed", "failed", "failed", "timeout", "not-installed"]
    assert run.evidence == []
    assert all(c.status == "not-checked" for c in run.coverage)
    reasons = [c.reason for c in run.coverage]
    assert "exited with status 3" in reasons[0] and "internal panic" in reasons[0]
    assert "could not be read" in reasons[1]
    assert "exited with status 1: Fatal Python error" in reasons[2]
    assert "stopped after the 1s limit" in reasons[3]
    assert reasons[4] == "ruff is not installed"
    assert not _alive(int(pid_file.read_text())), "the hung tool's child must be killed too"


def _alive(pid: int) -> bool:
    """True while `pid` runs (a killed child waiting to be reaped counts as gone)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return False
        if "State:\tZ" in status:
            return False
        time.sleep(0.05)
    return True


def test_unmapped_codes_fall_back_to_the_tool_default() -> None:
    assert classify("bandit", "B999").point == 11
    assert classify("torchfix", "TOR102").items == ("11.2",)
    assert classify("torchfix", "TOR101").concern == "deprecated-api"
    assert classify("ruff", "E722").severity == Severity.MEDIUM


def native(rule: str, line: int, end_line: int | None = None) -> RawFinding:
    return RawFinding(
        rule=rule,
        file="train_legacy.py",
        line=line,
        end_line=end_line or line,
        code="",
        message="",
        severity=Severity.HIGH,
        excerpt="",
    )


def test_merge_attaches_same_concern_within_a_line_and_keeps_the_rest() -> None:
    factory = EvidenceFactory("torchfix", "0.7.0", FIXTURES)
    bandit = EvidenceFactory("bandit", "1.9.4", FIXTURES)
    tor102 = factory.make("TOR102", "train_legacy.py", 12, "torch.load without weights_only")
    b614 = bandit.make("B614", "./train_legacy.py", 13, "Use of unsafe PyTorch load")
    far = factory.make("TOR102", "train_legacy.py", 30, "another torch.load")
    deprecated = factory.make("TOR101", "train_legacy.py", 16, "deprecated torch.cholesky")
    typo = factory.make("TOR002", "train_legacy.py", 27, "require_grad typo")
    load = native("torch-load-unsafe", 12)
    cholesky = native("deprecated-torch-api", 15, 16)
    unrelated = native("zero-grad-missing", 27)

    attached, standalone = merge_linter_evidence(
        [load, cholesky, unrelated], [tor102, b614, far, deprecated, typo]
    )

    assert attached == {native_key(load): [tor102, b614], native_key(cholesky): [deprecated]}
    assert standalone == [far, typo]


def test_every_syntax_diagnostic_of_a_file_that_does_not_parse_joins_its_one_finding() -> None:
    """Python stops at a file's first syntax error, ruff reports each one after it too
    (held-out pytorch-REINFORCE: a tab-indented file was a syntax-error finding and a second
    critical finding of ruff's further invalid-syntax lines)."""
    ruff = EvidenceFactory("ruff", "0.17.6", FIXTURES)
    first = ruff.make("invalid-syntax", "train_legacy.py", 44, "unindent does not match")
    later = ruff.make("invalid-syntax", "train_legacy.py", 72, "Expected dedent, found end")
    elsewhere = ruff.make("invalid-syntax", "other.py", 3, "Unexpected indentation")
    syntax = native("syntax-error", 44)
    attached, standalone = merge_linter_evidence([syntax], [first, later, elsewhere])
    assert attached == {native_key(syntax): [first, later]}
    assert standalone == [elsewhere]


@needs_torchfix
@needs_bandit
def test_real_tools_merge_onto_one_native_torch_load_finding(real_run: LinterRun) -> None:
    load = native("torch-load-weights-only", 12)
    attached, standalone = merge_linter_evidence([load], real_run.evidence)
    assert sorted(e.data["code"] for e in attached[native_key(load)]) == ["B614", "TOR102"]
    assert len(standalone) == len(real_run.evidence) - 2


@needs_bandit
def test_project_modules_never_shadow_the_tools_own_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "types.py").write_text("raise SystemExit('the project shadowed types')\n")
    (tmp_path / "train.py").write_text("import pickle\n")
    monkeypatch.setenv("PYTHONPATH", ".")
    result = BanditAdapter().run(tmp_path, ["train.py"])
    assert result.status == "ok", result.notes
    assert [e.data["code"] for e in result.evidence] == ["B403"]


def test_long_file_lists_are_split_across_command_lines() -> None:
    names = [f"pkg/module_{i:04d}.py" for i in range(1000)]
    batches = command_line_batches(names, budget=2000)
    assert [n for batch in batches for n in batch] == names
    assert all(sum(len(n) + 1 for n in batch) <= 2000 for batch in batches)
    assert len(batches) > 1


@needs_ruff
def test_batches_of_one_tool_run_merge_into_one_result() -> None:
    adapter = RuffAdapter()
    adapter.argv_budget = 20  # one file per command line
    result = adapter.run(FIXTURES, FILES)
    assert result.status == "ok"
    assert ("train_legacy.py", 32, "E722") in {
        (e.file, e.line, e.data["code"]) for e in result.evidence
    }


class RaisingAdapter:
    """An adapter with a bug: installed, but its `run` raises."""

    name = "buggy"

    def available(self) -> bool:
        return True

    def version(self) -> str:
        return "0.1"

    def run(self, root: Path, files: list[str]) -> LinterResult:
        raise KeyError("results")


def test_an_adapter_bug_costs_its_evidence_not_the_run() -> None:
    run = run_linters(FIXTURES, FILES, [RaisingAdapter(), MissingRuff()])
    assert [r.status for r in run.results] == ["failed", "not-installed"]
    assert run.coverage[0].reason == "buggy adapter failed: KeyError: 'results'"


def test_a_tools_version_is_read_once_per_executable_until_it_is_replaced(
    fake_bin: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tool = fake_tool(fake_bin, "ruff", 'echo "ruff 0.9.1"')
    reads: list[str] = []
    read = RuffAdapter._read_version

    def counted(adapter: RuffAdapter) -> str:
        reads.append(adapter.executable)
        return read(adapter)

    monkeypatch.setattr(RuffAdapter, "_read_version", counted)
    assert RuffAdapter().version() == RuffAdapter(timeout_s=5).version() == "0.9.1"
    assert len(reads) == 1  # each audit's fresh adapters share the process's reading
    fake_tool(fake_bin, "ruff", 'echo "ruff 0.9.2"')  # upgraded in place
    modified = tool.stat().st_mtime_ns + 1_000_000_000
    os.utime(tool, ns=(modified, modified))
    assert RuffAdapter().version() == "0.9.2" and len(reads) == 2
