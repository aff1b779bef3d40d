"""host-sync-in-step: accumulate step values on the device, read them once after the loop."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import (
    EXACT_RTOL,
    Codemod,
    SourceContext,
    descendants,
    dotted_name,
    keyword,
    method_call,
    name_is_read,
    not_parsed,
    scope_of,
)
from torchdoctor.agent.fixes.codemods.common import enclosing_loop
from torchdoctor.agent.fixes.models import FixKind, FixTarget

LOG_EVERY = 50
"""Steps between two progress lines once a per-step print is thinned out."""
_LOGGERS = frozenset(
    {
        "print",
        "log",
        "info",
        "debug",
        "add_scalar",
        "add_scalars",
        "log_metrics",
        "log_metric",
        "set_postfix",
        "set_postfix_str",
        "set_description",
        "set_description_str",
    }
)
"""Calls that only show or record a number: a tqdm bar's postfix and description included,
MLflow's and Comet's `log_metric`."""
_STREAMS = frozenset({"sys.stdout.write", "sys.stderr.write"})
"""Progress lines written straight to a stream (`sys.stdout.write("[Epoch %d] ..." % ...)`)."""
_PLOTS = frozenset({"line", "scatter"})
"""Visdom's plot calls: a log only with the `win=` (window) keyword visdom's plots take
(`viz.line([loss.item()], [step], win="train_loss", update="append")`); a `.line(...)` of
anything else is no log."""


def _logger_call(call: cst.Call) -> bool:
    """Whether `call` only shows or records the numbers it is given."""
    name = (dotted_name(call.func) or "").split(".")[-1]
    windowed = any(a.keyword is not None and a.keyword.value == "win" for a in call.args)
    return name in _LOGGERS or (name in _PLOTS and windowed)


class HostSyncInStepFix(Codemod):
    """`total += loss.item()` -> `total += loss.detach()` with `total = float(total)` after
    the loop; `losses.append(loss.item())` -> `losses.append(loss.detach())` with
    `losses = [float(v) for v in losses]` after the loop. Applied only when the accumulator
    is not read inside the loop, so nothing sees the tensor before it is converted back.

    A print or logger call (logging, tensorboard, wandb, MLflow's or Comet's `log_metric`, a
    tqdm bar, a visdom plot into a `win=` window) that reads `.item()` on every step is put under
    `if step % LOG_EVERY == 0:`, `step` being the loop's own counter (`for step in range`,
    `for i, batch in enumerate(...)`, or a `step += 1` in the loop's body): the same lines,
    every LOG_EVERY steps, and the GPU runs ahead in between. A weighted sum
    (`total += loss.item() * x.size(0)`) is accumulated on the device like a plain one.
    """

    rule = "host-sync-in-step"
    kind = FixKind.PERFORMANCE
    summary = "accumulate on device instead of calling .item() every step"
    rtol = EXACT_RTOL
    overhead = True

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        span = (target.line, target.end_line)
        for aug in ctx.find(cst.AugAssign, within=span):
            item = _weighted_item(aug.value)
            if (
                isinstance(aug.operator, cst.AddAssign)
                and item
                and isinstance(aug.target, cst.Name)
            ):
                back = "int" if aug.value is item and _counts_matches(item) else "float"
                return _accumulate(ctx, aug, aug.target.value, item, f"{back}({aug.target.value})")
        for aug in ctx.find(cst.AugAssign, within=span):
            listed = _listed_item(ctx, aug)
            if listed is not None:  # `losses += [loss.item()]` on a list: an append
                grown, listed_item = listed
                back = f"[float(v) for v in {grown}]"
                return _accumulate(ctx, aug, grown, listed_item, back)
        for call in ctx.find(cst.Call, within=span):
            if not method_call(call, "append") or len(call.args) != 1:
                continue
            item = method_call(call.args[0].value, "item")
            assert isinstance(call.func, cst.Attribute)
            name = dotted_name(call.func.value)
            if item is None or name is None or "." in name:
                continue
            return _accumulate(ctx, call, name, item, f"[float(v) for v in {name}]")
        for stmt in ctx.find(cst.SimpleStatementLine, within=span):
            if _logs_item(stmt, ctx):
                return _log_every(ctx, stmt)
        for assign in ctx.find(cst.Assign, within=span):
            if _shown_number(assign) is not None:
                return _keep_shown_on_device(ctx, assign)
        return False

    def explain(self, source: str, target: FixTarget) -> str | None:
        try:
            ctx = SourceContext(source)
        except (cst.ParserSyntaxError, RecursionError) as exc:
            return not_parsed(source, exc)
        span = (target.line, target.end_line)
        for stmt in ctx.find(cst.SimpleStatementLine, within=span):
            if not _logs_item(stmt, ctx):
                continue
            loop = enclosing_loop(ctx, stmt)
            if loop is not None and _over_entries(loop):
                return (
                    "the log sits in a loop over a dict's entries inside the step (one scalar "
                    "per loss): thin out the step's own loop around it by hand"
                )
            if loop is None or (
                _step_counter(ctx, loop) is None
                and (not isinstance(loop, cst.For) or _names_used(ctx, loop, "step"))
            ):
                return (
                    "the per-step log has no loop counter to thin it out with: count steps "
                    f"and log every {LOG_EVERY}, or accumulate on the device"
                )
            block = ctx.parent(stmt)
            guard = ctx.parent(block) if block is not None else None
            if isinstance(guard, cst.If) and _periodic(guard):
                return (
                    f"the log runs with the step it records, under `if {ctx.code(guard.test)}:` "
                    "(a step that is itself periodic, as a GAN's generator step): already "
                    "periodic, thin it further by hand if it still costs"
                )
        for branch in ctx.find(cst.If, within=span):
            if any(_value_test(node) for node in descendants(branch.test)):
                return (
                    "a NaN/inf guard reads the value on every step; checking it every "
                    f"{LOG_EVERY} steps (or keeping torch.isfinite(...) on the device until "
                    "the epoch ends) finds a divergence later: a human's call"
                )
        for aug in ctx.find(cst.AugAssign, within=span):
            loop = enclosing_loop(ctx, aug)
            if (
                isinstance(aug.target, cst.Name)
                and _weighted_item(aug.value)
                and loop is not None
                and _read_every_step(ctx, aug.target.value, loop, aug)
            ):
                return (
                    f"`{aug.target.value}` is read inside the loop on every step: kept on the "
                    "device, it would sync there instead"
                )
        for node in [*ctx.find(cst.AugAssign, within=span), *ctx.find(cst.Call, within=span)]:
            grown = _grown_list(ctx, node)
            read = _list_read_in_loop(ctx, node, grown) if grown else None
            if read is not None:
                line = ctx.code(_statement_of(ctx, read)).strip().splitlines()[0]
                return (
                    f"the list `{grown}` is read inside the loop (`{line}`): a list of device "
                    "tensors there would not go into NumPy or print as numbers; convert it "
                    "there by hand"
                )
        for call in ctx.find(cst.Call, within=span):
            taker = dotted_name(call.func) or ""
            if taker.split(".")[-1] == "append" or _logger_call(call):
                continue
            if any(method_call(arg.value, "item") for arg in call.args):
                method = _own_method(ctx, call)
                if method is not None:
                    return (
                        f"the number goes into `{_one_line(ctx, call.func)}(...)` "
                        f"(`{method}`, in this file), which keeps it in the object's fields "
                        "for every later reader of them: keep a tensor there (detached, read "
                        "once per epoch) only where all of them accept one"
                    )
                return (
                    f"the number goes into `{_one_line(ctx, call.func)}(...)`, whose use of it is "
                    "not visible here: keep a tensor there (and read it once per epoch) only "
                    "if it accepts one"
                )
        shown = SourceContext(source)
        for assign in shown.find(cst.Assign, within=span):
            if _shown_number(assign) is not None and not _keep_shown_on_device(shown, assign):
                return shown.refusal or _host_use(ctx, span)
        return _host_use(ctx, span)


def _own_method(ctx: SourceContext, call: cst.Call) -> str | None:
    """`AverageMeter.update` for `meter.update(...)` when `meter` is built in the same
    function (or module) from a class this file defines with that method."""
    if not isinstance(call.func, cst.Attribute) or not isinstance(call.func.value, cst.Name):
        return None
    receiver, method = call.func.value.value, call.func.attr.value
    scope = next((a for a in ctx.ancestors(call) if isinstance(a, cst.FunctionDef)), ctx.module)
    built = {
        name
        for assign in ctx.find(cst.Assign, inside=scope)
        if isinstance(assign.value, cst.Call)
        and (name := dotted_name(assign.value.func)) is not None
        and any(dotted_name(t.target) == receiver for t in assign.targets)
    }
    for cls in ctx.module.body:
        if (
            isinstance(cls, cst.ClassDef)
            and cls.name.value in built
            and ctx.find(cst.FunctionDef, inside=cls, where=lambda f: f.name.value == method)
        ):
            return f"{cls.name.value}.{method}"
    return None


def _shown_number(assign: cst.Assign) -> str | None:
    """`loss_ema = loss.item()` / `loss_ema = 0.95 * loss_ema + 0.05 * loss.item()` (or both
    in one conditional expression on `loss_ema is None`): a name bound to arithmetic of
    `.item()` numbers, itself and literals -> the name."""
    if len(assign.targets) != 1 or not isinstance(assign.targets[0].target, cst.Name):
        return None
    name = assign.targets[0].target.value
    if not any(method_call(n, "item") is not None for n in descendants(assign.value)):
        return None
    return name if _device_arithmetic(assign.value, name) else None


def _device_arithmetic(expr: cst.BaseExpression, name: str) -> bool:
    """`expr` computes the same on a 0-d tensor as on a float: `+ - * /` of `name`, number
    literals and `x.item()` (which becomes `x.detach()`)."""
    if isinstance(expr, cst.Name):
        return expr.value == name
    if isinstance(expr, cst.Integer | cst.Float):
        return True
    if isinstance(expr, cst.UnaryOperation) and isinstance(expr.operator, cst.Minus):
        return _device_arithmetic(expr.expression, name)
    if isinstance(expr, cst.IfExp):  # `loss.item() if ema is None else 0.98 * ema + ...`
        test = expr.test
        return (
            isinstance(test, cst.Comparison)
            and dotted_name(test.left) == name
            and len(test.comparisons) == 1
            and isinstance(test.comparisons[0].operator, cst.Is | cst.IsNot)
            and _flat_code(test.comparisons[0].comparator) == "None"
            and _device_arithmetic(expr.body, name)
            and _device_arithmetic(expr.orelse, name)
        )
    if isinstance(expr, cst.BinaryOperation) and isinstance(
        expr.operator, cst.Add | cst.Subtract | cst.Multiply | cst.Divide
    ):
        return _device_arithmetic(expr.left, name) and _device_arithmetic(expr.right, name)
    item = method_call(expr, "item")
    return item is not None and not item.args


def _none_test(ctx: SourceContext, node: cst.Name) -> bool:
    """`name is None` / `name is not None`."""
    parent = ctx.parent(node)
    return (
        isinstance(parent, cst.Comparison)
        and parent.left is node
        and len(parent.comparisons) == 1
        and isinstance(parent.comparisons[0].operator, cst.Is | cst.IsNot)
        and _flat_code(parent.comparisons[0].comparator) == "None"
    )


def _flat_code(node: cst.CSTNode) -> str:
    return cst.Module([]).code_for_node(node).strip()


def _shown_uses(
    ctx: SourceContext, name: str, loop: cst.For | cst.While
) -> tuple[list[cst.Assign], list[cst.SimpleStatementLine]] | str:
    """The loop's bindings of a number kept for display (`loss_ema`) and the log lines that
    show it, or why it cannot stay a tensor (another reader in the step)."""
    bindings = [
        a
        for a in ctx.find(cst.Assign, inside=loop.body)
        if len(a.targets) == 1 and dotted_name(a.targets[0].target) == name
    ]
    if any(_shown_number(a) != name for a in bindings):
        return f"`{name}` is also bound to something other than arithmetic of step values"
    inside = {id(n) for a in bindings for n in descendants(a.value)}
    logs: list[cst.SimpleStatementLine] = []
    for node in ctx.find(cst.Name, inside=loop.body, where=lambda n: n.value == name):
        parent = ctx.parent(node)
        if id(node) in inside or isinstance(parent, cst.AssignTarget) or _none_test(ctx, node):
            continue
        if isinstance(parent, cst.Attribute) and parent.attr is node:
            continue
        lines = (a for a in ctx.ancestors(node) if isinstance(a, cst.SimpleStatementLine))
        line = next(lines, None)
        if line is None or not _is_log_line(line):
            return (
                f"`{name}` is used by host code in the step besides its log line: kept on the "
                "device, it would sync there instead"
            )
        if line not in logs:
            logs.append(line)
    return bindings, logs


def _is_log_line(stmt: cst.SimpleStatementLine) -> bool:
    if len(stmt.body) != 1 or not isinstance(stmt.body[0], cst.Expr):
        return False
    call = stmt.body[0].value
    if not isinstance(call, cst.Call):
        return False
    return _logger_call(call) or dotted_name(call.func) in _STREAMS


def _keep_shown_on_device(ctx: SourceContext, assign: cst.Assign) -> bool:
    """A number kept only to be shown (tqdm's `loss_ema`, updated from `loss.item()` every
    step): its arithmetic stays on the device (`.item()` -> `.detach()`), the log line that
    shows it reads it back with `float(...)` every LOG_EVERY steps, and a read after the loop
    gets a float again."""
    name = _shown_number(assign)
    loop = enclosing_loop(ctx, assign)
    if name is None or loop is None:
        return False
    uses = _shown_uses(ctx, name, loop)
    if isinstance(uses, str):
        return ctx.decline(uses)
    bindings, logs = uses
    if len(logs) > 1 and _step_counter(ctx, loop) is None:
        return ctx.decline(f"`{name}` is shown by several log lines and the loop counts no steps")
    for binding in bindings:
        for node in descendants(binding.value):
            item = method_call(node, "item")
            if item is not None and isinstance(item.func, cst.Attribute):
                detach = cst.Attribute(value=item.func.value, attr=cst.Name("detach"))
                ctx.substitute(item, cst.Call(func=detach))
    for line in logs:
        read_back = line.visit(_ReadBack(name))
        assert isinstance(read_back, cst.SimpleStatementLine)
        if not _log_every(ctx, line, read_back):
            block = ctx.parent(line)
            guard = ctx.parent(block) if block is not None else None
            if not (isinstance(guard, cst.If) and _periodic(guard)):
                return ctx.decline(
                    f"the log line showing `{name}` has no loop counter to thin it out with"
                )
            ctx.substitute(line, read_back)
    scope = next((a for a in ctx.ancestors(loop) if isinstance(a, cst.FunctionDef)), ctx.module)
    if name_is_read(ctx, name, scope, skip=[loop]):
        ctx.insert_after(loop, f"if {name} is not None:\n    {name} = float({name})\n")
    return True


class _ReadBack(cst.CSTTransformer):
    """`name` -> `float(name)` in a log line (a 0-d tensor prints as `tensor(...)`)."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def leave_Name(self, original_node: cst.Name, updated_node: cst.Name) -> cst.BaseExpression:
        if original_node.value != self.name:
            return updated_node
        return cst.Call(func=cst.Name("float"), args=[cst.Arg(updated_node)])

    def leave_Attribute(
        self, original_node: cst.Attribute, updated_node: cst.Attribute
    ) -> cst.BaseExpression:
        # `x.name` is an attribute, not the number: keep its name as it was
        return updated_node.with_changes(attr=original_node.attr)

    def leave_Arg(self, original_node: cst.Arg, updated_node: cst.Arg) -> cst.Arg:
        return updated_node.with_changes(keyword=original_node.keyword)


def _over_entries(loop: cst.CSTNode) -> bool:
    """`for k, v in losses.items():`: a loop over a container's entries, inside the step (a
    counter of it would count keys, not steps: LynnHo's GAN logs each loss of a dict)."""
    return isinstance(loop, cst.For) and any(
        method_call(loop.iter, name) is not None for name in ("items", "keys", "values")
    )


def _one_line(ctx: SourceContext, node: cst.CSTNode) -> str:
    """`node`'s code on one line, for a reason (a subscript split over lines by a formatter)."""
    return "".join(line.strip() for line in ctx.code(node).splitlines())


def _host_use(ctx: SourceContext, span: tuple[int, int]) -> str | None:
    """The last word on a sync no edit here removes: where its value goes on the host."""
    for call in ctx.find(cst.Call, within=span):
        if method_call(call, "numpy") or method_call(call, "tolist"):
            return (
                "the values go on into NumPy or Python lists on the host: keep them tensors "
                "only if every later use accepts one"
            )
    for aug in ctx.find(cst.AugAssign, within=span):
        if isinstance(aug.target, cst.Subscript | cst.Attribute) and any(
            method_call(node, "item") for node in descendants(aug.value)
        ):
            return (
                f"the number is added into `{_one_line(ctx, aug.target)}`, kept in a container "
                "whose readers (a periodic log, a reset) are not visible here: keep tensors "
                "there only if every one accepts them"
            )
    for assign in ctx.find(cst.Assign, within=span):
        stored = [
            t.target for t in assign.targets if isinstance(t.target, cst.Subscript | cst.Attribute)
        ]
        if stored and any(method_call(node, "item") for node in descendants(assign.value)):
            if _host_tensor(ctx, assign, stored[0]):
                return (
                    f"the number is written into `{_one_line(ctx, stored[0])}`, a tensor this "
                    "function makes on the host: writing a device tensor there copies it to the "
                    "host all the same (make that tensor on the device, if every reader of it "
                    "takes one)"
                )
            return (
                f"the number is stored into `{_one_line(ctx, stored[0])}`, whose readers (a "
                "plot, a summary after the epoch) are not visible here: keep tensors there "
                "only if every one accepts them"
            )
    for assign in ctx.find(cst.Assign, within=span):
        packed = _packed_for_a_log(ctx, assign)
        if packed is not None:
            return (
                f"the number goes into `{packed[0]}`, a dict or list the step hands to "
                f"`{packed[1]}`: thin out that log by hand (build and show it every "
                f"{LOG_EVERY} steps), or keep the value a tensor there if it accepts one"
            )
    for call in ctx.find(cst.Call, within=span):
        if method_call(call, "item") or dotted_name(call.func) == "float":
            return (
                "the number is used by host code in the step itself (a condition, a "
                "computation, a control value): only sums, lists and logs have a device-side "
                "form this fix can show to be the same"
            )
    for call in ctx.find(cst.Call, within=span):
        moved = next((m for m in _HOST_COPIES if method_call(call, m)), None)
        if moved is not None:
            return (
                f"the tensor is copied to the host with `.{moved}()` for host code to use (an "
                "environment step, NumPy, a list): that copy is the sync, and only sums, lists "
                "and logs of numbers have a device-side form this fix can write"
            )
    return None


_HOST_COPIES = ("cpu", "numpy", "tolist")


def _packed_for_a_log(ctx: SourceContext, assign: cst.Assign) -> tuple[str, str] | None:
    """(`logs`, `progress_bar.set_postfix`) for `logs = {"loss": loss.detach().item(), ...}`
    whose first reader in the loop is a logger (diffusers' tqdm postfix, `accelerator.log`)."""
    if len(assign.targets) != 1 or not isinstance(assign.targets[0].target, cst.Name):
        return None
    if not isinstance(assign.value, cst.Dict | cst.List | cst.Tuple):
        return None
    if not any(method_call(node, "item") for node in descendants(assign.value)):
        return None
    name = assign.targets[0].target.value
    loop = enclosing_loop(ctx, assign)
    if loop is None:
        return None
    for call in ctx.find(cst.Call, inside=loop.body):
        taker = dotted_name(call.func) or ""
        given = any(dotted_name(arg.value) == name for arg in call.args)
        if given and _logger_call(call):
            return name, taker
    return None


def _host_tensor(ctx: SourceContext, at: cst.Assign, stored: cst.BaseExpression) -> bool:
    """`stored` is an element of a tensor the enclosing function makes with a torch factory
    and no `device=` (`vis_loss = torch.Tensor(len(loader))`, then `vis_loss[i] =
    loss.item()` in the loop): a host tensor, so the write is a copy to the host either way."""
    if not isinstance(stored, cst.Subscript):
        return False
    name = dotted_name(stored.value)
    if name is None:
        return False
    for assign in ctx.find(cst.Assign, inside=scope_of(ctx, at)):
        value = assign.value
        if (
            any(dotted_name(t.target) == name for t in assign.targets)
            and isinstance(value, cst.Call)
            and (ctx.qualname(value.func) or "").startswith("torch.")
            and keyword(value, "device") is None
        ):
            return True
    return False


def _logs_item(stmt: cst.SimpleStatementLine, ctx: SourceContext) -> bool:
    """`print(... x.item() ...)`, `logger.info(...)`, `writer.add_scalar(...)`, ... (of
    `.item()` or of a host copy, `x.cpu().numpy()`), or a
    print of the loss tensor itself (`print(f"{loss:.4f}")`, `print("loss", loss)`: the rule
    reports those only for the tensor the step calls `.backward()` on)."""
    if len(stmt.body) != 1 or not isinstance(stmt.body[0], cst.Expr):
        return False
    call = stmt.body[0].value
    if not isinstance(call, cst.Call):
        return False
    called = dotted_name(call.func) or ""
    name = called.split(".")[-1]
    if not _logger_call(call) and called not in _STREAMS and not _log_file_write(ctx, stmt, call):
        return False
    formats_a_name = any(_formats_a_name(node) for node in descendants(call))
    reads_item = any(  # `.item()`, or a copy out (`d_loss.data.cpu().numpy()`)
        method_call(node, name) is not None
        for node in descendants(call)
        for name in ("item", *_HOST_COPIES)
    )
    prints_a_name = name == "print" and any(isinstance(a.value, cst.Name) for a in call.args)
    logs_a_name = (  # `writer.add_scalar("loss", loss, step)` reads the tensor to the host
        name == "add_scalar" and len(call.args) > 1 and isinstance(call.args[1].value, cst.Name)
    )
    return reads_item or formats_a_name or prints_a_name or logs_a_name


def _log_file_write(ctx: SourceContext, stmt: cst.CSTNode, call: cst.Call) -> bool:
    """`f.write(...)` inside `with open(path, "a") as f:`: a line appended to a log file."""
    func = call.func
    if not (
        isinstance(func, cst.Attribute)
        and func.attr.value == "write"
        and isinstance(func.value, cst.Name)
    ):
        return False
    handle = func.value.value
    for block in ctx.ancestors(stmt):
        if not isinstance(block, cst.With):
            continue
        for item in block.items:
            opened = item.item
            if (
                isinstance(item.asname, cst.AsName)
                and isinstance(item.asname.name, cst.Name)
                and item.asname.name.value == handle
                and isinstance(opened, cst.Call)
                and dotted_name(opened.func) == "open"
                and _appends(opened)
            ):
                return True
    return False


def _appends(opened: cst.Call) -> bool:
    """`open(path, "a")` / `open(path, mode="a+")`."""
    positional = [arg.value for arg in opened.args if arg.keyword is None]
    modes = [arg.value for arg in opened.args if arg.keyword and arg.keyword.value == "mode"]
    for value in [*positional[1:2], *modes]:
        text = value.evaluated_value if isinstance(value, cst.SimpleString) else None
        if isinstance(text, str) and "a" in text:
            return True
    return False


def _formats_a_name(node: cst.CSTNode) -> bool:
    """`f"{loss:.4f}"`, `"%.3f" % loss` or `"{:.3f}".format(loss)`: a name made text."""
    if isinstance(node, cst.FormattedStringExpression):
        return isinstance(node.expression, cst.Name)
    if isinstance(node, cst.BinaryOperation) and isinstance(node.operator, cst.Modulo):
        values = node.right.elements if isinstance(node.right, cst.Tuple) else [node.right]
        return isinstance(node.left, cst.SimpleString) and any(
            isinstance(v.value if isinstance(v, cst.BaseElement) else v, cst.Name) for v in values
        )
    return (
        isinstance(node, cst.Call)
        and isinstance(node.func, cst.Attribute)
        and node.func.attr.value == "format"
        and isinstance(node.func.value, cst.SimpleString)
        and any(isinstance(a.value, cst.Name) for a in node.args)
    )


def _log_every(
    ctx: SourceContext,
    stmt: cst.SimpleStatementLine,
    shown: cst.SimpleStatementLine | None = None,
) -> bool:
    """Puts `stmt` (as `shown`, when given) under `if step % LOG_EVERY == 0:`."""
    shown = stmt if shown is None else shown
    loop = enclosing_loop(ctx, stmt)
    block = ctx.parent(stmt)
    if loop is None or not isinstance(block, cst.IndentedBlock) or _over_entries(loop):
        return False
    guard = ctx.parent(block)
    if isinstance(guard, cst.If) and _periodic(guard):
        return False  # already periodic
    step = _step_counter(ctx, loop)
    if step is None and isinstance(loop, cst.For) and not _names_used(ctx, loop, "step"):
        # `for x, y in loader:` -> `for step, (x, y) in enumerate(loader):`
        step = "step"
        target = loop.target
        if isinstance(target, cst.Tuple) and not target.lpar:
            target = target.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
        counted = cst.Tuple(
            elements=[cst.Element(cst.Name("step")), cst.Element(target)], lpar=[], rpar=[]
        )
        enumerated = cst.Call(func=cst.Name("enumerate"), args=[cst.Arg(loop.iter)])
        ctx.replace(
            loop,
            lambda node: (
                node.with_changes(target=counted, iter=enumerated)
                if isinstance(node, cst.For)
                else node
            ),
        )
    if step is None:
        return False
    guarded = cst.If(
        test=cst.parse_expression(f"{step} % {LOG_EVERY} == 0"),
        body=cst.IndentedBlock(body=[shown.with_changes(leading_lines=[])]),
        leading_lines=stmt.leading_lines,
    )
    ctx.substitute(stmt, guarded)
    return True


def _value_test(node: cst.CSTNode) -> bool:
    return isinstance(node, cst.Call) and (dotted_name(node.func) or "").split(".")[-1] in {
        "isnan",
        "isinf",
        "isfinite",
    }


def _names_used(ctx: SourceContext, loop: cst.CSTNode, name: str) -> bool:
    scope = next((a for a in ctx.ancestors(loop) if isinstance(a, cst.FunctionDef)), ctx.module)
    for node in ctx.find(cst.Name, inside=scope, where=lambda n: n.value == name):
        parent = ctx.parent(node)
        if not (isinstance(parent, cst.Attribute) and parent.attr is node):
            return True
    return False


_PROGRESS_BARS = frozenset({"tqdm", "track"})


def _bound_value(ctx: SourceContext, name: cst.BaseExpression) -> cst.BaseExpression | None:
    """What a loop's iterable name was bound to, when one `with ... as name` or `name = ...`
    binds it (`with trange(total_steps) as pbar:` / `for step in pbar:`)."""
    if not isinstance(name, cst.Name):
        return None
    values = [
        item.item
        for item in ctx.find(cst.WithItem)
        if item.asname is not None
        and isinstance(item.asname.name, cst.Name)
        and item.asname.name.value == name.value
    ]
    values += [
        assign.value
        for assign in ctx.find(cst.Assign)
        if len(assign.targets) == 1
        and isinstance(assign.targets[0].target, cst.Name)
        and assign.targets[0].target.value == name.value
    ]
    return values[0] if len(values) == 1 else None


def _step_counter(ctx: SourceContext, loop: cst.For | cst.While) -> str | None:
    """The loop's step counter: `for step in range(...)`, `for i, b in enumerate(...)`, the
    same behind a progress bar (`tqdm(range(n))`, `trange(n)`), or a name incremented by one
    in the loop's own body (`global_step += 1`)."""
    if isinstance(loop, cst.For):
        source = _bound_value(ctx, loop.iter) or loop.iter  # `with trange(n) as pbar: ...`
        while (
            isinstance(source, cst.Call)
            and source.args
            and (dotted_name(source.func) or "").split(".")[-1] in _PROGRESS_BARS
        ):
            source = source.args[0].value  # tqdm.tqdm(range(n), desc=...) counts as range(n)
        func = source.func if isinstance(source, cst.Call) else None
        called = dotted_name(func) if func is not None else None
        if called is not None and called.split(".")[-1] == "trange":
            called = "range"
        if called == "range" and isinstance(loop.target, cst.Name):
            return loop.target.value
        if (
            called == "enumerate"
            and isinstance(loop.target, cst.Tuple)
            and loop.target.elements
            and isinstance(loop.target.elements[0].value, cst.Name)
        ):
            return loop.target.elements[0].value.value
    for aug in ctx.find(cst.AugAssign, inside=loop.body):
        line = ctx.parent(aug)
        if (
            isinstance(aug.operator, cst.AddAssign)
            and isinstance(aug.target, cst.Name)
            and isinstance(aug.value, cst.Integer)
            and aug.value.value == "1"
            and line is not None
            and ctx.parent(line) is loop.body  # on every pass, under no `if`
        ):
            return aug.target.value
    return None


def _weighted_item(value: cst.BaseExpression) -> cst.Call | None:
    """The one `.item()` of `x.item()`, `x.item() * n`, `n * x.item() / k`...: arithmetic in
    which the number can stay a tensor until the loop ends."""
    if isinstance(value, cst.BinaryOperation) and isinstance(
        value.operator, cst.Add | cst.Subtract | cst.Multiply | cst.Divide
    ):
        items = [n for n in descendants(value) if method_call(n, "item") is not None]
        if len(items) != 1:
            return None
        return _weighted_item(value.left) or _weighted_item(value.right)
    return method_call(value, "item")


def _grown_list(ctx: SourceContext, node: cst.CSTNode) -> str | None:
    """The list `losses.append(x.item())` / `losses += [x.item()]` grows."""
    if isinstance(node, cst.AugAssign):
        listed = _listed_item(ctx, node)
        return listed[0] if listed is not None else None
    if (
        isinstance(node, cst.Call)
        and method_call(node, "append")
        and len(node.args) == 1
        and method_call(node.args[0].value, "item")
        and isinstance(node.func, cst.Attribute)
    ):
        name = dotted_name(node.func.value)
        return name if name is not None and "." not in name else None
    return None


def _statement_of(ctx: SourceContext, node: cst.CSTNode) -> cst.CSTNode:
    for anc in ctx.ancestors(node):
        if isinstance(anc, cst.SimpleStatementLine | cst.BaseCompoundStatement):
            return anc
    return node


def _listed_item(ctx: SourceContext, aug: cst.AugAssign) -> tuple[str, cst.Call] | None:
    """`losses += [loss.item()]` where every binding of `losses` in the function is an empty
    list (`losses = []`): the list's append written as `+=` -> (losses, the `.item()` call).
    On a NumPy array the same `+=` adds elementwise, so the name must be seen to be a list."""
    if not (
        isinstance(aug.operator, cst.AddAssign)
        and isinstance(aug.target, cst.Name)
        and isinstance(aug.value, cst.List)
        and len(aug.value.elements) == 1
    ):
        return None
    item = method_call(aug.value.elements[0].value, "item")
    if item is None:
        return None
    name = aug.target.value
    bindings = [
        assign.value
        for assign in ctx.find(cst.Assign, inside=scope_of(ctx, aug))
        if any(dotted_name(t.target) == name for t in assign.targets)
    ]
    empty = [v for v in bindings if isinstance(v, cst.List) and not v.elements]
    if not bindings or len(empty) != len(bindings):
        return None
    return name, item


def _counts_matches(item: cst.Call) -> bool:
    """`(pred == y).sum().item()`, `pred.eq(y).sum().item()`: an integer count, read back with
    int() so that `f"{correct}/{total}"` still prints 9800/10000, not 9800.0/10000."""
    receiver = item.func.value if isinstance(item.func, cst.Attribute) else None
    summed = method_call(receiver, "sum") if receiver is not None else None
    if summed is None or summed.args or not isinstance(summed.func, cst.Attribute):
        return False
    counted = summed.func.value
    if isinstance(counted, cst.Comparison):
        return True
    return any(method_call(counted, m) is not None for m in ("eq", "ne", "lt", "le", "gt", "ge"))


def _read_every_step(
    ctx: SourceContext, name: str, loop: cst.For | cst.While, at: cst.CSTNode
) -> bool:
    """`name` is read inside the loop other than under a periodic `if` (`if i % log == 0:
    cur = total / log; print(...); total = 0`): such a read would sync where the `.item()`
    did. A periodic read syncs only on its steps, which is the point of the fix."""
    periodic = [
        node
        for node in ctx.find(cst.If, inside=loop.body)
        if _periodic(node) and enclosing_loop(ctx, node) is loop
    ]
    others = [*_appended_to(ctx, name, loop), *_accumulated_into(ctx, name, loop)]
    return name_is_read(ctx, name, loop.body, skip=[at, *periodic, *others])


def _accumulated_into(
    ctx: SourceContext, name: str, loop: cst.For | cst.While
) -> list[cst.AugAssign]:
    """The loop's other `name += x.item()`: a second term of the same total (DomainBed's
    MLDG adds both of its losses to `objective`) adds to it without reading it."""
    return [
        aug
        for aug in ctx.find(cst.AugAssign, inside=loop.body)
        if isinstance(aug.target, cst.Name)
        and aug.target.value == name
        and isinstance(aug.operator, cst.AddAssign)
        and _weighted_item(aug.value) is not None
    ]


def _appended_to(ctx: SourceContext, name: str, loop: cst.For | cst.While) -> list[cst.CSTNode]:
    """The receivers of `name.append(...)` in the loop: another append to the list (the same
    loss appended in both branches of an AMP `if`) adds to it without reading it."""
    return [
        call.func.value
        for call in ctx.find(cst.Call, inside=loop.body)
        if method_call(call, "append")
        and isinstance(call.func, cst.Attribute)
        and isinstance(call.func.value, cst.Name)
        and call.func.value.value == name
    ]


def _periodic(branch: cst.If) -> bool:
    return any(
        isinstance(n, cst.BinaryOperation) and isinstance(n.operator, cst.Modulo)
        for n in descendants(branch.test)
    )


def _accumulate(ctx: SourceContext, at: cst.CSTNode, name: str, item: cst.Call, back: str) -> bool:
    """`back` converts the accumulator after the loop: `float(total)` for a sum, which the
    periodic reads inside the loop get too (`print("loss", total / 100)` must print a number,
    not a tensor's repr), or a list comprehension, refused where the list is read inside the
    loop for more than its length (`np.mean(losses[-100:])` cannot take CUDA tensors)."""
    loop = enclosing_loop(ctx, at)
    if loop is None or item.args or not isinstance(item.func, cst.Attribute):
        return False
    if _read_every_step(ctx, name, loop, at):
        return False
    listed = back.startswith("[")
    reads = _reads_in_loop(ctx, name, loop, at)
    if listed and any(not _length_only(ctx, read) for read in reads):
        return False
    value = item.func.value
    if method_call(value, "detach") is not None:  # `loss.detach().item()`
        ctx.substitute(item, value)
    else:
        ctx.substitute(item, cst.Call(func=cst.Attribute(value=value, attr=cst.Name("detach"))))
    if not listed:
        for read in reads:
            ctx.substitute(read, cst.parse_expression(back))
    if not _converted_after(ctx, loop, name, back) and _read_outside(ctx, loop, name):
        ctx.insert_after(loop, f"{name} = {back}\n")
    return True


_SCOPE_READERS = frozenset({"locals", "vars", "eval", "exec"})


def _read_outside(ctx: SourceContext, loop: cst.For | cst.While, name: str) -> bool:
    """Whether anything but the loop may read the accumulator, so that it must be a number
    again after it: always for a module's global; for a function's local, only a read of it
    outside the loop (after it, in an enclosing loop's next round, a nested function). A
    `total_loss = float(total_loss)` at the end of a function that never reads it again is a
    dead store and one more sync (pytorch/examples' word language model)."""
    function = scope_of(ctx, loop)
    if not isinstance(function, cst.FunctionDef):
        return True
    shared = ctx.find(
        cst.Global | cst.Nonlocal,  # type: ignore[arg-type]
        inside=function,
        where=lambda n: any(alias.name.value == name for alias in n.names),
    )
    scope_read = ctx.find(
        cst.Call, inside=function, where=lambda n: dotted_name(n.func) in _SCOPE_READERS
    )
    return bool(shared or scope_read) or name_is_read(ctx, name, function, loop)


def _converted_after(ctx: SourceContext, loop: cst.For | cst.While, name: str, back: str) -> bool:
    """The statement after the loop already reads the accumulator back (`name = back`)."""
    block = ctx.parent(loop)
    body = list(getattr(block, "body", ()))
    after = (
        body[body.index(loop) + 1] if loop in body and body.index(loop) + 1 < len(body) else None
    )
    if not isinstance(after, cst.SimpleStatementLine):
        return False
    wanted = cst.parse_statement(f"{name} = {back}\n")
    return after.deep_equals(wanted)


def _reads_in_loop(
    ctx: SourceContext, name: str, loop: cst.For | cst.While, at: cst.CSTNode
) -> list[cst.Name]:
    """The reads of `name` in the loop's body other than in `at` (the periodic ones, once
    _read_every_step has ruled out the rest); a name rebound there is no read."""
    skipped = {id(n) for n in descendants(at)} | {id(n) for n in _appended_to(ctx, name, loop)}
    found = []
    for node in ctx.find(cst.Name, inside=loop.body, where=lambda n: n.value == name):
        parent = ctx.parent(node)
        if id(node) in skipped or isinstance(parent, cst.AssignTarget):
            continue
        if isinstance(parent, cst.AugAssign) and parent.target is node:
            continue
        if isinstance(parent, cst.Attribute) and parent.attr is node:
            continue
        found.append(node)
    return found


def _length_only(ctx: SourceContext, read: cst.Name) -> bool:
    """`len(losses)`: a read a list of tensors answers like a list of floats."""
    arg = ctx.parent(read)
    call = ctx.parent(arg) if isinstance(arg, cst.Arg) else None
    return isinstance(call, cst.Call) and dotted_name(call.func) == "len"


def _list_read_in_loop(ctx: SourceContext, at: cst.CSTNode, name: str) -> cst.Name | None:
    """A read of the list `name` inside the loop around `at` beyond its length."""
    loop = enclosing_loop(ctx, at)
    if loop is None:
        return None
    return next(
        (read for read in _reads_in_loop(ctx, name, loop, at) if not _length_only(ctx, read)),
        None,
    )
