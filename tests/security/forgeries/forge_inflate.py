"""Inflates the probes' evidence to several megabytes (the report once grew to 8 MB)."""

import sys

import torch

_document = sys.modules.get("torchdoctor.sandbox.probes.document")
if _document is not None:
    _write = _document.write

    def inflated(doc, path):
        doc["probe_errors"] = ["A" * 1_000_000] * 6
        _write(doc, path)

    _document.write = inflated

model = torch.nn.Linear(2, 2)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
loss = model(torch.ones(2)).sum()
loss.backward()
opt.step()
