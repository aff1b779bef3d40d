"""The static pass's result kept by content (a `ResultCache`): an audit of a tree whose every
input is the same as one audited before reuses that result instead of parsing and walking it
again.

The key covers every input of the pass: each file's path and text, the dependency manifests
and documents the rules read, the engine's configuration (selected and ignored rules, the
target torch version, the per-file deadline), torchdoctor's version and the code that
computes it (`code_fingerprint`: an edited rule never reads a result of its former self). A
result with a note on any file (cut short by the per-file deadline, a parse stopped by
recursion or memory) may depend on the machine: it is never kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from torchdoctor import __version__
from torchdoctor.agent import result_cache
from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import StaticResult
from torchdoctor.agent.checks.fingerprint import code_fingerprint

Hash = Any  # hashlib's digest objects (their class is private)
MAX_ENTRIES = 2000
_RESULTS = result_cache.ResultCache("static", StaticResult, MAX_ENTRIES)


def _texts(digest: Hash, label: str, texts: Mapping[str, str]) -> None:
    for name in sorted(texts):
        digest.update(f"{label}\0{name}\0".encode("utf-8", "surrogateescape"))
        digest.update(hashlib.sha256(texts[name].encode("utf-8", "surrogateescape")).digest())


def key_of(
    files: Sequence[tuple[str, str]],
    config: EngineConfig,
    manifests: Mapping[str, str],
    documents: Mapping[str, str],
) -> str | None:
    """The pass's content key, or None when results are not to be kept."""
    if not result_cache.enabled():
        return None
    digest = hashlib.sha256()
    settings = {
        name: sorted(value) if isinstance(value, frozenset) else value
        for name, value in sorted(asdict(config).items())
    }
    digest.update(f"{__version__}\0{code_fingerprint()}\0{settings!r}\0".encode())
    _texts(digest, "file", dict(files))
    _texts(digest, "manifest", manifests)
    _texts(digest, "document", documents)
    return digest.hexdigest()


def get_or_compute(key: str, analyse: Callable[[], StaticResult]) -> StaticResult:
    """The kept result of `key`, else `analyse()`'s (computed once by concurrent audits)."""
    return _RESULTS.get_or_compute(key, analyse, keep=_keepable)[0]


def _keepable(result: StaticResult) -> bool:
    return all(file.note is None for file in result.files)
