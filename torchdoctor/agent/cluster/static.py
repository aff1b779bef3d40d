"""The static pass of a large repository sharded over the cluster's CPUs, one Ray task per
shard. Shards are analysed exactly as on one machine and merged in path order, so the report
is the local executor's; a shard whose worker died is retried (`ClusterConfig.retries`)."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

from torchdoctor.agent.checks.base import EngineConfig
from torchdoctor.agent.checks.engine import ChunkRunner, FileResult, analyse_chunk
from torchdoctor.agent.cluster.config import ClusterConfig, connect


def analyse_shard(
    files: list[tuple[str, str]], config: EngineConfig
) -> tuple[list[FileResult], str]:
    """On a node: one shard's results, and the node's id."""
    import ray

    return analyse_chunk(files, config), str(ray.get_runtime_context().get_node_id())


@cache
def _remote_shard(retries: int) -> Any:
    import ray

    return ray.remote(num_cpus=1, max_retries=retries)(analyse_shard)


def ray_chunk_runner(
    cluster: ClusterConfig, say: Callable[[str], None] | None = None
) -> ChunkRunner:
    """Runs the engine's shards as Ray tasks; `say` hears where they ran."""
    ray = connect(cluster)
    remote = _remote_shard(cluster.retries)

    def run(chunks: list[list[tuple[str, str]]], config: EngineConfig) -> list[list[FileResult]]:
        shared = ray.put(config)
        refs = [remote.remote(chunk, shared) for chunk in chunks]
        try:
            done = ray.get(refs)
        except BaseException:
            for ref in refs:  # the audit is stopping: its shards too
                ray.cancel(ref, force=True)
            raise
        if say is not None:
            files = sum(len(chunk) for chunk in chunks)
            nodes = len({node for _, node in done})
            say(f"static pass: {files} files in {len(chunks)} Ray tasks on {nodes} node(s)")
        return [results for results, _ in done]

    return run
