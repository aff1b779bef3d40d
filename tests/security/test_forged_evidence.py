"""Code under `--run` rewrites its own evidence (tests/security/forgeries/), on every backend
the tests can start: locations outside the audited files are dropped, run-only severity is
capped, an inflated document is refused, and nothing of it reaches the ledger as a status."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from torchdoctor.agent.checks.engine import StaticResult
from torchdoctor.agent.config import RunBudget
from torchdoctor.agent.evidence.trust import vet_run_evidence
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Severity
from torchdoctor.agent.probing import RunRequest, run_probes
from torchdoctor.agent.workspace import load_workspace
from torchdoctor.sandbox.protocol import Sandbox

FORGERIES = Path(__file__).resolve().parent / "forgeries"
pytestmark = pytest.mark.slow


def _harness_can_run(name: str) -> None:
    if name == "docker":
        pytest.skip("the private engine's test image holds no torch: the probes harness cannot run")


BUDGET = RunBudget(wall_s=120, memory_mb=2048)


def _request(script: str) -> RunRequest:
    return RunRequest(
        commands=[f"python {script}"],
        steps=2,
        determinism_steps=0,
        export=False,
        int8=False,
    )


def test_forged_locations_are_dropped_and_run_only_severity_capped(
    backend: tuple[str, Sandbox], tmp_path: Path
) -> None:
    name, sandbox = backend
    _harness_can_run(name)
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(FORGERIES / "forge_locations.py", repo)
    workspace = load_workspace(repo)
    found = run_probes(workspace, _request("forge_locations.py"), Harness(sandbox, BUDGET))
    assert found.runs and found.runs[0].outcome != "not-run", found.runs
    forged = [e for _, e in found.evidence if e.file and e.file.startswith("x.py")]
    assert forged, "the forgery did not reach the audit side: the test proves nothing"
    kept, notes = vet_run_evidence(
        found.evidence,
        workspace.text_of,
        StaticResult(files=[], rules_run=[], seconds=0.0),
        Severity.HIGH,
    )
    assert all(e.file == "forge_locations.py" for _, e in kept if e.file)
    assert all(1 <= (e.line or 1) <= 40 for _, e in kept)
    nan = [e for _, e in kept if e.data.get("probe") == "probe-nan"]
    assert nan and nan[0].data["finding"]["severity"] == "high"
    assert any("dropped" in n for n in notes) and any("lowered" in n for n in notes)


def test_an_inflated_evidence_document_is_refused(
    backend: tuple[str, Sandbox], tmp_path: Path
) -> None:
    name, sandbox = backend
    _harness_can_run(name)
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(FORGERIES / "forge_inflate.py", repo)
    harness = Harness(sandbox, BUDGET)
    found = run_probes(load_workspace(repo), _request("forge_inflate.py"), harness)
    if found.runs[0].outcome == "killed":
        # Once in CI (slow step, two workers, load from the other worker's servers) the job
        # died by a signal before the harness wrote anything: nothing to refuse yet. The run
        # is repeated once; a second death fails with what the sandbox said.
        found = run_probes(load_workspace(repo), _request("forge_inflate.py"), harness)
    assert found.runs[0].outcome == "harness-error", found.runs[0].summary
    assert "refused" in found.runs[0].summary
    assert len(found.runs[0].summary) < 1000
    assert found.evidence == []
