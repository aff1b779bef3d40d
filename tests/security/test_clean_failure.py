"""Bad input is a one-line error (exit 2) or a note, never a traceback or silence; a killed
audit leaves no process behind, and its leftovers are removed on the next start."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from torchdoctor.agent.cli import app

SOURCE = "import torch\n\nmodel = torch.nn.Linear(2, 2)\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    root.mkdir()
    (root / "train.py").write_text(SOURCE)
    return root


def audit(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["audit", *args, "--offline", "--no-linters"])
    return result.exit_code, result.output


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--sandbox", "bogus"], "--sandbox"),
        (["--torch-version", "banana"], "--torch-version"),
        (["--run", "python missing.py"], "missing.py is not one of the audited"),
        (["--run", "make all"], "expected `python SCRIPT.py"),
        (["--output", "."], "is a folder"),
        (["--ledger", "."], "is a folder"),
    ],
)
def test_bad_options_are_one_line_errors(repo: Path, extra: list[str], says: str) -> None:
    code, output = audit(str(repo), *extra)
    assert code == 2, output
    assert says in output and "Traceback" not in output
    assert len(output.strip().splitlines()) == 1, output


def test_symlink_loops_and_odd_entries_become_notes(repo: Path) -> None:
    (repo / "loop.py").symlink_to(repo / "loop.py")
    (repo / "a").symlink_to(repo / "b")
    (repo / "b").symlink_to(repo / "a")
    os.mkfifo(repo / "pipe.py")
    code, output = audit(str(repo), "--no-ledger", "--format", "json")
    assert code == 0 and "Traceback" not in output
    assert "loop.py" in output and "pipe.py" in output


def test_an_unparsable_file_is_reported_not_silent(repo: Path) -> None:
    (repo / "deep.py").write_text("x = " + " + ".join(["1"] * 100_000) + "\n")
    code, output = audit(str(repo), "--no-ledger", "--format", "json")
    assert code == 0
    assert "not audited: deep.py: could not be parsed" in output


def test_leftover_temp_files_and_copies_are_removed_on_next_start(
    repo: Path, tmp_path: Path
) -> None:
    (repo / ".td-0123456789abcdef.tmp").write_text("partial")
    (repo / ".ISSUES.abc123.tmp").write_text("partial")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = Path(os.environ.get("TMPDIR", "/tmp")) / f"td-ws-{dead.stdout.strip()}-zzz"
    stale.mkdir()
    (stale / "train.py").write_text(SOURCE)
    code, _ = audit(str(repo), "--no-ledger")
    assert code == 0
    assert not (repo / ".td-0123456789abcdef.tmp").exists()
    assert not (repo / ".ISSUES.abc123.tmp").exists()
    assert not stale.exists()


def _marked(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                if marker.encode() in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.slow
def test_kill_9_of_an_audit_leaves_no_worker(tmp_path: Path) -> None:
    root = tmp_path / "big"
    root.mkdir()
    body = "".join(f"def f{i}(x):\n    return x * {i}\n" for i in range(400))
    for index in range(60):
        (root / f"m{index}.py").write_text("import torch\n" + body)
    marker = f"td-kill-{uuid.uuid4().hex}"
    env = {**os.environ, "TD_TEST_MARKER": marker}
    audit_process = subprocess.Popen(
        [sys.executable, "-m", "torchdoctor", "audit", str(root), "--offline", "--no-ledger"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and len(_marked(marker)) < 3:
        time.sleep(0.05)
    children = [pid for pid in _marked(marker) if pid != audit_process.pid]
    assert children, "the audit started no worker: the test proves nothing"
    audit_process.send_signal(signal.SIGKILL)
    audit_process.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _marked(marker):
        time.sleep(0.1)
    assert _marked(marker) == []
