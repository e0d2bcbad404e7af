"""Micro-benchmark of the Responses state machine alone, in this process (no sockets).

Two figures per workload, both per upstream chunk (role, deltas, finish and usage chunks all count):

* ``machine``  - ``ResponseStateMachine.feed`` on chunks decoded beforehand (plus ``start`` and
  ``finish``, spread over the chunks): the pure translation;
* ``pipeline`` - ``chunk_decoder.decode`` + ``feed`` + ``encode_events``: what the gateway does per
  chunk apart from the network (SSE framing of the upstream body excluded).

Each figure is timed over whole responses for about ``seconds`` per repeat; the median and the best
of the repeats are reported (the best is the machine's capability, the median what a noisy machine
gives).
"""

from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Callable

from .workload import Workload

MIXES = ("text", "reasoning", "tools")


def _plan(workload: Workload) -> Any:
    from ..translate.request import ConversionSettings, decode_request, plan_chat_request

    return plan_chat_request(decode_request(workload.responses_request()), ConversionSettings(model="bench"),
                             response_id="resp_bench", created_at=0)


def _counter_ids() -> Callable[[str], str]:
    n = 0

    def new_id(prefix: str) -> str:  # cheaper than uuid4, and the same cost every run
        nonlocal n
        n += 1
        return f"{prefix}_{n:032x}"

    return new_id


def _time(fn: Callable[[], int], seconds: float) -> float:
    """Seconds per chunk: ``fn`` processes one response and returns its number of chunks."""
    fn()  # warm up
    chunks = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        chunks += fn()
        now = time.perf_counter()
        if now >= deadline:
            return (now - started) / chunks


def bench_workload(workload: Workload, repeats: int, seconds: float) -> dict[str, Any]:
    from ..schema.chat import chunk_decoder
    from ..server.sse import encode_events
    from ..translate.stream import ResponseStateMachine

    plan = _plan(workload)
    payloads = [p for p in workload.payloads(include_usage=True) if p != b"[DONE]"]
    chunks = [chunk_decoder.decode(p) for p in payloads]
    new_id = _counter_ids()
    decode = chunk_decoder.decode

    def machine_only() -> int:
        m = ResponseStateMachine(plan.response, plan.options, new_id)
        m.start()
        for chunk in chunks:
            m.feed(chunk)
        m.finish()
        assert m.final is not None and m.final.status == "completed", m.final
        return len(chunks)

    def pipeline() -> int:
        m = ResponseStateMachine(plan.response, plan.options, new_id)
        encode_events(m.start())
        for payload in payloads:
            events = m.feed(decode(payload))
            if events:
                encode_events(events)
        encode_events(m.finish())
        return len(payloads)

    out: dict[str, Any] = {"chunks_per_response": len(chunks)}
    for name, fn in (("machine", machine_only), ("pipeline", pipeline)):
        per_chunk = []
        for _ in range(repeats):
            gc.collect()
            per_chunk.append(_time(fn, seconds))
        median, best = statistics.median(per_chunk), min(per_chunk)
        out[name] = {
            "us_per_chunk": median * 1e6, "chunks_per_s": 1.0 / median,
            "best_us_per_chunk": best * 1e6, "best_chunks_per_s": 1.0 / best,
            "runs_us_per_chunk": [x * 1e6 for x in per_chunk],
        }
    return out


def run(tokens: int, tokens_per_chunk: int, repeats: int, seconds: float, progress: Callable[[str], None]) -> dict:
    results = {}
    for mix in MIXES:
        workload = Workload(mix, max(tokens, 16), tokens_per_chunk)
        progress(f"machine: {workload.describe()}")
        results[mix] = bench_workload(workload, repeats, seconds)
    return {"tokens": max(tokens, 16), "tokens_per_chunk": tokens_per_chunk, "repeats": repeats, "mixes": results}
