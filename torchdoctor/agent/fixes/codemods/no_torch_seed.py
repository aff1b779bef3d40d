"""no-torch-seed: seed torch, and the `random` and NumPy generators the program draws from, at
the entry point."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext, descendants
from torchdoctor.agent.fixes.models import FixKind, FixTarget

SEED = 0


class NoTorchSeedFix(Codemod):
    """Seeds every generator the program uses right after its imports (before any model or
    data is built): `torch.manual_seed`, and `random.seed` / `np.random.seed` when the script
    or a project module it imports draws from that generator (the rule's `generators`: a
    script that imports NumPy for arrays gets no NumPy seed, one whose dataset module calls
    `random.shuffle` gets `random.seed`). Only the missing ones are added. In a module whose
    top level outside its `if __name__ == "__main__":` block only imports, defines and
    assigns without calling anything (a torch.hub `hubconf.py` with a demo, a script whose
    work is all under the guard), the seeds open the guard instead: importing the module
    must not reseed the importer's generators, and nothing random runs before the guard."""

    rule = "no-torch-seed"
    kind = FixKind.CORRECTNESS
    summary = "seed torch (and the random / numpy generators in use) after the imports"
    reproducibility = True

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        seed = int(target.data.get("seed", SEED))
        calls = {ctx.qualname(c.func) for c in ctx.find(cst.Call)}
        lines = []
        if "torch.manual_seed" not in calls and "torch.random.manual_seed" not in calls:
            lines.append(f"{ctx.require_module('torch')}.manual_seed({seed})")
        drawn = set(target.data.get("generators", []))
        if "random" in drawn and "random.seed" not in calls:
            lines.append(f"{ctx.require_module('random')}.seed({seed})")
        if "numpy" in drawn and "numpy.random.seed" not in calls:
            lines.append(f"{ctx.require_module('numpy')}.random.seed({seed})")
        if not lines:
            return False
        code = "".join(f"{line}\n" for line in lines)
        guard = _quiet_main_guard(ctx.module)
        if guard is None:
            ctx.insert_module_level(code)
        else:
            ctx.insert_before(_first_statement(guard), code)
        return True


def _quiet_main_guard(module: cst.Module) -> cst.If | None:
    """The main guard, when nothing outside it at the top level calls anything."""
    guards = [s for s in module.body if isinstance(s, cst.If) and _is_main_test(s.test)]
    if len(guards) != 1 or isinstance(guards[0].body, cst.SimpleStatementSuite):
        return None
    for stmt in module.body:
        if stmt is guards[0] or isinstance(stmt, cst.FunctionDef | cst.ClassDef):
            continue
        if not isinstance(stmt, cst.SimpleStatementLine) or any(
            isinstance(node, cst.Call) for node in descendants(stmt)
        ):
            return None
    return guards[0]


def _first_statement(guard: cst.If) -> cst.BaseStatement:
    """The guard's first statement after a docstring-like string."""
    assert isinstance(guard.body, cst.IndentedBlock)  # _quiet_main_guard's
    body = list(guard.body.body)
    first = body[0]
    if (
        len(body) > 1
        and isinstance(first, cst.SimpleStatementLine)
        and isinstance(first.body[0], cst.Expr)
        and isinstance(first.body[0].value, cst.SimpleString | cst.ConcatenatedString)
    ):
        return body[1]
    return first


def _is_main_test(test: cst.BaseExpression) -> bool:
    text = cst.Module([]).code_for_node(test)
    return "__name__" in text and "__main__" in text
