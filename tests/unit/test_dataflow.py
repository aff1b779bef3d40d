"""The data-flow analysis rules rely on: def-use, graph attachment, held-out derivation,
producers, save provenance, accumulations and mode reachability."""

from __future__ import annotations

import ast
import textwrap
import time

import pytest

from torchdoctor.agent.checks.analysis.meters import accumulating_methods
from torchdoctor.agent.checks.base import ModuleContext
from torchdoctor.agent.checks.dataflow import DataFlow, held_out_name_kind, module_level


def flow_of(source: str) -> DataFlow:
    """A DataFlow over `source`, with imports and parents recorded as the engine does."""
    text = textwrap.dedent(source)
    tree = ast.parse(text)
    ctx = ModuleContext(path="m.py", source=text, tree=tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            ctx.imports.add(node)
        for child in ast.iter_child_nodes(node):
            ctx.parents[child] = node
    return ctx.flow


def expr_at(flow: DataFlow, text: str) -> ast.expr:
    """The first expression node whose source text is `text` (the last one bound, for names)."""
    matches = [
        n for n in ast.walk(flow.ctx.tree) if isinstance(n, ast.expr) and ast.unparse(n) == text
    ]
    assert matches, f"{text!r} not in the module"
    return max(matches, key=lambda n: (n.lineno, n.col_offset))


def call_of(flow: DataFlow, name: str) -> ast.Call:
    calls = [
        n
        for n in ast.walk(flow.ctx.tree)
        if isinstance(n, ast.Call) and ast.unparse(n.func) == name
    ]
    assert calls, f"no call of {name}"
    return calls[0]


# ---- def-use (the original API) ----------------------------------------------------------


def test_definitions_resolve_function_locals_then_module_names() -> None:
    flow = flow_of(
        """
        import torch.nn as nn
        crit = nn.CrossEntropyLoss()
        def step(x):
            model = nn.Linear(2, 2)
            return crit(model(x), 0)
        """
    )
    assert flow.constructed_as(expr_at(flow, "crit")) == "torch.nn.CrossEntropyLoss"
    assert flow.constructed_as(expr_at(flow, "model")) == "torch.nn.Linear"


def test_self_attributes_resolve_across_methods() -> None:
    flow = flow_of(
        """
        from torch.nn import CrossEntropyLoss as CE
        class T:
            def __init__(self):
                self.criterion = CE()
            def step(self, out, y):
                return self.criterion(out, y)
        """
    )
    assert flow.loss_class(expr_at(flow, "self.criterion")) == "CrossEntropyLoss"


def test_local_function_returns_are_followed() -> None:
    flow = flow_of(
        """
        import torch.nn as nn
        def build():
            return nn.Sequential(nn.Linear(2, 2))
        net = build()
        """
    )
    assert flow.constructed_as(expr_at(flow, "net")) == "torch.nn.Sequential"


def test_node_index_holds_every_node_once() -> None:
    flow = flow_of("def f(x):\n    return g(x) + h(x)\n")
    assert {ast.unparse(c.func) for c in flow.nodes(ast.Call)} == {"g", "h"}
    assert [fn.name for fn in flow.nodes(ast.FunctionDef)] == ["f"]


def test_module_level_excludes_function_and_class_bodies() -> None:
    tree = ast.parse("x = 1\ndef f():\n    y = 2\nclass C:\n    z = 3\nprint(x)\n")
    assert [ast.unparse(s) for s in module_level(tree)] == ["x = 1", "print(x)"]


# ---- graph attachment ----------------------------------------------------------------------

GRAPH = """
import torch
import torch.nn.functional as F

def compute_loss(model, x, y):
    return F.cross_entropy(model(x), y)

def train(model, loader, criterion):
    for x, y in loader:
        loss = criterion(model(x), y)
        scaled = loss * 2
        value = loss.item()
        detached = loss.detach()
        number = float(loss)
        out = model(x)
        preds = out.argmax(1)
        correct = (preds == y).sum()
        helper = compute_loss(model, x, y)
        with torch.no_grad():
            frozen = model(x)
        batch = x
"""


@pytest.mark.parametrize(
    ("name", "origin"),
    [
        ("loss", "loss"),
        ("scaled", "loss"),
        ("helper", "loss"),
        ("out", "output"),
        ("value", None),
        ("detached", None),
        ("number", None),
        ("preds", None),
        ("correct", None),
        ("frozen", None),
        ("batch", None),
    ],
)
def test_graph_origin(name: str, origin: str | None) -> None:
    flow = flow_of(GRAPH)
    assert flow.graph_origin(expr_at(flow, name)) == origin


def test_grad_disabled_by_decorator_and_by_block() -> None:
    flow = flow_of(
        """
        import torch
        @torch.inference_mode()
        def ev(model, x):
            return model(x)
        def tr(model, x):
            with torch.no_grad():
                a = model(x)
            b = model(x)
        """
    )
    assert flow.grad_disabled_at(call_of(flow, "model"))
    calls = [n for n in ast.walk(flow.ctx.tree) if isinstance(n, ast.Call)]
    by_line = {c.lineno: flow.grad_disabled_at(c) for c in calls if ast.unparse(c.func) == "model"}
    assert by_line == {5: True, 8: True, 9: False}


def test_a_switch_statement_inside_a_loop_decides_the_statements_after_it() -> None:
    """A training loop's periodic validation block turns autograd off with a bare
    `torch.set_grad_enabled(False)`, validates, and turns it back on (VirTex's scripts)."""
    flow = flow_of(
        """
        import torch
        def fit(model, train_loader, val_loader, every):
            for it, x in enumerate(train_loader):
                a = model(x)
                if it % every == 0:
                    b = model(x)
                    torch.set_grad_enabled(False)
                    for v in val_loader:
                        c = model(v)
                    torch.set_grad_enabled(True)
                d = model(x)
        """
    )
    calls = [n for n in ast.walk(flow.ctx.tree) if isinstance(n, ast.Call)]
    by_line = {c.lineno: flow.grad_disabled_at(c) for c in calls if ast.unparse(c.func) == "model"}
    assert by_line == {5: False, 7: False, 10: True, 12: False}


def test_a_decorator_of_the_module_that_wraps_in_no_grad_turns_autograd_off() -> None:
    """simple-faster-rcnn's `@nograd`: a wrapper of the module that enters `no_grad` (an
    alias of torch's) around the call; one that only names no_grad elsewhere, or enters
    `enable_grad`, does not switch it off."""
    flow = flow_of(
        """
        import torch as t
        def nograd(f):
            def new_f(*args, **kwargs):
                with t.no_grad():
                    return f(*args, **kwargs)
            return new_f
        def logged(f):
            def new_f(*args):
                print(t.no_grad)
                return f(*args)
            return new_f
        def grad_on(f):
            def new_f(*args):
                with t.enable_grad():
                    return f(*args)
            return new_f
        @nograd
        def predict(model, x):
            return model(x)
        @logged
        def score(model, x):
            return model(x)
        @grad_on
        def attack(model, x):
            return model(x)
        """
    )
    calls = [n for n in ast.walk(flow.ctx.tree) if isinstance(n, ast.Call)]
    by_line = {c.lineno: flow.grad_disabled_at(c) for c in calls if ast.unparse(c.func) == "model"}
    assert by_line == {20: True, 23: False, 26: False}


def test_a_binding_after_the_loop_does_not_reach_a_read_inside_it() -> None:
    """`labels` read in a selection loop is the training labels bound before it; binding the
    test labels to the same name after the loop cannot come back around to that read, while
    a binding later inside the loop (or the loop's own target) does."""
    flow = flow_of(
        """
        def pick(costs, train_y, test_y, xs):
            labels = train_y
            for c in costs:
                s = score(c, labels)
            labels = test_y
            for c in costs:
                r = score(c, labels)
                labels = relabel(c)
            x = 0
            for x in xs:
                print(x)
        """
    )
    reads = {
        (n.id, n.lineno): flow.reaching(n)
        for n in ast.walk(flow.ctx.tree)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in ("labels", "x")
    }
    assert {k: v if v is None else ast.unparse(v) for k, v in reads.items()} == {
        ("labels", 5): "train_y",
        ("labels", 8): None,
        ("x", 12): None,
    }


def test_accumulations_skip_resets_and_backpropagated_totals() -> None:
    flow = flow_of(
        """
        def f(model, loader, crit):
            total = 0
            summed = 0
            for x, y in loader:
                step_loss = crit(model(x), y)
                step_loss += 1
                total += step_loss
                summed = summed + step_loss
            summed.backward()
        """
    )
    carried = [a for a in flow.accumulations if flow.carried_across_iterations(a)]
    assert [ast.unparse(a.target) for a in carried] == ["total"]


# ---- held-out derivation --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("X_test", "test"),
        ("test_loader", "test"),
        ("testset", "test"),
        ("valloader", "val"),
        ("val_ds", "val"),
        ("eval_data", "val"),
        ("val_freq", None),
        ("test_size", None),
        ("latest", None),
        ("value", None),
        ("interval", None),
        ("train_loader", None),
    ],
)
def test_held_out_names(name: str, kind: str | None) -> None:
    assert held_out_name_kind(name) == kind


HELD_OUT = """
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, random_split
from torchvision import datasets

a, b, c, d = train_test_split(X, y)
first, second = random_split(ds, [0.8, 0.2])
mnist = datasets.MNIST("data", train=False)
imagenet = datasets.ImageNet("data", split="val")
loader = DataLoader(mnist, batch_size=8)
for xb, yb in loader:
    pass
head, tail = data[:800], data[800:]
lonely = other[5:]

def loaders():
    return train_part, test_part

left, right = loaders()
"""


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("a", None),
        ("b", "test"),
        ("d", "test"),
        ("first", None),
        ("second", "split"),
        ("mnist", "test"),
        ("imagenet", "val"),
        ("loader", "test"),
        ("xb", "test"),
        ("head", None),
        ("tail", "split"),
        ("lonely", None),
        ("left", None),
    ],
)
def test_held_out_derivation(name: str, kind: str | None) -> None:
    flow = flow_of(HELD_OUT)
    found = flow.held_out_kind(expr_at(flow, name), frozenset({"test", "val", "split"}))
    assert found == kind


def test_split_inputs_cover_split_calls_and_head_tail_slices() -> None:
    flow = flow_of(HELD_OUT)
    inputs = {ast.unparse(arg) for _, args in flow.split_inputs for arg in args}
    assert inputs == {"X", "y", "ds", "[0.8, 0.2]", "data"}


# ---- producers ------------------------------------------------------------------------------


def test_producers_see_through_views_models_and_forward() -> None:
    flow = flow_of(
        """
        import torch.nn as nn
        import torch.nn.functional as F
        class Net(nn.Module):
            def forward(self, x):
                return F.log_softmax(x, dim=1)
        seq = nn.Sequential(nn.Linear(2, 2), nn.Softmax(dim=1))
        def f(x):
            p = F.softmax(x, dim=1).view(-1, 2)
            return p, seq(x), Net()(x)
        """
    )
    names = lambda e: {ast.unparse(c.func) for c in flow.value_producers(e)}  # noqa: E731
    assert "F.softmax" in names(expr_at(flow, "p"))
    assert "nn.Softmax" in names(expr_at(flow, "seq(x)"))
    assert "F.log_softmax" in names(expr_at(flow, "Net()(x)"))


# ---- save provenance -------------------------------------------------------------------------

SAVES = """
import os
import torch
CKPT = os.path.join("runs", "best.pt")
def save(model, opt, args):
    torch.save(model.state_dict(), "weights.pt")
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "epoch": 3}, CKPT)
    torch.save(model, "whole.pt")
    torch.save({"model": model.state_dict(), "args": args}, "mixed.pt")
    torch.save(torch.randn(3), f="tensor.pt")
"""


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ('"weights.pt"', "weights"),
        ("CKPT", "weights"),
        ('"whole.pt"', "module"),
        ('"mixed.pt"', "unknown"),
        ('"tensor.pt"', "weights"),
        ('"never_saved.pt"', None),
    ],
)
def test_saved_kind(path: str, kind: str | None) -> None:
    flow = flow_of(SAVES + f"\nloaded = torch.load({path})\n")
    load = next(c for c in flow.nodes(ast.Call) if ast.unparse(c.func) == "torch.load")
    assert flow.saved_kind(load.args[0]) == kind


# ---- mode reachability -----------------------------------------------------------------------


def test_functions_reaching_a_mode_method_transitively() -> None:
    flow = flow_of(
        """
        def validate(model):
            model.eval()
        def epoch_end(model):
            validate(model)
        def freeze(model):
            model.train(False)
        def fit(model):
            model.train()
        """
    )
    assert flow.functions_reaching("eval") == {"validate", "epoch_end", "freeze"}
    assert flow.functions_reaching("train") == {"fit"}
    body = ast.parse("epoch_end(m)").body
    assert flow.reaches_method(body, "eval")
    assert not flow.reaches_method(body, "train")


def test_a_mode_dispatcher_called_with_a_constant_sets_that_mode_only() -> None:
    """`set_mode('eval', models)` (CLEVR-IEP), `self.set_training(False)`, and a `train`
    override called with its default reach the mode they select, not every mode their
    body names; given a variable, a dispatcher may set either."""
    flow = flow_of(
        """
        import torch.nn as nn

        def set_mode(mode, models):
            for m in models:
                if mode == "train":
                    m.train()
                if mode == "eval":
                    m.eval()

        def check(models):
            set_mode("eval", models)

        def resume(models):
            set_mode(mode="train", models=models)

        def either(models, mode):
            set_mode(mode, models)

        class Net(nn.Module):
            def train(self, mode=True):
                self.body.train(mode)
                return self

            def set_training(self, training):
                self.body.train(training)

            def evaluate(self):
                self.set_training(False)

            def restart(self):
                self.train()
        """
    )
    assert flow.functions_reaching("eval") >= {"check", "either", "evaluate"}
    assert not {"resume", "restart"} & flow.functions_reaching("eval")
    assert {"resume", "either", "restart"} <= flow.functions_reaching("train")
    assert not {"check", "evaluate"} & flow.functions_reaching("train")
    for text, mode in (('set_mode("eval", ms)', "eval"), ("self.set_training(False)", "eval")):
        body = ast.parse(text).body
        assert flow.reaches_method(body, mode)
        assert not flow.reaches_method(body, "train" if mode == "eval" else "eval")


def test_reaching_a_mode_method_answers_as_walking_the_body_does() -> None:
    """`reaches_method` climbs from the module's mode calls instead of walking each body:
    for every statement list and node of a module, it answers as the walk does."""
    flow = flow_of(
        """
        def validate(model):
            model.eval()
        def evaluate(model, loader):
            for x in loader:
                if x is None:
                    validate(model)
                hook = lambda: model.train()
                def inner():
                    model.train(False)
                model(x)
            return [m.eval() for m in (model,)]
        class Runner:
            def run(self, model):
                self.evaluate = evaluate
                with ctx():
                    model.train()
                self.validate(model)
            def validate(self, model):
                validate(model)
        model.eval()
        """
    )
    tree = flow.ctx.tree
    bodies: list[list[ast.stmt] | ast.AST] = [tree, tree.body, []]
    for node in ast.walk(tree):
        bodies.append(node)
        bodies += [v for v in vars(node).values() if isinstance(v, list) and v]
    answers = set()
    for body in bodies:
        for method in ("eval", "train"):
            walked = flow._walk_reaches(body, method)
            assert flow.reaches_method(body, method) is walked, (body, method)
            answers.add(walked)
    assert answers == {True, False}


def test_parts_unpacked_from_a_mixed_result_are_not_all_held_out() -> None:
    flow = flow_of(
        """
        def load():
            splits = [(X_train, y_train), (X_val, y_val), (X_test, y_test)]
            return [make(a, b) for a, b in splits]
        train_set, val_set, test_set = load()
        train_loader = DataLoader(train_set)
        """
    )
    kinds = frozenset({"test", "val", "split"})
    assert flow.held_out_kind(expr_at(flow, "train_loader"), kinds) is None
    assert flow.held_out_kind(expr_at(flow, "test_set"), kinds) == "test"


def test_root_names_follow_definitions_transitively() -> None:
    flow = flow_of(
        """
        raw = read()
        cleaned = raw.dropna()
        features = make(cleaned["text"])
        """
    )
    assert {"raw", "cleaned", "features"} <= flow.root_names(expr_at(flow, "features"))


def test_split_parts_are_split_calls_and_slices_of_split_sequences() -> None:
    flow = flow_of(HELD_OUT)
    slices = [n for n in flow.nodes(ast.Subscript) if isinstance(n.slice, ast.Slice)]
    by_text = {ast.unparse(n): flow.is_split_part(n) for n in slices}
    assert by_text == {"data[:800]": True, "data[800:]": True, "other[5:]": False}
    assert flow.is_split_part(call_of(flow, "train_test_split"))


def test_many_reassignments_stay_linear() -> None:
    """`x = x.view(...)` hundreds of times (generated code) must not explode the walks."""
    body = "".join("    x = x.view(-1)\n    a = b\n    b = a\n" for _ in range(300))
    source = "import torch.nn.functional as F\ndef f(x, y, a, b):\n" + body
    source += "    return F.cross_entropy(x, y)\n"
    flow = flow_of(source)
    x = expr_at(flow, "F.cross_entropy(x, y)").args[0]  # type: ignore[attr-defined]
    started = time.perf_counter()
    assert len(list(flow.producers(x))) == 300
    assert len(list(flow.sources(expr_at(flow, "a")))) <= 601  # each expression once
    assert time.perf_counter() - started < 2.0


CYCLIC = """
import torch
import torch.nn as nn


class ActorCritic(nn.Module):
    def __init__(self):
        super().__init__()
        self.actor = nn.Linear(4, 2)
        self.critic = nn.Linear(4, 1)

    def evaluate(self, state):
        return self.actor(state), self.critic(state)


class Agent:
    def __init__(self):
        self.policy = ActorCritic()
        self.value_loss = nn.MSELoss()

    def update(self, states, returns, epochs):
        for _ in range(epochs):
            logits, values = self.policy.evaluate(states)
            values = torch.squeeze(values)
            critic = self.value_loss(values.detach(), returns)
            critic.backward()
"""


def test_graph_origin_does_not_depend_on_what_was_asked_first() -> None:
    """A value worked out through a cycle (`values = torch.squeeze(values)` in a loop) is not
    memoised with the answer the cut gave it: the squeeze's argument asked first must not
    leave the squeeze itself without a graph for the read that follows."""
    flow = flow_of(CYCLIC)
    calls = [n for n in ast.walk(flow.ctx.tree) if isinstance(n, ast.Call)]
    squeeze = next(c for c in calls if ast.unparse(c) == "torch.squeeze(values)")
    detach = next(c for c in calls if ast.unparse(c) == "values.detach()")
    assert isinstance(detach.func, ast.Attribute)
    assert flow.graph_origin(squeeze.args[0]) == "output"
    assert flow.graph_origin(detach.func.value) == "output"


def test_accumulating_methods_read_a_function_defined_directly_in_the_method() -> None:
    """`walk_scope(method.body)` enters a `def` that is one of the body's statements (a context
    manager's inner function), not one nested deeper; the methods' prefilter keeps to that."""
    flow = flow_of(
        """
        class Buffer:
            def indent(self, offset=1):
                def ctx():
                    self.depth += offset
                    yield
                return ctx()

            def add(self, value):
                self.items.append(value)

            def deeper(self, value):
                if value:
                    def inner():
                        self.total += value

            def cut(self, value):
                self.total += value.item()
        """
    )
    assert sorted(accumulating_methods(flow.ctx, flow.classes["Buffer"])) == ["add", "indent"]


def test_model_passes_follow_every_way_a_value_holds_a_project_model() -> None:
    """A model of a project class reaches another file's function through a local function's
    return, a conditional, a `.to()` chain, a deep copy and `self.x`; a call given anything
    else passes none (`publish_model_passes` skips calls whose arguments cannot hold one)."""
    from torchdoctor.agent.checks.analysis.project import PASSES_KEY, publish_model_passes

    flow = flow_of(
        """
        import copy
        from nets.zoo import Net
        from nets.client import fit, log

        def build():
            return Net().to("cuda")

        class Runner:
            def __init__(self):
                self.model = copy.deepcopy(build())

            def go(self, wide):
                chosen = self.model if wide else build()
                fit(chosen)
                fit(model=copy.deepcopy(chosen).eval())
                log(wide, "done")
        """
    )
    publish_model_passes(flow.ctx)
    passes = [p for p in flow.ctx.facts[PASSES_KEY] if p["callee"].startswith("nets.")]
    assert [(p["callee"], p["keyword"], p["position"], p["classes"]) for p in passes] == [
        ("nets.client.fit", None, 0, ["nets.zoo.Net"]),
        ("nets.client.fit", "model", None, ["nets.zoo.Net"]),
    ]
