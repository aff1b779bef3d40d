"""A private Docker engine and a host-bound sandbox image, for tests and benchmarks.

No registry can be reached from the test machines, so nothing is pulled: the image is a
`docker import` of an almost empty root filesystem (a few folders, `/etc/passwd`, merged-/usr
symlinks), and the host's /usr and Python interpreter trees are bind-mounted read-only into each
container. The engine runs with its own data root, exec root, pid file and socket under a
temporary folder, without a bridge, iptables rules or IP forwarding, so the host's network is
left exactly as it was. Production uses the image built from
`torchdoctor/sandbox/Dockerfile` instead.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import docker
import docker.errors

from torchdoctor.sandbox import PACKAGE_ROOT
from torchdoctor.sandbox.config import DockerConfig

TEST_IMAGE = "torchdoctor-sandbox-test:latest"
HARNESS_TEST_IMAGE = "torchdoctor-sandbox-harness-test:latest"
HARNESS_FILES = (
    "torchdoctor/__init__.py",
    "torchdoctor/sandbox/__init__.py",
    "torchdoctor/sandbox/launch.py",
    "torchdoctor/sandbox/probes",
)
"""What the sandbox image holds of torchdoctor (as torchdoctor/sandbox/Dockerfile copies it)."""
START_TIMEOUT_S = 30.0


class EngineUnavailable(RuntimeError):
    """No Docker engine could be started here; the reason says why."""


@contextmanager
def private_engine(scratch: Path) -> Iterator[str]:
    """Start `dockerd` confined to `scratch`, yield its socket URL, stop it afterwards."""
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineUnavailable("dockerd is not installed (apt-get install -y docker.io)")
    if os.geteuid() != 0:
        raise EngineUnavailable("dockerd needs root to start")
    scratch.mkdir(parents=True, exist_ok=True)
    socket = scratch / "docker.sock"
    log = (scratch / "dockerd.log").open("wb")
    process = subprocess.Popen(
        [
            dockerd,
            f"--data-root={scratch / 'data'}",
            f"--exec-root={scratch / 'exec'}",
            f"--pidfile={scratch / 'docker.pid'}",
            f"--host=unix://{socket}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--ip-masq=false",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"unix://{socket}"
    try:
        _await_engine(url, process, scratch / "dockerd.log")
        yield url
    finally:
        _stop(process)
        log.close()
        _unmount_under(scratch)


def _await_engine(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-800:]
            raise EngineUnavailable(f"dockerd exited with status {process.returncode}: {tail}")
        try:
            docker.DockerClient(base_url=url, timeout=2).ping()
            return
        except (docker.errors.DockerException, OSError):
            time.sleep(0.2)
    _stop(process)
    raise EngineUnavailable(f"dockerd did not answer within {START_TIMEOUT_S:.0f} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _unmount_under(scratch: Path) -> None:
    """Detach any mount the engine left below `scratch` (deepest first), so it can be deleted."""
    prefix = str(scratch.resolve()) + "/"
    with open("/proc/self/mountinfo", encoding="utf-8") as handle:
        points = [line.split()[4] for line in handle]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False, capture_output=True)


def host_python_roots() -> list[Path]:
    """The running interpreter's trees (venv and base), which the test image binds read-only."""
    roots = {Path(sys.prefix), Path(sys.base_prefix), Path(sys.prefix).resolve()}
    return sorted(roots)


def import_test_image(url: str, image: str = TEST_IMAGE) -> None:
    """Import a minimal root filesystem as `image` (idempotent)."""
    client = docker.DockerClient(base_url=url, timeout=60)
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    repository, _, tag = image.partition(":")
    client.api.import_image_from_data(_rootfs_tar(), repository=repository, tag=tag or "latest")


def build_harness_image(url: str, image: str = HARNESS_TEST_IMAGE) -> None:
    """The test image plus the probes harness under /opt/torchdoctor on PYTHONPATH, laid out as
    the production Dockerfile lays it out, built locally (idempotent). torch comes from the
    host's interpreter trees that `engine_config` binds read-only."""
    import_test_image(url)
    client = docker.DockerClient(base_url=url, timeout=120)
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    dockerfile = (
        f"FROM {TEST_IMAGE}\n"
        "ENV PYTHONPATH=/opt/torchdoctor PYTHONDONTWRITEBYTECODE=1\n"
        "COPY torchdoctor /opt/torchdoctor/torchdoctor\n"
        "WORKDIR /workspace\n"
    )
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        _add_file(tar, "Dockerfile", dockerfile.encode())
        for relative in HARNESS_FILES:
            source = PACKAGE_ROOT / relative
            for path in [source] if source.is_file() else sorted(source.rglob("*.py")):
                _add_file(tar, path.relative_to(PACKAGE_ROOT).as_posix(), path.read_bytes())
    buffer.seek(0)
    client.images.build(
        fileobj=buffer, custom_context=True, tag=image, network_mode="none", rm=True
    )


def engine_config(url: str, image: str = TEST_IMAGE) -> DockerConfig:
    venv_bin = Path(sys.prefix) / "bin"
    return DockerConfig(
        image=image,
        base_url=url,
        read_only=[Path("/usr"), *host_python_roots()],
        path=f"{venv_bin}:/usr/local/bin:/usr/bin:/bin",
    )


def _rootfs_tar() -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for folder in ("workspace", "tmp", "etc", "root", "proc", "sys", "dev", "usr", "home"):
            _add_dir(tar, folder, 0o1777 if folder == "tmp" else 0o755)
        for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64")):
            info = tarfile.TarInfo(link)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
        _add_file(tar, "etc/passwd", b"nobody:x:65534:65534:nobody:/workspace:/usr/sbin/nologin\n")
        _add_file(tar, "etc/group", b"nogroup:x:65534:\n")
    return buffer.getvalue()


def _add_dir(tar: tarfile.TarFile, name: str, mode: int) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = mode
    tar.addfile(info)


def _add_file(tar: tarfile.TarFile, name: str, content: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(content))
