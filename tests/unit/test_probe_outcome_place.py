"""Where a script's error is placed: a pseudo file of Python's (`<frozen runpy>`) is never the
user's, and a script that does not compile is placed at its own line (held-out
pytorch-REINFORCE: a TabError in main.py read 'run evidence dropped: <frozen runpy>:259')."""

from __future__ import annotations

import os
import runpy
from pathlib import Path

import pytest

from torchdoctor.sandbox.probes.frames import UserFiles
from torchdoctor.sandbox.probes.outcome import from_exception


@pytest.mark.parametrize("name", ["<frozen runpy>", "<string>", "<stdin>"])
def test_pseudo_file_names_are_not_the_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.chdir(tmp_path)  # the sandbox runs the script from its own folder
    assert not UserFiles(str(tmp_path / "main.py")).contains(name)


def test_a_script_that_does_not_compile_is_placed_at_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = tmp_path / "main.py"
    script.write_text("for i in range(2):\n    x = i\n\ty = i\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SyntaxError) as info:
        runpy.run_path(str(script))
    found = from_exception(info.value, UserFiles(str(script)))
    assert (found["file"], found["line"]) == ("main.py", 3)
    assert found["error_type"] == "TabError"
    assert str(tmp_path) not in found["traceback"]
    assert 'File "main.py", line 3' in found["traceback"]
    assert os.path.isabs(str(info.value.filename))  # the script's exception is left as it was
