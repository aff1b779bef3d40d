"""The artifacts' data contract: what was generated, how its run went, what it is offered as."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ArtifactKind = Literal["tests", "card", "drift", "types", "validation", "export", "explain"]
ARTIFACT_KINDS: tuple[ArtifactKind, ...] = (
    "tests",
    "card",
    "drift",
    "types",
    "validation",
    "export",
    "explain",
)
ArtifactState = Literal["offered", "failed", "not-applicable", "not-checked"]
"""offered: generated and it ran; failed: generated, and its run failed; not-applicable: nothing
to generate for this code; not-checked: it could not be tried (the reason names what is missing)."""


class _Model(BaseModel):
    # Built on first use: only an audit that builds artifacts validates these, and a static audit
    # (a pre-commit hook) should not pay for building their validators at import.
    model_config = ConfigDict(extra="forbid", defer_build=True)


class TensorSpec(_Model):
    """One tensor as the instrumented run observed it."""

    shape: list[int]
    dtype: str = Field(pattern=r"^[a-z][a-z0-9_]{0,30}$", description="torch dtype, no prefix")
    device: str = "cpu"


class ModelTarget(_Model):
    """The model the generated artifacts exercise, and how a test builds it and feeds it."""

    file: str = Field(description="workspace-relative file that defines the class")
    module: str = Field(description="importable dotted name of that file, from the root")
    class_name: str
    constructor: str = Field(description="the call that builds it, e.g. 'Net(4096, dim=64)'")
    inputs: list[TensorSpec] = Field(description="forward's tensor arguments, observed")
    outputs: list[TensorSpec] = Field(description="forward's tensor results, observed")
    script: str = Field(description="the instrumented script the observation comes from")


class CheckOutcome(_Model):
    """One generated check (a test function, a snippet's run) and how it went."""

    name: str
    passed: bool
    detail: str = ""


class ItemVerdict(_Model):
    """What an artifact's run measured about the audited code for one checklist item (the
    model exports, or does not; attributions are complete, or not), not about the artifact."""

    item: str
    verdict: Literal["pass", "fail", "not-applicable", "not-checked"]
    reason: str


class Artifact(_Model):
    kind: ArtifactKind
    state: ArtifactState
    items: list[str] = Field(description="checklist items it speaks to")
    reason: str = Field(description="one line: what it is, or why it is not offered")
    path: str | None = Field(None, description="where approval writes it, under the target")
    content: str = ""
    original: str | None = Field(
        None, description="the file's text the artifact changes (None: a new file)"
    )
    checks: list[CheckOutcome] = Field(default_factory=list)
    measured: list[ItemVerdict] = Field(
        default_factory=list, description="items its run settles whatever the approval"
    )

    @property
    def id(self) -> str:
        """The artifact's id in an approval (next to the fixes' finding ids)."""
        return f"artifact-{self.kind}"
