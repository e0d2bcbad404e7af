"""The upstream client's lean protocol and body reader (gateway/upstream/protocol.py): in use, and
still pausing and resuming when vLLM's bytes outrun the reader, every byte in order."""

from __future__ import annotations

import asyncio
import functools

import aiohttp
from aiohttp import web

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from aiohttp.client_proto import ResponseHandler

from aiohttp.streams import StreamReader

from gateway.upstream.protocol import LeanResponseHandler, LeanStreamReader, lean_body, lean_connector
from tests.conftest import GatewayFactory
from tests.fake_vllm import Generation, content
from tests.contract import parse_sse

# More than aiohttp's high-water marks hold, in chunks (16,384; aiohttp's own reader pauses on it)
# and in bytes (512 KiB; 20,000 events of 40 bytes, for the lean reader, which counts no chunks).
CHUNKS = 20_000
EVENT = b"data: %d " + b"x" * 30 + b"\n\n"


async def test_the_gateway_reads_vllm_through_the_lean_protocol(make_gateway: GatewayFactory,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A guard: an aiohttp that builds its protocol otherwise loses the saving, and this says so.
    And the saving itself: the gateway's reads of a stream that is never paused never run aiohttp's
    resume (the stock protocol, the test's own client here, runs it after every HTTP chunk)."""
    gateway = await make_gateway()
    client = gateway.runner.app[__import__("gateway.server.app", fromlist=["CLIENT_KEY"]).CLIENT_KEY]
    assert isinstance(client._session.connector._factory(), LeanResponseHandler)
    resumes = []
    stock = ResponseHandler.resume_reading
    monkeypatch.setattr(ResponseHandler, "resume_reading",
                        lambda self, resume_parser=True: resumes.append(type(self)) or stock(self, resume_parser))
    gateway.upstream.queue(Generation(deltas=content("one two three four five six seven eight", size=4)))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "hi", "stream": True}) as r:
        body = await r.read()
    assert b"response.completed" in body and b"output_text.delta" in body
    assert LeanResponseHandler not in resumes  # (the test's own client, aiohttp's stock protocol, resumes)
    assert ResponseHandler in resumes  # the count works: the stock protocol resumes after every chunk


async def test_the_gateway_reads_vllm_bodies_through_the_lean_reader(make_gateway: GatewayFactory,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream's body is read by LeanStreamReader.readany (a whole read in one step), not by
    aiohttp's chunk-by-chunk reader; the answer is the same."""
    gateway = await make_gateway()
    lean_reads: list[int] = []
    lean = LeanStreamReader.readany

    async def counted(self: LeanStreamReader) -> bytes:
        data = await lean(self)
        lean_reads.append(len(data))
        return data

    monkeypatch.setattr(LeanStreamReader, "readany", counted)
    words = " ".join(f"w{i}" for i in range(200))
    gateway.upstream.queue(Generation(deltas=content(words, size=3)))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "hi", "stream": True}) as r:
        events = parse_sse(await r.read())
    assert events[-1]["response"]["output"][-1]["content"][0]["text"] == words
    assert sum(lean_reads) > 0  # the body after the first output went through the lean reader


async def test_a_head_and_body_in_one_read_reach_the_lean_reader_from_the_first_chunk() -> None:
    """A fast upstream sends a response's head and its whole chunked body in one write (the bench's
    burst, a short answer): the body is still read by LeanStreamReader from its first chunk, so
    aiohttp's per-chunk records are never kept; every byte arrives, and the connection serves the
    next response (kept alive) the same way."""
    chunks = [EVENT % i for i in range(300)]
    body = b"".join(b"%x\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + body
    received: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.readuntil(b"\r\n\r\n"):
            received.append(len(answer))
            writer.write(answer)  # the head and the body: one write, one read at the other end
            await writer.drain()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with aiohttp.ClientSession(connector=lean_connector()) as session:
            for _ in range(2):
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    assert type(response.content) is LeanStreamReader
                    assert response.content._http_chunk_splits is None  # no chunk of it went through aiohttp's
                    assert await response.read() == b"".join(chunks)
    finally:
        server.close()
    assert len(received) == 2


@pytest.mark.parametrize("reads", ["readany", "read(4096)"])
@pytest.mark.parametrize("lean", [False, True], ids=["aiohttp's reader", "the lean reader"])
async def test_a_paused_read_resumes_and_loses_nothing(lean: bool, reads: str) -> None:
    """The reader starts only once aiohttp paused reading (its buffer is past the high-water mark):
    reading must resume, and every byte arrive in order. Part of the first piece is read with
    read(n) first, as the relay does until its client has output; then the rest by readany(), or
    by read(4096) to the end (which holds back all but 4 KB of what is buffered each time)."""
    paused = asyncio.Event()

    class Watched(LeanResponseHandler):
        if not lean:  # the lean protocol with aiohttp's own reader (what another aiohttp gets)
            data_received = ResponseHandler.data_received

        def pause_reading(self) -> None:
            super().pause_reading()
            paused.set()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(CHUNKS):
            await response.write(EVENT % i)  # one HTTP chunk per event, as vLLM sends
        await response.write_eof()
        return response

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    connector = lean_connector()
    connector._factory = functools.partial(Watched, *connector._factory.args, **connector._factory.keywords)
    body = b""
    try:
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get(f"http://127.0.0.1:{port}/") as response:
                assert type(response.content) is (LeanStreamReader if lean else StreamReader)
                await asyncio.wait_for(paused.wait(), 60)
                body = await response.content.read(3)  # "dat": the head of the first piece
                content = response.content
                while data := await asyncio.wait_for(content.readany() if reads == "readany" else content.read(4096), 60):
                    assert len(data) <= 4096 or reads == "readany"
                    body += data
    finally:
        await runner.cleanup()
    assert body == b"".join(EVENT % i for i in range(CHUNKS))


def test_lean_body_leaves_a_reader_of_another_kind_alone() -> None:
    """A guard: a response whose body is not aiohttp's plain StreamReader (a subclass, another
    aiohttp) keeps its reader."""

    class Other(StreamReader):
        __slots__ = ()

    class Response:
        content = Other.__new__(Other)

    response = Response()
    lean_body(response)  # type: ignore[arg-type]
    assert type(response.content) is Other


def test_the_reader_benchmark_measures_both_readers() -> None:
    """``python -m gateway.bench.reader`` (the figures in gateway/bench/README.md) runs and prints a
    figure for each reader, read from the same bytes."""
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "gateway.bench.reader", "--responses", "32", "--tokens", "16",
                           "--repeats", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    medians = re.search(r"medians: aiohttp's StreamReader ([0-9.]+), LeanStreamReader ([0-9.]+) µs per token",
                        done.stdout)
    assert medians and float(medians[1]) > 0 and float(medians[2]) > 0, done.stdout


async def test_finished_streams_give_their_connection_back(make_gateway: GatewayFactory) -> None:
    """vLLM's answer ended with [DONE] and the body's end: the connection goes back to the pool,
    and the next responses reuse it (a new TCP connection per request costs under load)."""
    frames = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}\n\n',
              b'data: {"choices":[{"index":0,"delta":{"content":"hello"},"finish_reason":null}]}\n\n',
              b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n',
              b"data: [DONE]\n\n"]
    body = b"".join(b"%x\r\n%b\r\n" % (len(f), f) for f in frames) + b"0\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n" + body
    connections: list[int] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                writer.write(answer)  # the head, the events and the body's end: one write
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        gateway = await make_gateway(base_url=f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1")
        for _ in range(3):
            async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "hi", "stream": True}) as r:
                events = parse_sse(await r.read())
            assert events[-1]["type"] == "response.completed"
            assert events[-1]["response"]["output"][0]["content"][0]["text"] == "hello"
    finally:
        server.close()
    assert connections == [1]  # one connection for the three


@settings(max_examples=300, deadline=None)
@given(pieces=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=40),
       reads=st.lists(st.integers(min_value=0, max_value=700), min_size=1, max_size=60))
def test_the_lean_read_n_gives_what_aiohttps_gives(pieces: list[bytes], reads: list[int]) -> None:
    """Any pieces fed, any sequence of read(n) (0 = readany()): the lean reader hands out the same
    bytes as aiohttp's, read for read, and counts what it holds the same way."""

    class Protocol:
        _reading_paused = False

        def resume_reading(self, resume_parser: bool = True) -> None:
            pass

    chunk_by_chunk: list[type] = []  # aiohttp's per-chunk step, which the lean read(n) does without
    per_chunk = StreamReader._read_nowait_chunk

    def counted(self: StreamReader, n: int) -> bytes:
        chunk_by_chunk.append(type(self))
        return per_chunk(self, n)

    async def main() -> tuple[list[bytes], list[tuple[int, int]]]:
        results: list[list[bytes]] = [[], []]
        counts: list[list[tuple[int, int]]] = [[], []]
        for side, kind in enumerate((StreamReader, LeanStreamReader)):
            reader = StreamReader(Protocol(), 2**16, loop=asyncio.get_running_loop())  # type: ignore[arg-type]
            reader.__class__ = kind
            for piece in pieces:
                reader.feed_data(piece)
            reader.feed_eof()
            for n in reads:
                results[side].append(await (reader.readany() if n == 0 else reader.read(n)))
                counts[side].append((reader._size, reader._cursor))
        assert results[0] == results[1]
        assert counts[0] == counts[1]
        return results[1], counts[1]

    StreamReader._read_nowait_chunk = counted  # type: ignore[method-assign]
    try:
        got, _ = asyncio.run(main())
    finally:
        StreamReader._read_nowait_chunk = per_chunk  # type: ignore[method-assign]
    assert b"".join(got) == b"".join(pieces)[:len(b"".join(got))]
    assert LeanStreamReader not in chunk_by_chunk
