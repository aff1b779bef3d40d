"""dim-not-multiple-of-64: a vocabulary or hidden size that leaves tensor-core tiles ragged."""

from __future__ import annotations

import ast
from collections.abc import Callable
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of
from torchdoctor.agent.checks.patterns import nn_layer
from torchdoctor.agent.models import Severity

MULTIPLE = 64
_HIDDEN = frozenset({"n_embd", "hidden_size", "d_model", "embed_dim", "hidden_dim", "n_embed"})
_MIN_VOCAB, _MIN_HIDDEN = 1000, 256


def size_kind(name: str) -> str:
    """'vocabulary', 'hidden size' or '' for a bound name (`config.vocab_size` -> vocabulary)."""
    last = name.rsplit(".", 1)[-1].lower()
    if "vocab" in last:
        return "vocabulary"
    return "hidden size" if last in _HIDDEN else ""


def bindings(
    ctx: ModuleContext, wanted: Callable[[str], bool]
) -> list[tuple[ast.AST, str, ast.expr | None]]:
    """(node, name, value) for every value bound to a `wanted` name, attribute, keyword or
    dict key."""
    found: list[tuple[ast.AST, str, ast.expr | None]] = []
    kinds = (ast.Assign, ast.AnnAssign, ast.keyword, ast.Dict)
    for node in nodes_of(ctx, *kinds):
        pairs: list[tuple[str, ast.expr | None]] = []
        if isinstance(node, ast.Assign):
            # a subscript (`config_args["vocab_size"] = 50257`) fills a pretrained checkpoint's
            # config, whose shape is not the user's to change
            pairs = [
                (ast.unparse(t), node.value)
                for t in node.targets
                if isinstance(t, ast.Name | ast.Attribute)
            ]
        elif isinstance(node, ast.AnnAssign):
            pairs = [(ast.unparse(node.target), node.value)]
        elif isinstance(node, ast.keyword) and node.arg:
            pairs = [(node.arg, node.value)]
        elif isinstance(node, ast.Dict):
            pairs = [
                (k.value, v)
                for k, v in zip(node.keys, node.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            ]
        found += [(node, name, value) for name, value in pairs if wanted(name)]
    return found


def int_bindings(ctx: ModuleContext) -> list[tuple[ast.AST, str, int]]:
    """(node, name, value) for every int literal bound to a vocabulary or hidden size."""
    return [
        (node, name, value.value)
        for node, name, value in bindings(ctx, lambda name: bool(size_kind(name)))
        if isinstance(value, ast.Constant) and type(value.value) is int
    ]


class DimNotMultipleOf64(Rule):
    """Detects, in a module that builds `nn.Embedding` or `nn.Linear` layers, a vocabulary size
    (a name with `vocab` in it, >= 1000) or a hidden size (`n_embd`, `hidden_size`,
    `d_model`, `embed_dim`, >= 256) set to a literal that is not a multiple of 64.

    Why it matters: matrix multiplies run on tensor cores in tiles; a dimension that is not a
    multiple of 64 leaves a ragged last tile (and often a slower kernel) in the embedding, the
    output projection and its gradient, the largest matmul of a language model. GPT-2's
    50257 padded to 50304 is the classic case.

    Example:
        config = GPTConfig(vocab_size=50257, n_embd=768)

    Fix: needs a human: pad to the next multiple of 64. The weights' shapes change, so
    checkpoints (and pretrained weights) load only by copying the real rows, and the extra
    logits must be masked or sliced off when sampling.
    """

    id = "dim-not-multiple-of-64"
    point = 8
    severity = Severity.LOW
    title = "Vocabulary or hidden size not a multiple of 64"
    items: ClassVar[tuple[str, ...]] = ("8.1",)
    tier = "opt-in"

    def applies(self, ctx: ModuleContext) -> bool:
        return any(
            nn_layer(ctx, call) in ("Embedding", "Linear") for call in nodes_of(ctx, ast.Call)
        )

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        for node, name, value in int_bindings(ctx):
            kind = size_kind(name)
            smallest = _MIN_VOCAB if kind == "vocabulary" else _MIN_HIDDEN
            if value < smallest or value % MULTIPLE == 0:
                continue
            padded = -(-value // MULTIPLE) * MULTIPLE
            ctx.report(
                self,
                node,
                f"{kind} {name} = {value} is not a multiple of {MULTIPLE}: padded to {padded} "
                "the embedding and output matmuls run on whole tensor-core tiles. Needs a "
                f"human: the weights become [{padded}, ...], so checkpoints and pretrained "
                f"weights of {value} rows load only by copying those rows, and the "
                f"{padded - value} extra logits must be masked (or sliced off) when sampling",
                data={"name": name, "value": value, "padded": padded},
            )
