"""The data-flow model rules query: one `DataFlow` per module, composed of analyses with one
job each (`torchdoctor.agent.checks.analysis`):

- `defuse`: def-use tables (which expressions a name, `self.x` or a local call may hold);
- `model_facts`: which values are models and losses, and whether autograd is off;
- `graph_origin`: is this tensor still attached to the autograd graph?
- `producers`: which calls produce this value through shape-preserving steps?
- `held_out`: does this value derive from the test/validation split; what do splits divide?
- `provenance`: did `torch.save` write this path from tensors or from a pickled module?
- `reachability`: which functions reach `eval()`/`train()` through local calls?
- `accumulation`: which accumulators keep graphs alive across iterations?

The helpers rules import (`kwarg`, `identifier`, ...) are re-exported here.
"""

from __future__ import annotations

from torchdoctor.agent.checks.analysis.accumulation import Accumulation, Accumulations
from torchdoctor.agent.checks.analysis.defuse import (
    FunctionNode,
    GraphOrigin,
    ScopeNode,
    first_argument,
    identifier,
    kwarg,
    module_level,
)
from torchdoctor.agent.checks.analysis.held_out import (
    SPLIT_FUNCTIONS,
    HeldOut,
    held_out_name_kind,
)
from torchdoctor.agent.checks.analysis.producers import Producers
from torchdoctor.agent.checks.analysis.provenance import SavedFiles, SavedKind
from torchdoctor.agent.checks.analysis.reachability import MethodReach

__all__ = [
    "SPLIT_FUNCTIONS",
    "Accumulation",
    "DataFlow",
    "FunctionNode",
    "GraphOrigin",
    "SavedKind",
    "ScopeNode",
    "first_argument",
    "held_out_name_kind",
    "identifier",
    "kwarg",
    "module_level",
]


class DataFlow(Accumulations, Producers, HeldOut, SavedFiles, MethodReach):
    """The module's data-flow model: every question a rule asks of a value, one memo each."""
