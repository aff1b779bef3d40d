"""Findings computed on the working copy (the earlier phases' verified fixes applied) read on
the user's files, project rules' findings included.

Shape from makemore (held out): the adopted attention fix removed four lines above the
`torch.save` that `no-model-card` (a project rule) reports; the report named the copy's line
and showed the copy's text, four lines off the user's file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torchdoctor.agent.config import AuditConfig
from torchdoctor.agent.graph import requests_on_copy
from torchdoctor.agent.workspace import load_workspace

SCRIPT = """import torch
import torch.nn as nn

model = nn.Linear(2, 1)
a = 1
b = 2
c = 3
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    loss = model(torch.randn(4, 2)).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
torch.save(model.state_dict(), "model.pt")
"""


def test_a_project_rules_finding_on_the_copy_names_the_users_line(tmp_path: Path) -> None:
    (tmp_path / "train.py").write_text(SCRIPT, encoding="utf-8")
    workspace = load_workspace(tmp_path)
    copy = SCRIPT.replace("a = 1\nb = 2\nc = 3\n", "")
    state: Any = {"config": AuditConfig()}

    requests = requests_on_copy(state, workspace, {"train.py": copy})

    (card,) = [
        f
        for request in requests.values()
        for f in request.raw_findings
        if f.rule == "no-model-card"
    ]
    assert card.line == SCRIPT.splitlines().index('torch.save(model.state_dict(), "model.pt")') + 1
    assert f"> {card.line} | torch.save" in card.excerpt
