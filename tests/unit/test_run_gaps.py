"""A run stopped by what the audit's environment lacks is the environment's gap, not the
code's failure: a package (a defect of the project only when none of its manifests declares
it), or a data file on this machine outside the audited folder.

Shapes from held-out projects: makemore and a GAT trainer import
`torch.utils.tensorboard`, which needs the `tensorboard` package; makemore has no manifest at
all, the GAT project lists `tensorboard` in its environment.yml's pip section. Both runs
stopped at the import and were reported as "[high] The script fails when run"."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from torchdoctor.agent.checks.manifests import parse_manifests
from torchdoctor.agent.evidence.probes import probe_findings
from torchdoctor.agent.evidence.run_gaps import (
    NoCuda,
    declaring_pin,
    missing_dependency,
    missing_module,
    needs_cuda,
    outside_path,
    project_modules,
)
from torchdoctor.agent.fixes import verify
from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.diffs import unified_diff
from torchdoctor.agent.fixes.models import FixKind, Patch, SmokeRun
from torchdoctor.agent.fixes.verify import Claim, FixSpec, Verifier
from torchdoctor.agent.models import Severity

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "train.py", line 3, in <module>\n'
    "    from torch.utils.tensorboard import SummaryWriter\n"
    '  File "/env/torch/utils/tensorboard/__init__.py", line 1, in <module>\n'
    "    import tensorboard\n"
    "ModuleNotFoundError: No module named 'tensorboard'"
)
NO_MODULE = "ModuleNotFoundError: No module named 'tensorboard'"
NO_TENSORBOARD: dict[str, Any] = {
    "kind": "script-error",
    "detail": NO_MODULE,
    "error_type": "ModuleNotFoundError",
    "traceback": TRACEBACK,
    "file": "train.py",
    "line": 3,
}
ENVIRONMENT = """name: gat
dependencies:
  - python==3.8.5
  - pytorch==1.7.0
  - pip:
    - numpy==1.19.2
    - tensorboard==2.2.2
    - python-igraph==0.8.3
"""


def _document(outcome: dict[str, Any]) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "tool": "torchdoctor-probes",
        "script": "train.py",
        "outcome": outcome,
        "mode": "train",
        "steps_completed": 0,
    }


def _analysis(manifests: dict[str, str]) -> Any:
    missing = missing_dependency("ModuleNotFoundError", NO_MODULE, ["train.py"], manifests)
    return probe_findings(_document(NO_TENSORBOARD), "train.py", gap=missing)


def test_a_package_no_manifest_lists_is_an_undeclared_dependency() -> None:
    analysis = _analysis({})

    (finding,) = analysis.findings
    assert finding.rule == "probe-undeclared-dependency"
    assert (finding.file, finding.line) == ("train.py", 3)
    assert "the audit environment lacks it" in finding.message
    assert "the project has no dependency manifest" in finding.message
    assert "`tensorboard`" in analysis.notes[0]
    assert "no manifest of the project declares" in analysis.notes[0]

    listed_others = _analysis({"requirements.txt": "torch\nnumpy\n"})
    assert "none of the project's 1 dependency manifest(s) lists it" in (
        listed_others.findings[0].message
    )


def test_a_declared_package_is_the_environments_gap_not_a_finding() -> None:
    analysis = _analysis({"environment.yml": ENVIRONMENT})

    assert analysis.findings == []
    assert "which environment.yml:7 declares" in analysis.notes[0]
    assert "install the project's dependencies where torchdoctor runs" in analysis.notes[0]
    assert not [h for h in analysis.coverage.values() if h.verdict == "pass"]
    setup = "from setuptools import setup\nsetup(install_requires=['torch', 'tensorboard'])\n"
    assert _analysis({"setup.py": setup}).findings == []


def test_a_missing_module_of_the_project_itself_stays_the_scripts_failure() -> None:
    detail = "ModuleNotFoundError: No module named 'utils.constants'"
    assert missing_dependency("ModuleNotFoundError", detail, ["utils/data.py"], {}) is None
    assert missing_dependency("ModuleNotFoundError", detail, ["train.py"], {}) is not None
    outcome = {**NO_TENSORBOARD, "detail": detail}
    analysis = probe_findings(_document(outcome), "train.py", gap=None)
    assert [f.rule for f in analysis.findings] == ["probe-script-error"]


@pytest.mark.parametrize(
    ("error_type", "detail", "module"),
    [
        ("ModuleNotFoundError", "ModuleNotFoundError: No module named 'cv2'", "cv2"),
        ("ModuleNotFoundError", "No module named 'google.protobuf'", "google"),
        ("ImportError", "cannot import name 'x' from 'y'", None),
        ("OSError", "No module named 'a'", None),
        (None, "", None),
    ],
)
def test_the_missing_module_is_read_from_the_error(
    error_type: str | None, detail: str, module: str | None
) -> None:
    assert missing_module(error_type, detail) == module


def test_import_names_match_their_distributions() -> None:
    pins = parse_manifests(
        {"requirements.txt": "scikit-learn==1.4\nopencv-python-headless\nPyYAML>=6\n"}
    )
    assert declaring_pin("sklearn", pins) is not None
    assert declaring_pin("cv2", pins) is not None
    assert declaring_pin("yaml", pins) is not None
    assert declaring_pin("scipy", pins) is None
    igraph = declaring_pin("igraph", parse_manifests({"environment.yml": ENVIRONMENT}))
    assert igraph is not None and igraph.name == "python-igraph"
    assert project_modules(["models/definitions/GAT.py", "train.py"]) == {
        "models",
        "definitions",
        "GAT",
        "train",
    }


SCRIPT = """import torch
from torch.utils.tensorboard import SummaryWriter

criterion = torch.nn.MSELoss()
model = torch.nn.Linear(2, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for step in range(3):
    loss = criterion(model(torch.randn(4, 2)), torch.randn(4, 1))
    opt.zero_grad()
    loss.backward()
    opt.step()
    print(loss.data[0])
"""


def _stopped_at_import(module: str) -> SmokeRun:
    return SmokeRun(
        ok=False,
        detail=f"script-error: ModuleNotFoundError: No module named '{module}'",
        error_at=("train.py", 2),
        missing_module=module,
    )


def _fix_steps(tmp_path: Path, kind: FixKind, baseline: SmokeRun) -> list[Any]:
    """The verification of a fix of SCRIPT, as a fix of `kind`, against the original's run."""
    root = tmp_path / "root"
    root.mkdir(parents=True)
    (root / "train.py").write_text(SCRIPT, encoding="utf-8")
    verifier = Verifier(root, object(), ["python", "train.py"], baseline=baseline)  # type: ignore[arg-type]
    fixed = SCRIPT.replace("loss.data[0]", "loss.item()")
    patch = Patch(
        finding_id="TD-1",
        rule="scalar-loss-indexed",
        diff=unified_diff("train.py", SCRIPT, fixed),
        files=["train.py"],
    )
    codemod = codemod_for("scalar-loss-indexed")
    assert codemod is not None
    spec = replace(FixSpec.of(codemod), kind=kind)
    return verifier.verify(patch, Claim(frozenset({"scalar-loss-indexed"}), Severity.LOW), spec)


def test_a_fix_not_judged_says_to_install_the_package_not_to_fix_the_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "smoke_run", lambda *_a, **_k: pytest.fail("not to be run"))

    smoke = _fix_steps(tmp_path, FixKind.PERFORMANCE, _stopped_at_import("tensorboard"))[-1]

    assert smoke.step == "smoke-run" and not smoke.ok
    assert "the audit environment lacks the package `tensorboard`" in smoke.detail
    assert "fix that failure first" not in smoke.detail
    # the project's own module: the code's failure, fixed in the code
    project = _fix_steps(tmp_path / "p", FixKind.PERFORMANCE, _stopped_at_import("train"))[-1]
    assert "fix that failure first" in project.detail


def test_a_fixed_run_stopped_at_the_same_import_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "smoke_run", lambda *_a, **_k: _stopped_at_import("tensorboard"))

    smoke = _fix_steps(tmp_path, FixKind.CORRECTNESS, _stopped_at_import("tensorboard"))[-1]

    assert smoke.step == "smoke-run" and not smoke.ok
    assert "fails where the original fails" in smoke.detail
    assert "lacks the package `tensorboard`: install it where torchdoctor runs" in smoke.detail


def _no_file(named: str) -> dict[str, Any]:
    return {
        "kind": "script-error",
        "detail": f"[Errno 2] No such file or directory: '{named}'",
        "error_type": "FileNotFoundError",
        "file": "train.py",
        "line": 3,
    }


def test_a_data_file_outside_the_audited_folder_is_not_the_scripts_failure(
    tmp_path: Path,
) -> None:
    root, data = tmp_path / "project", tmp_path / "data"
    root.mkdir()
    data.mkdir()
    (data / "mnist.npz").write_bytes(b"x")
    (root / "train.py").write_text("import numpy\n", encoding="utf-8")
    for named in (str(data / "mnist.npz"), "../data/mnist.npz"):
        outcome = _no_file(named)
        gap = outside_path(outcome["error_type"], outcome["detail"], root)
        assert gap is not None, named
        analysis = probe_findings(_document(outcome), "train.py", gap=gap)
        assert analysis.findings == []
        assert analysis.notes[0].startswith(f"the run cannot see `{named}`: it exists on this")
    # a file that is nowhere, or one inside the folder, is the script's own failure
    for named in (str(data / "other.npz"), "train.py"):
        assert outside_path("FileNotFoundError", _no_file(named)["detail"], root) is None
    assert outside_path("OSError", _no_file(str(data / "mnist.npz"))["detail"], root) is None


def test_a_fix_not_judged_for_an_outside_file_says_to_put_the_data_inside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(verify, "smoke_run", lambda *_a, **_k: pytest.fail("not to be run"))
    (tmp_path / "mnist.npz").write_bytes(b"x")
    named = str(tmp_path / "mnist.npz")
    baseline = SmokeRun(ok=False, detail="script-error: ...", missing_file=named)

    smoke = _fix_steps(tmp_path, FixKind.PERFORMANCE, baseline)

    assert f"the run cannot see `{named}`, outside the audited folder" in smoke[-1].detail


def test_a_fix_runs_record_what_the_environment_lacked() -> None:
    from torchdoctor.agent.evidence.probe_schema import ProbeDocument
    from torchdoctor.agent.fixes.smoke import smoke_run_from_evidence

    stopped = smoke_run_from_evidence(ProbeDocument.model_validate(_document(NO_TENSORBOARD)))
    assert (stopped.missing_module, stopped.missing_file) == ("tensorboard", None)
    unseen = _document(_no_file("/data/mnist.npz"))
    assert smoke_run_from_evidence(ProbeDocument.model_validate(unseen)).missing_file == (
        "/data/mnist.npz"
    )


@pytest.mark.parametrize(
    ("detail", "gap"),
    [
        ("AssertionError: Torch not compiled with CUDA enabled", True),
        ("RuntimeError: Found no NVIDIA driver on your system. Please check ...", True),
        ("RuntimeError: No CUDA GPUs are available", True),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", False),
        ("RuntimeError: CUDA error: an illegal memory access was encountered", False),
    ],
)
def test_a_run_without_cuda_is_the_machines_gap(detail: str, gap: bool) -> None:
    assert needs_cuda(detail) is gap


def test_a_script_that_needs_cuda_is_not_reported_as_failing_on_a_cpu_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    detail = "AssertionError: Torch not compiled with CUDA enabled"
    outcome = {**NO_TENSORBOARD, "detail": detail, "error_type": "AssertionError", "line": 74}
    analysis = probe_findings(_document(outcome), "train.py", gap=NoCuda(where="train.py:74"))
    assert analysis.findings == []
    assert analysis.notes[0].startswith("the script needs a CUDA device (at train.py:74)")

    monkeypatch.setattr(verify, "smoke_run", lambda *_a, **_k: pytest.fail("not to be run"))
    baseline = SmokeRun(ok=False, detail=f"script-error: {detail} (AssertionError at train.py:2)")
    smoke = _fix_steps(tmp_path, FixKind.PERFORMANCE, baseline)[-1]
    assert smoke.detail.endswith("the audit's machine has no CUDA device, which the script needs")
