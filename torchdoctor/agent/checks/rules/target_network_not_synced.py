"""target-network-not-synced: a target/old network built fresh and never given the weights."""

from __future__ import annotations

import ast
import re
from typing import Any, ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import MODULE_CONTAINERS
from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import nodes_of, walk_scope, walk_tree
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity

# Words that name the lagging copy of a network: `policy_old`, `actor_target`, `target_net`.
_LAGGING = frozenset({"target", "targ", "tgt", "old", "ema", "lagged", "prev", "slow"})
_TOKENS = re.compile(r"[A-Za-z][a-z0-9]*|[A-Z]+(?![a-z])")
_PLACEMENT = frozenset({"to", "cuda", "cpu", "float", "double", "half", "train", "eval"})
# torch.nn layers that hold no weights: two of them are never out of sync (a fusion helper's
# `prev_type = nn.Identity()` placeholders)
_WEIGHTLESS = frozenset(
    {"Identity", "Flatten", "Dropout", "ReLU", "GELU", "SiLU", "Tanh", "Sigmoid", "Softmax"}
)


class TargetNetworkNotSynced(Rule):
    """Detects a lagging copy of a network — named like the network plus `target`, `old`,
    `ema` (`policy_old` beside `policy`, `actor_target` beside `actor`, `target_net` beside
    `net`) — built with the same constructor call as the network it follows, and not given
    that network's weights in the same function afterwards: no `load_state_dict(...)`, no
    `hard_update(target, source)`-style call naming both.

    Why it matters: the two constructions draw independent random weights. Until the first
    sync the copy is an unrelated network: a PPO agent collects its first rollouts and
    computes its probability ratios against a random "old" policy; DQN/DDPG/SAC bootstrap
    their first targets from random values, and with soft (Polyak) updates the target only
    drifts toward the trained network over thousands of steps. Training runs, worse or
    unstable, with nothing failing.

    Also reported: a sync that copies a lagging network into itself
    (`self.target_net.load_state_dict(self.target_net.state_dict())`, `hard_update(target,
    target)`): a no-op that leaves the copy at its initialisation for the whole run.

    Also reported: a lagging copy (`target`, `tgt`, `old`, `ema` names) that a class builds
    in `__init__`, calls to compute targets, and never updates while it trains the network
    the copy follows (its parameters in an optimizer, a backward pass in the class): no
    method but `__init__` loads weights into it, hands it to a soft-update helper or a copy
    loop over its parameters, or rebinds it; or only a private method nobody calls does
    (`_target_soft_update`, its call dropped). The targets then come from the initial
    network for the whole run (DDPG's `actor_target` when the soft update covers only the
    critic). Not reported there: updates in a public method (the class's interface, called
    from scripts the project may not hold), copies another file reads off the object
    (`agent.actor_target`), classes with a base other than `object`/`nn.Module` (a base or
    framework may update them), `prev`/`slow` copies (a previous task's model frozen on
    purpose), copies synced from a list of pairs, rebuilt in a method, or never called.

    A network built by a config-driven factory counts as built by its constructor
    (`self.critic_target = hydra.utils.instantiate(critic_cfg)` beside `self.critic =
    hydra.utils.instantiate(critic_cfg)`, `build_model(cfg)`), unless the call is told to load
    weights (`pretrained=`, `checkpoint=`).

    Not reported: copies made with `copy.deepcopy`, copies synced in the function that builds
    them (`self.policy_old.load_state_dict(self.policy.state_dict())`, `hard_update(self.
    critic_target, self.critic)`, a loop copying `zip(target.parameters(), net.parameters())`
    pairwise, or a checkpoint loaded into the copy), networks built with different arguments,
    empty torch.nn containers (`nn.Sequential()` filled by `add_module` afterwards), data
    transforms (`target_normalize = transforms.Normalize(...)`),
    torch.nn layers that hold no weights (`nn.Identity()` placeholders), names that do not
    pair up (`critic_1` and `critic_2`, `teacher` and `student`), and test modules.

    Example:
        self.policy = ActorCritic(state_dim, action_dim).to(device)
        self.policy_old = ActorCritic(state_dim, action_dim).to(device)

    Fix: copy the weights right after building it
    (`self.policy_old.load_state_dict(self.policy.state_dict())`), or build it with
    `copy.deepcopy(self.policy)`.
    """

    id = "target-network-not-synced"
    point = 4
    severity = Severity.HIGH
    title = "Target network built fresh, not synced with the network it follows"
    items: ClassVar[tuple[str, ...]] = ("4.3",)
    triggers = Triggers(lowered=tuple(sorted(_LAGGING)))

    def applies(self, ctx: ModuleContext) -> bool:
        lowered = ctx.source.lower()
        return not ctx.test_module and any(w in lowered for w in _LAGGING)

    def finish(self, ctx: ModuleContext) -> None:
        if not self.applies(ctx):
            return
        for call in nodes_of(ctx, ast.Call):
            copy = _self_sync(call) if isinstance(call, ast.Call) else None
            if copy is not None:
                ctx.report(
                    self,
                    call,
                    f"`{copy}` is given its own weights: the sync is a no-op, so the copy "
                    "never receives the weights of the network it follows and stays at its "
                    "initialisation; load the trained network's state_dict into it",
                    data={"copy": copy},
                )
        self._check_frozen(ctx)
        copies = [n for n in nodes_of(ctx, ast.Assign) if _lagging_copy(n)]
        if not copies:
            return
        # a report is at one of these copies: only the bodies whose walk reaches one
        holding = {id(_scope_of(ctx, copy)) for copy in copies}
        bodies: list[list[ast.stmt]] = [ctx.tree.body] if id(ctx.tree) in holding else []
        bodies += [fn.body for fn in ctx.flow.nodes(ast.FunctionDef) if id(fn) in holding]
        for body in bodies:
            self._check_body(ctx, body)

    def _check_frozen(self, ctx: ModuleContext) -> None:
        """Per class: a lagging copy (`self.actor_target`) called to compute targets while its
        network is trained, that no live method of the class ever gives new weights; the
        project pass drops those another file may update (`agent.actor_target...`) or whose
        only updating method another file calls."""
        ctx.facts[_FOREIGN_READS] = sorted(_foreign_reads(ctx))
        if ctx.source.isascii() and "backward" not in ctx.source:
            return  # no class back-propagates (NFKC may spell `backward` in other text)
        candidates = []
        classes = [cls for cls in ctx.flow.nodes(ast.ClassDef) if _may_train_a_copy(cls)]
        if not classes:
            return  # most modules: no class that back-propagates, no read set to build
        reads = {
            n.attr
            for n in ctx.flow.nodes(ast.Attribute)
            if isinstance(n, ast.Attribute) and not isinstance(n.ctx, ast.Store)
        } | {n.id for n in ctx.flow.nodes(ast.Name) if isinstance(n, ast.Name)}
        for cls in classes:
            for stmt, copy, source, dead in _frozen_copies(cls, reads):
                found = ctx.finding(
                    self,
                    stmt,
                    f"`{copy}` is never updated after it is built: no live method copies "
                    f"`{source}`'s weights into it (no soft update, no load_state_dict), so "
                    "every target it computes comes from the initial network for the whole "
                    f"run; call the update (`{copy}` <- `{source}`) after each optimisation step",
                    data={"copy": copy, "source": source, "frozen": True},
                )
                if found is not None:
                    candidates.append(
                        {
                            "attr": copy.removeprefix("self."),
                            "dead": dead,
                            "finding": found.model_dump(mode="json"),
                        }
                    )
        if candidates:
            ctx.facts[_FROZEN] = candidates

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        found: list[RawFinding] = []
        for path, module in facts.items():
            candidates = module.get(_FROZEN, [])
            if not candidates:
                continue
            elsewhere = {
                name
                for other, fs in facts.items()
                if other != path
                for name in fs.get(_FOREIGN_READS, [])
            }
            for candidate in candidates:
                if candidate["attr"] in elsewhere:
                    continue  # another file may update it (`agent.actor_target...`)
                if any(m in elsewhere for m in candidate["dead"]):
                    continue  # its updating method is called from another file
                found.append(RawFinding.model_validate(candidate["finding"]))
        return found

    def _check_body(self, ctx: ModuleContext, body: list[ast.stmt]) -> None:
        built: list[tuple[str, str, ast.Assign]] = []  # (holder, constructor, statement)
        for node in walk_scope(body):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                call = _constructor(node.value)
                target = node.targets[0]
                if call is not None and (_weightless(ctx, call) or _filled_later(ctx, call)):
                    continue
                if call is not None and isinstance(target, ast.Name | ast.Attribute):
                    built.append((ast.unparse(target), ast.unparse(call), node))
        for copy, constructor, stmt in built:
            lag = _followed(copy, [b[0] for b in built if b[1] == constructor])
            if lag is None or _synced(body, copy, lag, stmt):
                continue
            ctx.report(
                self,
                stmt,
                f"`{copy}` is built like `{lag}` but never given its weights here: the two "
                "start from independent random initialisations, so until a first sync the "
                f"copy is an unrelated network; add `{copy}.load_state_dict({lag}."
                f"state_dict())` (or build it with copy.deepcopy({lag}))",
                data={"copy": copy, "source": lag},
            )


def _weightless(ctx: ModuleContext, call: ast.Call) -> bool:
    """A torch.nn layer without weights, or a data transform (`target_normalize =
    transforms.Normalize(...)` beside `source_normalize`: fixed statistics, nothing to sync)."""
    qual = ctx.flow.qualname_of(call) or ""
    if qual.startswith(("torchvision.transforms.", "torchaudio.transforms.")):
        return True
    return qual.startswith("torch.nn.") and qual.rsplit(".", 1)[-1] in _WEIGHTLESS


def _filled_later(ctx: ModuleContext, call: ast.Call) -> bool:
    """An empty torch.nn container (`nn.Sequential()`, `nn.ModuleList()`): what it holds is
    added afterwards (`add_module`, `append`), so two of them are not the same network (NASNet's
    `conv_prev_1x1` and `conv_1x1`, filled with different convolutions)."""
    if call.args or call.keywords:
        return False
    qual = ctx.flow.qualname_of(call) or ""
    return qual.startswith("torch.nn.") and qual.rsplit(".", 1)[-1] in MODULE_CONTAINERS


def _self_sync(call: ast.Call) -> str | None:
    """The lagging network a sync call copies into itself: `target.load_state_dict(target
    .state_dict())`, or a `hard_update(target, target)`-style call (the name says update or
    sync) given the same network twice."""
    func = call.func
    if isinstance(func, ast.Attribute) and func.attr == "load_state_dict" and call.args:
        source = call.args[0]
        if (
            isinstance(source, ast.Call)
            and isinstance(source.func, ast.Attribute)
            and source.func.attr == "state_dict"
            and ast.unparse(source.func.value) == ast.unparse(func.value)
        ):
            return _lagging_name(ast.unparse(func.value))
        return None
    if len(call.args) < 2:
        return None
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    if any(w in name.lower() for w in ("update", "sync", "copy")):
        first, second = (ast.unparse(a) for a in call.args[:2])
        if first == second:
            return _lagging_name(first)
    return None


def _lagging_name(holder: str) -> str | None:
    return holder if any(w in _LAGGING for w in _words(holder)) else None


def _scope_of(ctx: ModuleContext, node: ast.AST) -> ast.AST | None:
    """The innermost function, class, lambda or module around `node`: `walk_scope` of the
    body of a function (or of the module) reaches `node` only when that is the function."""
    for anc in ctx.ancestors(node):
        if isinstance(anc, _SCOPES):
            return anc
    return None


_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.Module)


def _lagging_copy(node: ast.AST) -> bool:
    """A construction a report could name: one target named with a lagging word, built by a
    constructor call (what `_check_body` pairs up), looked up in the engine's node index so
    that a module without one is not walked body by body."""
    if not (isinstance(node, ast.Assign) and len(node.targets) == 1):
        return False
    target = node.targets[0]
    if not isinstance(target, ast.Name | ast.Attribute) or _constructor(node.value) is None:
        return False
    return any(w in _LAGGING for w in _words(ast.unparse(target)))


def _constructor(value: ast.expr) -> ast.Call | None:
    """`ActorCritic(...)` of `ActorCritic(...).to(device)`: a capitalised callee, or a
    factory building from a config (`hydra.utils.instantiate(critic_cfg)`, pytorch_sac's)."""
    while (
        isinstance(value, ast.Call)
        and isinstance(value.func, ast.Attribute)
        and value.func.attr in _PLACEMENT
        and isinstance(value.func.value, ast.Call)
    ):
        value = value.func.value
    if not isinstance(value, ast.Call):
        return None
    func = value.func
    name = ""
    if isinstance(func, ast.Name):
        name = func.id
    elif isinstance(func, ast.Attribute):
        name = func.attr
    if name[:1].isupper() and not name.isupper():
        return value
    # a config-driven factory (`hydra.utils.instantiate(critic_cfg)`, `build_model(cfg)`):
    # each call draws a fresh initialisation unless it is told to load weights
    if _FACTORY.match(name) and not any(
        k.arg is not None and _LOADS.search(k.arg) for k in value.keywords
    ):
        return value
    return None


_FACTORY = re.compile(r"instantiate$|(build|make|create)_")
_LOADS = re.compile(r"pretrained|weights|checkpoint|ckpt|state|path")


def _words(holder: str) -> list[str]:
    return [t.lower() for t in _TOKENS.findall(holder.removeprefix("self."))]


def _followed(copy: str, peers: list[str]) -> str | None:
    """The network `copy` lags behind: a peer named like it without the lagging word."""
    words = _words(copy)
    if not any(w in _LAGGING for w in words):
        return None
    rest = [w for w in words if w not in _LAGGING]
    for peer in peers:
        if peer != copy and _words(peer) == rest and rest:
            return peer
    return None


def _synced(body: list[ast.stmt], copy: str, source: str, built: ast.Assign) -> bool:
    """A call after `built` that loads weights into `copy` or names both networks, or a loop
    that copies the source's parameters into the copy's."""
    for node in walk_scope(body):
        if isinstance(node, ast.For) and _copy_loop(node, copy, source, built):
            return True
        if not isinstance(node, ast.Call) or node.lineno < built.lineno:
            continue
        text = ast.unparse(node)
        func = node.func
        if (
            isinstance(func, ast.Attribute)
            and func.attr == "load_state_dict"
            and ast.unparse(func.value) == copy
        ):
            return True
        args = [ast.unparse(a) for a in [*node.args, *(k.value for k in node.keywords)]]
        if copy in args and any(source in a for a in args if a != copy) and copy in text:
            return True
    return False


def _copy_loop(loop: ast.For, copy: str, source: str, built: ast.Assign) -> bool:
    """`for t, p in zip(copy.parameters(), source.parameters()): t.data.copy_(p.data)` (or
    `t.data = p.data`) after `built`: the hard copy RL trainers write where they build their
    targets."""
    it = loop.iter
    if not (
        loop.lineno > built.lineno
        and isinstance(it, ast.Call)
        and isinstance(it.func, ast.Name)
        and it.func.id == "zip"
        and len(it.args) == 2
        and isinstance(loop.target, ast.Tuple)
        and len(loop.target.elts) == 2
        and isinstance(loop.target.elts[0], ast.Name)
    ):
        return False
    first, second = (ast.unparse(a) for a in it.args)
    if not (first.startswith(f"{copy}.") and second.startswith(f"{source}.")):
        return False
    into = loop.target.elts[0].id
    for node in (n for stmt in loop.body for n in walk_tree(stmt)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "copy_"
            and ast.unparse(node.func.value) in (into, f"{into}.data")
        ):
            return True
        if isinstance(node, ast.Assign) and any(
            ast.unparse(t) == f"{into}.data" for t in node.targets
        ):
            return True
    return False


_FROZEN = "target-network-not-synced:frozen"
_FOREIGN_READS = "target-network-not-synced:foreign-reads"
# Lagging words of copies that must follow their network during training (not `prev`/`slow`:
# a previous task's frozen model in continual learning is kept on purpose).
_FOLLOWING = frozenset({"target", "targ", "tgt", "old", "ema"})
_UPDATE_WORDS = ("update", "sync", "copy", "load", "lerp", "mul_", "add_")
_PLAIN_BASES = frozenset({"object", "nn.Module", "torch.nn.Module", "Module"})


def _foreign_reads(ctx: ModuleContext) -> set[str]:
    """Attribute names this module reads off something other than `self` (`agent.actor_target`,
    `agent.soft_update(...)`): what another file's class may be driven through."""
    return {
        n.attr
        for n in ctx.flow.nodes(ast.Attribute)
        if isinstance(n, ast.Attribute)
        and not isinstance(n.ctx, ast.Store)
        and not (isinstance(n.value, ast.Name) and n.value.id == "self")
    }


def _may_train_a_copy(cls: ast.ClassDef) -> bool:
    """A plain class (no framework base, no decorator) with methods that back-propagates:
    only such a class's copies are judged (a base class or framework may update the copy or
    call the update)."""
    if any(ast.unparse(b) not in _PLAIN_BASES for b in cls.bases) or cls.decorator_list:
        return False
    if not any(isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef) for m in cls.body):
        return False
    return any(isinstance(n, ast.Attribute) and n.attr == "backward" for n in walk_tree(cls))


def _frozen_copies(
    cls: ast.ClassDef, module_reads: set[str]
) -> list[tuple[ast.Assign, str, str, list[str]]]:
    """(construction, copy, network, methods that update it but are called nowhere in the
    module) of each lagging `self.` copy in `cls` (one `_may_train_a_copy` admits) that is
    called, whose network's parameters the class reads (an optimizer over them) and which the
    class back-propagates for, and that no method other than `__init__` reached from the
    module updates."""
    methods = [m for m in cls.body if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)]
    assigned: dict[str, list[tuple[ast.Assign, ast.FunctionDef | ast.AsyncFunctionDef]]] = {}
    for method in methods:
        for node in walk_tree(method):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target = node.targets[0]
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    assigned.setdefault(ast.unparse(target), []).append((node, method))
    out = []
    for copy, builds in assigned.items():
        words = _words(copy)
        if not any(w in _FOLLOWING for w in words):
            continue
        source = _followed(copy, [c for c in assigned if c != copy])
        if source is None or not _trained(cls, source) or not _called(cls, copy):
            continue
        if any(m.name != "__init__" for _, m in builds):
            continue  # rebuilt in a method (`self.target = copy.deepcopy(self.net)`): updated
        if not any(m.name == "__init__" for _, m in builds):
            continue
        updaters = {m.name for m in methods if m.name != "__init__" and _updates(m, copy)}
        # a public method is the class's interface, called from scripts the project may not
        # hold; a private one (`_target_soft_update`) only from the module itself
        live = {m for m in updaters if not m.startswith("_") or m in module_reads}
        if live:
            continue
        out.append((builds[0][0], copy, source, sorted(updaters)))
    return out


def _trained(cls: ast.ClassDef, source: str) -> bool:
    """`source.parameters()` is read in the class (the network's optimizer)."""
    return any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr in ("parameters", "named_parameters")
        and ast.unparse(n.func.value) == source
        for n in ast.walk(cls)
    )


def _called(cls: ast.ClassDef, copy: str) -> bool:
    """`copy(...)` (or `copy.forward(...)`, `copy.Q1(...)`): the copy computes something."""
    for n in ast.walk(cls):
        if not isinstance(n, ast.Call):
            continue
        func = n.func
        if ast.unparse(func) == copy:
            return True
        if (
            isinstance(func, ast.Attribute)
            and ast.unparse(func.value) == copy
            and func.attr not in ("parameters", "named_parameters", "state_dict", "to", "eval")
            and not any(w in func.attr.lower() for w in _UPDATE_WORDS)
        ):
            return True
    return False


def _updates(method: ast.FunctionDef | ast.AsyncFunctionDef, copy: str) -> bool:
    """The method gives `copy` weights: a call handed the copy or its parameters
    (`soft_update(self.target, self.net, tau)`, `zip(self.target.parameters(), ...)`), an
    update-like method of the copy (`load_state_dict`, `copy_`, `update_parameters`), or a
    new binding of it."""
    for n in walk_tree(method):
        if isinstance(n, ast.Assign) and any(ast.unparse(t) == copy for t in n.targets):
            return True
        if isinstance(n, ast.List | ast.Tuple) and any(ast.unparse(e) == copy for e in n.elts):
            return True  # `for tgt, src in [(self.q_target, self.q), ...]: soft_update(...)`
        if not isinstance(n, ast.Call):
            continue
        func = n.func
        if (
            isinstance(func, ast.Attribute)
            and ast.unparse(func.value) == copy
            and any(w in func.attr.lower() for w in _UPDATE_WORDS)
        ):
            return True
        for arg in [*n.args, *(k.value for k in n.keywords)]:
            text = ast.unparse(arg)
            if text == copy or text.startswith(f"{copy}."):
                return True
    return False
