"""Which reasoner an audit gets, from the --offline flag, the environment and the pyproject."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from torchdoctor.agent.reasoning.llm import OfflineConfig, OpenAIConfig, load_reasoner_config
from torchdoctor.agent.reasoning.llm.config import OPENAI_DEFAULT_BASE_URL, parse_reasoner_config


def test_nothing_configured_means_offline() -> None:
    assert load_reasoner_config(env={}, pyproject_table={}) == OfflineConfig()


def test_the_offline_flag_wins_over_any_endpoint() -> None:
    env = {"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1", "OPENAI_API_KEY": "k"}
    assert load_reasoner_config(offline=True, env=env) == OfflineConfig()


def test_environment_endpoint_key_and_model() -> None:
    env = {
        "OPENAI_BASE_URL": "http://127.0.0.1:8000/v1",
        "OPENAI_API_KEY": "sk-secret-42",
        "TORCHDOCTOR_MODEL": "qwen2.5-coder",
        "TORCHDOCTOR_LLM_TOKEN_BUDGET": "1000",
    }
    config = load_reasoner_config(env=env)
    assert isinstance(config, OpenAIConfig)
    assert (config.base_url, config.model, config.token_budget) == (
        "http://127.0.0.1:8000/v1",
        "qwen2.5-coder",
        1000,
    )
    assert config.api_key.get_secret_value() == "sk-secret-42"
    assert "sk-secret-42" not in repr(config)


def test_a_key_alone_targets_openai() -> None:
    config = load_reasoner_config(env={"OPENAI_API_KEY": "k"})
    assert isinstance(config, OpenAIConfig) and config.base_url == OPENAI_DEFAULT_BASE_URL


def test_pyproject_table_configures_a_local_server() -> None:
    table = {"base_url": "http://localhost:11434/v1", "model": "llama3.1", "temperature": 0.2}
    config = load_reasoner_config(env={}, pyproject_table=table)
    assert isinstance(config, OpenAIConfig)
    assert (config.base_url, config.model, config.temperature) == (
        "http://localhost:11434/v1",
        "llama3.1",
        0.2,
    )
    assert config.price() is None


def test_an_audited_pyproject_cannot_redirect_the_users_key() -> None:
    """The audited repository is untrusted: the env key only goes to the env's endpoint."""
    config = load_reasoner_config(
        env={"OPENAI_API_KEY": "users-secret"},
        pyproject_table={"base_url": "https://attacker.example/v1"},
    )
    assert isinstance(config, OpenAIConfig)
    assert config.base_url == "https://attacker.example/v1"
    assert config.api_key.get_secret_value() == ""


def test_the_environment_endpoint_overrides_the_pyproject_one() -> None:
    config = load_reasoner_config(
        env={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1", "OPENAI_API_KEY": "k"},
        pyproject_table={"base_url": "https://attacker.example/v1"},
    )
    assert isinstance(config, OpenAIConfig)
    assert config.base_url == "http://127.0.0.1:9/v1"
    assert config.api_key.get_secret_value() == "k"


def test_the_union_is_discriminated_by_type() -> None:
    assert parse_reasoner_config({"type": "offline"}) == OfflineConfig()
    assert isinstance(parse_reasoner_config({"model": "m"}), OpenAIConfig)
    with pytest.raises(ValidationError):
        parse_reasoner_config({"type": "anthropic"})
    with pytest.raises(ValidationError):
        parse_reasoner_config({"model": "m", "temprature": 0.1})


def test_cache_dir_follows_torchdoctor_home(tmp_path: Path) -> None:
    config = OpenAIConfig()
    assert config.resolved_cache_dir({"TORCHDOCTOR_HOME": str(tmp_path)}) == (
        tmp_path / "llm-cache"
    )


def test_an_audited_pyproject_cannot_raise_spend_or_move_the_cache(tmp_path: Path) -> None:
    table = {
        "base_url": "http://127.0.0.1:9/v1",
        "token_budget": 10**9,
        "max_output_tokens": 100,
        "cache_dir": str(tmp_path / "elsewhere"),
        "prices": {"gpt-4o-mini": {"input_per_mtok": 0, "output_per_mtok": 0}},
    }
    config = load_reasoner_config(
        env={"TORCHDOCTOR_LLM_TOKEN_BUDGET": "5000"}, pyproject_table=table
    )
    assert isinstance(config, OpenAIConfig)
    assert (config.token_budget, config.max_output_tokens) == (5000, 100)
    assert config.cache_dir is None and config.prices == {}
    trusted = load_reasoner_config(env={}, pyproject_table=table, pyproject_trusted=True)
    assert isinstance(trusted, OpenAIConfig) and trusted.token_budget == 10**9
