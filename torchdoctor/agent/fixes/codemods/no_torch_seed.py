"""no-torch-seed: seed torch, `random` and NumPy at the entry point."""

from __future__ import annotations

import libcst as cst

from torchdoctor.agent.fixes.codemods.base import Codemod, SourceContext
from torchdoctor.agent.fixes.models import FixKind, FixTarget

SEED = 0


class NoTorchSeedFix(Codemod):
    """Seeds every generator the script uses right after its imports (before any model or
    data is built): `torch.manual_seed`, `random.seed`, and `np.random.seed` when NumPy is
    imported. Only the missing ones are added."""

    rule = "no-torch-seed"
    kind = FixKind.CORRECTNESS
    summary = "seed torch, random and numpy after the imports"
    reproducibility = True

    def edit(self, ctx: SourceContext, target: FixTarget) -> bool:
        seed = int(target.data.get("seed", SEED))
        calls = {ctx.qualname(c.func) for c in ctx.find(cst.Call)}
        lines = []
        if "torch.manual_seed" not in calls and "torch.random.manual_seed" not in calls:
            lines.append(f"{ctx.require_module('torch')}.manual_seed({seed})")
        if "random.seed" not in calls:
            lines.append(f"{ctx.require_module('random')}.seed({seed})")
        numpy = ctx.alias_of("numpy")
        if numpy is not None and "numpy.random.seed" not in calls:
            lines.append(f"{numpy}.random.seed({seed})")
        if not lines:
            return False
        ctx.insert_module_level("".join(f"{line}\n" for line in lines))
        return True
