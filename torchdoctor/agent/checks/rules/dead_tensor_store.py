"""dead-tensor-store: a computed tensor overwritten before anything reads it."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import walk_scope, walk_tree
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

_NOT_COMPUTE = frozenset(
    {"torch.load", "torch.save", "torch.manual_seed", "torch.device", "torch.no_grad"}
)
_BLOCKS = ("body", "orelse", "finalbody")
_NESTING = (
    ast.If,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.With,
    ast.AsyncWith,
    ast.Try,
    ast.TryStar,
    ast.AsyncFunctionDef,
)
"""The statements with a `_BLOCKS` field that `_blocks` descends into (not `def`/`class`)."""
_TENSOR_MODULES = frozenset(
    {"torch", "torch.nn.functional", "torch.linalg", "torch.fft", "torch.special"}
)

# Tensor methods whose result is a new value derived from the receiver (a prediction, a
# probability, a reduction): computing one and never reading it loses it.
_TENSOR_REDUCTIONS = frozenset(
    {"argmax", "argmin", "softmax", "log_softmax", "sigmoid", "topk", "logsumexp", "norm"}
)


# A name for one term of a training loss: `reg_loss`, `kl_loss`, `loss_mel` (not a loss
# function or criterion: `loss_fn`, `loss_func`).
_LOSS_TERM = re.compile(r"(^|_)loss$|^loss_(?!fn$|func$|function$|type$|name$)[a-z0-9]+$")


def _in_a_loop(ctx: ModuleContext, node: ast.AST, owner: ast.AST) -> bool:
    for anc in ctx.ancestors(node):
        if anc is owner:
            return False
        if isinstance(anc, ast.For | ast.AsyncFor | ast.While):
            return True
    return False


class DeadTensorStore(Rule):
    """Detects a tensor computation assigned to a name (`out = model(x)`, `h = torch.cat(...)`,
    `z = F.relu(y)`) that the next statements of the same block overwrite (`out = ...`) before
    any of them reads it; and a torch function or tensor reduction (`pred = out.argmax(1)`,
    `p = F.softmax(out, 1)`) assigned to a local that nothing in its function ever reads
    (the next line uses `out` where `pred` was meant), or arithmetic over tensor math never
    read (DDIM's noised input `x = x0 * a.sqrt() + e * (1 - a).sqrt()` with the model given
    `x0`), or the result of a local helper that only returns arithmetic over its arguments
    (DDPM's `perturbed_x = self.perturb_x(x, t, noise)`, the model then given `x`; not a
    helper with more statements, which may act). A value stored by the last statement
    of an `if` and overwritten after it before any read counts too (an `else:` dropped), and
    so does a constant-scaled reduction (`v_loss = 0.5 * err.mean()`), at a script's top
    level as in functions. In a function that back-propagates, a loss term (`reg_loss`,
    `kl_loss`, `loss_mel`) computed with its graph that nothing after it reads, outside any
    loop, is reported too: it never reaches the total (LightGCN's `stageOne` with `loss =
    loss + reg_loss` dropped).

    Why it matters: the first result is thrown away. Usually a line was meant to use it
    (`out = model(out)` written as `out = model(x)`, a residual or normalisation silently
    skipped) — the model trains, but not the architecture that was intended; at best the
    computation is wasted every step.

    Not reported: assignments whose value is not a tensor computation (a model call, a
    `torch.*`, `torch.nn.functional.*` or `torch.linalg.*` function; not a constructor, nor
    a factory of literal sizes such as a dummy input `torch.rand(1, 3, 224, 224)`); a
    read anywhere in between, including in a nested function or a condition; stores in
    different branches or blocks; `_`; module attributes (`self.x`). For a local never read:
    model calls (a warm-up, or a forward run for its hooks), functions that read `locals()`,
    names declared `global`/`nonlocal`, names starting with `_`, a line marked `# noqa: F841`
    (pyflakes' unused local: kept on purpose, an allocation a memory test holds).

    Example:
        x = self.norm(x)
        x = self.attn(h)

    Fix: use the value (`x = self.attn(x)`), or delete the line that computes it.
    """

    id = "dead-tensor-store"
    point = 4
    severity = Severity.MEDIUM
    title = "Computed tensor overwritten before use"
    items: ClassVar[tuple[str, ...]] = ("4.1",)

    def applies(self, ctx: ModuleContext) -> bool:
        return "torch" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        backpropagating: set[int] = set()  # functions that call `.backward()` themselves
        if "backward" in ctx.source and "loss" in ctx.source:
            backpropagating = {
                id(ctx.enclosing_function(call))
                for call in ctx.flow.calls_named(("backward",))
                if isinstance(call.func, ast.Attribute)
            }
        for owner in ctx.nodes_by_type().get(ast.FunctionDef, ()):
            assert isinstance(owner, ast.FunctionDef)
            blocks = _blocks(owner)
            for block in blocks:
                self._check_block(ctx, block)
            self._check_never_read(ctx, owner, blocks)
            if id(owner) in backpropagating:
                self._check_loss_term_unread(ctx, owner)
        for block in _blocks(ctx.tree):  # a script's top level (`if __name__ == "__main__":`)
            self._check_block(ctx, block)

    def _check_never_read(
        self, ctx: ModuleContext, owner: ast.FunctionDef, blocks: list[list[ast.stmt]]
    ) -> None:
        """The function's reads are collected only where a reduction is stored (few do)."""
        stored = [
            (stmt, name)
            for block in blocks
            for stmt in block
            if stmt.__class__ is ast.Assign  # what `_reduced_name` asks first, inlined
            and (name := _reduced_name(ctx, stmt)) is not None
            and not name.startswith("_")
        ]
        if not stored:
            return
        read: set[str] = set()
        for node in walk_tree(owner):
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
                read.add(node.id)
            elif isinstance(node, ast.Global | ast.Nonlocal):
                read.update(node.names)
        if "locals" in read or "vars" in read:
            return
        for stmt, name in stored:
            if name not in read and not _acknowledged_unused(ctx, stmt):
                ctx.report(
                    self,
                    stmt,
                    f"`{name}` is computed but nothing in `{owner.name}` reads it: the "
                    "statements after it use another value",
                )

    def _check_loss_term_unread(self, ctx: ModuleContext, owner: ast.FunctionDef) -> None:
        """In a function that back-propagates, a loss term (`reg_loss`, `loss_kl`) computed
        with its graph and read by nothing after it, outside any loop of the function: the
        term never reaches the total that is back-propagated (LightGCN's `stageOne` with
        `loss = loss + reg_loss` dropped after `reg_loss = reg_loss * self.weight_decay`)."""
        loads: dict[str, list[ast.Name]] = {}
        declared: set[str] = set()
        for node in walk_tree(owner):
            if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
                loads.setdefault(node.id, []).append(node)
            elif isinstance(node, ast.Global | ast.Nonlocal):
                declared.update(node.names)
        if "locals" in loads or "vars" in loads:
            return
        for stmt in walk_scope(owner.body):
            if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
                continue
            target = stmt.targets[0]
            if not isinstance(target, ast.Name) or target.id in declared:
                continue
            if not _LOSS_TERM.search(target.id):
                continue
            if _in_a_loop(ctx, stmt, owner) or isinstance(stmt.value, ast.Constant):
                continue
            end = stmt.end_lineno or stmt.lineno
            if any(n.lineno > end for n in loads.get(target.id, [])):
                continue
            if ctx.flow.graph_origin(stmt.value) is None:
                continue
            ctx.report(
                self,
                stmt,
                f"`{target.id}` is computed but nothing in `{owner.name}` reads it afterwards: "
                "this loss term never reaches what is back-propagated (left out of the "
                "total?)",
            )

    def _check_block(self, ctx: ModuleContext, block: list[ast.stmt]) -> None:
        last_store = _last_stores(block)
        for index, stmt in enumerate(block):
            if isinstance(stmt, ast.If):
                self._check_branch_tails(ctx, stmt, block, index + 1)
            target = stmt.targets[0] if isinstance(stmt, ast.Assign) else None
            if not isinstance(target, ast.Name) or last_store.get(target.id, -1) <= index:
                continue  # never stored again in this block: no need to ask what it computes
            name = _computed_name(ctx, stmt)
            if name is None:
                continue
            later = _overwritten_unread(ctx, block[index + 1 :], name)
            if later is not None and _effects_checked_between(ctx, stmt, block, index, later):
                continue
            if later is not None and not _signature_variants(ctx, stmt, later):
                ctx.report(
                    self,
                    stmt,
                    f"`{name}` is overwritten on line {later.lineno} before anything reads "
                    "this value: the computation is lost",
                )

    def _check_branch_tails(
        self, ctx: ModuleContext, branch: ast.If, block: list[ast.stmt], after: int
    ) -> None:
        """A tensor stored by the last statement of an `if`'s body, which the statements after
        the `if` (`block[after:]`, copied only for such a tail) overwrite before reading
        (cleanrl's clipped value loss with its `else:` dropped: `if clip: v_loss = 0.5 *
        v_max.mean()`, then `v_loss = 0.5 * (...).mean()`); and a value both branches of an
        `if`/`else` end by storing, whatever it is, overwritten the same way (sd-scripts' FP8
        block-wise `scale = row_max / max_value` or per-tensor `scale = t_max / max_value`,
        then `scale = torch.max(...) / max_value` for every mode)."""
        tail = branch.body[-1]
        if isinstance(tail, ast.AugAssign):
            self._check_accumulated_then_replaced(ctx, tail, block[after:])
            return
        both = _both_branches_store(branch)
        name = both or _computed_name(ctx, tail)
        if name is None or name in {
            n.id for n in walk_tree(branch.test) if isinstance(n, ast.Name)
        }:
            return
        later = _overwritten_unread(ctx, block[after:], name)
        if later is not None:
            what = "both branches' values are" if both else "the branch's computation is"
            ctx.report(
                self,
                tail,
                f"`{name}` is overwritten on line {later.lineno}, after the `if`, before "
                f"anything reads this value: {what} lost",
            )

    def _check_accumulated_then_replaced(
        self, ctx: ModuleContext, tail: ast.AugAssign, statements: list[ast.stmt]
    ) -> None:
        """A loss added to a total by the last statement of an `if` (`total_loss +=
        intent_loss`), which a later `if` replaces without reading (`total_loss = coef *
        slot_loss`, JointBERT with its `+=` lost): whenever both run, the first loss is
        dropped from what is back-propagated. Only losses: a counter added to and then reset
        (`bad_epochs += 1`, later `if improved: bad_epochs = 0`) is the idiom."""
        target = tail.target
        if not (
            isinstance(target, ast.Name)
            and isinstance(tail.op, ast.Add)
            and ctx.flow.graph_origin(tail.value) == "loss"
        ):
            return
        name = target.id
        for later in statements:
            if _reads(ctx, later, name) and not isinstance(later, ast.If):
                return
            if isinstance(later, ast.If):
                if any(isinstance(n, ast.Name) and n.id == name for n in walk_tree(later.test)):
                    return
                replaced = _overwritten_unread(ctx, later.body, name)
                if replaced is not None and ctx.flow.graph_origin(
                    getattr(replaced, "value", tail.value)
                ):
                    ctx.report(
                        self,
                        tail,
                        f"`{name}` is replaced on line {replaced.lineno} without being read: "
                        f"when both branches run, the loss added here is dropped",
                    )
                    return
                if _reads(ctx, later, name):
                    return
            elif isinstance(later, ast.Return | ast.Raise | ast.Break | ast.Continue):
                return


def _blocks(node: ast.AST) -> list[list[ast.stmt]]:
    """Every statement list inside a function (its body and nested blocks, not nested defs)."""
    found: list[list[ast.stmt]] = []
    stack: list[ast.AST] = [node]
    while stack:
        current = stack.pop()
        for field in _BLOCKS:
            block = getattr(current, field, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                found.append(block)
                stack.extend(s for s in block if isinstance(s, _NESTING))
        if isinstance(current, ast.Try):
            stack.extend(current.handlers)
    return found


def _both_branches_store(branch: ast.If) -> str | None:
    """The name an `if` and its `else:` (not an `elif` chain) both end by assigning."""
    if not branch.orelse or (isinstance(branch.orelse[0], ast.If) and len(branch.orelse) == 1):
        return None
    names = []
    for tail in (branch.body[-1], branch.orelse[-1]):
        if not (
            isinstance(tail, ast.Assign)
            and len(tail.targets) == 1
            and isinstance(tail.targets[0], ast.Name)
        ):
            return None
        names.append(tail.targets[0].id)
    return names[0] if names[0] == names[1] and names[0] != "_" else None


def _computed_name(ctx: ModuleContext, stmt: ast.stmt) -> str | None:
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
        return None
    target, value = stmt.targets[0], stmt.value
    if (
        isinstance(value, ast.BinOp)
        and isinstance(target, ast.Name)
        and target.id != "_"
        and _scaled_reduction(value) is not value
    ):
        return target.id  # `0.5 * errors.mean()`: a loss term
    if not isinstance(target, ast.Name) or target.id == "_" or not isinstance(value, ast.Call):
        return None
    qual = ctx.flow.qualname_of(value) or ""
    if _torch_computes(qual, value):
        return target.id
    if not qual and ctx.flow.is_model_call(value):
        return target.id
    func = value.func
    if not qual and isinstance(func, ast.Attribute) and func.attr in _TENSOR_RESHAPES:
        return target.id  # `v = v.expand(...)`: a view of a tensor, nothing else
    return None


# Methods only tensors have, which return a view or reshaped copy and do nothing else.
_TENSOR_RESHAPES = frozenset(
    {"expand", "expand_as", "permute", "unsqueeze", "view_as", "repeat_interleave", "unflatten"}
)


def _torch_computes(qual: str, value: ast.Call) -> bool:
    """A call of a lower-case function of torch's tensor modules that computes something,
    not a factory of literal sizes."""
    module, _, function = qual.rpartition(".")
    return (
        module in _TENSOR_MODULES
        and function.islower()
        and qual not in _NOT_COMPUTE
        and not _placeholder(qual, value)
    )


_FACTORIES = frozenset(
    f"torch.{name}" for name in ("rand", "randn", "randint", "zeros", "ones", "empty", "full")
)


def _placeholder(qual: str, value: ast.Call) -> bool:
    """A factory of literal sizes (`torch.rand(4, 3, 224, 224)`, a notebook's dummy input
    left behind when the cell that read it was commented out): it computes nothing from the
    program's values, so overwriting it loses nothing."""
    return qual in _FACTORIES and all(
        isinstance(arg, ast.Constant) for arg in [*value.args, *(k.value for k in value.keywords)]
    )


def _scaled_reduction(value: ast.BinOp) -> ast.expr:
    """The reduction a constant scales (`0.5 * errors.mean()`, `loss.sum() / 2`), else the
    expression itself."""
    for operand, other in ((value.left, value.right), (value.right, value.left)):
        if (
            isinstance(other, ast.Constant)
            and isinstance(operand, ast.Call)
            and isinstance(operand.func, ast.Attribute)
            and operand.func.attr in _SCALED
        ):
            return operand
    return value


_SCALED = frozenset({"mean", "sum"})


def _reduced_name(ctx: ModuleContext, stmt: ast.stmt) -> str | None:
    """The local a torch function or a tensor reduction/activation method is assigned to
    (`torch.cat(...)`, `F.softmax(...)`, `out.argmax(1)`), not a model call."""
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1:
        return None
    target, value = stmt.targets[0], stmt.value
    if isinstance(target, ast.Name) and isinstance(value, ast.BinOp) and _tensor_arithmetic(value):
        return target.id  # DDIM's noised input `x = x0 * a.sqrt() + e * (1.0 - a).sqrt()`
    if not isinstance(target, ast.Name) or not isinstance(value, ast.Call):
        return None
    qual = ctx.flow.qualname_of(value) or ""
    if _torch_computes(qual, value):
        return target.id
    if not qual and _arithmetic_helper(ctx, stmt, value):
        return target.id  # DDPM's `perturbed_x = self.perturb_x(x, t, noise)`, never read
    func = value.func
    if not qual and isinstance(func, ast.Attribute) and func.attr in _TENSOR_REDUCTIONS:
        return target.id
    return None


def _arithmetic_helper(ctx: ModuleContext, stmt: ast.stmt, call: ast.Call) -> bool:
    """`self.perturb_x(x, t, noise)` (or `perturb(x, t)`) where that method of the enclosing
    class (or module function) only returns arithmetic over its arguments (`return a * x + b *
    noise`): a pure computation, whose result nothing may need but its reader."""
    func = call.func
    candidates: list[ast.AST] = []
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
        if func.value.id != "self":
            return False
        cls = next((a for a in ctx.ancestors(stmt) if isinstance(a, ast.ClassDef)), None)
        if cls is None:
            return False
        candidates = [m for m in cls.body if isinstance(m, ast.FunctionDef) and m.name == func.attr]
    elif isinstance(func, ast.Name):
        candidates = [
            f for f in ctx.tree.body if isinstance(f, ast.FunctionDef) and f.name == func.id
        ]
    if len(candidates) != 1:
        return False
    helper = candidates[0]
    assert isinstance(helper, ast.FunctionDef)
    body = [
        b
        for b in helper.body
        if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant))
    ]
    if len(body) != 1 or not isinstance(body[0], ast.Return):
        return False
    returned = body[0].value
    if not (
        isinstance(returned, ast.BinOp) and isinstance(returned.op, ast.Add | ast.Sub | ast.Mult)
    ):
        return False
    parameters = {a.arg for a in helper.args.args} - {"self"}
    names = {n.id for n in walk_tree(returned) if isinstance(n, ast.Name)}
    return len(names & parameters) >= 2


# Elementwise tensor math whose presence in arithmetic makes it a tensor computation.
_TENSOR_MATH = frozenset({"sqrt", "rsqrt", "exp", "log", "sigmoid", "tanh", "square", "pow"})


def _tensor_arithmetic(value: ast.BinOp) -> bool:
    """Arithmetic over several terms of which one is tensor math (`a.sqrt()`, `x.exp()`):
    a computed tensor, not a count or a string."""
    terms = [n for n in walk_tree(value) if isinstance(n, ast.Name)]
    return len({t.id for t in terms}) >= 2 and any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in _TENSOR_MATH
        and not n.args
        for n in walk_tree(value)
    )


def _overwritten_unread(
    ctx: ModuleContext, statements: list[ast.stmt], name: str
) -> ast.stmt | None:
    """The first of `statements` that stores `name` again with no read of it before, up to
    a jump out of the block; None when it is read first (or never stored)."""
    for later in statements:
        if _reads(ctx, later, name):
            return None
        if _stores(later, name):
            return later
        if isinstance(later, ast.Return | ast.Raise | ast.Break | ast.Continue):
            return None
    return None


def _reads(ctx: ModuleContext, stmt: ast.stmt, name: str) -> bool:
    """Whether `stmt` reads `name` (or declares a global/nonlocal); each statement is walked
    once per module, however many earlier stores ask about it."""
    memo = ctx.memo_table("dead_tensor_store.reads")
    found = memo.get(id(stmt))
    if found is None:
        names: set[str] = set()
        declares = False
        for n in walk_tree(stmt):
            if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store):
                names.add(n.id)
            elif isinstance(n, ast.Global | ast.Nonlocal):
                declares = True
        found = memo[id(stmt)] = (names, declares)
    return name in found[0] or bool(found[1])


def _effects_checked_between(
    ctx: ModuleContext, stmt: ast.stmt, block: list[ast.stmt], index: int, later: ast.stmt
) -> bool:
    """A model run for what it triggers: between its call and the overwrite a test asserts
    (fast-transformers' event tests: `x = transformer(x)`, then `self.assertEqual(len(A),
    0)` on what its hooks recorded)."""
    value = stmt.value if isinstance(stmt, ast.Assign) else None
    if not isinstance(value, ast.Call) or not ctx.flow.is_model_call(value):
        return False
    for between in block[index + 1 :]:
        if between is later:
            return False
        if isinstance(between, ast.Assert) or (
            isinstance(between, ast.Expr)
            and isinstance(between.value, ast.Call)
            and terminal_name(between.value.func).startswith("assert")
        ):
            return True
    return False


def _last_stores(block: list[ast.stmt]) -> dict[str, int]:
    """Name -> index of the block's last statement that `_stores` it."""
    last: dict[str, int] = {}
    for index, stmt in enumerate(block):
        if isinstance(stmt, ast.Assign):
            for target in stmt.targets:
                if isinstance(target, ast.Name):
                    last[target.id] = index
        elif (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and stmt.value is not None
        ):
            last[stmt.target.id] = index
    return last


def _stores(stmt: ast.stmt, name: str) -> bool:
    """A plain re-assignment of `name` as the whole statement (not in a branch)."""
    if isinstance(stmt, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in stmt.targets)
    return (
        isinstance(stmt, ast.AnnAssign)
        and isinstance(stmt.target, ast.Name)
        and (stmt.target.id == name and stmt.value is not None)
    )


_NOQA = re.compile(r"#\s*noqa(?::\s*(?P<codes>[A-Z0-9, ]+))?", re.IGNORECASE)


def _acknowledged_unused(ctx: ModuleContext, stmt: ast.stmt) -> bool:
    """`foo = torch.rand(n, device=d)  # noqa: F841`: the author marked the value as unused on
    purpose (pyflakes' code for an unused local), as accelerate's memory tests do to hold an
    allocation."""
    found = _NOQA.search(ctx.lines[stmt.lineno - 1]) if stmt.lineno <= len(ctx.lines) else None
    if found is None:
        return False
    codes = found.group("codes")
    return codes is None or "F841" in codes.upper()


def _signature_variants(ctx: ModuleContext, first: ast.stmt, later: ast.stmt) -> bool:
    """In a test, the same model called again with fewer of the same arguments (`result =
    model(ids, attention_mask=m, token_type_ids=t)`, then `result = model(ids,
    token_type_ids=t)`, then `result = model(ids)`, Hugging Face's model tests): each call
    checks that one signature runs, the last one's result is the one asserted on."""
    if not ctx.test_module:
        return False
    calls = [getattr(stmt, "value", None) for stmt in (first, later)]
    if not all(isinstance(c, ast.Call) for c in calls):
        return False
    a, b = calls
    assert isinstance(a, ast.Call) and isinstance(b, ast.Call)
    if ast.unparse(a.func) != ast.unparse(b.func):
        return False

    def arguments(call: ast.Call) -> set[str]:
        return {ast.unparse(x) for x in call.args} | {
            f"{k.arg}={ast.unparse(k.value)}" for k in call.keywords
        }

    return arguments(b) < arguments(a)
