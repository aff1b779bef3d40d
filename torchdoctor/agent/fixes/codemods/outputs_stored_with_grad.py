"""outputs-stored-with-grad: keep detached outputs, not tensors that pin their autograd graph."""

from __future__ import annotations

from torchdoctor.agent.fixes.codemods.loss_graph_accumulation import LossGraphAccumulationFix


class OutputsStoredWithGradFix(LossGraphAccumulationFix):
    """Same edit as loss-graph-accumulation (`acc += out` / `outs.append(out)` ->
    `.detach()`), for model outputs and other graph-carrying tensors kept across steps."""

    rule = "outputs-stored-with-grad"
    summary = "store out.detach() instead of the graph-carrying tensor"
