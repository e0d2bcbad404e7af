"""The load generator: its own process (asyncio + one aiohttp session, no connection limit).

The benchmark sends it a ``Spec`` and gets a result dict back (``LoadGen.run``). The same code
reads the upstream directly (``protocol="chat"``: the physical limit) and the gateway
(``protocol="responses"``), so the two differ only by the gateway.

Modes:

* ``relay`` - ``concurrency`` workers issue requests back to back. Workers start staggered over the
  warm-up; then a measurement window opens (counters and the CPU time of the watched processes are
  read), lasts ``duration`` seconds (or until ``requests`` responses completed in it), and closes
  (read again). Events and bytes count as they arrive, so a response cut by the window's edge
  counts for the part inside it; latencies are those of requests started inside the window.
  Afterwards no new request starts and the ones in flight finish (they are not counted).
* ``hold``  - ``concurrency`` streams opened together (in batches), kept open by a trickling
  upstream, while the watched processes' resident memory is sampled: the memory test.
* ``soak``  - ``concurrency`` streams kept open for ``duration`` seconds against the fake vLLM's
  fault scenario, each one classified (``soak.run``; ``Spec.soak`` holds its parameters).

Bytes are never JSON-decoded: events are counted as ``\\n\\n`` frame ends, the first delta and the
end of a stream are found by substring search.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import random
import re
import signal
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from . import procstat, soak

# First model output in a chat chunk: non-empty content, reasoning or tool arguments.
_CHAT_DELTA = re.compile(rb'"(?:content|reasoning|reasoning_content|arguments)":"[^"]')
_CHAT_END = b"data: [DONE]"
# Responses events: any *.delta (output_text, reasoning_summary_text, function_call_arguments).
_RESP_DELTA = re.compile(rb"\.delta\n")
_RESP_END = b"event: response.completed\n"


@dataclass
class Spec:
    url: str
    body: bytes
    protocol: str  # "chat" (the upstream directly) or "responses" (the gateway)
    concurrency: int
    mode: str = "relay"  # "relay" or "hold"
    duration: float = 3.0  # window length (relay), unless ``requests`` is set
    requests: Optional[int] = None  # window ends after this many completions (relay)
    warmup: float = 1.0
    max_window: float = 120.0  # bound on a window ended by ``requests``
    drain_timeout: float = 30.0
    request_timeout: float = 120.0
    watch: dict[str, int] = field(default_factory=dict)  # name -> pid of a process tree to measure
    sample_interval: float = 0.05  # hold: RSS sampling period
    batch: int = 100  # hold: streams opened per batch
    batch_interval: float = 0.02
    upstream_stats: Optional[str] = None  # URL of the fake upstream's counters (connections, requests)
    # Abort this fraction of streams: relay mode after a random number of reads; soak mode at a
    # random time (``soak["disconnect_window_s"]``).
    disconnect_probability: float = 0.0
    soak: Optional[dict[str, Any]] = None  # soak mode: seed, phase, ramp_s, hang_s, drain_s, disconnect_window_s


class _Counters:
    __slots__ = ("events", "bytes", "completed", "errors", "aborted", "open", "first_bytes")

    def __init__(self) -> None:
        self.events = self.bytes = self.completed = self.errors = self.aborted = 0
        self.open = 0  # streams that received their first byte and have not ended
        self.first_bytes = 0


class _Run:
    def __init__(self, spec: Spec) -> None:
        self.spec = spec
        self.c = _Counters()
        self.error_samples: list[str] = []
        self.events_per_response: list[int] = []
        self.window_start = float("inf")
        self.window_end = float("inf")
        self.completed_in_window = 0
        self.ttfb: list[float] = []
        self.first_delta: list[float] = []
        self.stop = False
        self.enough = asyncio.Event()
        if spec.protocol == "chat":
            self.delta_re, self.end_marker = _CHAT_DELTA, _CHAT_END
        else:
            self.delta_re, self.end_marker = _RESP_DELTA, _RESP_END
        self.headers = {"Content-Type": "application/json", "Accept": "text/event-stream"}

    def error(self, message: str) -> None:
        self.c.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(message)

    async def request(self, session: Any) -> None:
        """One streamed request, counted as it arrives."""
        import aiohttp

        c, spec = self.c, self.spec
        started = time.perf_counter()
        first = first_delta = None
        events = 0
        done = False
        prev = b""  # the end of the previous read, for markers cut across reads
        opened = False
        abort_after = -1
        if spec.disconnect_probability and random.random() < spec.disconnect_probability:
            abort_after = random.randint(1, 20)
        try:
            async with session.post(spec.url, data=spec.body, headers=self.headers) as resp:
                if resp.status != 200:
                    self.error(f"HTTP {resp.status}: {(await resp.read())[:200]!r}")
                    return
                reads = 0
                async for data in resp.content.iter_any():
                    now = time.perf_counter()
                    if first is None:
                        first = now
                        opened = True
                        c.open += 1
                        c.first_bytes += 1
                    n = data.count(b"\n\n")
                    if prev.endswith(b"\n") and data.startswith(b"\n"):
                        n += 1
                    events += n
                    c.events += n
                    c.bytes += len(data)
                    joint = prev + data[:32]
                    if first_delta is None and (self.delta_re.search(data) or self.delta_re.search(joint)):
                        first_delta = now
                    if not done and (self.end_marker in data or self.end_marker in joint):
                        done = True
                    prev = data[-32:]
                    reads += 1
                    if reads == abort_after:
                        c.aborted += 1
                        return  # leaving the block closes the connection: a client that went away
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            self.error("timeout")
            return
        except aiohttp.ClientError as exc:
            self.error(f"{type(exc).__name__}: {exc}")
            return
        except OSError as exc:
            self.error(f"{type(exc).__name__}: {exc}")
            return
        finally:
            if opened:
                c.open -= 1
        end = time.perf_counter()
        if not done:
            self.error("the stream ended without " + self.end_marker.decode().strip())
            return
        c.completed += 1
        self.events_per_response.append(events)
        if self.window_start <= end <= self.window_end:
            self.completed_in_window += 1
            if self.spec.requests is not None and self.completed_in_window >= self.spec.requests:
                self.enough.set()
        if self.window_start <= started <= self.window_end:
            self.ttfb.append((first - started) * 1000.0)
            if first_delta is not None:
                self.first_delta.append((first_delta - started) * 1000.0)

    def snapshot(self) -> dict[str, Any]:
        cpu = {name: procstat.sample(pid).cpu_s for name, pid in self.spec.watch.items()}
        cpu["loadgen"] = procstat.cpu_seconds(os.getpid())
        cpu["machine"] = procstat.machine_busy_seconds()
        return {"t": time.perf_counter(), "events": self.c.events, "bytes": self.c.bytes, "cpu": cpu}


async def _relay(run: _Run, session: Any) -> dict[str, Any]:
    spec = run.spec

    async def worker(i: int) -> None:
        await asyncio.sleep(spec.warmup * 0.8 * i / spec.concurrency)
        while not run.stop:
            await run.request(session)

    workers = [asyncio.ensure_future(worker(i)) for i in range(spec.concurrency)]
    try:
        await asyncio.sleep(spec.warmup)
        before = run.snapshot()
        run.window_start = before["t"]
        stats_before = await _upstream_stats(session, spec.upstream_stats)
        if spec.requests is not None:
            try:
                await asyncio.wait_for(run.enough.wait(), spec.max_window)
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(spec.duration)
        after = run.snapshot()
        run.window_end = after["t"]
        stats_after = await _upstream_stats(session, spec.upstream_stats)
        run.stop = True
        _, pending = await asyncio.wait(workers, timeout=spec.drain_timeout)
    finally:
        for w in workers:
            w.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    window = after["t"] - before["t"]
    return {
        "window_s": window,
        "events": after["events"] - before["events"],
        "bytes": after["bytes"] - before["bytes"],
        "completed_in_window": run.completed_in_window,
        "cpu_s": {k: after["cpu"][k] - before["cpu"].get(k, 0.0) for k in after["cpu"]},
        "undrained": len(pending),
        "upstream": {k: stats_after[k] - stats_before.get(k, 0) for k in stats_after},
    }


async def _upstream_stats(session: Any, url: Optional[str]) -> dict[str, int]:
    if not url:
        return {}
    try:
        async with session.get(url) as resp:
            return await resp.json(content_type=None)
    except Exception:  # a diagnostic only
        return {}


async def _hold(run: _Run, session: Any) -> dict[str, Any]:
    spec = run.spec
    gateway = spec.watch.get("gateway")
    samples: list[tuple[float, int, int]] = []  # (seconds, open streams, gateway RSS KiB)
    t0 = time.perf_counter()

    async def sampler() -> None:
        while True:
            rss = procstat.sample(gateway).rss_kb if gateway else 0
            samples.append((time.perf_counter() - t0, run.c.open, rss))
            await asyncio.sleep(spec.sample_interval)

    sampling = asyncio.ensure_future(sampler())
    tasks: list[asyncio.Future] = []
    all_open_s = None
    try:
        for i in range(0, spec.concurrency, spec.batch):
            tasks += [asyncio.ensure_future(run.request(session)) for _ in range(min(spec.batch, spec.concurrency - i))]
            await asyncio.sleep(spec.batch_interval)
        while not all(t.done() for t in tasks):
            if all_open_s is None and run.c.first_bytes >= spec.concurrency:
                all_open_s = time.perf_counter() - t0
            await asyncio.sleep(0.01)
    finally:
        sampling.cancel()
        for t in tasks:
            t.cancel()
        await asyncio.gather(sampling, *tasks, return_exceptions=True)
    max_open = max((s[1] for s in samples), default=0)
    return {
        "peak_rss_kb": max((s[2] for s in samples), default=0),
        "rss_at_max_open_kb": max((s[2] for s in samples if s[1] == max_open), default=0),
        "hwm_kb": procstat.sample(gateway).hwm_kb if gateway else 0,
        "max_open": max_open,
        "all_open_s": all_open_s,
        "duration_s": time.perf_counter() - t0,
        "samples": len(samples),
    }


def _percentile(values: list[float], q: float) -> Optional[float]:
    if not values:
        return None
    ordered = sorted(values)  # nearest rank
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100.0 * len(ordered)) - 1))]


async def run_spec(spec: Spec) -> dict[str, Any]:
    import aiohttp

    run = _Run(spec)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=spec.request_timeout, sock_connect=30)
    traces = soak.trace_configs() if spec.mode == "soak" else None
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False,
                                     trace_configs=traces) as session:
        if spec.mode == "soak":
            return await soak.run(spec, session)
        body = await (_hold(run, session) if spec.mode == "hold" else _relay(run, session))
    per = run.events_per_response
    body.update({
        "completed": run.c.completed,
        "errors": run.c.errors,
        "aborted": run.c.aborted,
        "error_samples": run.error_samples,
        "events_per_response": sum(per) / len(per) if per else None,
        "ttfb_ms": {"p50": _percentile(run.ttfb, 50), "p99": _percentile(run.ttfb, 99), "n": len(run.ttfb)},
        "first_delta_ms": {"p50": _percentile(run.first_delta, 50), "p99": _percentile(run.first_delta, 99),
                           "n": len(run.first_delta)},
    })
    return body


# --- the process ----------------------------------------------------------------------------------


def _child(conn: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    procstat.raise_fd_limit()
    while True:
        try:
            spec = conn.recv()
        except EOFError:
            return
        if spec is None:
            return
        try:
            result = asyncio.run(run_spec(spec))
        except Exception as exc:  # reported to the parent, which fails the run clearly
            result = {"fatal": f"{type(exc).__name__}: {exc}"}
        conn.send(result)


class LoadGenError(RuntimeError):
    pass


class LoadGen:
    """The load generator process; ``run(spec)`` blocks until its result arrives (bounded)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_child, args=(child,), name="bench-loadgen", daemon=True)
        self.process.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.process.pid is not None
        return self.process.pid

    def run(self, spec: Spec) -> dict[str, Any]:
        if not self.process.is_alive():
            raise LoadGenError(f"the load generator is not running (exit status {self.process.exitcode})")
        self._conn.send(spec)
        limit = spec.warmup + (spec.max_window if spec.requests else spec.duration) + spec.drain_timeout
        limit += spec.request_timeout if spec.mode == "hold" else 0
        limit += 60.0
        if not self._conn.poll(limit):
            self.close()
            raise LoadGenError(f"the load generator gave no result within {limit:.0f} s")
        try:
            result = self._conn.recv()
        except (EOFError, OSError):
            self.process.join(1)
            raise LoadGenError(f"the load generator died (exit status {self.process.exitcode})") from None
        if "fatal" in result:
            raise LoadGenError(f"the load generator failed: {result['fatal']}")
        return result

    def close(self) -> None:
        try:
            self._conn.send(None)
        except (OSError, BrokenPipeError):
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
