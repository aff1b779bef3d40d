"""How the audited tree's files are decoded before analysis."""

from __future__ import annotations

from pathlib import Path

from torchdoctor.agent.workspace import load_workspace


def test_source_transform_codec_cookie_is_read_as_utf8(tmp_path: Path) -> None:
    """`# coding: future_fstrings` names a codec only its package registers: the file is
    UTF-8 source and is audited; undecodable bytes under such a cookie are still a note."""
    (tmp_path / "trainer.py").write_bytes(
        b"# -*- coding: future_fstrings -*-\nname = 'caf\xc3\xa9'\nprint(f'{name}')\n"
    )
    (tmp_path / "legacy.py").write_bytes(b"# -*- coding: future_fstrings -*-\nx = '\xe9'\n")
    workspace = load_workspace(tmp_path)
    assert [f.path for f in workspace.files] == ["trainer.py"]
    assert "café" in (workspace.text_of("trainer.py") or "")
    assert [(n.file, "encoding" in n.reason) for n in workspace.notes] == [("legacy.py", True)]


def test_latin1_bytes_without_a_cookie_stay_a_note(tmp_path: Path) -> None:
    (tmp_path / "latin.py").write_bytes(b"x = '\xe9t\xe9'\n")
    workspace = load_workspace(tmp_path)
    assert workspace.files == []
    assert "encoding" in workspace.notes[0].reason
