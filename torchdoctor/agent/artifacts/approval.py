"""Offered artifacts in the approval question, and written to the user's tree once approved:
new files only (an existing file is never overwritten), through the guarded tree."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.artifacts.models import Artifact
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.models import Severity
from torchdoctor.agent.safefs import GuardedTree, UnsafePath
from torchdoctor.agent.state import ProposedChange


class Written(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(default_factory=list)
    skipped: dict[str, str] = Field(default_factory=dict, description="artifact id -> why not")


def offered(artifacts: list[Artifact]) -> list[Artifact]:
    return [a for a in artifacts if a.state == "offered" and a.path is not None and a.content]


def artifact_changes(artifacts: list[Artifact]) -> list[ProposedChange]:
    """Each offered artifact as a change to approve: a diff that creates its file."""
    return [
        ProposedChange(
            finding_id=a.id,
            rule=a.id,
            severity=Severity.INFO,
            title=a.reason,
            file=a.path,
            line=1,
            diff=unified_diff(a.path, "", a.content),
        )
        for a in offered(artifacts)
        if a.path is not None
    ]


def write_artifacts(root: Path, artifacts: list[Artifact], approved: set[str]) -> Written:
    tree = GuardedTree(root)
    written = Written()
    for artifact in offered(artifacts):
        path = artifact.path
        assert path is not None
        if artifact.id not in approved:
            written.skipped[artifact.id] = "not approved"
            continue
        try:
            if tree.exists(path):
                written.skipped[artifact.id] = f"{path} exists: not overwritten"
                continue
            tree.write_text(path, artifact.content)
        except (UnsafePath, OSError) as err:
            written.skipped[artifact.id] = f"not written: {err}"
            continue
        written.paths.append(path)
    return written
