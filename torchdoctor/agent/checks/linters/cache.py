"""Peer results kept by content: the same files, configuration and tool version give the same
report, so a repeated audit (a CI re-run, a pre-commit pass, the same project submitted again
to the service) reuses it instead of starting the tool again.

The key covers every input a tool reads: its name and version, torchdoctor's version, each
audited file's path and bytes, and the tool configuration files at the tree's root. Only
complete results are kept (never a timeout or a failure), in private files under
`$TORCHDOCTOR_HOME/cache/peers`, pruned to the newest `MAX_ENTRIES`. pip-audit is never
cached: its answer depends on an advisory database, not on the files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError

from torchdoctor import __version__
from torchdoctor.agent.checks.linters.base import LinterResult
from torchdoctor.agent.home import private_dir, private_file, torchdoctor_home

ENABLED_ENV = "TORCHDOCTOR_PEER_CACHE"
MAX_ENTRIES = 2000
UNCACHED_TOOLS = frozenset({"pip-audit"})
CONFIG_FILES = (
    "pyproject.toml",
    "setup.cfg",
    "tox.ini",
    "ruff.toml",
    ".ruff.toml",
    "mypy.ini",
    ".mypy.ini",
    ".bandit",
    ".secrets.baseline",
)


def cache_dir() -> Path:
    return torchdoctor_home() / "cache" / "peers"


def enabled() -> bool:
    return os.environ.get(ENABLED_ENV, "1") != "0"


def input_digest(root: Path, files: Sequence[str]) -> str | None:
    """One digest of everything a peer reads: each audited file's path and bytes and the tool
    configuration files at the root; None when one cannot be read as a plain file. Computed
    once per audit and shared by every tool's key (each file read and hashed once)."""
    digest = hashlib.sha256()
    for name in (*sorted(files), *CONFIG_FILES):
        path = root / name
        if name in CONFIG_FILES and not path.exists():
            continue
        content = _plain_bytes(path)
        if content is None:
            return None
        digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
        digest.update(hashlib.sha256(content).digest())
    return digest.hexdigest()


def result_key(tool: str, version: str, inputs: str | None) -> str | None:
    """The content key of `tool`'s run on `inputs` (an `input_digest`), or None when its
    result is not to be kept."""
    if tool in UNCACHED_TOOLS or not version or inputs is None or not enabled():
        return None
    return hashlib.sha256(f"{__version__}\0{tool}\0{version}\0{inputs}".encode()).hexdigest()


def load(key: str) -> LinterResult | None:
    path = cache_dir() / f"{key}.json"
    try:
        return LinterResult.model_validate_json(_plain_bytes(path) or b"")
    except (ValidationError, ValueError):
        return None


def store(key: str, result: LinterResult) -> None:
    if result.status not in ("ok", "partial"):
        return
    folder = private_dir(cache_dir())
    final = folder / f"{key}.json"
    scratch = private_file(folder / f".{key}.{os.getpid()}.tmp")
    scratch.write_text(result.model_dump_json(), encoding="utf-8")
    os.replace(scratch, final)
    _prune(folder)


def _plain_bytes(path: Path) -> bytes | None:
    """The file's bytes, refusing links and anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read() if stat.S_ISREG(os.fstat(fd).st_mode) else None


def _prune(folder: Path) -> None:
    entries = sorted(folder.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[MAX_ENTRIES:]:
        with contextlib.suppress(OSError):
            stale.unlink()
