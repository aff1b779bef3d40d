"""no-amp: run forward and loss under bf16 autocast on GPUs that compute bf16 natively."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    BF16_RTOL,
    Codemod,
    SourceContext,
    descendants,
    dotted_name,
    method_call,
)
from torchdoctor.agent.fixes.codemods.common import (
    enclosing_loop,
    flagged_loop,
    iteration_loop,
    loop_contains,
)
from torchdoctor.agent.fixes.models import FixKind, FixTarget

_AUTOCASTS = ("torch.autocast", "torch.amp.autocast", "torch.cuda.amp.autocast")
_DEVICE_MOVES = ("to", "cuda", "float", "long", "pin_memory")
_UNSAFE_UNDER_AUTOCAST = ("torch.nn.BCELoss", "torch.nn.functional.binary_cross_entropy")
_TENSOR_METHODS = frozenset(
    {"mean", "sum", "item", "view", "reshape", "squeeze", "unsqueeze", "float", "detach", "size"}
)
"""Calls that are no forward pass: a span made only of these (`loss = a.mean() + b.mean()`
after a forward written in an `if`) has nothing for autocast to speed up."""
_REDUCTIONS = frozenset({"sum", "mean", "mul", "div", "float"})
"""What a step applies to its loss in the backward's own chain (`loss.sum().mul(k).backward()`)."""


class NoAmpFix(Codemod):
    """Wraps the statements from the forward to the loss (the ones just before
    `loss.backward()`) in `torch.autocast("cuda", dtype=torch.bfloat16, enabled=...)`, enabled
    only where the GPU has native bf16 (Ampere and later), so CPU runs stay float32. The
    backward stays outside, and bf16 needs no GradScaler."""

    rule = "no-amp"
    kind = FixKind.PERFORMANCE
    cuda_only = True
    summary = "bf16 torch.autocast around forward and loss"
    rtol = BF16_RTOL

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        if any(ctx.qualname(c.func) in _AUTOCASTS for c in ctx.find(cst.Call)):
            return False
        if any(ctx.qualname(c.func) in _UNSAFE_UNDER_AUTOCAST for c in ctx.find(cst.Call)):
            return ctx.decline(
                "the script uses binary_cross_entropy (nn.BCELoss), which raises under "
                "autocast: switch to BCEWithLogitsLoss on logits first (bce-on-sigmoid)"
            )
        found = _step_block(ctx, target)
        if found is None:
            return ctx.decline(
                "no single `loss.backward()` with the statements that compute its loss before "
                "it in the same block (the step is split across branches or helpers)"
            )
        stmts, first, last = found
        backward = next(s for s in stmts[last:] if _backward_receiver(s) is not None)
        loop = enclosing_loop(ctx, backward)
        several = loop is not None and iteration_loop(ctx, loop) is not loop
        if several or len({r for s in stmts if (r := _backward_receiver(s)) is not None}) > 1:
            return ctx.decline(
                "the step has several backward passes (a GAN's discriminator and generator "
                "updates): wrap each forward and its loss in autocast by hand"
            )
        if not _calls_a_forward(stmts[first : last + 1]):
            return ctx.decline(
                "the statements before the loss call no model (its forward is in a branch or "
                "a helper above them): wrap the forward and the loss in autocast by hand"
            )
        torch = ctx.require_module("torch")
        header = (
            f'{torch}.autocast(device_type="cuda", dtype={torch}.bfloat16, '
            f"enabled={torch}.cuda.is_bf16_supported(including_emulation=False))"
        )
        rest = list(stmts[first + 1 : last + 1])

        def wrap(node: cst.CSTNode) -> cst.CSTNode:
            if not isinstance(node, cst.SimpleStatementLine | cst.If):
                return node
            return cst.With(
                items=[cst.WithItem(item=cst.parse_expression(header))],
                body=cst.IndentedBlock(body=[node.with_changes(leading_lines=[]), *rest]),
                leading_lines=node.leading_lines,
            )

        ctx.replace(stmts[first], wrap)
        for stmt in rest:
            ctx.remove(stmt)
        return True


def _step_block(
    ctx: SourceContext, target: FixTarget
) -> tuple[Sequence[cst.BaseStatement], int, int] | None:
    """The statement list holding `loss.backward()`, and the forward..loss index range."""
    loop = flagged_loop(ctx, target)
    everywhere = []
    for block in ctx.find(cst.IndentedBlock):
        span = _forward_span(ctx, block.body)
        if span is not None:
            everywhere.append((block, (block.body, *span)))
    # the step written in the loop itself, else in the one function the loop calls
    inside = [
        found
        for block, found in everywhere
        if loop is not None and (block is loop.body or loop_contains(ctx, loop, block))
    ]
    candidates = inside or [found for _, found in everywhere]
    return candidates[0] if len(candidates) == 1 else None


def _calls_a_forward(stmts: Sequence[cst.BaseStatement]) -> bool:
    """Some call in `stmts` is more than a tensor method (a model, a loss, a helper)."""
    for stmt in stmts:
        for node in descendants(stmt):
            if not isinstance(node, cst.Call):
                continue
            if not isinstance(node.func, cst.Attribute) or node.func.attr.value not in (
                _TENSOR_METHODS
            ):
                return True
    return False


def _forward_span(ctx: SourceContext, stmts: Sequence[cst.BaseStatement]) -> tuple[int, int] | None:
    for index, stmt in enumerate(stmts):
        loss = _backward_receiver(stmt)
        if loss is None:
            continue
        assigned = [i for i in range(index) if _binds(stmts[i], loss)]
        if not assigned:
            return None
        last = assigned[-1]
        kept = _span_start(ctx, stmts, last, across_zero_grad=False)
        crossed = _span_start(ctx, stmts, last, across_zero_grad=True)
        # past a zero_grad only to take in a forward: `loss_pos = criterion(...)` behind it,
        # the model called in a branch further up, is still the loss alone
        if crossed < kept and _calls_a_model(ctx, stmts[crossed:kept]):
            return crossed, last
        return kept, last
    return None


def _span_start(
    ctx: SourceContext, stmts: Sequence[cst.BaseStatement], last: int, across_zero_grad: bool
) -> int:
    first = last
    while first > 0:
        if _is_compute(stmts[first - 1]) or _is_forward_branch(stmts[first - 1]):
            first -= 1
            continue
        earlier = _forward_behind_moves(ctx, stmts, first, last, across_zero_grad)
        if earlier is None:
            break
        first = earlier
    return first


_BUILTINS = frozenset(
    {"len", "float", "int", "range", "sum", "min", "max", "abs", "list", "tuple", "zip", "round"}
)


def _calls_a_model(ctx: SourceContext, stmts: Sequence[cst.BaseStatement]) -> bool:
    """Some call in `stmts` is of a name or a `self.` attribute (`model(x)`,
    `self.net(x)`) that is neither a torch function, a builtin nor a loss (a name bound to a
    torch.nn loss module, or named for one: `criterion`, `loss_fn`); method calls on values
    (`pred.double()`, `y.to(device)`) are not."""
    losses = {
        name
        for assign in ctx.find(cst.Assign)
        if isinstance(assign.value, cst.Call)
        and (ctx.qualname(assign.value.func) or "").startswith("torch.nn.")
        and (ctx.qualname(assign.value.func) or "").endswith("Loss")
        for target in assign.targets
        if (name := dotted_name(target.target))
    }
    for stmt in stmts:
        for node in descendants(stmt):
            if not isinstance(node, cst.Call):
                continue
            if (ctx.qualname(node.func) or "").startswith("torch."):
                continue
            callee = dotted_name(node.func) or ""
            if not (isinstance(node.func, cst.Name) or callee.startswith("self.")):
                continue
            if callee in _BUILTINS or callee in losses:
                continue
            if "criterion" in callee.lower() or "loss" in callee.lower():
                continue
            return True
    return False


def _forward_behind_moves(
    ctx: SourceContext,
    stmts: Sequence[cst.BaseStatement],
    first: int,
    last: int,
    across_zero_grad: bool = False,
) -> int | None:
    """The forward statement behind the device moves just before `first`, when the span reads
    what it binds: `output = model(batch)`, then `labels = ....to(device)`, then `loss =
    criterion(output, labels)` (powerful-gnns) is one forward pass, the move inside it. A
    `zero_grad()` between the forward and the loss (`preds = model(...)`, then
    `optimizer.zero_grad()`, then `loss = F.cross_entropy(preds, ...)`) is passed over the same
    way while the span calls torch functions only: without it the span would be the loss
    alone, which autocast leaves in float32."""
    loss_only = across_zero_grad and _torch_calls_only(ctx, stmts[first : last + 1])
    index = first - 1
    while index >= 0 and (
        _moves_only(stmts[index]) or (loss_only and _clears_grads_only(stmts[index]))
    ):
        index -= 1
    if index < 0 or index == first - 1:
        return None
    stmt = stmts[index]
    if not (_is_compute(stmt) or _is_forward_branch(stmt)):
        return None
    bound = (
        _assigned_names(stmt)
        if isinstance(stmt, cst.SimpleStatementLine)
        else {
            name
            for node in descendants(stmt)
            if isinstance(node, cst.SimpleStatementLine)
            for name in _assigned_names(node)
        }
    )
    read = {
        name
        for later in stmts[first : last + 1]
        for node in descendants(later)
        if isinstance(node, cst.Name | cst.Attribute) and (name := dotted_name(node))
    }
    return index if bound & read else None


def _moves_only(stmt: cst.BaseStatement) -> bool:
    """`labels = labels.to(device)`, `x, y = x.cuda(), y.cuda()`, or an `if` doing only such
    moves (`if args.gpu is not None: images = images.cuda(args.gpu)`): nothing else."""
    if isinstance(stmt, cst.If):
        return _every_branch(stmt, _moves_only)
    return isinstance(stmt, cst.SimpleStatementLine) and all(
        isinstance(small, cst.Assign) and _is_device_move(small.value) for small in stmt.body
    )


def _torch_calls_only(ctx: SourceContext, stmts: Sequence[cst.BaseStatement]) -> bool:
    """Every call in `stmts` is a torch function or a tensor method (`F.cross_entropy(
    preds.view(-1, n), ys)`): a loss computed from a forward made before them."""
    for stmt in stmts:
        for node in descendants(stmt):
            if not isinstance(node, cst.Call):
                continue
            if (ctx.qualname(node.func) or "").startswith("torch."):
                continue
            if isinstance(node.func, cst.Attribute) and node.func.attr.value in _TENSOR_METHODS:
                continue
            return False
    return True


def _clears_grads_only(stmt: cst.BaseStatement) -> bool:
    """`optimizer.zero_grad()` (or `opt.optimizer.zero_grad(set_to_none=True)`) alone."""
    return isinstance(stmt, cst.SimpleStatementLine) and all(
        isinstance(small, cst.Expr) and method_call(small.value, "zero_grad") is not None
        for small in stmt.body
    )


def _is_forward_branch(stmt: cst.BaseStatement) -> bool:
    """`if cuda: out = model(x.cuda()) else: out = model(x)`: an `if` whose branches are all
    forward statements (retinanet's training step) belongs to the span; one that only moves
    the batch does not (the autocast block would take in the loader timing before it)."""
    return (
        isinstance(stmt, cst.If) and _every_branch(stmt, _is_compute_any) and not _moves_only(stmt)
    )


def _every_branch(stmt: cst.If, test: Callable[[cst.BaseStatement], bool]) -> bool:
    branches: list[cst.BaseSuite] = []
    node: cst.If | cst.Else | None = stmt
    while node is not None:
        branches.append(node.body)
        node = node.orelse if isinstance(node, cst.If) else None
    return all(
        isinstance(body, cst.IndentedBlock) and body.body and all(test(s) for s in body.body)
        for body in branches
    )


def _is_compute_any(stmt: cst.BaseStatement) -> bool:
    """A forward statement, device moves included (inside a branch they go with the call)."""
    return isinstance(stmt, cst.SimpleStatementLine) and all(
        isinstance(small, cst.Assign | cst.AugAssign | cst.AnnAssign | cst.Expr)
        and not (isinstance(small, cst.Expr) and method_call(small.value, "zero_grad"))
        for small in stmt.body
    )


def _backward_receiver(stmt: cst.BaseStatement) -> str | None:
    """The loss `stmt` back-propagates: `loss.backward()`, `(loss / accumulate).backward()`,
    or, in an `if` (a DeepSpeed engine's `engine.backward(loss)` beside `loss.backward()`),
    the one loss every branch back-propagates."""
    if isinstance(stmt, cst.If):
        losses = {r for node in descendants(stmt) if (r := _backward_receiver_line(node))}
        return losses.pop() if len(losses) == 1 else None
    return _backward_receiver_line(stmt)


def _backward_receiver_line(stmt: cst.CSTNode) -> str | None:
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return None
    expr = stmt.body[0]
    if not isinstance(expr, cst.Expr):
        return None
    call = method_call(expr.value, "backward")
    if call is None or not isinstance(call.func, cst.Attribute):
        return None
    if len(call.args) == 1 and call.args[0].keyword is None:
        return dotted_name(call.args[0].value)  # engine.backward(loss)
    receiver = call.func.value
    while True:
        if isinstance(receiver, cst.BinaryOperation):  # (loss / accumulate).backward()
            receiver = receiver.left
        elif (
            isinstance(receiver, cst.Call)
            and isinstance(receiver.func, cst.Attribute)
            and receiver.func.attr.value in _REDUCTIONS
        ):  # loss.sum().mul(loss_scaling).backward()
            receiver = receiver.func.value
        else:
            return dotted_name(receiver)


def _binds(stmt: cst.BaseStatement, name: str) -> bool:
    """`stmt` assigns or adds to `name`, at its top level or inside (the loop of a
    teacher-forced decoder summing `loss += criterion(...)` over time steps ends the forward
    pass, not the `loss = 0.0` before it)."""
    if isinstance(stmt, cst.SimpleStatementLine):
        return name in _assigned_names(stmt)
    return any(
        isinstance(node, cst.SimpleStatementLine) and name in _assigned_names(node)
        for node in descendants(stmt)
    )


def _assigned_names(stmt: cst.BaseStatement) -> set[str]:
    names: set[str] = set()
    if isinstance(stmt, cst.SimpleStatementLine):
        for small in stmt.body:
            if isinstance(small, cst.Assign):
                for target in small.targets:
                    names |= _names_in(target.target)
            elif isinstance(small, cst.AugAssign | cst.AnnAssign):
                names |= _names_in(small.target)
    return names


def _names_in(expr: cst.BaseExpression) -> set[str]:
    if isinstance(expr, cst.Tuple | cst.List):
        return {n for e in expr.elements for n in _names_in(e.value)}
    name = dotted_name(expr)
    return {name} if name else set()


def _is_compute(stmt: cst.BaseStatement) -> bool:
    """A simple statement of the forward pass: not gradient clearing, not a device move."""
    if not isinstance(stmt, cst.SimpleStatementLine):
        return False
    for small in stmt.body:
        if isinstance(small, cst.Expr) and method_call(small.value, "zero_grad"):
            return False
        if isinstance(small, cst.Assign) and _is_device_move(small.value):
            return False
        if not isinstance(small, cst.Assign | cst.AugAssign | cst.AnnAssign | cst.Expr):
            return False
    return True


def _is_device_move(value: cst.BaseExpression) -> bool:
    if isinstance(value, cst.Tuple):
        return all(_is_device_move(e.value) for e in value.elements)
    return any(method_call(value, m) is not None for m in _DEVICE_MOVES)
