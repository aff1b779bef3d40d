"""Offered artifacts in the approval question, and written to the user's tree once approved,
with the approved fixes, through the guarded tree and under one undo journal: a new file is
never written over an existing one, and a change to an existing file (annotations, checks)
only while the file still has the text it was made from."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.artifacts.models import Artifact
from torchdoctor.agent.fixes.diffs import PatchError, apply_to_text, parse, unified_diff
from torchdoctor.agent.fixes.models import ApplyResult
from torchdoctor.agent.models import Finding, Severity
from torchdoctor.agent.safefs import GuardedTree, UnsafePath
from torchdoctor.agent.state import ProposedChange


class Written(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(default_factory=list)
    ids: list[str] = Field(default_factory=list, description="the artifacts written")
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
            diff=unified_diff(a.path, a.original or "", a.content),
        )
        for a in offered(artifacts)
        if a.path is not None
    ]


def apply_approved(
    root: Path,
    findings: list[Finding],
    artifacts: list[Artifact],
    approved: set[str],
    force: bool = False,
) -> tuple[ApplyResult, Written]:
    """Write the approved fixes and artifacts together, under one undo journal (`torchdoctor
    undo` takes both back, removing the files the artifacts created); refused, unless
    `force`, when the git work tree changed while the question waited for its answer."""
    # imported here: fixes.apply brings libcst and the harness, which a static audit never needs
    from torchdoctor.agent.fixes.apply import dirty_reason, plan_fixes, write_changes

    root = root.resolve()
    if not force and (reason := dirty_reason(root)):
        return ApplyResult(refused=reason), Written()
    result, texts = plan_fixes(root, findings, approved)
    written, changes, created = plan_artifacts(root, artifacts, approved, texts)
    write_changes(root, {**texts, **changes}, result, created)
    if result.refused:
        return result, Written(skipped=written.skipped)
    return result, written


def plan_artifacts(
    root: Path, artifacts: list[Artifact], approved: set[str], fixed: Mapping[str, str]
) -> tuple[Written, dict[str, str], frozenset[str]]:
    """The approved artifacts' files (path -> text, on top of the `fixed` texts the approved
    fixes give), which of them are new, and what is left out and why; nothing is written."""
    tree = GuardedTree(root)
    written = Written()
    texts: dict[str, str] = {}
    created: set[str] = set()
    for artifact in offered(artifacts):
        path = artifact.path
        assert path is not None
        if artifact.id not in approved:
            written.skipped[artifact.id] = "not approved"
            continue
        try:
            if artifact.original is None:
                if path in texts or tree.exists(path):
                    written.skipped[artifact.id] = f"{path} exists: not overwritten"
                    continue
                texts[path] = artifact.content
                created.add(path)
            else:  # types and validation both change the model's file: the second onto the first
                current = texts.get(path, fixed.get(path))
                texts[path] = _onto(tree.read_text(path) if current is None else current, artifact)
        except (UnsafePath, OSError, ValueError) as err:  # ValueError: a PatchError, not UTF-8
            written.skipped[artifact.id] = f"not written: {err}"
            continue
        written.ids.append(artifact.id)
        if path not in written.paths:
            written.paths.append(path)
    return written, texts, frozenset(created)


def _onto(current: str, artifact: Artifact) -> str:
    """The artifact's change to an existing file, made on its text now: as generated when
    the file is unchanged, else its diff where it still applies exactly (fixes approved in
    the same answer may have changed other lines); PatchError when it does not."""
    assert artifact.path is not None and artifact.original is not None
    if current == artifact.original:
        return artifact.content
    try:
        (patch,) = parse(unified_diff(artifact.path, artifact.original, artifact.content))
        return apply_to_text(current, patch, offsets=True)
    except PatchError as err:
        raise PatchError(f"{artifact.path} changed since the audit ({err})") from err
