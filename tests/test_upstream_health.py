"""A vLLM whose engine died: the stream it leaves open and silent ends as soon as its /health fails
(issue 13: 2 of 5 engine deaths hang the stream, and idle_timeout_s is 300 s), and a server that is
merely slow, with a healthy /health, is left alone."""

from __future__ import annotations

import asyncio

from tests.conftest import GatewayFactory
from tests.contract import check_stream, parse_sse
from tests.fake_vllm import Generation, content

FAST_PROBE = ("gateway.dead_upstream_probe_s=0.2",)  # the idle timeout stays at its 300 s default
DEADLINE = 60  # generous: the machine is shared; a failure here means waiting the idle timeout


async def test_silent_stream_of_a_dead_server_fails_at_once(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(*FAST_PROBE)
    gateway.upstream.queue(Generation(deltas=content("Once upon a time, there was", 4), pauses={3: 3600}))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "story", "stream": True}) as response:
        assert response.status == 200
        got = b""
        async with asyncio.timeout(DEADLINE):
            while b"output_text.delta" not in got:
                got += await response.content.readany()
            gateway.upstream.healthy = False  # the engine dies; the stream stays open and silent
            got += await response.read()
    final = check_stream(parse_sse(got))
    assert final["status"] == "failed" and final["error"]["code"] == "upstream_dead"
    assert "/health answered 503" in final["error"]["message"] and gateway.upstream.url in final["error"]["message"]
    assert final["output"][0]["content"][0]["text"] == "Once upon a"
    async with asyncio.timeout(DEADLINE):
        await gateway.upstream.closed_early.wait()  # and the upstream request was closed


async def test_non_streaming_answer_of_a_dead_server_fails_at_once(make_gateway: GatewayFactory) -> None:
    """Nothing has come yet (vLLM sends a non-streaming answer whole): failed before vLLM answered,
    so retried (max_retries, 2 by default), each try ended by the probe."""
    gateway = await make_gateway(*FAST_PROBE)
    gateway.upstream.healthy = False
    gateway.upstream.queue(*[Generation(deltas=content("never sent"), stall_before=3600)] * 3)
    async with asyncio.timeout(DEADLINE):
        response = await gateway.post({"input": "hi"})
    assert response.status == 502
    error = (await response.json())["error"]
    assert error["code"] == "upstream_dead" and "/health answered 503" in error["message"]
    assert len(gateway.upstream.requests) == 3


async def test_a_slow_but_healthy_server_is_left_alone(make_gateway: GatewayFactory) -> None:
    """Silences of many probe intervals, /health fine: the answer arrives whole."""
    gateway = await make_gateway(*FAST_PROBE)
    gateway.upstream.queue(Generation(deltas=content("Slow but fine.", 4), pauses={1: 1.5, 3: 1.5}),
                           Generation(deltas=content("Also fine."), stall_before=1.5))
    _, final = await gateway.stream({"input": "hi"})
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "Slow but fine."
    whole = await gateway.create({"input": "hi"})
    assert whole["status"] == "completed" and whole["output"][0]["content"][0]["text"] == "Also fine."


async def test_off_when_zero(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.dead_upstream_probe_s=0", "gateway.idle_timeout_s=1")
    gateway.upstream.healthy = False
    gateway.upstream.queue(Generation(deltas=content("Once upon a time", 4), pauses={2: 3600}))
    _, final = await gateway.stream({"input": "story"})
    assert final["error"]["code"] == "upstream_stalled"  # only the idle timeout ended it
