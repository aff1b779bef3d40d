"""Results kept by content, shared by every audit that uses the same `TORCHDOCTOR_HOME`: the
same inputs give the same result, so an audit of code seen before (a CI re-run, the same
project submitted to the service again, by any tenant) reuses it instead of computing it.

What is kept is derived only from the bytes named by its key (a digest of every input the
computation reads), so sharing it across audits and tenants tells no one anything that the
same bytes would not. Entries are private files written atomically (a scratch file renamed
over the entry): concurrent writers of one key each leave a whole entry, readers never see
half of one, and a corrupt or unreadable entry is a miss. Computations of one key are done
once (`get_or_compute`): a second audit that needs it while the first computes it (the same
code submitted twice at once) waits for that result rather than spending the same CPU again;
the lock is the kernel's (flock), so a computer that dies frees it at once. Each cache is
pruned to its newest `max_entries`. `TORCHDOCTOR_RESULT_CACHE=0` turns every such cache off.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from torchdoctor.agent.home import private_dir, private_file, torchdoctor_home

ENABLED_ENV = "TORCHDOCTOR_RESULT_CACHE"
WAIT_S = 120.0
"""The longest a computation waits on another's of the same key before doing its own."""
Result = TypeVar("Result", bound=BaseModel)


def enabled() -> bool:
    return os.environ.get(ENABLED_ENV, "1") != "0"


def plain_bytes(path: Path) -> bytes | None:
    """The file's bytes, refusing links and anything but a regular file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        return handle.read() if stat.S_ISREG(os.fstat(fd).st_mode) else None


class ResultCache(Generic[Result]):
    """`key -> result` as `$TORCHDOCTOR_HOME/cache/<name>/<key>.json`."""

    def __init__(self, name: str, model: type[Result], max_entries: int) -> None:
        self.name, self.model, self.max_entries = name, model, max_entries

    @property
    def folder(self) -> Path:
        return torchdoctor_home() / "cache" / self.name

    def load(self, key: str) -> Result | None:
        try:
            return self.model.model_validate_json(plain_bytes(self.folder / f"{key}.json") or b"")
        except (ValidationError, ValueError):
            return None

    def get_or_compute(
        self, key: str, compute: Callable[[], Result], keep: Callable[[Result], bool]
    ) -> tuple[Result, bool]:
        """(the result, whether it came from the cache): the kept one, else the one that a
        concurrent computation of `key` keeps meanwhile, else `compute()`'s (stored when
        `keep` says so)."""
        cached = self.load(key)
        if cached is not None:
            return cached, True
        with self._computing(key):
            cached = self.load(key)  # kept by the computation we waited for
            if cached is not None:
                return cached, True
            result = compute()
            if keep(result):
                self.store(key, result)
        return result, False

    @contextlib.contextmanager
    def _computing(self, key: str) -> Iterator[None]:
        """Holds `key`'s lock (up to `WAIT_S` waiting for it; then computes regardless)."""
        path = private_file(private_dir(self.folder) / f".{key}.lock")
        fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        deadline = time.monotonic() + WAIT_S
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.05)
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()  # a waiter on it still gets it, then finds the result
            os.close(fd)

    def store(self, key: str, result: Result) -> None:
        folder = private_dir(self.folder)
        scratch = private_file(folder / f".{key}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            scratch.write_text(result.model_dump_json(), encoding="utf-8")
            os.replace(scratch, folder / f"{key}.json")
        finally:
            with contextlib.suppress(FileNotFoundError):
                scratch.unlink()
        self._prune(folder)

    def _prune(self, folder: Path) -> None:
        """Down to the newest `max_entries` once over (a listing per store; dates only then)."""
        names = [name for name in os.listdir(folder) if name.endswith(".json")]
        if len(names) <= self.max_entries:
            return
        dated: list[tuple[float, Path]] = []
        for name in names:
            with contextlib.suppress(OSError):  # pruned by a concurrent writer meanwhile
                dated.append(((folder / name).stat().st_mtime, folder / name))
        dated.sort(reverse=True)
        for _, stale in dated[self.max_entries :]:
            with contextlib.suppress(OSError):
                stale.unlink()
