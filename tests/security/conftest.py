"""Fixtures for the containment suite: a private Docker engine (session scope) and the
sandboxes under test, each on a fresh arena."""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.security.attack_harness import Arena
from torchdoctor.sandbox.config import LocalConfig
from torchdoctor.sandbox.local import LocalSandbox
from torchdoctor.sandbox.mechanisms import Mechanism
from torchdoctor.sandbox.private_engine import (
    EngineUnavailable,
    engine_config,
    import_test_image,
    private_engine,
)
from torchdoctor.sandbox.protocol import Sandbox

BACKENDS = ["local-bwrap", "local-unshare", pytest.param("docker", marks=pytest.mark.docker)]


@pytest.fixture(scope="session")
def docker_url() -> Iterator[str]:
    """A Docker engine started for this session only; skips, saying why, where none can run."""
    scratch = Path(tempfile.mkdtemp(prefix="td-engine-"))
    try:
        with private_engine(scratch) as url:
            import_test_image(url)
            yield url
    except EngineUnavailable as exc:
        pytest.skip(f"no Docker engine can be started here: {exc}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def arena(tmp_path: Path) -> Iterator[Arena]:
    with Arena(tmp_path / "arena") as planted:
        yield planted


@functools.cache
def _unavailable(mechanism: Mechanism) -> str | None:
    """Why `mechanism` cannot isolate jobs on this host (probed once per session), or None."""
    scratch = Path(tempfile.mkdtemp(prefix="td-probe-root-"))
    try:
        probe = LocalConfig(mechanism=mechanism.value, run_root=scratch).build().probe(mechanism)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return None if probe.works else probe.detail


def local_sandbox(mechanism: Mechanism, run_root: Path) -> LocalSandbox:
    """A local sandbox forced onto `mechanism`; skips when this host cannot provide it."""
    reason = _unavailable(mechanism)
    if reason is not None:
        pytest.skip(f"{mechanism} isolation is not available here: {reason}")
    return LocalConfig(mechanism=mechanism.value, run_root=run_root).build()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, arena: Arena) -> tuple[str, Sandbox]:
    name: str = request.param
    if name == "docker":
        url = request.getfixturevalue("docker_url")
        config = engine_config(url).model_copy(update={"run_root": arena.run_root})
        return name, config.build()
    return name, local_sandbox(Mechanism(name.removeprefix("local-")), arena.run_root)
