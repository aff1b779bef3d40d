"""The pre-commit daemon behind `torchdoctor-hook`: same findings as `torchdoctor audit
--static-only`, peers included; a private folder and socket; audited files read as data only
(nothing of the audited tree is imported); stale code and idleness end it; whatever it cannot
serve, the client audits itself. Real daemons, real sockets, real peer linters."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import EXAMPLES
from torchdoctor.agent.checks.linters import warm
from torchdoctor.agent.checks.linters.process import resolve_executable
from torchdoctor.agent.checks.linters.runner import default_adapters
from torchdoctor.agent.daemon import client, runtime, wire

BIN = Path(sys.executable).parent
THROUGH_DAEMON = (
    "import sys\n"
    "from torchdoctor.agent.daemon.client import through_daemon\n"
    "code = through_daemon(sys.argv[1:])\n"
    "sys.stderr.write(f'\\nserved-by-daemon: {code is not None}\\n')\n"
    "sys.exit(1 if code is None else code)\n"
)
SHADOWS = ("pyflakes", "bandit", "libcst", "detect_secrets", "torchdoctor")
"""Names of modules the daemon or its peers import: an audited tree holding them must not be
imported from."""


def _short_folder() -> Path:
    """A folder with a short path: a unix socket's path holds 108 bytes."""
    return Path(tempfile.mkdtemp(prefix="tdd-"))


def _environment(run_dir: Path, home: Path, **extra: str) -> dict[str, str]:
    env = {**os.environ, runtime.RUNTIME_ENV: str(run_dir), "TORCHDOCTOR_HOME": str(home)}
    env.pop("TORCHDOCTOR_LINTERS", None)  # the peers are part of what must be equal
    env.pop(runtime.DISABLE_ENV, None)
    env["TORCHDOCTOR_PEER_CACHE"] = "0"
    return {**env, **extra}


def _wait_gone(path: Path, timeout_s: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not path.exists():
            return True
        time.sleep(0.2)
    return False


def _socket(env: dict[str, str]) -> Path:
    return Path(env[runtime.RUNTIME_ENV]) / "torchdoctor" / f"{runtime.installation()}.sock"


def _start_daemon(env: dict[str, str]) -> None:
    started = subprocess.run(
        [str(BIN / "torchdoctor"), "daemon", "start"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert started.returncode == 0, started.stderr


@pytest.fixture(scope="module")
def daemon() -> Iterator[dict[str, str]]:
    scratch = _short_folder()
    env = _environment(scratch / "run", scratch / "home")
    _start_daemon(env)
    try:
        yield env
    finally:
        subprocess.run([str(BIN / "torchdoctor"), "daemon", "stop"], env=env, check=False)
        _wait_gone(_socket(env), 10)
        shutil.rmtree(scratch, ignore_errors=True)


def _project(root: Path) -> Path:
    project = root / "project"
    project.mkdir()
    shutil.copyfile(EXAMPLES / "train_buggy.py", project / "train_buggy.py")
    (project / "settings.py").write_text(
        'import subprocess\nAPI_KEY = "AKIAIOSFODNN7EXAMPLE"\n'
        'subprocess.call("ls " + API_KEY, shell=True)\n',
        encoding="utf-8",
    )
    marker = root / "imported-from-the-audited-tree"
    for name in SHADOWS:
        (project / f"{name}.py").write_text(
            f"open({str(marker)!r}, 'w').write({name!r})\n", encoding="utf-8"
        )
    return project


def _comparable(output: str) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(output)
    provenance = report["provenance"]
    for key in ("started_at", "duration_s", "audit_id"):
        provenance.pop(key, None)
    return report


@pytest.mark.slow
def test_the_daemon_reports_what_the_cli_reports_peers_included(
    daemon: dict[str, str], tmp_path: Path
) -> None:
    project = _project(tmp_path)
    files = ["train_buggy.py", "settings.py"]
    options = ["--no-ledger", "--format", "json", "-q", "--fail-on", "high"]
    served = subprocess.run(
        [sys.executable, "-P", "-c", THROUGH_DAEMON, *files, *options],
        cwd=project,
        env=daemon,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert "served-by-daemon: True" in served.stderr, served.stderr
    normal = subprocess.run(
        [str(BIN / "torchdoctor"), "audit", "--static-only", *files, *options],
        cwd=project,
        env={**daemon, runtime.DISABLE_ENV: "0"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert served.returncode == normal.returncode == 1
    through_daemon, in_process = _comparable(served.stdout), _comparable(normal.stdout)
    assert through_daemon == in_process
    tools = {e["source"] for f in in_process["findings"] for e in f["evidence"]}
    assert {"bandit", "detect-secrets"} <= tools
    ran = in_process["provenance"]["tools"]
    assert {"torchfix", "bandit", "detect-secrets", "ruff"} <= set(ran)
    assert not (tmp_path / "imported-from-the-audited-tree").exists()


@pytest.mark.slow
def test_an_edited_configuration_counts_at_the_next_call(
    daemon: dict[str, str], tmp_path: Path
) -> None:
    shutil.copyfile(EXAMPLES / "train_buggy.py", tmp_path / "train.py")

    def rules() -> set[str]:
        served = subprocess.run(
            [sys.executable, "-P", "-c", THROUGH_DAEMON, "train.py", "--no-ledger", "-f", "json"],
            cwd=tmp_path,
            env={**daemon, "TORCHDOCTOR_LINTERS": "0"},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert "served-by-daemon: True" in served.stderr, served.stderr
        return {finding["rule"] for finding in json.loads(served.stdout)["findings"]}

    before = rules()
    ignored = sorted(before)[0]
    (tmp_path / "pyproject.toml").write_text(
        f'[tool.torchdoctor]\nignore = ["{ignored}"]\n', encoding="utf-8"
    )
    assert rules() == before - {ignored}


@pytest.mark.slow
def test_the_folder_and_socket_are_the_user_s_alone(daemon: dict[str, str]) -> None:
    path = _socket(daemon)
    assert (path.stat().st_mode & 0o777) == 0o600
    assert (path.parent.stat().st_mode & 0o777) == 0o700


@pytest.mark.slow
def test_what_the_daemon_refuses_the_client_audits_itself(
    daemon: dict[str, str], tmp_path: Path
) -> None:
    refused = subprocess.run(
        [sys.executable, "-P", "-c", THROUGH_DAEMON, "--resume", "0123456789ab"],
        cwd=tmp_path,
        env=daemon,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "served-by-daemon: False" in refused.stderr
    hook = subprocess.run(
        [str(BIN / "torchdoctor-hook"), "--resume", "0123456789ab"],
        cwd=tmp_path,
        env=daemon,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert hook.returncode == 2 and "Traceback" not in hook.stderr
    assert hook.stderr.strip().count("\n") == 0, hook.stderr


@pytest.mark.slow
def test_a_malformed_request_is_dropped_and_the_daemon_serves_on(daemon: dict[str, str]) -> None:
    path = _socket(daemon)
    for junk in (
        b"\x00\x00\x00\x02{}",
        b"\x00\x00\x00\x0bnot json!!!",
        b'\x00\x00\x00\x0e{"kind": "rm"}',
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(path))
            sock.sendall(junk)
            with pytest.raises(wire.WireError):
                wire.receive_reply(sock)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        wire.send(sock, wire.request("ping"))
        assert wire.receive_reply(sock)["status"] == "pong"


def _interpreter_names() -> list[Path]:
    """This environment's interpreter under each of its names (python, python3, python3.X)."""
    names = {"python", "python3", f"python3.{sys.version_info.minor}"}
    return sorted(BIN / name for name in names if (BIN / name).exists())


def test_every_name_of_the_interpreter_is_the_same_installation() -> None:
    """The hook's shebang says python3, a user types `python -m torchdoctor`: one daemon."""
    names = _interpreter_names()
    if len(names) < 2:
        pytest.skip("this environment's interpreter has a single name")
    show = "from torchdoctor.agent.daemon import runtime as r\n"
    show += "print(r.installation(), r.code_fingerprint())"
    seen = {
        subprocess.run(
            [str(name), "-P", "-c", show], capture_output=True, text=True, check=True
        ).stdout
        for name in names
    }
    assert len(seen) == 1, seen


@pytest.mark.slow
def test_the_daemon_started_by_the_hook_is_current_for_python_m(daemon: dict[str, str]) -> None:
    shebang = (BIN / "torchdoctor").read_text(encoding="utf-8").splitlines()[0]
    other = [name for name in _interpreter_names() if f"#!{name}" != shebang]
    if not other:
        pytest.skip("this environment's interpreter has a single name")
    status = subprocess.run(
        [str(other[0]), "-m", "torchdoctor", "daemon", "status"],
        env=daemon,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert status.returncode == 0 and "(current)" in status.stdout, status.stdout


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        found.update(int(child) for child in (task / "children").read_text().split())
    return found


@pytest.mark.slow
def test_a_worker_that_dies_costs_that_request_only(daemon: dict[str, str], tmp_path: Path) -> None:
    """A worker killed in the middle of an audit: that hook call fails with one line (its
    report may be half written, so the client does not audit again), the daemon serves on."""
    if not any(resolve_executable(peer) for peer in ("ruff", "bandit", "flake8")):
        pytest.skip("no peer linter: nothing shows the worker's audit under way")
    project = tmp_path / "project"
    project.mkdir()
    for n in range(40):  # enough work that the audit is still running when its worker dies
        shutil.copyfile(EXAMPLES / "train_buggy.py", project / f"train_{n}.py")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(_socket(daemon)))
        wire.send(sock, wire.request("ping"))
        daemon_pid = wire.receive_reply(sock)["pid"]
    assert not _children(daemon_pid)
    hook = subprocess.Popen(
        [sys.executable, "-P", "-c", THROUGH_DAEMON, ".", "--no-ledger", "-f", "json", "-q"],
        cwd=project,
        env=daemon,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    workers: set[int] = set()
    while time.monotonic() < deadline:  # until the worker has started its peers: accepted
        workers = _children(daemon_pid)
        with contextlib.suppress(OSError):
            if any(_children(worker) for worker in workers):
                break
        time.sleep(0.005)
    assert workers and hook.poll() is None
    for worker in workers:
        os.kill(worker, signal.SIGKILL)
    _, stderr = hook.communicate(timeout=60)
    assert hook.returncode == 2
    assert "the daemon stopped in the middle of the audit" in stderr
    assert "served-by-daemon: True" in stderr and "Traceback" not in stderr
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(_socket(daemon)))
        wire.send(sock, wire.request("ping"))
        assert wire.receive_reply(sock)["pid"] == daemon_pid


@pytest.mark.slow
def test_changed_code_makes_the_daemon_step_down(daemon: dict[str, str]) -> None:
    """Last of the module: the daemon it shares stops here."""
    path = _socket(daemon)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(path))
        request = wire.request("audit", "an-older-installation", ["x.py"])
        here = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        try:
            wire.send(sock, request, [0, 1, 2, here])
        finally:
            os.close(here)
        assert wire.receive_reply(sock)["status"] == "stale"
    assert _wait_gone(path, 10)


@pytest.mark.slow
def test_an_idle_daemon_exits_by_itself() -> None:
    scratch = _short_folder()
    env = _environment(scratch / "run", scratch / "home", **{runtime.IDLE_ENV: "1"})
    try:
        _start_daemon(env)
        assert _wait_gone(_socket(env), 30)
        status = [str(BIN / "torchdoctor"), "daemon", "status"]
        assert subprocess.run(status, env=env, capture_output=True, check=False).returncode == 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_a_runtime_folder_open_to_others_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(runtime.RUNTIME_ENV, str(tmp_path))
    (tmp_path / "torchdoctor").mkdir(mode=0o777)
    os.chmod(tmp_path / "torchdoctor", 0o777)
    with pytest.raises(runtime.UnsafeRuntimeDir):
        runtime.runtime_dir()
    assert client.through_daemon(["x.py"]) is None  # the hook audits in its own process
    assert not list((tmp_path / "torchdoctor").iterdir())  # and starts no daemon there


def test_a_runtime_folder_that_is_a_link_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "torchdoctor").symlink_to(elsewhere)
    monkeypatch.setenv(runtime.RUNTIME_ENV, str(tmp_path / "base"))
    with pytest.raises(runtime.UnsafeRuntimeDir):
        runtime.runtime_dir()


def test_a_new_runtime_folder_is_private(monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = _short_folder()
    try:
        monkeypatch.setenv(runtime.RUNTIME_ENV, str(scratch / "run"))
        folder = runtime.runtime_dir()
        assert (os.stat(folder).st_mode & 0o777) == 0o700
    finally:
        shutil.rmtree(scratch)


def test_a_message_after_the_first_stays_in_the_socket() -> None:
    left, right = socket.socketpair()
    with left, right:
        wire.send(left, wire.reply("accepted"))
        wire.send(left, wire.reply("exit", code=1))
        assert wire.receive_reply(right)["status"] == "accepted"
        assert wire.receive_reply(right) == wire.reply("exit", code=1)
        left.sendall(b"\x7f\xff\xff\xff")
        with pytest.raises(wire.WireError):
            wire.receive_reply(right)


@pytest.fixture
def warm_peers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """This process's own peers preloaded, for this test only."""
    monkeypatch.setattr(warm, "_entries", {})
    loaded = warm.preload()
    if not loaded:
        pytest.skip("no Python peer linter is installed next to this interpreter")
    return loaded


def test_a_forked_peer_reports_what_its_subprocess_reports(
    warm_peers: list[str], tmp_path: Path
) -> None:
    shutil.copyfile(EXAMPLES / "train_buggy.py", tmp_path / "train.py")
    (tmp_path / "keys.py").write_text(
        'import pickle\nTOKEN = "AKIAIOSFODNN7EXAMPLE"\npickle.loads(b"")\n', encoding="utf-8"
    )
    files = ["train.py", "keys.py"]
    tools = {"flake8": "torchfix", "bandit": "bandit", "detect-secrets": "detect-secrets"}
    by_name = {adapter.name: adapter for adapter in default_adapters()}
    for script in warm_peers:
        executable = resolve_executable(script)
        assert executable is not None and warm.entry_for(executable) is not None
        adapter = by_name[tools[script]]
        forked = adapter.run(tmp_path, files)
        entries, warm._entries = warm._entries, {}
        try:
            started = adapter.run(tmp_path, files)
        finally:
            warm._entries = entries
        assert forked.status == started.status == "ok", (forked.notes, started.notes)
        assert forked.evidence == started.evidence and forked.notes == started.notes
        assert forked.evidence, script


def test_a_forked_tool_past_its_limit_is_killed(tmp_path: Path) -> None:
    def hang() -> None:
        time.sleep(60)

    started = time.monotonic()
    with pytest.raises(warm.WarmToolTimeout):
        warm.run_forked(hang, ["hang"], tmp_path, 0.5, {})
    assert time.monotonic() - started < 10


def test_no_second_daemon_is_started_while_one_warms_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A daemon warming up holds the lock but has no socket yet: the hook audits by itself
    and starts no other daemon; once none holds the lock, the next call starts one."""
    scratch = _short_folder()
    try:
        monkeypatch.setenv(runtime.RUNTIME_ENV, str(scratch))
        started: list[str] = []
        monkeypatch.setattr(client, "start_daemon", started.append)
        folder = runtime.runtime_dir()
        with open(runtime.lock_path(folder), "a", encoding="utf-8") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as the warming daemon holds it
            assert runtime.starting_or_serving(folder)
            assert client.through_daemon(["train.py"]) is None
            assert started == []
        assert not runtime.starting_or_serving(folder)
        assert client.through_daemon(["train.py"]) is None
        assert started == [folder]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_a_daemon_that_cannot_warm_up_is_not_started_again_for_that_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torchdoctor.agent.daemon import server

    scratch = _short_folder()
    try:
        monkeypatch.setenv(runtime.RUNTIME_ENV, str(scratch))
        monkeypatch.setattr(sys, "path", list(sys.path))

        def broken() -> None:
            raise ImportError("a peer's plugin is broken")

        monkeypatch.setattr(server, "warm_up", broken)
        with pytest.raises(ImportError):
            server.main()
        folder = runtime.runtime_dir()
        assert runtime.failed_before(folder, runtime.code_fingerprint())
        assert not os.path.exists(runtime.socket_path(folder))
        started: list[str] = []
        monkeypatch.setattr(client, "start_daemon", started.append)
        assert client.through_daemon(["train.py"]) is None  # the hook audits by itself
        assert started == []
        assert not runtime.failed_before(folder, "code-installed-since")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
