"""What keeps a pre-commit audit fast: no `--version` subprocess for peers that are this
environment's own, no durable checkpoints for an audit that is cheaper to redo than to resume,
no LangGraph (nor libcst, nor the LLM's configuration) for a static-only audit, which still
gets the graph's report and ledger, nor Jinja when no ledger is written. (The figures are
printed by benchmarks/latency.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import torchdoctor.agent.checks.linters.base as linter_base
from tests.conftest import EXAMPLES
from torchdoctor.agent.audit import AuditOptions, build_context, run_audit, run_config
from torchdoctor.agent.checks.linters.bandit import BanditAdapter
from torchdoctor.agent.checks.linters.ruff import RuffAdapter


def test_own_peer_versions_come_from_metadata_not_a_subprocess(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not (Path(sys.executable).parent / "ruff").exists():
        pytest.skip("ruff is not installed next to this interpreter")

    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"ran {args}")

    monkeypatch.setattr(linter_base, "run_tool", no_subprocess)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    from importlib import metadata

    assert RuffAdapter().version() == metadata.version("ruff")


def test_a_foreign_peer_still_reports_its_own_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bandit"
    fake.write_text("#!/bin/sh\necho 'bandit 9.8.7'\n", encoding="utf-8")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    assert BanditAdapter().version() == "9.8.7"


def test_static_audit_keeps_no_durable_checkpoint(tmp_path: Path) -> None:
    target = tmp_path / "train.py"
    shutil.copyfile(EXAMPLES / "train_buggy.py", target)
    report = run_audit(AuditOptions(target=target, write_ledger=False)).report
    assert report.findings
    home = Path(os.environ["TORCHDOCTOR_HOME"])
    assert not (home / "checkpoints.sqlite").exists()


def _comparable(report: dict[str, Any]) -> dict[str, Any]:
    provenance = report["provenance"]
    for key in ("started_at", "duration_s"):
        provenance.pop(key)
    return report


def test_the_static_path_gives_the_graph_paths_report_and_ledger(tmp_path: Path) -> None:
    """Same nodes, same folding: the LangGraph-free path and the compiled graph agree, on a
    folder with findings in every phase and a status the user set in the ledger."""
    from langgraph.checkpoint.memory import InMemorySaver

    from torchdoctor.agent.graph import build_graph
    from torchdoctor.agent.static_path import run_static_path

    project = tmp_path / "project"
    project.mkdir()
    for name in ("train_buggy.py", "serve_model.py", "leaky_tabular.py"):
        shutil.copyfile(EXAMPLES / name, project / name)
    options = AuditOptions(target=project)
    run_audit(options)
    ledger = project / "ISSUES.md"
    marked = ledger.read_text(encoding="utf-8").replace(
        "- Status: open", "- Status: wont-fix — on purpose", 1
    )
    outcomes = []
    for path in ("graph", "static"):
        ledger.write_text(marked, encoding="utf-8")
        first: dict[str, Any] = {"audit_id": "same-audit", "options": options}
        context = build_context(options)
        if path == "graph":
            app = build_graph(InMemorySaver())
            state = app.invoke(first, run_config("same-audit"), context=context)
        else:
            state = dict(run_static_path(first, context))
        stamp = re.compile(r"\d{4}-\d\d-\d\dT[\d:]+\S*|\d+(\.\d+)? s\b")
        outcomes.append(
            (
                _comparable(state["report"].model_dump(mode="json")),
                stamp.sub("<time>", ledger.read_text(encoding="utf-8")),
                state["trace"],
            )
        )
    (graph_report, graph_ledger, graph_trace), (report, ledger_text, trace) = outcomes
    assert report["findings"] and any(f["status"] == "wont-fix" for f in report["findings"])
    assert {f["phase"] for f in report["findings"]} >= {1, 2, 3}
    assert report == graph_report
    assert ledger_text == graph_ledger
    assert sorted(trace) == sorted(graph_trace)


def test_the_static_path_writes_the_ledger_once_and_still_reports_each_phase(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing resumes a static audit, so its ledger is written whole by `summarize` only."""
    from torchdoctor.agent.graph import phases
    from torchdoctor.agent.ledger import Ledger

    written: list[Path] = []
    write = Ledger.write

    def counted(ledger: Ledger, path: Path) -> None:
        written.append(path)
        write(ledger, path)

    monkeypatch.setattr(Ledger, "write", counted)
    shutil.copyfile(EXAMPLES / "train_buggy.py", tmp_path / "train.py")
    events: list[dict[str, Any]] = []
    report = run_audit(AuditOptions(target=tmp_path), events.append).report
    assert written == [tmp_path / "ISSUES.md"]
    ledger = written[0].read_text(encoding="utf-8")
    assert report.findings and all(f.id in ledger for f in report.findings)
    passed = [e["phase"] for e in events if e.get("event") == "ledger"]
    assert passed == [phase.number for phase in phases()]


@pytest.mark.parametrize(
    ("options", "unloaded"),
    [
        ([], ()),
        # The hook's audit is offline: whether an LLM is configured is not even read.
        (["--static-only"], ("torchdoctor.agent.reasoning.llm", "torchdoctor.agent.harness")),
    ],
)
def test_a_static_cli_audit_loads_neither_langgraph_nor_libcst(
    tmp_path: Path, options: list[str], unloaded: tuple[str, ...]
) -> None:
    target = tmp_path / "train.py"
    shutil.copyfile(EXAMPLES / "train_buggy.py", target)
    probe = (
        "import sys, runpy; sys.argv = ['torchdoctor', *sys.argv[1:]]\n"
        "try:\n    runpy.run_module('torchdoctor', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'langgraph', 'langchain_core', "
        "'libcst', 'torch', 'jinja2'})\n"
        f"heavy += sorted(set({list(unloaded)!r}) & set(sys.modules))\n"
        "print(heavy, file=sys.stderr)\n"
    )
    audit = ["audit", str(target), "--no-ledger", "-f", "json", "-q", *options]
    done = subprocess.run(
        [sys.executable, "-c", probe, *audit],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["findings"]
    assert done.stderr.strip().splitlines()[-1] == "[]"


def test_rules_codemods_and_sessions_load_no_torch() -> None:
    """The rules listing, every codemod and the session engine run in CLI, server and hook
    processes that never need torch (its import is 1-2 CPU-s each): what they read of the
    probes harness (the determinism tolerance) comes without the harness's torch import."""
    probe = (
        "import sys, runpy\n"
        "import torchdoctor.agent.fixing, torchdoctor.agent.session.engine\n"
        "from torchdoctor.agent.fixes.codemods import all_codemods\n"
        "assert all_codemods()\n"
        "sys.argv = ['torchdoctor', 'rules', '--format', 'json']\n"
        "try:\n    runpy.run_module('torchdoctor', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "vocabulary-in-set-order" in {rule["id"] for rule in json.loads(done.stdout)}
    assert done.stderr.strip().splitlines()[-1] == "[]"
