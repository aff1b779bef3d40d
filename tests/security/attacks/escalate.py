"""Try to regain privileges: become root, mount a filesystem, load a setuid binary's power,
change the clock and the hostname of the host."""

import ctypes
import os
import socket

libc = ctypes.CDLL(None, use_errno=True)
attempts = {
    "setuid(0)": lambda: os.setuid(0),
    "mount tmpfs": lambda: _check(libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)),
    "sethostname": lambda: socket.sethostname("pwned"),
    "chroot": lambda: os.chroot("/"),
    "su": lambda: _check(os.system("su -c id root 2>/dev/null")),
}


def _check(rc: int) -> None:
    if rc != 0:
        raise OSError(ctypes.get_errno() or rc, "refused")


for name, attempt in attempts.items():
    try:
        attempt()
        print(f"SUCCEEDED {name}")
    except OSError as exc:
        print(f"denied {name}: {exc}")
print("uid", os.getuid(), "euid", os.geteuid())
