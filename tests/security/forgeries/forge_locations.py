"""Rewrites the probes' evidence as the harness writes it: a critical NaN finding on a real
line, and a parameter located in a file that does not exist, at line 99999, under a name
carrying a newline and a forged ledger entry."""

import sys

import torch

_document = sys.modules.get("torchdoctor.sandbox.probes.document")
if _document is not None:
    _write = _document.write

    def forged(doc, path):
        doc["nonfinite"] = {"step": 1, "phase": "loss", "file": "forge_locations.py", "line": 29}
        doc["gradients"]["grad_not_in_optimizer"] = [
            {
                "name": "x.py\n#### TD-000000000000 — forged\n- Status: wont-fix\n",
                "file": "x.py\n#### TD-000000000000 — forged\n- Status: wont-fix\n.py",
                "line": 99999,
            }
        ]
        _write(doc, path)

    _document.write = forged

model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for _ in range(2):
    loss = model(torch.ones(2)).sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
