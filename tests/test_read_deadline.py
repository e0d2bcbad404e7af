"""The one timer per stream behind its read deadlines (gateway/upstream/deadline.py), on asyncio and
uvloop: a deadline that passes ends the read waiting on it, one that was moved does not, someone
else's cancellation is not taken for a deadline, and many reads set the timer once."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable, Coroutine

import pytest

from gateway.upstream.deadline import ReadDeadline
from tests.conftest import GatewayFactory
from tests.fake_vllm import Generation, content

uvloop = pytest.importorskip("uvloop")
LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def run(make_loop: Callable[[], asyncio.AbstractEventLoop], main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    loop = make_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


async def read_with(deadline: ReadDeadline, wait: float, source: "asyncio.Future[bytes]") -> object:
    """A read as ChatStream.__aiter__ makes it: its bytes, or "expired"."""
    loop = asyncio.get_running_loop()
    deadline.waiting_until(loop.time() + wait)
    try:
        return await asyncio.shield(source)
    except asyncio.CancelledError:
        if not deadline.expired():
            raise
        return "expired"
    finally:
        deadline.done_waiting()


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_read_that_waits_past_its_deadline_expires(loop_name: str) -> None:
    async def main() -> object:
        deadline = ReadDeadline()
        never: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        return await read_with(deadline, 0.05, never)

    assert run(LOOPS[loop_name], main) == "expired"


@pytest.mark.parametrize("loop_name", LOOPS)
def test_reads_that_get_their_bytes_never_expire_and_set_the_timer_once(loop_name: str) -> None:
    async def main() -> tuple[list[object], int]:
        loop = asyncio.get_running_loop()
        timers = 0
        call_at = loop.call_at

        def counting_call_at(when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
            nonlocal timers
            timers += 1
            return call_at(when, callback, *args)

        loop.call_at = counting_call_at  # type: ignore[method-assign]
        deadline = ReadDeadline()
        got = []
        for i in range(200):
            source: asyncio.Future[bytes] = loop.create_future()
            loop.call_soon(source.set_result, b"%d" % i)
            got.append(await read_with(deadline, 30.0, source))
        deadline.stop()
        return got, timers

    got, timers = run(LOOPS[loop_name], main)
    assert got == [b"%d" % i for i in range(200)]
    assert timers == 1


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_timer_set_for_an_earlier_read_does_not_end_a_later_one(loop_name: str) -> None:
    """The first read's deadline is 0.05 s away; it gets its bytes at once. The second read waits
    0.3 s with a deadline of 1 s: the timer fires at 0.05 s, finds a later deadline, and is set again."""

    async def main() -> tuple[object, object]:
        loop = asyncio.get_running_loop()
        deadline = ReadDeadline()
        first: asyncio.Future[bytes] = loop.create_future()
        first.set_result(b"first")
        a = await read_with(deadline, 0.05, first)
        second: asyncio.Future[bytes] = loop.create_future()
        loop.call_later(0.3, second.set_result, b"second")
        b = await read_with(deadline, 1.0, second)
        deadline.stop()
        return a, b

    assert run(LOOPS[loop_name], main) == (b"first", b"second")


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_deadline_does_not_fire_while_no_read_waits(loop_name: str) -> None:
    """Time spent between reads (writing to a slow client) is not a read's wait."""

    async def main() -> object:
        loop = asyncio.get_running_loop()
        deadline = ReadDeadline()
        ready: asyncio.Future[bytes] = loop.create_future()
        ready.set_result(b"x")
        await read_with(deadline, 0.05, ready)
        await asyncio.sleep(0.2)  # not reading: the timer fires, finds no read waiting
        again: asyncio.Future[bytes] = loop.create_future()
        loop.call_later(0.02, again.set_result, b"y")
        result = await read_with(deadline, 5.0, again)
        deadline.stop()
        return result

    assert run(LOOPS[loop_name], main) == b"y"


@pytest.mark.parametrize("past_deadline", [False, True], ids=["before the deadline", "in the turn it passes"])
@pytest.mark.parametrize("loop_name", LOOPS)
def test_someone_elses_cancellation_is_raised_not_taken_for_a_deadline(loop_name: str, past_deadline: bool) -> None:
    """The reader is cancelled while it waits; or, the loop held past its deadline, in the turn
    the deadline's timer also runs (before the reader or after it): whichever order, the
    cancellation is raised, not taken for the deadline."""

    async def main() -> str:
        loop = asyncio.get_running_loop()

        async def reader() -> object:
            deadline = ReadDeadline()
            never: asyncio.Future[bytes] = loop.create_future()
            return await read_with(deadline, 0.02 if past_deadline else 30.0, never)

        task = asyncio.ensure_future(reader())
        await asyncio.sleep(0)  # the reader waits
        if past_deadline:
            time.sleep(0.1)  # the loop held: the deadline passes with its timer not yet run
        task.cancel()
        try:
            result = await task
        except asyncio.CancelledError:
            return "cancelled"
        return f"returned {result!r}"

    assert run(LOOPS[loop_name], main) == "cancelled"


async def test_a_stream_of_many_reads_enters_no_asyncio_timeout_and_makes_one_deadline(
        make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """The relay's reads of vLLM's stream (here dozens, a delta each) are watched by the stream's
    one ReadDeadline, not by an asyncio.timeout each."""
    import asyncio.timeouts
    import sys

    from gateway.upstream import client

    gateway = await make_gateway("gateway.store=false")
    entered_by: list[str] = []
    enter = asyncio.timeouts.Timeout.__aenter__

    async def watched_enter(self: Any) -> Any:
        entered_by.append(sys._getframe(1).f_code.co_name)
        return await enter(self)

    monkeypatch.setattr(asyncio.timeouts.Timeout, "__aenter__", watched_enter)
    made: list[ReadDeadline] = []
    waits: list[float] = []
    make = ReadDeadline.__init__
    wait = ReadDeadline.waiting_until
    monkeypatch.setattr(client.ReadDeadline, "__init__", lambda self: made.append(self) or make(self))
    monkeypatch.setattr(client.ReadDeadline, "waiting_until", lambda self, at: waits.append(at) or wait(self, at))
    gateway.upstream.queue(Generation(deltas=content("one two three four five six seven eight " * 4, size=2),
                                      delay=0.005))  # a read per delta
    events, final = await gateway.stream({"input": "hi"})
    assert events[-1]["type"] == "response.completed" and final["status"] == "completed"
    assert "__aiter__" not in entered_by  # ChatStream.__aiter__: no timer of its own per read
    assert len(made) == 1 and len(waits) > 20
