"""Shared test set-up: an isolated torchdoctor home, no LLM credentials from the host,
bytecode caching on, and the order and grouping the xdist workers get the tests in."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"

# Seconds per test module (both steps summed), measured on 2 cores under a load average of about
# 7, December 2026, the modules that moved to `--probes cheap` measured again after it under a
# load of 5 to 10 (only their order counts). The costliest modules start first, so that no
# worker is left alone at the end with a long one (with `--dist loadfile --no-loadscope-reorder`,
# as scripts/test.sh runs the suite); modules not listed follow in collection order.
MODULE_SECONDS: dict[str, float] = {
    "tests/cluster/test_api_replicas.py": 77,
    "tests/cluster/test_cli_on_ray.py": 105,
    "tests/cluster/test_ray_executor.py": 45,
    "tests/integration/test_probes.py": 432,
    "tests/integration/test_audit_resume.py": 150,  # x0.74: its two audits side by side
    "tests/integration/test_fix_verify.py": 266,
    "tests/e2e/test_chat_terminal.py": 130,
    "tests/integration/test_artifact_checked_runs.py": 120,
    "tests/e2e/test_review_page.py": 195,
    "tests/integration/test_audit_approval.py": 88,  # x0.78: its CLI audit beside the others
    "tests/integration/test_distributed_runs.py": 108,  # x0.68: its three audits side by side
    "tests/security/test_containment.py": 105,  # 152 before the 3 s fork bomb, docker argv check
    "tests/api/test_approval.py": 70,
    "tests/api/test_sessions.py": 70,
    "tests/integration/test_artifact_runs.py": 109,
    "tests/integration/test_artifact_export_explain.py": 67,
    "tests/e2e/test_fix_apply_undo.py": 75,
    "tests/api/test_restart.py": 83,
    "tests/integration/test_cli.py": 60,
    "tests/ecosystem/test_pre_commit_hook.py": 64,
    "tests/ecosystem/test_clean_install.py": 63,
    "tests/api/test_api.py": 60,
    "tests/integration/test_compile_cache.py": 51,
    "tests/integration/test_audit_runs.py": 49,
    "tests/unit/test_fixes_gpt2_bench.py": 46,
    "tests/integration/test_fix_reaches_change.py": 43,
    "tests/api/test_reuse.py": 33,
    "tests/e2e/test_audit_llm_tools.py": 30,
    "tests/security/test_forged_evidence.py": 27,
    "tests/api/test_schema.py": 23,
    "tests/integration/test_run_failures.py": 23,
    "tests/security/test_docker_audit_run.py": 22,
    "tests/unit/test_api_app.py": 20,
    "tests/api/test_client.py": 20,
    "tests/e2e/test_llm_fix_verification.py": 15,
    # Measured from -v timestamps per worker (fast step under a load of 6, slow step's modules
    # at a load of 3, doubled to this table's scale): unlisted, they ran last in collection order,
    # and a step ended on one of them with the other worker idle (test_vocabulary_codemod, 14 s).
    "tests/unit/test_fixes_codemods.py": 29,
    "tests/integration/test_fix_hash_order.py": 20,
    "tests/ecosystem/test_daemon.py": 20,
    "tests/integration/test_notebook_audit.py": 5,
    "tests/unit/test_attention_shapes.py": 22,
    "tests/integration/test_torch_corpus.py": 9,
    "tests/unit/test_linetrace.py": 14,
    "tests/unit/test_vocabulary_codemod.py": 14,
    "tests/ecosystem/test_schema_command.py": 13,
    "tests/unit/test_sandbox_local.py": 13,
    "tests/unit/test_fixes_step_graph.py": 11,
    "tests/api/test_worker_preload.py": 10,
    "tests/unit/test_rules_points_1_2_3_11_12.py": 10,
    "tests/unit/test_result_cache.py": 10,
    "tests/unit/test_step_shapes.py": 9,
    "tests/integration/test_first_run.py": 8,
    "tests/unit/test_rules_points_4_to_10.py": 8,
    "tests/security/test_kernel_limits.py": 8,
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


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """`-m slow` imports only the test modules whose source names the mark: a `slow` mark is
    written in its module (no conftest adds it), and importing the ~230 modules without one
    cost each xdist worker about 10 s of collection."""
    if config.getoption("markexpr") != "slow" or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    return "slow" not in collection_path.read_text(encoding="utf-8") or None


RAY_MODULES = (
    "tests/cluster/test_api_replicas.py",
    "tests/cluster/test_cli_on_ray.py",
    "tests/cluster/test_ray_executor.py",
)
"""The modules on the one Ray cluster (`ray_cluster`): one worker runs them all, one after
another, so the cluster starts once, not on each worker, and stops after the last of them."""


def work_unit(nodeid: str) -> str:
    """What one worker runs whole: the test's module (its module fixtures are built once; split
    over several workers, each built them), or the Ray modules together."""
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
