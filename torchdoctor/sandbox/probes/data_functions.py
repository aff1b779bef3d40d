"""What the project's own data functions return, on sampled fetches in the main process: one
item of a `Dataset.__getitem__` defined in the user's files, and the output of a user
`collate_fn`. Generated annotations of those functions come from these (item 1.2).

A DataLoader fetcher's `fetch` is wrapped: on a sampled step it swaps the fetcher's collate
for one that describes the first item it is given, then what the real collate returns. Only
Python attribute reads: no tensor is touched. Worker processes run plain torch (the harness
is removed in a forked child), so a loader with workers shows nothing here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data._utils import fetch as fetch_module

from torchdoctor.sandbox.probes.frames import UserFiles

MAX_SIGNATURES = 8
"""Distinct signatures kept per function (the first ones seen)."""
MAX_ELEMENTS = 8


class DataFunctions:
    def __init__(self, user_files: UserFiles) -> None:
        self.user_files = user_files
        self.sampled = True
        self.seen: dict[tuple[str, str, int], dict[str, dict[str, Any]]] = {}
        self._originals: list[tuple[Any, Callable[..., Any]]] = []

    def install(self) -> None:
        probe = self
        for fetcher in (fetch_module._MapDatasetFetcher, fetch_module._IterableDatasetFetcher):
            original = fetcher.fetch

            def fetch(self: Any, index: Any, _original: Callable[..., Any] = original) -> Any:
                if not probe.sampled:
                    return _original(self, index)
                collate = self.collate_fn
                self.collate_fn = probe._watching(self, collate)
                try:
                    return _original(self, index)
                finally:
                    self.collate_fn = collate

            self._originals.append((fetcher, original))
            setattr(fetcher, "fetch", fetch)  # noqa: B010 - patched on purpose

    def uninstall(self) -> None:
        for fetcher, original in self._originals:
            setattr(fetcher, "fetch", original)  # noqa: B010
        self._originals = []

    def _watching(self, fetcher: Any, collate: Callable[..., Any]) -> Callable[..., Any]:
        def watched(data: Any) -> Any:
            batched = getattr(fetcher, "auto_collation", False)
            getitem = getattr(type(fetcher.dataset), "__getitem__", None)
            if isinstance(fetcher, fetch_module._MapDatasetFetcher) and batched and data:
                self._observe("getitem", getitem, data[0] if isinstance(data, list) else None)
            out = collate(data)
            self._observe("collate", collate, out)
            return out

        return watched

    def _observe(self, role: str, function: Any, value: Any) -> None:
        code = getattr(function, "__code__", None)
        if code is None or value is None or not self.user_files.contains(code.co_filename):
            return
        key = (role, self.user_files.relpath(code.co_filename), code.co_firstlineno)
        table = self.seen.setdefault(key, {})
        signature = _structure(value)
        text = repr(signature)
        if text in table:
            table[text]["calls"] += 1
        elif len(table) < MAX_SIGNATURES:
            table[text] = {
                "role": role,
                "name": getattr(function, "__qualname__", "?"),
                "file": key[1],
                "line": key[2],
                **signature,
                "calls": 1,
            }

    def report(self) -> list[dict[str, Any]]:
        return [signature for table in self.seen.values() for signature in table.values()]


def _structure(value: Any) -> dict[str, Any]:
    if isinstance(value, tuple):
        container, elements = "tuple", list(value)
    elif isinstance(value, list):
        container, elements = "list", list(value)
    elif isinstance(value, dict):
        container, elements = "dict", []
    else:
        container, elements = "single", [value]
    return {"container": container, "elements": [_element(e) for e in elements[:MAX_ELEMENTS]]}


def _element(value: Any) -> dict[str, Any]:
    if isinstance(value, torch.Tensor):
        return {
            "kind": "tensor",
            "shape": list(value.shape),
            "dtype": str(value.dtype).removeprefix("torch."),
        }
    for kind, python in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, python):
            return {"kind": kind}
    return {"kind": "other", "type": type(value).__name__}
