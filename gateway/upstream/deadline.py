"""One timer per stream for the deadlines of its reads, not one per read.

A stream's reads wait with a deadline (the first byte or idle timeout, the next keepalive, the
request's total time: ``ChatStream.__aiter__`` picks the nearest). ``asyncio.timeout`` around
each read schedules and cancels a timer every time: 7 µs under uvloop, 5 under asyncio, per read,
and a busy stream reads hundreds of times a second, each a few chunks. Here a read only notes its
deadline (two attribute writes); the one timer fires at the earliest moment a deadline could have
passed, and if bytes came meanwhile (the read it watched is over, the next one's deadline is
later) it is set again for the read now waiting. A stream that never waits out a deadline sets it
once, when its first read waits, and cancels it at the end.

When a deadline has passed while a read waits, the reading task is cancelled (as asyncio.timeout
does) and ``expired()`` tells the reader that the cancellation was this timer's.
"""

from __future__ import annotations

import asyncio
from typing import Optional


# uvloop's clock ticks in milliseconds and its timers may fire within one tick of their time: a
# deadline that close is taken as passed (not set again for a fraction of a millisecond, a spin).
_EARLY_S = 0.001


class ReadDeadline:
    __slots__ = ("_loop", "_task", "_deadline", "_timer", "_timer_at", "_fired", "_cancelling")

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None, "made by the task that reads"
        self._task = task
        self._deadline: Optional[float] = None  # the waiting read's, on the loop's clock; None: no read waits
        self._timer: Optional[asyncio.TimerHandle] = None
        self._timer_at = 0.0  # the timer's time as set (uvloop's TimerHandle.when() is rounded to ms)
        self._fired = False
        self._cancelling = 0

    def waiting_until(self, deadline: float) -> None:
        """A read starts waiting; it ends (``expired()`` true) if nothing came by ``deadline``."""
        self._deadline = deadline
        self._cancelling = self._task.cancelling()  # others' cancellations pending now stay theirs
        if self._timer is None or self._timer_at > deadline:
            self._set(deadline)

    def done_waiting(self) -> None:
        self._deadline = None

    def expired(self) -> bool:
        """After a CancelledError out of the read: True if this timer cancelled it, and nobody else
        did (then the cancellation is taken back); False: it is someone else's, to be raised."""
        if not self._fired:
            return False
        self._fired = False
        return self._task.uncancel() <= self._cancelling

    def stop(self) -> None:
        self._deadline = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _set(self, at: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._look)

    def _look(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self._task.done():
            return  # no read waits: the next one that does sets the timer again
        if self._loop.time() < deadline - _EARLY_S:
            self._set(deadline)  # bytes came since: the waiting read is a later one
            return
        self._deadline = None
        self._fired = True
        self._task.cancel()
