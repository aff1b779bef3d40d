"""An audit's worker inherits its machinery from the fork server: a static audit forked after
the preload imports nothing of its own, so concurrent audits spend their CPU on analysis, not
on loading the same modules again (benchmarks/api_load.py prints the effect)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import EXAMPLES
from torchdoctor.api.executor import PRELOAD

PROBE = """
import importlib, json, shutil, sys
from pathlib import Path
importlib.import_module("torchdoctor.api.worker")
importlib.import_module(sys.argv[1])
from torchdoctor.agent.audit import AuditOptions, run_audit
before = set(sys.modules)
target = Path(sys.argv[3]) / "src"
target.mkdir()
shutil.copyfile(sys.argv[2], target / "train.py")
options = AuditOptions(target=target, write_ledger=True, offline=True, linters=False)
report = run_audit(options).report
print(json.dumps({"findings": len(report.findings), "ledger": (target / "ISSUES.md").is_file(),
                  "loaded": sorted(set(sys.modules) - before)}))
"""


def test_a_static_audit_after_the_preload_loads_no_module(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, PRELOAD, str(EXAMPLES / "train_buggy.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["findings"] > 0 and seen["ledger"]
    assert seen["loaded"] == []
