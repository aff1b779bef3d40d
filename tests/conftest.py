"""Shared test set-up: an isolated torchdoctor home, no LLM credentials from the host, and
bytecode caching on."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

# Bytecode is cached, whatever the machine's environment says: without it every `torchdoctor`
# and harness subprocess the suite starts compiles its sources again (about 1 s each).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


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
