"""The LLM reasoner: any OpenAI-compatible endpoint, layered over the offline reasoner.

Importing this package does not import `openai`; `build_reasoner` does, for an OpenAI config.
The reasoner itself is `torchdoctor.agent.reasoning.llm.reasoner.LLMReasoner`.
"""

from torchdoctor.agent.reasoning.llm.config import (
    ModelPrice,
    OfflineConfig,
    OpenAIConfig,
    ReasonerConfig,
    load_reasoner_config,
    parse_reasoner_config,
)
from torchdoctor.agent.reasoning.llm.factory import build_reasoner

__all__ = [
    "ModelPrice",
    "OfflineConfig",
    "OpenAIConfig",
    "ReasonerConfig",
    "build_reasoner",
    "load_reasoner_config",
    "parse_reasoner_config",
]
