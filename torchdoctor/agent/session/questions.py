"""Free-text questions: one bounded tool loop of the LLM (`tool_loop.ask`) over the session's
report, when the environment configures an endpoint; None otherwise (the engine then says so
and suggests the commands). The audited project's own settings are never read here."""

from __future__ import annotations

from pathlib import Path

from torchdoctor.agent.models import AuditReport
from torchdoctor.agent.session.models import Block, DiffBlock, Message, TextBlock
from torchdoctor.agent.session.ports import Answerer
from torchdoctor.agent.session.texts import say

HISTORY_MESSAGES = 12
"""Earlier messages the model sees (text only)."""


def llm_answerer(root: Path, offline: bool = False) -> Answerer | None:
    """An answerer reading the files under `root`, or None without an LLM."""
    from torchdoctor.agent.reasoning.llm.config import OpenAIConfig, load_reasoner_config

    config = load_reasoner_config(offline=offline)
    if not isinstance(config, OpenAIConfig):
        return None

    def answer(
        question: str, report: AuditReport, history: list[Message], lang: str
    ) -> list[Block] | None:
        from torchdoctor.agent.reasoning.inquiry import AuditBrief
        from torchdoctor.agent.reasoning.llm.reasoner import LLMReasoner
        from torchdoctor.agent.reasoning.llm.tool_loop import ask
        from torchdoctor.agent.reasoning.offline import OfflineReasoner

        reasoner = LLMReasoner(config, root, OfflineReasoner())
        turns = [{"role": m.role, "content": m.plain()} for m in history[-HISTORY_MESSAGES:]]
        loop = ask(
            question, AuditBrief.of_report(report, lang=lang), reasoner=reasoner, history=turns
        )
        blocks: list[Block] = [TextBlock(text=loop.text)] if loop.text else []
        for finding_id, fix in loop.proposed_fixes.items():
            state = say(lang, "verified" if fix.verified else "not_verified")
            title = f"{finding_id}: {say(lang, 'fix_diff', state=state)}"
            blocks.append(DiffBlock(title=title, diff=fix.diff))
        if loop.proposed_fixes:
            ids = ", ".join(loop.proposed_fixes)
            blocks.append(TextBlock(text=say(lang, "llm_fixes", ids=ids), tone="note"))
        if loop.notes:
            notes = "; ".join(loop.notes)
            blocks.append(TextBlock(text=say(lang, "llm_notes", notes=notes), tone="note"))
        return blocks

    return answer
