"""Output capping: one byte budget for both streams, a visible marker, one overflow signal."""

from __future__ import annotations

import os
import threading

from torchdoctor.sandbox.capture import CappedStream, OutputBudget


def test_both_streams_share_one_budget() -> None:
    overflows: list[int] = []
    budget = OutputBudget(10, lambda: overflows.append(1))
    out, err = CappedStream(budget), CappedStream(budget)
    out.feed(b"123456")
    err.feed(b"abcdef")
    assert out.text() == "123456"
    assert err.text().startswith("abcd")
    assert "2 more bytes discarded" in err.text()
    assert err.truncated and not out.truncated
    assert overflows == [1]


def test_the_overflow_callback_fires_once() -> None:
    calls: list[int] = []
    stream = CappedStream(OutputBudget(3, lambda: calls.append(1)))
    for _ in range(5):
        stream.feed(b"xxxx")
    assert calls == [1]
    assert stream.dropped == 17


def test_output_within_the_budget_is_returned_whole() -> None:
    stream = CappedStream(OutputBudget(100, lambda: None))
    stream.feed("héllo\n".encode())
    assert stream.text() == "héllo\n"
    assert not stream.truncated


def test_invalid_utf8_is_replaced_not_raised() -> None:
    stream = CappedStream(OutputBudget(100, lambda: None))
    stream.feed(b"\xff\xfeok")
    assert stream.text().endswith("ok")


def test_draining_a_pipe_keeps_reading_past_the_cap_so_the_writer_finishes() -> None:
    read_end, write_end = os.pipe()
    stream = CappedStream(OutputBudget(1000, lambda: None))

    def write() -> None:
        with os.fdopen(write_end, "wb") as pipe:
            pipe.write(b"z" * 5_000_000)

    writer = threading.Thread(target=write)
    writer.start()
    with os.fdopen(read_end, "rb") as pipe:
        stream.drain(pipe)
    writer.join(timeout=10)
    assert not writer.is_alive()
    assert stream.dropped == 5_000_000 - 1000
