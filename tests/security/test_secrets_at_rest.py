"""Secrets are masked whatever tool found them, before an LLM sees the code, and torchdoctor's
own state (checkpoints, caches, journals) is private to its user."""

from __future__ import annotations

import stat
from pathlib import Path

from torchdoctor.agent.durable import open_store
from torchdoctor.agent.models import Evidence, Finding, Severity
from torchdoctor.agent.reasoning.llm.cache import ResponseCache
from torchdoctor.agent.reasoning.llm.workspace_files import WorkspaceFiles
from torchdoctor.agent.redact import mask_secrets, masked_finding

TOKEN = "hf_" + "aB3dE5fG7hJ9kL1mN3pQ5rS7tU9vW1xY3z"
NAMED = "wandb_api_key = 'q8Zr3kP0vLx7Tn2Wm5Yb9Hc4'"


def test_every_excerpt_is_masked_whatever_tool_found_it() -> None:
    finding = Finding(
        id="TD-000000000002",
        rule="detect-secrets-hex-high-entropy-string",
        checkpoint=11,
        phase=5,
        severity=Severity.HIGH,
        file="train.py",
        line=3,
        end_line=3,
        title="possible secret",
        evidence=[
            Evidence(
                source="detect-secrets",
                kind="linter",
                message=f"possible secret {TOKEN}",
                excerpt=f"    3 | token = '{TOKEN}'\n    4 | {NAMED}",
            )
        ],
    )
    text = masked_finding(finding).model_dump_json()
    assert TOKEN not in text and "q8Zr3kP0vLx7Tn2Wm5Yb9Hc4" not in text
    assert "hf_a********" in text


def test_placeholders_and_code_are_left_alone() -> None:
    plain = "api_key = os.environ['API_KEY']\ntoken = 'your-token-here-please'\n"
    assert mask_secrets(plain) == plain


def test_the_llm_never_reads_a_secret_or_a_linked_host_file(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(f"{NAMED}\nhub = '{TOKEN}'\n")
    outside = tmp_path.parent / "host-secret.txt"
    outside.write_text("host")
    (tmp_path / "leak.py").symlink_to(outside)
    files = WorkspaceFiles(tmp_path)
    lines = files.lines("train.py")
    assert lines is not None and TOKEN not in "\n".join(lines)
    assert files.lines("leak.py") is None and files.lines("../host-secret.txt") is None


def test_databases_and_caches_are_private(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with open_store(home / "state" / "checkpoints.sqlite"):
        pass
    cache = ResponseCache(home / "llm-cache")
    for folder in (home / "state", home / "llm-cache"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for database in (home / "state" / "checkpoints.sqlite", cache.path):
        assert stat.S_IMODE(database.stat().st_mode) == 0o600
