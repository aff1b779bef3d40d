"""no-ml-tests: a project with models and training code but no tests at all."""

from __future__ import annotations

import ast
import re
from typing import Any, ClassVar

from torchdoctor.agent.checks.base import ModuleContext, RawFinding, Rule
from torchdoctor.agent.checks.loops import nodes_of
from torchdoctor.agent.checks.patterns import module_classes
from torchdoctor.agent.models import Severity

_TEST_PATH = re.compile(r"(^|/)(tests?/|test_[^/]*\.py$|[^/]*_test\.py$|conftest\.py$)")
_KEY = "no-ml-tests"


class NoMlTests(Rule):
    """Detects a project (two or more Python files) that defines `nn.Module` models or
    training loops but contains no test file at all (`test_*.py`, `*_test.py`, `tests/`).

    Why it matters: without even a shape test, an overfit-one-batch test or a
    loss-decreases test, refactoring the model or the data pipeline can silently break
    training, and the only signal is a worse metric days later.

    Example:
        project/
            model.py    # class Net(nn.Module)
            train.py    # the training loop
            (no tests/)

    Fix: add `tests/test_model.py` with at least a forward-shape test, a test that one small
    batch can be overfitted, and a seeded determinism test.
    """

    id = "no-ml-tests"
    point = 5
    severity = Severity.LOW
    title = "No tests for the model or the training code"
    items: ClassVar[tuple[str, ...]] = ("5.2", "5.3")
    unchecked_when_absent = "no test file was found, so nothing shows the code is tested"

    def applies(self, ctx: ModuleContext) -> bool:
        """Only a test file gives these items something to check and find sound."""
        return bool(_TEST_PATH.search(ctx.path.replace("\\", "/")))

    def finish(self, ctx: ModuleContext) -> None:
        posix = ctx.path.replace("\\", "/")
        if _TEST_PATH.search(posix):
            ctx.facts[_KEY] = {"test": True}
            return
        fact: dict[str, Any] = {"test": False}
        anchor = self._anchor(ctx)
        if anchor is not None and not ctx.suppressed(self.id, anchor.lineno):
            fact["anchor"] = {
                "line": anchor.lineno,
                "code": ctx.lines[anchor.lineno - 1],
                "excerpt": ctx.excerpt(anchor.lineno, anchor.lineno),
            }
        ctx.facts[_KEY] = fact

    @staticmethod
    def _anchor(ctx: ModuleContext) -> ast.stmt | None:
        if "torch" not in ctx.source:
            return None
        classes = module_classes(ctx)
        if classes:
            return next(
                n
                for n in nodes_of(ctx, ast.ClassDef)
                if isinstance(n, ast.ClassDef) and n.name in classes
            )
        loops = ctx.loops.training_loops
        return loops[0].node if loops else None

    @classmethod
    def check_project(cls, facts: dict[str, dict[str, Any]]) -> list[RawFinding]:
        mine = {path: f[_KEY] for path, f in facts.items() if _KEY in f}
        if len(mine) < 2 or any(f["test"] for f in mine.values()):
            return []
        anchored = sorted(p for p, f in mine.items() if "anchor" in f)
        if not anchored:
            return []
        path = anchored[0]
        anchor = mine[path]["anchor"]
        return [
            RawFinding(
                rule=cls.id,
                file=path,
                line=anchor["line"],
                end_line=anchor["line"],
                code=anchor["code"],
                message="the project defines models/training code but has no tests at all",
                severity=cls.severity,
                excerpt=anchor["excerpt"],
            )
        ]
