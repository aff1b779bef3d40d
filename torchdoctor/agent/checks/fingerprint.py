"""A digest of the code that makes the checks' results, for the result caches' keys (the static
pass's and the peers'): an edited rule, rule table or peer adapter, a changed model of the
evidence, or another Python (whose `ast` parses differently) never reads a result of its
former self. torchdoctor's version alone does not say it: a checkout edited in place keeps it.
"""

from __future__ import annotations

import hashlib
import sys
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
"""`torchdoctor.agent.checks`: the engine, the rules and their data, the peers' adapters."""
OUTSIDE = ("artifacts/models.py", "checklist.py", "escape.py", "models.py", "redact.py")
"""The modules of `torchdoctor.agent` outside the package that it imports, directly or through
one another (a test keeps this complete)."""


@cache
def code_fingerprint() -> str:
    """Every file of the package (code and data) and of `OUTSIDE`, and the Python version;
    read once a process."""
    agent = PACKAGE.parent
    paths = [*sorted(PACKAGE.rglob("*")), *(agent / name for name in OUTSIDE)]
    digest = hashlib.sha256(f"{sys.implementation.name}\0{sys.version_info[:2]}\0".encode())
    for path in paths:
        if "__pycache__" in path.parts or not path.is_file():
            continue
        digest.update(path.relative_to(agent).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()
