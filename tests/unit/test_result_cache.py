"""Result caches shared across audits: the static pass is reused only for the very same inputs
(files, manifests, documents, engine settings, rules' code, torchdoctor's version) and gives
the same result as a fresh pass; concurrent audits needing one result compute it once;
concurrent writers never leave a torn entry; each cache stays within its bound; corrupt or
linked entries are misses; one switch turns every cache off."""

from __future__ import annotations

import ast
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from torchdoctor.agent import gather, result_cache, static_cache
from torchdoctor.agent.checks import fingerprint
from torchdoctor.agent.checks.engine import FileResult, StaticResult
from torchdoctor.agent.checks.linters import cache as peer_cache
from torchdoctor.agent.config import AuditConfig
from torchdoctor.agent.workspace import load_workspace

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
SOURCE = "import torch\n\nfor x in loader:\n    loss = model(x)\n    print(loss.item())\n"


class Counted:
    """`gather.analyse_files`, counting the passes that really ran."""

    def __init__(self) -> None:
        self.passes = 0
        self.real = gather.analyse_files

    def __call__(self, *args: object, **kwargs: object) -> StaticResult:
        self.passes += 1
        return self.real(*args, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counted:
    counter = Counted()
    monkeypatch.setattr(gather, "analyse_files", counter)
    return counter


def _repo(root: Path, source: str = SOURCE) -> Path:
    root.mkdir(parents=True)
    (root / "train.py").write_text(source)
    return root


def _findings(result: StaticResult) -> list[dict[str, object]]:
    return [f.model_dump() for f in result.all_findings()]


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_a_cached_pass_equals_a_fresh_one(example: str, tmp_path: Path, counted: Counted) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / example).write_bytes((EXAMPLES / example).read_bytes())
    fresh = gather.run_static(load_workspace(tmp_path / "a"), AuditConfig())
    again = gather.run_static(load_workspace(tmp_path / "a"), AuditConfig())
    assert counted.passes == 1
    assert fresh.all_findings() and _findings(again) == _findings(fresh)
    assert again.model_dump(exclude={"seconds"}) == fresh.model_dump(exclude={"seconds"})


def test_the_same_bytes_elsewhere_hit_and_any_changed_input_misses(
    tmp_path: Path, counted: Counted
) -> None:
    gather.run_static(load_workspace(_repo(tmp_path / "a")), AuditConfig())
    gather.run_static(load_workspace(_repo(tmp_path / "b")), AuditConfig())  # another tenant's
    assert counted.passes == 1
    gather.run_static(load_workspace(_repo(tmp_path / "c", SOURCE + "\n")), AuditConfig())
    assert counted.passes == 2  # a file's bytes
    gather.run_static(load_workspace(tmp_path / "a"), AuditConfig(ignore=["TD001"]))
    assert counted.passes == 3  # the rules selected
    gather.run_static(load_workspace(tmp_path / "a"), AuditConfig(torch_version="2.1"))
    assert counted.passes == 4  # the torch version targeted
    (tmp_path / "a" / "requirements.txt").write_text("torch==2.1.0\n")
    gather.run_static(load_workspace(tmp_path / "a"), AuditConfig())
    assert counted.passes == 5  # a dependency manifest the rules read


def test_a_new_rules_code_or_version_misses(
    tmp_path: Path, counted: Counted, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = load_workspace(_repo(tmp_path / "a"))
    gather.run_static(workspace, AuditConfig())
    monkeypatch.setattr(static_cache, "code_fingerprint", lambda: "edited rules")
    gather.run_static(workspace, AuditConfig())
    monkeypatch.setattr(static_cache, "__version__", "99.0")
    gather.run_static(workspace, AuditConfig())
    assert counted.passes == 3


PLUMBING = {
    "torchdoctor/__init__.py": "torchdoctor's version, in the keys themselves",
    "torchdoctor/agent/__init__.py": "an empty package",
    "torchdoctor/agent/result_cache.py": "where results are kept, no input of one",
    "torchdoctor/agent/home.py": "where that is",
    "torchdoctor/agent/cpus.py": "how many processes share the work, not what they find",
    "torchdoctor/sandbox/lifeline.py": "children that die with their parent",
}
"""Modules the checks import that make no result (each says why)."""


def _module_file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imports(source: Path) -> set[Path]:
    """The files of torchdoctor's modules that `source` imports (relative imports, names
    imported from a package that are modules, imports inside functions: all of them)."""
    package = source.relative_to(REPO).parent.parts
    found: set[Path] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[: len(package) - node.level + 1]) if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            names = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        for name in names:
            path = _module_file(name) if name.startswith("torchdoctor") else None
            if path is not None:
                found.add(path)
    return found


def test_the_fingerprint_covers_every_module_the_checks_import() -> None:
    """Followed through one another: `models` imports the artifacts' models, which are part of
    every finding the caches keep."""
    todo = sorted(fingerprint.PACKAGE.rglob("*.py"))
    seen: set[Path] = set()
    while todo:
        source = todo.pop()
        if source not in seen:
            seen.add(source)
            todo.extend(_imports(source) - seen)
    outside = {
        path.relative_to(REPO).as_posix()
        for path in seen
        if fingerprint.PACKAGE not in path.parents
    }
    agent = "torchdoctor/agent/"
    assert outside - set(PLUMBING) == {agent + name for name in fingerprint.OUTSIDE}


def test_the_fingerprint_changes_with_the_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    copy = tmp_path / "agent" / "checks"
    copy.mkdir(parents=True)
    (copy / "rule.py").write_text("RULE = 1\n")
    for name in fingerprint.OUTSIDE:
        (tmp_path / "agent" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "agent" / name).write_text("")
    monkeypatch.setattr(fingerprint, "PACKAGE", copy)
    prints = []
    for edit in ("RULE = 1\n", "RULE = 2\n"):
        (copy / "rule.py").write_text(edit)
        fingerprint.code_fingerprint.cache_clear()
        prints.append(fingerprint.code_fingerprint())
    (tmp_path / "agent" / "models.py").write_text("class Finding: ...\n")
    fingerprint.code_fingerprint.cache_clear()
    prints.append(fingerprint.code_fingerprint())
    fingerprint.code_fingerprint.cache_clear()
    assert len(set(prints)) == 3


def test_a_result_with_a_note_is_never_kept(tmp_path: Path) -> None:
    passes: list[int] = []

    def cut_short() -> StaticResult:
        passes.append(1)
        note = "analysis stopped after the 10s per-file deadline"
        return StaticResult(files=[FileResult(path="a.py", note=note)], rules_run=[], seconds=10)

    for _ in range(2):
        static_cache.get_or_compute("k", cut_short)
    assert len(passes) == 2


def _compute_once(home: str, key: str, log: str, delay_s: float) -> None:
    os.environ["TORCHDOCTOR_HOME"] = home

    def slow() -> StaticResult:
        with open(log, "a") as computed:
            computed.write(f"{os.getpid()}\n")
        time.sleep(delay_s)
        return StaticResult(files=[], rules_run=[str(os.getpid())], seconds=delay_s)

    cache = result_cache.ResultCache("flight", StaticResult, max_entries=10)
    result, _ = cache.get_or_compute(key, slow, keep=lambda _r: True)
    with open(log + ".got", "a") as got:
        got.write(result.rules_run[0] + "\n")


def test_concurrent_audits_of_the_same_key_compute_it_once(tmp_path: Path) -> None:
    log = str(tmp_path / "computed")
    context = multiprocessing.get_context("fork")
    audits = [
        context.Process(target=_compute_once, args=(str(tmp_path / "home"), "k", log, 1.0))
        for _ in range(3)
    ]
    for audit in audits:
        audit.start()
    for audit in audits:
        audit.join(30)
    assert [a.exitcode for a in audits] == [0, 0, 0]
    computed = Path(log).read_text().split()
    assert len(computed) == 1  # the others waited for it
    assert Path(log + ".got").read_text().split() == computed * 3


def test_a_computer_that_dies_frees_the_key_at_once(tmp_path: Path) -> None:
    log = str(tmp_path / "computed")
    context = multiprocessing.get_context("fork")
    home = str(tmp_path / "home")
    doomed = context.Process(target=_compute_once, args=(home, "k", log, 60.0))
    doomed.start()
    while not Path(log).exists():
        time.sleep(0.02)
    started = time.monotonic()
    survivor = context.Process(target=_compute_once, args=(home, "k", log, 0.0))
    survivor.start()
    time.sleep(0.3)
    doomed.kill()
    survivor.join(30)
    assert survivor.exitcode == 0 and time.monotonic() - started < 10
    assert Path(log + ".got").read_text().split() == [str(survivor.pid)]


def test_one_switch_turns_every_result_cache_off(
    tmp_path: Path, counted: Counted, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHDOCTOR_RESULT_CACHE", "0")
    workspace = load_workspace(_repo(tmp_path / "a"))
    for _ in range(2):
        gather.run_static(workspace, AuditConfig())
    assert counted.passes == 2
    assert not peer_cache.enabled()


def _write_often(folder_home: str, key: str, writer: int) -> None:

    os.environ["TORCHDOCTOR_HOME"] = folder_home
    cache = result_cache.ResultCache("race", StaticResult, max_entries=10)
    big = [FileResult(path=f"{writer}-{n}.py", applicable=["x"] * 200) for n in range(20)]
    whole = 0
    for round_ in range(30):
        cache.store(key, StaticResult(files=big, rules_run=[str(writer)], seconds=0.0))
        cache.store(f"{key}-{writer}-{round_}", StaticResult(files=[], rules_run=[], seconds=0))
        loaded = cache.load(key)
        # Whole, whoever wrote it; or gone, when another writer's prune to the bound took it
        # between this store and this load (a miss, which the cache allows), never half.
        assert loaded is None or len(loaded.files) == 20
        whole += loaded is not None
    assert whole > 0


def test_concurrent_writers_leave_whole_entries_and_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("TORCHDOCTOR_HOME", str(home))
    context = multiprocessing.get_context("fork")
    writers = [context.Process(target=_write_often, args=(str(home), "same", n)) for n in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(60)
    assert [w.exitcode for w in writers] == [0, 0, 0, 0]
    cache = result_cache.ResultCache("race", StaticResult, max_entries=10)
    entries = list(cache.folder.iterdir())
    assert not [e for e in entries if e.name.endswith(".tmp")]  # no scratch file left
    assert len(entries) <= 10 + 4  # the bound, give or take the writers' last stores
    loaded = cache.load("same")
    assert loaded is not None and loaded.rules_run[0] in {"0", "1", "2", "3"}


def test_the_oldest_entries_are_pruned_first(tmp_path: Path) -> None:

    cache = result_cache.ResultCache("bounded", StaticResult, max_entries=3)
    for n in range(5):
        cache.store(f"k{n}", StaticResult(files=[], rules_run=[str(n)], seconds=0))
        os.utime(cache.folder / f"k{n}.json", (1000 + n, 1000 + n))
    cache.store("k5", StaticResult(files=[], rules_run=["5"], seconds=0))
    assert sorted(p.stem for p in cache.folder.glob("*.json")) == ["k3", "k4", "k5"]


def test_a_corrupt_or_linked_entry_is_a_miss(tmp_path: Path) -> None:
    cache = result_cache.ResultCache("odd", StaticResult, max_entries=10)
    cache.store("k", StaticResult(files=[], rules_run=[], seconds=0))
    (cache.folder / "k.json").write_text("{not json")
    assert cache.load("k") is None
    outside = tmp_path / "planted.json"
    outside.write_text(StaticResult(files=[], rules_run=["planted"], seconds=0).model_dump_json())
    (cache.folder / "l.json").symlink_to(outside)
    assert cache.load("l") is None
