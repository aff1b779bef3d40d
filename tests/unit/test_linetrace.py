"""The executed-lines probe: lines that torch.compile runs count as executed.

A fix verified together with `model.compile()` changes code inside the compiled forward (SDPA
in an attention block); no line event fires there, so the combined check used to say the
change never ran (seen on an H200: the GPT-2 benchmark's joint check dropped compile).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = """\
import torch


def scale(x):
    return x * 2


def step(x, flag):
    y = scale(x)
    if flag:
        y = y - 100
    return y + 1


def eager_only(x):
    return x.sum()
"""

DRIVER = """\
import json, sys
import torch
from torchdoctor.sandbox.probes import linetrace

assert "torch._dynamo.symbolic_convert" not in sys.modules
trace = linetrace.LineTrace(("user.py",), sys.argv[1])
trace.start()
sys.path.insert(0, sys.argv[1])
import user
compiled = torch.compile(user.step, backend="eager")
compiled(torch.ones(3), False)
user.eager_only(torch.ones(3))
trace.stop()
from torch._dynamo import symbolic_convert as sc
restored = sc.InstructionTranslatorBase.starts_line.__module__ == sc.__name__
print(json.dumps({"lines": trace.report()["user.py"], "restored": restored}))
"""


def test_lines_run_under_torch_compile_are_executed_lines(tmp_path: Path) -> None:
    (tmp_path / "user.py").write_text(SCRIPT)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    done = subprocess.run(
        [sys.executable, str(driver), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).parents[2],
        env={"PYTHONPATH": str(Path(__file__).parents[2]), "PATH": "/usr/bin:/bin"},
    )
    result = json.loads(done.stdout.splitlines()[-1])
    lines = set(result["lines"])
    # the compiled function and the helper Dynamo inlined into it
    assert {5, 9, 10, 12} <= lines
    # the branch the traced call did not take
    assert 11 not in lines
    # an eager call after compiling is still traced by line events
    assert 16 in lines
    assert result["restored"]
