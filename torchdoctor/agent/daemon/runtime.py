"""Where the daemon listens, and which code it runs: shared by the client and the server.

Stdlib only and light (the hook's client imports it on every call: plain `os.path` strings,
`zlib` checksums). The folder is private to the user (0700, owned by them, not a link) under
`$XDG_RUNTIME_DIR`, else the temporary folder; anything else there is refused and the caller
audits in its own process.
"""

from __future__ import annotations

import fcntl
import os
import site
import stat
import sys
import zlib

RUNTIME_ENV = "TORCHDOCTOR_RUNTIME_DIR"
DISABLE_ENV = "TORCHDOCTOR_DAEMON"
IDLE_ENV = "TORCHDOCTOR_DAEMON_IDLE_S"
DEFAULT_IDLE_S = 900.0
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes
PACKAGE = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class UnsafeRuntimeDir(Exception):
    """The runtime folder is not private to this user: no daemon is used."""


def enabled() -> bool:
    """Whether the hook may use a daemon: not when turned off, and on Linux only (the worker
    relies on the kernel's peer credentials and on pidfds; elsewhere the hook audits in its own
    process)."""
    return sys.platform == "linux" and os.environ.get(DISABLE_ENV, "1") != "0"


def idle_seconds() -> float:
    try:
        return max(1.0, float(os.environ.get(IDLE_ENV, DEFAULT_IDLE_S)))
    except ValueError:
        return DEFAULT_IDLE_S


def runtime_dir() -> str:
    """The user's private daemon folder, created 0700 if missing; `UnsafeRuntimeDir` when it
    is a link, not a folder, someone else's, or open to others."""
    base = os.environ.get(RUNTIME_ENV) or os.environ.get("XDG_RUNTIME_DIR")
    if base:
        folder = os.path.join(base, "torchdoctor")
    else:
        shared = os.environ.get("TMPDIR") or "/tmp"
        folder = os.path.join(shared, f"torchdoctor-{os.getuid()}")
    try:
        if base:
            os.makedirs(base, exist_ok=True)
        if not os.path.lexists(folder):
            os.mkdir(folder, 0o700)
        info = os.lstat(folder)
    except OSError as err:
        raise UnsafeRuntimeDir(f"{folder}: {err.strerror or err}") from err
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise UnsafeRuntimeDir(f"{folder} is not a folder private to this user")
    if len(socket_path(folder)) > MAX_SOCKET_PATH:
        raise UnsafeRuntimeDir(f"{folder} is too long a path for a unix socket")
    return folder


def installation() -> str:
    """The name this Python environment's daemon files share: one daemon per environment
    (`sys.prefix`, the same through `python`, `python3` or a console script's shebang), so two
    virtual environments of one user never take each other's daemon for a stale one."""
    return f"daemon-{zlib.crc32(sys.prefix.encode()):08x}"


def interpreter() -> str:
    """The environment and the interpreter it runs on, whichever name started it: a rebuilt
    or upgraded Python behind the same environment is other code."""
    real = os.path.realpath(sys.executable)
    try:
        built = os.stat(real).st_mtime_ns
    except OSError:
        built = 0
    return f"{sys.prefix}:{real}:{built}:{sys.version}"


def socket_path(folder: str) -> str:
    return os.path.join(folder, f"{installation()}.sock")


def lock_path(folder: str) -> str:
    return os.path.join(folder, f"{installation()}.lock")


def log_path(folder: str) -> str:
    return os.path.join(folder, f"{installation()}.log")


def starting_or_serving(folder: str) -> bool:
    """Whether a daemon holds this environment's lock (one warming up has no socket yet): the
    client then starts no other, which would only wait for that lock and exit."""
    try:
        fd = os.open(lock_path(folder), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases a lock taken here
    return False


def failure_path(folder: str) -> str:
    """Where a daemon that could not start writes the code fingerprint it failed with: the
    client starts no other one for that code (each would fail the same way, at a CPU cost)."""
    return os.path.join(folder, f"{installation()}.failed")


def failed_before(folder: str, fingerprint: str) -> bool:
    try:
        with open(failure_path(folder), encoding="utf-8") as failure:
            return failure.readline().rstrip("\n") == fingerprint
    except OSError:
        return False


def code_fingerprint() -> str:
    """What the daemon's imported code depends on: this environment's interpreter, every
    file of torchdoctor (an upgrade or an edit of an editable install), and the site-packages
    folders (a peer installed, upgraded or removed changes their listing). A change detector,
    not a secret: two checksums of the listing."""
    listing = [interpreter()]
    for folder, subfolders, files in os.walk(PACKAGE):
        subfolders[:] = sorted(name for name in subfolders if name != "__pycache__")
        for name in sorted(files):
            try:
                info = os.stat(os.path.join(folder, name))
            except OSError:
                continue
            listing.append(f"{folder}/{name}:{info.st_mtime_ns}:{info.st_size}")
    for packages in [*site.getsitepackages(), site.getusersitepackages()]:
        try:
            listing.append(f"{packages}:{os.stat(packages).st_mtime_ns}")
        except OSError:
            continue
    data = "\n".join(listing).encode()
    return f"{zlib.crc32(data):08x}{zlib.adler32(data):08x}"
