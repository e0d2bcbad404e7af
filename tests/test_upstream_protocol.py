"""The upstream client's lean protocol (gateway/upstream/protocol.py): in use, and still pausing and
resuming when vLLM's bytes outrun the reader."""

from __future__ import annotations

import asyncio
import functools

import aiohttp
from aiohttp import web

import pytest
from aiohttp.client_proto import ResponseHandler

from gateway.upstream.protocol import LeanResponseHandler, lean_connector
from tests.conftest import GatewayFactory
from tests.fake_vllm import Generation, content

CHUNKS = 20_000  # more than aiohttp's high-water marks hold, in bytes (128 KiB) and in chunks (16,384)


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


async def test_a_paused_read_resumes_and_loses_nothing() -> None:
    """The reader starts only once aiohttp paused reading (its buffer is past the high-water mark):
    reading must resume, and every byte arrive in order."""
    paused = asyncio.Event()

    class Watched(LeanResponseHandler):
        def pause_reading(self) -> None:
            super().pause_reading()
            paused.set()

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for i in range(CHUNKS):
            await response.write(b"data: %d\n\n" % i)  # one HTTP chunk per event, as vLLM sends
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
                await asyncio.wait_for(paused.wait(), 60)
                while data := await asyncio.wait_for(response.content.readany(), 60):
                    body += data
    finally:
        await runner.cleanup()
    assert body == b"".join(b"data: %d\n\n" % i for i in range(CHUNKS))
