"""The warm peer workers a server's audits share (`pool`): real worker processes, real tools.

The real peers (flake8 with TorchFix, bandit, detect-secrets) served by the pool report what a
fork of each reports, run after run, in any order. What a tool can do to its worker (crash,
hang, change its folder or environment) is played by small entry points registered as tools
(`warm._entries`), so the pool's answers to it are tested without a broken tool installed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from torchdoctor.agent.checks.linters import pool, warm
from torchdoctor.agent.checks.linters.bandit import BanditAdapter
from torchdoctor.agent.checks.linters.detect_secrets import DetectSecretsAdapter
from torchdoctor.agent.checks.linters.process import ToolTimeout, run_tool, tool_environment
from torchdoctor.agent.checks.linters.torchfix import TorchFixAdapter
from torchdoctor.agent.models import Evidence

FIXTURES = Path(__file__).parents[1] / "fixtures" / "linters"
EXAMPLES = Path(__file__).parents[2] / "examples"
TOOL = os.path.realpath(sys.executable)
"""The path the stand-in tool is registered under (any real file will do)."""


def stand_in() -> int:
    """A tool that does what its argv says: what a real tool might do to the process it runs in."""
    action = sys.argv[1]
    if action == "where":
        print(os.getpid(), os.getcwd(), os.environ.get("POOL_TEST", "-"), sys.argv[2:])
        os.environ["POOL_TEST"] = "left-behind"
        os.chdir("/")
        sys.argv.append("left-behind")
        return 0
    if action == "hang":
        time.sleep(60)
    if action == "exec":
        print(sockets_of_an_executed_program())
    if action == "nap":
        time.sleep(1.0)
        print(os.getpid())
    if action == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "exit":
        print("failing", file=sys.stderr)
        sys.exit(3)
    return 0


COUNT_SOCKETS = """
import os
links = []
for fd in os.listdir("/proc/self/fd"):
    try:
        links.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:  # the listing's own descriptor, closed since
        pass
print(sum(link.startswith("socket:") for link in links))
"""


def sockets_of_an_executed_program() -> str:
    """How many sockets a program executed from here holds, every inheritable one passed."""
    done = subprocess.run(
        [sys.executable, "-c", COUNT_SOCKETS], close_fds=False, capture_output=True, check=True
    )
    return done.stdout.decode().strip()


@pytest.fixture
def stand_in_pool(monkeypatch: pytest.MonkeyPatch) -> Iterator[pool.PeerPool]:
    monkeypatch.setattr(warm, "_entries", {TOOL: stand_in})
    started = pool.PeerPool([TOOL])
    monkeypatch.setattr(pool, "_pool", started)
    yield started
    started.close()


def gone(pid: int) -> bool:
    """Whether `pid` has ended and been reaped (by the supervisor) within a few seconds."""
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def where(peers: pool.PeerPool, folder: Path, env: dict[str, str]) -> list[str]:
    answer = peers.run([TOOL, "where", "x"], folder, 30, env)
    assert answer is not None and answer[0] == 0, answer
    return answer[1].split(" ", 3)


def test_each_run_gets_its_own_folder_environment_and_argv(
    stand_in_pool: pool.PeerPool, tmp_path: Path
) -> None:
    first = where(stand_in_pool, tmp_path, {"POOL_TEST": "one"})
    second = where(stand_in_pool, FIXTURES, {})
    assert first[0] == second[0]  # one warm worker served both
    assert first[1:] == [str(tmp_path), "one", "['x']\n"]
    assert second[1:] == [str(FIXTURES), "-", "['x']\n"]  # nothing the first run changed stayed


def test_a_worker_past_its_time_limit_is_killed_and_replaced(
    stand_in_pool: pool.PeerPool, tmp_path: Path
) -> None:
    before = where(stand_in_pool, tmp_path, {})[0]
    started = time.monotonic()
    with pytest.raises(warm.WarmToolTimeout):
        stand_in_pool.run([TOOL, "hang"], tmp_path, 0.5, {})
    assert time.monotonic() - started < 5
    assert gone(int(before))  # killed, not left running the hung tool
    assert where(stand_in_pool, tmp_path, {})[0] != before


def test_a_worker_that_dies_during_a_run_gives_no_answer_and_is_replaced(
    stand_in_pool: pool.PeerPool, tmp_path: Path
) -> None:
    before = where(stand_in_pool, tmp_path, {})[0]
    assert stand_in_pool.run([TOOL, "crash"], tmp_path, 30, {}) is None
    assert where(stand_in_pool, tmp_path, {})[0] != before


def test_run_tool_gives_a_crashed_runs_verdict_as_a_fork_gives_it(
    stand_in_pool: pool.PeerPool, tmp_path: Path
) -> None:
    """The worker's death is not the verdict: the run is forked, and its own ending is."""
    output = run_tool([TOOL, "crash"], tmp_path, 30)
    assert output.returncode == -signal.SIGKILL
    with pytest.raises(ToolTimeout):
        run_tool([TOOL, "hang"], tmp_path, 0.5)


def test_a_tools_exit_status_and_stderr_come_back(
    stand_in_pool: pool.PeerPool, tmp_path: Path
) -> None:
    assert stand_in_pool.run([TOOL, "exit"], tmp_path, 30, {}) == (3, "", "failing\n")


def test_a_request_no_worker_takes_at_once_is_left_to_a_fork_and_skipped(
    stand_in_pool: pool.PeerPool, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A worker busy with another audit's run holds up no one: the waiting caller forks the
    tool instead, and the worker, once free, skips the request given up."""
    monkeypatch.setattr(pool, "PICKUP_S", 0.3)
    worker = where(stand_in_pool, tmp_path, {})[0]
    os.kill(int(worker), signal.SIGSTOP)  # busy
    try:
        started = time.monotonic()
        assert stand_in_pool.run([TOOL, "exit"], tmp_path, 30, {}) is None
        assert time.monotonic() - started < 2
        assert run_tool([TOOL, "exit"], tmp_path, 30).returncode == 3  # forked instead
    finally:
        os.kill(int(worker), signal.SIGCONT)
    assert where(stand_in_pool, tmp_path, {})[0] == worker  # alive, the given-up runs skipped


def test_a_worker_whose_caller_is_gone_ends_itself_past_the_limit(
    stand_in_pool: pool.PeerPool, tmp_path: Path
) -> None:
    """An audit cancelled during a hung run cannot wedge the tool's worker for good."""
    worker = where(stand_in_pool, tmp_path, {})[0]
    caller = os.fork()
    if caller == 0:  # pragma: no cover - ends in os._exit
        try:
            stand_in_pool.run([TOOL, "hang"], tmp_path, 1.0, {})
        finally:
            os._exit(0)
    time.sleep(0.3)
    os.kill(caller, signal.SIGKILL)  # gone before its limit: no one to kill the worker
    os.waitpid(caller, 0)
    assert gone(int(worker))
    assert where(stand_in_pool, tmp_path, {})[0] != worker


def test_a_program_an_audit_or_a_worker_executes_holds_no_socket_of_the_pool(
    stand_in_pool: pool.PeerPool, tmp_path: Path
) -> None:
    """A sandbox job (the audited code, executed by the audit's worker) cannot reach the
    workers, nor can a program a tool executes reach its worker's request."""
    assert sockets_of_an_executed_program() == "0"
    assert stand_in_pool.run([TOOL, "exec"], tmp_path, 30, {}) == (0, "0\n", "")


def test_a_worker_is_replaced_after_its_share_of_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(warm, "_entries", {TOOL: stand_in})
    monkeypatch.setattr(pool, "MAX_RUNS", 2)  # read by the workers forked from here
    peers = pool.PeerPool([TOOL])
    try:
        pids = [where(peers, tmp_path, {})[0] for _ in range(5)]
    finally:
        peers.close()
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4]


def test_a_tools_workers_take_its_requests_from_one_queue(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(warm, "_entries", {TOOL: stand_in})
    peers = pool.PeerPool([TOOL], per_tool=2)
    try:
        started = time.monotonic()
        with ThreadPoolExecutor(2) as threads:
            answers = list(threads.map(lambda _: peers.run([TOOL, "nap"], tmp_path, 30, {}), "ab"))
        elapsed = time.monotonic() - started
    finally:
        peers.close()
    assert all(answer is not None for answer in answers)
    assert len({answer[1] for answer in answers if answer}) == 2  # side by side, not in turn
    assert elapsed < 1.8  # in turn: 2 s


def test_no_answer_once_the_pool_is_closed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(warm, "_entries", {TOOL: stand_in})
    peers = pool.PeerPool([TOOL])
    peers.close()
    assert peers.run([TOOL, "where"], tmp_path, 5, {}) is None


@pytest.fixture
def real_peers(monkeypatch: pytest.MonkeyPatch) -> Iterator[pool.PeerPool]:
    monkeypatch.setattr(warm, "_entries", {})
    if len(warm.preload()) < 3:
        pytest.skip("flake8, bandit and detect-secrets are not all installed here")
    started = pool.PeerPool(warm.preloaded())
    yield started
    started.close()


def evidence(folder: Path, files: list[str]) -> list[list[Evidence]]:
    adapters = [TorchFixAdapter(120), BanditAdapter(120), DetectSecretsAdapter(120)]
    results = [adapter.run(folder, files) for adapter in adapters]
    assert all(result.status == "ok" for result in results), results
    return [result.evidence for result in results]


def test_the_real_peers_report_in_the_pool_what_their_forks_report(
    real_peers: pool.PeerPool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every tool on files with findings of each, one file a run then several, twice over:
    what one run leaves in its worker changes no later run."""
    runs = [
        (FIXTURES, ["train_legacy.py", "settings.py", "clean.py"]),
        (EXAMPLES, ["leaky_tabular.py"]),
        (FIXTURES, ["settings.py"]),
    ]
    forked = [evidence(folder, files) for folder, files in runs]
    monkeypatch.setattr(pool, "_pool", real_peers)
    pooled = [evidence(folder, files) for folder, files in [*runs, *reversed(runs)]]
    assert pooled == [*forked, *reversed(forked)]
    assert all(any(tool) for tool in zip(*forked, strict=True))  # each tool found something
    argv = [warm.preloaded()[0], "--version"]
    assert real_peers.run(argv, FIXTURES, 30, tool_environment()) is not None  # pooled indeed


def test_a_run_never_sees_the_lines_of_anothers_file_of_the_same_name(
    real_peers: pool.PeerPool, tmp_path: Path
) -> None:
    """Tools quote and check lines through `linecache` (bandit's code excerpts, flake8's noqa
    comments), keyed by the file's name as given: relative, the same in every audit's tree."""
    bandit = next(path for path in warm.preloaded() if path.endswith("bandit"))
    quoted = {}
    for audit in ("first", "second"):
        folder = tmp_path / audit
        folder.mkdir()
        (folder / "train.py").write_text(f"import pickle\n\nmodel = pickle.loads(b'{audit}')\n")
        argv = BanditAdapter(30).command(bandit, ["train.py"], tmp_path)
        answer = real_peers.run(argv, folder, 30, tool_environment())
        assert answer is not None
        quoted[audit] = "".join(r["code"] for r in json.loads(answer[1])["results"])
    assert "first" in quoted["first"] and "second" in quoted["second"], quoted
