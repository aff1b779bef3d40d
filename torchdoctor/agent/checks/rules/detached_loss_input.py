"""detached-loss-input: the model output reaches a backpropagated loss through detach/.data."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.analysis.optimizers import parameter_owners
from torchdoctor.agent.checks.analysis.vocabulary import PASSTHROUGH_METHODS, SYMMETRIC_LOSSES
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.dataflow import first_argument, kwarg
from torchdoctor.agent.checks.loops import is_optimizer_step, walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

_CUTS = frozenset({"detach", "item", "numpy", "tolist"})
_REDUCTIONS = frozenset({"mean", "sum"})


class DetachedLossInput(Rule):
    """Detects a loss whose prediction (its first argument) is a model's output cut from the
    autograd graph — `criterion(model(x).detach(), y)`, `out = model(x).data` then
    `criterion(out, y)`, `.item()`/`.numpy()` on the way — when that loss is backpropagated
    (`.backward()` on it or on a sum that contains it).

    Why it matters: `detach()` and `.data` return a tensor with no history. The loss is
    computed and logged as usual, but no gradient reaches the model's parameters through it:
    the model is silently not trained by this term (or `backward()` fails with "does not
    require grad" when it was the only one).

    A loss turned into a Python number (`adv = adv.detach().item()`) and then added to the
    back-propagated sum (`loss = l1 + adv`) is reported too, and so is a term of that sum
    detached from its graph (`pg = torch.max(a, b).mean().detach()`, then `loss = pg - c *
    ent`): the term changes the value but gives no gradient.

    Either argument of a symmetric regression loss (`F.mse_loss(returns, values.detach())`,
    written target first) counts as its prediction.

    Not reported: a detached input to another model (`D(G(z).detach())`, the GAN
    discriminator step), a detached target (`criterion(student(x), teacher(x).detach())`,
    stop-gradient in SimSiam/BYOL), losses computed for logging and never backpropagated, and
    values that are not a model's output (`quantized.detach()` in a VQ commitment loss), a
    detached factor of a product (`logp * advantage.detach()`, a stop-gradient weight), and a
    detached first argument when another argument is an attached model output (the target
    written first: `F.mse_loss(target_q.detach(), q)`).

    A model's output is also what a method of a model returns (`self.policy.evaluate(s, a)`,
    PPO's critic values among its results), through tuple unpacking and value-keeping calls.

    The model an update trains is cut too when the loss reaches it only through a cut: the
    generator step of a GAN whose fake batch was detached (`fake = G(z).detach()` or
    `D(fake.data)`, then `g_loss = D(fake).mean()`, `g_loss.backward()`, `opt_G.step()` with
    `opt_G` built over `G.parameters()`, also through `filter(lambda p: p.requires_grad,
    G.parameters())` or `list(...)`). The backward runs (through D), the step runs, and G
    never learns. Reported at the cut, when every path from that model's calls to the loss
    goes through one; a step whose model reaches the loss attached (the discriminator step
    with `D(fake.detach())`) is the idiom, not a bug. The walk follows a loss a local helper
    computes and returns (`loss_pi, info = compute_loss_pi(data)` in a closure of the
    algorithm's function), and a term of the back-propagated sum that reaches the model only
    through a cut is reported even when another term reaches it attached (a vocoder GAN's
    adversarial terms on `mpd(y, y_g_hat.detach())` beside its attached mel term), and so is
    an input of a criterion given several (`generator_criterion(fake_out, fake_img, real_img)`)
    that reaches the model only through a cut another network is called on (`fake_out =
    netD(fake_img.detach()).mean()` in SRGAN's generator step). Not reported there: an input
    cut itself (`criterion(p1, z2.detach())`, SimSiam's stop-gradient target).

    A distribution's `sample()` on the way from the trained model to a term counts as a
    cut: soft actor-critic's `action = dist.sample()` scored by the critic (`actor_q =
    critic(obs, action)`, the `-Q` term of the actor's loss) carries no gradient back to the
    actor; `rsample()` does. A term of a reduced sum (`(alpha * log_prob - actor_q).mean()`)
    counts as a term. Not reported: a sample scored through its own log-probability
    (REINFORCE, PPO: the gradient flows through `log_prob`), a replay buffer's `sample()`.

    A loss accumulated into a sum that other losses join attached (`total += intent_loss
    .item()` beside `total += coef * slot_loss`) adds value but no gradient: that term is
    reported (an accumulator of numbers only is a log, not a loss).

    Also reported, in a module's `forward`: a `.detach()` of a value computed from a layer
    or parameter the class builds itself (`nn.Linear`, `nn.Conv*`, `nn.Parameter`) that its
    methods read nowhere else (`p_gen = torch.sigmoid(self.p_gen_linear(h)).detach()`, a
    pointer-generator's switch; SimGNN's `torch.tanh(x @ self.weight_matrix).detach()`): no
    loss can give that weight a gradient, so it keeps its initial values. Not a weight also
    read attached, one built with `requires_grad=False`, an embedding table (pretrained
    vectors are frozen that way), a sub-network (a teacher or EMA target encoder), or an
    input detached before a layer.

    Example:
        output = model(x)
        loss = criterion(output.detach(), y)
        loss.backward()

    Fix: pass the attached output (`criterion(output, y)`); detach only what is logged or
    stored.
    """

    id = "detached-loss-input"
    point = 3
    severity = Severity.HIGH
    title = "Loss computed on a detached model output"
    items: ClassVar[tuple[str, ...]] = ("3.3",)
    triggers = Triggers(("backward", ".item()", "float(", ".detach()"))

    def applies(self, ctx: ModuleContext) -> bool:
        text = ctx.source
        cuts = ("detach", ".data", ".item()", "float(")
        return "backward" in text and any(cut in text for cut in cuts)

    def finish(self, ctx: ModuleContext) -> None:
        if ".detach()" in ctx.source and "forward" in ctx.source:
            for detaching, attribute in _parameters_only_detached(ctx):
                ctx.report(
                    self,
                    detaching,
                    f"`{ast.unparse(detaching)}` cuts the only path from `self.{attribute}` to "
                    "what this module returns: no loss gives it a gradient, so it never trains "
                    "(it keeps its initial values)",
                    data={"cut_line": detaching.lineno, "cut": ast.unparse(detaching)},
                )
        if ".item()" in ctx.source or "float(" in ctx.source:
            for number, total in _numbers_in_attached_sums(ctx):
                ctx.report(
                    self,
                    number,
                    f"`{ast.unparse(number)}` is added to `{total}` as a Python number, beside "
                    f"loss terms `{total}` keeps in the graph: it changes the value but gives no "
                    "gradient, so this term trains nothing",
                    data={"cut_line": number.lineno, "cut": ast.unparse(number)},
                )
        if not self.applies(ctx) or not ctx.flow.has_backward():
            return  # a loss is reported only when it reaches a backward call
        flow = ctx.flow
        reported: set[int] = set()
        for call in flow.nodes(ast.Call):
            if not _is_loss(ctx, call) or flow.grad_disabled_at(call):
                continue
            found = _detached_prediction(ctx, call)
            if found is None:
                continue
            prediction, detached = found
            if not _backpropagated(ctx, call):
                continue
            reported.add(detached.lineno)
            ctx.report(
                self,
                call,
                f"the loss receives `{ast.unparse(prediction)}`, the model's output cut from "
                f"the graph by `{ast.unparse(detached)}` (line {detached.lineno}): no gradient "
                "reaches the model through this loss",
                data={"cut_line": detached.lineno, "cut": ast.unparse(detached)},
            )
        for node in flow.nodes(ast.BinOp):
            if not isinstance(node.op, ast.Add | ast.Sub) or isinstance(
                ctx.parents.get(node), ast.BinOp
            ):
                continue  # the outermost sum only
            if flow.grad_disabled_at(node) or not _backpropagated(ctx, node):
                continue
            cuts = [
                (term, cut, "is cut from the graph here")
                for term in _additive_terms(ctx, node)
                if (cut := _detached_term(ctx, term)) is not None
            ] + [
                (term, cut, "is a loss turned into a Python number here")
                for term in _named_terms(node)
                if (cut := _loss_turned_number(ctx, term)) is not None
            ]
            for term, cut, how in cuts:
                reported.add(cut.lineno)
                ctx.report(
                    self,
                    cut,
                    f"`{term.id}` {how} (`{ast.unparse(cut)}`), then added to the loss "
                    f"back-propagated on line {node.lineno}: it adds to the value but no "
                    "gradient, so this term trains nothing",
                    data={"sum_line": node.lineno, "cut_line": cut.lineno, "cut": ast.unparse(cut)},
                )
        for cut, model, step, partial in _stepped_model_cut(ctx):
            if cut.lineno in reported:
                continue  # the loss itself was reported at this cut
            drawn = isinstance(cut, ast.Call) and ast.unparse(cut.func).endswith(".sample")
            message = (
                f"`{model}` is trained by the step on line {step.lineno}, but a term of the loss "
                f"back-propagated before it reaches `{model}` only through `{ast.unparse(cut)}`: "
                "that term gives it no gradient, so it trains nothing"
                if partial
                else f"`{model}` is trained by the step on line {step.lineno}, but its output "
                f"reaches the loss back-propagated before it only through `{ast.unparse(cut)}`: "
                f"no gradient reaches `{model}`, so this update never changes it"
            ) + (" (draw with `rsample()` to keep the path through the sample)" if drawn else "")
            ctx.report(self, cut, message, data={"cut_line": cut.lineno, "cut": ast.unparse(cut)})


def _detached_prediction(ctx: ModuleContext, call: ast.Call) -> tuple[ast.expr, ast.expr] | None:
    """The loss's prediction and the cut that detached it: the first argument, or either
    one of a symmetric regression loss (`F.mse_loss(returns, values.detach())`), unless the
    other argument is an attached model output (then the detached one is the target)."""
    candidates = [first_argument(call, "input")]
    if _symmetric(ctx, call):
        target = kwarg(call, "target")
        if target is None and len(call.args) > 1:
            target = call.args[1]
        candidates.append(target)
    for prediction in candidates:
        if prediction is None:
            continue
        cut = _cut_model_output(ctx, prediction)
        if cut is not None and not _attached_other(ctx, call, prediction):
            return prediction, cut
    return None


def _symmetric(ctx: ModuleContext, call: ast.Call) -> bool:
    qual = ctx.flow.qualname_of(call) or ctx.flow.constructed_as(call.func)
    return qual in SYMMETRIC_LOSSES


def _is_loss(ctx: ModuleContext, call: ast.Call) -> bool:
    """A loss function or criterion, not a model's own method (`D.compute_loss(fake.detach())`
    feeds the detached value to the discriminator)."""
    func = call.func
    if not ctx.flow.is_loss_callee(func):
        return False
    if isinstance(func, ast.Attribute) and ctx.qualname(func) is None:
        owner = func.value
        return (isinstance(owner, ast.Name) and owner.id == "self") or (
            ctx.flow.loss_class(func) is not None
        )
    return True


def _strip(expr: ast.expr) -> ast.expr:
    """`x[idx].cpu().float()` -> `x`: indexing and methods that keep the graph state."""
    while True:
        if isinstance(expr, ast.Subscript):
            expr = expr.value
        elif (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Attribute)
            and expr.func.attr in PASSTHROUGH_METHODS
        ):
            expr = expr.func.value
        else:
            return expr


def _cut_model_output(ctx: ModuleContext, prediction: ast.expr) -> ast.expr | None:
    """The `.detach()`/`.data` expression through which a model's output became
    `prediction` (through names and value-keeping methods), if any."""
    flow = ctx.flow
    for source in flow.sources(_strip(prediction)):
        source = _strip(source)
        receiver: ast.expr | None = None
        if isinstance(source, ast.Attribute) and source.attr == "data":
            receiver = source.value
        elif (
            isinstance(source, ast.Call)
            and isinstance(source.func, ast.Attribute)
            and source.func.attr in _CUTS
            and not source.args
        ):
            receiver = source.func.value
        if receiver is None:
            continue
        if _model_output(ctx, _strip(receiver)):
            return source
    return None


def _attached_other(ctx: ModuleContext, call: ast.Call, prediction: ast.expr) -> bool:
    """Another argument of the loss is a model's output still in its graph: the detached one
    is the target, written first (`F.mse_loss(target_q.detach(), q)`)."""
    others = [a for a in [*call.args, *(k.value for k in call.keywords)] if a is not prediction]
    return any(_model_output(ctx, other) for other in others)


def _model_output(ctx: ModuleContext, value: ast.expr) -> bool:
    """`value` holds what a model computed: a model call, or a method of a local model
    (`self.policy.evaluate(s, a)`, PPO's critic values among what it returns), through names,
    tuple unpacking and views (`torch.squeeze(v)`) - the flow's graph origin."""
    return ctx.flow.graph_origin(value) == "output"


def _backpropagated(ctx: ModuleContext, call: ast.expr) -> bool:
    """Whether the loss `call` computes (or a sum of losses) reaches a `.backward()`:
    directly (`criterion(...).backward()`) or through the names its statement binds."""
    parent = ctx.parents.get(call)
    if isinstance(parent, ast.Attribute) and parent.attr == "backward":
        return True
    statement = parent
    while statement is not None and not isinstance(statement, ast.stmt):
        statement = ctx.parents.get(statement)
    targets: list[ast.expr] = []
    if isinstance(statement, ast.Assign):
        targets = list(statement.targets)
    elif isinstance(statement, ast.AugAssign | ast.AnnAssign):
        targets = [statement.target]
    function = ctx.enclosing_function(call)
    return any(ctx.flow.is_backpropagated(t, within=_where_it_lives(function, t)) for t in targets)


def _where_it_lives(function: ast.AST | None, target: ast.expr) -> ast.AST | None:
    """Where a backward on `target` must be: its own function for a local name the function
    does not return (`vali()`'s `loss` is not `train()`'s); anywhere for an attribute or a
    returned value, which other code may back-propagate."""
    if function is None or not isinstance(target, ast.Name):
        return None
    returned = any(
        isinstance(node, ast.Return)
        and node.value is not None
        and any(isinstance(n, ast.Name) and n.id == target.id for n in walk_tree(node.value))
        for node in walk_tree(function)
    )
    return None if returned else function


def _named_terms(node: ast.expr) -> list[ast.Name]:
    """The names a sum is made of, through its arithmetic (`l1 + lam * adv` -> l1, adv)."""
    if isinstance(node, ast.BinOp):
        return [*_named_terms(node.left), *_named_terms(node.right)]
    if isinstance(node, ast.UnaryOp):
        return _named_terms(node.operand)
    return [node] if isinstance(node, ast.Name) else []


def _additive_terms(ctx: ModuleContext, node: ast.expr) -> list[ast.Name]:
    """The names a sum adds or subtracts, each alone or scaled by a factor that holds no
    graph (`pg - 0.01 * ent + v * vf_coef` -> pg, ent, v); not the factors of a product of
    two graphs (`logp * adv.detach()`: a stop-gradient weight)."""
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add | ast.Sub):
        return [*_additive_terms(ctx, node.left), *_additive_terms(ctx, node.right)]
    if isinstance(node, ast.UnaryOp):
        return _additive_terms(ctx, node.operand)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult | ast.Div):
        sides = [(node.left, node.right), (node.right, node.left)]
        if isinstance(node.op, ast.Div):
            sides = sides[:1]
        return [
            term
            for term, factor in sides
            if isinstance(term, ast.Name) and ctx.flow.graph_origin(factor) is None
        ]
    return [node] if isinstance(node, ast.Name) else []


def _detached_term(ctx: ModuleContext, term: ast.Name) -> ast.expr | None:
    """The `.detach()`/`.data` binding of `term` when every binding that reaches this read
    cuts a value that held a graph (`pg_loss = torch.max(a, b).mean().detach()`)."""
    live = ctx.flow.live_definitions(term)
    cuts: list[ast.expr] = []
    for value in live:
        if isinstance(value, ast.Attribute) and value.attr == "data":
            receiver = value.value
        elif (
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and value.func.attr == "detach"
            and not value.args
        ):
            receiver = value.func.value
        else:
            return None
        if ctx.flow.graph_origin(_strip(receiver)) is None:
            return None
        cuts.append(value)
    return cuts[0] if cuts else None


def _loss_turned_number(ctx: ModuleContext, term: ast.Name) -> ast.Call | None:
    """The `.item()`/`float()` binding of `term`, when every binding that reaches this read
    is such a number made from a loss, or a constant (`adv = 0` when the branch is off)."""
    live = ctx.flow.live_definitions(term)
    numbers = [v for v in live if isinstance(v, ast.Call) and _number_source(v) is not None]
    if not numbers or any(
        not isinstance(v, ast.Constant) for v in live if not any(v is n for n in numbers)
    ):
        return None
    for number in numbers:
        source = _number_source(number)
        if source is not None and ctx.flow.graph_origin(source) == "loss":
            return number
    return None


def _number_source(call: ast.Call) -> ast.expr | None:
    """`x` in `x.item()`, `x.detach().item()`, `x.detach().cpu().item()`, `float(x)`."""
    func = call.func
    if isinstance(func, ast.Name) and func.id == "float" and len(call.args) == 1:
        source = call.args[0]
    elif isinstance(func, ast.Attribute) and func.attr == "item" and not call.args:
        source = func.value
    else:
        return None
    while (
        isinstance(source, ast.Call)
        and isinstance(source.func, ast.Attribute)
        and source.func.attr in ("detach", "cpu", "clone")
    ):
        source = source.func.value
    return source


_MAX_WALK = 400


def _stepped_model_cut(ctx: ModuleContext) -> list[tuple[ast.expr, str, ast.Call, bool]]:
    """(cut, model, step, partial) for each `loss.backward()` whose next optimizer step (same
    function) trains a model (`opt = Adam(G.parameters())`) that the loss reaches only
    through `.detach()`/`.data` (`partial`: only a term or input of the loss does, the rest
    reaches the model attached)."""
    flow = ctx.flow
    found: list[tuple[ast.expr, str, ast.Call, bool]] = []
    calls = flow.nodes(ast.Call)
    steps = [c for c in calls if is_optimizer_step(c) and isinstance(c.func, ast.Attribute)]
    for call in calls:
        func = call.func
        if not (isinstance(func, ast.Attribute) and func.attr == "backward"):
            continue
        scope = ctx.enclosing_function(call)
        after = [
            s
            for s in steps
            if ctx.enclosing_function(s) is scope
            and (s.lineno, s.col_offset) > (call.lineno, call.col_offset)
        ]
        if not after:
            continue
        step = min(after, key=lambda s: (s.lineno, s.col_offset))
        model = _stepped_model(ctx, step)
        if model is None:
            continue
        attached, cuts = _paths_to_model(ctx, func.value, model)
        if attached:
            cuts = _cut_terms(ctx, func.value, model)
        if cuts:
            here = (call.lineno, call.col_offset)
            before = [c for c in cuts if (c.lineno, c.col_offset) < here]
            found.append(
                (
                    max(before, key=lambda c: (c.lineno, c.col_offset)) if before else cuts[0],
                    model,
                    step,
                    attached,
                )
            )
    return found


def _cut_terms(ctx: ModuleContext, loss: ast.expr, model: str) -> list[ast.expr]:
    """The cuts of the terms of a back-propagated sum that reach `model` only through one,
    when other terms reach it attached (HiFi-GAN's generator step with `mpd(y,
    y_g_hat.detach())`: the adversarial and feature-matching terms train nothing, the mel
    term still trains the generator)."""
    if not isinstance(loss, ast.Name):
        return []
    total = ctx.flow.reaching(loss)
    if isinstance(total, ast.Call) and _is_loss(ctx, total):
        return _judged_cut_inputs(ctx, total, model)
    while (
        isinstance(total, ast.Call)
        and isinstance(total.func, ast.Attribute)
        and total.func.attr in _REDUCTIONS
        and not total.args
        and not total.keywords
    ):
        total = total.func.value  # `(alpha * log_prob - q).mean()`: the sum it reduces
    if not (isinstance(total, ast.BinOp) and isinstance(total.op, ast.Add | ast.Sub)):
        return []
    cuts: list[ast.expr] = []
    for term in _additive_terms(ctx, total):
        attached, term_cuts = _paths_to_model(ctx, term, model)
        if not attached:
            cuts += [c for c in term_cuts if not any(c is known for known in cuts)]
    return cuts


def _judged_cut_inputs(ctx: ModuleContext, loss: ast.Call, model: str) -> list[ast.expr]:
    """The cuts of the inputs of a criterion given several (SRGAN's `generator_criterion(
    fake_out, fake_img, real_img)`, each input a term of the loss it computes) that reach
    `model` only through a cut another network is then called on (`fake_out =
    netD(fake_img.detach()).mean()`): the discriminator's verdict on a detached fake gives
    the generator no gradient. A cut input itself (`criterion(p1, z2.detach())`, SimSiam's
    stop-gradient target) is the idiom, and is left alone."""
    inputs = [*loss.args, *(k.value for k in loss.keywords)]
    if len(inputs) < 2:
        return []
    cuts: list[ast.expr] = []
    for value in inputs:
        attached, value_cuts = _paths_to_model(ctx, value, model)
        if attached or not value_cuts:
            continue
        if all(_judged_by_another_network(ctx, cut, model) for cut in value_cuts):
            cuts += [c for c in value_cuts if not any(c is known for known in cuts)]
    return cuts


def _judged_by_another_network(ctx: ModuleContext, cut: ast.expr, model: str) -> bool:
    """`cut` is an argument of a call of a network other than `model` (`netD(x.detach())`)."""
    call = ctx.parents.get(cut)
    return (
        isinstance(call, ast.Call)
        and any(arg is cut for arg in call.args)
        and ast.unparse(call.func) != model
        and _model_output(ctx, call)
    )


def _stepped_model(ctx: ModuleContext, step: ast.Call) -> str | None:
    """`G` for `opt_G.step()` when `opt_G` is built over `G.parameters()` alone (also
    through `filter(lambda p: p.requires_grad, G.parameters())`, `list(...)`)."""
    assert isinstance(step.func, ast.Attribute)
    owners: set[str] = set()
    for cons in ctx.flow.constructors(step.func.value):
        params = cons.args[0] if cons.args else kwarg(cons, "params")
        found = parameter_owners(params, ast.unparse) if params is not None else None
        if found is not None:
            owners |= found
    return owners.pop() if len(owners) == 1 else None


def _cut_of(node: ast.expr) -> ast.expr | None:
    """The value a cut (`x.detach()`, `x.data`, a distribution's `dist.sample()`) is taken
    of, else None. `sample()` draws without the reparameterisation trick: a value that a
    critic then scores (`action = dist.sample()`, `q = critic(obs, action)`) carries no
    gradient back to the policy that made `dist`; `rsample()` does. It counts only on a path
    from a loss to the model a step trains, so a replay buffer's `sample()` never does."""
    if isinstance(node, ast.Attribute) and node.attr == "data":
        return node.value
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr in ("detach", "sample")
        and not node.args
        and not node.keywords
    ):
        return node.func.value
    return None


def _paths_to_model(ctx: ModuleContext, loss: ast.expr, model: str) -> tuple[bool, list[ast.expr]]:
    """(some call of `model` reaches `loss` attached, the cuts the others pass through):
    a walk back from the loss through sub-expressions and the bindings of names."""
    attached = False
    cuts: list[ast.expr] = []
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[ast.expr, ast.expr | None]] = [(loss, None)]
    while stack and len(seen) < _MAX_WALK:
        node, cut = stack.pop()
        key = (id(node), id(cut))
        if key in seen:
            continue
        seen.add(key)
        if isinstance(node, ast.Call) and ast.unparse(node.func) == model:
            if cut is None:
                attached = True
            elif not any(c is cut for c in cuts):
                cuts.append(cut)
            continue
        if isinstance(node, ast.Name | ast.Attribute) and ast.unparse(node) == model:
            attached = True  # the model itself handed on (`compute_loss(model, x)`): unknown
            continue
        inner = _cut_of(node)
        if inner is not None:
            stack.append((inner, cut if cut is not None else node))
            continue
        if isinstance(node, ast.Name):
            returned = _unpacked_returns(ctx, node)
            if returned:
                stack.extend((value, cut) for value in returned)
                continue
            reached = ctx.flow.reaching(node)  # the binding that runs first on every path
            values = [reached] if reached is not None else ctx.flow.live_definitions(node)
            stack.extend((value, cut) for value in values)
            if any(isinstance(value, ast.List) for value in values):
                stack.extend((value, cut) for value in _appended(ctx, node))
            continue
        children: list[ast.expr] = []
        if isinstance(node, ast.Call):
            # a local helper computes the loss (`loss_pi = compute_loss_pi(data)`): what it
            # returns, besides the arguments its parameters stand for
            stack.extend((value, cut) for value in ctx.flow.returns_of(node))
            children = [*node.args, *(k.value for k in node.keywords)]
            if isinstance(node.func, ast.Attribute):
                children.append(node.func.value)  # `out.mean()` reads `out`
        elif not isinstance(node, ast.Lambda):
            children = [c for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr)]
        stack.extend((child, cut) for child in children)
    return attached, cuts


def _appended(ctx: ModuleContext, name: ast.Name) -> list[ast.expr]:
    """What the function around `name` appends to the list it names (`log_probs.append(
    dist.log_prob(action))` over a rollout, then `torch.cat(log_probs)`): a list's items."""
    scope = ctx.enclosing_function(name)
    return [
        arg
        for call in ctx.flow.calls_named(("append", "extend"))
        if isinstance(call.func, ast.Attribute)
        and isinstance(call.func.value, ast.Name)
        and call.func.value.id == name.id
        and ctx.enclosing_function(call) is scope
        for arg in call.args
    ]


def _unpacked_returns(ctx: ModuleContext, name: ast.Name) -> list[ast.expr]:
    """What a local helper returns in the position `name` unpacks (`loss_pi, info =
    compute_loss_pi(data)` -> the first element of each `return loss_pi, pi_info`), with the
    call's arguments its parameters stand for; [] when `name` is not unpacked from such a
    call or a return has another shape."""
    found: list[ast.expr] = []
    for value, position, arity in ctx.flow.unpackings(name):
        returns = ctx.flow.returns_of(value) if isinstance(value, ast.Call) else []
        if not returns:
            return []
        for returned in returns:
            if not (isinstance(returned, ast.Tuple) and len(returned.elts) == arity):
                return []
            found.append(returned.elts[position])
        assert isinstance(value, ast.Call)
        found += [*value.args, *(k.value for k in value.keywords)]
    return found


def _numbers_in_attached_sums(ctx: ModuleContext) -> list[tuple[ast.Call, str]]:
    """(`loss.item()`, accumulator) for each `acc += <loss>.item()` in a function whose other
    `acc += ...` add a loss still in its graph."""
    by_target: dict[tuple[int, str], list[ast.expr]] = {}
    for node in ctx.flow.nodes(ast.AugAssign):
        if isinstance(node.op, ast.Add) and isinstance(node.target, ast.Name | ast.Attribute):
            scope = ctx.enclosing_function(node)
            key = (id(scope), ast.unparse(node.target))
            by_target.setdefault(key, []).append(node.value)
    found: list[tuple[ast.Call, str]] = []
    for (_, total), values in by_target.items():
        numbers: list[ast.Call] = []
        for value in values:
            source = _number_source(value) if isinstance(value, ast.Call) else None
            if source is not None and ctx.flow.graph_origin(source) == "loss":
                numbers.append(value)  # type: ignore[arg-type]
        if numbers and any(ctx.flow.graph_origin(v) == "loss" for v in values):
            found.extend((number, total) for number in numbers)
    return found


# Layers and parameters a module owns directly: a learned weight, not a network of its own
# (a frozen teacher or an EMA target encoder is detached on purpose), nor an embedding table
# (pretrained vectors are frozen that way).
_OWN_WEIGHTS = frozenset(
    {"Parameter", "Linear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "LazyLinear"}
)
_INIT_CALL = ("torch.nn.init.", "nn.init.", "init.")


def _parameters_only_detached(ctx: ModuleContext) -> list[tuple[ast.Call, str]]:
    """`p_gen = F.sigmoid(self.p_gen_linear(x)).detach()` in a module's `forward`, where
    `self.p_gen_linear` is a layer or parameter the class builds (`nn.Linear`,
    `nn.Parameter`) that no other method reads (but to initialise it), that the detached
    value is computed from, and that what `forward` returns depends on only through
    detaches, while it does depend on the detached value: its weights never receive a
    gradient. (the detach call, the attribute)"""
    found: list[tuple[ast.Call, str]] = []
    for cls in ctx.flow.nodes(ast.ClassDef):
        owned = _owned_weights(cls)
        if not owned:
            continue
        forward = next(
            (f for f in cls.body if isinstance(f, ast.FunctionDef) and f.name == "forward"), None
        )
        if forward is None:
            continue
        owned -= _read_outside(cls, forward, owned)
        if not owned:
            continue
        returned = [r.value for r in walk_scope(forward.body) if isinstance(r, ast.Return)]
        attached, detaches = _slice(ctx, [v for v in returned if v is not None], forward)
        for node in detaches:
            if not isinstance(node.func, ast.Attribute):
                continue
            cut, _ = _slice(ctx, [node.func.value], forward, before=node.lineno)
            for attribute in sorted((cut & owned) - attached):
                found.append((node, attribute))
                break
    return found


def _read_outside(cls: ast.ClassDef, forward: ast.FunctionDef, owned: set[str]) -> set[str]:
    """The attributes of `owned` a method other than `__init__` and `forward` reads, outside
    `torch.nn.init.*(...)` calls (setting a weight up is no use of it)."""
    read: set[str] = set()
    for method in cls.body:
        if not isinstance(method, ast.FunctionDef) or method.name in ("__init__", "forward"):
            continue
        skipped: set[int] = set()
        for node in walk_tree(method):
            if isinstance(node, ast.Call) and ast.unparse(node.func).startswith(_INIT_CALL):
                skipped.update(id(n) for n in walk_tree(node))
            if id(node) in skipped:
                continue
            attribute = _self_reads(node, owned)
            if attribute is not None:
                read.add(attribute)
    return read


def _slice(
    ctx: ModuleContext, roots: list[ast.expr], function: ast.FunctionDef, before: int = 0
) -> tuple[set[str], list[ast.Call]]:
    """The `self` attributes what `roots` computes reads, following the local names bound in
    `function` (every binding that may reach; with `before`, only bindings on earlier
    lines), not through `.detach()` calls; and the detach calls met on the way."""
    attributes: set[str] = set()
    detaches: list[ast.Call] = []
    seen: set[int] = set()
    todo: list[ast.AST] = list(roots)
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if (
            isinstance(current, ast.Call)
            and isinstance(current.func, ast.Attribute)
            and current.func.attr == "detach"
            and not current.args
        ):
            detaches.append(current)
            continue
        if (
            isinstance(current, ast.Attribute)
            and isinstance(current.value, ast.Name)
            and current.value.id == "self"
        ):
            attributes.add(current.attr)
        if isinstance(current, ast.Name) and isinstance(current.ctx, ast.Load):
            values = [
                v
                for v in ctx.flow.reaching_or_all(current)
                if ctx.enclosing_function(v) is function and (not before or v.lineno < before)
            ]
            todo.extend(v for v in values if not _killed(ctx, v, values, current))
        todo.extend(ast.iter_child_nodes(current))
    return attributes, detaches


def _killed(ctx: ModuleContext, value: ast.expr, values: list[ast.expr], use: ast.Name) -> bool:
    """A later binding of the same name in the same statement list always runs between
    `value`'s binding and `use` (`p_gen = self.p_gen_linear(x)`, then `p_gen =
    torch.sigmoid(p_gen).detach()`, then `return p_gen`): `value` cannot reach `use`."""
    statement = ctx.parents.get(value)
    block = ctx.parents.get(statement) if statement is not None else None
    if not isinstance(statement, ast.stmt) or block is None:
        return False
    for other in values:
        later = ctx.parents.get(other)
        if not isinstance(later, ast.stmt) or later is statement:
            continue
        if ctx.parents.get(later) is not block:
            continue
        for body in (getattr(block, "body", []), getattr(block, "orelse", [])):
            if statement in body and later in body and body.index(later) > body.index(statement):
                start = statement.end_lineno or statement.lineno
                if not start < use.lineno <= (later.end_lineno or later.lineno):
                    return True
    return False


def _owned_weights(cls: ast.ClassDef) -> set[str]:
    owned = set()
    for node in walk_tree(cls):
        if not (isinstance(node, ast.Assign) and isinstance(node.value, ast.Call)):
            continue
        func = node.value.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name not in _OWN_WEIGHTS or any(
            k.arg == "requires_grad" and isinstance(k.value, ast.Constant) and not k.value.value
            for k in node.value.keywords
        ):
            continue  # frozen on purpose: `nn.Parameter(table, requires_grad=False)`
        for target in node.targets:
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                owned.add(target.attr)
    return owned


def _self_reads(node: ast.AST, owned: set[str]) -> str | None:
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Load)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and node.attr in owned
    ):
        return node.attr
    return None
