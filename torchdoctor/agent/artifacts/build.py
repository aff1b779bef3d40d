"""The artifacts an audit was asked for, built from what it observed (runs, static findings)."""

from __future__ import annotations

from collections.abc import Callable

from torchdoctor.agent.artifacts.card import card_artifact
from torchdoctor.agent.artifacts.drift import drift_artifact
from torchdoctor.agent.artifacts.ml_tests import ml_tests_artifact
from torchdoctor.agent.artifacts.models import Artifact, ArtifactKind
from torchdoctor.agent.artifacts.sandboxed import SandboxedRun
from torchdoctor.agent.artifacts.target import find_target
from torchdoctor.agent.checks.base import RawFinding
from torchdoctor.agent.models import Evidence
from torchdoctor.agent.probing import RunSummary
from torchdoctor.agent.workspace import Workspace
from torchdoctor.sandbox.protocol import Sandbox


def build_artifacts(
    kinds: list[ArtifactKind],
    workspace: Workspace,
    runs: list[RunSummary],
    sandbox: Callable[[], Sandbox],
    findings: list[RawFinding],
    presence: list[Evidence],
) -> list[Artifact]:
    """One artifact per kind asked for, in the order asked, from the runs, the static
    findings and what the code has (`presence`)."""
    target = find_target(workspace, runs)
    paths = [f.path for f in workspace.files]
    runner = SandboxedRun(sandbox(), workspace)
    built: list[Artifact] = []
    for kind in dict.fromkeys(kinds):
        if kind == "tests":
            built.append(ml_tests_artifact(target, runner, paths))
        elif kind == "card":
            built.append(card_artifact(target, workspace, runner, findings, presence))
        elif kind == "drift":
            built.append(drift_artifact(target, runner, paths))
    return built
