"""Work that grows with a request's size runs off the event loop once the body is large.

Decoding a request and converting it (and, for a stored response, giving its input items ids) is
pure Python, a few microseconds per input item: a 16 MB body of 480,000 items took 4.5 s, during
which no other client was served. So the handlers call those steps through ``run``: a body of at
most ``LARGE_BODY_BYTES`` is converted at once, on the loop (the common case costs no thread
hand-off); a larger one on the converter thread. Python switches threads at least every 5 ms
while one runs Python code, so the event loop keeps serving everyone meanwhile; only a single
C call that holds the interpreter (msgspec or orjson decoding the whole body: about 0.1 s for
16 MB) still holds it. One thread, so several large bodies are converted one after the other and
never take more than one core's share from the loop.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, TypeVar

T = TypeVar("T")

LARGE_BODY_BYTES = 64 * 1024  # about 2,000 input items: ~10 ms of converting on the loop at most

_converter = ThreadPoolExecutor(1, thread_name_prefix="convert")


def is_large(body: bytes) -> bool:
    return len(body) > LARGE_BODY_BYTES


async def run(large: bool, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)``: here for a small body, on the converter thread for a large one."""
    if not large:
        return fn(*args, **kwargs)
    return await asyncio.get_running_loop().run_in_executor(_converter, functools.partial(fn, *args, **kwargs))
