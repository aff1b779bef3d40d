"""Run hostile scripts through a sandbox and judge, from the host, whether each was contained.

Shared by the containment tests and `benchmarks/containment.py`. An `Arena` plants what an
attacker would want (a world-readable secret file, a world-writable folder outside the
workspace, a secret in the service's environment, a sibling workspace, a process of the
service, a TCP server on 127.0.0.1), runs one attack with small limits, then checks: the outcome
is the expected typed one; no process carrying the attack's unique marker is left; nothing was
written outside the workspace; no secret came back; the sentinel process, the sibling workspace
and the original sources are intact; the server saw no connection; the workspace is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from torchdoctor.sandbox.models import Job, Limits, Outcome, RunResult
from torchdoctor.sandbox.protocol import Sandbox

ATTACKS_DIR = Path(__file__).resolve().parent / "attacks"
ATTACK_LIMITS = Limits(
    wall_s=8,
    cpu_s=2,
    memory_mb=256,
    processes=32,
    file_size_mb=16,
    disk_mb=64,
    max_files=1000,
    output_bytes=65_536,
    collect_bytes=4096,
)
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
SERVICE_SECRETS = ("OPENAI_API_KEY", "TORCHDOCTOR_DATABASE_PASSWORD")
FINISHED = frozenset({Outcome.OK})


@dataclass(frozen=True)
class Attack:
    name: str
    expected: frozenset[Outcome]
    wall_s: float | None = None
    """A shorter wall-clock limit, for an attack that only the wall clock ends: nothing in it
    needs ATTACK_LIMITS' 8 s, which each backend would otherwise wait out."""

    @property
    def limits(self) -> Limits:
        if self.wall_s is None:
            return ATTACK_LIMITS
        return ATTACK_LIMITS.model_copy(update={"wall_s": self.wall_s})

    @property
    def script(self) -> str:
        return f"{self.name}.py"


ATTACKS = [
    Attack("fork_bomb", frozenset({Outcome.TIMEOUT, Outcome.KILLED, Outcome.FAILED}), wall_s=3),
    Attack("memory_bomb", frozenset({Outcome.MEMORY_LIMIT})),
    Attack("disk_fill", frozenset({Outcome.KILLED, Outcome.FAILED})),
    Attack("many_files", frozenset({Outcome.KILLED})),
    Attack("busy_loop", frozenset({Outcome.TIMEOUT})),
    Attack("sleep_forever", frozenset({Outcome.TIMEOUT}), wall_s=2),
    Attack("daemon_escape", FINISHED),
    Attack("network_connect", FINISHED),
    Attack("env_secret", FINISHED),
    Attack("read_secret_file", FINISHED),
    Attack("write_outside", FINISHED),
    Attack("symlink_escape", FINISHED),
    Attack("output_flood", frozenset({Outcome.OUTPUT_LIMIT})),
    Attack("kill_parent", FINISHED),
    Attack("proc_environ", FINISHED),
    Attack("huge_argv", frozenset({Outcome.FAILED})),
    Attack("delete_workspace", frozenset({Outcome.OK, Outcome.TIMEOUT})),
    Attack("escalate", FINISHED),
]


@dataclass
class Verdict:
    attack: str
    backend: str
    result: RunResult
    violations: list[str]
    seconds: float

    @property
    def contained(self) -> bool:
        return not self.violations


@dataclass
class _Listener:
    """A TCP server on the host's loopback that counts who reached it."""

    sock: socket.socket
    connections: list[bytes] = field(default_factory=list)

    @classmethod
    def start(cls) -> _Listener:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.settimeout(0.2)
        listener = cls(sock)
        threading.Thread(target=listener._serve, daemon=True).start()
        return listener

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while self.sock.fileno() != -1:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(1)
                try:
                    self.connections.append(conn.recv(256))
                except OSError:
                    self.connections.append(b"")


class Arena:
    """Everything an attacker would want, planted on the host, and the checks afterwards."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_root = root / "runs"
        self.outside = root / "outside"
        self.secret_dir = root / "secrets"
        self.origin = root / "origin"
        self.secret_value = f"planted-secret-{uuid.uuid4().hex}"
        self.env_secret = f"sk-service-{uuid.uuid4().hex}"
        self.victim = self.run_root / "td-ws-victim"
        self._wall_start = time.time()

    def __enter__(self) -> Arena:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        for folder in (self.run_root, self.outside, self.secret_dir):
            folder.mkdir(parents=True)
        os.chmod(self.run_root, 0o711)
        os.chmod(self.outside, 0o777)
        os.chmod(self.secret_dir, 0o755)
        self.secret_file.write_text(self.secret_value)
        os.chmod(self.secret_file, 0o644)
        shutil.copytree(ATTACKS_DIR, self.origin)
        self.victim.mkdir()
        (self.victim / "keep.txt").write_text("victim")
        os.chmod(self.victim, 0o700)
        self.listener = _Listener.start()
        self.sentinel = subprocess.Popen(["sleep", "600"])
        self._saved_env = {name: os.environ.get(name) for name in SERVICE_SECRETS}
        os.environ.update({name: self.env_secret for name in SERVICE_SECRETS})
        return self

    def __exit__(self, *exc: object) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self.sentinel.kill()
        self.sentinel.wait()
        self.listener.sock.close()

    @property
    def secret_file(self) -> Path:
        return self.secret_dir / "secret.txt"

    def context(self) -> str:
        return json.dumps(
            {
                "outside": str(self.outside),
                "origin": str(self.origin),
                "secret_file": str(self.secret_file),
                "port": self.listener.port,
                "sentinel": self.sentinel.pid,
            }
        )

    def job(self, attack: Attack, marker: str) -> Job:
        return Job(
            workspace=self.origin,
            command=["python3", attack.script, marker, self.context()],
            limits=attack.limits,
            collect=["*.txt", "out/*", "etc-link/*", "root-link/*", "loop/*"],
        )

    def attack(self, sandbox: Sandbox, backend: str, attack: Attack) -> Verdict:
        marker = f"td-attack-{uuid.uuid4().hex}"
        before = _digest(self.origin)
        self._wall_start = time.time()
        started = time.monotonic()
        result = sandbox.run(self.job(attack, marker))
        seconds = time.monotonic() - started
        violations = self.judge(result, marker, before, attack.expected)
        self._reset()
        return Verdict(attack.name, backend, result, violations, round(seconds, 2))

    def judge(
        self, result: RunResult, marker: str, origin_digest: str, expected: frozenset[Outcome]
    ) -> list[str]:
        checks: list[tuple[str, Callable[[], bool]]] = [
            (f"outcome {result.outcome} ({result.reason})", lambda: result.outcome in expected),
            ("a process of the job survived", lambda: not processes_with(marker)),
            ("a file was written outside the workspace", self._nothing_written_outside),
            (
                "the job left files in a shared scratch folder",
                lambda: not _left_in_scratch(result, self._wall_start),
            ),
            ("the original sources changed", lambda: _digest(self.origin) == origin_digest),
            ("a secret reached the job's output", lambda: not self._leaked(result)),
            ("the service's sentinel process was killed", lambda: self.sentinel.poll() is None),
            ("a sibling workspace was harmed", self._victim_intact),
            ("the job reached the host's 127.0.0.1", lambda: not self.listener.connections),
            ("the job's workspace was left behind", self._no_leftover_workspace),
        ]
        return [message for message, holds in checks if not holds()]

    def _reset(self) -> None:
        """Forget one attack's traces so the next is judged on its own."""
        self.listener.connections.clear()
        for path in self.outside.iterdir():
            path.unlink()

    def _nothing_written_outside(self) -> bool:
        planted = [Path("/root/pwned.txt"), Path("/etc/pwned.txt"), self.run_root / "pwned.txt"]
        return not any(self.outside.iterdir()) and not any(p.exists() for p in planted)

    def _leaked(self, result: RunResult) -> bool:
        texts = [result.stdout, result.stderr] + [
            f.content.decode(errors="replace") for f in result.files
        ]
        return any(s in t for t in texts for s in (self.secret_value, self.env_secret))

    def _victim_intact(self) -> bool:
        return (self.victim / "keep.txt").is_file()

    def _no_leftover_workspace(self) -> bool:
        return [p.name for p in self.run_root.iterdir()] == [self.victim.name]


def _left_in_scratch(result: RunResult, since: float) -> list[str]:
    """Files owned by the job's uid, changed since `since`, in the host's scratch folders."""
    match = re.search(r"uid (\d+)", result.isolation.user) or re.match(
        r"(\d+)", result.isolation.user
    )
    if match is None:
        return []
    uid = int(match.group(1))
    found = []
    for top in SCRATCH_DIRS:
        for folder, dirs, files in os.walk(top):
            dirs[:] = [d for d in dirs if _writable_by(os.path.join(folder, d), uid)]
            for name in files:
                try:
                    info = os.lstat(os.path.join(folder, name))
                except FileNotFoundError:
                    continue  # another process's temporary file, gone since the listing
                if info.st_uid == uid and info.st_ctime >= since - 1:
                    found.append(os.path.join(folder, name))
    return found


def _writable_by(path: str, uid: int) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(info.st_mode) and (info.st_uid == uid or bool(info.st_mode & stat.S_IWOTH))


def processes_with(marker: str) -> list[int]:
    """Pids whose command line contains `marker` (this process excluded)."""
    found = []
    needle = marker.encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                if needle in handle.read():
                    found.append(int(entry))
        except OSError:
            continue
    return found


def _digest(folder: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        sha.update(str(path.relative_to(folder)).encode())
        if path.is_file() and not path.is_symlink():
            sha.update(path.read_bytes())
    return sha.hexdigest()
