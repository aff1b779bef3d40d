"""lambda-reads-rebound-global: a module-level lambda reads a module name bound again after it."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.module_text import Triggers
from torchdoctor.agent.models import Severity


class LambdaReadsReboundGlobal(Rule):
    """Detects a lambda made by a module-level statement (`FixedNormal.entropy = lambda self:
    entropy(self).sum(-1)`) that reads a module-level name assigned both before and after it
    (`entropy = FixedNormal.entropy` ... `entropy = FixedBernoulli.entropy`).

    Why it matters: a lambda reads its free names when it is called, not when it is made, so
    once the module has run, every such lambda sees the name's last value: here each
    distribution's patched `entropy` calls the Bernoulli one, and nothing fails.
    ikostrikov/pytorch-a2c-ppo-acktr-gail patched its three distributions this way until
    `05a8852` ("Fix a problem with entropy").

    Not reported: a name bound once before the lambda (or only after it, a forward reference),
    a first value that is a placeholder constant (`model = None`, filled in later on purpose),
    and lambdas inside functions (their names are the function's).

    Example:
        entropy = FixedNormal.entropy
        FixedNormal.entropy = lambda self: entropy(self).sum(-1)
        entropy = FixedBernoulli.entropy
        FixedBernoulli.entropy = lambda self: entropy(self).sum(-1)

    Fix: one name per saved value (`normal_entropy`, `bernoulli_entropy`), or bind it when the
    lambda is made: `lambda self, entropy=entropy: entropy(self).sum(-1)`.
    """

    id = "lambda-reads-rebound-global"
    point = 1
    severity = Severity.HIGH
    title = "Lambda reads a module name rebound after it"
    items: ClassVar[tuple[str, ...]] = ("1.1",)
    triggers = Triggers(("lambda",))

    def finish(self, ctx: ModuleContext) -> None:
        body = ctx.tree.body if isinstance(ctx.tree, ast.Module) else []
        bindings: dict[str, list[ast.Assign]] = {}
        for statement in body:
            if isinstance(statement, ast.Assign):
                for target in statement.targets:
                    if isinstance(target, ast.Name):
                        bindings.setdefault(target.id, []).append(statement)
        rebound = {name: sites for name, sites in bindings.items() if len(sites) > 1}
        if not rebound:
            return
        for statement in body:
            if not isinstance(statement, ast.Assign) or not isinstance(statement.value, ast.Lambda):
                continue
            for name in sorted(_free_names(statement.value) & set(rebound)):
                before = [s for s in rebound[name] if s.lineno < statement.lineno]
                after = [s for s in rebound[name] if s.lineno > statement.lineno]
                if not before or not after or isinstance(before[-1].value, ast.Constant):
                    continue
                later = after[0]
                ctx.report(
                    self,
                    statement,
                    f"this lambda reads `{name}` when it is called, not when it is made: "
                    f"`{name}` is bound again at line {later.lineno} "
                    f"(`{ast.unparse(later)[:60]}`), so it uses that value; give each saved "
                    f"value its own name, or bind it now (`lambda ..., {name}={name}: ...`)",
                    data={"name": name, "rebound": later.lineno},
                )


def _free_names(function: ast.Lambda) -> set[str]:
    """Names the lambda reads that are not its parameters (nor its nested lambdas')."""
    arguments = function.args
    bound = {a.arg for a in [*arguments.posonlyargs, *arguments.args, *arguments.kwonlyargs]}
    bound |= {a.arg for a in (arguments.vararg, arguments.kwarg) if a is not None}
    return {
        n.id
        for n in ast.walk(function.body)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id not in bound
    }
