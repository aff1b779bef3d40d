"""Peer results reused by content: the same files, configuration and tool version give the
cached result (from another folder too, as the service's per-audit copies are); any change to
a file, a configuration file or the version runs the tool again; failures are never kept; links
are never read; the cache is private."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from torchdoctor.agent.checks.linters import cache as peer_cache
from torchdoctor.agent.checks.linters.base import LinterResult
from torchdoctor.agent.checks.linters.ruff import RuffAdapter
from torchdoctor.agent.checks.linters.runner import _run_one as run_one
from torchdoctor.agent.checks.linters.runner import run_linters

SOURCE = "import os, sys\n\n\ndef f(x):\n    return x == None\n"


class CountingAdapter:
    """A peer whose runs are counted (its result depends only on the files)."""

    name = "counting"

    def __init__(self, status: str = "ok") -> None:
        self.runs = 0
        self.status = status

    def available(self) -> bool:
        return True

    def version(self) -> str:
        return "1.0"

    def run(self, root: Path, files: list[str]) -> LinterResult:
        self.runs += 1
        return LinterResult(tool=self.name, version="1.0", status=self.status)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHDOCTOR_HOME", str(tmp_path / "home"))


def _run_one(adapter: CountingAdapter, root: Path, files: list[str]) -> LinterResult:
    """One tool's run as `run_linters` makes it, with the inputs' digest it computes."""
    return run_one(adapter, root, files, peer_cache.input_digest(root, files))  # type: ignore[arg-type]


def _tree(root: Path, source: str = SOURCE) -> Path:
    root.mkdir(parents=True)
    (root / "train.py").write_text(source)
    return root


def test_a_second_folder_with_the_same_content_reuses_the_real_tools_result(
    tmp_path: Path,
) -> None:
    first = run_linters(_tree(tmp_path / "a"), ["train.py"], [RuffAdapter()])
    second = run_linters(_tree(tmp_path / "b"), ["train.py"], [RuffAdapter()])
    assert [r.cached for r in first.results] == [False]
    assert [r.cached for r in second.results] == [True]
    assert second.evidence == first.evidence and first.evidence
    assert all(str(tmp_path) not in e.model_dump_json() for e in second.evidence)


def test_a_changed_file_or_configuration_runs_the_tool_again(tmp_path: Path) -> None:
    adapter = CountingAdapter()
    root = _tree(tmp_path / "repo")
    _run_one(adapter, root, ["train.py"])
    _run_one(adapter, root, ["train.py"])
    assert adapter.runs == 1
    (root / "train.py").write_text(SOURCE + "\n")
    _run_one(adapter, root, ["train.py"])
    (root / "pyproject.toml").write_text("[tool.ruff]\nline-length = 60\n")
    _run_one(adapter, root, ["train.py"])
    assert adapter.runs == 3


def test_an_edited_adapter_runs_the_tool_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The adapter reads the tool's report into evidence: its code is part of the key."""
    adapter = CountingAdapter()
    root = _tree(tmp_path / "repo")
    _run_one(adapter, root, ["train.py"])
    monkeypatch.setattr(peer_cache, "code_fingerprint", lambda: "an edited adapter")
    _run_one(adapter, root, ["train.py"])
    _run_one(adapter, root, ["train.py"])
    assert adapter.runs == 2


def test_failures_are_never_kept(tmp_path: Path) -> None:
    adapter = CountingAdapter(status="timeout")
    root = _tree(tmp_path / "repo")
    for _ in range(2):
        _run_one(adapter, root, ["train.py"])
    assert adapter.runs == 2


def test_a_linked_file_is_not_read_for_a_key(tmp_path: Path) -> None:
    root = _tree(tmp_path / "repo")
    (tmp_path / "outside.py").write_text("secret = 1\n")
    (root / "link.py").symlink_to(tmp_path / "outside.py")
    assert peer_cache.input_digest(root, ["link.py"]) is None
    inputs = peer_cache.input_digest(root, ["train.py"])
    assert inputs is not None
    assert peer_cache.result_key("ruff", "0.9", inputs) is not None
    assert peer_cache.result_key("pip-audit", "2.9", inputs) is None


def test_the_cache_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHDOCTOR_PEER_CACHE", "0")
    adapter = CountingAdapter()
    root = _tree(tmp_path / "repo")
    for _ in range(2):
        _run_one(adapter, root, ["train.py"])
    assert adapter.runs == 2


def test_cached_results_are_private_files(tmp_path: Path) -> None:
    _run_one(CountingAdapter(), _tree(tmp_path / "repo"), ["train.py"])
    folder = peer_cache.cache_dir()
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    entries = list(folder.iterdir())
    assert entries and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in entries)


def test_a_corrupt_entry_is_a_miss(tmp_path: Path) -> None:
    adapter = CountingAdapter()
    root = _tree(tmp_path / "repo")
    _run_one(adapter, root, ["train.py"])
    for entry in peer_cache.cache_dir().iterdir():
        entry.write_text("{not json")
    _run_one(adapter, root, ["train.py"])
    assert adapter.runs == 2


def test_each_file_is_read_once_for_every_tools_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    plain_bytes = peer_cache._plain_bytes

    def counted(path: Path) -> bytes | None:
        reads.append(path.name)
        return plain_bytes(path)

    monkeypatch.setattr(peer_cache, "_plain_bytes", counted)
    root = _tree(tmp_path / "repo")
    adapters = [CountingAdapter(), CountingAdapter(), CountingAdapter()]
    for index, adapter in enumerate(adapters):
        adapter.name = f"counting-{index}"
    run_linters(root, ["train.py"], adapters)  # type: ignore[arg-type]
    assert reads.count("train.py") == 1
    assert [adapter.runs for adapter in adapters] == [1, 1, 1]
