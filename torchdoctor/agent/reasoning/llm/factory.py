"""Builds the reasoner an audit's config asks for (SWE-ReX style: the config picks the backend).

The LLM reasoner is imported only when asked for, so an offline install needs no `openai`.
"""

from __future__ import annotations

from pathlib import Path

from torchdoctor.agent.reasoning.base import Reasoner
from torchdoctor.agent.reasoning.llm.config import OfflineConfig, OpenAIConfig
from torchdoctor.agent.reasoning.offline import OfflineReasoner


def build_reasoner(
    config: OfflineConfig | OpenAIConfig, workspace_root: Path, offline: OfflineReasoner
) -> Reasoner:
    """One reasoner per audit: the LLM one holds that audit's budget and usage totals."""
    if isinstance(config, OpenAIConfig):
        from torchdoctor.agent.reasoning.llm.reasoner import LLMReasoner

        return LLMReasoner(config, workspace_root, offline)
    return offline
