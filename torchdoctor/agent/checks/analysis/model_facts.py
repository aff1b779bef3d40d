"""Which values are models and losses, and where autograd is off (one answer, `gradmode`)."""

from __future__ import annotations

import ast
import re
from functools import cached_property
from typing import TYPE_CHECKING

from torchdoctor.agent.checks.analysis.defuse import DefUse, identifier, kwarg
from torchdoctor.agent.checks.analysis.gradmode import grad_may_be_off
from torchdoctor.agent.checks.analysis.vocabulary import (
    LOSS_FUNCTIONS,
    OTHER_FRAMEWORKS,
    TORCH_FRAMEWORKS,
    builds_network,
)
from torchdoctor.agent.checks.loops import nodes_of
from torchdoctor.agent.checks.module_text import Triggers

if TYPE_CHECKING:
    from torchdoctor.agent.checks.base import ModuleContext

_MODULE_ONLY_METHODS = ("parameters", "named_parameters", "named_modules", "children", "modules")
_MODE_METHODS = ("eval", "train", "zero_grad")
_TEXT_TOOL = re.compile(r"(?i)(tokeni[sz]er|processor|vocab)s?$")
"""What makes text encoders and decoders, not networks (`tokenizer`, `self.text_processor`)."""


def _text_literal(expr: ast.expr) -> bool:
    """Text written in the call: a string literal, an f-string, a literal joined to
    something (`"a photo of " + prompt`) or formatted (`"{}".format(x)`, `"%s" % x`): no
    network's input."""
    if isinstance(expr, ast.JoinedStr):
        return True
    if isinstance(expr, ast.Constant):
        return isinstance(expr.value, str)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add | ast.Mod):
        return _text_literal(expr.left) or (
            isinstance(expr.op, ast.Add) and _text_literal(expr.right)
        )
    return (
        isinstance(expr, ast.Call)
        and isinstance(expr.func, ast.Attribute)
        and expr.func.attr == "format"
        and _text_literal(expr.func.value)
    )


_MODEL_NAME = re.compile(
    r"(^|_)(model|net|network|encoder|decoder|classifier|backbone|generator|discriminator|"
    r"transformer)s?$|^(model|net)\d*$",
    re.IGNORECASE,
)
LOSS_NAME = re.compile(r"loss|criterion", re.IGNORECASE)
# Calls that iterate over a container's items (`for i, g in enumerate(self.generators)`).
_ITERATION_WRAPPERS = frozenset({"enumerate", "reversed", "iter", "list", "tuple", "sorted"})
# The torch losses whose names hold no "loss" (`cross_entropy`, `kl_div`): the text of a
# module calling one need not say "loss" (`text_names_a_loss`).
_LOSSES_NOT_NAMED_LOSS = tuple(sorted(n for n in LOSS_FUNCTIONS if "loss" not in n.lower()))
LOSS_TEXT = Triggers(
    words=_LOSSES_NOT_NAMED_LOSS, lowered=("loss", "criterion"), for_identifiers=True
)
"""What a module's text must hold for one of its callees to be a loss (`is_loss_callee`):
a name for a loss or a criterion, or a torch loss (a functional one, `*_loss` or one of
`LOSS_FUNCTIONS`; a module class `*Loss`), spelled in the call or in the import that aliases
it. Most modules of a library hold none."""
# Named after a loss but computing none: loss scalers and their scales.
_NOT_A_LOSS = re.compile(r"loss_?scal", re.IGNORECASE)
# Module methods that return the module itself: `model.eval().requires_grad_(False).to(dev)`.
SELF_RETURNING = frozenset(
    {"eval", "train", "to", "cuda", "cpu", "float", "half", "bfloat16", "requires_grad_"}
)


def _positional(call: ast.Call, position: int) -> ast.expr | None:
    return call.args[position] if len(call.args) > position else None


# torch loss modules: `nn.CrossEntropyLoss`, and the deprecated `nn.NLLLoss2d` of old FCNs
_LOSS_SUFFIXES = ("Loss", "Loss2d")


_MODULE_CONTAINERS = frozenset({"ModuleList", "ModuleDict", "Sequential"})
"""Containers whose items are modules: `self.mlps[layer](h)` runs one."""


class ModelFacts(DefUse):
    """Models, losses and grad mode, asked of values of one module."""

    def grad_disabled_at(self, node: ast.AST) -> bool:
        """Autograd off or possibly off at `node` (`analysis.gradmode`: the one answer)."""
        return grad_may_be_off(self.ctx, node)

    # ---- models and losses ------------------------------------------------------------------

    def is_module_value(self, expr: ast.expr) -> bool:
        """Whether `expr` may hold an `nn.Module` (by construction, or a name like `model`)."""
        if (isinstance(expr, ast.Name) and expr.id in ("self", "cls")) or self._foreign_models:
            return False
        if self._constructs_modules:
            for call in self.constructors(expr):
                if self._constructs_module(call):
                    return True
        if isinstance(expr, ast.Attribute) and not (
            isinstance(expr.value, ast.Name) and expr.value.id == "self"
        ):
            return False  # `solver.model()` is a method; only `self.model` is known by name
        name = identifier(expr)
        rebound = isinstance(expr, ast.Name) and self._rebinds_import(expr)
        if name and not _MODEL_NAME.search(name):
            # `self.G.parameters()`, `gen.eval()`: whatever it is called, only a module has
            # those methods
            if isinstance(expr, ast.Name):
                return self._module_name(expr) or self._annotated_module(expr)
            return isinstance(expr, ast.Attribute) and ast.unparse(expr) in self._module_receivers
        if not name:
            return False
        if self._holds_plain_objects(expr):
            return False  # a collator's `mask_generator`: one of its `_MaskGenerator(object)`s
        if self._made_by_a_tokenizer(expr):
            return False  # `self._text_encoder = tokenizer.create_encoder()`: text in, ids out
        if rebound:
            return True
        if isinstance(expr, ast.Attribute) and self._own_method(expr):
            return False
        if self.ctx.qualname(expr) is not None:
            return False
        return not (
            isinstance(expr, ast.Name)
            and (bound_to_function_or_import(self.ctx, name) or self._alias_of_functions(expr))
        )

    def _alias_of_functions(self, name: ast.Name) -> bool:
        """A name only ever bound to a function or an import of the module, an attribute of
        an imported module, or a lambda: d2l's `net = linreg` or `net, loss = d2l.linreg,
        d2l.squared_loss`, then `net(X, w, b)` (a plain function of explicit weights)."""
        values = self.definitions(name)
        return bool(values) and all(
            isinstance(value, ast.Lambda)
            or (isinstance(value, ast.Name) and bound_to_function_or_import(self.ctx, value.id))
            or (isinstance(value, ast.Attribute) and self.ctx.qualname(value) is not None)
            for value in values
        )

    @cached_property
    def _module_receivers(self) -> frozenset[str]:
        """The text of every `self.x` that a method only `nn.Module`s have is called on
        (`self.G.parameters()`, `self.D.named_modules()`): StarGAN's `self.G`, built from a
        class of another file and named like no model."""
        return frozenset(
            text
            for call in self.calls_named(_MODULE_ONLY_METHODS)
            if isinstance(call.func, ast.Attribute)
            and isinstance(call.func.value, ast.Attribute)
            and identifier(call.func.value.value) == "self"
            and (text := ast.unparse(call.func.value))
        )

    def _annotated_module(self, name: ast.Name) -> bool:
        """A parameter of the enclosing function annotated as a module (`segmenter:
        nn.Module`, or a local `nn.Module` subclass)."""
        fn = self.ctx.enclosing_function(name)
        if fn is None:
            return False
        arguments = fn.args
        for argument in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]:
            if argument.arg == name.id and argument.annotation is not None:
                annotation = argument.annotation
                if (self.ctx.qualname(annotation) or "") == "torch.nn.Module":
                    return True
                return isinstance(annotation, ast.Name) and annotation.id in self.module_classes
        return False

    def module_by_use(self, expr: ast.expr) -> bool:
        """`expr`, a bare name or `self.x`, is used as only an `nn.Module` is (`gat.train()`
        in the function that calls `gat(data)`, `self.G.parameters()`): pytorch-GAT's
        `main_loop` closure runs `gat`, a parameter of the factory around it. Not an object
        of a class of this module that is no `nn.Module` (a boosting ensemble's own
        `parameters()` and `to_eval()`)."""
        if self._plain_local_object(expr):
            return False
        if isinstance(expr, ast.Name):
            return self._module_name(expr)
        return isinstance(expr, ast.Attribute) and ast.unparse(expr) in self._module_receivers

    def _holds_plain_objects(self, expr: ast.expr, filling: frozenset[str] = frozenset()) -> bool:
        """Every value `expr` may hold is an object of a plain class of this module (no base
        but `object` or other such classes), built here or taken from a container that the
        module fills only with such objects (`for i, mask_generator in
        enumerate(self.mask_generators)`, the list filled by `self.mask_generators.append(
        _MaskGenerator(...))`: V-JEPA's and I-JEPA's mask collators). Called, such an object
        runs its own `__call__`, no network. False when any value is unknown. `filling`: the
        containers being read already (a loop over a list that names what it appends)."""
        values = self.definitions(expr) if isinstance(expr, ast.Name | ast.Attribute) else []
        if not values or len(filling) > 3:
            return False
        for value in values:
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name):
                if value.func.id in _ITERATION_WRAPPERS and value.args:
                    if not self._filled_with_plain_objects(value.args[0], filling):
                        return False
                    continue
                if self._plain_class(value.func.id):
                    continue
                return False
            if isinstance(value, ast.Name | ast.Attribute):
                if not self._filled_with_plain_objects(value, filling):
                    return False
                continue
            return False
        return True

    def _made_by_a_tokenizer(self, expr: ast.expr) -> bool:
        """Every value `expr` may hold is made by a method of a tokenizer or a text processor
        (`tokenizer.create_encoder(...)`, `self.tokenizer.create_decoder()`: fairseq2's text
        encoders and decoders): named like a network, it maps text to token ids and back."""
        values = self.definitions(expr) if isinstance(expr, ast.Name | ast.Attribute) else []
        return bool(values) and all(
            isinstance(value, ast.Call)
            and isinstance(value.func, ast.Attribute)
            and _TEXT_TOOL.search(identifier(value.func.value)) is not None
            for value in values
        )

    def _filled_with_plain_objects(self, container: ast.expr, filling: frozenset[str]) -> bool:
        """`container` (a name or `self.x`) is a list the module fills only with objects of
        plain local classes (`container.append(v)`, or the items of the list literal it is
        bound to); False when nothing is seen put in it. A container already being read
        answers True: what it holds is decided by the other items."""
        if not isinstance(container, ast.Name | ast.Attribute):
            return False
        text = ast.unparse(container)
        if text in filling:
            return True
        filling = filling | {text}
        items: list[ast.expr] = [
            call.args[0]
            for call in self.calls_named(("append",))
            if isinstance(call.func, ast.Attribute)
            and len(call.args) == 1
            and ast.unparse(call.func.value) == text
        ]
        for value in self.definitions(container):
            if isinstance(value, ast.List | ast.Tuple):
                items.extend(value.elts)
            elif not (isinstance(value, ast.Call) and identifier(value.func) == "list"):
                return False  # bound to something else: it may hold anything
        if not items:
            return False
        for item in items:
            if isinstance(item, ast.Call) and isinstance(item.func, ast.Name):
                if not self._plain_class(item.func.id):
                    return False
            elif not (isinstance(item, ast.Name) and self._holds_plain_objects(item, filling)):
                return False
        return True

    def _plain_class(self, name: str, seen: frozenset[str] = frozenset()) -> bool:
        """A class of this module that is no `nn.Module` and whose bases are only `object` or
        other such classes (a base from another file may be a module)."""
        cls = self.classes.get(name)
        if cls is None or name in self.module_classes or name in seen:
            return False
        return all(
            (isinstance(base, ast.Name) and base.id == "object")
            or (isinstance(base, ast.Name) and self._plain_class(base.id, seen | {name}))
            for base in cls.bases
        )

    def _plain_local_object(self, expr: ast.expr) -> bool:
        """`expr` is built by a class of this module (`DynamicNet(...)`,
        `DynamicNet.from_file(...)`) that is not an `nn.Module`."""
        for call in self.constructors(expr):
            root = call.func
            while isinstance(root, ast.Attribute):
                root = root.value
            if (
                isinstance(root, ast.Name)
                and root.id in self.classes
                and root.id not in self.module_classes
            ):
                return True
        return False

    def _module_name(self, name: ast.Name) -> bool:
        """A bare name that a method only `nn.Module`s have is called on in its function or
        at the module's top level (`gen.eval()`, `disc.zero_grad()`, `critic.parameters()`):
        the GAN scripts' `gen`, `disc` and `critic`, named like no model; or a parameter
        that every call of its function in this module gives a module (minimalRL's
        `train(q, q_target, memory, optimizer)` called with two `Qnet()`s)."""
        scopes = (id(self._scope_of(name)), id(self.ctx.tree))
        if any(name.id in self._module_names.get(scope, ()) for scope in scopes):
            return True
        return self._module_parameter(name)

    def _module_parameter(self, name: ast.Name) -> bool:
        fn = self.ctx.enclosing_function(name)
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) or self.definitions(name):
            return False
        params = [a.arg for a in fn.args.args]
        if name.id not in params or id(fn) in self._asking:
            return False
        position = params.index(name.id)
        sites = [
            c
            for c in self.calls_named((fn.name,))
            if isinstance(c.func, ast.Name) and self.ctx.enclosing_function(c) is not fn
        ]
        given = [kwarg(c, name.id) or _positional(c, position) for c in sites]
        self._asking.add(id(fn))
        try:
            return bool(given) and all(
                isinstance(g, ast.Name | ast.Attribute | ast.Call) and self.is_module_value(g)
                for g in given
            )
        finally:
            self._asking.discard(id(fn))

    @cached_property
    def _asking(self) -> set[int]:
        """Functions whose parameters are being judged (a recursive call passes its own)."""
        return set()

    @cached_property
    def _module_names(self) -> dict[int, set[str]]:
        """Per scope (function or module), the bare names a module-only method is called on;
        `.eval()`, `.train()` and `.zero_grad()` count with no argument (an optimizer also has
        `zero_grad`, but `is_module_value` is asked only of names that are called)."""
        found: dict[int, set[str]] = {}
        for call in self.calls_named((*_MODULE_ONLY_METHODS, *_MODE_METHODS)):
            if not (isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)):
                continue
            if call.func.attr in _MODE_METHODS and (call.args or call.keywords):
                continue
            found.setdefault(id(self._scope_of(call)), set()).add(call.func.value.id)
        return found

    def _own_method(self, attr: ast.Attribute) -> bool:
        """`self.restore_model(...)` in a class that defines `def restore_model`: a method of
        the object, not a submodule (StarGAN's solver)."""
        cls = next((a for a in self.ctx.ancestors(attr) if isinstance(a, ast.ClassDef)), None)
        return cls is not None and any(
            isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == attr.attr
            for node in cls.body
        )

    @property
    def foreign_framework(self) -> bool:
        """The module imports another framework (Chainer, JAX, TensorFlow) and no torch."""
        return self._foreign_models

    @cached_property
    def _foreign_models(self) -> bool:
        """The module builds its networks with another framework (flax, haiku, keras) and
        imports no torch: its `model` is not an `nn.Module` (a Flax model has no `.eval()`)."""
        return self.imports(*OTHER_FRAMEWORKS) and not self.imports(*TORCH_FRAMEWORKS)

    def frozen_module(self, expr: ast.expr) -> bool:
        """`expr` names a module whose parameters were frozen in the same scope
        (`sampler.eval().requires_grad_(False)`): its outputs hold no graph of their own."""
        text = ast.unparse(expr)
        scopes = (id(self._scope_of(expr)), id(self.ctx.tree))
        return any(text in self._frozen_modules.get(scope, ()) for scope in scopes)

    @cached_property
    def _frozen_modules(self) -> dict[int, set[str]]:
        frozen: dict[int, set[str]] = {}
        for call in self.calls_named(("requires_grad_",)):
            flag = (
                call.args[0]
                if call.args
                else next((k.value for k in call.keywords if k.arg == "requires_grad"), None)
            )
            frozen_flag = isinstance(flag, ast.Constant) and flag.value is False
            if not frozen_flag or not isinstance(call.func, ast.Attribute):
                continue
            receiver = call.func.value
            while (
                isinstance(receiver, ast.Call)
                and isinstance(receiver.func, ast.Attribute)
                and receiver.func.attr in SELF_RETURNING
            ):
                receiver = receiver.func.value
            frozen.setdefault(id(self._scope_of(call)), set()).add(ast.unparse(receiver))
        return frozen

    def is_model_call(self, call: ast.Call) -> bool:
        """`model(x)`, `self.net(x)`, `model.forward(x)` (memoised per call: many rules ask)."""
        memo = self.ctx.memo_table("model_facts.is_model_call")
        found = memo.get(id(call))
        if found is None:
            found = memo[id(call)] = self._is_model_call(call)
        return bool(found)

    def _is_model_call(self, call: ast.Call) -> bool:
        func = call.func
        if isinstance(func, ast.Attribute) and func.attr == "forward":
            return self.is_module_value(func.value)
        if isinstance(func, ast.Call):  # `Net()(x)`
            return self.is_module_value(func)
        if isinstance(func, ast.Subscript):  # `self.batch_norms[layer](h)`: a ModuleList's
            return self._module_container(func.value)
        if not isinstance(func, ast.Name | ast.Attribute):
            return False
        if self.is_loss_callee(func):
            return False
        if call.args and _text_literal(call.args[0]):
            return False  # `self._text_encoder(f"[INST] {prompt}")`: a network takes tensors
        if self.ctx.qualname(func) is not None and not self._rebinds_import(func):
            return False
        return self.is_module_value(func)

    def _module_container(self, value: ast.expr) -> bool:
        """`self.mlps` built as `torch.nn.ModuleList(...)` / `ModuleDict` / `Sequential`:
        indexing it gives one of its modules."""
        if not isinstance(value, ast.Name | ast.Attribute):
            return False
        made = [self.qualname_of(c) or "" for c in self.constructors(value)]
        return bool(made) and all(
            q.rsplit(".", 1)[-1] in _MODULE_CONTAINERS and q.startswith("torch.nn") for q in made
        )

    def _rebinds_import(self, func: ast.Name | ast.Attribute) -> bool:
        """A name imported as a module and then bound to what one of its constructors
        returns (`import model` then `model = model.RNNModel(...)`, awd-lstm's main.py):
        calls of the name run that object, not the module."""
        return isinstance(func, ast.Name) and any(
            isinstance(value, ast.Call) for value in self.definitions(func)
        )

    def _constructs_module(self, call: ast.Call) -> bool:
        if isinstance(call.func, ast.Name) and call.func.id in self.module_classes:
            return True
        qual = self.qualname_of(call) or ""
        last = qual.rsplit(".", 1)[-1]
        if qual.startswith("torch.nn.") and last[:1].isupper() and "Loss" not in last:
            return True
        return builds_network(qual)

    @cached_property
    def _constructs_modules(self) -> bool:
        """Whether any call of the module builds a network: a value can only hold one
        by construction when some constructor call here does (most modules: none)."""
        return any(self._constructs_module(call) for call in self.nodes(ast.Call))

    @cached_property
    def may_call_models(self) -> bool:
        """Whether some call of the module may run a model (`is_model_call`): one needs a
        network built here (`_constructs_modules`) or a callee named like a model (`model`,
        `self.net`), so a module with neither has no model output (most library modules)."""
        if self._constructs_modules or self._module_names:
            return True
        tested: set[str] = set()  # each callee name searched once (a module calls few)
        for call in self.nodes(ast.Call):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr == "forward":
                func = func.value
            name = identifier(func)
            if name not in tested:
                if _MODEL_NAME.search(name):
                    return True
                tested.add(name)
        return False

    @cached_property
    def _constructs_losses(self) -> bool:
        """Whether any call of the module builds a torch loss module (`loss_class`)."""
        for call in self.nodes(ast.Call):
            qual = self.qualname_of(call) or ""
            if qual.startswith("torch.nn.") and qual.endswith(_LOSS_SUFFIXES):
                return True
        return False

    def loss_class(self, callee: ast.expr) -> str | None:
        """'CrossEntropyLoss' when `callee` holds a torch loss module, else None; seen
        through a move (`nn.CrossEntropyLoss().cuda()`, `.to(device)`)."""
        if not self._constructs_losses:
            return None
        for call in self.constructors(callee):
            qual = self.qualname_of(call) or ""
            last = qual.rsplit(".", 1)[-1]
            if qual.startswith("torch.nn.") and last.endswith(_LOSS_SUFFIXES):
                return last
        return None

    def reduction_sites(self, call: ast.Call) -> list[ast.Call] | None:
        """The calls whose keywords set the reduction of the torch loss `call` computes: the
        call itself for a functional loss (`F.cross_entropy(x, y, reduction=...)`), the
        constructions of the module it calls (`nn.CrossEntropyLoss(reduction=...)`, every one
        a torch loss); None when `call` is not shown to be a torch loss, or passes arguments
        positionally beyond the inputs (a legacy `size_average` or a weight: read no further)."""
        qual = self.qualname_of(call)
        if qual is not None:
            name = qual.rsplit(".", 1)[-1]
            functional = qual.startswith("torch.nn.functional.") and (
                name in LOSS_FUNCTIONS or name.endswith("_loss")
            )
            return [call] if functional and len(call.args) <= 2 else None
        built = list(self.constructors(call.func))
        for constructor in built:
            made = self.qualname_of(constructor) or ""
            if not (made.startswith("torch.nn.") and made.endswith("Loss")):
                return None
            if len(constructor.args) > 1:
                return None
        return built or None

    @cached_property
    def text_names_a_loss(self) -> bool:
        """Whether the module's text can name a loss callee at all (`LOSS_TEXT`)."""
        return LOSS_TEXT.found_in(self.ctx.source)

    def is_loss_callee(self, callee: ast.expr) -> bool:
        """A loss function or module (memoised per callee: many rules ask)."""
        if not self.text_names_a_loss:
            return False
        memo = self.ctx.memo_table("model_facts.is_loss_callee")
        found = memo.get(id(callee))
        if found is None:
            found = memo[id(callee)] = self._is_loss_callee(callee)
        return bool(found)

    def _is_loss_callee(self, callee: ast.expr) -> bool:
        qual = self.ctx.qualname(callee) or ""
        if qual.startswith("torch.nn.functional."):
            name = qual.rsplit(".", 1)[-1]
            return name in LOSS_FUNCTIONS or name.endswith("_loss")
        if qual:
            return False
        if isinstance(callee, ast.Subscript):  # `loss_registry[config.model.type](model, x)`
            callee = callee.value
        name = identifier(callee)
        if _NOT_A_LOSS.search(name):
            return False  # apex's `LossScaler(...)`, a `loss_scale` getter: no loss value
        return bool(LOSS_NAME.search(name)) or self.loss_class(callee) is not None


def bound_to_function_or_import(ctx: ModuleContext, name: str) -> bool:
    """A name bound to a function or an import anywhere in the module (relative imports and
    imports inside functions included): `available_models()` is no model, whatever its name."""
    if name in ctx.loops.functions:
        return True
    memo = ctx.memo_table("model_facts.imported")
    if not memo:
        memo[""] = {
            alias.asname or alias.name.split(".")[0]
            for node in nodes_of(ctx, ast.Import, ast.ImportFrom)
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
    return name in memo[""]
