"""hardcoded-hparams: literal hyperparameters in a script with no configuration."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.analysis.vocabulary import DATALOADERS, OPTIMIZER_NAMES, OPTIMIZERS
from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.patterns import argument, constant_number, terminal_name
from torchdoctor.agent.models import Severity

_CONFIG_MODULES = frozenset(
    {
        "argparse",
        "hydra",
        "omegaconf",
        "yaml",
        "click",
        "typer",
        "fire",
        "tomllib",
        "pydantic",
        "dataclasses",
        "configparser",
        "jsonargparse",
        "simple_parsing",
        "ml_collections",
    }
)
_CONFIG_READS = re.compile(
    r"\b(args|cfg|config|conf|hparams|hp|opts?|params)\.\w|os\.environ|getenv"
)

_NAMES = OPTIMIZER_NAMES | {"DataLoader"}


class HardcodedHparams(Rule):
    """Detects a literal learning rate in an optimizer constructor, or a literal batch size in a
    `DataLoader`, in a module that has no configuration mechanism at all (no argparse, click,
    typer, Hydra/OmegaConf, YAML/JSON config, environment variables, config dataclass).
    Opt-in: small scripts and tutorials legitimately inline them.

    Why it matters: every experiment needs a code edit, runs cannot be launched as a sweep,
    and the values that produced a result are not recorded next to it.

    Example:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        loader = DataLoader(ds, batch_size=64)

    Fix: gather hyperparameters in one config object (a dataclass filled by argparse, or a
    Hydra/YAML config) and log it with the run's results.
    """

    id = "hardcoded-hparams"
    point = 9
    severity = Severity.LOW
    title = "Hard-coded hyperparameters"
    items: ClassVar[tuple[str, ...]] = ("9.3", "9.2")
    node_types: ClassVar[tuple[type[ast.AST], ...]] = (ast.Call,)
    tier = "opt-in"

    def visit(self, node: ast.AST, ctx: ModuleContext) -> None:
        assert isinstance(node, ast.Call)
        if terminal_name(node.func) not in _NAMES:
            return
        if not node.args and not node.keywords:
            return
        qual = ctx.call_qualname(node)
        if qual in OPTIMIZERS:
            name, value = "lr", argument(node, "lr", 1)
        elif qual in DATALOADERS:
            name, value = "batch_size", argument(node, "batch_size", 1)
        else:
            return
        if constant_number(value) is None or self._configured(ctx):
            return
        ctx.report(
            self,
            node,
            f"{name} is a literal in a script with no configuration: every experiment needs a "
            "code edit",
        )

    @staticmethod
    def _configured(ctx: ModuleContext) -> bool:
        imported = {q.split(".")[0] for q in ctx.imports.aliases.values()}
        return bool(imported & _CONFIG_MODULES) or bool(_CONFIG_READS.search(ctx.source))
