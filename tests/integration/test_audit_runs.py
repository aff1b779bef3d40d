"""Audits that run the code: `--run`, `[tool.torchdoctor] run`, `--discover`, via the sandbox."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from torchdoctor.agent.audit import AuditOptions, run_audit
from torchdoctor.agent.probing import (
    RunRequest,
    discover_entry_points,
    planned_commands,
    split_command,
)
from torchdoctor.agent.report import write_report
from torchdoctor.agent.report.markdown import render_markdown
from torchdoctor.agent.workspace import load_workspace


@pytest.fixture
def project(tmp_path: Path) -> Path:
    shutil.copy(EXAMPLES / "train_buggy.py", tmp_path / "train_buggy.py")
    return tmp_path


def test_run_turns_probe_evidence_into_findings_and_coverage(project: Path, tmp_path: Path) -> None:
    heard: list[dict[str, Any]] = []
    outcome = run_audit(
        AuditOptions(target=project, run=["python train_buggy.py"], steps=6, write_ledger=False),
        progress=heard.append,
    )
    report = outcome.report
    runs_heard = [e["message"] for e in heard if e["event"] == "run"]
    assert len(runs_heard) == 2 and "train_buggy.py" in runs_heard[0], "a line per run, both ends"
    rules = {f.rule for f in report.findings}
    # the run confirms the static findings on the same lines: one finding per problem
    assert not {"probe-graph-retention", "probe-host-sync"} & rules
    for native, probe in (
        ("loss-graph-accumulation", "probe-graph-retention"),
        ("host-sync-in-step", "probe-host-sync"),
    ):
        confirmed = [
            f
            for f in report.findings
            if f.rule == native and any(e.data.get("probe") == probe for e in f.evidence)
        ]
        assert len(confirmed) == 1, (native, [f.rule for f in report.findings])
        assert confirmed[0].file == "train_buggy.py"
    runs = report.provenance.extra["runs"]
    assert runs[0]["outcome"] == "completed-steps"
    assert runs[0]["dataflow"]["calls"], "the full data-flow map is in the JSON report"
    assert len(runs[0]["curves"]["loss"]) >= 2
    text = render_markdown(report)
    assert "| # | module | type | from |" in text and "flowchart TD" in text
    write_report(report, "markdown", "en", tmp_path / "out" / "audit.md")
    written = (tmp_path / "out" / "audit.md").read_text()
    assert "![loss per step](audit.run1.loss.svg)" in written
    svg = (tmp_path / "out" / "audit.run1.loss.svg").read_text()
    assert svg.startswith("<svg") and "<polyline" in svg and "<script" not in svg
    assert report.provenance.isolation
    verdicts = {c.item: c.verdict for c in report.coverage}
    assert verdicts["1.4"] == "fail"
    assert verdicts["1.3"] != "not-checked", "the data-flow map was measured"
    # the full probes (the default): the seeded re-runs, the export try and INT8 measured too
    how = {c.item: c.how for c in report.coverage}
    assert all("evidence: torchdoctor-probes" in how[item] for item in ("5.1", "7.1", "7.2"))
    assert runs[0]["notes"] == []
    assert (project / "train_buggy.py").read_bytes() == (EXAMPLES / "train_buggy.py").read_bytes()


def test_a_single_file_audit_runs_its_script_among_the_files_beside_it(tmp_path: Path) -> None:
    # the shape of a tutorial trainer: one script that reads its corpus from a text file next
    # to it and its model from a sibling module; only the script is audited
    (tmp_path / "corpus.txt").write_text("0.5 1.0 1.5 2.0\n", encoding="utf-8")
    (tmp_path / "tiny_model.py").write_text(
        "import torch\n\n\ndef build() -> torch.nn.Module:\n    return torch.nn.Linear(4, 1)\n",
        encoding="utf-8",
    )
    script = tmp_path / "train.py"
    script.write_text(
        "import torch\nfrom tiny_model import build\n\n"
        "with open('corpus.txt', encoding='utf-8') as f:\n"
        "    x = torch.tensor([float(v) for v in f.read().split()]).repeat(8, 1)\n"
        "model = build()\nopt = torch.optim.SGD(model.parameters(), lr=0.01)\n"
        "for _ in range(3):\n    opt.zero_grad()\n    loss = model(x).pow(2).mean()\n"
        "    loss.backward()\n    opt.step()\n",
        encoding="utf-8",
    )

    report = run_audit(
        AuditOptions(
            target=script, run=["python train.py"], steps=3, probes="cheap", write_ledger=False
        )
    ).report

    run = report.provenance.extra["runs"][0]
    assert run["outcome"] == "completed-steps", run
    assert [f.file for f in report.findings if f.rule == "probe-script-error"] == []


def test_pyproject_run_and_bad_commands_become_notes(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        '[tool.torchdoctor]\nrun = ["python missing.py", "bash -c true"]\n'
    )
    report = run_audit(AuditOptions(target=project, write_ledger=False)).report
    runs = {r["command"]: r for r in report.provenance.extra["runs"]}
    assert runs["python missing.py"]["outcome"] == "not-run"
    assert "not one of the audited files" in runs["python missing.py"]["summary"]
    assert runs["bash -c true"]["outcome"] == "not-run"
    assert any("missing.py" in note for note in report.summary.notes)


def test_a_plain_audit_runs_nothing(project: Path) -> None:
    report = run_audit(AuditOptions(target=project, write_ledger=False)).report
    assert report.provenance.extra["runs"] == []
    assert report.provenance.isolation is None


def test_discover_finds_the_entry_points_that_train_or_run_a_model(tmp_path: Path) -> None:
    (tmp_path / "lib.py").write_text("import torch\n\ndef helper():\n    return torch.zeros(1)\n")
    (tmp_path / "notrain.py").write_text('if __name__ == "__main__":\n    print("hi")\n')
    workspace = load_workspace(EXAMPLES)
    found = discover_entry_points(workspace)
    assert set(found) == {
        "train_buggy.py",
        "leaky_tabular.py",
        "serve_model.py",
        "train_lm_slow.py",
    }
    assert discover_entry_points(load_workspace(tmp_path)) == []
    commands = planned_commands(
        RunRequest(commands=["python -u train_buggy.py --epochs 1"], discover=True), workspace
    )
    assert commands[0] == "python -u train_buggy.py --epochs 1"
    assert "python train_buggy.py" not in commands and len(commands) == 4


def test_split_command() -> None:
    assert split_command("python -u train.py --lr 1") == ("train.py", ["--lr", "1"])
    assert split_command("torchrun --nproc-per-node 2 train.py") == ("train.py", [])
    with pytest.raises(ValueError):
        split_command("bash train.sh")
