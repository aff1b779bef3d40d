"""The harness's module hooks between sampled steps: on every module only when something needs
every module (the cost a launch-bound GPU loop pays per module call), while the loss, the
root forwards and the step count stay observed on every step."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from types import FunctionType

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from torchdoctor.sandbox.probes.config import ProbeConfig  # noqa: E402
from torchdoctor.sandbox.probes.frames import UserFiles  # noqa: E402
from torchdoctor.sandbox.probes.session import Session  # noqa: E402

SAMPLE_EVERY = 4


@pytest.fixture
def session() -> Iterator[Session]:
    config = ProbeConfig(
        script=__file__, steps=10**6, sample_every=SAMPLE_EVERY, flush_every=SAMPLE_EVERY
    )
    probes = Session(config, UserFiles(__file__))
    probes.install()
    try:
        yield probes
    finally:
        probes.uninstall()


def _classifier() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3))


def _train_step(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    optimizer.zero_grad()
    loss = criterion(model(torch.randn(4, 6)), torch.randint(0, 3, (4,)))
    loss.backward()
    optimizer.step()


def test_between_sampled_steps_only_roots_and_losses_are_hooked(session: Session) -> None:
    torch.manual_seed(0)
    model, criterion = _classifier(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    every_module: dict[int, bool] = {}
    for _ in range(2 * SAMPLE_EVERY):
        every_module[session.step] = bool(session._global_hooks)
        _train_step(model, criterion, optimizer)
    session.flush()

    assert every_module == {s: s % SAMPLE_EVERY == 0 for s in range(2 * SAMPLE_EVERY)}
    assert sorted(session.loss.values) == list(range(2 * SAMPLE_EVERY))  # the loss every step
    assert session.loss.sources == {"criterion"}
    assert sorted(session.grads.global_norms) == [0, SAMPLE_EVERY]  # norms on sampled steps
    assert set(session.roots) == {id(model)}


def test_a_model_first_evaluated_between_samples_is_still_seen(session: Session) -> None:
    """An evaluation loop of a model never run before (no `eval()`: the bug the mode probe
    reports) starts with a block without grad, which turns every module's hooks back on."""
    torch.manual_seed(0)
    model, criterion = _classifier(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        _train_step(model, criterion, optimizer)
    assert not session._global_hooks

    averaged = _classifier()
    with torch.no_grad():
        averaged(torch.randn(4, 6))

    assert id(averaged) in session.roots
    kinds = {kind for kind, *_ in session.mode.issues}
    assert "train-mode-at-inference" in kinds


def test_eval_turns_every_module_back_on_until_the_next_step(session: Session) -> None:
    torch.manual_seed(0)
    model, criterion = _classifier(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):
        _train_step(model, criterion, optimizer)
    assert not session._global_hooks

    model.eval()
    assert session._global_hooks
    model.train()
    _train_step(model, criterion, optimizer)  # step 2 ends: step 3 is not sampled
    assert not session._global_hooks


def test_an_optimizer_built_before_the_harness_ends_each_step_once() -> None:
    """Attached to a loop already running: a training step is one optimizer step, not a
    top-level forward and an optimizer step."""
    torch.manual_seed(0)
    model, criterion = _classifier(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    config = ProbeConfig(script=__file__, steps=10**6, sample_every=SAMPLE_EVERY)
    probes = Session(config, UserFiles(__file__))
    probes.install()
    try:
        _train_step(model, criterion, optimizer)
        first = probes.step
        for _ in range(5):
            _train_step(model, criterion, optimizer)
    finally:
        probes.uninstall()
    assert probes.step - first == 5


class _LambOptimizer(torch.optim.SGD):
    """A user's own optimizer (defined in this file): its `.item()` is the user's line."""

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def]
        for group in self.param_groups:
            for p in group["params"]:
                p.add_(p.grad, alpha=-group["lr"] * min(1.0, p.norm().item()))


def test_syncs_in_a_builtin_optimizer_step_cost_no_wrapper_and_the_users_stay_counted(
    session: Session,
) -> None:
    """A built-in optimizer's per-parameter `.item()` runs with the plain methods (it is never
    the user's line); the user's own `.item()` calls, after a step or inside a step of an
    optimizer the user wrote, are counted."""
    torch.manual_seed(0)
    model, criterion = _classifier(), nn.CrossEntropyLoss()
    builtin = torch.optim.AdamW(model.parameters(), lr=0.1)  # `.item()` of each step count
    wrapped_during_step: list[bool] = []
    builtin.register_step_pre_hook(
        lambda *_: wrapped_during_step.append(isinstance(torch.Tensor.item, FunctionType))
    )
    users = _LambOptimizer(model.parameters(), lr=0.1)
    for optimizer in (builtin, builtin, users):
        _train_step(model, criterion, optimizer)
        model(torch.randn(1, 6)).sum().item()

    lines = {line: count for (_, line, method), count in session.syncs.by_line.items()}
    assert wrapped_during_step == [False, False]
    assert not session.syncs.suspended
    assert sorted(lines.values()) == [3, 4]  # after each step; per parameter in the user's step


def test_an_optimizers_own_no_grad_block_leaves_the_module_hooks_off(session: Session) -> None:
    """An optimizer's step runs without grad (`@torch.no_grad()` on a user's or a library's
    `step`): that is no evaluation, so it must not turn the hooks on every module on (and
    the step's end off again) every step; a block without grad after the step still does."""
    torch.manual_seed(0)
    model, criterion = _classifier(), nn.CrossEntropyLoss()
    optimizer = _LambOptimizer(model.parameters(), lr=0.1)
    during: list[bool] = []
    optimizer.register_step_post_hook(lambda *_: during.append(bool(session._global_hooks)))
    for _ in range(3):
        _train_step(model, criterion, optimizer)  # steps 0 (sampled), 1 and 2
    assert during == [True, False, False]
    with torch.no_grad():
        model(torch.randn(2, 6))
    assert session._global_hooks


def test_the_session_names_each_step_as_it_then_treats_it() -> None:
    """`Session.next_step_kind` (what `probe_overhead.py --step-kinds` and the step-work test
    file steps by) says sampled when the harness then watches every module, and flush when
    the step's end reads the values back; a graph-scan step reads nothing back either."""
    config = ProbeConfig(script=__file__, steps=10**6, sample_every=4, flush_every=5)
    probes = Session(config, UserFiles(__file__))
    probes.install()
    torch.manual_seed(0)
    model, criterion = _classifier(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    named: dict[int, str] = {}
    seen: dict[int, str] = {}
    try:
        for _ in range(12):
            index, watching, kind = probes.step, probes.watching, probes.next_step_kind
            _train_step(model, criterion, optimizer)
            flushed = index in probes.loss.values  # read back at this step's end
            seen[index] = "sampled" if watching else "flush" if flushed else "ordinary"
            named[index] = "ordinary" if kind == "scan" else kind
    finally:
        probes.uninstall()
    assert named == seen
    assert set(seen.values()) == {"sampled", "flush", "ordinary"}


def test_an_evaluation_inside_a_step_is_read_back_forward_by_forward_on_a_cpu(
    session: Session,
) -> None:
    """nanoGPT's lecture script evaluates 400 batches before its first optimizer step: on a CPU
    each forward's module statistics are read at once, not held until the step ends (thousands
    of small tensors kept among the forwards' large ones fragmented the heap, 0.5 -> 4 GB),
    and the evaluation's statistics are all still counted."""
    torch.manual_seed(0)
    model, criterion = _classifier(), nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert session.watching  # step 0 is sampled: every module's output is measured
    waiting = []
    model.eval()
    with torch.no_grad():
        for _ in range(5):
            model(torch.randn(4, 6))
            waiting.append(session.forward.waiting)
    model.train()
    _train_step(model, criterion, optimizer)
    session.flush()

    assert waiting == [0] * 5
    calls = {name: stats.calls for name, stats in session.forward.stats.items()}
    assert calls and all(count == 6 for count in calls.values()), calls  # 5 evaluations + 1
    assert sorted(session.loss.values) == [0]


class _Integrator(nn.Module):
    """A module with no state of its own calling a model held outside its submodules (an ODE
    solver's wrapper around the function it integrates)."""

    def __init__(self, func: nn.Module | None = None) -> None:
        super().__init__()
        self.funcs = [func] if func is not None else []

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        for func in self.funcs:
            y = y + 0.1 * func(y)
        return y * 0.5


def test_modules_without_state_are_no_inference_steps_and_no_roots(tmp_path: Path) -> None:
    """Twenty calls of a parameter-free module before the optimizer (data made by integrating
    the true dynamics, a resize of the inputs) ended a run as twenty inference steps; a model
    it calls is the root instead. (The script is an inference one: a run whose code trains
    waits through forwards past the limit.)"""
    from torchdoctor.sandbox.probes.control import StopRun

    torch.manual_seed(0)
    script = tmp_path / "infer.py"
    script.write_text("model(x)\n")
    config = ProbeConfig(script=str(script), steps=3, sample_every=1, flush_every=1)
    probes = Session(config, UserFiles(str(script)))
    probes.install()
    model = nn.Linear(6, 6)
    try:
        with torch.no_grad():
            for _ in range(30):
                _Integrator()(torch.randn(4, 6))
                nn.Upsample(scale_factor=1)(torch.randn(1, 1, 6))
            assert (probes.step, probes.root_forwards, probes.roots) == (0, 0, {})
            _Integrator(model)(torch.randn(4, 6))
            assert (probes.step, probes.depth, set(probes.roots)) == (1, 0, {id(model)})
            with pytest.raises(StopRun):
                for _ in range(2):
                    model(torch.randn(4, 6))
    finally:
        probes.uninstall()


class _Served(nn.Module):
    """A model whose forward calls its body's forward directly, as well."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward(x).softmax(-1)


@pytest.mark.parametrize("nested", [False, True])
def test_a_model_whose_forward_is_called_directly_is_one_root_and_one_forward(
    tmp_path: Path, nested: bool
) -> None:
    """Held-out pytorch-flask-api: `model.forward(tensor)` runs no hook of the model's own, so
    each of its layers was a root: one request was six inference forwards (the run stopped
    inside the first), the data-flow map showed the first layer alone, and the mode probe
    named `Conv2d` and `BatchNorm2d` apart."""
    from torchdoctor.sandbox.probes.control import StopRun

    torch.manual_seed(0)
    script = tmp_path / "serve.py"
    script.write_text("model.forward(x)\n")
    config = ProbeConfig(script=str(script), steps=3, sample_every=1, flush_every=1)
    probes = Session(config, UserFiles(str(script)))
    probes.install()
    model = (_Served() if nested else _Served().body).eval()
    try:
        for _ in range(2):
            model.forward(torch.randn(4, 6))
        assert (probes.step, probes.depth, set(probes.roots)) == (2, 0, {id(model)})
        assert sys.getprofile() is None
        with pytest.raises(StopRun):
            model.forward(torch.randn(4, 6))
    finally:
        probes.uninstall()
    assert sys.getprofile() is None
    assert {i["module"] for i in probes.mode.report()} == {type(model).__name__}


SERVED = """import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))

    def forward(self, x):
        return self.body(x).softmax(-1)


model = Classifier().eval()
for _ in range(3):
    scores = model.forward(torch.randn(4, 6))
"""


def test_a_direct_forward_is_placed_at_its_call_not_inside_the_models_forward(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mode probe's place for a direct forward is the line that calls it (where the
    static rules report the same evaluation), not a line of the model's own forward."""
    import runpy

    script = tmp_path / "serve.py"
    script.write_text(SERVED)
    monkeypatch.chdir(tmp_path)
    config = ProbeConfig(script=str(script), steps=10, sample_every=1, flush_every=1)
    probes = Session(config, UserFiles(str(script)))
    probes.install()
    try:
        runpy.run_path(str(script))
    finally:
        probes.uninstall()
    (issue,) = probes.mode.report()
    assert (issue["module"], issue["file"], issue["line"]) == ("Classifier", "serve.py", 16)


def test_parameters_moved_between_backwards_are_compared_by_identity() -> None:
    """Two backwards may reach the parameters in another order or another number (a graph
    walked twice): only a parameter seen at both, by identity, says whether one moved."""
    from torchdoctor.sandbox.probes.session import _moved

    before = ({1: 0, 2: 1}, torch.tensor([1.0, 2.0]))
    assert not _moved(before, ({2: 0, 1: 1}, torch.tensor([2.0, 1.0])))
    assert not _moved(before, ({2: 0, 3: 1}, torch.tensor([2.0, 5.0])))
    assert _moved(before, ({3: 0, 2: 1}, torch.tensor([5.0, 2.5])))
    assert not _moved(before, ({4: 0}, torch.tensor([9.0])))


def test_a_losss_parameters_are_read_off_its_graph() -> None:
    from torchdoctor.sandbox.probes.session import graph_parameters

    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    frozen = nn.Linear(4, 1).requires_grad_(False)
    loss = (model(torch.randn(3, 4)) + frozen(torch.randn(3, 4))).pow(2).mean()
    assert {id(p) for p in graph_parameters(loss)} == {id(p) for p in model.parameters()}
