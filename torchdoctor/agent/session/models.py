"""A review session's data: what it holds (its audit, findings, pending approval) and what it
says (messages made of typed blocks that the terminal and the browser each render)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.models import AuditReport
from torchdoctor.agent.options import AuditChoices
from torchdoctor.agent.state import ApprovalRequest


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextBlock(_Model):
    kind: Literal["text"] = "text"
    text: str
    tone: Literal["plain", "note", "error"] = "plain"


class TableBlock(_Model):
    kind: Literal["table"] = "table"
    title: str = ""
    columns: list[str]
    rows: list[list[str]]


class DiffBlock(_Model):
    kind: Literal["diff"] = "diff"
    title: str = ""
    diff: str


class CodeBlock(_Model):
    """Code or a document shown verbatim: a numbered excerpt, the ledger's markdown."""

    kind: Literal["code"] = "code"
    title: str = ""
    text: str
    language: Literal["python", "markdown", "text"] = "text"


Block = Annotated[TextBlock | TableBlock | DiffBlock | CodeBlock, Field(discriminator="kind")]


class Message(_Model):
    """One turn of the conversation; `id` increases within a session (resumable listing)."""

    id: int = 0
    role: Literal["user", "assistant"]
    blocks: list[Block]
    created_at: float = 0.0

    def plain(self) -> str:
        """The message as text (what an LLM sees of earlier turns)."""
        parts: list[str] = []
        for block in self.blocks:
            if isinstance(block, TableBlock):
                parts.append(" | ".join(block.columns))
                parts += [" | ".join(row) for row in block.rows]
            elif isinstance(block, DiffBlock):
                parts.append(block.diff)
            else:
                parts.append(block.text)
        return "\n".join(parts)


Task = Literal["open", "run", "rerun", "fix", "apply"]


class Waiting(_Model):
    """The audit a session waits on, and why (what to say once it ends)."""

    task: Task
    audit_id: str
    finding_id: str | None = None
    approved: list[str] = Field(default_factory=list, description="what `apply` writes")


class SessionState(_Model):
    """Everything a session knows between turns; stored whole, so it survives restarts."""

    lang: Literal["en", "fr"] = "en"
    choices: AuditChoices = Field(
        default_factory=AuditChoices, description="what `run`, `fix` and `rerun` start with"
    )
    audit_id: str | None = Field(None, description="the audit whose report the session shows")
    report: AuditReport | None = None
    pending: ApprovalRequest | None = Field(None, description="verified diffs awaiting approval")
    decisions: dict[str, bool] = Field(
        default_factory=dict, description="finding id -> approved, staged until `apply`"
    )
    waiting: Waiting | None = None

    @property
    def busy(self) -> bool:
        return self.waiting is not None
