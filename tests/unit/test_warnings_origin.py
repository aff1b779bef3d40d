"""A deprecation warning is the user's when the user's code made the warned-about call, not
when a library deprecates an API it calls itself (torch.onnx.export's own pytree use)."""

from __future__ import annotations

import importlib
import sys
import warnings
from pathlib import Path

from tests.unit.test_probe_analysis import document
from torchdoctor.agent.evidence.probes import probe_findings
from torchdoctor.sandbox.probes.frames import UserFiles
from torchdoctor.sandbox.probes.warnings_probe import WarningsProbe

LIBRARY = """import warnings


def old_api():
    warnings.warn("old_api is deprecated", FutureWarning, stacklevel=2)


def old_api_at_itself():
    warnings.warn("old_api_at_itself is deprecated", FutureWarning)


def high_level():
    return old_api_at_itself() or old_api()
"""
USER = """import deplib


def run():
    deplib.old_api()
    deplib.old_api_at_itself()
    deplib.high_level()
"""


def test_a_library_deprecating_its_own_call_is_told_apart(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "user").mkdir()
    (tmp_path / "lib" / "deplib.py").write_text(LIBRARY)
    (tmp_path / "user" / "use_it.py").write_text(USER)
    sys.path[:0] = [str(tmp_path / "lib"), str(tmp_path / "user")]
    probe = WarningsProbe(UserFiles(str(tmp_path / "user" / "use_it.py")), lambda: None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            probe.install()
            try:
                importlib.import_module("use_it").run()
            finally:
                probe.uninstall()
    finally:
        del sys.path[:2]
        sys.modules.pop("use_it", None)
        sys.modules.pop("deplib", None)
    internal = {(w["message"], w["line"]): w["internal"] for w in probe.report()}
    assert internal == {
        ("old_api is deprecated", 5): False,  # the user's call, named by stacklevel 2
        ("old_api_at_itself is deprecated", 6): False,  # named at the library, called by the user
        ("old_api_at_itself is deprecated", 7): True,  # high_level's own calls
        ("old_api is deprecated", 7): True,
    }
    doc = document(warnings=[{**w, "file": "use_it.py"} for w in probe.report()])
    reported = [f for f in probe_findings(doc, "use_it.py").findings]
    assert sorted(f.line for f in reported if f.rule == "probe-deprecated-api") == [5, 6]
