"""The local backend with real processes: limits, timeouts that kill whole process trees,
output caps, the environment and the workspace's life cycle."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

from torchdoctor.sandbox.config import LocalConfig, get_sandbox
from torchdoctor.sandbox.core import LocalRunner, RunLimits, SandboxUnavailable
from torchdoctor.sandbox.local import LocalSandbox
from torchdoctor.sandbox.mechanisms import Mechanism
from torchdoctor.sandbox.models import Job, Limits, Outcome

FAST = Limits(wall_s=3, cpu_s=2, memory_mb=256, processes=32, output_bytes=10_000)
SYSTEM_PYTHON = Path("/usr/bin/python3")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> LocalSandbox:
    root = tmp_path_factory.mktemp("runs")
    os.chmod(root, 0o711)
    return LocalConfig(run_root=root).build()


@pytest.fixture
def source(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "main.py").write_text("print('hello')\n")
    return folder


def _run(sandbox: LocalSandbox, source: Path, code: str, **job: object) -> Job:
    (source / "job.py").write_text(code)
    limits = job.pop("limits", FAST)
    return Job(workspace=source, command=["python", "job.py"], limits=limits, **job)  # type: ignore[arg-type]


def _alive(marker: str) -> list[str]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline and int(entry) != os.getpid():
            found.append(entry)
    return found


def test_a_job_runs_and_its_files_come_back(sandbox: LocalSandbox, source: Path) -> None:
    job = _run(sandbox, source, "open('out.json','w').write('{}')\nprint('done')\n")
    result = sandbox.run(job.model_copy(update={"collect": ["*.json"]}))
    assert result.outcome is Outcome.OK, result.stderr
    assert result.stdout == "done\n"
    assert [(f.path, f.content) for f in result.files] == [("out.json", b"{}")]
    assert not (source / "out.json").exists()
    assert result.isolation.backend == "local"


def test_the_workspace_is_removed_afterwards(sandbox: LocalSandbox, source: Path) -> None:
    result = sandbox.run(_run(sandbox, source, "import os; print(os.getcwd())"))
    assert not Path(result.stdout.strip()).exists()


def test_a_timeout_kills_the_whole_process_tree(sandbox: LocalSandbox, source: Path) -> None:
    marker = f"td-unit-{uuid.uuid4().hex}"
    code = (
        "import os, signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)', '{marker}'],"
        " start_new_session=True)\n"
        "time.sleep(600)\n"
    )
    result = sandbox.run(_run(sandbox, source, code))
    assert result.outcome is Outcome.TIMEOUT
    assert 2.9 <= result.usage.wall_s < 6
    assert _alive(marker) == []


def test_output_beyond_the_cap_is_cut_and_the_job_killed(
    sandbox: LocalSandbox, source: Path
) -> None:
    code = "import sys\nwhile True: sys.stdout.write('x' * 4096)\n"
    result = sandbox.run(_run(sandbox, source, code))
    assert result.outcome is Outcome.OUTPUT_LIMIT
    assert result.output_truncated
    assert len(result.stdout.split("\n[torchdoctor-sandbox")[0]) == FAST.output_bytes
    assert "output truncated" in result.stdout


def test_the_service_environment_does_not_leak(
    sandbox: LocalSandbox, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unit-secret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    code = "import os\nprint(os.environ.get('OPENAI_API_KEY'), os.environ.get('LANG'))\n"
    result = sandbox.run(_run(sandbox, source, code))
    assert result.stdout.split() == ["None", "C.UTF-8"]


def test_the_job_runs_as_an_unprivileged_uid(sandbox: LocalSandbox, source: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("per-job uids need the service to run as root")
    result = sandbox.run(_run(sandbox, source, "import os\nprint(os.getuid(), os.getgroups())"))
    uid, groups = result.stdout.split(" ", 1)
    assert int(uid) >= 200_000
    assert groups.strip() == "[]"


def test_memory_beyond_the_limit_is_a_memory_limit(sandbox: LocalSandbox, source: Path) -> None:
    result = sandbox.run(_run(sandbox, source, "x = bytearray(2 * 1024**3)\n"))
    assert result.outcome is Outcome.MEMORY_LIMIT


def test_cpu_time_beyond_the_limit_is_a_timeout(sandbox: LocalSandbox, source: Path) -> None:
    limits = FAST.model_copy(update={"wall_s": 20, "cpu_s": 1})
    result = sandbox.run(_run(sandbox, source, "while True: pass\n", limits=limits))
    assert result.outcome is Outcome.TIMEOUT
    assert "CPU" in result.reason
    assert result.usage.cpu_s is not None and result.usage.cpu_s > 0.3


def test_a_file_beyond_the_size_limit_cannot_be_written(
    sandbox: LocalSandbox, source: Path
) -> None:
    limits = FAST.model_copy(update={"file_size_mb": 1})
    code = "open('big', 'wb').write(b'x' * 2 * 1024 * 1024)\n"
    result = sandbox.run(_run(sandbox, source, code, limits=limits))
    assert result.outcome is Outcome.FAILED
    assert "File too large" in result.stderr


def test_a_missing_program_is_the_jobs_failure(sandbox: LocalSandbox, source: Path) -> None:
    job = Job(workspace=source, command=["no-such-program-td"], limits=FAST)
    result = sandbox.run(job)
    assert result.outcome is Outcome.FAILED
    assert result.exit_code == 127


def test_a_workspace_with_an_escaping_symlink_is_a_sandbox_error(
    sandbox: LocalSandbox, source: Path, tmp_path: Path
) -> None:
    (tmp_path / "secret").write_text("s")
    (source / "leak").symlink_to(tmp_path / "secret")
    result = sandbox.run(Job(workspace=source, command=["python", "main.py"], limits=FAST))
    assert result.outcome is Outcome.SANDBOX_ERROR
    assert "leaves the tree" in result.reason


def test_concurrent_jobs_get_separate_workspaces(sandbox: LocalSandbox, source: Path) -> None:
    code = "import os, time\nopen('mine', 'w').write(str(os.getpid()))\ntime.sleep(0.5)\n"
    job = _run(sandbox, source, code + "print(os.getcwd(), os.listdir('.'))\n")

    async def both() -> list[str]:
        results = await asyncio.gather(sandbox.arun(job), sandbox.arun(job))
        return [r.stdout for r in results]

    first, second = asyncio.run(both())
    assert first.split()[0] != second.split()[0]
    assert first.count("mine") == second.count("mine") == 1


@pytest.mark.skipif(not SYSTEM_PYTHON.exists(), reason="needs /usr/bin/python3")
def test_bare_rlimits_mode_still_kills_a_setsid_daemon(tmp_path: Path) -> None:
    reachable = Path(tempfile.mkdtemp(prefix="td-unit-"))
    os.chmod(reachable, 0o755)
    runner = LocalRunner(python=str(SYSTEM_PYTHON), mechanism="rlimits", run_root=reachable)
    probe = runner.probe(Mechanism.RLIMITS)
    if not probe.works:
        shutil.rmtree(reachable)
        pytest.skip(f"the rlimits mechanism does not work here: {probe.detail}")
    marker = f"td-unit-{uuid.uuid4().hex}"
    source = tmp_path / "src"
    source.mkdir()
    (source / "d.py").write_text(
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(600)',"
        f" '{marker}'])\n"
        "time.sleep(0.3)\n"
    )
    report = runner.execute(source, ["python3", "d.py"], {}, RunLimits(wall_s=3))
    shutil.rmtree(reachable)
    assert report.outcome is Outcome.OK, report.stderr
    assert _alive(marker) == []


def test_get_sandbox_honours_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCHDOCTOR_SANDBOX", "local")
    assert isinstance(get_sandbox(), LocalSandbox)
    monkeypatch.setenv("TORCHDOCTOR_SANDBOX", "vm")
    with pytest.raises(SandboxUnavailable, match="auto, local or docker"):
        get_sandbox()


def test_auto_falls_back_to_local_without_an_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert isinstance(get_sandbox("auto"), LocalSandbox)


def test_the_watch_counts_a_detached_childs_cpu_from_the_job_cgroup_without_scanning_the_host(
    sandbox: LocalSandbox, source: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a job cgroup and a uid of its own, the 50 ms watch lists the job's processes from
    the group's members, not from a scan of every host process; it still finds a child that
    left the job's session and was never waited for (its CPU is the job's)."""
    from torchdoctor.sandbox import core
    from torchdoctor.sandbox.cgroups import cgroup_support

    if not (sandbox.runner.privileged and cgroup_support().usable):
        pytest.skip("no per-job cgroup and uid here: the watch scans the host's processes")
    scans: list[int] = []
    real_scan = core.job_pids

    def counted(identity: core.JobIdentity) -> list[int]:
        scans.append(identity.session)
        return real_scan(identity)

    monkeypatch.setattr(core, "job_pids", counted)
    code = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    end = time.process_time() + 0.5\n"
        "    while time.process_time() < end: pass\n"
        "    open('burnt', 'w').close()\n"
        "    time.sleep(600)\n"
        "while not os.path.exists('burnt'): time.sleep(0.05)\n"
        "time.sleep(0.5)\n"
    )
    limits = FAST.model_copy(update={"wall_s": 30})
    result = sandbox.run(_run(sandbox, source, code, limits=limits))
    assert result.outcome is Outcome.OK, result.reason
    assert result.usage.cpu_s is not None and result.usage.cpu_s >= 0.45, result.usage
    # the one scan left is the uid pool's check that the job's uid is free
    assert [session for session in scans if session != -1] == []
