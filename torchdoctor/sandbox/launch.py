"""The last step before untrusted code: limits, a private /tmp, an unprivileged user, then exec.

Run as `python launch.py SPEC_JSON -- ARGV...` (by path, standard library only, because it runs
inside the sandbox where this repository's dependencies may be absent). In order it:

1. when asked (it is then root in a private mount namespace made by `unshare`), mounts fresh
   size-capped tmpfs over /tmp, /var/tmp, /dev/shm and over private folders such as /root and
   /home, keeping the workspace (writable) and the interpreter (read-only) visible at their paths;
2. when asked to be the namespace's init, forks: the parent reaps and relays the exit status
   (a PID namespace's init ignores signals such as SIGXCPU, so the job must not be PID 1);
3. sets the rlimits, drops to the job's uid/gid with no supplementary groups, forbids gaining
   privileges (no_new_privs), changes to the workspace, and execs the command.

Any failure before the exec prints `torchdoctor-sandbox:` and exits with status 125, which the
service classifies as a sandbox error.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import stat
import sys
from typing import Any

SANDBOX_ERROR_STATUS = 125
ERROR_PREFIX = "torchdoctor-sandbox:"
RLIMITS = {
    "AS": resource.RLIMIT_AS,
    "CPU": resource.RLIMIT_CPU,
    "NPROC": resource.RLIMIT_NPROC,
    "FSIZE": resource.RLIMIT_FSIZE,
    "NOFILE": resource.RLIMIT_NOFILE,
    "CORE": resource.RLIMIT_CORE,
}
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_REMOUNT, MS_BIND, MS_REC = 1, 2, 4, 32, 4096, 16384
PR_SET_NO_NEW_PRIVS = 38


class LaunchError(Exception):
    """A step of the launch could not be completed; the job must not start."""


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _libc().mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        err = ctypes.get_errno()
        raise LaunchError(f"mount {target}: {os.strerror(err)}")


def private_mounts(
    workspace: str,
    size_mb: int,
    read_only: list[str],
    hide: list[str],
    sockets: list[str],
    writable: tuple[str, ...] = (),
) -> None:
    """Cover world-writable and private host folders with tmpfs and every host socket with
    /dev/null; keep the needed paths visible.

    The workspace and `writable` folders (a shared compiler cache), and the `read_only`
    folders, are opened first, and re-bound at their own paths if a new tmpfs hid them (the
    interpreter may live under a hidden /root, the cache under the private /tmp).
    """
    opened = [workspace, *writable, *read_only]
    kept = {path: os.open(path, os.O_RDONLY | os.O_DIRECTORY) for path in opened}
    identity = {path: _identity(path) for path in kept}
    for directory in hide:
        if os.path.isdir(directory) and not os.path.islink(directory):
            _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for directory in PRIVATE_TMP_DIRS:
        if os.path.isdir(directory) and not os.path.islink(directory):
            _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_mb}m,mode=1777")
    for path in sockets:
        if _is_socket(path):
            _mount("/dev/null", path, None, MS_BIND, None)
    for path, fd in kept.items():
        if _identity(path) != identity[path]:
            os.makedirs(path, mode=0o755, exist_ok=True)
            _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC, None)
            if path != workspace and path not in writable:
                _mount("none", path, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
        os.close(fd)


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def _identity(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def set_rlimits(limits: dict[str, int]) -> None:
    for name, value in limits.items():
        soft = value
        hard = value + 1 if name == "CPU" else value
        resource.setrlimit(RLIMITS[name], (soft, hard))


def drop_privileges(uid: int | None, gid: int | None) -> None:
    if gid is not None:
        os.setgroups([])
        os.setgid(gid)
    if uid is not None:
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid:
            raise LaunchError(f"could not become uid {uid}")
    if _libc().prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise LaunchError("prctl(PR_SET_NO_NEW_PRIVS) failed")


def reap_as_init(child: int) -> int:
    """Reap every orphan until `child` ends; return a shell-style status for it."""
    while True:
        pid, status = os.wait()
        if pid == child:
            if os.WIFSIGNALED(status):
                return 128 + os.WTERMSIG(status)
            return os.WEXITSTATUS(status)


def launch(spec: dict[str, Any], argv: list[str]) -> None:
    if spec.get("private_tmp_mb"):
        private_mounts(
            spec["workspace"],
            int(spec["private_tmp_mb"]),
            list(spec.get("read_only", [])),
            list(spec.get("hide", [])),
            list(spec.get("masked_sockets", [])),
            tuple(spec.get("writable", [])),
        )
        for link, target in spec.get("links", []):
            os.symlink(target, link)  # in the fresh /tmp, as root: the job cannot replace it
    if spec.get("init"):
        child = os.fork()
        if child:
            os._exit(reap_as_init(child))
    set_rlimits({k: int(v) for k, v in spec.get("rlimits", {}).items()})
    drop_privileges(spec.get("uid"), spec.get("gid"))
    os.chdir(spec["workspace"])
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"{argv[0]}: {exc.strerror}", file=sys.stderr, flush=True)
        os._exit(127)


def main(args: list[str]) -> None:
    try:
        split = args.index("--")
        spec = json.loads(args[0])
        argv = args[split + 1 :]
        if split != 1 or not argv:
            raise LaunchError("usage: launch.py SPEC_JSON -- ARGV...")
        launch(spec, argv)
    except (LaunchError, OSError, ValueError) as exc:
        print(f"{ERROR_PREFIX} {exc}", file=sys.stderr, flush=True)
        os._exit(SANDBOX_ERROR_STATUS)


if __name__ == "__main__":
    main(sys.argv[1:])
