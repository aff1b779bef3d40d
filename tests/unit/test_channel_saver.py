"""The SQLite checkpointer that writes a channel only in the step that changed it: a large value
is stored once, every checkpoint in the history reads back exactly what LangGraph's own
`SqliteSaver` reads back, an interrupted run resumes to the same result, and checkpoints an
older torchdoctor wrote (values inline) still load. Real SQLite files, a small real graph."""

from __future__ import annotations

import operator
import sqlite3
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph

from torchdoctor.agent.channel_saver import ChannelBlobSaver

BIG = "x" * 200_000


class State(TypedDict, total=False):
    evidence: str
    findings: Annotated[list[str], operator.add]
    step: int


class Boom(RuntimeError):
    pass


def graph(saver: SqliteSaver, fail_at: int | None = None) -> Any:
    builder: StateGraph[State, None, State, State] = StateGraph(State)

    def gather(state: State) -> dict[str, Any]:
        return {"evidence": BIG, "step": 0}

    def work(state: State) -> dict[str, Any]:
        step = state["step"] + 1
        if step == fail_at:
            raise Boom(step)
        return {"findings": [f"finding {step}"], "step": step}

    builder.add_node("gather", gather)
    builder.add_node("work", work)
    builder.add_edge(START, "gather")
    builder.add_edge("gather", "work")
    builder.add_conditional_edges("work", lambda s: "work" if s["step"] < 6 else END)
    return builder.compile(checkpointer=saver)


def saver_at(path: Path, kind: type[SqliteSaver] = ChannelBlobSaver) -> SqliteSaver:
    return kind(sqlite3.connect(str(path), check_same_thread=False))


def config(thread: str) -> RunnableConfig:
    return {"configurable": {"thread_id": thread}}


def history(saver: SqliteSaver, thread: str) -> list[dict[str, Any]]:
    return [dict(t.checkpoint["channel_values"]) for t in saver.list(config(thread))]


def test_a_large_channel_is_stored_once_and_every_checkpoint_reads_back_whole(
    tmp_path: Path,
) -> None:
    blobs, plain = (
        saver_at(tmp_path / "blobs.sqlite"),
        saver_at(tmp_path / "plain.sqlite", SqliteSaver),
    )
    final = graph(blobs).invoke({}, config("a"), durability="sync")
    assert graph(plain).invoke({}, config("a"), durability="sync") == final
    assert final["findings"] == [f"finding {n}" for n in range(1, 7)]
    assert history(blobs, "a") == history(plain, "a")
    assert len(history(blobs, "a")) >= 8
    stored = blobs.conn.execute(
        "select count(*) from checkpoint_blobs where channel = 'evidence'"
    ).fetchone()
    assert stored == (1,), "the evidence channel is written in the one step that set it"
    rows = blobs.conn.execute("select max(length(checkpoint)) from checkpoints").fetchone()[0]
    assert rows < len(BIG) / 10, "no checkpoint row carries the large value"


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(tmp_path: Path) -> None:
    saver = saver_at(tmp_path / "c.sqlite")
    whole = graph(saver).invoke({}, config("whole"), durability="sync")
    with pytest.raises(Boom):
        graph(saver, fail_at=4).invoke({}, config("cut"), durability="sync")
    reopened = saver_at(tmp_path / "c.sqlite")
    state = graph(reopened).get_state(config("cut"))
    assert state.values["evidence"] == BIG and state.values["step"] == 3
    assert graph(reopened).invoke(None, config("cut"), durability="sync") == whole


def test_checkpoints_written_with_values_inline_still_load(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with pytest.raises(Boom):
        graph(saver_at(path, SqliteSaver), fail_at=3).invoke({}, config("old"), durability="sync")
    saver = saver_at(path)
    assert graph(saver).get_state(config("old")).values["evidence"] == BIG
    resumed = graph(saver).invoke(None, config("old"), durability="sync")
    assert resumed["findings"] == [f"finding {n}" for n in range(1, 7)]
    after = graph(saver_at(path)).get_state(config("old")).values
    assert after == resumed, "a value read inline is stored as a blob once resumed"


def test_deleting_an_audit_deletes_its_blobs(tmp_path: Path) -> None:
    saver = saver_at(tmp_path / "c.sqlite")
    graph(saver).invoke({}, config("gone"), durability="sync")
    graph(saver).invoke({}, config("kept"), durability="sync")
    saver.delete_thread("gone")
    threads = {r[0] for r in saver.conn.execute("select thread_id from checkpoint_blobs")}
    assert threads == {"kept"}
    assert graph(saver).get_state(config("kept")).values["evidence"] == BIG
