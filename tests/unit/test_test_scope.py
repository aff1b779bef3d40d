"""Production-only rules stand down in pytest modules; a state round trip through a temporary
file needs no map_location. Shapes from pytorch/ignite: its metric tests build inputs on the
CPU and move them (`torch.rand(n).to(device)`), its checkpoint tests read back the file the
handler just wrote, and its LR-scheduler simulation saves and restores the optimizer state."""

from __future__ import annotations

from torchdoctor.agent.checks.engine import analyse_files
from torchdoctor.agent.checks.linters.peer_veto import PeerVeto
from torchdoctor.agent.checks.registry import all_rules
from torchdoctor.agent.checks.test_scope import PRODUCTION_RULES, production_only
from torchdoctor.agent.models import Evidence

METRIC_TEST = """
import pickle
import torch
import torch.nn.functional as F

def test_mean_error(device):
    for _ in range(5):
        y_pred = torch.rand(10, 1).to(device)
        y = torch.rand(10, 1).to(device)
        probs = F.softmax(y_pred)
        assert probs.shape == y.shape

def test_pickled_net_round_trip(tmp_path, net):
    with open(tmp_path / "net.pkl", "rb") as f:
        assert pickle.load(f).module_ is not None

def test_checkpoint_round_trip(tmp_path, handler, engine):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    handler(engine, {"model": torch.nn.Linear(2, 2).to(device)})
    loaded = torch.load(tmp_path / handler.last_checkpoint)
    assert "model" in loaded
"""


def _rules_at(path: str, source: str) -> set[str]:
    return {f.rule for f in analyse_files([(path, source)]).all_findings()}


def test_performance_and_loading_rules_stand_down_in_a_test_module_only() -> None:
    in_tests = _rules_at("tests/metrics/test_mae.py", METRIC_TEST)
    elsewhere = _rules_at("metrics/check_mae.py", METRIC_TEST)
    loading = {"torch-load-unsafe", "torch-load-no-map-location", "pickle-model-artifacts"}
    assert {"cpu-then-move", "torch-load-unsafe", "pickle-model-artifacts"} <= elsewhere
    assert not in_tests & ({"cpu-then-move"} | loading)
    assert "softmax-without-dim" in in_tests  # a correctness rule still reports in tests


# torchtitan's numerics tests: a few steps of each parallelism, their losses kept with their
# graphs to compare the runs. Memory a long run would pile up is no test's concern.
NUMERICS_TEST = """
import torch

def run_steps(model, optim, loss_fn, inputs, labels, steps=20):
    losses = []
    for _ in range(steps):
        optim.zero_grad()
        loss = loss_fn(model(inputs), labels)
        loss.backward()
        optim.step()
        losses.append(loss)
    return losses

def test_fsdp_matches_single_device(model, optim, loss_fn, inputs, labels):
    ref = run_steps(model, optim, loss_fn, inputs, labels)
    assert all(torch.allclose(a, b) for a, b in zip(ref, ref))
"""


def test_memory_rules_stand_down_in_a_test_module_only() -> None:
    assert "loss-graph-accumulation" in _rules_at("train/run_steps.py", NUMERICS_TEST)
    assert "loss-graph-accumulation" not in _rules_at("tests/test_numerics.py", NUMERICS_TEST)


def test_the_rules_that_stand_down_are_those_of_production_points() -> None:
    production = production_only(all_rules())
    assert {"cpu-then-move", "torchscript-for-deploy", "no-torch-compile"} <= production
    assert production >= PRODUCTION_RULES
    assert not production & {"softmax-without-dim", "zero-grad-missing", "hardcoded-secrets"}


def _peer_reason(path: str, code: str, source: str, line: int = 20) -> str | None:
    evidence = Evidence(
        source="torchfix" if code.startswith("TOR") else "bandit",
        kind="linter",
        message="torch.load without weights_only",
        file=path,
        line=line,
        data={"code": code},
    )
    return PeerVeto(lambda _: source).reason(evidence)


def test_peer_unsafe_load_findings_stand_down_in_a_test_module_only() -> None:
    for code in ("TOR102", "B614"):
        assert "test module" in (_peer_reason("tests/test_ckpt.py", code, METRIC_TEST) or "")
        assert _peer_reason("train/ckpt.py", code, METRIC_TEST) is None
    assert "test module" in (_peer_reason("tests/test_net.py", "B301", METRIC_TEST, 15) or "")
    assert _peer_reason("skorch/net.py", "B301", METRIC_TEST, 15) is None


SCHEDULER_SIMULATION = """
import tempfile
from pathlib import Path
import torch

device = "cuda" if torch.cuda.is_available() else "cpu"

def simulate(optimizer, scheduler, steps):
    with tempfile.TemporaryDirectory() as folder:
        cache = Path(folder) / "cache.pt"
        torch.save({"optimizer": optimizer.state_dict()}, cache.as_posix())
        values = [scheduler.step() for _ in range(steps)]
        state = torch.load(cache.as_posix(), weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
    return values

def evaluate(model, path):
    model.load_state_dict(torch.load(path, weights_only=True))
"""

SAVED_IN_ANOTHER_FUNCTION = """
import torch

device = "cuda" if torch.cuda.is_available() else "cpu"

def train(model, path):
    torch.save(model.state_dict(), path)

def evaluate(model, path):
    model.load_state_dict(torch.load(path, weights_only=True))
"""


def _map_location_lines(source: str) -> list[int]:
    found = analyse_files([("sched.py", source)]).all_findings()
    return [f.line for f in found if f.rule == "torch-load-no-map-location"]


def test_a_path_saved_earlier_in_the_same_function_is_read_back_without_map_location() -> None:
    assert _map_location_lines(SCHEDULER_SIMULATION) == [18]  # only evaluate()'s load
    # saved by training, loaded by evaluation: the evaluation may run on the CPU later
    assert _map_location_lines(SAVED_IN_ANOTHER_FUNCTION) == [10]


# A multi-view evaluation script named like a test (SlowFast's tools/test_net.py shape): an
# evaluation entry point `test(cfg)` and a loop over the test split with autograd on. Nothing
# in it is for pytest to collect, so it is a script and its evaluation findings stay.
EVALUATION_SCRIPT = """
import torch
from videonet.models import build_model
from videonet.datasets import loader

def perform_test(test_loader, model, test_meter, cfg):
    model.eval()
    for inputs, labels, video_idx in test_loader:
        inputs = inputs.cuda(non_blocking=True)
        preds = model(inputs)
        test_meter.update_stats(preds.detach().cpu(), labels.detach().cpu(), video_idx)
    test_meter.finalize_metrics()

def test(cfg):
    model = build_model(cfg)
    test_loader = loader.construct_loader(cfg, "test")
    perform_test(test_loader, model, cfg.meter, cfg)
"""

# The near miss: the same evaluation as a pytest module (a `test_*` function, a fixture
# import): a test's evaluation is the test's business.
PYTEST_EVALUATION = (
    "import pytest\n"
    + EVALUATION_SCRIPT
    + """
def test_perform_test_runs(tiny_cfg):
    test(tiny_cfg)
"""
)


def test_a_script_named_like_a_test_keeps_its_evaluation_findings() -> None:
    assert "validation-with-grad" in _rules_at("tools/test_net.py", EVALUATION_SCRIPT)
    assert "validation-with-grad" not in _rules_at("tools/test_net.py", PYTEST_EVALUATION)
    # under a tests/ folder the path alone decides
    assert "validation-with-grad" not in _rules_at("tests/test_net.py", EVALUATION_SCRIPT)


def test_what_a_test_runner_collects() -> None:
    import ast

    from torchdoctor.agent.checks.smoke_tests import collects_tests, is_test_file

    assert not collects_tests(ast.parse(EVALUATION_SCRIPT))
    assert collects_tests(ast.parse(PYTEST_EVALUATION))
    assert collects_tests(ast.parse("import unittest\nclass NetCase(unittest.TestCase): pass\n"))
    assert collects_tests(ast.parse("class TestNet:\n    def test_shape(self): pass\n"))
    assert not is_test_file("tools/test_net.py", ast.parse(EVALUATION_SCRIPT))
    assert is_test_file("tests/helpers.py", ast.parse(EVALUATION_SCRIPT))
    assert not is_test_file("train.py", ast.parse(PYTEST_EVALUATION))
    assert is_test_file("src/pkg/test_utils/scripts/test_peak_memory.py", ast.parse("x = 1\n"))
    assert collects_tests(ast.parse("def test2():\n    gradcheck(op, inputs)\n"))
