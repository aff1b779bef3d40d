"""A run that fails inside a local package the script imports is blamed at the package's own
frame (the deepest in the audited tree), with the script's import line as related place."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from torchdoctor.agent.evidence.probes import probe_findings
from torchdoctor.agent.evidence.run_gaps import MissingDependency
from torchdoctor.agent.reasoning.base import PointRequest
from torchdoctor.agent.reasoning.offline import OfflineReasoner
from torchdoctor.sandbox.probes.frames import UserFiles
from torchdoctor.sandbox.probes.outcome import from_exception

# the layout of a repository whose scripts live in a folder beside its package
# (`tools/train.py` importing `mmdet`-style `mypkg/`): the package raises while imported
PACKAGE = "import json\n\nSETTINGS = json.loads('{not json')\n"
SCRIPT = "import sys\n\nimport mypkg\n\nprint(mypkg.SETTINGS)\n"


def _failure(tree: Path, package: str, script: str) -> dict[str, object]:
    (tree / "mypkg").mkdir()
    (tree / "mypkg" / "__init__.py").write_text(package)
    (tree / "tools").mkdir()
    (tree / "tools" / "train.py").write_text(script)
    sys.path.insert(0, str(tree))
    try:
        runpy.run_path(str(tree / "tools" / "train.py"))
    except Exception as exc:  # the script's failure, as the harness catches it
        return from_exception(exc, UserFiles(str(tree / "tools" / "train.py"), tree=str(tree)))
    finally:
        sys.path.remove(str(tree))
        sys.modules.pop("mypkg", None)
    raise AssertionError("the script ran")


def test_a_package_beside_the_script_that_raises_on_import_is_blamed_at_its_line(
    tmp_path: Path,
) -> None:
    failed = _failure(tmp_path, PACKAGE, SCRIPT)
    # json's own frames are not the user's: the package's line that called it is
    assert (failed["file"], failed["line"], failed["entry_line"]) == (
        "../mypkg/__init__.py",
        3,
        3,
    )


def test_a_package_beside_the_script_that_does_not_compile_is_blamed_at_its_line(
    tmp_path: Path,
) -> None:
    failed = _failure(tmp_path, "def broken(:\n    pass\n", SCRIPT)
    assert (failed["file"], failed["line"], failed["entry_line"]) == (
        "../mypkg/__init__.py",
        1,
        3,
    )


def test_a_failure_in_the_script_itself_has_no_related_line(tmp_path: Path) -> None:
    failed = _failure(tmp_path, "SETTINGS = {}\n", SCRIPT.replace("SETTINGS", "MISSING"))
    assert (failed["file"], failed["line"], failed["entry_line"]) == ("train.py", 5, None)


def test_a_script_outside_the_starting_folder_keeps_its_own_folder_as_the_tree(
    tmp_path: Path,
) -> None:
    script = tmp_path / "tools" / "train.py"
    files = UserFiles(str(script), tree=str(tmp_path / "elsewhere"))
    assert files.contains(str(tmp_path / "tools" / "data.py"))
    assert not files.contains(str(tmp_path / "mypkg" / "__init__.py"))


@pytest.fixture
def failed_document() -> dict[str, object]:
    return {
        "schema_version": 1,
        "tool": "torchdoctor-probes",
        "script": "tools/train.py",
        "outcome": {
            "kind": "script-error",
            "detail": "JSONDecodeError: Expecting property name",
            "error_type": "JSONDecodeError",
            "traceback": "...",
            "file": "../mypkg/__init__.py",
            "line": 3,
            "entry_line": 3,
        },
        "mode": "train",
        "steps_completed": 0,
    }


def test_the_failure_finding_names_the_package_line_and_relates_the_import(
    failed_document: dict[str, object],
) -> None:
    sources = {"tools/train.py": SCRIPT, "mypkg/__init__.py": PACKAGE}
    analysis = probe_findings(failed_document, "tools/train.py", read_source=sources.get)
    (failure,) = [f for f in analysis.findings if f.rule == "probe-script-error"]
    assert (failure.file, failure.line) == ("mypkg/__init__.py", 3)
    request = PointRequest(point=2, evidence=[ev for p, ev in analysis.by_point() if p == 2])
    (finding,) = [f for f in OfflineReasoner().reason(request).findings]
    related = [ev for ev in finding.evidence if ev.data.get("role") == "related"]
    assert [(ev.file, ev.line) for ev in related] == [("tools/train.py", 3)]
    assert "import mypkg" in related[0].excerpt


def test_a_failure_at_the_script_line_itself_relates_nothing(
    failed_document: dict[str, object],
) -> None:
    outcome = failed_document["outcome"]
    assert isinstance(outcome, dict)
    outcome.update(file="train.py", line=5, entry_line=None)
    analysis = probe_findings(failed_document, "tools/train.py")
    (failure,) = [f for f in analysis.findings if f.rule == "probe-script-error"]
    assert (failure.file, failure.line) == ("tools/train.py", 5)
    assert "related" not in failure.data


def test_a_package_the_local_package_imports_and_nobody_declares_relates_the_import(
    failed_document: dict[str, object],
) -> None:
    outcome = failed_document["outcome"]
    assert isinstance(outcome, dict)
    outcome.update(
        detail="ModuleNotFoundError: No module named 'scipy'",
        error_type="ModuleNotFoundError",
        line=1,
    )
    gap = MissingDependency(module="scipy")
    analysis = probe_findings(failed_document, "tools/train.py", gap=gap)
    (missing,) = analysis.findings
    assert (missing.rule, missing.file, missing.line) == (
        "probe-undeclared-dependency",
        "mypkg/__init__.py",
        1,
    )
    assert [(p["file"], p["line"]) for p in missing.data["related"]] == [("tools/train.py", 3)]
