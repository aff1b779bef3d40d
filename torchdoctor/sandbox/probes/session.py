"""The instrumented run's state: global hooks on every module, optimizer and backward call,
step bookkeeping, and the dispatch to each probe.

A *step* is one call of the first optimizer that steps (other optimizers, as in a GAN, do
not advance it); for a script that never builds an optimizer it is one top-level forward.
Hooks never raise into the user's code except `StopRun` after the last step: a probe that
fails is recorded in `errors` and the run goes on.

Module hooks cost on every module call, which on a launch-bound GPU loop is step time. So
the hooks on every module (global hooks) are on only while something needs every module:
before the first optimizer step, on sampled steps, while hunting a non-finite value, and
from an `eval()` call or a block without grad (`no_grad`, `inference_mode`,
`set_grad_enabled(False)`: an evaluation loop, maybe of a model not seen yet) until the
next step ends. Between those, the roots and loss modules already seen keep hooks of their
own: the loss, the root forward (mode and distributed probes) and step ends are observed on
every step. Once anything has been compiled the global hooks stay on, since switching them
would recompile.
"""

from __future__ import annotations

import itertools
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.optim.optimizer import (
    register_optimizer_step_post_hook,
    register_optimizer_step_pre_hook,
)
from torch.utils.hooks import RemovableHandle

from torchdoctor.sandbox.probes.config import ProbeConfig
from torchdoctor.sandbox.probes.control import StopRun
from torchdoctor.sandbox.probes.data_functions import DataFunctions
from torchdoctor.sandbox.probes.dataflow import DataFlowProbe
from torchdoctor.sandbox.probes.dataloader import DataLoaderProbe
from torchdoctor.sandbox.probes.direct_forward import DirectForwards, direct_caller
from torchdoctor.sandbox.probes.distributed import DistributedProbe, launched_rank
from torchdoctor.sandbox.probes.flops import FlopProbe
from torchdoctor.sandbox.probes.frames import Location, UserFiles
from torchdoctor.sandbox.probes.groups import GroupMetrics, GroupSpec
from torchdoctor.sandbox.probes.linetrace import import_untraced
from torchdoctor.sandbox.probes.memory import MemoryProbe, VramWatch, scan_schedule
from torchdoctor.sandbox.probes.mode import ModeProbe
from torchdoctor.sandbox.probes.numerics import (
    ForwardWatch,
    GradientProbe,
    HandUpdated,
    LossProbe,
)
from torchdoctor.sandbox.probes.power import PowerProbe
from torchdoctor.sandbox.probes.shapes import RootShapes
from torchdoctor.sandbox.probes.syncs import SyncProbe
from torchdoctor.sandbox.probes.tensors import cuda_in_use, read_together
from torchdoctor.sandbox.probes.values import ValueRanges
from torchdoctor.sandbox.probes.warnings_probe import WarningsProbe

FUNCTIONAL_LOSSES = (
    "cross_entropy",
    "nll_loss",
    "mse_loss",
    "l1_loss",
    "smooth_l1_loss",
    "huber_loss",
    "binary_cross_entropy",
    "binary_cross_entropy_with_logits",
    "kl_div",
)
CAPTURE_MAX_NUMEL = 50_000_000
MAX_WAITING_READS = 20_000
"""Module-output statistics left on a GPU before they are read back within a step (one host
sync each time): a step that runs thousands of forwards (an evaluation of hundreds of batches
before the first optimizer step) would otherwise hold them all until the step ends."""
_Loss = torch.nn.modules.loss._Loss
_ACTIVE: Session | None = None


def _release_in_forked_child() -> None:
    if _ACTIVE is not None:
        _ACTIVE.uninstall(in_forked_child=True)


os.register_at_fork(after_in_child=_release_in_forked_child)


HAND_UPDATE_CHECKS = 4
"""Backwards looked at for parameters updated by hand before the run is taken for inference."""
GRAPH_NODES_MAX = 200_000
"""Autograd nodes walked to find a loss's parameters (a 1,000-layer graph holds far fewer)."""


PRETRAINING_FORWARDS_MAX = 1000
"""Forwards before any training that a run whose code trains waits through past the limit."""
TRAINING_TEXT = ("backward(", "training_step")
"""What code that trains says (a backward call, a Lightning step)."""
_READ_LIMIT = 4_000_000


def _loaded_code_trains(user_files: UserFiles) -> bool:
    """Whether the script or a module it has imported from its folder says `TRAINING_TEXT`."""
    paths = {user_files.script} | {
        path
        for module in list(sys.modules.values())
        if isinstance(path := getattr(module, "__file__", None), str)
        and path.endswith(".py")
        and user_files.contains(path)
    }
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as handle:
                text = handle.read(_READ_LIMIT)
        except OSError:
            continue
        if any(word in text for word in TRAINING_TEXT):
            return True
    return False


_Norms = tuple[dict[int, int], torch.Tensor]
"""Parameters' norms at a backward: each parameter's id -> its index in the norms."""


def _moved(before: _Norms, now: _Norms) -> bool:
    """Whether a parameter seen at both backwards has another norm at the second."""
    common = [(index, now[0][key]) for key, index in before[0].items() if key in now[0]]
    if not common:
        return False
    first, second = zip(*common, strict=True)
    return not torch.equal(before[1][list(first)], now[1][list(second)])


def graph_parameters(tensor: torch.Tensor) -> list[torch.Tensor]:
    """The parameters a backward from `tensor` accumulates into: its graph's leaves."""
    found: dict[int, torch.Tensor] = {}
    seen: dict[int, Any] = {}
    """Each node walked, kept alive: a C++ node's Python object is made on each access and
    freed after, so an id alone could come back as another node's and skip it."""
    stack = [tensor.grad_fn]
    while stack and len(seen) < GRAPH_NODES_MAX:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen[id(node)] = node
        variable = getattr(node, "variable", None)
        if isinstance(variable, torch.nn.Parameter):
            found[id(variable)] = variable
        stack.extend(child for child, _ in node.next_functions)
    return list(found.values())


class Session:
    def __init__(self, config: ProbeConfig, user_files: UserFiles) -> None:
        self.config = config
        self.user_files = user_files
        self.step = 0
        self.forwards = 0
        self.root_forwards = 0
        """Every top-level forward, never reset (`forwards` restarts with the optimizer): a run
        stopped in a long evaluation before its first step still shows it got that far."""
        self.optimizer_built = False
        self.main_optimizer: int | None = None
        self.manual_training = False
        """No optimizer, but backward passes that reach a model's parameters: a loop that
        updates them by hand (`p.data.add_(p.grad, alpha=-lr)`). Each backward ends a step."""
        self._hand_updated = HandUpdated()
        self._hand_checks = 0
        self._code_trains: bool | None = None
        self._norms_at_backward: _Norms | None = None
        self.depth = 0
        self.loss_depth = 0
        self.roots: dict[int, torch.nn.Module] = {}
        self.names: dict[int, str] = {}
        self.param_paths: dict[int, tuple[int, str]] = {}
        self.captured: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}
        self.step_seconds: dict[int, float] = {}
        self.cuda_events: dict[int, Any] = {}
        self.errors: list[str] = []
        self.hunting = False
        self.watching = self._watched(0)
        self.dataflow_on = True
        self._step_started = time.perf_counter()
        self._handles: list[RemovableHandle] = []
        self._global_hooks: list[RemovableHandle] = []
        self._own_hooks: set[int] = set()
        self._global_wanted = False
        self._in_optimizer_step = False
        """An optimizer's own no-grad block is no evaluation (it would turn the hooks on every
        module on and off each step)."""
        self._patches: list[tuple[Any, str, Any]] = []
        self._flop_step = config.flop_step
        self._builtin_optimizers: dict[type, bool] = {}
        """Each optimizer class seen: whether it is torch's own (its step runs unwatched)."""
        self._stateless: list[int] = []
        """Top-level modules running now that hold no parameter or buffer (`_stateless`)."""

        self.loss = LossProbe()
        self.grads = GradientProbe()
        self.forward = ForwardWatch()
        self.memory = MemoryProbe(user_files)
        self.vram = VramWatch()
        self.syncs = SyncProbe(user_files)
        self.warnings = WarningsProbe(user_files, self._on_sync_warning)
        self.values = ValueRanges()
        self.dataloader = DataLoaderProbe(user_files, self.values)
        self.data_functions = DataFunctions(user_files)
        self.groups = GroupMetrics(GroupSpec(config.groups)) if config.groups else None
        self.dataloader.groups = self.groups
        self.dataloader.sampled = self.data_functions.sampled = self.watching
        self.dataflow = DataFlowProbe()
        self.root_shapes = RootShapes()
        self.flops = FlopProbe()
        self.power = PowerProbe()
        self.mode = ModeProbe(user_files)
        self.direct = DirectForwards(self._post)
        self._direct_sites: dict[int, Location | None] = {}
        """The calling line of each direct forward open now (`_open_direct_caller`)."""
        ranks = launched_rank()
        self.distributed = DistributedProbe(*ranks, user_files) if ranks else None

    # --- installation --------------------------------------------------------------------

    def install(self) -> None:
        global _ACTIVE
        _ACTIVE = self
        self._handles = [
            register_optimizer_step_pre_hook(self._guard(self._optimizer_pre)),
            register_optimizer_step_post_hook(self._guard(self._optimizer_post)),
        ]
        self._set_global_hooks(True)
        self._patch(torch.Tensor, "backward", self._wrap_backward)
        self._patch(torch.nn.Module, "train", self._wrap_train)
        for manager in (torch.no_grad, torch.inference_mode, torch.set_grad_enabled):
            self._patch(manager, "__enter__", self._wrap_grad_block)
        self._patch(torch.optim.Optimizer, "__init__", self._wrap_optimizer_init)
        self._patch(torch.nn.Module, "__getstate__", self._wrap_getstate)
        for name in FUNCTIONAL_LOSSES:
            self._patch(F, name, self._wrap_functional_loss)
        self.syncs.install()
        self.warnings.install()
        self.dataloader.install()
        self.data_functions.install()
        if self.distributed is not None:
            self.distributed.install()
        if self.config.flops and self.config.flop_step == 0:
            self.flops.start(0)
        if torch.cuda.is_available():
            self.power.start()

    def uninstall(self, in_forked_child: bool = False) -> None:
        """Remove every hook and patch. In a forked child (a DataLoader worker) this runs
        right after the fork, so workers execute plain torch: no step counting, no stop."""
        global _ACTIVE
        _ACTIVE = None
        self.flops.stop()
        self.power.stop()
        self._set_global_hooks(False)
        self.direct.stop()
        for handle in self._handles:
            handle.remove()
        self._own_hooks = set()
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)
        self._handles, self._patches = [], []
        self.syncs.uninstall(touch_cuda=not in_forked_child)
        self.warnings.uninstall()
        self.dataloader.uninstall()
        self.data_functions.uninstall()
        if self.distributed is not None:
            self.distributed.uninstall()

    def _patch(self, owner: Any, name: str, wrap: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        self._patches.append((owner, name, original))
        setattr(owner, name, wrap(original))

    def _guard(self, hook: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(*args: Any) -> None:
            try:
                hook(*args)
            except (StopRun, KeyboardInterrupt):
                raise
            except Exception:
                self._error()

        return guarded

    def _error(self) -> None:
        if len(self.errors) < 20:
            self.errors.append(traceback.format_exc(limit=4)[-1200:])

    # --- wrappers ------------------------------------------------------------------------

    def _wrap_backward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def backward(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            try:
                self.loss.on_backward(tensor)
                self.mode.on_backward()
                reached = self._reached_if_looking(tensor)
            except Exception:
                self._error()
                reached = []
            result = original(tensor, *args, **kwargs)
            if not self.optimizer_built:
                self._backward_without_optimizer(reached)
            return result

        return backward

    def _reached_if_looking(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """While updates by hand are looked for: the parameters this backward will reach
        (read before the backward frees the graph), with the hooked models' own."""
        if self.optimizer_built or self.manual_training or self._hand_checks >= HAND_UPDATE_CHECKS:
            return []
        try:
            found = {id(p): p for p in graph_parameters(tensor)}
        except Exception:
            self._error()
            found = {}
        for root in self.roots.values():
            found.update((id(p), p) for p in root.parameters())
        return list(found.values())

    def _backward_without_optimizer(self, reached: list[torch.Tensor]) -> None:
        """Each backward after training has started by hand ends a step, its gradients read
        as an optimizer's would be."""
        try:
            if not self.manual_training:
                self._look_for_hand_updates(reached)
                return
            self.grads.before_step(self.step, self._hand_updated, norms=self.watching)
            self._end_step()
        except (StopRun, KeyboardInterrupt):
            raise
        except Exception:
            self._error()

    def _look_for_hand_updates(self, reached: list[torch.Tensor]) -> None:
        """Training by hand starts at a backward that finds the parameters it reached changed
        since the backward before it (`p.data.add_(p.grad, alpha=-lr)` in between); a
        backward that never moves them (a saliency map, an adversarial input) is no step.
        Their norms are compared, one host read a backward, the first few backwards only. The
        parameters come from the loss's graph as well as the hooked models: a compiled model's
        forward runs no hook."""
        params = sorted((p for p in reached if p.grad is not None), key=id)
        if not params:
            return
        self._hand_checks += 1
        with torch.no_grad():  # on the first parameter's device: a model may span several
            first = params[0].device
            norms = torch.stack([n.float().to(first) for n in torch._foreach_norm(params)])
        now = {id(p): index for index, p in enumerate(params)}
        before, self._norms_at_backward = self._norms_at_backward, (now, norms)
        if before is None or not _moved(before, (now, norms)):
            return
        self._hand_updated = HandUpdated([{"params": params}])
        self._norms_at_backward = None
        self.manual_training = True
        self._training_starts()

    def _wrap_train(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def train(module: torch.nn.Module, mode: bool = True) -> Any:
            if not mode:
                self._evaluation_begins()
            return original(module, mode)

        return train

    def _wrap_grad_block(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def enter(manager: Any) -> Any:
            entered = original(manager)
            if not torch.is_grad_enabled() and not self._in_optimizer_step:
                self._evaluation_begins()
            return entered

        return enter

    def _evaluation_begins(self) -> None:
        """`eval()` or a block without grad: what an evaluation loop does, maybe with a model
        not seen yet; every module is watched from then until the next step ends."""
        self._global_wanted = True
        if not self._global_hooks and self.depth == 0:
            self._set_global_hooks(True)

    def _wrap_optimizer_init(self, original: Callable[..., Any]) -> Callable[..., Any]:
        def init(optimizer: Any, *args: Any, **kwargs: Any) -> None:
            if not self.optimizer_built:
                # the base class imports torch._dynamo here (add_param_group is wrapped by
                # torch._disable_dynamo): the same import, outside the line trace
                import_untraced("torch._dynamo")
            original(optimizer, *args, **kwargs)
            if not self.optimizer_built:
                self.optimizer_built = True
                if not self.manual_training:
                    self._training_starts()

        return init

    def _waiting_for_training(self) -> bool:
        """Past the step limit with no training yet, whether to go on: the code the run has
        loaded trains, so these forwards are an evaluation before training (fine-tuning
        scripts measure the untrained model first), up to PRETRAINING_FORWARDS_MAX."""
        if self.trains or self.forwards >= PRETRAINING_FORWARDS_MAX:
            return False
        if self._code_trains is None:
            self._code_trains = _loaded_code_trains(self.user_files)
        return self._code_trains

    def _training_starts(self) -> None:
        """Forwards before training (a dry run, lazy modules, an evaluation) were counted as
        inference steps: training steps start from zero now, their records dropped."""
        if self.step:
            self.step_seconds.clear()
            self.cuda_events.clear()
            self.loss.forget_steps()
        self.step = self.forwards = 0
        self.syncs.step = self.dataloader.step = 0
        if self.distributed is not None:
            self.distributed.step = 0
        self.watching = self._watched(0)
        self.flops.reset()
        if self.config.flops and self.config.flop_step == 0:
            self.flops.start(0)

    @property
    def trains(self) -> bool:
        return self.optimizer_built or self.manual_training

    @property
    def _deciding_on_hand_updates(self) -> bool:
        """Between the first backward and the one that shows an update by hand (or the last
        one looked at), forwards are no inference steps: they would end a training run
        before it could be recognised."""
        return 0 < self._hand_checks < HAND_UPDATE_CHECKS and not self.manual_training

    def _wrap_getstate(self, original: Callable[..., Any]) -> Callable[..., Any]:
        """A module pickled (`torch.save(model, path)`) or deep-copied (`copy.deepcopy(model)`
        for a best-model snapshot) leaves out the hooks `_hook_own` put on it: bound to this
        session, they made the save raise "Can't pickle local object" (a char-RNN trainer's
        checkpoint) and the copy copy the session."""

        def getstate(module: torch.nn.Module) -> Any:
            state = original(module)
            if not isinstance(state, dict):
                return state
            for key in ("_forward_pre_hooks", "_forward_hooks"):
                hooks = state.get(key)
                if hooks and any(getattr(h, "__self__", None) is self for h in hooks.values()):
                    kept = [
                        (k, h) for k, h in hooks.items() if getattr(h, "__self__", None) is not self
                    ]
                    state = {**state, key: type(hooks)(kept)}
            return state

        return getstate

    def _wrap_functional_loss(self, original: Callable[..., Any]) -> Callable[..., Any]:
        name = getattr(original, "__name__", "")

        def loss(*args: Any, **kwargs: Any) -> Any:
            value = original(*args, **kwargs)
            # traced into a compiled loss (`torch.compile(F.cross_entropy)`), it runs once, on
            # fake tensors: the loss is then taken from its `backward()`
            if self.loss_depth == 0 and not torch.compiler.is_compiling():
                self.loss.on_criterion(value)
                if self.groups is not None:
                    self.groups.on_criterion(name)
            return value

        return loss

    # --- module hooks --------------------------------------------------------------------

    def _set_global_hooks(self, on: bool) -> None:
        """The forward hooks on every module: on, or off (the roots and loss modules seen so
        far keep their own, `_own_pre`/`_own_post`)."""
        if on and not self._global_hooks:
            nn_module = torch.nn.modules.module
            self._global_hooks = [  # they guard themselves: one frame less per module call
                nn_module.register_module_forward_pre_hook(self._pre),
                nn_module.register_module_forward_hook(self._post, always_call=True),
            ]
        elif not on:
            for handle in self._global_hooks:
                handle.remove()
            self._global_hooks = []

    def _hook_own(self, module: torch.nn.Module) -> None:
        """Hooks of its own on a root or loss module, which act only while the global ones
        are off, so that the module is seen on every step."""
        if id(module) in self._own_hooks:
            return
        self._own_hooks.add(id(module))
        self._handles += [
            module.register_forward_pre_hook(self._own_pre),
            module.register_forward_hook(self._own_post, always_call=True),
        ]

    def _own_pre(self, module: torch.nn.Module, args: Any) -> None:
        if not self._global_hooks:
            self._pre(module, args)

    def _own_post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if self._global_hooks:
            return
        self._post(module, args, output)
        if self.depth == 0 and self._global_wanted:
            self._set_global_hooks(True)  # asked for inside a forward: from the next one on

    def _global_hooks_needed(self) -> bool:
        return (
            not self.trains
            or self.watching
            or self.hunting
            or self.dataflow_on
            or _compiled_anything()
        )

    def _name(self, module: torch.nn.Module) -> str:
        return self.names.get(id(module)) or type(module).__name__

    def _register_root(self, module: torch.nn.Module, args: Any, kwargs: dict[str, Any]) -> None:
        key = id(module)
        self.roots[key] = module
        prefix = type(module).__name__
        for path, sub in module.named_modules():
            self.names.setdefault(id(sub), f"{prefix}.{path}" if path else prefix)
        for path, param in module.named_parameters():
            self.param_paths.setdefault(id(param), (key, path))
            self.grads.names.setdefault(id(param), f"{prefix}.{path}")
        numel = sum(t.numel() for t in _flat_tensors((args, kwargs)))
        if numel <= CAPTURE_MAX_NUMEL:
            self.captured[key] = (_detached(args), _detached(kwargs))

    def _pre(self, module: torch.nn.Module, args: Any) -> None:
        if torch.compiler.is_compiling():
            return  # inside a region dynamo traces: stay out of the graph
        try:
            if self.depth == 0 and self._global_hooks and not isinstance(module, _Loss):
                self._open_direct_caller(module)
            self.depth += 1
            if isinstance(module, _Loss):
                self.loss_depth += 1
                self._hook_own(module)
                return
            # a root seen before had state: asking again walks its parameters every step
            if self.depth == 1 and id(module) not in self.roots and _stateless(module):
                self.depth = 0
                self._stateless.append(id(module))
                return
            if self.depth == 1:
                self._in_optimizer_step = False  # an optimizer step that raised left it set
                if self.syncs.suspended:  # and left these off
                    self.syncs.resume()
                if id(module) not in self.roots:
                    self._register_root(module, args, {})
                    self._hook_own(module)
                self.mode.on_root_forward(
                    self._name(module), module, self._direct_sites.get(id(module))
                )
                if self.distributed is not None:
                    self.distributed.on_root_forward(module)
                if self.watching:
                    self.forward.on_input(self.step, self._name(module), args)
                    self.values.on_model_input(type(module).__name__, args)
            if self.dataflow_on:
                self.dataflow.on_enter(self.step, self.depth - 1, self._name(module), module, args)
        except (StopRun, KeyboardInterrupt):
            raise
        except Exception:
            self._error()

    def _open_direct_caller(self, module: torch.nn.Module) -> None:
        """A top-level call made inside `model.forward(x)` called directly: the model is the
        call (`direct_forward`), opened now and closed when its forward returns."""
        if not self.direct.can_watch():
            return
        found = direct_caller(module, sys._getframe(2))
        if found is None:
            return
        owner, frame, args = found
        # the model's own forward is a user frame too: its place is the line that called it
        self._direct_sites[id(owner)] = self.user_files.caller_from(frame.f_back)
        self._pre(owner, args)  # opens, first, a direct forward this one runs inside
        if self.depth > 0:
            self.direct.watch(owner, frame, args)
        else:
            self._direct_sites.pop(id(owner), None)

    def _post(self, module: torch.nn.Module, args: Any, output: Any) -> None:
        if torch.compiler.is_compiling():
            return
        try:
            if self.depth == 0 and self._stateless and self._stateless[-1] == id(module):
                self._stateless.pop()
                return
            self.depth = max(self.depth - 1, 0)
            if isinstance(module, _Loss):
                self.loss_depth = max(self.loss_depth - 1, 0)
                if self.loss_depth == 0:
                    self.loss.on_criterion(output)
                    if self.groups is not None:
                        self.groups.on_criterion(type(module).__name__)
                return
            if self.watching:
                self.forward.on_output(self.step, self._name(module), module, output)
            if self.dataflow_on:
                self.dataflow.on_exit(module, output)
            if self.depth == 0:
                self.root_shapes.observe(module, args, output)
                if self.groups is not None and not (module.training and torch.is_grad_enabled()):
                    self.groups.on_eval_output(args, output)
                self.mode.on_root_output(
                    self._name(module), module, output, self._direct_sites.pop(id(module), None)
                )
                self.root_forwards += 1
                if not self.trains:
                    self.forwards += 1
                    if not self._deciding_on_hand_updates:
                        self._end_step()
                elif self.forward.waiting > (MAX_WAITING_READS if cuda_in_use() else 0):
                    # on a CPU nothing is gained by waiting, and thousands of small tensors
                    # kept among a forward's large ones fragment the heap (nanoGPT's lecture
                    # script: 0.5 -> 4 GB over its 400 evaluation forwards, killed at the
                    # memory limit before its first step)
                    self._read_back()
        except (StopRun, KeyboardInterrupt):
            raise
        except Exception:
            self._error()

    # --- optimizer hooks -----------------------------------------------------------------

    def _optimizer_pre(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._in_optimizer_step = True
        kind = type(optimizer)
        builtin = self._builtin_optimizers.get(kind)
        if builtin is None:
            builtin = self._builtin_optimizers[kind] = kind.__module__.startswith("torch.")
        if builtin:
            self.syncs.suspend()  # resumed when the step ends (or by the next root forward)
        if self.main_optimizer is None:
            self.main_optimizer = id(optimizer)
            # an optimizer built before the harness was installed (an attached session): its
            # steps are the steps from now on, not each top-level forward as well
            self.optimizer_built = True
        self.grads.before_step(self.step, optimizer, norms=self.watching)
        if id(optimizer) == self.main_optimizer and self.watching:
            for root in self.roots.values():
                self.grads.scan_model(root)
        if id(optimizer) == self.main_optimizer and self.distributed is not None:
            self.distributed.before_optimizer_step(list(self.roots.values()))

    def _optimizer_post(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._in_optimizer_step = False
        if self.syncs.suspended:
            self.syncs.resume()
        if id(optimizer) == self.main_optimizer:
            self._end_step()

    # --- steps ---------------------------------------------------------------------------

    @property
    def next_step_kind(self) -> Literal["sampled", "flush", "scan", "ordinary"]:
        """What the harness does on the step about to run, costliest first: a sampled step
        reads gradient norms and the allocator, a flush reads the kept values back, a scan
        walks the autograd graph; an ordinary step does none of them (the one that must stay
        cheap on a launch-bound GPU loop, which the probe benchmarks and tests single out)."""
        if self.watching:
            return "sampled"
        if (self.step + 1) % max(self.config.flush_every, 1) == 0:
            return "flush"
        if scan_schedule(self.step):
            return "scan"
        return "ordinary"

    def _watched(self, step: int) -> bool:
        every = self.config.sample_every
        return self.hunting or (every > 0 and step % every == 0)

    def _end_step(self) -> None:
        step = self.step
        now = time.perf_counter()
        self.step_seconds[step] = now - self._step_started
        if cuda_in_use():
            event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            event.record()
            self.cuda_events[step] = event
        self.loss.end_step(step)
        if self.flops.active and self.flops.step == step:
            self.flops.stop()
        if self.dataflow_on:
            self.dataflow.stop()
        self.dataflow_on = False
        self.step += 1
        self.syncs.step = self.dataloader.step = self.step
        if self.distributed is not None:
            self.distributed.step = self.step
        # allocator reads on sampled steps only (each builds the allocator's whole statistics)
        self.memory.end_step(step, sampled=self.watching)
        if self.step % max(self.config.flush_every, 1) == 0:
            self._read_back()
        if self.step >= self.config.steps and not self._waiting_for_training():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.vram.observe()
            raise StopRun()
        self.watching = self._watched(self.step)
        self.dataloader.sampled = self.data_functions.sampled = self.watching
        self._global_wanted = False
        if self.depth == 0:
            needed = self._global_hooks_needed()
            if needed or self._global_hooks:
                self._set_global_hooks(needed)
        if self.config.flops and self.step == self._flop_step:
            self.flops.start(self.step)
        if self.step == 1:
            self.syncs.set_cuda_mode(True)
            self.power.steady()
        self._step_started = time.perf_counter()

    def _read_back(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # our own reads must not show up as the user's
            self.flush()
            self.vram.observe()

    def flush(self) -> None:
        """Read device-side values back (the harness's only host syncs), then decide whether
        to hunt for the first non-finite value on every following step."""
        cuda_mode = self.syncs.cuda_mode
        self.syncs.set_cuda_mode(False)
        try:
            read_together([self.loss, self.grads, self.forward, self.values])
        finally:
            self.syncs.set_cuda_mode(cuda_mode)
        nonfinite = self.grads.first_nonfinite is not None or any(
            v != v or v in (float("inf"), float("-inf")) for v in self.loss.values.values()
        )
        if nonfinite and self.forward.first_nonfinite is None:
            self.hunting = True

    def _on_sync_warning(self) -> None:
        self.syncs.on_cuda_warning()

    # --- results -------------------------------------------------------------------------

    def step_times_s(self) -> dict[int, float]:
        """Per-step seconds: CUDA event deltas when the GPU was used, else wall clock."""
        events = self.cuda_events
        if len(events) >= 2:
            torch.cuda.synchronize()
            steps = sorted(events)
            return {
                b: events[a].elapsed_time(events[b]) / 1e3
                for a, b in itertools.pairwise(steps)
                if b == a + 1
            }
        return dict(self.step_seconds)

    def main_model(self) -> torch.nn.Module | None:
        """The root module the optimizer updates most, else the largest root module."""
        if not self.roots:
            return None

        def score(module: torch.nn.Module) -> tuple[int, int]:
            params = list(module.parameters())
            optimized = sum(1 for p in params if id(p) in self.grads.optimized)
            return optimized, sum(p.numel() for p in params)

        return max(self.roots.values(), key=score)


def _stateless(module: torch.nn.Module) -> bool:
    """A module with no parameter and no buffer is a function, not a model: the true dynamics
    an ODE demo integrates to make its data, a transform or a resize run before the optimizer
    exists. Its calls are neither inference steps (twenty of them stopped torchdiffeq's demo
    before it trained) nor a model's forwards; a model it calls is a root of its own."""
    return next(module.parameters(), None) is None and next(module.buffers(), None) is None


def _compiled_anything() -> bool:
    """Whether dynamo has compiled a frame: its guards see the global hooks, so switching
    them would recompile."""
    utils = sys.modules.get("torch._dynamo.utils")
    counters = getattr(utils, "counters", None)
    return bool(counters and counters["frames"]["total"])


def _flat_tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, tuple | list):
        return [t for item in obj for t in _flat_tensors(item)]
    if isinstance(obj, dict):
        return [t for item in obj.values() for t in _flat_tensors(item)]
    return []


def _detached(obj: Any) -> Any:
    """A host copy of the first input (once per root module): device memory stays free."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_detached(item) for item in obj))
    if isinstance(obj, tuple | list):
        return type(obj)(_detached(item) for item in obj)
    if isinstance(obj, dict):
        return {key: _detached(value) for key, value in obj.items()}
    return obj
