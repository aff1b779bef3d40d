"""Which reasoner an audit uses, validated once: `ReasonerConfig = OfflineConfig | OpenAIConfig`.

Sources, in order of precedence: `--offline`, the environment (`OPENAI_BASE_URL`,
`OPENAI_API_KEY`, `TORCHDOCTOR_MODEL`, `TORCHDOCTOR_LLM_*`), then `[tool.torchdoctor.llm]` of the
audited pyproject. The audited pyproject is untrusted: a key from the environment is only ever
sent to the endpoint named by the environment (or OpenAI's when the environment names none), so
a repository cannot redirect the user's key to a server of its choosing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, TypeAdapter

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"


class OfflineConfig(BaseModel):
    """The deterministic reasoner: no model, no network."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["offline"] = "offline"


class ModelPrice(BaseModel):
    """US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)


class OpenAIConfig(BaseModel):
    """Any OpenAI-compatible chat-completions endpoint (OpenAI, Azure, vLLM, Ollama, TGI...)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["openai"] = "openai"
    model: str = DEFAULT_MODEL
    base_url: str = OPENAI_DEFAULT_BASE_URL
    api_key: SecretStr = SecretStr("")
    temperature: float = Field(0.0, ge=0, le=2)
    seed: int | None = 0
    timeout_s: float = Field(120.0, gt=0)
    max_retries: int = Field(3, ge=0)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    max_concurrency: int = Field(4, ge=1)
    max_output_tokens: int = Field(2048, ge=64)
    """Completion tokens one checklist point's answer may use (a request for n points: n times
    this, up to `max_batch_output_tokens`)."""
    max_batch_output_tokens: int = Field(8192, ge=64)
    """Most completion tokens one request may use, however many points it covers."""
    batch_tokens: int = Field(12_000, ge=0)
    """Most tokens of code and evidence one request for all 12 points may carry; a larger audit
    gets one request per phase."""
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    structured_outputs: Literal["auto", "on", "off"] = "auto"
    context_tokens: int | None = Field(None, ge=1024)
    """Override of the model's context size when the endpoint does not report it."""
    token_budget: int = Field(400_000, ge=0)
    """Tokens (sent + received) one audit may spend."""
    cost_budget_usd: float | None = Field(None, ge=0)
    prices: dict[str, ModelPrice] = Field(default_factory=dict)
    cache: bool = True
    cache_dir: Path | None = None
    window_context: int = Field(6, ge=0)
    """Lines shown either side of each evidence location."""
    max_window_lines: int = Field(240, ge=10)
    """Most code lines one point's prompt carries."""
    max_tool_calls: int = Field(6, ge=1)
    """Most tool calls one tool loop (a chat question, a phase's investigation) may make."""
    loop_turns: int = Field(8, ge=1)
    """Most model requests one tool loop may make."""
    loop_tokens: int = Field(60_000, ge=1)
    """Most tokens (sent + received) one tool loop may spend (`token_budget` bounds them all)."""
    loop_seconds: float = Field(300.0, gt=0)
    """Most wall time one tool loop may take."""
    investigate: bool = True
    """Whether each phase's findings that no codemod fixes get a tool loop proposing patches."""
    circuit_breaker_failures: int = Field(2, ge=1)
    """Consecutive requests the endpoint may fail before the audit stops calling it."""

    def resolved_cache_dir(self, env: Mapping[str, str] | None = None) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        env = os.environ if env is None else env
        home = env.get("TORCHDOCTOR_HOME") or str(Path.home() / ".torchdoctor")
        return Path(home) / "llm-cache"

    def price(self) -> ModelPrice | None:
        return self.prices.get(self.model)


ReasonerConfig = Annotated[OfflineConfig | OpenAIConfig, Field(discriminator="type")]
_ADAPTER: TypeAdapter[OfflineConfig | OpenAIConfig] = TypeAdapter(ReasonerConfig)

_ENV_FIELDS = {
    "TORCHDOCTOR_MODEL": "model",
    "TORCHDOCTOR_LLM_TEMPERATURE": "temperature",
    "TORCHDOCTOR_LLM_SEED": "seed",
    "TORCHDOCTOR_LLM_TIMEOUT_S": "timeout_s",
    "TORCHDOCTOR_LLM_MAX_RETRIES": "max_retries",
    "TORCHDOCTOR_LLM_MAX_CONCURRENCY": "max_concurrency",
    "TORCHDOCTOR_LLM_TOKEN_BUDGET": "token_budget",
    "TORCHDOCTOR_LLM_BATCH_TOKENS": "batch_tokens",
    "TORCHDOCTOR_LLM_COST_BUDGET_USD": "cost_budget_usd",
    "TORCHDOCTOR_LLM_STRUCTURED_OUTPUTS": "structured_outputs",
    "TORCHDOCTOR_LLM_CACHE_DIR": "cache_dir",
    "TORCHDOCTOR_LLM_LOOP_TURNS": "loop_turns",
    "TORCHDOCTOR_LLM_LOOP_TOKENS": "loop_tokens",
    "TORCHDOCTOR_LLM_LOOP_SECONDS": "loop_seconds",
    "TORCHDOCTOR_LLM_INVESTIGATE": "investigate",
}


def parse_reasoner_config(data: Mapping[str, Any]) -> OfflineConfig | OpenAIConfig:
    """Validate an explicit config dict (`type` picks the reasoner; default openai)."""
    return _ADAPTER.validate_python({"type": "openai", **data})


_UNTRUSTED_IGNORED = ("cache_dir", "prices")
"""Keys an audited repository may not set: where files are written, what tokens cost."""
_UNTRUSTED_LOWER_ONLY = (
    "token_budget",
    "cost_budget_usd",
    "max_output_tokens",
    "max_batch_output_tokens",
    "max_concurrency",
    "max_retries",
    "max_tool_calls",
    "loop_turns",
    "loop_tokens",
    "loop_seconds",
)
"""Keys an audited repository may only lower: it must not spend more of the user's money."""


def load_reasoner_config(
    *,
    offline: bool = False,
    env: Mapping[str, str] | None = None,
    pyproject_table: Mapping[str, Any] | None = None,
    pyproject_trusted: bool = False,
) -> OfflineConfig | OpenAIConfig:
    """The reasoner an audit should use, from the flag, the environment and the pyproject table.

    An LLM is used only when an endpoint or key is configured somewhere and `offline` is false.
    `pyproject_trusted` is false for the audited repository's own pyproject: it then cannot
    move the cache, set prices, or raise budgets and limits above the user's (or the defaults).
    """
    env = os.environ if env is None else env
    table = dict(pyproject_table or {})
    if offline or table.get("type") == "offline":
        return OfflineConfig()
    env_url = env.get("OPENAI_BASE_URL", "").strip()
    env_key = env.get("OPENAI_API_KEY", "").strip()
    if not (env_url or env_key or table.get("base_url") or table.get("api_key")):
        return OfflineConfig()
    data: dict[str, Any] = {k: v for k, v in table.items() if k != "type"}
    user: dict[str, Any] = {
        field: env[name] for name, field in _ENV_FIELDS.items() if env.get(name)
    }
    if not pyproject_trusted:
        data = _restrict(data, user)
    data.update(user)
    key_url = env_url or OPENAI_DEFAULT_BASE_URL
    if env_url:
        data["base_url"] = env_url
    url = str(data.get("base_url") or OPENAI_DEFAULT_BASE_URL)
    if env_key and _same_endpoint(url, key_url):
        data["api_key"] = env_key
    return parse_reasoner_config(data)


def _restrict(table: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    defaults = OpenAIConfig()
    kept = {k: v for k, v in table.items() if k not in _UNTRUSTED_IGNORED}
    for key in _UNTRUSTED_LOWER_ONLY:
        if kept.get(key) is None:
            kept.pop(key, None)
            continue
        ceiling = user.get(key, getattr(defaults, key))
        if ceiling is not None:
            kept[key] = min(float(kept[key]), float(ceiling))
            if key != "cost_budget_usd":
                kept[key] = int(kept[key])
    return kept


def _same_endpoint(a: str, b: str) -> bool:
    return a.rstrip("/") == b.rstrip("/")
