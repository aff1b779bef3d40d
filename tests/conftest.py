"""Shared test set-up: an isolated torchdoctor home, and no LLM credentials from the host."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    home = tmp_path_factory.mktemp("torchdoctor-home")
    monkeypatch.setenv("TORCHDOCTOR_HOME", str(home))
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TORCHDOCTOR_MODEL"):
        monkeypatch.delenv(var, raising=False)
    # Peer linters cost seconds per audit; the tests that exercise them turn them back on.
    monkeypatch.setenv("TORCHDOCTOR_LINTERS", "0")
    yield
