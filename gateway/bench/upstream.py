"""A fake vLLM for the benchmark: answers ``POST .../v1/chat/completions`` with pre-encoded,
vLLM-shaped SSE streams, as fast as it can write them. Its own process:

    python -m gateway.bench.upstream [--port 0] [--max-seconds 3600]

prints ``READY <port>`` when it listens, and exits when its stdin closes (the benchmark holds the
other end), on SIGTERM, or after ``--max-seconds``. Loopback only.

It is a raw asyncio protocol (not aiohttp) so that it costs as little CPU as possible: the body of
every workload is encoded once (HTTP chunked encoding, one HTTP chunk per SSE frame, as uvicorn
sends vLLM's) and then written straight to the socket, honouring the transport's flow control.

The path prefix before ``/v1`` selects the scenario and the workload (see ``workload.parse_path``):

* ``/w/<mix>/<tokens>/<tokens_per_chunk>/v1/...``  - the whole stream at once ("burst");
* ``/step/<mix>/<tokens>/<tokens_per_chunk>/v1/...`` - one write per chunk, one chunk per turn of
  the event loop (as uvicorn writes vLLM's stream: the last chunk of the HTTP body on its own);
* ``/trickle/<mix>/<tokens>/<tokens_per_chunk>/<interval_ms>/v1/...`` - like ``step``, with a pause
  of ``interval_ms`` before each delta: streams stay open for the memory test.
* ``/soak/<mix>/<tokens>/<tokens_per_chunk>/v1/...`` - the soak run: each request says in its last
  message (``soak <id> <kind> <seed>``) what to do: a trickled stream or a fault (see ``soak.py``).
  Every such request is recorded by id (``GET /bench/soak``, ``GET /bench/soak/clear`` to read and
  forget): how it ended upstream ("done", "http", "cut" by a reset, "early" when the client closed
  the connection first, "expired" when a stall ran out with nobody closing it, or still "open"),
  how many tries, and when (``time.monotonic()``, the same clock in every process of the machine).

A new scenario (e.g. upstream faults for a soak run) is one more entry in ``SCENARIOS``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import signal
import socket
import stat
import struct
import time
from typing import Any, Callable, Optional

import orjson

from . import soak as soak_plan
from .workload import MODEL, Workload, parse_path

_SLICE = 256 * 1024  # bytes handed to the transport at a time (flow control in between)
_MAX_HEAD = 64 * 1024

_SSE_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
             b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
_LAST_CHUNK = b"0\r\n\r\n"


def _chunked(frame: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(frame), frame)


def _response(status: str, body: bytes, content_type: bytes = b"application/json", close: bool = False) -> bytes:
    head = b"HTTP/1.1 %b\r\ncontent-type: %b\r\ncontent-length: %d\r\n" % (status.encode(), content_type, len(body))
    return head + (b"connection: close\r\n" if close else b"") + b"\r\n" + body


class _Bodies:
    """Encoded answers per (path prefix, include_usage), built on first use."""

    def __init__(self) -> None:
        self._frames: dict[tuple[str, bool], list[bytes]] = {}
        self._whole: dict[tuple[str, bool], bytes] = {}
        self._completion: dict[str, bytes] = {}

    def frames(self, prefix: str, workload: Workload, include_usage: bool) -> list[bytes]:
        key = (prefix, include_usage)
        frames = self._frames.get(key)
        if frames is None:
            frames = self._frames[key] = [_chunked(f) for f in workload.sse_frames(include_usage)] + [_LAST_CHUNK]
        return frames

    def whole(self, prefix: str, workload: Workload, include_usage: bool) -> bytes:
        key = (prefix, include_usage)
        body = self._whole.get(key)
        if body is None:
            body = self._whole[key] = _SSE_HEAD + b"".join(self.frames(prefix, workload, include_usage))
        return body

    def completion(self, prefix: str, workload: Workload) -> bytes:
        body = self._completion.get(prefix)
        if body is None:
            body = self._completion[prefix] = _response("200 OK", workload.completion())
        return body


BODIES = _Bodies()
STATS = {"connections": 0, "requests": 0, "unused_connections": 0, "cut_streams": 0}  # GET /bench/stats
# The soak scenario's requests by id: [kind, tries, state, started, ended] (GET /bench/soak)
SOAK: dict[str, list[Any]] = {}


class UpstreamProtocol(asyncio.Protocol):
    """One HTTP/1.1 keep-alive connection; requests are answered one at a time, in order."""

    def __init__(self) -> None:
        self.transport: Optional[asyncio.Transport] = None
        self._in = bytearray()
        self._out: collections.deque[memoryview] = collections.deque()
        self._paused = False
        self._busy = False  # a response is being written (or trickled)
        self._ending = False  # the response's last bytes are queued
        self._close_after = False
        self._timer: Optional[asyncio.Handle] = None
        self._served = 0
        self.request: dict[str, Any] = {}  # the request being answered (JSON body)
        self._soak: Optional[list[Any]] = None  # its SOAK record, while it is open
        self._soak_end = "done"  # what the record says once the response's last bytes are written

    # --- asyncio.Protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        STATS["connections"] += 1

    def data_received(self, data: bytes) -> None:
        self._in += data
        if not self._busy:
            self._next_request()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._pump()

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if not self._served:
            STATS["unused_connections"] += 1
        elif self._busy:
            STATS["cut_streams"] += 1  # the client left before the end of a response
        self._soak_ended("early")  # (unless the response had ended already)
        if self._timer is not None:
            self._timer.cancel()
        self._out.clear()
        self.transport = None

    # --- requests -------------------------------------------------------------------------------

    def _next_request(self) -> None:
        while not self._busy and self.transport is not None:
            end = self._in.find(b"\r\n\r\n")
            if end < 0:
                if len(self._in) > _MAX_HEAD:
                    self._finish(_response("431 Request Header Fields Too Large", b"{}", close=True), close=True)
                return
            head = bytes(self._in[:end]).decode("latin-1").split("\r\n")
            method, target, _ = (head[0].split(" ") + ["", ""])[:3]
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0") or 0)
            if len(self._in) < end + 4 + length:
                return
            body = bytes(self._in[end + 4 : end + 4 + length])
            del self._in[: end + 4 + length]
            self._close_after = headers.get("connection", "").lower() == "close"
            self._busy = True
            self._served += 1
            self._route(method, target.split("?", 1)[0], body)

    def _route(self, method: str, path: str, body: bytes) -> None:
        if path == "/bench/stats":
            self._finish(_response("200 OK", orjson.dumps(STATS)))
            return
        if path in ("/bench/soak", "/bench/soak/clear"):
            self._finish(_response("200 OK", orjson.dumps(SOAK)))
            if path.endswith("/clear"):
                SOAK.clear()
            return
        if method == "GET" and (path.endswith("/health") or path.endswith("/v1/models")):
            payload = b"{}" if path.endswith("/health") else orjson.dumps(
                {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "vllm", "max_model_len": 1 << 20}]})
            self._finish(_response("200 OK", payload))
            return
        if method != "POST" or not path.endswith("/v1/chat/completions"):
            self._finish(_response("404 Not Found", b'{"error": {"message": "not found", "code": 404}}'))
            return
        prefix = path[: -len("/v1/chat/completions")]
        try:
            scenario, workload, params = parse_path(prefix)
            handler = SCENARIOS[scenario]
            request = orjson.loads(body) if body else {}
        except (ValueError, KeyError, orjson.JSONDecodeError) as exc:
            message = orjson.dumps({"error": {"message": f"bad request: {exc}", "code": 400}})
            self._finish(_response("400 Bad Request", message))
            return
        if not request.get("stream"):
            self._finish(BODIES.completion(prefix, workload))
            return
        STATS["requests"] += 1
        self.request = request
        include_usage = bool((request.get("stream_options") or {}).get("include_usage"))
        handler(self, prefix, workload, params, include_usage)

    # --- scenarios ------------------------------------------------------------------------------

    def burst(self, prefix: str, workload: Workload, params: list[str], include_usage: bool) -> None:
        self._finish(BODIES.whole(prefix, workload, include_usage))

    def trickle(self, prefix: str, workload: Workload, params: list[str], include_usage: bool) -> None:
        interval = (float(params[0]) if params else 200.0) / 1000.0
        frames = BODIES.frames(prefix, workload, include_usage)
        n_deltas = len(frames) - (5 if include_usage else 4)  # role, [deltas], finish, [usage], DONE, last-chunk
        self._write(_SSE_HEAD + frames[0])
        loop = asyncio.get_running_loop()
        position = 1

        def tick() -> None:
            nonlocal position
            self._timer = None
            if self.transport is None:
                return
            if position < len(frames) - 1:
                self._write(frames[position])
                position += 1
                delay = interval if position <= n_deltas else 0.0  # the tail (finish, usage, DONE) follows at once
                self._timer = loop.call_later(delay, tick) if delay else loop.call_soon(tick)
            else:
                self._finish(frames[position])  # the end of the chunked body, written on its own as uvicorn does

        self._timer = loop.call_later(interval, tick)

    def soak(self, prefix: str, workload: Workload, params: list[str], include_usage: bool) -> None:
        parsed = soak_plan.parse_directive(self.request)
        if parsed is None:
            self._finish(_response("400 Bad Request", b'{"error": {"message": "no soak directive", "code": 400}}'))
            return
        stream_id, kind, seed = parsed
        previous = SOAK.get(stream_id)
        tries = previous[1] + 1 if previous else 1
        record = SOAK[stream_id] = [kind, tries, "open", time.monotonic(), None]
        self._soak = record
        steps = soak_plan.upstream_script(kind, seed, include_usage, tries)
        self._soak_end = "http" if steps[0][1] == "end" else "done"  # an HTTP error answer, or a stream
        loop = asyncio.get_running_loop()
        position = 0

        def run(due: bool) -> None:
            nonlocal position
            self._timer = None
            while self.transport is not None and position < len(steps):
                delay, op, data = steps[position]
                if delay > 0 and not due:
                    self._timer = loop.call_later(delay, run, True)
                    return
                due = False
                position += 1
                if op == "write":
                    self._write(data)
                elif op == "end":
                    self._finish(data)
                elif op == "reset":
                    self._soak_ended("cut")
                    transport = self.transport
                    sock = transport.get_extra_info("socket")
                    if sock is not None:  # SO_LINGER 0: close() sends a RST, not a FIN
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    transport.abort()
                elif op == "stall":
                    self._timer = loop.call_later(soak_plan.STALL_MAX_S, expire)

        def expire() -> None:
            self._timer = None
            self._soak_ended("expired")
            if self.transport is not None:
                self.transport.close()

        run(True)

    def _soak_ended(self, state: str) -> None:
        record = self._soak
        if record is not None:
            self._soak = None
            if record[2] == "open":
                record[2], record[4] = state, time.monotonic()

    # --- writing --------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._out.append(memoryview(data))
        self._pump()

    def _finish(self, data: bytes, close: bool = False) -> None:
        """Queue the response's last bytes; the next request is read once they are written."""
        self._ending = True
        self._close_after = self._close_after or close
        self._write(data)

    def _pump(self) -> None:
        transport = self.transport
        while self._out and not self._paused and transport is not None:
            view = self._out[0]
            if len(view) <= _SLICE:
                self._out.popleft()
                transport.write(view)
            else:
                transport.write(view[:_SLICE])
                self._out[0] = view[_SLICE:]
        if not self._out and self._ending and transport is not None:
            self._ending = False
            self._busy = False
            if self._soak is not None:
                self._soak_ended(self._soak_end)
            if self._close_after:
                transport.close()
            elif self._in:
                self._next_request()


SCENARIOS: dict[str, Callable[..., None]] = {
    "w": UpstreamProtocol.burst,
    "trickle": UpstreamProtocol.trickle,
    "step": lambda self, prefix, workload, params, include_usage: self.trickle(prefix, workload, ["0"], include_usage),
    "soak": UpstreamProtocol.soak,
}


async def serve(host: str, port: int, max_seconds: float) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=4096, reuse_address=True)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        if stat.S_ISFIFO(os.fstat(0).st_mode):
            # The benchmark holds our stdin: when it goes away (even killed), so do we.
            loop.add_reader(0, lambda: os.read(0, 4096) or stop.set())
    except (OSError, ValueError, NotImplementedError):
        pass
    try:
        await asyncio.wait_for(stop.wait(), max_seconds)
    except asyncio.TimeoutError:
        pass
    server.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="exit after this long in any case")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the benchmark's to handle
    asyncio.run(serve(args.host, args.port, args.max_seconds))


if __name__ == "__main__":
    main()
