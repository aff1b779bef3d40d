"""The stty-size fix, run as a real subprocess with no terminal (stdin from /dev/null, as
under nohup or a batch job): the original dies on import, the fixed one gets rows and columns
as the same two strings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from torchdoctor.agent.fixes.codemods import codemod_for
from torchdoctor.agent.fixes.models import FixTarget

HELPER = (
    "import os\n\n_, term_width = os.popen('stty size', 'r'){answer}\nprint(repr(term_width))\n"
)
TARGET = FixTarget(rule="terminal-size-from-stty", file="utils.py", line=3, end_line=3)


def _fixed(source: str) -> str | None:
    codemod = codemod_for("terminal-size-from-stty")
    assert codemod is not None
    return codemod.transform(source, TARGET)


def _run(source: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "utils.py"
    script.write_text(source, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )


@pytest.mark.parametrize("answer", [".read().split()", ".read().strip().split()"])
def test_without_a_terminal_the_original_dies_and_the_fix_runs(answer: str, tmp_path: Path) -> None:
    source = HELPER.format(answer=answer)
    assert "ValueError" in _run(source, tmp_path).stderr
    fixed = _fixed(source)
    assert fixed is not None and "shutil.get_terminal_size()" in fixed
    done = _run(fixed, tmp_path)
    assert done.returncode == 0 and done.stdout == "'80'\n", done.stderr


def test_another_reading_of_the_answer_is_refused_with_its_reason() -> None:
    source = HELPER.format(answer=".read().split(' ')")
    codemod = codemod_for("terminal-size-from-stty")
    assert codemod is not None
    assert codemod.transform(source, TARGET) is None
    assert "only `os.popen('stty size').read().split()`" in (codemod.explain(source, TARGET) or "")
