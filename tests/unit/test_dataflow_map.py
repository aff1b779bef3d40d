"""The data-flow map follows the call tree: branches stay branches, residual adds are merges,
repeated blocks collapse, and both renderings stay readable on a 12-layer transformer.

The probe is driven in-process with global module hooks, the way the harness's session drives
it; the harness itself is exercised end to end in tests/integration/test_audit_runs.py.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from torch import nn

from torchdoctor.agent.evidence.probe_schema import DataFlow
from torchdoctor.agent.report.dataflow import (
    MERMAID_MAX_NODES,
    TABLE_MAX_ROWS,
    render_dataflow_markdown,
    render_dataflow_mermaid,
)
from torchdoctor.sandbox.probes.dataflow import DataFlowProbe


@contextmanager
def _probed(model: nn.Module) -> Iterator[DataFlowProbe]:
    probe = DataFlowProbe()
    names = {
        id(m): f"{type(model).__name__}.{n}" if n else type(model).__name__
        for n, m in model.named_modules()
    }
    depth = 0

    def pre(module: nn.Module, args: object) -> None:
        nonlocal depth
        depth += 1
        probe.on_enter(0, depth - 1, names.get(id(module), "?"), module, args)

    def post(module: nn.Module, args: object, output: object) -> None:
        nonlocal depth
        depth -= 1
        probe.on_exit(module, output)

    handles = [
        nn.modules.module.register_module_forward_pre_hook(pre),
        nn.modules.module.register_module_forward_hook(post),
    ]
    try:
        yield probe
    finally:
        probe.stop()
        for handle in handles:
            handle.remove()


def _flow(model: nn.Module, x: torch.Tensor) -> DataFlow:
    with _probed(model) as probe:
        model(x)
    return DataFlow.model_validate(probe.report())


def _node_id(mermaid: str, label: str) -> str:
    match = re.search(rf'(\w+)\["{re.escape(label)}', mermaid)
    assert match, f"no node labelled {label!r} in\n{mermaid}"
    return match.group(1)


def _sources_of(mermaid: str, target: str) -> set[str]:
    return set(re.findall(rf"^\s*(\w+) -->(?:\|[^|]*\|)? {target}$", mermaid, re.M))


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Linear(8, 16)
        self.head = nn.Linear(16, 4)
        self.aux_head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.relu(self.trunk(x))
        return self.head(h), self.aux_head(h)


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(8)
        self.mlp = nn.Sequential(nn.Linear(8, 32), nn.GELU(), nn.Linear(32, 8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


class Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-2, -1) / 4.0, dim=-1)
        return self.proj(att @ v)


class Block(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    def __init__(self, layers: int = 12, dim: int = 16, vocab: int = 50) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.h = nn.ModuleList(Block(dim) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def test_sibling_heads_are_branches_of_the_trunk_not_a_chain() -> None:
    mermaid = render_dataflow_mermaid(_flow(TwoHeads(), torch.randn(3, 8)))
    trunk = _node_id(mermaid, "trunk")
    head, aux = _node_id(mermaid, "head"), _node_id(mermaid, "aux_head")
    assert _sources_of(mermaid, head) == {trunk}
    assert _sources_of(mermaid, aux) == {trunk}
    assert _sources_of(mermaid, "out0") == {head, aux}  # a tuple of outputs: collected, not merged
    assert "merge" not in mermaid


def test_residual_add_is_drawn_as_a_merge_of_the_input_and_the_branch() -> None:
    flow = _flow(Residual(), torch.randn(2, 8))
    mermaid = render_dataflow_mermaid(flow)
    root = flow.calls[0]
    assert root.output_sources and root.external is True
    merge = _sources_of(mermaid, f"out{root.index}")
    assert len(merge) == 1
    assert _sources_of(mermaid, merge.pop()) == {f"in{root.index}", f"out{flow.calls[2].index}"}
    table = render_dataflow_markdown(flow)
    assert "| input |" in table.splitlines()[2]
    assert re.search(r"`Residual.mlp` \| Sequential \| norm \|", table)


def test_twelve_blocks_collapse_to_one_expanded_block_within_the_size_caps() -> None:
    flow = _flow(TinyGPT(), torch.randint(0, 50, (2, 6)))
    assert len(flow.calls) > TABLE_MAX_ROWS  # the raw map is too long to read as a table
    table = render_dataflow_markdown(flow)
    mermaid = render_dataflow_mermaid(flow)
    assert "Block × 12" in table and "Block × 12" in mermaid
    assert "TinyGPT.h.0 … 11 (chained)" in table
    assert len(table.splitlines()) <= TABLE_MAX_ROWS + 3
    assert "more calls in the JSON report" in table
    node_lines = [line for line in mermaid.splitlines() if re.match(r"\s*\w+(\[|\(\(|\(\[)", line)]
    assert len(node_lines) <= MERMAID_MAX_NODES
    assert mermaid.count("subgraph") >= 1  # the first block is drawn inside
    assert "h.1[" not in mermaid  # ... and only the first


@pytest.mark.parametrize("name", ['a"b', "x<script>", "l|r`c", "new\nline"])
def test_hostile_module_names_are_escaped_in_both_renderings(name: str) -> None:
    model = nn.ModuleDict({name: nn.Linear(2, 2)})
    with _probed(model) as probe:
        model[name](torch.randn(1, 2))
    flow = DataFlow.model_validate(probe.report())
    table, mermaid = render_dataflow_markdown(flow), render_dataflow_mermaid(flow)
    assert "<script>" not in table and "<script>" not in mermaid
    assert "\n" not in flow.calls[0].module or "new\nline" not in table
    assert all(line.count('"') % 2 == 0 for line in mermaid.splitlines())


def test_an_old_document_without_parents_still_renders_by_depth() -> None:
    flow = _flow(Residual(), torch.randn(2, 8))
    legacy = DataFlow.model_validate(
        {
            "calls": [
                c.model_dump(
                    exclude={"parent", "sources", "output_sources", "output_external", "end"}
                )
                for c in flow.calls
            ]
        }
    )
    assert "Residual.mlp" in render_dataflow_markdown(legacy)
    assert render_dataflow_mermaid(legacy).startswith("flowchart TD")


class CastsItsWeight(nn.Module):
    """Runs on any input dtype: its float32 weight is cast to the input's."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.to(x.dtype)


@pytest.mark.parametrize("autocast", [False, True])
def test_a_cpu_autocast_region_is_not_dtype_mixing(autocast: bool) -> None:
    """bf16 inputs against float32 weights are what CPU autocast does (`torch.
    is_autocast_enabled()` without a device type answers for CUDA only); outside autocast the
    same call is a mix."""
    model = nn.Sequential(nn.Linear(8, 16), CastsItsWeight())
    x = torch.randn(2, 8)
    with _probed(model) as probe:
        if autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                model(x)
        else:
            model[1](x.new_ones(2, 16, dtype=torch.bfloat16))
    mixing = probe.dtype_mixing()
    if autocast:
        assert probe.calls and all(c["autocast"] for c in probe.calls)
        assert mixing == []
    else:
        assert [(m["type"], "vs parameters" in m["reason"]) for m in mixing] == [
            ("CastsItsWeight", True)
        ]


class _Dynamics(nn.Module):
    """The function an ODE solver integrates: `(t, y)`, its time cast to the state's dtype."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 2)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y) * t.to(y.dtype)


class _Solver(nn.Module):
    """torchdiffeq's wrapper: the time stays float64, the state float32."""

    def __init__(self) -> None:
        super().__init__()
        self.func = _Dynamics()

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        for _ in range(3):
            y = y + self.func(t, y)
        return y


def test_a_float64_scalar_beside_float32_inputs_is_no_dtype_mixing() -> None:
    solver = _Solver()
    with _probed(solver) as probe:
        solver(torch.tensor(0.5, dtype=torch.float64), torch.randn(4, 2))
    assert probe.calls and probe.dtype_mixing() == []


def test_a_module_mixing_dtypes_on_every_call_is_one_entry() -> None:
    solver = _Solver()
    with _probed(solver) as probe:
        solver(torch.full((4, 1), 0.5, dtype=torch.float64), torch.randn(4, 2))
    assert [m["module"] for m in probe.dtype_mixing()] == ["_Solver", "_Solver.func"]


class CharStep(nn.Module):
    """A character model called once per time step, its hidden state carried between calls."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Embedding(20, 8)
        self.rnn = nn.GRU(8, 8)
        self.decoder = nn.Linear(8, 20)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out, h = self.rnn(self.encoder(x).unsqueeze(0), h)
        return self.decoder(out.squeeze(0)), h


class CellLoop(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.cell = nn.GRUCell(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.shape[0], 4)
        for t in range(x.shape[1]):
            h = self.cell(x[:, t], h)
        return h


def test_a_model_called_once_per_time_step_is_one_row_and_one_drawing() -> None:
    model = CharStep()
    tokens, h = torch.randint(0, 20, (4, 20)), torch.zeros(1, 4, 8)
    with _probed(model) as probe:
        for t in range(20):
            _, h = model(tokens[:, t], h)
    flow = DataFlow.model_validate(probe.report())
    table, mermaid = render_dataflow_markdown(flow), render_dataflow_mermaid(flow)
    assert "| `CharStep` | CharStep × 20 |" in table, table
    assert table.count("`CharStep.rnn`") == 1  # the first call expanded, once
    assert mermaid.count("CharStep × 20") == 1 and mermaid.count('["rnn<br/>') == 1


def test_one_child_called_in_a_loop_is_named_once() -> None:
    table = render_dataflow_markdown(_flow(CellLoop(), torch.randn(2, 6, 4)))
    assert "GRUCell × 6" in table
    assert "`CellLoop.cell (chained)`" in table, table
