"""detect-secrets run once in the warm process itself (its per-run set-up then left done for
the runs forked from it) reports what a started detect-secrets reports."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from torchdoctor.agent.checks.linters import warm
from torchdoctor.agent.checks.linters.process import run_tool

FIXTURES = Path(__file__).parents[1] / "fixtures" / "linters"
DETECT_SECRETS = str(Path(sys.executable).parent / "detect-secrets")
# A training script with what detect-secrets looks for beside what it must let be: a keyword
# secret, a high-entropy hex string, a URL with credentials, a tokenizer's special token.
SCRIPT = """\
import torch

WANDB_API_KEY = "8f14e45fceea167a5a36dedd4bea2543b9c1d5a7"
DB_URL = "postgres://trainer:s3cr3t-Passw0rd@db.internal:5432/runs"
checkpoint_sha = "d41d8cd98f00b204e9800998ecf8427e"
pad_token = "[PAD]"


def train(model: torch.nn.Module) -> None:
    password = "hunter2-but-longer-and-random-9fQ2"
    print(password, model)
"""


@pytest.fixture
def warm_detect_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(warm, "_entries", {})
    if "detect-secrets" not in warm.preload(["detect-secrets"]):
        pytest.skip("detect-secrets is not installed next to this interpreter")


def report(folder: Path) -> dict[str, Any]:
    output = run_tool([DETECT_SECRETS, "scan", "--no-verify", "--", *FILES], folder, 120)
    assert output.returncode == 0, output.stderr
    found: dict[str, Any] = json.loads(output.stdout)
    found.pop("generated_at", None)
    return found


FILES = ["train.py", "settings.py"]


def test_a_run_after_the_in_process_warm_up_reports_what_a_started_run_reports(
    warm_detect_secrets: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "train.py").write_text(SCRIPT)
    shutil.copyfile(FIXTURES / "settings.py", tmp_path / "settings.py")
    forked_cold = report(tmp_path)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "sample.py").write_text(SCRIPT.replace("hunter2", "other"))
    argv = [DETECT_SECRETS, "scan", "--no-verify", "--", str(scratch / "sample.py")]
    assert warm.run_in_process(DETECT_SECRETS, argv)
    assert sys.argv[0] != DETECT_SECRETS  # ours again
    forked_warm = report(tmp_path)
    monkeypatch.setattr(warm, "_entries", {})  # started, not forked
    started = report(tmp_path)
    assert forked_warm == forked_cold == started
    assert len(started["results"]["train.py"]) >= 3 and started["results"]["settings.py"]


def test_a_tool_that_is_not_preloaded_is_not_run_in_process(tmp_path: Path) -> None:
    assert not warm.run_in_process(str(tmp_path / "no-such-tool"), ["no-such-tool"])
