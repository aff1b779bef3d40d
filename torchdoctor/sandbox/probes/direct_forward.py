"""Models whose `forward` is called directly (`model.forward(x)`), seen as one module call.

A direct call runs none of the model's own hooks, so its layers reach the harness as top-level
calls: one request of a served model was six inference forwards (the run stopped inside the
first), the data-flow map held its first layer alone, and the mode probe named each layer
apart. When a top-level call comes from inside the `forward` of a module that contains it and
holds state, that module is the call: the harness opens it, and a profile function, set only
until that frame returns, closes it with the frame's return value.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from inspect import CO_VARARGS
from types import FrameType
from typing import Any

import torch

MAX_FRAMES = 64
"""How far up the stack a direct forward is looked for (a model's layers are a few frames
below its forward)."""

OnReturn = Callable[[torch.nn.Module, tuple[Any, ...], Any], None]


def direct_caller(
    module: torch.nn.Module, frame: FrameType | None
) -> tuple[torch.nn.Module, FrameType, tuple[Any, ...]] | None:
    """The innermost module, with state, that contains `module` and whose `forward` frame
    is on the stack above `frame`, with that frame and the arguments it was given."""
    for _ in range(MAX_FRAMES):
        if frame is None:
            return None
        code = frame.f_code
        if code.co_name == "forward":
            owner = frame.f_locals.get(code.co_varnames[0]) if code.co_argcount else None
            if (
                isinstance(owner, torch.nn.Module)
                and owner is not module
                and _holds_state(owner)
                and any(sub is module for sub in owner.modules())
            ):
                return owner, frame, _arguments(frame)
        frame = frame.f_back
    return None


def _holds_state(module: torch.nn.Module) -> bool:
    return next(module.parameters(), None) is not None or next(module.buffers(), None) is not None


def _arguments(frame: FrameType) -> tuple[Any, ...]:
    """The positional arguments after `self` that the frame's function was given."""
    code = frame.f_code
    local = frame.f_locals
    names = list(code.co_varnames[1 : code.co_argcount])
    found = tuple(local[n] for n in names if n in local)
    if code.co_flags & CO_VARARGS:  # `*args` follows the keyword-only names
        extra = local.get(code.co_varnames[code.co_argcount + code.co_kwonlyargcount])
        if isinstance(extra, tuple):
            found += extra
    return found


class DirectForwards:
    """The direct forwards open now, innermost last, each closed when its frame returns."""

    def __init__(self, on_return: OnReturn) -> None:
        self.on_return = on_return
        self._open: list[tuple[torch.nn.Module, FrameType, tuple[Any, ...]]] = []

    def can_watch(self) -> bool:
        """Only where no other profile function is set (a profiler's is left alone)."""
        return bool(self._open) or sys.getprofile() is None

    def watch(self, module: torch.nn.Module, frame: FrameType, args: tuple[Any, ...]) -> None:
        self._open.append((module, frame, args))
        if len(self._open) == 1:
            sys.setprofile(self._profile)

    def stop(self) -> None:
        if self._open:
            self._open = []
            sys.setprofile(None)

    def _profile(self, frame: FrameType, event: str, arg: Any) -> None:
        if event != "return" or not self._open or frame is not self._open[-1][1]:
            return
        module, _, args = self._open.pop()
        if not self._open:
            sys.setprofile(None)  # before the hook: it may stop the run (StopRun)
        self.on_return(module, args, arg)
