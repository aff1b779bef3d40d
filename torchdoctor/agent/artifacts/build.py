"""The artifacts an audit was asked for, built from what it observed (runs, static findings)."""

from __future__ import annotations

from torchdoctor.agent.artifacts.card import card_artifact
from torchdoctor.agent.artifacts.coverage import artifact_evidence
from torchdoctor.agent.artifacts.drift import drift_artifact
from torchdoctor.agent.artifacts.explain import explain_artifact
from torchdoctor.agent.artifacts.export import export_artifact
from torchdoctor.agent.artifacts.ml_tests import ml_tests_artifact
from torchdoctor.agent.artifacts.models import Artifact, ArtifactKind
from torchdoctor.agent.artifacts.sandboxed import SandboxedRun
from torchdoctor.agent.artifacts.target import find_target
from torchdoctor.agent.artifacts.types import types_artifact
from torchdoctor.agent.artifacts.validation import validation_artifact
from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.harness import Harness
from torchdoctor.agent.models import Evidence
from torchdoctor.agent.probing import RunSummary
from torchdoctor.agent.workspace import Workspace


def build_artifacts(
    kinds: list[ArtifactKind],
    workspace: Workspace,
    runs: list[RunSummary],
    harness: Harness,
    findings: list[RawFinding],
    presence: list[Evidence],
) -> list[Artifact]:
    """One artifact per kind asked for, in the order asked, from the runs, the static
    findings and what the code has (`presence`); every sandbox job goes through the audit's
    harness client and its sandbox. The card is built last, so it holds what the other
    artifacts measured (the attribution check, why groups were not compared)."""
    target = find_target(workspace, runs)
    paths = [f.path for f in workspace.files]
    runner = SandboxedRun(harness.sandbox, workspace)
    built: list[Artifact] = []
    present = {
        item: f"the code has them already: {ev.message}"
        for ev in presence
        if ev.data.get("verdict") == "pass"
        for item in ev.data.get("items", [])
    }
    for kind in sorted(dict.fromkeys(kinds), key=lambda k: k == "card"):
        if kind == "tests":
            built.append(ml_tests_artifact(target, runner, paths))
        elif kind == "card":
            measured = [ev for _point, ev in artifact_evidence(built)]
            built.append(card_artifact(target, workspace, runner, findings, presence + measured))
        elif kind == "drift":
            built.append(drift_artifact(target, runner, paths))
        elif kind == "types" and "1.2" in present:
            built.append(_already("types", "1.2", present["1.2"]))
        elif kind == "types":
            built.append(types_artifact(target, workspace, runs, harness))
        elif kind == "validation" and "2.1" in present:
            built.append(_already("validation", "2.1", present["2.1"]))
        elif kind == "validation":
            annotated = next((a for a in built if a.kind == "types" and a.state == "offered"), None)
            base = annotated.content if annotated is not None else None
            built.append(validation_artifact(target, workspace, runs, harness, runner, base))
        elif kind == "export":
            built.append(export_artifact(target, runner, paths))
        elif kind == "explain":
            built.append(explain_artifact(target, runner, workspace))
    return sorted(built, key=lambda a: kinds.index(a.kind))


def _already(kind: ArtifactKind, item: str, reason: str) -> Artifact:
    return Artifact(kind=kind, state="not-applicable", items=[item], reason=reason)
