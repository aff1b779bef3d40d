"""`torchdoctor schema report|probe-document`: JSON Schemas generated from the models, checked
against documents the real programs wrote (the harness in a subprocess, the CLI's report)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.conftest import EXAMPLES, REPO


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
        check=False,
    )


def schema(name: str) -> dict[str, Any]:
    done = run("-m", "torchdoctor", "schema", name)
    assert done.returncode == 0, done.stderr
    document: dict[str, Any] = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(document)
    return document


def test_probes_harness_output_validates_against_the_published_schema(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    out = tmp_path / "evidence.json"
    script = REPO / "tests" / "fixtures" / "probes" / "train_ok.py"
    done = run("-m", "torchdoctor.sandbox.probes", str(script), "--steps", "2", "--out", str(out))
    assert out.exists(), done.stderr[-2000:]
    published = schema("probe-document")
    jsonschema.validate(json.loads(out.read_text(encoding="utf-8")), published)
    with pytest.raises(jsonschema.ValidationError):  # the schema is strict, like the model
        jsonschema.validate({**json.loads(out.read_text()), "surprise": 1}, published)


def test_audit_json_report_validates_against_the_published_schema(tmp_path: Path) -> None:
    target = tmp_path / "train_buggy.py"
    target.write_bytes((EXAMPLES / "train_buggy.py").read_bytes())
    done = run("-m", "torchdoctor", "audit", str(target), "--format", "json", "--no-ledger")
    assert done.returncode == 0, done.stderr
    jsonschema.validate(json.loads(done.stdout), schema("report"))


def test_unknown_schema_is_a_usage_error() -> None:
    done = run("-m", "torchdoctor", "schema", "nope")
    assert done.returncode == 2 and "Traceback" not in done.stderr
