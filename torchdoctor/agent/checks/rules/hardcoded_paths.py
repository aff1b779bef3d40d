"""hardcoded-paths: absolute, machine-specific paths in the code."""

from __future__ import annotations

import ast
import re
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import enclosing_ifs, walk_tree
from torchdoctor.agent.checks.patterns import terminal_name
from torchdoctor.agent.models import Severity

_ABSOLUTE = re.compile(
    r"^(/home/|/Users/|/root/|/mnt/|/data/|/scratch/|/content/|/kaggle/|/workspace/|/nfs/|"
    r"/datasets?/|/media/|[A-Za-z]:[\\/])"
)


# `is_colab()`, `is_kaggle()`, `running_in_docker()`, `on_sagemaker`: tests of the platform the
# code runs on, whose directory layout is fixed and known.
_PLATFORM_TEST = re.compile(
    r"^(is|on|in|running_in|running_on)_?(colab|kaggle|docker|sagemaker|databricks|paperspace"
    r"|azureml|azure_ml|gcp|aws)$",
    re.IGNORECASE,
)


def _absolute(value: object) -> bool:
    """A one-line string that starts like an absolute path (`_ABSOLUTE`)."""
    if not isinstance(value, str) or (value[:1] != "/" and value[1:2] != ":"):
        return False
    return bool(_ABSOLUTE.match(value)) and "\n" not in value and " " not in value.strip()


def _walk_position(ctx: ModuleContext, node: ast.AST) -> tuple[int, ...]:
    """Where the engine's pre-order walk meets `node`: the index of each ancestor among its
    parent's children (in field order), from the module down."""
    position: list[int] = []
    child, parent = node, ctx.parents.get(node)
    while parent is not None:
        position.append(next(i for i, c in enumerate(ast.iter_child_nodes(parent)) if c is child))
        child, parent = parent, ctx.parents.get(parent)
    position.reverse()
    return tuple(position)


def _under_environment_test(ctx: ModuleContext, node: ast.AST) -> bool:
    """Inside the body of an `if` that asks which hosted platform the code runs on."""
    return any(
        part == "body"
        and any(
            _PLATFORM_TEST.match(terminal_name(n))
            for n in walk_tree(guard.test)
            if isinstance(n, ast.Name | ast.Attribute)
        )
        for guard, part in enclosing_ifs(ctx, node)
    )


class HardcodedPaths(Rule):
    """Detects an absolute, machine-specific path literal (`/home/...`, `/Users/...`,
    `/content/drive/...`, `/mnt/...`, `C:\\...`) passed to a call or assigned to a variable.

    Why it matters: the code only runs on the author's machine; anyone else (CI, a cluster, a
    colleague, a container) has to edit the source, and data and output locations cannot be
    changed per experiment.

    Example:
        dataset = ImageFolder("/home/alice/data/imagenet/train")

    Not reported: a path under a test of the hosted platform the code runs on
    (`if is_colab(): ... "/content/sample_data"`), whose layout is that platform's.

    Fix: take the path from the command line or a config file (`--data-dir`), an environment
    variable, or build it relative to the project (`Path(__file__).parent / "data"`).
    """

    id = "hardcoded-paths"
    point = 9
    severity = Severity.LOW
    title = "Hard-coded absolute path"
    items: ClassVar[tuple[str, ...]] = ("9.3",)

    def finish(self, ctx: ModuleContext) -> None:
        """The module's string constants from the walk's index (a visit per constant made
        every constant a node the walk stacks and dispatches), the few that look like a path
        taken in the walk's order."""
        paths = [
            node
            for node in ctx.nodes_by_type().get(ast.Constant, ())
            if isinstance(node, ast.Constant) and _absolute(node.value)
        ]
        if len(paths) > 1:
            paths.sort(key=lambda node: _walk_position(ctx, node))
        for node in paths:
            self._check(ctx, node)

    def _check(self, ctx: ModuleContext, node: ast.Constant) -> None:
        value = node.value
        parent = ctx.parents.get(node)
        if isinstance(parent, ast.keyword):
            parent = ctx.parents.get(parent)
        if isinstance(parent, ast.Call) and terminal_name(parent.func) in ("get", "getenv"):
            return  # os.environ.get("DATA", "/data/x"): a default the user can override
        if _under_environment_test(ctx, node):
            return  # `if is_colab(): rmtree("/content/sample_data")`: that platform's own layout
        if isinstance(parent, ast.Call | ast.Assign | ast.AnnAssign):
            ctx.report(
                self,
                node,
                f"the absolute path {value!r} ties the code to one machine: take it from "
                "the command line or a config",
            )
