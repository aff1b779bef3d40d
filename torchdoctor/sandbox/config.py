"""Backend configurations (a discriminated union, validated once) and the factory.

`TORCHDOCTOR_SANDBOX=auto|local|docker` picks the backend: `auto` takes Docker when an engine
answers and the sandbox image is present, otherwise the local backend.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from torchdoctor.sandbox.core import SandboxUnavailable

if TYPE_CHECKING:
    from torchdoctor.sandbox.docker_backend import DockerSandbox
    from torchdoctor.sandbox.local import LocalSandbox
    from torchdoctor.sandbox.protocol import Sandbox

DEFAULT_IMAGE = "torchdoctor-sandbox:latest"


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LocalConfig(_Config):
    type: Literal["local"] = "local"
    mechanism: Literal["auto", "bwrap", "unshare", "rlimits"] = "auto"
    python: Path = Field(default_factory=lambda: Path(sys.executable))
    read_only: list[Path] = Field(
        default_factory=list, description="extra host folders the job may read (bwrap binds)"
    )
    run_root: Path | None = Field(None, description="where per-job workspaces are created")
    uid_base: int = Field(200_000, ge=1000)
    uid_count: int = Field(50_000, ge=1)
    address_space_factor: int = Field(
        4, ge=1, description="RLIMIT_AS = memory limit x this (CPU jobs; RSS is watched too)"
    )

    def build(self) -> LocalSandbox:
        from torchdoctor.sandbox.local import LocalSandbox

        return LocalSandbox(self)


class DockerConfig(_Config):
    type: Literal["docker"] = "docker"
    image: str = DEFAULT_IMAGE
    python: str = Field("python", description="the image's interpreter (module jobs run it)")
    base_url: str | None = Field(None, description="engine address; None reads DOCKER_HOST")
    user: str = "65534:65534"
    path: str = Field(
        "/opt/conda/bin:/usr/local/bin:/usr/bin:/bin", description="PATH inside the container"
    )
    read_only: list[Path] = Field(
        default_factory=list, description="host folders bind-mounted read-only at the same path"
    )
    run_root: Path | None = None
    gpus: Literal["auto", "none", "all"] = "auto"
    workdir: str = "/workspace"

    def build(self) -> DockerSandbox:
        from torchdoctor.sandbox.docker_backend import DockerSandbox

        return DockerSandbox(self)


SandboxConfig = Annotated[LocalConfig | DockerConfig, Field(discriminator="type")]


def get_sandbox(choice: str | None = None) -> Sandbox:
    """The backend `TORCHDOCTOR_SANDBOX` (or `choice`) names; `auto` prefers a live Docker."""
    wanted = (choice or os.environ.get("TORCHDOCTOR_SANDBOX", "auto")).lower()
    if wanted == "local":
        return LocalConfig().build()
    if wanted == "docker":
        return DockerConfig().build()
    if wanted != "auto":
        raise SandboxUnavailable(
            f"TORCHDOCTOR_SANDBOX must be auto, local or docker, not {wanted!r}"
        )
    docker = DockerConfig()
    return docker.build() if docker_answers(docker) else LocalConfig().build()


def docker_answers(config: DockerConfig) -> bool:
    """Whether the Docker backend can be used: SDK installed, engine up, image present."""
    try:
        from torchdoctor.sandbox.docker_backend import docker_ready
    except ImportError:
        return False
    return docker_ready(config)
