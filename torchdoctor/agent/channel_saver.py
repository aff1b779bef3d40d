"""A SQLite checkpointer that writes a state channel only in the step that changed it.

LangGraph's `SqliteSaver` serialises the whole state into every checkpoint: an audit's
request texts, evidence and findings were rewritten after every node (~23 MB and a third of
the audit's time for a 100-file repository). `PostgresSaver` already keeps each channel's
value in a blob table keyed by (channel, version) and writes only the channels a step
updated; this saver does the same on SQLite. A checkpoint row keeps the channel versions (and
numbers and short strings inline); reading one joins back the blob of each channel's version, so a
resumed audit sees exactly the state it was checkpointed with.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
)
from langgraph.checkpoint.sqlite import SqliteSaver

_BLOBS = """
create table if not exists checkpoint_blobs (
    thread_id text not null,
    checkpoint_ns text not null default '',
    channel text not null,
    version text not null,
    type text not null,
    blob blob,
    primary key (thread_id, checkpoint_ns, channel, version)
)
"""
_EMPTY = "empty"
"""The blob type of a channel that has a version but no value (as PostgresSaver writes it)."""


MAX_INLINE_CHARS = 256


def _inline(value: Any) -> bool:
    """Numbers and short strings stay in the checkpoint row: a blob row would cost more."""
    if isinstance(value, str):
        return len(value) <= MAX_INLINE_CHARS
    return value is None or isinstance(value, int | float | bool)


class ChannelBlobSaver(SqliteSaver):
    """`SqliteSaver` with channel values stored once per channel version."""

    def setup(self) -> None:
        if self.is_setup:
            return
        super().setup()
        self.conn.execute(_BLOBS)
        self.conn.commit()

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """The blobs of the channels this step updated first, then the checkpoint row that
        names their versions (a crash in between leaves only unreferenced blobs). A value
        with no blob at its version yet (read inline from an older checkpoint) is stored too."""
        thread_id = str(config["configurable"]["thread_id"])
        namespace = str(config["configurable"].get("checkpoint_ns", ""))
        values = checkpoint["channel_values"]
        versions = checkpoint["channel_versions"]
        kept = {
            channel: str(versions[channel])
            for channel, value in values.items()
            if channel in versions and channel not in new_versions and not _inline(value)
        }
        stored = self._stored(thread_id, namespace, kept)
        wanted = {
            **{channel: str(version) for channel, version in new_versions.items()},
            **{channel: version for channel, version in kept.items() if channel not in stored},
        }
        rows = []
        for channel, version in wanted.items():
            value = values.get(channel)
            if channel in values and _inline(value):
                continue
            kind, blob = self.serde.dumps_typed(value) if channel in values else (_EMPTY, None)
            rows.append((thread_id, namespace, channel, version, kind, blob))
        if rows:
            with self.cursor() as cur:
                cur.executemany(
                    "insert or replace into checkpoint_blobs values (?, ?, ?, ?, ?, ?)", rows
                )
        row: Checkpoint = {
            **checkpoint,
            "channel_values": {k: v for k, v in values.items() if _inline(v)},
        }
        return super().put(config, row, metadata, new_versions)

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        found = super().get_tuple(config)
        return None if found is None else self._with_blobs(found)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        # read whole first: the parent holds the connection's lock while it yields
        rows = [*super().list(config, filter=filter, before=before, limit=limit)]
        for found in rows:
            yield self._with_blobs(found)

    def delete_thread(self, thread_id: str) -> None:
        super().delete_thread(thread_id)
        with self.cursor() as cur:
            cur.execute("delete from checkpoint_blobs where thread_id = ?", (str(thread_id),))

    def _with_blobs(self, found: CheckpointTuple) -> CheckpointTuple:
        """The checkpoint with every channel's value at the version it names (values a
        checkpoint written by plain `SqliteSaver` holds inline are kept as they are)."""
        checkpoint = found.checkpoint
        values = dict(checkpoint["channel_values"])
        wanted = {
            channel: str(version)
            for channel, version in checkpoint["channel_versions"].items()
            if channel not in values
        }
        values.update(self._load(found.config, wanted))
        return found._replace(checkpoint={**checkpoint, "channel_values": values})

    def _load(self, config: RunnableConfig, wanted: Mapping[str, str]) -> dict[str, Any]:
        thread_id = str(config["configurable"]["thread_id"])
        namespace = str(config["configurable"].get("checkpoint_ns", ""))
        rows = self._select("channel, type, blob", thread_id, namespace, wanted)
        return {
            channel: self.serde.loads_typed((kind, blob))
            for channel, kind, blob in rows
            if kind != _EMPTY
        }

    def _stored(self, thread_id: str, namespace: str, wanted: Mapping[str, str]) -> set[str]:
        """The channels of `wanted` whose blob at that version is already stored."""
        return {row[0] for row in self._select("channel", thread_id, namespace, wanted)}

    def _select(
        self, columns: str, thread_id: str, namespace: str, wanted: Mapping[str, str]
    ) -> Sequence[tuple[Any, ...]]:
        """`columns` of the blobs of the (channel, version) pairs in `wanted`."""
        if not wanted:
            return []
        pairs = " or ".join(["(channel = ? and version = ?)"] * len(wanted))
        params = [item for pair in wanted.items() for item in pair]
        with self.cursor(transaction=False) as cur:
            return cur.execute(
                f"select {columns} from checkpoint_blobs "
                f"where thread_id = ? and checkpoint_ns = ? and ({pairs})",
                (thread_id, namespace, *params),
            ).fetchall()
