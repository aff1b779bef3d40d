"""An audit's worker inherits its machinery from the fork server: a static audit forked after
the preload imports nothing of its own, and hands its Python peers' runs to the fork server's
warm peer workers rather than starting them, so concurrent audits spend their CPU on analysis,
not on loading the same modules again (benchmarks/api_load.py prints the effect)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import EXAMPLES
from torchdoctor.api.executor import PRELOAD

PROBE = """
import importlib, json, shutil, sys
from pathlib import Path
importlib.import_module("torchdoctor.api.worker")
importlib.import_module(sys.argv[1])
from torchdoctor.agent.audit import AuditOptions, run_audit
from torchdoctor.api import logs
before = set(sys.modules)
logs.configure()  # as the worker starts
target = Path(sys.argv[3]) / "src"
target.mkdir()
shutil.copyfile(sys.argv[2], target / "train.py")
options = AuditOptions(target=target, write_ledger=True, offline=True, linters=False)
report = run_audit(options).report
print(json.dumps({"findings": len(report.findings), "ledger": (target / "ISSUES.md").is_file(),
                  "loaded": sorted(set(sys.modules) - before)}))
"""


def test_a_static_audit_after_the_preload_loads_no_module(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, PRELOAD, str(EXAMPLES / "train_buggy.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["findings"] > 0 and seen["ledger"]
    assert seen["loaded"] == []


PEERS_PROBE = """
import importlib, json, os, shutil, subprocess, sys
from pathlib import Path
importlib.import_module("torchdoctor.api.worker")
importlib.import_module(sys.argv[1])
from torchdoctor.agent.audit import AuditOptions, run_audit
from torchdoctor.agent.checks.linters import pool, warm
started, forked, pooled = [], [], []
popen, run_forked, served = subprocess.Popen.__init__, warm.run_forked, pool.current().run
def counted_popen(self, argv, *args, **kwargs):
    started.append(os.path.basename(str(argv[0])))
    popen(self, argv, *args, **kwargs)
def counted_fork(entry, argv, *args, **kwargs):
    forked.append(os.path.basename(argv[0]))
    return run_forked(entry, argv, *args, **kwargs)
def counted_pool(argv, *args, **kwargs):
    answer = served(argv, *args, **kwargs)
    if answer is not None:
        pooled.append(os.path.basename(argv[0]))
    return answer
subprocess.Popen.__init__ = counted_popen
warm.run_forked = counted_fork
pool.current().run = counted_pool
target = Path(sys.argv[3]) / "src"
target.mkdir()
shutil.copyfile(sys.argv[2], target / "train.py")
report = run_audit(AuditOptions(target=target, offline=True, linters=True)).report
sources = sorted({e.source for f in report.findings for e in f.evidence})
print(json.dumps({"started": sorted(started), "forked": sorted(forked), "pooled": sorted(pooled),
                  "sources": sources}))
"""


def test_the_python_peers_run_in_the_warm_pool_neither_started_nor_forked(tmp_path: Path) -> None:
    env = {**os.environ, "TORCHDOCTOR_LINTERS": "1", "TORCHDOCTOR_RESULT_CACHE": "0"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            PEERS_PROBE,
            PRELOAD,
            str(EXAMPLES / "train_buggy.py"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    python_peers = {"bandit", "detect-secrets", "flake8"}
    assert python_peers <= set(seen["pooled"])
    assert not python_peers & {*seen["started"], *seen["forked"]}
    assert {"bandit", "torchfix"} <= set(seen["sources"])  # their reports read as evidence


STORE_PROBE = """
import importlib, json, os, shutil, sys
from pathlib import Path
from torchdoctor.api.store.engine import migrate, open_engine
from torchdoctor.api.store.store import Store
from torchdoctor.api.models import AuditChoices
url = os.environ["TORCHDOCTOR_DATABASE_URL"]
engine = open_engine(url)
migrate(engine)
engine.dispose()
worker = importlib.import_module("torchdoctor.api.worker")
importlib.import_module(sys.argv[1])
from torchdoctor.api.settings import ApiSettings
kept = worker.store_for(ApiSettings().url)
ours = Store(open_engine(url))
ids = []
for n in range(2):
    workdir = Path(sys.argv[3]) / str(n)
    (workdir / "src").mkdir(parents=True)
    shutil.copyfile(sys.argv[2], workdir / "src" / "train.py")
    ours.create_audit(f"a{n}", "t", AuditChoices(offline=True), str(workdir))
    assert ours.claim("owner", 60) == f"a{n}"
    pid = os.fork()
    if pid == 0:
        worker.run(f"a{n}", "owner", os.getppid())
        os._exit(0)
    os.waitpid(pid, 0)
print(json.dumps({
    "states": [kept.get_audit(f"a{n}", None).state.value for n in range(2)],
    "compiled": len(kept.engine._compiled_cache),
    "same_store": worker.store_for(ApiSettings().url) is kept,
}))
"""


def test_workers_share_the_fork_servers_warm_engine_never_its_connections(
    tmp_path: Path,
) -> None:
    """The preload leaves the workers' engine with statements compiled and no connection
    open; two workers forked one after the other each record their audit through it."""
    env = {
        **os.environ,
        "TORCHDOCTOR_DATABASE_URL": f"sqlite:///{tmp_path / 'api.sqlite'}",
        "TORCHDOCTOR_HOME": str(tmp_path / "home"),
    }
    done = subprocess.run(
        [sys.executable, "-c", STORE_PROBE, PRELOAD, str(EXAMPLES / "train_small.py"), tmp_path],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["states"] == ["done", "done"] and seen["same_store"]
    assert seen["compiled"] > 0  # the preload's reads (what the workers compiled stayed theirs)


WARM_PROBE = """
import importlib, json, os, shutil, sys, threading
from pathlib import Path
home = Path(os.environ["TORCHDOCTOR_HOME"])
if sys.argv[1] != "-":
    importlib.import_module("torchdoctor.api.worker")
    importlib.import_module(sys.argv[1])  # its warm-up audit runs here
kept = sorted(str(p.relative_to(home)) for p in home.rglob("*") if p.is_file())
threads = threading.active_count()
from torchdoctor.agent.audit import AuditOptions, run_audit
target = Path(sys.argv[3]) / "src"
target.mkdir()
shutil.copyfile(sys.argv[2], target / "train.py")
report = run_audit(AuditOptions(target=target, offline=True, write_ledger=True, force=True)).report
print(json.dumps({"kept": kept, "threads": threads, "ledger": (target / "ISSUES.md").read_text(),
                  "report": report.model_dump(mode="json", exclude={"provenance", "target"})}))
"""


def test_the_fork_servers_warm_up_audit_changes_no_report_and_keeps_nothing(
    tmp_path: Path,
) -> None:
    """The preload's warm-up audit (what an audit sets up on first use, done once for all
    workers) leaves no cache entry and no thread behind, and an audit after it reports what
    an audit in a fresh process reports (peers on, result caches on), ledger included."""
    seen = []
    for preload in (PRELOAD, "-"):
        work = tmp_path / ("warm" if preload != "-" else "fresh")
        work.mkdir()
        env = {
            **os.environ,
            "TORCHDOCTOR_HOME": str(work / "home"),
            "TORCHDOCTOR_DATABASE_URL": f"sqlite:///{work / 'api.sqlite'}",
            "TORCHDOCTOR_LINTERS": "1",
            "TORCHDOCTOR_RESULT_CACHE": "1",
        }
        done = subprocess.run(
            [sys.executable, "-c", WARM_PROBE, preload, str(EXAMPLES / "leaky_tabular.py"), work],
            capture_output=True,
            text=True,
            check=False,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        seen.append(json.loads(done.stdout.strip().splitlines()[-1]))
    warm, fresh = seen
    assert not any(path.startswith("cache") for path in warm["kept"]), warm["kept"]
    assert warm["threads"] == 1
    assert warm["report"]["findings"]  # the example has findings, peers' evidence among them
    assert warm["report"] == fresh["report"]
    assert warm["ledger"] == fresh["ledger"]
