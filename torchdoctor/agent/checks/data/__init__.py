"""Data tables the checks read (advisories, linter code maps): data kept out of code."""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any


@cache
def load_table(name: str) -> Any:
    """A JSON table shipped in this package, parsed once per process."""
    return json.loads(files(__name__).joinpath(name).read_text(encoding="utf-8"))
