"""A real local Ray cluster for the tests and the benchmark: a head and worker nodes started
with `ray start` as separate processes on 127.0.0.1, every port chosen free, usage statistics
and the dashboard off, a private temporary folder. Its processes are found by that folder and
the node's own port, and stopped by PID (never `ray stop`, which would stop every Ray on the
machine); a watcher stops them if this process ends without doing so (`tests.lifeline`)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.lifeline import Sweeper
from tests.pg_server import free_port

RAY = Path(sys.executable).with_name("ray")
QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    # A dead node is noticed in ~10 s, not the production default's ~30 s; still lenient
    # enough that a busy machine's late heartbeats do not get a live node declared dead.
    "RAY_health_check_initial_delay_ms": "1000",
    "RAY_health_check_period_ms": "1000",
    "RAY_health_check_timeout_ms": "2000",
    "RAY_health_check_failure_threshold": "10",
}


class RayUnavailable(RuntimeError):
    pass


def dead(process: psutil.Process) -> bool:
    """Gone, or a zombie: killed orphans go to this machine's init, which may reap them late
    (psutil.wait_procs would wait for that)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_dead(processes: list[psutil.Process], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not all(dead(p) for p in processes):
        time.sleep(0.05)


@dataclass
class Node:
    node_manager_port: int
    resources: dict[str, float]

    def processes(self) -> list[psutil.Process]:
        """The node's raylet and everything under it (its workers and their sandbox jobs)."""
        flag = f"--node_manager_port={self.node_manager_port}"
        for process in psutil.process_iter(["cmdline"]):
            if flag in (process.info["cmdline"] or []):
                try:
                    return [process, *process.children(recursive=True)]
                except psutil.NoSuchProcess:
                    return []
        return []


@dataclass
class RayCluster:
    temp_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="tdray-")))
    port: int = field(default_factory=free_port)
    nodes: list[Node] = field(default_factory=list)
    launchers: list[subprocess.Popen[str]] = field(default_factory=list)
    """The `ray start` processes: a worker's keeps trying to join a head that failed."""
    taken: set[int] = field(default_factory=set)
    """Ports handed out: the kernel may give a port just released to the next free_port(), and
    Ray refuses to start when two of its components were given the same one."""
    sweeper: Sweeper | None = None
    """Ends the cluster (every process naming its folder) if this process exits first."""

    def __post_init__(self) -> None:
        self.taken.add(self.port)

    def _free_port(self) -> int:
        port = free_port()
        while port in self.taken:
            port = free_port()
        self.taken.add(port)
        return port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def token_file(self) -> Path:
        """The cluster's own token: nothing without it may join or submit tasks."""
        path = self.temp_dir / "auth_token"
        if not path.exists():
            path.write_text(secrets.token_hex(32))
            path.chmod(0o600)
        return path

    @property
    def env(self) -> dict[str, str]:
        """What every process that joins or uses the cluster needs in its environment."""
        return {
            **os.environ,
            **QUIET_ENV,
            "RAY_ADDRESS": self.address,
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_file),
        }

    def _ports(self) -> list[str]:
        names = [
            "--node-manager-port",
            "--object-manager-port",
            "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port",
            "--runtime-env-agent-port",
            "--metrics-export-port",
        ]
        return [f"{name}={self._free_port()}" for name in names]

    def start(self, head_cpus: int, workers: list[tuple[int, dict[str, float]]]) -> None:
        """The head and its workers at once: a worker's `ray start` waits for the head."""
        self.sweeper = self.sweeper or Sweeper(self.temp_dir)
        starting = [self._launch(head_cpus, {}, head=True)]
        starting += [self._launch(cpus, resources, head=False) for cpus, resources in workers]
        for process in starting:
            _, stderr = process.communicate(timeout=180)
            if process.returncode != 0:
                raise RayUnavailable((stderr.strip().splitlines() or ["ray start failed"])[-1])

    def add_node(self, cpus: int, resources: dict[str, float]) -> Callable[[], Node]:
        """One more worker node (a replacement for a lost one), starting in the background;
        returns what waits until it has joined."""
        process = self._launch(cpus, resources, head=False)
        node = self.nodes[-1]

        def joined() -> Node:
            _, stderr = process.communicate(timeout=180)
            if process.returncode != 0:
                raise RayUnavailable((stderr.strip().splitlines() or ["ray start failed"])[-1])
            return node

        return joined

    def _launch(
        self, cpus: int, resources: dict[str, float], *, head: bool
    ) -> subprocess.Popen[str]:
        command = [str(RAY), "start", "--disable-usage-stats", *self._ports()]
        command += ["--include-log-monitor=false"]
        command += [f"--num-cpus={cpus}", "--num-gpus=0", "--object-store-memory=100000000"]
        command += ["--node-ip-address=127.0.0.1", f"--resources={json.dumps(resources or {})}"]
        if head:
            command += ["--head", f"--port={self.port}", "--include-dashboard=false"]
            command += [f"--dashboard-port={self._free_port()}", f"--temp-dir={self.temp_dir}"]
        else:
            command += [f"--address={self.address}"]
        manager_port = int(next(p for p in command if "node-manager-port" in p).split("=")[1])
        self.nodes.append(Node(manager_port, resources))
        launcher = subprocess.Popen(
            command,
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.launchers.append(launcher)
        return launcher

    def kill_node(self, node: Node) -> None:
        """kill -9 of the node's raylet and its workers, as a lost machine."""
        family = node.processes()
        for process in family:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue
        wait_dead(family)

    def stop(self) -> None:
        """Every process of this cluster, by PID: the nodes' families, then anything else
        started with its temporary folder (GCS, monitors), then the folder."""
        for launcher in self.launchers:
            if launcher.poll() is None:
                launcher.kill()
                launcher.communicate()
        for node in self.nodes:
            self.kill_node(node)
        marker = str(self.temp_dir)
        rest = []
        for process in psutil.process_iter(["cmdline"]):
            if any(marker in part for part in process.info["cmdline"] or []):
                try:
                    rest += [process, *process.children(recursive=True)]
                except psutil.NoSuchProcess:
                    continue
        for process in rest:
            try:
                process.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                continue
        wait_dead(rest)
        time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self.sweeper is not None:
            self.sweeper.cancel()
