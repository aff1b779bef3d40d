"""factory-keyword-on-op: `device=`/`dtype=` given to a torch operation that takes neither."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

# Operations that take no `device=` (their signatures in torch 2.13: builtins' schemas,
# Python functions' parameters); a keyword the newest release refuses was never taken.
_TORCH = frozenset(
    {
    "abs", "allclose", "argmax", "argmin", "argsort", "bernoulli", "bmm", "bucketize", "cat",
    "cdist", "chunk", "clamp", "cumsum", "diag", "exp", "flatten", "flip", "gather", "histc",
    "index_select", "isnan", "lerp", "log", "log_softmax", "masked_select", "matmul", "mean",
    "mm", "multinomial", "nonzero", "norm", "outer", "repeat_interleave", "roll",
    "searchsorted", "sigmoid", "softmax", "sort", "split", "sqrt", "squeeze", "stack", "sum",
    "topk", "transpose", "tril", "triu", "unsqueeze", "where",
    }
)  # fmt: skip
_FUNCTIONAL = frozenset(
    {
    "affine_grid", "avg_pool2d", "batch_norm", "binary_cross_entropy",
    "binary_cross_entropy_with_logits", "conv1d", "conv2d", "cosine_similarity",
    "cross_entropy", "dropout", "embedding", "fold", "gelu", "grid_sample", "interpolate",
    "kl_div", "l1_loss", "layer_norm", "linear", "log_softmax", "mse_loss", "nll_loss",
    "normalize", "one_hot", "pad", "pixel_shuffle", "relu", "scaled_dot_product_attention",
    "sigmoid", "smooth_l1_loss", "softmax", "tanh", "unfold",
    }
)  # fmt: skip
# of those, the ones that do take `dtype=` (the output's, for reductions and softmaxes)
_TAKE_DTYPE = frozenset(
    {"torch.cumsum", "torch.log_softmax", "torch.mean", "torch.norm", "torch.softmax",
     "torch.sum", "torch.nn.functional.log_softmax", "torch.nn.functional.softmax"}
)  # fmt: skip
_OPERATIONS = frozenset(
    {*(f"torch.{n}" for n in _TORCH), *(f"torch.nn.functional.{n}" for n in _FUNCTIONAL)}
)


class FactoryKeywordOnOp(Rule):
    """Detects `device=` or `dtype=` given to a torch operation that takes neither, as a
    factory would (`torch.zeros(..., device=..., dtype=...)`): `F.one_hot(target,
    num_classes=c, device=x.device, dtype=x.dtype)`, `torch.cat(parts, dim=1,
    device=device)`, `torch.argmax(scores, dim=-1, dtype=torch.long)`.

    Why it matters: only tensor factories (and a few reductions and softmaxes, for the
    output's `dtype`) take these keywords; an operation's Python binding refuses an unknown
    keyword with a TypeError on its first call, so the code path has never run: a loss
    module, an evaluation or an option that no test exercised. The intended conversion is
    `.to(device=..., dtype=...)` on the result. ThilinaRajapakse/simpletransformers fixed
    exactly this in its dice and Tversky losses (`e4b59fd`: `F.one_hot(target,
    num_classes=..., device=..., dtype=...)` -> `F.one_hot(...).to(device).type(dtype)`).

    Not reported: factories (`torch.zeros`, `torch.arange`, `torch.tensor`, `*_like`),
    `dtype=` where the operation takes it (`torch.sum`, `F.softmax`, `torch.cumsum`), tensor
    methods, and operations outside the table (read from torch's own signatures).

    Example:
        target_one_hot = F.one_hot(target, num_classes=input.shape[1],
                                   device=input.device, dtype=input.dtype)

    Fix: convert the result: `F.one_hot(target, num_classes=input.shape[1]).to(input.device,
    input.dtype)`.
    """

    id = "factory-keyword-on-op"
    point = 1
    severity = Severity.HIGH
    title = "device=/dtype= given to an operation that takes neither"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    call_names: ClassVar[frozenset[str]] = _TORCH | _FUNCTIONAL
    triggers = Triggers(("device=", "dtype="))

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        qualified = ctx.call_qualname(node)
        if qualified not in _OPERATIONS:
            return
        refused = [
            k.arg
            for k in node.keywords
            if k.arg == "device" or (k.arg == "dtype" and qualified not in _TAKE_DTYPE)
        ]
        if not refused:
            return
        shown = " and ".join(f"`{name}=`" for name in refused)
        ctx.report(
            self,
            node,
            f"`{qualified}` takes no {shown}: only tensor factories do, so this call raises "
            "a TypeError the first time it runs. Convert the result instead: "
            "`.to(device, dtype)`.",
        )
