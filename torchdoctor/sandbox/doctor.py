"""`torchdoctor doctor`: what this host can isolate, see and run, found by trying it.

Every backend is probed for real (the local mechanisms each run a tiny command; Docker must
answer and hold the image), and torch/CUDA versions come from running Python inside the chosen
sandbox, never from importing torch in the service.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.sandbox.cgroups import cgroup_support
from torchdoctor.sandbox.config import DockerConfig, LocalConfig, docker_answers, get_sandbox
from torchdoctor.sandbox.local import LocalSandbox, SandboxUnavailable
from torchdoctor.sandbox.mechanisms import Mechanism, gpu_device_nodes
from torchdoctor.sandbox.models import Isolation, Job, Limits
from torchdoctor.sandbox.protocol import Sandbox
from torchdoctor.sandbox.workspace import remove_workspace

OPTIONAL_TOOLS = (
    "bwrap",
    "unshare",
    "docker",
    "dockerd",
    "nvidia-smi",
    "ruff",
    "bandit",
    "torchfix",
    "detect-secrets",
    "pip-audit",
    "mypy",
)
RUNTIME_SCRIPT = """
import json, sys
info = {"python": sys.version.split()[0]}
try:
    import torch
except Exception as exc:
    info["error"] = f"torch not importable: {exc}"
else:
    info.update(torch=torch.__version__, cuda=torch.version.cuda,
                cudnn=torch.backends.cudnn.version(), cuda_available=torch.cuda.is_available())
    if torch.cuda.is_available():
        info["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
print(json.dumps(info))
"""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BackendCheck(_Model):
    name: str
    available: bool
    detail: str
    isolation: Isolation | None = None
    probes: list[str] = Field(default_factory=list)


class GpuCheck(_Model):
    device_nodes: list[str]
    nvidia_smi: str | None


class RuntimeCheck(_Model):
    backend: str
    python: str | None = None
    torch: str | None = None
    cuda: str | None = None
    cudnn: int | None = None
    cuda_available: bool = False
    devices: list[str] = Field(default_factory=list)
    error: str | None = None


class DoctorReport(_Model):
    selected: str
    backends: list[BackendCheck]
    gpu: GpuCheck
    runtime: RuntimeCheck | None
    tools: dict[str, str | None]
    limits: list[str] = Field(default_factory=list, description="how each limit is enforced")


def self_check() -> DoctorReport:
    local = _check_local()
    docker = _check_docker()
    selected: Sandbox | None
    try:
        selected = get_sandbox()
    except (SandboxUnavailable, ValueError, OSError):
        selected = None
    return DoctorReport(
        selected=selected.isolation.summary if selected else "none: no backend works",
        backends=[local, docker],
        gpu=_check_gpu(),
        runtime=_runtime(selected) if selected else None,
        tools={tool: _which(tool) for tool in OPTIONAL_TOOLS},
        limits=limit_lines(),
    )


def limit_lines() -> list[str]:
    """How the local backend holds each limit on this host, said plainly."""
    support = cgroup_support()
    tmpfs = (
        "counted in the memory limit (their pages are charged to the job's cgroup)"
        if support.usable
        else "each capped at the job's disk quota (size=), not counted in the memory limit"
    )
    disk = (
        "workspace disk quota: a size-capped tmpfs per job (the kernel refuses writes past it)"
        if os.geteuid() == 0
        else "workspace disk quota: usage polled every 0.5 s (mounting a tmpfs needs root; "
        "writers can overshoot between polls; RLIMIT_FSIZE caps each file)"
    )
    return [
        support.summary,
        f"private /tmp and /dev/shm (bwrap, unshare): tmpfs, {tmpfs}",
        disk,
        "host sockets: bwrap binds only the workspace, the interpreter and system folders; "
        "unshare covers /run, /var/lib, /var/spool, /mnt, /media, /srv and every Unix socket "
        "bound on the host (from /proc/net/unix) before the job starts",
    ]


def _check_local() -> BackendCheck:
    sandbox = LocalConfig().build()
    probes = [sandbox.probe(mechanism) for mechanism in Mechanism]
    lines = [f"{p.mechanism}: {'works' if p.works else 'fails'} ({p.detail})" for p in probes]
    working = [p.mechanism for p in probes if p.works]
    if not working:
        return BackendCheck(
            name="local", available=False, detail="no mechanism works", probes=lines
        )
    chosen = LocalSandbox(LocalConfig(mechanism=working[0].value))
    return BackendCheck(
        name="local",
        available=True,
        detail=f"strongest working mechanism: {working[0]}",
        isolation=chosen.isolation,
        probes=lines,
    )


def _check_docker() -> BackendCheck:
    config = DockerConfig()
    if not docker_answers(config):
        reason = (
            f"the docker SDK is missing, no engine answers at DOCKER_HOST, "
            f"or the image {config.image} is absent"
        )
        return BackendCheck(name="docker", available=False, detail=reason)
    return BackendCheck(
        name="docker", available=True, detail="engine answers", isolation=config.build().isolation
    )


def _check_gpu() -> GpuCheck:
    smi = shutil.which("nvidia-smi")
    summary = None
    if smi:
        query = [smi, "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"]
        done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
        summary = (done.stdout or done.stderr).strip() or None
    return GpuCheck(device_nodes=list(gpu_device_nodes()), nvidia_smi=summary)


def _runtime(sandbox: Sandbox) -> RuntimeCheck:
    backend = sandbox.isolation.backend
    scratch = Path(tempfile.mkdtemp(prefix="td-doctor-"))
    try:
        job = Job(
            workspace=scratch,
            command=["python", "-c", RUNTIME_SCRIPT],
            limits=Limits(wall_s=120, cpu_s=120, memory_mb=4096),
            gpu=bool(gpu_device_nodes()),
        )
        result = sandbox.run(job)
    finally:
        remove_workspace(scratch)
    if not result.ok:
        return RuntimeCheck(backend=backend, error=f"{result.outcome}: {result.stderr[-500:]}")
    return RuntimeCheck(backend=backend, **json.loads(result.stdout.strip().splitlines()[-1]))


def _which(tool: str) -> str | None:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return shutil.which(tool, path=path)


def render_doctor(report: DoctorReport) -> str:
    """Plain text for the terminal; every line says what was found, and how."""
    lines = [f"sandbox selected: {report.selected}", ""]
    for backend in report.backends:
        state = "available" if backend.available else "unavailable"
        lines.append(f"[{backend.name}] {state}: {backend.detail}")
        lines += [f"  probe {probe}" for probe in backend.probes]
        if backend.isolation:
            iso = backend.isolation
            lines.append(f"  isolation: {iso.summary}")
            lines.append(f"  filesystem: {iso.filesystem}")
            lines += [f"  WARNING: {warning}" for warning in iso.warnings]
    lines += ["", f"gpu device nodes: {', '.join(report.gpu.device_nodes) or 'none'}"]
    lines.append(f"nvidia-smi: {report.gpu.nvidia_smi or 'not available'}")
    runtime = report.runtime
    if runtime is None:
        lines.append("runtime: not checked (no working sandbox)")
    elif runtime.error:
        lines.append(f"runtime ({runtime.backend} sandbox): {runtime.error}")
    else:
        lines.append(
            f"runtime ({runtime.backend} sandbox): python {runtime.python}, torch {runtime.torch}, "
            f"CUDA {runtime.cuda or '-'}, cuDNN {runtime.cudnn or '-'}, "
            f"GPU visible: {runtime.cuda_available} {' '.join(runtime.devices)}".rstrip()
        )
    lines += ["", "limits:"] + [f"  {line}" for line in report.limits]
    lines += ["", "tools:"]
    lines += [f"  {tool:<15} {path or 'missing'}" for tool, path in report.tools.items()]
    return "\n".join(lines)


def main() -> None:
    """Entry point for `python -m torchdoctor.sandbox.doctor` (`torchdoctor doctor` calls it)."""
    print(render_doctor(self_check()))


if __name__ == "__main__":
    main()
