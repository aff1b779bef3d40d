"""GPU inside the local sandbox: the job sees the GPU (device nodes bound into its namespace),
runs a CUDA matmul, and limits and timeouts still hold there.

Needs only torch, the standard library and this repository (no pydantic, no bwrap required:
`unshare` is used when bwrap is missing). Run on the GPU machine, as root:

    PYTHONPATH=. python benchmarks/sandbox_gpu.py

Prints the isolation obtained, then one line per check; exits 1 if a check fails.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from torchdoctor.sandbox.core import LocalRunner, RunLimits, RunReport  # noqa: E402
from torchdoctor.sandbox.mechanisms import Mechanism, gpu_device_nodes  # noqa: E402
from torchdoctor.sandbox.outcome import Outcome  # noqa: E402

JOBS = REPO / "tests" / "security" / "gpu_jobs"
GPU_LIMITS = RunLimits(
    wall_s=180, cpu_s=180, memory_mb=16_384, processes=512, open_files=4096, disk_mb=2048
)


def torch_site() -> list[str]:
    """Where torch (and its pip CUDA libraries) live, found without importing torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        raise SystemExit("torch is not installed for this interpreter")
    return [str(Path(spec.origin).resolve().parent.parent)]


def runner() -> LocalRunner:
    run_root = Path(tempfile.mkdtemp(prefix="td-gpu-"))
    os.chmod(run_root, 0o711)
    return LocalRunner(python=sys.executable, read_only=torch_site(), run_root=run_root)


def run(box: LocalRunner, script: str, limits: RunLimits, *args: str) -> tuple[RunReport, str]:
    marker = f"td-gpu-{uuid.uuid4().hex}"
    argv = [sys.executable, script, *args, marker]
    report = box.execute(JOBS, argv, {}, limits, gpu=True)
    return report, marker


def leftovers(marker: str) -> list[int]:
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                found.append(int(entry))
        except OSError:
            continue
    return found


def gpu_processes() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "nvidia-smi not available"
    query = [smi, "--query-compute-apps=pid,process_name,used_memory", "--format=csv,noheader"]
    done = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
    return done.stdout.strip() or "none"


def loopback_server() -> tuple[socket.socket, list[bytes]]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    server.settimeout(0.5)
    seen: list[bytes] = []

    def serve() -> None:
        while server.fileno() != -1:
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            seen.append(b"connection")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, seen


def main() -> int:
    box = runner()
    print(f"device nodes: {', '.join(gpu_device_nodes()) or 'NONE'}")
    mechanism = box.mechanism
    for probe in box.probes:
        print(f"probe {probe.mechanism}: {'works' if probe.works else 'fails'} ({probe.detail})")
    print(f"isolation: local/{mechanism}, job uid per run: {box.privileged}")
    checks: list[tuple[str, bool, str]] = []

    report, marker = run(box, "matmul.py", GPU_LIMITS)
    ok = report.outcome is Outcome.OK
    detail = report.stdout.strip().splitlines()[-1] if ok else report.stderr[-600:]
    if ok:
        figures = json.loads(detail)
        detail = (
            f"{figures['device']}: {figures['tflops']} TFLOP/s bf16 8192^3, "
            f"uid {figures['uid']}, torch {figures['torch']} CUDA {figures['cuda']}, "
            f"nodes {','.join(figures['visible_devices'])}, rlimits {report.rlimits}"
        )
    checks.append(("CUDA matmul inside the sandbox", ok, detail))

    timed = RunLimits(**{**GPU_LIMITS.__dict__, "wall_s": 20})
    report, marker = run(box, "gpu_forever.py", timed)
    left = leftovers(marker)
    checks.append(
        (
            "GPU busy loop ends at the wall-clock limit",
            report.outcome is Outcome.TIMEOUT and not left,
            f"{report.outcome} after {report.wall_s} s ({report.reason}); leftover pids {left}; "
            f"GPU processes now: {gpu_processes()}",
        )
    )

    capped = RunLimits(**{**GPU_LIMITS.__dict__, "memory_mb": 6144})
    report, marker = run(box, "gpu_host_memory_bomb.py", capped)
    checks.append(
        (
            "host memory limit holds for a CUDA job",
            report.outcome is Outcome.MEMORY_LIMIT and not leftovers(marker),
            f"{report.outcome} ({report.reason}), peak RSS {report.peak_rss_mb} MiB",
        )
    )

    server, seen = loopback_server()
    port = str(server.getsockname()[1])
    report, marker = run(box, "gpu_network.py", GPU_LIMITS, port)
    server.close()
    isolated = mechanism is not Mechanism.RLIMITS
    blocked = report.outcome is Outcome.OK and not seen
    checks.append(
        (
            "no network from a GPU job" + ("" if isolated else " (not expected: degraded)"),
            blocked or not isolated,
            report.stdout.strip()[-200:] or report.stderr[-300:],
        )
    )

    shutil.rmtree(box.run_root, ignore_errors=True)
    print()
    for name, passed, text in checks:
        print(f"[{'PASS' if passed else 'FAIL'}] {name}: {text}")
    return 0 if all(passed for _, passed, _ in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())
