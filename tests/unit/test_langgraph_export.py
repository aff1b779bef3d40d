"""The graph is exportable: `langgraph.json` names the module-level compiled graph, which runs
an audit when given its run context; `torchdoctor graph` prints it as Mermaid."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from tests.conftest import REPO
from torchdoctor.agent.audit import AuditOptions, build_context
from torchdoctor.agent.cli import app

SOURCE = "import torch\n\nx = torch.load('w.pt')\n"


def test_langgraph_json_names_the_graph_and_it_runs_an_audit(tmp_path: Path) -> None:
    config = json.loads((REPO / "langgraph.json").read_text())
    path, name = config["graphs"]["audit"].split(":")
    spec = importlib.util.spec_from_file_location("langgraph_studio_audit", REPO / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    graph = getattr(module, name)
    (tmp_path / "load.py").write_text(SOURCE)
    options = AuditOptions(target=tmp_path, write_ledger=False)
    state = graph.invoke(
        {"audit_id": "studio", "options": options},
        {"recursion_limit": 1000},
        context=build_context(options),
    )
    assert "torch-load-unsafe" in {f.rule for f in state["report"].findings}
    assert state["trace"][-1] == "report"


def test_graph_command_prints_the_nodes_as_mermaid() -> None:
    result = CliRunner().invoke(app, ["graph"])
    assert result.exit_code == 0
    for node in ("ingest", "evidence", "points_1", "fix_3", "gate_5", "adopt_4", "ledger_2"):
        assert node in result.stdout
    assert "approve" in result.stdout and "graph TD" in result.stdout


def test_the_readme_pictures_the_graph_that_runs() -> None:
    """The README's Mermaid block is what `torchdoctor graph` prints today (a node or an edge
    added to the graph and not to the README fails here)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## The audit graph") :]
    start = section.index("```mermaid\n") + len("```mermaid\n")
    picture = section[start : section.index("```", start)]
    assert picture == CliRunner().invoke(app, ["graph"]).stdout


def test_langgraph_json_mounts_the_rest_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The platform imports `http.app` by path: it must be the service, answering requests."""
    monkeypatch.setenv("TORCHDOCTOR_HOME", str(tmp_path))
    config = json.loads((REPO / "langgraph.json").read_text())
    path, name = config["http"]["app"].split(":")
    spec = importlib.util.spec_from_file_location("langgraph_studio_http", REPO / path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = getattr(module, name)
    assert isinstance(app, FastAPI)
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/audits").status_code == 401  # the API, keys required
