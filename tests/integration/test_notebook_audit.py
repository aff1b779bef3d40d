"""Auditing a folder of notebooks: findings, SARIF, the concise lines and the ledger name the
cell; a notebook with invalid JSON is a note in the report, not a crash (real CLI, peers off
for speed)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parents[1] / "fixtures" / "notebooks"


def _audit(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torchdoctor", "audit", str(folder), "-q", "--no-linters"]
    return subprocess.run([*command, *args], capture_output=True, text=True, check=False)


@pytest.mark.slow
def test_notebook_findings_name_the_cell_in_every_output(tmp_path: Path) -> None:
    folder = tmp_path / "nb"
    shutil.copytree(FIXTURES, folder)
    done = _audit(folder, "-f", "json", "--no-ledger")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    found = {f["rule"]: f for f in report["findings"]}
    zero_grad = found["zero-grad-missing"]
    assert zero_grad["file"] == "finetune.ipynb"
    assert zero_grad["evidence"][0]["data"]["cell"] == 6
    assert zero_grad["evidence"][0]["excerpt"].startswith("cell 6\n")
    skipped = {s["file"]: s["reason"] for s in report["summary"]["files_skipped"]}
    assert skipped["broken.ipynb"].startswith("notebook not audited: invalid notebook JSON")

    sarif = json.loads(_audit(folder, "-f", "sarif", "--no-ledger").stdout)
    cells = [r["properties"].get("notebookCell") for r in sarif["runs"][0]["results"]]
    assert {"cell": 6, "line": 2} in cells

    concise = _audit(folder, "-f", "concise", "--no-ledger").stdout.splitlines()
    assert any(
        line.startswith(f"{folder}/finetune.ipynb:cell 6:2:5: zero-grad-missing [high]")
        for line in concise
    ), concise  # ruff's notebook form: the cell, then the line in it

    ledger = tmp_path / "ISSUES.md"
    markdown = _audit(folder, "--ledger", str(ledger)).stdout
    assert "`finetune.ipynb cell 6, line 2`" in markdown
    assert "`finetune.ipynb cell 6, line 2`" in ledger.read_text(encoding="utf-8")
