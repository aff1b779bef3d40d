"""Where an audit's heavy work runs: on this machine (default) or on a Ray cluster.

Read from the environment, so the CLI and the API's audit workers agree:
`TORCHDOCTOR_EXECUTOR=local|ray`, `RAY_ADDRESS` (Ray's own variable; default `auto`, the cluster
this machine belongs to), `TORCHDOCTOR_RAY_GPU_RESOURCE` (the resource a GPU job asks for one
unit of; `GPU` is Ray's `num_gpus`), `TORCHDOCTOR_RAY_RETRIES` (retries of a task whose worker
died).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from types import ModuleType
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from torchdoctor.agent.config import ConfigError

GPU = "GPU"


class ClusterConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    executor: Literal["local", "ray"] = "local"
    address: str = Field("auto", description="the Ray cluster: `auto`, or `HOST:PORT`")
    gpu_resource: str = Field(GPU, min_length=1, description="what a GPU job asks for one of")
    retries: int = Field(3, ge=0, le=20, description="retries of a task whose worker died")

    @property
    def on_ray(self) -> bool:
        return self.executor == "ray"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ClusterConfig:
        """The configuration the environment names; `ConfigError` (one line) when invalid."""
        env = os.environ if env is None else env
        names = {
            "executor": "TORCHDOCTOR_EXECUTOR",
            "address": "RAY_ADDRESS",
            "gpu_resource": "TORCHDOCTOR_RAY_GPU_RESOURCE",
            "retries": "TORCHDOCTOR_RAY_RETRIES",
        }
        given = {field: env[name].strip() for field, name in names.items() if env.get(name)}
        try:
            return cls.model_validate(given)
        except ValidationError as err:
            first = err.errors()[0]
            name = names[str(first["loc"][0])]
            raise ConfigError(f"{name}: {first['msg']}") from None

    def asks_for_gpu(self) -> dict[str, object]:
        """Ray task options for one GPU (or one unit of the configured stand-in resource)."""
        if self.gpu_resource == GPU:
            return {"num_gpus": 1}
        return {"resources": {self.gpu_resource: 1}}


def connect(config: ClusterConfig) -> ModuleType:
    """The `ray` module, connected to the cluster (once per process; inside a Ray task it
    already is). Usage statistics stay off: nothing leaves the cluster."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "TORCHDOCTOR_EXECUTOR=ray: Ray is not installed (pip install 'torchdoctor[ray]')"
        ) from None
    if not ray.is_initialized():
        try:
            ray.init(
                address=config.address,
                logging_level=logging.WARNING,
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, ValueError, RuntimeError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ConfigError(f"Ray cluster at {config.address!r}: {first}") from None
    return ray


def cluster_has_gpu(config: ClusterConfig) -> bool:
    """Whether any node of the cluster offers what a GPU job asks for."""
    ray = connect(config)
    return float(ray.cluster_resources().get(config.gpu_resource, 0)) > 0


def cluster_cpus(config: ClusterConfig) -> int:
    ray = connect(config)
    return max(1, int(ray.cluster_resources().get("CPU", 1)))
