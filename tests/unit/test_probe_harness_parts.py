"""Pure parts of the probes harness: argument splitting, loss comparison, GPU peak lookup,
graph-scan schedule, the torchvision stand-in's datasets and transforms, which parameters
got a gradient, an import outside the line trace."""

from __future__ import annotations

import sys
from pathlib import Path
from types import FrameType

import pytest

torch = pytest.importorskip("torch")

from torchdoctor.sandbox.probes.config import parse_args  # noqa: E402
from torchdoctor.sandbox.probes.datasets import (  # noqa: E402
    Compose,
    Normalize,
    RandomCrop,
    SyntheticVisionDataset,
    ToTensor,
)
from torchdoctor.sandbox.probes.determinism import compare, probe  # noqa: E402
from torchdoctor.sandbox.probes.gpu_peaks import peak_tflops  # noqa: E402
from torchdoctor.sandbox.probes.linetrace import import_untraced  # noqa: E402
from torchdoctor.sandbox.probes.memory import scan_schedule  # noqa: E402
from torchdoctor.sandbox.probes.numerics import ForwardWatch, GradientProbe  # noqa: E402
from torchdoctor.sandbox.probes.tensors import read_together  # noqa: E402


def test_unknown_options_and_those_after_double_dash_go_to_the_script() -> None:
    config = parse_args(["train.py", "--lr", "0.1", "--steps", "3", "--", "--steps", "9"])
    assert config.steps == 3
    assert config.script_args == ("--lr", "0.1", "--steps", "9")


def test_identical_losses_are_deterministic_and_bitwise_equal() -> None:
    result = compare([1.0, 0.5, None], [1.0, 0.5, None])
    assert result["deterministic"] and result["bitwise_equal"]


def test_divergence_beyond_tolerance_names_the_first_step() -> None:
    result = compare([1.0, 0.5, 0.4], [1.0, 0.51, 0.3])
    assert not result["deterministic"]
    assert result["first_divergent_step"] == 1


def test_tiny_float_noise_is_within_tolerance_but_not_bitwise() -> None:
    result = compare([1.0], [1.0 + 1e-9])
    assert result["deterministic"] and not result["bitwise_equal"]


def test_a_run_that_never_reached_a_model_is_not_run_again_seeded(tmp_path: Path) -> None:
    # the script is absent: a seeded re-run would have recorded its failure as an outcome
    config = parse_args([str(tmp_path / "absent.py"), "--determinism", "3"])
    nothing = {"steps_completed": 0, "forward_passes": 0, "loss": {"values": []}}
    result = probe(config, nothing)
    assert result["ok"] and result["steps_compared"] == 0 and result["outcomes"] == []


@pytest.mark.parametrize(
    ("name", "peak"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.1),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("NVIDIA B200", 2250.0),
        ("Tesla T4", None),
    ],
)
def test_gpu_peak_lookup_prefers_the_specific_name(name: str, peak: float | None) -> None:
    assert peak_tflops(name) == peak


def test_graph_scans_run_early_then_at_powers_of_two() -> None:
    assert [s for s in range(40) if scan_schedule(s)] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 16, 32]


def test_stand_in_dataset_has_the_real_shape_length_and_is_repeatable() -> None:
    transform = Compose(
        [RandomCrop(32, padding=4), ToTensor(), Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))]
    )
    data = SyntheticVisionDataset("CIFAR10", "test", "./data", train=True, transform=transform)
    image, label = data[3]
    assert len(data) == 50000
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert 0 <= label < 10
    raw = SyntheticVisionDataset("MNIST", "test", "./data", train=False)
    assert len(raw) == 10000
    assert torch.equal(ToTensor()(raw[5][0]), ToTensor()(raw[5][0]))


def test_graph_roots_are_found_through_lists_and_the_users_objects() -> None:
    from torchdoctor.sandbox.probes.frames import UserFiles
    from torchdoctor.sandbox.probes.memory import graph_roots

    class Log:
        def __init__(self) -> None:
            self.history: list[object] = []

    weight = torch.ones(2, requires_grad=True)
    log = Log()
    log.history.append(weight * 2)
    kept = [weight * 3]
    detached = (weight * 4).detach()
    paths = {path for path, _ in graph_roots(UserFiles(__file__))}
    assert {"kept[0]", "log.history[0]"} <= paths
    assert "detached" not in paths
    del kept, detached


def test_gradients_seen_only_between_sampled_steps_or_in_a_later_group_still_count() -> None:
    """Unsampled steps look only at parameters still waiting for a gradient; a parameter
    reached on one of them, or in a group added after the first step, is not "never"."""
    params = {name: torch.nn.Parameter(torch.ones(2)) for name in ("used", "late", "never")}
    added = {name: torch.nn.Parameter(torch.ones(2)) for name in ("added", "added_never")}
    probe = GradientProbe(names={id(p): name for name, p in (params | added).items()})
    optimizer = torch.optim.SGD(list(params.values()), lr=0.1)
    for step in range(6):
        if step == 4:
            optimizer.add_param_group({"params": list(added.values())})
        optimizer.zero_grad()
        loss = params["used"].sum()
        if step == 3:
            loss = loss + params["late"].sum()
        if step == 5:
            loss = loss + added["added"].sum()
        loss.backward()
        probe.before_step(step, optimizer, norms=step == 0)
    assert probe.report(6)["never_received_grad"] == ["added_never", "never"]


def test_a_loss_seen_while_a_tracer_runs_is_left_for_the_backward_one() -> None:
    """torch.compile traces a wrapped loss function on fake (or functional) tensors, which
    cannot be read afterwards: the step's loss comes from the real `backward()` tensor."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from torchdoctor.sandbox.probes.numerics import LossProbe

    with FakeTensorMode():
        traced = torch.ones((), requires_grad=True) * 2
    probe = LossProbe()
    probe.on_criterion(traced)
    probe.on_backward(torch.tensor(1.5))
    probe.end_step(0)
    read_together([probe])
    assert probe.values == {0: 1.5}
    assert probe.sources == {"backward"}


def test_the_kept_loss_is_a_copy_of_the_scripts_tensor() -> None:
    """A CUDA graph's output buffer is rewritten by its next replay, before the probe reads
    its kept losses (at flush): what it keeps must not share the buffer."""
    from torchdoctor.sandbox.probes.numerics import LossProbe

    probe = LossProbe()
    loss = torch.tensor(2.0, requires_grad=True) * 1.0
    probe.on_criterion(loss)
    buffer = torch.tensor(3.0)
    probe.on_backward(buffer)
    probe.end_step(0)
    with torch.no_grad():
        loss.fill_(9.0)
    buffer.fill_(9.0)
    read_together([probe])
    assert probe.values == {0: 2.0}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_watched_outputs_give_mean_and_largest_magnitude_dead_units_and_the_first_nan(
    dtype: torch.dtype,
) -> None:
    watch = ForwardWatch()
    relu, linear = torch.nn.ReLU(), torch.nn.Linear(2, 2)
    activations = torch.tensor([[0.0, 2.0, -4.0], [0.0, 1.0, 0.0]], dtype=dtype)
    watch.on_input(0, "Net", (activations,))
    watch.on_output(0, "Net.relu", relu, activations.relu())
    watch.on_output(0, "Net.fc", linear, activations)
    watch.on_output(1, "Net.fc", linear, torch.tensor([1.0, float("nan")], dtype=dtype))
    watch.on_output(2, "Net.fc", linear, torch.tensor([float("-inf")], dtype=dtype))
    read_together([watch])

    relu_stats, fc_stats = watch.stats["Net.relu"], watch.stats["Net.fc"]
    assert relu_stats.mean_abs_sum == pytest.approx(0.5) and relu_stats.max_abs == 2.0
    assert relu_stats.dead_calls == 1 and relu_stats.dead_sum == pytest.approx(2 / 3)
    assert fc_stats.calls == 3 and fc_stats.nonfinite_calls == 2 and fc_stats.dead_calls == 0
    assert fc_stats.max_abs == 4.0 and fc_stats.mean_abs_sum == pytest.approx(7 / 6)
    assert watch.first_nonfinite == {"step": 1, "phase": "forward", "module": "Net.fc"}


def test_a_non_finite_model_input_is_the_first_non_finite_value() -> None:
    watch = ForwardWatch()
    watch.on_input(3, "Net", (torch.tensor([1.0, float("inf")]),))
    watch.on_output(3, "Net.fc", torch.nn.Linear(1, 1), torch.tensor([float("nan")]))
    read_together([watch])
    assert watch.first_nonfinite == {"step": 3, "phase": "input", "module": "input of Net"}
    assert watch.stats["Net.fc"].nonfinite_calls == 1


class _Waiting:
    def __init__(self, *tensors: torch.Tensor) -> None:
        self.tensors, self.taken = list(tensors), [[-1.0]]

    def on_device(self) -> list[torch.Tensor]:
        return self.tensors

    def take(self, vectors: list[list[float]]) -> None:
        self.taken, self.tensors = vectors, []


def test_every_probes_waiting_values_are_read_together_and_handed_back_in_order() -> None:
    weight = torch.ones(2, requires_grad=True)
    first = _Waiting(torch.tensor(1.5), torch.tensor([2.0, 3.0], dtype=torch.bfloat16))
    empty = _Waiting()
    last = _Waiting(weight * 2, torch.tensor([[4.0], [5.0]]))
    read_together([first, empty, last])
    assert first.taken == [[1.5], [2.0, 3.0]]
    assert empty.taken == []
    assert last.taken == [[2.0, 2.0], [4.0, 5.0]]


def test_an_untraced_import_reaches_no_trace_hook_and_the_hook_is_back_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "td_untraced_probe.py").write_text("def f():\n    return 1\n\nVALUE = f()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[str] = []

    def hook(frame: FrameType, event: str, arg: object) -> None:
        seen.append(frame.f_code.co_filename)

    previous = sys.gettrace()
    sys.settrace(hook)
    try:
        import_untraced("td_untraced_probe")
        restored = sys.gettrace()
    finally:
        sys.settrace(previous)
    assert sys.modules["td_untraced_probe"].VALUE == 1
    assert restored is hook
    assert not [name for name in seen if name.endswith("td_untraced_probe.py")]
