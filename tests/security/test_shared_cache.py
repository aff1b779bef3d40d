"""The compiler cache one audit's jobs share (`shared_cache`): a later job sees what an earlier
one compiled, through every backend; a job outside the audit does not; the host only hands the
files over (links not followed) and removes them; an outgrown cache is emptied."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.security.attack_harness import Arena
from torchdoctor.sandbox.models import Job, Outcome
from torchdoctor.sandbox.protocol import Sandbox
from torchdoctor.sandbox.shared_cache import (
    INDUCTOR_TMP,
    cache_environment,
    compile_cache,
    prepare_cache,
)

WRITE = (
    "import os, pathlib; d = pathlib.Path(os.environ['TORCHINDUCTOR_CACHE_DIR']); "
    "d.mkdir(parents=True, exist_ok=True); (d / 'graph.bin').write_text('compiled'); "
    "os.symlink(os.environ['TARGET'], d / 'escape')"
)
READ = (
    "import os, pathlib; d = pathlib.Path(os.environ['TORCHINDUCTOR_CACHE_DIR']); "
    "print((d / 'graph.bin').read_text())"
)


def _job(arena: Arena, code: str, cache: Path | None, **env: str) -> Job:
    return Job(
        workspace=arena.origin,
        command=["python3", "-c", code],
        cache=cache,
        env={**(cache_environment(cache) if cache else {}), **env},
    )


def test_later_jobs_read_what_an_earlier_one_compiled(
    backend: tuple[str, Sandbox], arena: Arena
) -> None:
    _name, sandbox = backend
    target = arena.outside / "host-file"
    target.write_text("host")
    owner = os.stat(target).st_uid
    with compile_cache() as cache:
        assert cache is not None
        wrote = sandbox.run(_job(arena, WRITE, cache, TARGET=str(target)))
        assert wrote.outcome is Outcome.OK, wrote.stderr
        read = sandbox.run(_job(arena, READ, cache))
        assert read.outcome is Outcome.OK, read.stderr
        assert read.stdout.strip() == "compiled"
        # handing the cache to the next job's user did not follow the planted link
        assert os.stat(target).st_uid == owner
        assert target.read_text() == "host"
        # a job that is not given the cache does not see it
        alone = sandbox.run(
            _job(arena, READ, None, TORCHINDUCTOR_CACHE_DIR=str(cache / "inductor"))
        )
        assert alone.outcome is not Outcome.OK
    assert not cache.exists()
    assert target.read_text() == "host"


def test_an_outgrown_cache_is_emptied_before_the_next_job(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    (cache / "inductor").mkdir(parents=True)
    (cache / "inductor" / "big.bin").write_bytes(os.urandom(2 * 2**20))
    (cache / "loose").write_text("x")
    assert prepare_cache(cache, None, cap_mb=4) == cache
    assert (cache / "inductor" / "big.bin").exists()
    assert prepare_cache(cache, None, cap_mb=1) == cache
    # emptied; only Inductor's temporary folder is made again, empty, for the next job's link
    assert [entry.name for entry in cache.iterdir()] == [INDUCTOR_TMP]
    assert list((cache / INDUCTOR_TMP).iterdir()) == []


def test_a_cache_that_is_not_here_is_not_bound(tmp_path: Path) -> None:
    """A job sent to another machine of a cluster compiles without it."""
    assert prepare_cache(tmp_path / "elsewhere", None, cap_mb=1) is None
    (tmp_path / "link").symlink_to(tmp_path)
    assert prepare_cache(tmp_path / "link", None, cap_mb=1) is None


def test_a_cache_root_made_by_someone_else_gives_no_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    root = tmp_path / f"torchdoctor-compile-cache-{os.getuid()}"
    root.symlink_to(tmp_path)
    with compile_cache() as cache:
        assert cache is None
