"""output-projection-unaligned: a vocabulary projection whose row count is not a multiple of 64."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import nodes_of
from torchdoctor.agent.checks.patterns import nn_layer, self_attribute, uses_cuda
from torchdoctor.agent.checks.rules.dim_not_multiple_of_64 import MULTIPLE, bindings
from torchdoctor.agent.models import Severity

_MIN_ROWS = 1000
_ALIGNMENT = 8
"""Rows that are not a multiple of 8 (16 bytes of bf16) leave cuBLAS only its unaligned
kernels; a multiple of 8 that is not one of 64 (ImageNet's 1000 classes) costs a ragged tile."""
_TOKEN_COUNTS = frozenset({"ntoken", "ntokens", "n_tokens", "num_tokens", "n_vocab"})


def _vocabulary_name(name: str) -> bool:
    last = name.rsplit(".", 1)[-1].lower()
    return "vocab" in last or last in _TOKEN_COUNTS


def _unaligned(rows: int) -> bool:
    return rows >= _MIN_ROWS and rows % _ALIGNMENT != 0


def _out_features(call: ast.Call) -> ast.expr | None:
    if len(call.args) >= 2:
        return call.args[1]
    return next((k.value for k in call.keywords if k.arg == "out_features"), None)


def _parameter_default(ctx: ModuleContext, node: ast.AST, name: str) -> int | None:
    """The int default of parameter `name` of the function around `node` (`vocab_size=5003`)."""
    function = ctx.enclosing_function(node)
    if function is None:
        return None
    args = function.args
    positional = [*args.posonlyargs, *args.args]
    with_defaults = positional[len(positional) - len(args.defaults) :]
    pairs = list(zip(with_defaults, args.defaults, strict=True))
    pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True) if d]
    for arg, default in pairs:
        if arg.arg == name and isinstance(default, ast.Constant) and type(default.value) is int:
            return default.value
    return None


def _rows(ctx: ModuleContext, layer: ast.Call, out: ast.expr) -> int | None:
    """The layer's output count when this module shows it unaligned: an int literal, or a
    vocabulary-named value (`config.vocab_size`, `ntoken`) that is a parameter of the
    constructor with such a default, or that the module binds only to such literals."""
    if isinstance(out, ast.Constant) and type(out.value) is int:
        return out.value if _unaligned(out.value) else None
    if not isinstance(out, ast.Name | ast.Attribute):
        return None
    name = ast.unparse(out)
    if not _vocabulary_name(name):
        return None
    if isinstance(out, ast.Name):
        default = _parameter_default(ctx, layer, out.id)
        if default is not None:
            return default if _unaligned(default) else None
    # every value the module gives that name must be a literal, and the real-sized ones
    # unaligned: a config built with `vocab_size=50304` or `vocab_size=num_vocab` elsewhere
    # may be the one trained; one under 1000 is a smoke-test config (`vocab_size=512`)
    last = name.rsplit(".", 1)[-1]
    values = [
        v for _, bound, v in bindings(ctx, _vocabulary_name) if bound.rsplit(".", 1)[-1] == last
    ]
    literals = [v.value for v in values if isinstance(v, ast.Constant) and type(v.value) is int]
    rows = [r for r in literals if r >= _MIN_ROWS]
    if len(literals) != len(values) or not rows or not all(_unaligned(r) for r in rows):
        return None
    return rows[0]


def _enclosing_class(ctx: ModuleContext, node: ast.AST) -> ast.ClassDef | None:
    return next((a for a in ctx.ancestors(node) if isinstance(a, ast.ClassDef)), None)


def _unaligned_layers(ctx: ModuleContext) -> dict[tuple[ast.ClassDef, str], int]:
    """(class, NAME) -> rows for each `self.NAME = nn.Linear(..., rows)` with unaligned rows."""
    layers: dict[tuple[ast.ClassDef, str], int] = {}
    for node in nodes_of(ctx, ast.Assign):
        assert isinstance(node, ast.Assign)
        if not isinstance(node.value, ast.Call) or nn_layer(ctx, node.value) != "Linear":
            continue
        out = _out_features(node.value)
        rows = _rows(ctx, node.value, out) if out is not None else None
        cls = _enclosing_class(ctx, node)
        if rows is None or cls is None:
            continue
        for target in node.targets:
            name = self_attribute(target)
            if name is not None:
                layers[(cls, name)] = rows
    return layers


class OutputProjectionUnaligned(Rule):
    """Detects, in a CUDA script, a model's `self.NAME = nn.Linear(hidden, vocab)` output
    projection whose vocabulary (a literal, or a `vocab`-named value the module binds) is
    >= 1000 and not a multiple of 8, called as `self.NAME(x)` in the same class.

    Why it matters: the projection onto the vocabulary is a language model's largest matmul.
    With an odd row count (GPT-2's 50257) cuBLAS falls back to unaligned kernels for it and
    its gradients: on an H100 one such kernel took 23% of a compiled GPT-2-small step. Padding
    the weight's rows with zeros at the call, then slicing the logits back, gives the same
    values on whole tensor-core tiles without changing any parameter or checkpoint shape.

    Not reported: row counts that are multiples of 8 (ImageNet's 1000 classes), sizes the
    module does not show (`len(tokenizer)`, an argument never bound to a literal) or also
    binds to an aligned or computed value (a config default of 50257 trained as
    `GPTConfig(vocab_size=50304)`), layers
    called from outside their class or with keywords, and scripts that never use CUDA.

    Example:
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)  # 50257
        ...
        return self.lm_head(self.ln_f(x))

    Fix: call the layer through a helper that pads its weight (and bias) to a multiple of
    64 rows and slices the output back to the vocabulary (`output-projection-unaligned`'s
    codemod). Padding the vocabulary itself (`dim-not-multiple-of-64`) gains a little more,
    but changes the checkpoint's shapes: that one needs a human.
    """

    id = "output-projection-unaligned"
    point = 6
    severity = Severity.LOW
    title = "Vocabulary projection runs on unaligned matmul kernels"
    items: ClassVar[tuple[str, ...]] = ("6.2",)
    tier = "opt-in"

    def finish(self, ctx: ModuleContext) -> None:
        if not uses_cuda(ctx):
            return
        layers = _unaligned_layers(ctx)
        if not layers:
            return
        for node in nodes_of(ctx, ast.Call):
            assert isinstance(node, ast.Call)
            name = self_attribute(node.func)
            if name is None or node.keywords or len(node.args) != 1:
                continue
            cls = _enclosing_class(ctx, node)
            rows = layers.get((cls, name)) if cls is not None else None
            if rows is None:
                continue
            padded = -(-rows // MULTIPLE) * MULTIPLE
            ctx.report(
                self,
                node,
                f"self.{name} projects onto {rows} outputs, not a multiple of {_ALIGNMENT}: "
                f"its matmul and gradients run on unaligned kernels. Padded with zero rows to "
                f"{padded} at the call and sliced back, the logits are the same and the "
                "parameters keep their shape",
                data={"layer": f"self.{name}", "rows": rows, "padded": padded},
            )
