"""oom-handling: CUDA out-of-memory caught by string matching or swallowed by a broad except."""

from __future__ import annotations

import ast
from typing import ClassVar

from torchdoctor.agent.checks.base import ModuleContext, Rule
from torchdoctor.agent.checks.loops import is_backward_call, walk_scope
from torchdoctor.agent.models import Severity

_BROAD = frozenset({"Exception", "BaseException", "RuntimeError"})


class OomHandling(Rule):
    """Detects two fragile ways of handling CUDA out-of-memory: an `except RuntimeError`
    (or `Exception`) handler that recognises OOM by testing `"out of memory" in str(e)`, and
    a bare `except:` / `except Exception:` around a training step (`backward()`) whose
    handler only `pass`es or `continue`s.

    Why it matters: message matching breaks when wording changes and catches unrelated
    errors; a handler that swallows everything hides real bugs (shape errors, NaN checks,
    KeyboardInterrupt for bare excepts) and keeps references to the failed step's tensors
    alive in the traceback, so the next step runs out of memory again.

    Example:
        try:
            loss.backward()
        except RuntimeError as e:
            if "out of memory" in str(e):
                torch.cuda.empty_cache()

    Fix: catch `torch.cuda.OutOfMemoryError` (torch >= 1.13) explicitly, drop references to
    the batch and outputs, then retry with a smaller batch or re-raise; never swallow
    generic exceptions around a training step.
    """

    id = "oom-handling"
    point = 2
    severity = Severity.MEDIUM
    title = "Fragile CUDA OOM handling"
    items: ClassVar[tuple[str, ...]] = ("2.4", "2.2")

    def applies(self, ctx: ModuleContext) -> bool:
        return "backward" in ctx.source or "cuda" in ctx.source

    def finish(self, ctx: ModuleContext) -> None:
        if "except" not in ctx.source:
            return
        for node in ctx.flow.nodes(ast.Try):
            for handler in node.handlers:
                if _matches_oom_message(handler) and _catches_broad(handler):
                    ctx.report(
                        self,
                        handler,
                        "OOM recognised by matching the error message: catch "
                        "torch.cuda.OutOfMemoryError instead",
                        header_only=True,
                    )
                elif _swallows(handler) and _wraps_training_step(node):
                    ctx.report(
                        self,
                        handler,
                        "a broad except around backward() swallows every error, OOM included: "
                        "catch torch.cuda.OutOfMemoryError and handle it explicitly",
                        header_only=True,
                    )


def _caught_names(handler: ast.ExceptHandler) -> set[str]:
    if handler.type is None:
        return {"BaseException"}
    types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return {t.attr if isinstance(t, ast.Attribute) else getattr(t, "id", "") for t in types}


def _catches_broad(handler: ast.ExceptHandler) -> bool:
    return bool(_caught_names(handler) & _BROAD)


def _matches_oom_message(handler: ast.ExceptHandler) -> bool:
    return any(
        isinstance(n, ast.Constant)
        and isinstance(n.value, str)
        and "out of memory" in n.value.lower()
        for n in walk_scope(handler.body)
    )


def _swallows(handler: ast.ExceptHandler) -> bool:
    if not (_caught_names(handler) & {"BaseException", "Exception"}):
        return False
    return all(isinstance(s, ast.Pass | ast.Continue) for s in handler.body)


def _wraps_training_step(node: ast.Try) -> bool:
    return any(isinstance(n, ast.Call) and is_backward_call(n) for n in walk_scope(node.body))
