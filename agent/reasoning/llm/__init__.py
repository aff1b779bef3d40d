"""The LLM reasoner: any OpenAI-compatible endpoint, layered over the offline reasoner."""

from agent.reasoning.llm.config import (
    ModelPrice,
    OfflineConfig,
    OpenAIConfig,
    ReasonerConfig,
    load_reasoner_config,
    parse_reasoner_config,
)
from agent.reasoning.llm.factory import build_reasoner
from agent.reasoning.llm.reasoner import LLMReasoner

__all__ = [
    "LLMReasoner",
    "ModelPrice",
    "OfflineConfig",
    "OpenAIConfig",
    "ReasonerConfig",
    "build_reasoner",
    "load_reasoner_config",
    "parse_reasoner_config",
]
