"""`torchdoctor chat` in a real terminal: tmux runs it, `send-keys` types (Tab completes a
finding id), `capture-pane` reads the screen. A full conversation on the bundled small example:
findings, a fix proposed and verified in the sandbox, approved, applied to the file; Ctrl-C
cancels a step and the session goes on; the session is resumed by id in a new process. An
audit left at its approval question (Ctrl-C) is reviewed with `chat --audit ID`: approved,
applied, then run again from the session with `run`."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.server import Server
from tests.conftest import EXAMPLES, REPO
from torchdoctor.api.store.engine import open_engine
from torchdoctor.api.store.sessions import SessionStore
from torchdoctor.api.terminal.backends import LOCAL_TENANT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("tmux") is None,
        reason="tmux is not installed (Debian package `tmux`, in scripts/apt-packages.txt)",
    ),
]


class Terminal:
    """One tmux session running a command, 200 columns wide, on its own tmux server: on the
    shared default server, a test's `new-session` could reach the server another test's
    closing session had just told to exit ("server exited unexpectedly")."""

    def __init__(self, command: str, cwd: Path, env: dict[str, str]) -> None:
        self.name = f"td-chat-{uuid.uuid4().hex[:8]}"
        self.tmux = ["tmux", "-L", self.name]
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        # env -i: only what the test names (no LLM settings, no COLUMNS from the runner)
        script = f"cd {shlex.quote(str(cwd))} && env -i {exports} {command}; sleep 600"
        subprocess.run(
            [*self.tmux, "new-session", "-d", "-s", self.name, "-x", "200", "-y", "60", script],
            check=True,
        )

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def type(self, line: str) -> None:
        self.keys("-l", line)
        self.keys("Enter")

    def screen(self) -> str:
        return subprocess.run(
            [*self.tmux, "capture-pane", "-p", "-J", "-S", "-2000", "-t", self.name],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.rstrip()

    def mark(self) -> int:
        """Where the current prompt starts: what a later `wait_for(after=...)` reads from."""
        return self.screen().rfind("torchdoctor>")

    def wait_for(self, pattern: str, timeout_s: float = 300, after: int = 0) -> str:
        """The screen once `pattern` appears after the first `after` characters."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            screen = self.screen()
            if re.search(pattern, screen[after:]):
                return screen
            time.sleep(0.5)
        raise AssertionError(f"{pattern!r} never appeared; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], check=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(EXAMPLES / "train_small.py", folder / "train_small.py")
    return folder


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TERM")}
    return {
        **keep,
        "TORCHDOCTOR_HOME": str(tmp_path / "home"),
        "TORCHDOCTOR_LINTERS": "0",
        "TORCHDOCTOR_SANDBOX": "local",
        "TERM": "xterm-256color",
        "PYTHONPATH": str(REPO),  # this checkout's torchdoctor, whatever the venv installed
    }


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def torchdoctor(*args: str) -> str:
    return shlex.join([sys.executable, "-m", "torchdoctor", *args])


def chat(*args: str) -> str:
    return torchdoctor("chat", *args)


def test_fix_approve_apply_then_resume_in_a_real_terminal(
    project: Path, env: dict[str, str], terminals: list[Terminal]
) -> None:
    run = ("--run", "python train_small.py", "--steps", "4", "--probes", "cheap", "--offline")
    first = Terminal(chat("train_small.py", *run), project, env)
    terminals.append(first)
    first.wait_for(r"1 finding\(s\): high 1\.[\s\S]*torchdoctor>", timeout_s=400)

    first.type("findings")
    screen = first.wait_for(r"Gradients are never cleared")
    finding = re.search(r"TD-[0-9a-f]{12}", screen)
    assert finding is not None
    mark = first.mark()
    first.keys("-l", "fix TD-")
    first.keys("Tab")  # completes the one finding id
    first.wait_for(re.escape(f"fix {finding.group()}"), timeout_s=20, after=mark)
    first.keys("Enter")
    screen = first.wait_for(r"Offered for approval", timeout_s=400, after=mark)
    assert "Proposed fix (verified)" in screen and "+    optimizer.zero_grad" in screen
    assert re.search(r"smoke-run\s*│\s*yes", screen), screen[-3000:]

    first.type("approve all")
    first.wait_for(r"Pending: 1 approved", after=mark)
    first.type("apply")
    first.wait_for(r"Applied: " + finding.group(), timeout_s=300, after=mark)
    assert "optimizer.zero_grad(set_to_none=True)" in (project / "train_small.py").read_text()

    # a rerun that is still running when Ctrl-C comes, however fast the machine: the script
    # now waits before training (a quiet machine finished the old one within 3 s)
    script = project / "train_small.py"
    script.write_text("import time\n\ntime.sleep(300)\n" + script.read_text())
    mark = first.mark()
    first.type("rerun")
    first.wait_for(r"under the probes", timeout_s=120, after=mark)
    time.sleep(2)
    first.keys("C-c")
    first.wait_for(r"cancelled: the session goes on[\s\S]*torchdoctor>", timeout_s=120, after=mark)
    first.type("help")
    # the prompt after the list: a Ctrl-D sent before it is read at a prompt is lost (the
    # terminal is not in prompt_toolkit's raw mode between prompts)
    first.wait_for(r"approve ID\|all[\s\S]*torchdoctor>", after=mark)
    first.keys("C-d")
    screen = first.wait_for(r"kept: torchdoctor chat --session \w+", after=mark)
    session = re.findall(r"--session (\w+)", screen)[-1]

    second = Terminal(chat("--session", session), project, env)
    terminals.append(second)
    second.wait_for(r"Applied: " + finding.group() + r"[\s\S]*torchdoctor>", timeout_s=120)
    second.type("ledger")
    second.wait_for(r"ISSUES\.md")
    second.type("quit")
    second.wait_for(r"kept: torchdoctor chat --session " + session)


def test_a_stored_audit_reviewed_with_chat_audit_id(
    project: Path, env: dict[str, str], terminals: list[Terminal]
) -> None:
    """`torchdoctor audit --fix --apply` stopped at its approval question (Ctrl-C) leaves a
    checkpoint; `chat --audit ID` opens it with the verified fix still offered, then
    applies the approved fix, and `run "..." --steps N` shows what the new run changed."""
    script = project / "train_small.py"
    original = script.read_text()
    run = ("--run", "python train_small.py", "--steps", "4", "--probes", "cheap", "--offline")
    audit_cmd = torchdoctor("audit", "train_small.py", *run, "--fix", "--apply")
    first = Terminal(f"{audit_cmd}; echo audit-exited", project, env)
    terminals.append(first)
    # the question comes after the verified diff, line by line, its keys readable (the progress
    # bar is paused while it waits); Ctrl-C there leaves the audit waiting on it
    screen = first.wait_for(
        r"(?m)^\+\s*optimizer\.zero_grad\(set_to_none=True\)$[\s\S]*"
        r"apply this fix\? \[y\]es/\[n\]o/\[a\]ll/\[q\]uit",
        timeout_s=400,
    )
    audit = re.search(r"audit ([0-9a-f]{12}) \(resume: ", screen)
    assert audit is not None, screen[-3000:]
    first.keys("C-c")
    first.wait_for(r"audit-exited", timeout_s=60)
    assert script.read_text() == original

    missing = subprocess.run(
        [sys.executable, "-m", "torchdoctor", "chat", "--audit", "0123456789ab"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    assert missing.returncode == 2 and "no audit '0123456789ab' here" in missing.stderr

    second = Terminal(chat("--audit", audit.group(1)), project, env)
    terminals.append(second)
    screen = second.wait_for(r"Offered for approval[\s\S]*torchdoctor>", timeout_s=120)
    finding = re.search(r"approve (TD-[0-9a-f]{12})", screen)
    assert finding is not None and "1 finding(s): high 1." in screen
    mark = second.mark()
    second.type("approve all")
    second.wait_for(r"Pending: 1 approved", after=mark)
    second.type("apply")
    second.wait_for(r"Applied: " + finding.group(1), timeout_s=300, after=mark)
    assert "optimizer.zero_grad(set_to_none=True)" in script.read_text()
    assert finding.group(1) in (project / "ISSUES.md").read_text()

    mark = second.mark()
    second.type('run "python train_small.py" --steps 2')
    screen = second.wait_for(r"What changed[\s\S]*torchdoctor>", timeout_s=300, after=mark)
    assert "Running python train_small.py under the probes for 2 step(s)" in screen[mark:]
    assert re.search(r"gone\s*│\s*" + finding.group(1), screen[mark:]), screen[mark:]
    second.type("quit")
    screen = second.wait_for(r"kept: torchdoctor chat --session \w+", after=mark)
    session = re.findall(r"--session (\w+)", screen)[-1]
    store = SessionStore(open_engine(f"sqlite:///{Path(env['TORCHDOCTOR_HOME']) / 'api.sqlite'}"))
    stored = store.get(session, LOCAL_TENANT)
    assert stored is not None and stored.source == str(project / "train_small.py")
    assert stored.state.choices.fix, "the session did not keep the audit's own options"


def test_a_session_on_a_server_from_the_terminal(
    project: Path, env: dict[str, str], terminals: list[Terminal], tmp_path: Path
) -> None:
    """`chat --server URL PATH`: the code is sent, audited there, and reviewed over
    `/v1/sessions` (French here); the session is the server's, resumed from another terminal."""
    home = tmp_path / "server-home"
    server = Server(home, f"sqlite:///{home / 'api.sqlite'}")
    server.start()
    try:
        key = server.key("acme")
        remote = {**env, "TORCHDOCTOR_API_KEY": key}
        args = ("--server", server.url, "--lang", "fr", "--offline")
        first = Terminal(chat(*args, "train_small.py"), project, remote)
        terminals.append(first)
        first.wait_for(r"1 constat\(s\) : high 1\.[\s\S]*torchdoctor>", timeout_s=180)
        first.type("findings")
        first.wait_for(r"sévérité[\s\S]*TD-[0-9a-f]{12}")
        first.type("pourquoi ?")
        first.wait_for(r"Aucun LLM n'est configuré")
        first.type("quit")
        screen = first.wait_for(r"kept: torchdoctor chat --session \w+")
        session = re.findall(r"--session (\w+)", screen)[-1]

        second = Terminal(chat("--server", server.url, "--session", session), project, remote)
        terminals.append(second)
        second.wait_for(r"Aucun LLM n'est configuré[\s\S]*torchdoctor>", timeout_s=60)
        other = {**env, "TORCHDOCTOR_API_KEY": server.key("other")}
        third = Terminal(chat("--server", server.url, "--session", session), project, other)
        terminals.append(third)
        third.wait_for(r"error:.*404.*no session", timeout_s=60)
    finally:
        server.stop()
