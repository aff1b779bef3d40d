"""Builds the reasoner an audit's config asks for (SWE-ReX style: the config picks the backend)."""

from __future__ import annotations

from pathlib import Path

from agent.reasoning.base import Reasoner
from agent.reasoning.llm.config import OfflineConfig, OpenAIConfig
from agent.reasoning.llm.reasoner import LLMReasoner
from agent.reasoning.offline import OfflineReasoner


def build_reasoner(
    config: OfflineConfig | OpenAIConfig, workspace_root: Path, offline: OfflineReasoner
) -> Reasoner:
    """One reasoner per audit: the LLM one holds that audit's budget and usage totals."""
    if isinstance(config, OpenAIConfig):
        return LLMReasoner(config, workspace_root, offline)
    return offline
