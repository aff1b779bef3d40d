"""A leak is reported where contaminated data trains or is scored, with its source related:
SARIF relatedLocations (valid against the official schema) and both excerpts in markdown."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "fixtures" / "rules" / "leak-preprocessing"


def _audit(folder: Path, *args: str) -> str:
    command = [sys.executable, "-m", "torchdoctor", "audit", str(folder), "-q", "--no-linters"]
    done = subprocess.run(
        [*command, "--no-ledger", *args], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_leak_sits_at_the_fit_with_its_source_as_related_location(tmp_path: Path) -> None:
    folder = tmp_path / "credit"
    folder.mkdir()
    shutil.copy(FIXTURE / "positive_reported_at_the_fit.py", folder / "train.py")

    sarif = json.loads(_audit(folder, "-f", "sarif"))
    schema = json.loads((REPO / "tests" / "schemas" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.validate(sarif, schema)
    leaks = [r for r in sarif["runs"][0]["results"] if r["ruleId"] == "leak-preprocessing"]
    at = {r["locations"][0]["physicalLocation"]["region"]["startLine"]: r for r in leaks}
    assert sorted(at) == [13, 21]  # the forest's fit, the model's fit: not the scaler's line
    sources = [
        place["physicalLocation"]["region"]["startLine"] for place in at[13]["relatedLocations"]
    ]
    assert sources == [9, 11]  # scale() and SMOTE's fit_resample, both before the split
    assert [p["physicalLocation"]["region"]["startLine"] for p in at[21]["relatedLocations"]] == [
        18,
        18,
    ]  # the inline mean and std

    markdown = _audit(folder)
    assert "> 13 | forest = RandomForestClassifier().fit(X_train, y_train)" in markdown
    assert "> 11 | X_res, y_res = SMOTE(random_state=0).fit_resample(X, y)" in markdown
