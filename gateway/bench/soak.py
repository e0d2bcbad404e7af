"""The soak run: ~1,000 streams at once through one gateway for a minute, with random client
disconnects and upstream faults, every stream classified (see gateway/bench/README.md, "SOAK").

Both ends of it live here:

* what the fake vLLM does for a request (``upstream_script``). The client chooses it and writes it in
  the request's input text, ``soak <id> <kind> <seed>``, which the gateway passes on as the user
  message. So the client knows what to expect of every stream, the fake vLLM can tell which request
  was abandoned (per id), and a run is reproducible: stream number n of a phase gets the same kind,
  the same upstream timing and the same disconnect time for the same ``--seed``, whatever the order
  in which streams happen to start;
* the client: the load generator's ``soak`` mode (``run``). It keeps ``concurrency`` streams open
  until the time is up (one ends, the next starts), then stops starting new ones and waits, bounded,
  for the rest. Each stream ends in exactly one outcome (``OUTCOMES``).

Nothing here decodes more than it must: events are split on ``\\n\\n`` and named from their
``event:`` line; only the ``error`` and terminal events are JSON-decoded (to check them).
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Optional

import orjson

from . import procstat
from .workload import TOOLS, Workload

# --- what the fake vLLM does -----------------------------------------------------------------------


@dataclass(frozen=True)
class Kind:
    name: str
    weight: int  # out of 100
    expected: str  # "completed", "incomplete", "failed:<error code>" or "http:<status>"
    what: str


KINDS = [
    Kind("text", 30, "completed", "text, 24-40 tokens, a chunk every 50-200 ms"),
    Kind("reasoning", 10, "completed", "<think> reasoning, then text, 24-40 tokens, trickled"),
    Kind("tools", 10, "completed", "two tool calls (hermes style), 24-40 tokens, trickled"),
    Kind("length", 3, "incomplete", "text ending with finish_reason \"length\""),
    Kind("slow", 5, "completed", "3-4 tokens, one every 1.5-3 s (under the idle timeout: keepalives meanwhile)"),
    Kind("retry_ok", 3, "completed", "HTTP 503 on the first try, then a text stream (the gateway retries)"),
    Kind("error_line", 5, "failed:upstream_error", "vLLM's {\"error\": ...} line mid-stream, then [DONE]"),
    Kind("reset", 5, "failed:upstream_disconnected", "the connection reset (RST) mid-stream"),
    Kind("truncated", 3, "failed:upstream_incomplete", "the body ends cleanly mid-stream, no finish chunk, no [DONE]"),
    Kind("bad_json", 4, "failed:upstream_protocol_error", "a line of invalid JSON mid-stream, then the rest"),
    Kind("stall_mid", 4, "failed:upstream_stalled", "silence mid-stream, longer than the idle timeout"),
    Kind("stall_first", 3, "failed:upstream_stalled", "headers, then silence before the first chunk"),
    Kind("stall_headers", 3, "http:504", "no answer at all, not even headers"),
    Kind("http500", 4, "http:502", "HTTP 500 before the stream"),
    Kind("http503", 4, "http:502", "HTTP 503 on every try (the gateway retries twice)"),
    Kind("http429", 4, "http:429", "HTTP 429 on every try (the gateway retries twice)"),
]
KIND = {k.name: k for k in KINDS}
_NAMES = [k.name for k in KINDS]
_WEIGHTS = [k.weight for k in KINDS]

STALL_MAX_S = 60.0  # a stalled upstream request ends by itself after this ("expired": nobody closed it)

_DIRECTIVE = re.compile(r"^soak (\S+) (\w+) (\d+)$")


def directive(stream_id: str, kind: str, seed: int) -> str:
    return f"soak {stream_id} {kind} {seed}"


def parse_directive(request: dict[str, Any]) -> Optional[tuple[str, str, int]]:
    """``(id, kind, seed)`` from the last message of a chat request, or None."""
    messages = request.get("messages") or []
    content = messages[-1].get("content") if messages and isinstance(messages[-1], dict) else None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    match = _DIRECTIVE.match(content.strip()) if isinstance(content, str) else None
    if match is None or match.group(2) not in KIND:
        return None
    return match.group(1), match.group(2), int(match.group(3))


def _chunked(frame: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(frame), frame)


SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
LAST_CHUNK = b"0\r\n\r\n"
_ERROR_LINE = _chunked(b'data: {"error": {"object": "error", "message": "soak: an error injected mid-stream", '
                       b'"type": "InternalServerError", "param": null, "code": 500}}\n\n')
_DONE = _chunked(b"data: [DONE]\n\n")
_BAD_JSON = _chunked(b'data: {"id": "chatcmpl-soak", "object": "chat.completion.chunk", '
                     b'"choices": [{"delta": {"con\n\n')


def _http(status: str, message: str) -> bytes:
    body = orjson.dumps({"object": "error", "message": message, "type": status.split(" ", 1)[1], "param": None,
                         "code": int(status.split(" ", 1)[0])})
    return (b"HTTP/1.1 %b\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%b"
            % (status.encode(), len(body), body))


_frames_cache: dict[tuple[str, int, bool], list[bytes]] = {}


def _frames(mix: str, tokens: int, include_usage: bool) -> list[bytes]:
    """The SSE frames of a workload (not yet chunk-encoded): role, deltas..., finish, [usage], [DONE]."""
    key = (mix, tokens, include_usage)
    frames = _frames_cache.get(key)
    if frames is None:
        frames = _frames_cache[key] = Workload(mix, tokens, 1).sse_frames(include_usage)
    return frames


# A script is a list of steps (delay_s, op, data), run in order, each ``delay_s`` after the previous:
# "write" bytes; "end": write the response's last bytes (then the next request on the connection is
# read); "reset": abort the connection with a TCP RST; "stall": write nothing more (the request ends
# after STALL_MAX_S if nobody closes it).
Step = tuple[float, str, bytes]


def upstream_script(kind: str, seed: int, include_usage: bool, attempt: int) -> list[Step]:
    rng = random.Random(seed)
    if kind in ("http500", "http503", "http429") or (kind == "retry_ok" and attempt == 1):
        status = {"http500": "500 Internal Server Error", "http429": "429 Too Many Requests"}.get(
            kind, "503 Service Unavailable")
        return [(0.0, "end", _http(status, f"soak: {status.split(' ', 1)[1]} injected"))]
    if kind == "stall_headers":
        return [(0.0, "stall", b"")]
    if kind == "stall_first":
        return [(0.0, "write", SSE_HEAD), (0.0, "stall", b"")]
    mix = {"reasoning": "reasoning", "tools": "tools"}.get(kind, "text")
    tokens = rng.randint(3, 4) if kind == "slow" else rng.randint(24, 40)
    frames = _frames(mix, tokens, include_usage)
    tail = 3 if include_usage else 2  # finish, [usage], [DONE]
    role, deltas, ending = frames[0], frames[1:-tail], frames[-tail:]
    if kind == "length":
        ending = [ending[0].replace(b'"finish_reason":"stop"', b'"finish_reason":"length"')] + ending[1:]
    role, deltas = _chunked(role), [_chunked(d) for d in deltas]
    ending = [_chunked(e) for e in ending]
    steps: list[Step] = [(0.0, "write", SSE_HEAD + role)]

    def gap() -> float:
        return rng.uniform(1.5, 3.0) if kind == "slow" else rng.uniform(0.05, 0.2)

    fault_at = rng.randint(1, max(1, len(deltas) - 1))  # deltas written before the fault
    for i, delta in enumerate(deltas):
        if i == fault_at:
            if kind == "error_line":
                return steps + [(0.0, "write", _ERROR_LINE + _DONE), (0.0, "end", LAST_CHUNK)]
            if kind == "reset":
                return steps + [(0.0, "reset", b"")]
            if kind == "truncated":
                return steps + [(0.0, "end", LAST_CHUNK)]
            if kind == "stall_mid":
                return steps + [(0.0, "stall", b"")]
            if kind == "bad_json":
                steps.append((0.0, "write", _BAD_JSON))
        steps.append((gap(), "write", delta))
    steps.append((0.0, "write", b"".join(ending)))  # finish, usage and [DONE] follow the last token at once
    steps.append((0.0, "end", LAST_CHUNK))  # the end of the chunked body on its own, as uvicorn writes it
    return steps


# --- the client -------------------------------------------------------------------------------------

# Outcomes of one stream. "completed", "incomplete": a 200 stream ending with response.completed /
# response.incomplete. "failed_stream": error then response.failed as the last events.
# "failed_http": a 4xx/5xx answer with an OpenAI-style error object. "disconnected": we left on
# purpose. "hung": no event (keepalives do not count) nor HTTP answer for hang_s, or still open when
# the drain's bound ran out. "broken": anything else (a stream cut without a terminal event, events
# after the terminal one, a failure without its error event, an error answer that is not an
# OpenAI-style JSON error, a connection dropped without an answer, malformed SSE).
OUTCOMES = ("completed", "incomplete", "failed_stream", "failed_http", "disconnected", "hung", "broken")
_TERMINAL = {b"response.completed": "completed", b"response.incomplete": "incomplete",
             b"response.failed": "failed_stream"}
_SEQ = re.compile(rb'"sequence_number":(\d+)')


class _Stream:
    __slots__ = ("n", "id", "kind", "seed", "body", "abort_at", "task", "started", "last_progress", "hung",
                 "aborting", "aborted_at", "outcome", "detail", "status", "events", "keepalives", "resp",
                 "last_events", "t_first", "ended", "connected_at", "sent_at", "reused", "hung_reason")

    def __init__(self, n: int, stream_id: str, kind: str, seed: int, abort_at: Optional[float]) -> None:
        self.n, self.id, self.kind, self.seed, self.abort_at = n, stream_id, kind, seed, abort_at
        body: dict[str, Any] = {"model": "bench", "input": directive(stream_id, kind, seed), "stream": True}
        if kind == "tools":
            body["tools"] = TOOLS
        self.body = orjson.dumps(body)
        self.task: Optional[asyncio.Future] = None
        self.started = self.last_progress = 0.0
        self.hung = self.aborting = False
        self.aborted_at: Optional[float] = None
        self.outcome: Optional[str] = None
        self.detail = ""
        self.status = 0
        self.events = self.keepalives = 0
        self.resp: Any = None
        self.last_events: list[bytes] = []
        self.t_first: Optional[float] = None  # response headers (200) or the error answer
        self.ended = 0.0
        self.connected_at: Optional[float] = None  # a connection to the gateway was made or reused
        self.sent_at: Optional[float] = None  # the request's body was written
        self.reused = False
        self.hung_reason = "torn down"


def trace_configs() -> list[Any]:
    """When each request got its connection and was sent: what a hung request was waiting for."""
    import aiohttp

    def stream_of(ctx: Any) -> Optional[_Stream]:
        st = ctx.trace_request_ctx
        return st if isinstance(st, _Stream) else None

    async def created(session: Any, ctx: Any, params: Any) -> None:
        st = stream_of(ctx)
        if st is not None:
            st.connected_at = time.monotonic()

    async def reused(session: Any, ctx: Any, params: Any) -> None:
        st = stream_of(ctx)
        if st is not None:
            st.connected_at, st.reused = time.monotonic(), True

    async def sent(session: Any, ctx: Any, params: Any) -> None:
        st = stream_of(ctx)
        if st is not None:
            st.sent_at = time.monotonic()

    config = aiohttp.TraceConfig()
    config.on_connection_create_end.append(created)
    config.on_connection_reuseconn.append(reused)
    config.on_request_chunk_sent.append(sent)
    return [config]


def _waiting_for(st: _Stream) -> str:
    """What a request without an HTTP answer was waiting for."""
    if st.connected_at is None:
        return "no HTTP answer: no connection to the gateway (not accepted)"
    how = "a reused" if st.reused else "a new"
    if st.sent_at is None:
        return f"no HTTP answer: the request was not sent ({how} connection after {st.connected_at - st.started:.2f} s)"
    return f"no HTTP answer to a request sent after {st.sent_at - st.started:.2f} s on {how} connection"


def plan_stream(seed: int, phase: str, n: int, disconnect_p: float, disconnect_window: float) -> _Stream:
    rng = random.Random(f"{seed}/{phase}/{n}")
    kind = rng.choices(_NAMES, _WEIGHTS)[0]
    up_seed = rng.getrandbits(31)
    abort_at = rng.uniform(0.0, disconnect_window) if rng.random() < disconnect_p else None
    return _Stream(n, f"{phase}-{n:06d}", kind, up_seed, abort_at)


def _http_outcome(st: _Stream, status: int, raw: bytes) -> None:
    try:
        doc = orjson.loads(raw)
        error = doc.get("error") if isinstance(doc, dict) else None
        ok = isinstance(error, dict) and isinstance(error.get("message"), str) and bool(error["message"]) \
            and isinstance(error.get("type"), str)
    except orjson.JSONDecodeError:
        ok, error = False, None
    if ok:
        assert isinstance(error, dict)
        st.outcome, st.detail = "failed_http", f"{status} {error.get('code') or error.get('type')}"
    else:
        st.outcome, st.detail = "broken", f"HTTP {status} without an OpenAI-style error object: {raw[:120]!r}"


async def _read_stream(st: _Stream, resp: Any) -> None:
    buf = b""
    terminal: Optional[str] = None
    previous: Optional[bytes] = None
    seq: Optional[int] = None
    async for data in resp.content.iter_any():
        buf = buf + data if buf else data
        if b"\n\n" not in buf:
            continue
        frames = buf.split(b"\n\n")
        buf = frames.pop()
        for frame in frames:
            if frame.startswith(b":") and b"\n" not in frame:
                st.keepalives += 1
                continue
            name = payload = None
            for line in frame.split(b"\n"):
                if line.startswith(b"event: "):
                    name = line[7:]
                elif line.startswith(b"data: "):
                    payload = line[6:]
                elif not line.startswith(b":"):
                    st.outcome, st.detail = "broken", f"malformed SSE line {line[:80]!r}"
                    return
            if name is None or payload is None:
                st.outcome, st.detail = "broken", f"an SSE frame without event or data: {frame[:80]!r}"
                return
            st.events += 1
            st.last_progress = time.monotonic()
            st.last_events = (st.last_events + [name])[-3:]
            if terminal is not None:
                st.outcome, st.detail = "broken", f"event {name.decode()} after the terminal event"
                return
            m = _SEQ.search(payload)
            if m is not None:
                number = int(m.group(1))
                if seq is not None and number != seq + 1:
                    st.outcome, st.detail = "broken", f"sequence_number {number} after {seq}"
                    return
                seq = number
            outcome = _TERMINAL.get(name)
            if outcome is not None:
                try:
                    doc = orjson.loads(payload)
                    status = doc["response"]["status"]
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    st.outcome, st.detail = "broken", f"{name.decode()} with an undecodable payload"
                    return
                expected = {"completed": "completed", "incomplete": "incomplete", "failed_stream": "failed"}[outcome]
                if status != expected:
                    st.outcome, st.detail = "broken", f"{name.decode()} with response.status {status!r}"
                    return
                if outcome == "failed_stream":
                    if previous != b"error":
                        st.outcome, st.detail = "broken", f"response.failed after {previous!r}, not after error"
                        return
                    code = ((doc["response"].get("error") or {}).get("code")) or "?"
                    st.detail = str(code)
                terminal = outcome
            previous = name
    if buf.strip():
        st.outcome, st.detail = "broken", f"the stream ended inside an event: {buf[:80]!r}"
    elif terminal is None:
        last = b", ".join(st.last_events).decode() or "none"
        st.outcome, st.detail = "broken", f"the stream ended without a terminal event (last events: {last})"
    else:
        st.outcome = terminal


async def _one(st: _Stream, session: Any, url: str) -> None:
    import aiohttp

    headers = {"Content-Type": "application/json", "Accept": "text/event-stream", "X-Request-Id": f"soak-{st.id}"}
    try:
        async with session.post(url, data=st.body, headers=headers, trace_request_ctx=st) as resp:
            st.resp = resp
            st.status = resp.status
            st.t_first = st.last_progress = time.monotonic()
            if resp.status != 200:
                _http_outcome(st, resp.status, await resp.read())
                return
            if not resp.headers.get("Content-Type", "").startswith("text/event-stream"):
                st.outcome, st.detail = "broken", f"200 with Content-Type {resp.headers.get('Content-Type')!r}"
                return
            await _read_stream(st, resp)
    except asyncio.CancelledError:
        if st.resp is not None:
            st.resp.close()  # drop the connection: the gateway sees the client leave
        if st.hung:
            last = b", ".join(st.last_events).decode() or "none"
            st.outcome = "hung"
            if st.status:
                st.hung_reason = "silent after its HTTP answer"
            elif st.connected_at is None:
                st.hung_reason = "not accepted (no connection)"
            else:
                st.hung_reason = "sent, no HTTP answer" if st.sent_at is not None else "connected, not sent"
            st.detail += f"; HTTP {st.status}, last events: {last}" if st.status else f"; {_waiting_for(st)}"
        elif st.aborting:
            st.outcome = "disconnected"
        else:
            raise
    except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
        where = "mid-stream" if st.status else f"({_waiting_for(st)})"
        st.outcome, st.detail = "broken", f"connection lost {where}: {type(exc).__name__}: {exc}"[:240]


def percentiles(values: list[float]) -> dict[str, Optional[float]]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    ordered = sorted(values)

    def q(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100.0 * len(ordered)) - 1))]

    return {"p50": q(50), "p99": q(99), "max": ordered[-1], "n": len(ordered)}


async def run(spec: Any, session: Any) -> dict[str, Any]:
    """One phase of the soak (the load generator's ``soak`` mode). ``spec.soak`` holds: seed, phase,
    ramp_s, hang_s, drain_s, disconnect_window_s; ``spec.concurrency``, ``spec.duration``,
    ``spec.disconnect_probability``, ``spec.watch`` (gateway, upstream pids) as usual."""
    p = spec.soak
    loop = asyncio.get_running_loop()
    gateway = spec.watch.get("gateway")
    t0 = time.monotonic()
    stop_at = t0 + spec.duration  # the ramp (the first streams' staggered starts) is part of it
    counter = 0
    active: set[_Stream] = set()
    finished: list[_Stream] = []
    # (seconds since start, open streams, gateway RSS KiB, listen queue overflows so far)
    samples: list[tuple[float, int, int, int]] = []
    draining = False
    port = int(spec.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    accept = {"max_queued": 0}  # the gateway's listening socket, as sampled

    def cpu() -> dict[str, float]:
        out = {name: procstat.sample(pid).cpu_s for name, pid in spec.watch.items()}
        out["loadgen"] = procstat.cpu_seconds(os.getpid())
        out["machine"] = procstat.machine_busy_seconds()
        return out

    def abort(st: _Stream) -> None:
        if st.task is not None and not st.task.done() and st.outcome is None:
            st.aborting = True
            st.aborted_at = time.monotonic()
            st.task.cancel()

    async def slot(i: int) -> None:
        nonlocal counter
        await asyncio.sleep(p["ramp_s"] * i / spec.concurrency)
        while time.monotonic() < stop_at:
            counter += 1
            st = plan_stream(p["seed"], p["phase"], counter, spec.disconnect_probability, p["disconnect_window_s"])
            st.started = st.last_progress = time.monotonic()
            st.task = asyncio.ensure_future(_one(st, session, spec.url))
            handle = loop.call_later(st.abort_at, abort, st) if st.abort_at is not None else None
            active.add(st)
            await asyncio.wait([st.task])  # never raises, whatever happened to the stream's task
            if handle is not None:
                handle.cancel()
            active.discard(st)
            st.ended = time.monotonic()
            if st.outcome is None:  # cancelled from outside (the run is being torn down)
                st.outcome, st.detail = "hung", "still open when the run was torn down"
            finished.append(st)

    async def watchdog() -> None:
        while True:
            now = time.monotonic()
            samples.append((now - t0, len(active), procstat.sample(gateway).rss_kb if gateway else 0,
                            procstat.listen_overflows() - overflows_before))
            accept["max_queued"] = max(accept["max_queued"], procstat.accept_queue(port))
            for st in list(active):
                if now - st.last_progress > p["hang_s"] and st.outcome is None and not st.aborting:
                    st.hung = True
                    st.detail = f"nothing for {p['hang_s']:g} s" + (" (during the drain)" if draining else "")
                    if st.task is not None:
                        st.task.cancel()
            await asyncio.sleep(0.25)

    probes: list[float] = []  # ms for the gateway to answer a request that involves no upstream

    async def probe() -> None:
        url = spec.url.rsplit("/v1/", 1)[0] + "/v1/soak-probe"  # unknown route: a 404 from the gateway alone
        while True:
            started = time.monotonic()
            try:
                async with session.get(url) as resp:
                    await resp.read()
                probes.append((time.monotonic() - started) * 1000.0)
            except Exception:  # noqa: BLE001 - a probe; the streams say what went wrong
                pass
            await asyncio.sleep(max(0.0, 0.25 - (time.monotonic() - started)))

    cpu_before = cpu()
    overflows_before = procstat.listen_overflows()
    watching = asyncio.ensure_future(watchdog())
    probing = asyncio.ensure_future(probe())
    slots = [asyncio.ensure_future(slot(i)) for i in range(spec.concurrency)]
    try:
        await asyncio.sleep(max(0.0, stop_at - time.monotonic()))
        cpu_after = cpu()
        window = time.monotonic() - t0
        draining = True
        drain_started = time.monotonic()
        _, pending = await asyncio.wait(slots, timeout=p["drain_s"])
        drain_s = time.monotonic() - drain_started
        for st in list(active):  # the drain's bound ran out: whatever is still open hangs
            if st.outcome is None and st.task is not None and not st.task.done():
                st.hung = True
                st.detail = f"still open {p['drain_s']:g} s after the end"
                st.task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10.0)
    finally:
        watching.cancel()
        probing.cancel()
        for s in slots:
            s.cancel()
        streams = [st.task for st in active if st.task is not None]
        for task in streams:
            task.cancel()
        await asyncio.gather(watching, probing, *slots, *streams, return_exceptions=True)
    summary = _summary(spec, finished, samples, window, drain_s, cpu_before, cpu_after, gateway)
    summary["probe_ms"] = percentiles(probes)
    summary["listen_overflows"] = procstat.listen_overflows() - overflows_before
    summary["accept_queue"] = accept
    return summary


def _summary(spec: Any, finished: list[_Stream], samples: list[tuple[float, int, int, int]], window: float,
             drain_s: float, cpu_before: dict[str, float], cpu_after: dict[str, float],
             gateway: Optional[int]) -> dict[str, Any]:
    p = spec.soak
    outcomes = {o: 0 for o in OUTCOMES}
    by_kind: dict[str, dict[str, int]] = {k.name: {o: 0 for o in OUTCOMES + ("unexpected",)} for k in KINDS}
    stream_errors: dict[str, int] = {}
    http_errors: dict[str, int] = {}
    samples_of: dict[str, list[str]] = {"hung": [], "broken": [], "unexpected": []}
    disconnects: list[tuple[str, float]] = []
    hung_reasons: dict[str, int] = {}
    ttfb: list[float] = []
    keepalives = 0
    for st in finished:
        outcome = st.outcome or "hung"
        outcomes[outcome] += 1
        row = by_kind[st.kind]
        row[outcome] += 1
        keepalives += st.keepalives
        if st.t_first is not None:
            ttfb.append((st.t_first - st.started) * 1000.0)
        if outcome == "failed_stream":
            stream_errors[st.detail] = stream_errors.get(st.detail, 0) + 1
        elif outcome == "failed_http":
            http_errors[st.detail] = http_errors.get(st.detail, 0) + 1
        elif outcome == "disconnected":
            assert st.aborted_at is not None
            disconnects.append((st.id, st.aborted_at))
        if outcome == "hung":
            hung_reasons[st.hung_reason] = hung_reasons.get(st.hung_reason, 0) + 1
        if outcome in ("hung", "broken") and len(samples_of[outcome]) < 10:
            samples_of[outcome].append(f"{st.id} ({st.kind}, X-Request-Id soak-{st.id}): {st.detail}")
        if outcome in ("completed", "incomplete", "failed_stream", "failed_http"):
            got = {"failed_stream": f"failed:{st.detail}", "failed_http": f"http:{st.detail.split(' ')[0]}"}.get(
                outcome, outcome)
            if got != KIND[st.kind].expected:
                row["unexpected"] += 1
                if len(samples_of["unexpected"]) < 10:
                    samples_of["unexpected"].append(f"{st.id} ({st.kind}): expected {KIND[st.kind].expected}, "
                                                    f"got {got}")
    ramped = [s for s in samples if p["ramp_s"] + 1.0 <= s[0] <= spec.duration]
    cpu_s = {k: cpu_after[k] - cpu_before.get(k, 0.0) for k in cpu_after}
    ours = sum(v for k, v in cpu_s.items() if k != "machine")
    cores = {f"core_pct_{k}": v / window * 100.0 for k, v in cpu_s.items() if k != "machine"}
    cores["core_pct_others"] = max(0.0, cpu_s.get("machine", 0.0) - ours) / window * 100.0
    return {
        "phase": p["phase"], "seconds": spec.duration, "window_s": window, "drain_s": drain_s,
        "streams": len(finished),
        "req_s": len(finished) / window if window else None,
        "outcomes": outcomes, "by_kind": by_kind,
        "stream_errors": stream_errors, "http_errors": http_errors, "hung_reasons": hung_reasons,
        "samples": samples_of, "disconnects": disconnects,
        "hung_ids": [st.id for st in finished if st.outcome == "hung"],
        "max_open": max((s[1] for s in samples), default=0),
        "min_open_steady": min((s[1] for s in ramped), default=None),
        "peak_rss_kb": max((s[2] for s in samples), default=0),
        "hwm_kb": procstat.sample(gateway).hwm_kb if gateway else 0,
        # one a second: (seconds, open streams, gateway RSS KiB, listen queue overflows so far)
        "timeline": [(round(s[0], 2), s[1], s[2], s[3]) for s in samples[::4]],
        "ttfb_ms": percentiles(ttfb), "keepalives": keepalives,
        "cpu_s": cpu_s, **cores,
    }
