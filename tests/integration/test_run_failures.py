"""A run that fails proves only that it fails (issue 13, item 2).

Real harness runs (`python -m torchdoctor.sandbox.probes`, as tests/integration/test_probes.py
runs it) of scripts that crash at import, before their first step, and mid-way: each yields
exactly one `probe-script-error` finding with its traceback excerpt, and no measurement
(gradients, modes, loss...) is read from it. Documents whose determinism/export sections hold
missing values are in tests/unit/test_run_failure_analysis.py (the probes that fill them
re-run the script, too slow to repeat here).
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests.integration.test_probes import run_probes
from torchdoctor.agent.evidence.probes import probe_findings

pytest.importorskip("torch")

SCRIPTS = {
    "at-import": """
        import torch
        from torch import nn
        import a_module_that_is_not_installed  # noqa: F401
        model = nn.Linear(4, 1)
    """,
    "at-step-0": """
        import torch
        from torch import nn
        model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 1))
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        data = torch.load("data/train.pt")  # the data set is not there
        for x in data:
            loss = model(x).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """,
    "mid-way": """
        import time
        import torch
        from torch import nn
        model = nn.Linear(4, 1)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        noise = torch.Generator().manual_seed(int(time.time_ns() % 1000))
        for step in range(10):
            x = torch.randn(8, 4, generator=noise)
            if step == 3:
                raise RuntimeError("the loader ran out of shards")
            loss = model(x).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    """,
}


@pytest.mark.parametrize("when", sorted(SCRIPTS))
def test_a_failed_run_yields_one_failure_finding_and_nothing_else(
    tmp_path: Path, when: str
) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPTS[when]))
    doc, _ = run_probes(tmp_path, script, "--steps", "6")
    assert doc.outcome.kind == "script-error"
    analysis = probe_findings(doc, "train.py", read_source=lambda _p: script.read_text())
    assert [f.rule for f in analysis.findings] == ["probe-script-error"]
    failure = analysis.findings[0]
    assert "None" not in failure.message
    assert ("before its first step" in failure.message) == (when != "mid-way")
    assert not [h for h in analysis.coverage.values() if h.verdict == "pass"]
    evidence = [ev for ev in analysis.evidence if ev.data.get("finding")]
    assert len(evidence) == 1
    assert "Traceback (last lines)" in evidence[0].excerpt
    assert doc.outcome.error_type in evidence[0].excerpt
