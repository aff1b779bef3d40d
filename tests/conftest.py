"""Shared test set-up: an isolated torchdoctor home, no LLM credentials from the host,
bytecode caching on, and the order and grouping the two xdist workers get the tests in."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

# Seconds per test module (both steps summed), measured on 2 loaded cores, December 2026. The
# costliest modules start first, so that no worker is left alone at the end with a long one
# (with `--dist loadfile --no-loadscope-reorder`, as scripts/test.sh runs the suite); modules
# not listed follow in collection order.
MODULE_SECONDS: dict[str, float] = {
    "tests/cluster/test_api_replicas.py": 125,
    "tests/cluster/test_cli_on_ray.py": 101,
    "tests/cluster/test_ray_executor.py": 73,
    "tests/integration/test_artifact_checked_runs.py": 256,
    "tests/integration/test_audit_resume.py": 223,
    "tests/integration/test_audit_approval.py": 199,
    "tests/integration/test_distributed_runs.py": 185,
    "tests/integration/test_fix_verify.py": 165,
    "tests/api/test_restart.py": 164,
    "tests/integration/test_probes.py": 150,
    "tests/e2e/test_chat_terminal.py": 126,
    "tests/e2e/test_review_page.py": 120,
    "tests/security/test_containment.py": 110,
    "tests/api/test_sessions.py": 95,
    "tests/e2e/test_fix_apply_undo.py": 96,
    "tests/integration/test_artifact_runs.py": 95,
    "tests/integration/test_artifact_export_explain.py": 86,
    "tests/api/test_approval.py": 63,
    "tests/integration/test_fix_reaches_change.py": 62,
    "tests/integration/test_compile_cache.py": 61,
    "tests/ecosystem/test_clean_install.py": 49,
    "tests/integration/test_cli.py": 46,
    "tests/ecosystem/test_pre_commit_hook.py": 42,
    "tests/e2e/test_audit_llm_tools.py": 33,
    "tests/api/test_api.py": 26,
    "tests/unit/test_fixes_gpt2_bench.py": 25,
    "tests/security/test_docker_audit_run.py": 23,
    "tests/integration/test_audit_runs.py": 23,
    "tests/api/test_reuse.py": 19,
}

# Bytecode is cached, whatever the machine's environment says: without it every `torchdoctor`
# and harness subprocess the suite starts compiles its sources again (about 1 s each).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False


@pytest.fixture(autouse=True)
def _isolated_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    home = tmp_path_factory.mktemp("torchdoctor-home")
    monkeypatch.setenv("TORCHDOCTOR_HOME", str(home))
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "TORCHDOCTOR_MODEL"):
        monkeypatch.delenv(var, raising=False)
    # Peer linters cost seconds per audit; the tests that exercise them turn them back on.
    monkeypatch.setenv("TORCHDOCTOR_LINTERS", "0")
    yield


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """One PostgreSQL server per worker, for every module that needs one (the API suite, the
    Ray replicas): each takes a database of its own on it (`create_database`)."""
    from tests.pg_server import PostgresUnavailable, postgres_server

    try:
        with postgres_server() as url:
            yield url
    except PostgresUnavailable as exc:
        pytest.skip(f"no PostgreSQL server can be started here: {exc}")


RAY_MODULES = (
    "tests/cluster/test_api_replicas.py",
    "tests/cluster/test_cli_on_ray.py",
    "tests/cluster/test_ray_executor.py",
)
"""The modules on the session's one Ray cluster (`ray_cluster`): one worker runs them all, so
the cluster starts once, not on both workers."""


def work_unit(nodeid: str) -> str:
    """What one worker runs whole: the test's module (its module fixtures are built once; split
    over two workers, each built them), or the Ray modules together."""
    module = nodeid.split("::", 1)[0]
    return "ray-cluster" if module in RAY_MODULES else module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The costliest units first (stable: a module keeps its order)."""
    modules: dict[str, set[str]] = {}
    for item in items:
        modules.setdefault(work_unit(item.nodeid), set()).add(item.nodeid.split("::", 1)[0])
    cost = {
        unit: sum(MODULE_SECONDS.get(module, 0.0) for module in names)
        for unit, names in modules.items()
    }
    items.sort(key=lambda item: -cost[work_unit(item.nodeid)])


@pytest.hookimpl(tryfirst=True)  # before xdist picks its own loadfile scheduler
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` hands out `work_unit`s, in collection order with
    `--no-loadscope-reorder`. (xdist's `loadgroup` groups nothing under pytest 9: it renames
    `item._nodeid`, which pytest no longer reads.)"""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkUnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    return WorkUnitScheduling(config, log)
