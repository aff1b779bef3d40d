"""What `torchdoctor submit` sends: the folder's files less what .gitignore files (at any
depth), excludes and tool folders leave out, and never a link."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

from torchdoctor.api.client import pack, packed_files, parse_sse


def test_gitignore_at_every_depth_and_excludes_are_honoured(tmp_path: Path) -> None:
    for rel in [
        "train.py",
        "notes.log",
        "pkg/model.py",
        "pkg/cache/blob.py",
        "pkg/keep.log",
        ".venv/lib/site.py",
        "scripts/big_data.py",
    ]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x = 1\n")
    (tmp_path / ".gitignore").write_text("*.log\n")
    (tmp_path / "pkg" / ".gitignore").write_text("cache/\n!keep.log\n")
    (tmp_path / "link.py").symlink_to("/etc/passwd")
    sent = {p.relative_to(tmp_path).as_posix() for p in packed_files(tmp_path, ["scripts/*"])}
    assert sent == {".gitignore", "train.py", "pkg/.gitignore", "pkg/model.py", "pkg/keep.log"}
    with tarfile.open(fileobj=io.BytesIO(pack(tmp_path, ["scripts/*"])), mode="r:gz") as tar:
        assert set(tar.getnames()) == sent
        assert all(member.isreg() for member in tar.getmembers())


def test_one_file_is_packed_under_its_own_name(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("x = 1\n")
    with tarfile.open(fileobj=io.BytesIO(pack(script, [])), mode="r:gz") as tar:
        assert tar.getnames() == ["train.py"]


def test_server_sent_events_are_parsed_and_pings_skipped() -> None:
    lines = iter(
        [
            ": ping",
            "",
            "id: 3",
            "event: state",
            'data: {"state": "running"}',
            "",
            "id: 4",
            "event: point",
            'data: {"point": 1, "findings": 2}',
            "",
        ]
    )
    parsed = [(e.id, e.kind, e.data) for e in parse_sse(lines)]
    assert parsed == [(3, "state", {"state": "running"}), (4, "point", {"point": 1, "findings": 2})]
