"""TorchFix's set-up kept in a warm process: the same findings, fresh visitors for every file."""

from __future__ import annotations

import importlib
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from torchdoctor.agent.checks.linters import torchfix_setup, warm
from torchdoctor.agent.checks.linters.torchfix import TorchFixAdapter
from torchdoctor.agent.checks.linters.warm_up import SAMPLE

batched: Any = pytest.importorskip("libcst._batched_visitor")
plugin: Any = pytest.importorskip("torchfix.torchfix")
symbols: Any = importlib.import_module("torchfix.visitors.deprecated_symbols")


@pytest.fixture
def prepared(monkeypatch: pytest.MonkeyPatch) -> None:
    """`prepare` in this process, undone after the test."""
    visitor_class = batched.BatchableCSTVisitor
    monkeypatch.setattr(visitor_class, "get_visitors", visitor_class.get_visitors)
    monkeypatch.setattr(symbols, "yaml", symbols.yaml)
    monkeypatch.setattr(torchfix_setup, "_method_names", {})
    assert torchfix_setup.prepare(SAMPLE)


def test_fresh_visitors_get_the_methods_libcst_finds_bound_to_themselves(prepared: None) -> None:
    lookup = batched.BatchableCSTVisitor.get_visitors
    original = lookup.__wrapped__  # libcst's own
    assert original is not lookup and torchfix_setup._method_names
    for visitor_class in plugin.ALL_VISITOR_CLS:
        visitor = plugin.construct_visitor(visitor_class)
        kept = lookup(visitor)
        assert kept == original(visitor) and list(kept) == list(original(visitor))
        assert kept and all(method.__self__ is visitor for method in kept.values())


def test_a_method_set_on_the_visitor_itself_is_found_as_libcst_finds_it(prepared: None) -> None:
    visitor = plugin.construct_visitor(plugin.ALL_VISITOR_CLS[1])
    visitor.visit_Comment = lambda node: None  # not a bound method: libcst leaves it out
    found = batched.BatchableCSTVisitor.get_visitors(visitor)
    original = batched.BatchableCSTVisitor.get_visitors.__wrapped__
    assert found == original(visitor) and "visit_Comment" not in found


def test_the_symbol_table_is_parsed_once_and_each_visitor_gets_its_own_copy() -> None:
    calls: list[bytes] = []

    class Module:
        SafeLoader = object()

        def load(self, data: bytes, loader: object) -> list[dict[str, str]]:
            calls.append(data)
            return [{"name": "torch.range"}]

    parsed = torchfix_setup.ParsedOnce(Module())
    first = parsed.load(b"- name: torch.range", parsed.SafeLoader)
    first[0]["name"] = "changed by a visitor"
    second = parsed.load(b"- name: torch.range", parsed.SafeLoader)
    assert second == [{"name": "torch.range"}] and calls == [b"- name: torch.range"]


def test_a_warm_run_over_several_files_finds_what_a_started_one_finds(
    prepared: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(warm, "_entries", {})
    if "flake8" not in warm.preload(["flake8"]):
        pytest.skip("flake8 is not installed next to this interpreter")
    files = ["train_buggy.py", "serve_model.py", "train_lm_slow.py", "leaky_tabular.py"]
    for name in files:
        shutil.copyfile(EXAMPLES / name, tmp_path / name)
    adapter = TorchFixAdapter(120)
    forked = adapter.run(tmp_path, files)
    monkeypatch.setattr(warm, "_entries", {})
    started = adapter.run(tmp_path, files)
    assert forked.status == started.status == "ok", (forked.notes, started.notes)
    assert forked.evidence == started.evidence and len(forked.evidence) > 1
