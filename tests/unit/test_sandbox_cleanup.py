"""Every job's workspace goes when the job ends, with real jobs: a normal end, a timeout, a
hostile job that locks and booby-traps its folder, and the host killed mid-job (its leftover
is swept by the next sandbox on that run root, whichever job uid owns it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from torchdoctor.sandbox import workspace as workspace_module
from torchdoctor.sandbox.config import LocalConfig
from torchdoctor.sandbox.local import LocalSandbox
from torchdoctor.sandbox.models import Job, Limits, Outcome

FAST = Limits(wall_s=3, cpu_s=2, memory_mb=256, processes=32, output_bytes=10_000)


@pytest.fixture
def run_root(tmp_path: Path) -> Path:
    root = tmp_path / "runs"
    root.mkdir(mode=0o711)
    os.chmod(root, 0o711)
    return root


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "main.py").write_text("print('hello')\n")
    return folder


@pytest.fixture(scope="module")
def mechanism(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The mechanism `auto` finds here (probed once for the module)."""
    root = tmp_path_factory.mktemp("probe")
    os.chmod(root, 0o711)
    return LocalConfig(run_root=root).build().mechanism.value


def _sandbox(run_root: Path, mechanism: str) -> LocalSandbox:
    return LocalConfig(run_root=run_root, mechanism=mechanism).build()  # type: ignore[arg-type]


def _job(source: Path, code: str, limits: Limits = FAST) -> Job:
    (source / "job.py").write_text(textwrap.dedent(code))
    return Job(workspace=source, command=["python", "job.py"], limits=limits)


def _left(run_root: Path) -> list[str]:
    return sorted(os.listdir(run_root))


def test_a_normal_end_leaves_nothing(run_root: Path, source: Path, mechanism: str) -> None:
    result = _sandbox(run_root, mechanism).run(_job(source, "open('out.txt', 'w').write('x')\n"))
    assert result.outcome is Outcome.OK, result.stderr
    assert _left(run_root) == []


def test_a_timeout_leaves_nothing(run_root: Path, source: Path, mechanism: str) -> None:
    limits = FAST.model_copy(update={"wall_s": 1})
    code = "import time\nopen('big.bin', 'wb').write(b'0' * 100_000)\ntime.sleep(600)\n"
    result = _sandbox(run_root, mechanism).run(_job(source, code, limits))
    assert result.outcome is Outcome.TIMEOUT
    assert _left(run_root) == []


HOSTILE = """\
    import os, sys
    outside, home = sys.argv[1], os.getcwd()
    os.symlink(outside, 'escape')                       # a link out of the workspace
    os.makedirs('locked/inner')
    open('locked/inner/data.txt', 'w').write('x')
    os.symlink(outside + '/keep.txt', 'locked/inner/keep-link')
    os.chmod('locked/inner/data.txt', 0o400)
    os.chmod('locked/inner', 0o500)                     # read-only folders
    os.chmod('locked', 0)                               # and an unreadable one
    path = 'deep'
    for _ in range(100):                                # deeper than removal holds open
        os.mkdir(path)
        os.chdir(path)
    open('bottom.txt', 'w').write('x')
    os.chdir(home)
    os.chmod('.', 0o500)                                # its own folder read-only last
    print('planted')
"""


@pytest.mark.parametrize("on_tmpfs", [True, False], ids=["tmpfs", "disk"])
def test_a_hostile_job_cannot_keep_its_folder_or_reach_outside(
    run_root: Path,
    source: Path,
    tmp_path: Path,
    mechanism: str,
    on_tmpfs: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    os.chmod(outside, 0o755)
    if not on_tmpfs:  # the workspace on disk: removed entry by entry
        monkeypatch.setattr(workspace_module, "mount_tmpfs", lambda *_args: False)
    sandbox = _sandbox(run_root, mechanism)
    job = _job(source, HOSTILE)
    job = job.model_copy(update={"command": ["python", "job.py", str(outside)]})
    result = sandbox.run(job)
    assert result.outcome is Outcome.OK, result.stderr
    assert result.stdout == "planted\n"
    assert _left(run_root) == []
    assert (outside / "keep.txt").read_text() == "keep"
    assert os.stat(outside).st_mode & 0o777 == 0o755
    assert os.stat(outside / "keep.txt").st_mode & 0o777 == 0o644


HOST = """\
import sys
from pathlib import Path
from torchdoctor.sandbox.config import LocalConfig
from torchdoctor.sandbox.models import Job, Limits

run_root, source, mechanism = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
sandbox = LocalConfig(run_root=run_root, mechanism=mechanism).build()
sandbox.run(Job(workspace=source, command=["python", "job.py", sys.argv[4]],
                limits=Limits(wall_s=60, cpu_s=60, memory_mb=256, processes=32)))
"""


def test_a_killed_hosts_workspace_is_swept_by_the_next_sandbox(
    run_root: Path, source: Path, tmp_path: Path, mechanism: str
) -> None:
    marker = f"td-unit-{uuid.uuid4().hex}"
    _job(source, "import os, time\nopen('started', 'w').write('1')\ntime.sleep(600)\n")
    host = subprocess.Popen(
        [sys.executable, "-c", HOST, str(run_root), str(source), mechanism, marker],
        cwd=Path(workspace_module.__file__).parents[2],
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not list(run_root.glob("td-ws-*/started")):
            time.sleep(0.05)
        assert list(run_root.glob("td-ws-*/started")), "the job never started"
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _jobs_with(marker):
        time.sleep(0.05)
    assert _jobs_with(marker) == []
    (left,) = run_root.glob("td-ws-*")
    assert left.name.startswith(f"td-ws-{host.pid}-")
    if os.geteuid() == 0:
        assert left.stat().st_uid != 0  # handed over to the job's uid: the old sweep skipped it
    _sandbox(run_root, mechanism)
    assert _left(run_root) == []


def _jobs_with(marker: str) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found
