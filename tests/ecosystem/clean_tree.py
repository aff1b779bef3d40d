"""A clean copy of this repository: what a fresh clone holds (tracked files and new files git
does not ignore), without the build outputs and virtual environments of this checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import REPO

NO_INSTALL_BYTECODE = {"PIP_COMPILE": "0"}
"""pip installs without byte-compiling every installed module (about 6 CPU-s for torchdoctor's
dependencies); what the tests run compiles on import, once. (`PIP_NO_COMPILE=1` would turn it
on: pip reads a `--no-*` flag's variable as the value of the option it negates.)"""


def clean_copy(destination: Path) -> Path:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for raw in filter(None, listed):
        source = REPO / os.fsdecode(raw)
        if source.is_file():
            target = destination / os.fsdecode(raw)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    return destination


def committed_copy(destination: Path, env: dict[str, str]) -> Path:
    """The clean copy as a one-commit git repository (what pre-commit clones at its revision)."""
    clean_copy(destination)
    identity = ["-c", "user.email=test@example.invalid", "-c", "user.name=test"]
    for command in (["init", "-q"], ["add", "-A"], [*identity, "commit", "-qm", "snapshot"]):
        subprocess.run(["git", *command], cwd=destination, env=env, check=True)
    return destination
