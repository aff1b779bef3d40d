"""manual-attention: attention written as softmax(q @ k^T) @ v instead of the fused kernel."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks import einsum_attention as eq
from torchdoctor.agent.checks.analysis.defuse import identifier
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_SOFTMAX = frozenset({"torch.softmax", "torch.nn.functional.softmax", "torch.special.softmax"})


def _ints(args: list[ast.expr]) -> list[int | None]:
    dims: list[int | None] = []
    for arg in args:
        sign = 1
        if isinstance(arg, ast.UnaryOp) and isinstance(arg.op, ast.USub):
            arg, sign = arg.operand, -1
        value = arg.value if isinstance(arg, ast.Constant) else None
        dims.append(sign * value if isinstance(value, int) else None)
    return dims


def _is_key_transpose(node: ast.AST, three_d: bool = False) -> bool:
    """`k.transpose(-2, -1)` (either order), `torch.transpose(k, -2, -1)`, `k.mT`,
    `k.transpose(2, 3)` or `k.permute(0, 1, 3, 2)` (4-D heads), `k.transpose(1, 2)` or
    `k.permute(0, 2, 1)` when the product is 3-D (`three_d`: torch.bmm)."""
    if isinstance(node, ast.Attribute) and node.attr == "mT":
        return True
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    args = list(node.args)
    if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
        args = args[1:]  # torch.transpose(k, a, b)
    if node.func.attr == "permute":
        return _ints(args) == [0, 1, 3, 2] or (three_d and _ints(args) == [0, 2, 1])
    if node.func.attr != "transpose" or len(args) != 2:
        return False
    dims = set(_ints(args))
    return dims in ({-2, -1}, {2, 3}) or (three_d and dims == {1, 2})


def _einsum(node: ast.AST) -> tuple[list[eq.Axes], eq.Axes] | None:
    """The equation of `torch.einsum(eq, a, b)` / `einops.einsum(a, b, eq)` with two operands."""
    if not (isinstance(node, ast.Call) and identifier(node.func) == "einsum" and node.args):
        return None
    first, last = node.args[0], node.args[-1]
    words = not (isinstance(first, ast.Constant) and isinstance(first.value, str))
    equation = last if words else first
    if not (isinstance(equation, ast.Constant) and isinstance(equation.value, str)):
        return None
    return eq.parse(equation.value, words)


def _is_scores(node: ast.AST) -> bool:
    """`q @ k^T`, `torch.matmul(q, k^T)`, `torch.bmm(q, k^T)`, `torch.baddbmm(x, q, k^T, ...)`
    or an einsum contracting q and k over their last axis into (..., i, j), or over their
    channels when both are laid out channels first (`"bct,bcs->bts"`)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
        return _is_key_transpose(node.right)
    if _is_matmul_call(node):
        three_d = node.func.attr == "bmm"  # type: ignore[attr-defined]
        return _is_key_transpose(node.args[1], three_d)  # type: ignore[attr-defined]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "baddbmm"
        and len(node.args) == 3
    ):
        return _is_key_transpose(node.args[2], three_d=True)
    parsed = _einsum(node)  # in any layout: the codemod says when it needs a transpose first
    return parsed is not None and (
        eq.contracts_dim(*parsed) or eq.channels_first_scores_rank(*parsed) is not None
    )


def _is_scores_through_name(ctx: ModuleContext, node: ast.AST) -> bool:
    """`q @ k_t` or `torch.matmul(q, k_t)` where `k_t = k.transpose(2, 3)` (or
    `k = k.permute(0, 1, 3, 2)`) was bound first."""
    right = _right_operand(node)
    return isinstance(right, ast.Name) and any(
        _is_key_transpose(d) for d in ctx.flow.definitions(right)
    )


def _is_flip(node: ast.AST) -> bool:
    """`x.permute(0, 2, 1)` or `x.transpose(1, 2)`: a 3-D tensor's last two axes swapped."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
        return False
    dims = _ints(list(node.args))
    if node.func.attr == "permute":
        return dims == [0, 2, 1]
    return node.func.attr == "transpose" and set(dims) == {1, 2} and len(dims) == 2


def _to_tokens_last(node: ast.AST) -> bool:
    """A channels-first query turned to (b, tokens, dim): flipped (`x.permute(0, 2, 1)`), or
    a feature map's channels moved last then flattened (`x.permute(0, 2, 3, 1).view(B, H * W,
    C)`, DDPM UNets)."""
    if _is_flip(node):
        return True
    if not (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("view", "reshape")
        and len(node.args) == 3
    ):
        return False
    moved = node.func.value
    return (
        isinstance(moved, ast.Call)
        and isinstance(moved.func, ast.Attribute)
        and moved.func.attr == "permute"
        and _ints(list(moved.args)) == [0, 2, 3, 1]
    )


def _is_channels_first_scores(ctx: ModuleContext, node: ast.AST) -> bool:
    """`torch.bmm(q, k)` with the query turned to (b, tokens, dim) and the key left
    (b, dim, tokens): the spatial attention of VAE/VQGAN and DDPM blocks."""
    if not (isinstance(node, ast.Call) and _is_matmul_call(node)):
        return False
    if not (isinstance(node.func, ast.Attribute) and node.func.attr == "bmm"):
        return False
    query = node.args[0]
    if isinstance(query, ast.Name):
        return any(_to_tokens_last(d) for d in ctx.flow.definitions(query))
    return _to_tokens_last(query)


_RANK_KEEPING = frozenset(
    {"contiguous", "transpose", "float", "half", "bfloat16", "to", "type_as", "clone", "detach"}
)


def _is_folded_scores(ctx: ModuleContext, node: ast.AST) -> bool:
    """`q @ k.transpose(1, 2)` / `torch.matmul(q, k.permute(0, 2, 1))` where q and k were
    last given three axes by a reshape (heads folded into the batch: `x.reshape(b * h, n, d)`,
    or a method of the module returning one, as rtdl's `self._reshape(q)`). On 4-D tensors the
    same transpose swaps heads and tokens: not a key transpose, so not reported."""
    right = _right_operand(node)
    if right is None or not _is_flip(right):
        return False
    key = right.func.value  # type: ignore[attr-defined]
    query = node.left if isinstance(node, ast.BinOp) else node.args[0]  # type: ignore[attr-defined]
    return all(
        isinstance(name, ast.Name)
        and (found := ctx.flow.live_definitions(name))
        and all(_three_axes(ctx, value) for value in found)
        for name in (query, key)
    )


def _three_axes(ctx: ModuleContext, value: ast.AST, follow: bool = True) -> bool:
    """`x.view(a, b, c)` / `x.reshape((a, b, c))` / `x.permute(0, 2, 1)`, maybe followed by
    `.contiguous()` or a cast; `self.m(x)` with a method `m` of the module returning one."""
    while (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in _RANK_KEEPING
    ):
        value = value.func.value
    if not (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)):
        return False
    args = value.args
    if value.keywords or any(isinstance(a, ast.Starred) for a in args):
        return False
    if value.func.attr in ("view", "reshape", "permute"):
        if len(args) == 1 and isinstance(args[0], ast.Tuple | ast.List):
            args = args[0].elts
        return len(args) == 3 and not any(isinstance(a, ast.Starred) for a in args)
    receiver = value.func.value
    if not (follow and isinstance(receiver, ast.Name) and receiver.id == "self"):
        return False
    methods = [
        f
        for f in ast.walk(ctx.tree)
        if isinstance(f, ast.FunctionDef) and f.name == value.func.attr and f.body
    ]
    return bool(methods) and all(
        isinstance(f.body[-1], ast.Return)
        and f.body[-1].value is not None
        and _three_axes(ctx, f.body[-1].value, follow=False)
        for f in methods
    )


def _dropout_of_names(value: ast.AST, names: set[str]) -> bool:
    """`self.dropout(w)` / `self.attn_drop(w)` / `F.dropout(w, p, training)` of a name in
    `names`: a dropout, named so, of the weights."""
    if not (isinstance(value, ast.Call) and value.args and isinstance(value.args[0], ast.Name)):
        return False
    func = value.func
    called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return "drop" in called.lower() and value.args[0].id in names


def _is_matmul_call(node: ast.AST) -> bool:
    """`torch.matmul(a, b)` or `torch.bmm(a, b)`."""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("matmul", "bmm")
        and len(node.args) == 2
    )


def _unflipped(node: ast.AST) -> str | None:
    """`w`, `w.permute(0, 2, 1)`, `w.transpose(-2, -1)`, `w.mT` -> 'w'."""
    if _is_flip(node) or _is_key_transpose(node):
        node = node.func.value if isinstance(node, ast.Call) else node  # type: ignore[attr-defined]
        if isinstance(node, ast.Attribute) and node.attr == "mT":
            node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _right_operand(node: ast.AST) -> ast.AST | None:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
        return node.right
    if isinstance(node, ast.Call) and _is_matmul_call(node):
        return node.args[1]
    return None


def _weights_operand(node: ast.AST) -> ast.AST | None:
    """The weights side of `w @ v`, `torch.matmul(w, v)`, `torch.bmm(w, v)` or an einsum
    `(..., i, j) x (..., j, d) -> (..., i, d)`, its operands also handed over as one list or
    tuple (`torch.einsum("bhlt,bhtv->bhlv", [attn, v])`, microsoft/CvT)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.MatMult):
        return node.left
    if isinstance(node, ast.Call) and _is_matmul_call(node):
        return node.args[0]
    parsed = _einsum(node)
    if parsed is not None and eq.contracts_keys(*parsed):
        assert isinstance(node, ast.Call)
        operands = node.args[1:] if isinstance(node.args[0], ast.Constant) else node.args[:-1]
        if len(operands) == 1 and isinstance(operands[0], ast.List | ast.Tuple):
            operands = operands[0].elts
        return operands[0] if operands else None
    return None


def _wraps(value: ast.AST, call: ast.Call) -> bool:
    """`value` is `call`, a method chain on it (`.type_as(q)`) or a one-argument call of it
    (`self.dropout(softmax(...))`)."""
    while value is not call:
        if (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and (_wraps(value.func.value, call))
        ):
            return True
        if isinstance(value, ast.Call) and len(value.args) == 1:
            value = value.args[0]
            continue
        return False
    return True


_FUSED_KERNELS = frozenset(
    {"scaled_dot_product_attention", "flash_attn_func", "memory_efficient_attention"}
)


def _of_magnitudes(source: ast.expr) -> bool:
    """`softmax(abs(scores))`: weights over the scores' magnitudes (complex scores in the
    frequency domain: FEDformer's Fourier and wavelet correlations), which no fused kernel
    computes."""
    if not isinstance(source, ast.Call):
        return False
    func = source.func  # `abs(s)`, `s.abs()`, `torch.abs(s)`
    return (isinstance(func, ast.Name) and func.id == "abs") or (
        isinstance(func, ast.Attribute) and func.attr == "abs"
    )


def _fallback_of_fused_branch(ctx: ModuleContext, node: ast.AST) -> bool:
    """The softmax sits in one branch of an `if` whose other branch calls a fused kernel."""
    child = node
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            return False
        if isinstance(anc, ast.If | ast.IfExp) and child is not anc.test:
            body = anc.body if isinstance(anc.body, list) else [anc.body]
            orelse = anc.orelse if isinstance(anc.orelse, list) else [anc.orelse]
            other = orelse if any(child is b for b in body) else body
            if any(
                isinstance(n, ast.Call) and identifier(n.func) in _FUSED_KERNELS
                for stmt in other
                for n in walk_tree(stmt)
            ):
                return True
        child = anc
    return False


def _softmax_modules(ctx: ModuleContext) -> set[str]:
    """Attributes assigned an `nn.Softmax(...)` module (`self.attend = nn.Softmax(dim=-1)`)."""
    return {
        target.attr
        for node in ctx.by_type.get(ast.Assign, ())
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Attribute | ast.Name)
        and (getattr(node.value.func, "attr", None) or getattr(node.value.func, "id", ""))
        == "Softmax"
        for target in node.targets
        if isinstance(target, ast.Attribute)
    }


def _inline_softmax_module(ctx: ModuleContext, call: ast.Call) -> bool:
    """`nn.Softmax(dim=-1)(w)`: a softmax module built and applied in one expression (the
    OpenAI GPT ports' `_attn`)."""
    built = call.func
    return (
        isinstance(built, ast.Call)
        and (ctx.call_qualname(built) or "").endswith("nn.Softmax")
        and len(call.args) == 1
    )


class ManualAttention(Rule):
    """Detects attention computed by hand: a softmax over `q @ k.transpose(-2, -1)` (scaled,
    usually masked) whose probabilities are multiplied by the values (`probs @ v`).

    Why it matters: the hand-written form materialises the T x T score matrix in memory,
    launches several kernels (matmul, scale, mask, softmax, dropout, matmul) and cannot use the
    flash or memory-efficient kernels; `F.scaled_dot_product_attention` computes the same result
    in one fused kernel, several times faster on recent GPUs and with memory linear in T.
    Attention whose weights are returned or reused is not reported (the fused kernel does not
    give them back), nor the fallback branch of an `if` whose other branch calls the fused
    kernel (timm's `if self.fused_attn: ... else: ...`). `q @ k.transpose(1, 2)` is reported
    when a reshape made q and k 3-D (heads folded into the batch), not on 4-D tensors, where it
    swaps heads and tokens; weights dropped under a new name (`dropped = self.dropout(attn)`)
    still feed `@ v`.

    Example:
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
        att = att.masked_fill(mask == 0, float("-inf"))
        y = F.softmax(att, dim=-1) @ v

    Fix: `y = F.scaled_dot_product_attention(q, k, v, is_causal=True)` (or `attn_mask=`), which
    `torchdoctor audit --fix` proposes for the causal case and verifies on a run.
    """

    id = "manual-attention"
    point = 6
    severity = Severity.LOW
    title = "Hand-written attention instead of scaled_dot_product_attention"
    items: ClassVar[tuple[str, ...]] = ("6.2",)
    triggers = Triggers(("oftmax",))

    def __init__(self) -> None:
        self._modules: set[str] = set()

    def applies(self, ctx: ModuleContext) -> bool:
        return "oftmax" in ctx.source and any(
            product in ctx.source for product in ("@", "matmul", "bmm", "einsum")
        )

    def finish(self, ctx: ModuleContext) -> None:
        """Starts from the module's softmax calls (the type index), so a large module pays
        only for the functions that hold one."""
        if not self.applies(ctx):
            return
        self._modules = _softmax_modules(ctx) if "Softmax" in ctx.source else set()
        by_function: dict[ast.FunctionDef | ast.AsyncFunctionDef, list[ast.Call]] = {}
        names = {"softmax", *self._modules}
        for node in ctx.flow.nodes(ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if (name in names and self._is_softmax(ctx, node)) or _inline_softmax_module(ctx, node):
                function = ctx.enclosing_function(node)
                if function is not None:
                    by_function.setdefault(function, []).append(node)
        for function, softmaxes in by_function.items():
            self._check_function(ctx, function, softmaxes)

    def _check_function(
        self,
        ctx: ModuleContext,
        function: ast.FunctionDef | ast.AsyncFunctionDef,
        softmaxes: list[ast.Call],
    ) -> None:
        nodes = list(walk_scope(function.body))
        for node in softmaxes:
            source = self._softmax_source(ctx, node)
            if source is None or not ctx.flow.derives_from(
                source,
                lambda n: (
                    _is_scores(n)
                    or _is_scores_through_name(ctx, n)
                    or _is_channels_first_scores(ctx, n)
                    or _is_folded_scores(ctx, n)
                ),
            ):
                continue
            if _fallback_of_fused_branch(ctx, node) or _of_magnitudes(source):
                continue
            if self._feeds_value_product(ctx, node, nodes) and not self._weights_escape(
                ctx, node, nodes
            ):
                ctx.report(
                    self,
                    node,
                    "attention computed by hand (softmax over q @ k^T, then @ v): one fused "
                    "scaled_dot_product_attention call is faster and never stores the T x T "
                    "score matrix",
                )

    def _softmax_source(self, ctx: ModuleContext, call: ast.Call) -> ast.expr | None:
        """What the softmax normalises: `F.softmax(x, -1)` / `F.softmax(input=x, dim=-1)` /
        `self.attend(x)` -> x; `x.softmax(-1)` -> x (its argument is the dim)."""
        keyword = next((k.value for k in call.keywords if k.arg == "input"), None)
        if keyword is not None:
            return keyword
        method = (
            isinstance(call.func, ast.Attribute)
            and call.func.attr == "softmax"
            and ctx.call_qualname(call) is None
            and not (isinstance(call.func.value, ast.Name) and call.func.value.id == "self")
        )
        if method:
            assert isinstance(call.func, ast.Attribute)
            return call.func.value
        return call.args[0] if call.args else None

    def _is_softmax(self, ctx: ModuleContext, call: ast.Call) -> bool:
        if ctx.call_qualname(call) in _SOFTMAX:
            return True
        if (
            isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "self"
            and call.func.attr in self._modules
        ):
            return True
        return (
            isinstance(call.func, ast.Attribute)
            and call.func.attr == "softmax"
            and (ctx.call_qualname(call) is None)
        )

    @staticmethod
    def _probability_names(call: ast.Call, nodes: list[ast.AST]) -> set[str]:
        """Names the softmax result is assigned to, and the names its dropout is bound to
        (`dropped = self.dropout(attn)`, then `dropped @ v`)."""
        names: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Assign) and _wraps(node.value, call):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        for node in nodes:
            if isinstance(node, ast.Assign) and _dropout_of_names(node.value, names):
                names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        return names

    def _feeds_value_product(
        self, ctx: ModuleContext, call: ast.Call, nodes: list[ast.AST]
    ) -> bool:
        parent = ctx.parents.get(call)
        if parent is not None and _weights_operand(parent) is call:
            return True
        names = self._probability_names(call, nodes)
        for node in nodes:
            left = _weights_operand(node)
            # `torch.matmul(self.dropout(w), v)`: the weights through a one-argument call
            if isinstance(left, ast.Call) and len(left.args) == 1 and not left.keywords:
                left = left.args[0]
            if isinstance(left, ast.Name) and left.id in names:
                return True
            # `torch.bmm(v, w.permute(0, 2, 1))`: the values on the left of flipped weights
            right = _right_operand(node)
            if right is not None and _unflipped(right) in names:
                return True
        return False

    def _weights_escape(self, ctx: ModuleContext, call: ast.Call, nodes: list[ast.AST]) -> bool:
        """The attention weights are returned or stored (so the fused kernel cannot replace)."""
        names = self._probability_names(call, nodes)
        for node in nodes:
            if isinstance(node, ast.Return) and node.value is not None:
                returned = {n.id for n in walk_tree(node.value) if isinstance(n, ast.Name)}
                if returned & names and not any(
                    _weights_operand(b) is not None for b in walk_tree(node.value)
                ):
                    return True
                if isinstance(node.value, ast.Tuple) and any(
                    isinstance(e, ast.Name) and e.id in names for e in node.value.elts
                ):
                    return True
            if (
                isinstance(node, ast.Assign)
                and isinstance(node.targets[0], ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in names
            ):
                return True
        return False
