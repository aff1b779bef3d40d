"""Peer results kept by content: the same files, configuration and tool version give the same
report, so a repeated audit (a CI re-run, a pre-commit pass, the same project submitted again
to the service) reuses it instead of starting the tool again.

The key covers every input a tool reads: its name and version, torchdoctor's version and the
code of its adapter (which reads the tool's report into evidence: `code_fingerprint`), each
audited file's path and bytes, and the tool configuration files at the tree's root. Only
complete results are kept (never a timeout or a failure), in private files under
`$TORCHDOCTOR_HOME/cache/peers`, pruned to the newest `MAX_ENTRIES`. pip-audit is never
cached: its answer depends on an advisory database, not on the files. Kept in a
`ResultCache` (atomic, bounded, shared across audits); `TORCHDOCTOR_PEER_CACHE=0` turns this
one off, `TORCHDOCTOR_RESULT_CACHE=0` every result cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from torchdoctor import __version__
from torchdoctor.agent import result_cache
from torchdoctor.agent.checks.fingerprint import code_fingerprint
from torchdoctor.agent.checks.linters.base import LinterResult
from torchdoctor.agent.result_cache import plain_bytes as _plain_bytes

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


_RESULTS = result_cache.ResultCache("peers", LinterResult, MAX_ENTRIES)


def cache_dir() -> Path:
    return _RESULTS.folder


def enabled() -> bool:
    return os.environ.get(ENABLED_ENV, "1") != "0" and result_cache.enabled()


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
    key = f"{__version__}\0{code_fingerprint()}\0{tool}\0{version}\0{inputs}"
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_run(key: str, run: Callable[[], LinterResult]) -> tuple[LinterResult, bool]:
    """(the kept result of `key`, else `run()`'s (run once by concurrent audits), whether it
    came from the cache). Only complete results are kept."""
    return _RESULTS.get_or_compute(key, run, keep=lambda r: r.status in ("ok", "partial"))
