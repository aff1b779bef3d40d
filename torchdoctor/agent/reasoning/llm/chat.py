"""One question-and-answer turn of a review session, through the LLM's tool loop.

A session keeps the audit's report and the earlier turns (text only); each question is one
bounded tool loop (`tool_loop.ask`) over that report, and the turn is appended to the history.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.agent.models import AuditReport
from torchdoctor.agent.reasoning.inquiry import AuditBrief, LoopAnswer, LoopBounds, ToolHooks
from torchdoctor.agent.reasoning.llm.reasoner import LLMReasoner
from torchdoctor.agent.reasoning.llm.tool_loop import ask


class ChatSession(BaseModel):
    """What a review session keeps between turns (serialisable, so the API can store it)."""

    model_config = ConfigDict(extra="forbid")

    report: AuditReport
    lang: str = "en"
    files: list[str] = Field(default_factory=list)
    """Relative paths of the audited files (the tools may read any of them)."""
    history: list[dict[str, str]] = Field(default_factory=list)
    """Earlier turns: user questions and assistant answers, text only."""


def chat_turn(
    session: ChatSession,
    question: str,
    *,
    reasoner: LLMReasoner,
    hooks: ToolHooks | None = None,
    bounds: LoopBounds | None = None,
) -> LoopAnswer:
    """Answer one question about `session.report`; appends the turn to `session.history`."""
    brief = AuditBrief.of_report(session.report, session.files, session.lang)
    answer = ask(
        question, brief, reasoner=reasoner, hooks=hooks, bounds=bounds, history=session.history
    )
    session.history += [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer.text},
    ]
    return answer
