"""`torchdoctor audit` as a user runs it: a real subprocess, real files, real exit codes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import EXAMPLES, REPO

FINDING_FIELDS = {
    "id",
    "rule",
    "checkpoint",
    "phase",
    "severity",
    "title",
    "file",
    "line",
    "end_line",
    "evidence",
    "status",
    "fix",
}
TOP_FIELDS = {
    "schema_version",
    "tool",
    "target",
    "findings",
    "coverage",
    "summary",
    "provenance",
    "artifacts",
    "hypotheses",
}
PLANTED = {
    "zero-grad-missing",
    "double-softmax",
    "bce-on-sigmoid",
    "loss-graph-accumulation",
    "retain-graph-in-loop",
    "host-sync-in-step",
    "validation-with-grad",
    "eval-without-eval-mode",
    "torch-load-unsafe",
    "no-torch-seed",
    "direct-forward-call",
}


def torchdoctor(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "torchdoctor", *args],
        capture_output=True,
        text=True,
        cwd=cwd or REPO,
        env=os.environ.copy(),
        timeout=300,
    )


@pytest.fixture
def example(tmp_path: Path) -> Path:
    target = tmp_path / "train_buggy.py"
    target.write_bytes((EXAMPLES / "train_buggy.py").read_bytes())
    return target


def test_json_report_contract_and_every_planted_problem(example: Path) -> None:
    result = torchdoctor("audit", str(example), "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report) == TOP_FIELDS
    assert report["schema_version"] == 1
    assert report["tool"]["name"] == "torchdoctor"
    for finding in report["findings"]:
        assert set(finding) == FINDING_FIELDS
        assert finding["file"] == "train_buggy.py"
        assert 1 <= finding["checkpoint"] <= 12 and 1 <= finding["phase"] <= 5
        assert finding["id"].startswith("TD-")
        assert finding["fix"] is None or set(finding["fix"]) >= {"diff", "verified", "verification"}
    rules = {f["rule"] for f in report["findings"]}
    assert rules >= PLANTED, PLANTED - rules
    points = {f["checkpoint"] for f in report["findings"] if f["rule"] in PLANTED}
    assert len(points) >= 5
    assert len(report["coverage"]) == 50
    assert {c["verdict"] for c in report["coverage"]} <= {
        "pass",
        "fail",
        "not-applicable",
        "not-checked",
    }
    assert report["provenance"]["reasoner"] == "offline"
    assert (example.parent / "ISSUES.md").exists()


def test_sarif_validates_against_the_official_schema(example: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit.sarif"
    result = torchdoctor("audit", str(example.parent), "--format", "sarif", "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "", "nothing but the report goes to stdout, and it went to a file"
    sarif = json.loads(out.read_text())
    schema = json.loads((REPO / "tests" / "schemas" / "sarif-schema-2.1.0.json").read_text())
    jsonschema.validate(sarif, schema)
    assert sarif["runs"][0]["results"]


def test_markdown_report_in_french(example: Path) -> None:
    result = torchdoctor("audit", str(example), "--lang", "fr", "--no-ledger")
    assert result.returncode == 0, result.stderr
    assert "# Rapport d'audit torchdoctor" in result.stdout
    assert "Couverture de la liste de contrôle" in result.stdout
    assert not (example.parent / "ISSUES.md").exists()


def test_exit_codes(example: Path, tmp_path: Path) -> None:
    assert (
        torchdoctor("audit", str(example), "--format", "json", "--fail-on", "high").returncode == 1
    )
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "ok.py").write_text("def add(a: int, b: int) -> int:\n    return a + b\n")
    assert torchdoctor("audit", str(clean), "--format", "json", "--fail-on", "low").returncode == 0
    missing = torchdoctor("audit", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "no such file" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert torchdoctor("audit", str(example), "--format", "xml").returncode == 2
    notpy = tmp_path / "data.csv"
    notpy.write_text("a,b\n")
    assert torchdoctor("audit", str(notpy)).returncode == 2


def test_bad_inputs_are_notes_and_the_rest_is_audited(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "pkg" / "broken.py").write_text("def f(:\n")
    (repo / "pkg" / "blob.py").write_bytes(b"\x00\x01\x02" * 100)
    (repo / "pkg" / "latin.py").write_bytes(b"x = '\xe9t\xe9'\n")
    (repo / "pkg" / "generated.py").write_text("X = 1\n" * 900_000)
    (repo / "pkg" / "dangling.py").symlink_to(repo / "missing.py")
    (repo / "pkg" / "loop").symlink_to(repo / "pkg")
    (repo / "train.py").write_text((EXAMPLES / "train_buggy.py").read_text())
    result = torchdoctor("audit", str(repo), "--format", "json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    report = json.loads(result.stdout)
    skipped = {n["file"]: n["reason"] for n in report["summary"]["files_skipped"]}
    assert "binary" in skipped["pkg/blob.py"]
    assert "encoding" in skipped["pkg/latin.py"]
    assert "MB" in skipped["pkg/generated.py"]
    assert "broken symbolic link" in skipped["pkg/dangling.py"]
    rules = {(f["file"], f["rule"]) for f in report["findings"]}
    assert ("pkg/broken.py", "syntax-error") in rules
    assert ("train.py", "zero-grad-missing") in rules


def test_empty_folder_is_reported_not_crashed(tmp_path: Path) -> None:
    result = torchdoctor("audit", str(tmp_path), "--format", "json", "--no-ledger")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["summary"]["files_audited"] == 0
    assert report["summary"]["files_skipped"][0]["reason"].startswith("no Python files")


def test_rules_command_lists_and_explains(tmp_path: Path) -> None:
    listing = torchdoctor("rules", "--format", "json")
    assert listing.returncode == 0
    rules = json.loads(listing.stdout)
    assert {"id", "kind", "point", "severity", "fixable", "title", "doc"} <= set(rules[0])
    explained = torchdoctor("rules", "zero-grad-missing")
    assert "Fix:" in explained.stdout and "Example:" in explained.stdout
    assert torchdoctor("rules", "no-such-rule").returncode == 2


EXAMPLE_EXPECTATIONS = {
    "leaky_tabular.py": {
        "leak-preprocessing",
        "leak-multi-test",
        "bias-before-norm",
        "missing-nonlinearity",
        "adam-with-weight-decay",
        "hardcoded-paths",
        "persistent-workers-off",
    },
    "serve_model.py": {
        "hardcoded-secrets",
        "torch-load-unsafe",
        "inference-no-eval",
        "torchscript-for-deploy",
        "legacy-quantization",
        "no-grad-not-inference-mode",
    },
    "train_lm_slow.py": {
        "host-sync-in-step",
        "empty-cache-in-loop",
        "unfused-optimizer",
        "pin-memory-off",
        "dataparallel-not-ddp",
        "no-torch-compile",
        "device-mismatch-factory-in-forward",
        "manual-attention",
    },
}


@pytest.mark.parametrize("name", sorted(EXAMPLE_EXPECTATIONS))
def test_other_bundled_examples_have_their_planted_problems_caught(name: str) -> None:
    from torchdoctor.agent.audit import AuditOptions, run_audit

    outcome = run_audit(AuditOptions(target=EXAMPLES / name, write_ledger=False))
    rules = {f.rule for f in outcome.report.findings}
    assert EXAMPLE_EXPECTATIONS[name] <= rules, EXAMPLE_EXPECTATIONS[name] - rules


def test_peer_linters_confirm_native_findings_instead_of_duplicating(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHDOCTOR_LINTERS", "1")
    target = tmp_path / "serve_model.py"
    target.write_bytes((EXAMPLES / "serve_model.py").read_bytes())
    result = torchdoctor("audit", str(target), "--format", "json", "--no-ledger")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    loads = [f for f in report["findings"] if f["rule"] == "torch-load-unsafe"]
    assert len(loads) == 1, "one finding, backed by several tools"
    sources = {e["source"] for e in loads[0]["evidence"]}
    assert {"torchdoctor-static", "bandit"} <= sources
    assert "bandit" in report["provenance"]["tools"]
    for finding in report["findings"]:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", finding["rule"]), finding["rule"]
        assert finding["severity"] != "info", "informational peer output is context, not findings"
    verdicts = {c["item"]: c for c in report["coverage"]}
    assert verdicts["11.1"]["verdict"] in ("not-applicable", "not-checked")


def test_project_config_sets_language_and_threshold(example: Path) -> None:
    (example.parent / "pyproject.toml").write_text(
        '[tool.torchdoctor]\nlang = "fr"\nfail-on = "high"\n'
    )
    configured = torchdoctor("audit", str(example), "--no-ledger")
    assert configured.returncode == 1, "fail-on from the project's pyproject"
    assert "# Rapport d'audit torchdoctor" in configured.stdout
    overridden = torchdoctor("audit", str(example), "--no-ledger", "--fail-on", "critical")
    assert overridden.returncode == 0, "the command line wins"


@pytest.mark.slow
def test_declared_groups_are_scored_on_the_projects_own_run(tmp_path: Path) -> None:
    """`[tool.torchdoctor.groups]` in the project's pyproject, one logit per row read through
    the BCEWithLogitsLoss the script trains with, groups from a standardised 0/1 column."""
    script = REPO / "tests" / "fixtures" / "scripts" / "tabular_groups.py"
    (tmp_path / "tabular_groups.py").write_bytes(script.read_bytes())
    (tmp_path / "pyproject.toml").write_text("[tool.torchdoctor.groups]\nfeature = 0\n")
    run = ("--run", "python tabular_groups.py", "--steps", "12", "--offline", "--no-ledger")
    done = torchdoctor("audit", str(tmp_path), *run, "--probes", "cheap", "--format", "json", "-q")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    (gap,) = [f for f in report["findings"] if f["rule"] == "probe-group-gap"]
    groups = gap["evidence"][0]["data"]["groups"]
    assert groups["spec"] == "feature:0:1" and groups["batches"] == 4  # one evaluation: 256 rows
    majority, minority = sorted(groups["groups"], key=lambda g: -g["rows"])
    assert majority["rows"] + minority["rows"] == 256
    assert majority["accuracy"] > 0.8 > 0.3 > minority["accuracy"]
    (entry,) = [c for c in report["coverage"] if c["item"] == "12.1"]
    assert entry["verdict"] == "fail" and "probe-group-gap" in entry["reason"]
    # the quick probes the test asked for: the run, and a note of what it left out
    (run,) = report["provenance"]["extra"]["runs"]
    assert run["notes"] == [
        "--probes cheap skipped the seeded determinism re-runs (5.1) and the export check (7.1)"
    ]
    how = {c["item"]: c["how"] for c in report["coverage"]}
    assert "torchdoctor-probes" not in how["5.1"] + how["7.1"]
    assert "evidence: torchdoctor-probes" in how["7.2"], "INT8 is tried all the same"
