"""The observation hook (gateway/observe.py): what an observer is told about each request, in order,
against the real app and the scripted upstream."""

from __future__ import annotations

import asyncio
from typing import Any, Optional

import aiohttp
from aiohttp import web

from gateway.observe import Outcome, RequestObserver
from gateway.server.app import CLIENT_KEY, OBSERVERS_KEY
from tests.conftest import Gateway, GatewayFactory, free_port
from tests.contract import parse_sse
from tests.fake_vllm import Generation, content, reasoning, tool_call

WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


class Recorder(RequestObserver):
    def __init__(self, request_id: str, raw: bytes) -> None:
        self.request_id, self.raw = request_id, raw
        self.calls: list[tuple[str, Any]] = []
        self.outcome: Optional[Outcome] = None
        self.ended_event = asyncio.Event()

    def planned(self, request: Any, plan: Any) -> None:
        self.calls.append(("planned", plan.body))

    def attempt_started(self, server: str) -> None:
        self.calls.append(("attempt_started", server))

    def attempt_ended(self, server: str, error: Any) -> None:
        self.calls.append(("attempt_ended", (server, error.code if error else None)))

    def read(self, data: bytes) -> None:
        self.calls.append(("read", data))

    def received(self, chunks: Any) -> None:
        self.calls.append(("received", list(chunks)))

    def sent(self, data: bytes) -> None:
        self.calls.append(("sent", data))

    def ended(self, outcome: Outcome) -> None:
        self.calls.append(("ended", outcome))
        self.outcome = outcome
        self.ended_event.set()

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.calls]

    def sent_bytes(self) -> bytes:
        return b"".join(value for kind, value in self.calls if kind == "sent")


def watch(gateway: Gateway) -> list[Recorder]:
    recorders: list[Recorder] = []

    def observer(request_id: str, request: web.Request, raw: bytes) -> Recorder:
        recorders.append(Recorder(request_id, raw))
        return recorders[-1]

    gateway.runner.app[OBSERVERS_KEY].append(observer)
    return recorders


async def test_streamed_request_is_observed_in_order(gateway: Gateway) -> None:
    recorders = watch(gateway)
    deltas = reasoning("Think.") + content("Hi.") + tool_call(0, "get_weather", '{"city": "Lima"}')
    gateway.upstream.queue(Generation(deltas=deltas, finish_reason="tool_calls"))
    async with gateway.session.post(gateway.url + "/v1/responses",
                                    json={"input": "q", "stream": True, "tools": [WEATHER_TOOL]}) as response:
        body = await response.read()
        rid = response.headers["X-Request-Id"]
    [rec] = recorders
    await asyncio.wait_for(rec.ended_event.wait(), 10)
    assert rec.request_id == rid and b'"input":"q"' in rec.raw.replace(b" ", b"")
    kinds = rec.kinds()
    assert kinds[:3] == ["planned", "attempt_started", "attempt_ended"] and kinds[-1] == "ended"
    assert rec.calls[0][1] == gateway.upstream.last_body  # the Chat Completions body as vLLM got it
    assert rec.calls[2][1] == (gateway.upstream.url, None)
    # every byte the client got went through sent(), in order
    assert rec.sent_bytes() == body
    chunks = [c for kind, value in rec.calls if kind == "received" for c in value]
    assert chunks[-1] is None  # [DONE]
    assert any(c is not None and c.choices and c.choices[0].finish_reason == "tool_calls" for c in chunks)
    # the bytes of every read, as vLLM sent them: one "data:" line per chunk, each before its chunks
    raw = b"".join(value for kind, value in rec.calls if kind == "read")
    assert raw.count(b"data: ") == len(chunks) and raw.endswith(b"data: [DONE]\n\n")
    assert rec.kinds().index("read") < rec.kinds().index("received")
    outcome = rec.outcome
    assert outcome is not None and outcome.status == 200 and outcome.error is None
    assert outcome.finish_reason == "tool_calls"
    assert outcome.response is not None and outcome.response.status == "completed"
    assert [type(item).__name__ for item in outcome.response.output] == ["ReasoningItem", "OutputMessage", "FunctionCallItem"]
    assert parse_sse(body)[-1]["response"]["id"] == outcome.response.id


async def test_non_streamed_request_and_errors(gateway: Gateway) -> None:
    recorders = watch(gateway)
    gateway.upstream.queue(Generation(deltas=content("Hello.")))
    whole = await gateway.create({"input": "q"})
    rec = recorders[-1]
    assert rec.kinds() == ["planned", "attempt_started", "attempt_ended", "read", "received", "sent", "ended"]
    assert b'"content": "Hello."' in rec.calls[3][1]
    assert rec.calls[4][1][0].choices[0].message.content == "Hello."
    assert rec.outcome is not None and rec.outcome.status == 200 and rec.outcome.response.id == whole["id"]

    # refused by the gateway: no plan, the error object the client got
    response = await gateway.session.post(gateway.url + "/v1/responses", data=b"{not json")
    assert response.status == 400
    rec = recorders[-1]
    assert rec.kinds() == ["ended"]
    assert rec.outcome is not None and rec.outcome.status == 400 and rec.outcome.error["code"] == "invalid_json"

    # refused by vLLM
    gateway.upstream.queue(Generation(status=500, error_message="engine dead"))
    response = await gateway.post({"input": "q", "stream": True})
    assert response.status == 502
    rec = recorders[-1]
    assert ("attempt_ended", (gateway.upstream.url, "upstream_error")) in rec.calls
    assert rec.outcome is not None and rec.outcome.status == 502 and "engine dead" in rec.outcome.error["message"]


async def test_a_retry_is_two_attempts(make_gateway: GatewayFactory, upstream2: Any) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gateway = await make_gateway("gateway.retry_backoff_s=0.01", "gateway.health_check_interval_s=0",
                                 base_url=[dead, upstream2.url])
    recorders = watch(gateway)
    pool = gateway.runner.app[CLIENT_KEY].pool
    session = pool.key_for(next(b for b in pool.backends if b.url == dead))  # routes to the dead one first
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True},
                                    headers={"x-session-id": session}) as response:
        assert response.status == 200
        await response.read()
    [rec] = recorders
    attempts = [(k, v) for k, v in rec.calls if k.startswith("attempt")]
    assert attempts == [("attempt_started", dead), ("attempt_ended", (dead, "upstream_unreachable")),
                        ("attempt_started", upstream2.url), ("attempt_ended", (upstream2.url, None))]


async def test_client_that_leaves_ends_as_499(gateway: Gateway) -> None:
    recorders = watch(gateway)
    gateway.upstream.queue(Generation(deltas=content("x" * 400, size=1), delay=0.01))
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as response:
            await response.content.readline()
    [rec] = recorders
    await asyncio.wait_for(rec.ended_event.wait(), 10)
    assert rec.outcome is not None and rec.outcome.status == 499


async def test_nobody_watching_by_default(gateway: Gateway) -> None:
    assert gateway.runner.app[OBSERVERS_KEY] == []
    _, final = await gateway.stream({"input": "q"})
    assert final["status"] == "completed"
