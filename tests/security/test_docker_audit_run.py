"""`--sandbox docker --run "python train.py"`, end to end against the real Docker engine the
tests start: the audit graph runs the probes harness in a container of an image built here
(a `docker import`ed base plus the harness files, nothing pulled), with the image's interpreter
and import path, and the run's evidence reaches the report."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from langgraph.checkpoint.memory import InMemorySaver

from torchdoctor.agent.audit import build_context, run_config
from torchdoctor.agent.context import SandboxHandle
from torchdoctor.agent.durable import serializer
from torchdoctor.agent.graph import build_graph
from torchdoctor.agent.options import AuditOptions
from torchdoctor.sandbox.private_engine import (
    HARNESS_TEST_IMAGE,
    build_harness_image,
    engine_config,
)

pytestmark = [pytest.mark.docker, pytest.mark.slow]

TRAIN = """import torch
from torch import nn

torch.manual_seed(0)
model = nn.Linear(8, 1)
optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
data = torch.randn(64, 8)
target = data.sum(dim=1, keepdim=True)
for step in range(20):
    optimizer.zero_grad()
    loss = ((model(data) - target) ** 2).mean()
    loss.backward()
    optimizer.step()
"""


def test_an_audit_runs_the_harness_in_a_container_with_the_images_python(
    docker_url: str, tmp_path: Path
) -> None:
    build_harness_image(docker_url)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text(TRAIN)
    options = AuditOptions(
        target=repo,
        run=["python train.py"],
        steps=3,
        probes="cheap",  # the container run is the subject, not the seeded re-runs or export
        sandbox="docker",
        write_ledger=False,
    )
    config = engine_config(docker_url, HARNESS_TEST_IMAGE)
    sandbox = config.model_copy(update={"run_root": tmp_path / "runs"}).build()
    context = build_context(options)
    context.sandbox = SandboxHandle("docker", sandbox=sandbox)
    audit_id = uuid.uuid4().hex[:12]
    state = build_graph(InMemorySaver(serde=serializer())).invoke(
        {"audit_id": audit_id, "options": options}, run_config(audit_id), context=context
    )
    [run] = state["runs"]
    assert run.isolation.startswith("docker/docker"), run.isolation
    assert run.outcome in {"completed-steps", "script-finished"}, run.summary
    assert run.curves.loss, "the harness's loss curve came back from the container"
    provenance = state["report"].provenance
    assert provenance.isolation == run.isolation
    assert [r["command"] for r in provenance.extra["runs"]] == ["python train.py"]
