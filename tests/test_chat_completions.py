"""POST /v1/chat/completions beyond what the NeMo Gym differential checks (tests/test_nemo_gym.py):
keepalive comments while vLLM computes, a failure after the stream started, the client leaving,
and the request seen by the inspector, traces, the transport log and the metrics. Real gateway on
a real socket, the scripted vLLM, real clients (aiohttp, the openai SDK). No timing assumption:
vLLM's answer is held by a gate the test opens once it has seen what it waits for."""

from __future__ import annotations

import asyncio
import json
from typing import Any, Optional

import aiohttp
import openai
import pytest

from gateway.observe import Outcome, RequestObserver
from gateway.server.http import OBSERVERS_KEY
from gateway.server.sse import KEEPALIVE
from tests.conftest import Gateway, GatewayFactory
from tests.fake_vllm import Generation, content, reasoning
from tests.test_inspect import ADMIN, ended, inspected, summaries

FAST_KEEPALIVE = "gateway.keepalive_interval_s=0.02"
WAIT_S = 60  # a generous bound on what the test waits for (the machine is shared and slow)
MESSAGES = [{"role": "user", "content": "hi"}]


class KeepalivesOpenTheGate(RequestObserver):
    """An observer (the app's own hook) that opens ``gate`` once the client was sent ``count``
    keepalives, so that vLLM answers only then."""

    def __init__(self, gate: asyncio.Event, count: int) -> None:
        self.gate, self.count, self.keepalives = gate, count, 0
        self.outcome: Optional[Outcome] = None

    def sent(self, data: bytes) -> None:
        if data == KEEPALIVE:
            self.keepalives += 1
            if self.keepalives >= self.count:
                self.gate.set()

    def ended(self, outcome: Outcome) -> None:
        self.outcome = outcome


def watch(gateway: Gateway, gate: asyncio.Event, count: int = 2) -> KeepalivesOpenTheGate:
    observer = KeepalivesOpenTheGate(gate, count)
    gateway.runner.app[OBSERVERS_KEY].append(lambda request_id, request, raw: observer)
    return observer


async def read_frames(response: aiohttp.ClientResponse) -> list[bytes]:
    body = await asyncio.wait_for(response.read(), WAIT_S)
    return [frame + b"\n\n" for frame in body.split(b"\n\n") if frame]


async def test_a_stream_gets_keepalives_while_vllm_computes_then_the_answer(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(FAST_KEEPALIVE)
    gate = asyncio.Event()
    generation = Generation(deltas=reasoning("Think.") + content("Hello there."), gate=gate)
    gateway.upstream.queue(generation)
    observer = watch(gateway, gate, count=3)
    body = {"messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}}
    async with gateway.session.post(gateway.url + "/v1/chat/completions", json=body) as response:
        assert response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream")
        frames = await read_frames(response)
    assert gateway.upstream.last_body.get("stream") in (None, False)  # vLLM is asked without streaming
    keepalives = [i for i, frame in enumerate(frames) if frame == KEEPALIVE]
    data = [i for i, frame in enumerate(frames) if frame.startswith(b"data: ")]
    # keepalives only while waiting on vLLM: all of them before the first chunk, none after
    assert len(keepalives) >= 3 and max(keepalives) < min(data) and observer.keepalives == len(keepalives)
    chunks = [json.loads(frames[i][6:]) for i in data[:-1]]
    assert frames[data[-1]] == b"data: [DONE]\n\n"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) \
        == "<think>Think.</think>Hello there."
    assert chunks[-1]["usage"]["completion_tokens"] == generation.usage()["completion_tokens"]
    assert observer.outcome is not None and observer.outcome.status == 200
    assert observer.outcome.completion is not None and observer.outcome.finish_reason == "stop"


async def test_the_openai_sdk_reads_through_keepalives_and_raises_a_late_failure(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(FAST_KEEPALIVE)
    client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    try:
        gate = asyncio.Event()
        gateway.upstream.queue(Generation(deltas=content("Fine."), gate=gate))
        watch(gateway, gate)
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices])
        assert text == "Fine."

        # vLLM refuses after the stream started: an `event: error` frame, which the SDK raises
        gate = asyncio.Event()
        gateway.upstream.queue(Generation(status=400, error_message="prompt rejected by vLLM", gate=gate))
        observer = watch(gateway, gate)
        stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
        with pytest.raises(openai.APIError, match="prompt rejected by vLLM"):
            async for _ in stream:
                pass
        assert observer.outcome is not None and observer.outcome.status == 200
        assert observer.outcome.error is not None and observer.outcome.error["type"] == "invalid_request_error"
    finally:
        await client.close()


async def test_a_failure_before_the_stream_starts_is_an_http_error(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()  # the default interval (15 s): vLLM refuses at once
    gateway.upstream.queue(Generation(status=400, error_message="bad request from vLLM"))
    async with gateway.session.post(gateway.url + "/v1/chat/completions",
                                    json={"messages": MESSAGES, "stream": True}) as response:
        assert response.status == 400 and response.content_type == "application/json"
        error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"} and "bad request from vLLM" in error["message"]


async def test_an_error_frame_after_the_stream_started(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(FAST_KEEPALIVE, "policy_api_key=sk-upstream-secret-9")
    gate = asyncio.Event()
    gateway.upstream.queue(Generation(status=400, error_message="refused; key sk-upstream-secret-9", gate=gate))
    watch(gateway, gate)
    async with gateway.session.post(gateway.url + "/v1/chat/completions",
                                    json={"messages": MESSAGES, "stream": True}) as response:
        assert response.status == 200
        frames = await read_frames(response)
    assert frames[0] == KEEPALIVE and b"data: [DONE]" not in b"".join(frames)
    last = frames[-1].decode()
    assert last.startswith("event: error\ndata: ")
    error = json.loads(last.split("data: ", 1)[1])["error"]
    assert set(error) == {"message", "type", "param", "code"} and "refused" in error["message"]
    assert "sk-upstream-secret-9" not in last  # configured secrets never reach the client


async def test_the_client_leaving_during_keepalives_stops_the_request_to_vllm(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(FAST_KEEPALIVE)
    never = asyncio.Event()  # vLLM never answers
    gateway.upstream.queue(Generation(deltas=content("late"), gate=never))
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + "/v1/chat/completions",
                                json={"messages": MESSAGES, "stream": True}) as response:
            assert await asyncio.wait_for(response.content.readuntil(b"\n\n"), WAIT_S) == KEEPALIVE
    await asyncio.wait_for(gateway.upstream.closed_early.wait(), WAIT_S)  # the gateway closed it


async def test_the_inspector_and_the_metrics_see_chat_completions(make_gateway: GatewayFactory) -> None:
    gateway = await inspected(make_gateway, FAST_KEEPALIVE)
    gateway.upstream.queue(Generation(deltas=content("Whole.", size=10), prompt_tokens=7))
    async with gateway.session.post(gateway.url + "/v1/chat/completions", json={"messages": MESSAGES}) as response:
        answer = await response.json()
        whole = response.headers["X-Request-Id"]
    gate = asyncio.Event()
    gateway.upstream.queue(Generation(deltas=content("Streamed.", size=10), prompt_tokens=7, gate=gate))
    watch(gateway, gate)
    async with gateway.session.post(gateway.url + "/v1/chat/completions",
                                    json={"messages": MESSAGES, "stream": True}) as response:
        streamed_body = await response.read()
        streamed = response.headers["X-Request-Id"]

    record = await ended(gateway, whole)
    summary = record["summary"]
    assert summary["route"] == "/v1/chat/completions" and summary["status"] == "completed"
    assert (summary["stream"], summary["upstream_stream"]) == (False, False)
    assert (summary["input_tokens"], summary["output_tokens"], summary["finish_reason"]) == (7, 1, "stop")
    kinds = [kind for _, kind, _ in record["entries"]]
    assert kinds == ["plan", "attempt", "attempt", "read", "sent", "end"]
    assert record["entries"][0][2] == gateway.upstream.requests[0]["body"]  # the body vLLM got
    assert record["entries"][4][2] == [answer]  # what the client got
    assert record["entries"][-1][2]["completion"] == answer

    record = await ended(gateway, streamed)
    assert (record["summary"]["stream"], record["summary"]["upstream_stream"]) == (True, False)
    sent = [event for _, kind, payload in record["entries"] if kind == "sent" for event in payload]
    assert sent[-1] == "[DONE]" and [e["object"] for e in sent[:-1]] == ["chat.completion.chunk"] * (len(sent) - 1)
    assert streamed_body.count(b"data: ") == len(sent)
    assert {s["id"] for s in await summaries(gateway)} >= {whole, streamed}

    async with gateway.session.get(gateway.url + "/metrics") as response:
        metrics = await response.text()
    assert 'gateway_tokens_total{direction="input"} 14.0' in metrics
    assert 'gateway_requests_total{route="/v1/chat/completions",status="200"} 2.0' in metrics


@pytest.mark.parametrize("log_format", ["gateway", "nemo_gym"])
async def test_the_transport_log_has_chat_completions(make_gateway: GatewayFactory, tmp_path: Any,
                                                       log_format: str) -> None:
    path = tmp_path / "transport.jsonl"
    gateway = await make_gateway(f"gateway.transport_log={path}", f"gateway.transport_log_format={log_format}",
                                 "policy_api_key=sk-never-logged")
    gateway.upstream.queue(Generation(deltas=content("logged")), Generation(status=400, error_message="no"))
    async with gateway.session.post(gateway.url + "/v1/chat/completions", json={"messages": MESSAGES}) as response:
        assert response.status == 200
    async with gateway.session.post(gateway.url + "/v1/chat/completions", json={"messages": MESSAGES}) as response:
        assert response.status == 400
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    text = path.read_text()
    assert "sk-never-logged" not in text
    if log_format == "gateway":
        ok, failed = lines
        assert ok["request"] == gateway.upstream.requests[0]["body"] and ok["url"] == gateway.upstream.url
        assert json.loads(ok["response"]["body"])["choices"][0]["message"]["content"] == "logged"
        assert failed["response"]["status"] == 400
    else:
        events = [line["event"] for line in lines]
        assert events == ["transport_request", "transport_response", "transport_request", "transport_error_response"]
        assert lines[0]["request_payload"] == gateway.upstream.requests[0]["body"]


async def test_a_chat_completion_is_replayed_to_its_own_route(make_gateway: GatewayFactory) -> None:
    gateway = await inspected(make_gateway)
    gateway.upstream.queue(Generation(deltas=content("First.")), Generation(deltas=content("Again.")))
    async with gateway.session.post(gateway.url + "/v1/chat/completions", json={"messages": MESSAGES}) as response:
        original = response.headers["X-Request-Id"]
    headers = {**ADMIN, "X-Inspector": "replay", "X-Inspector-Replay-Of": original,
               "X-Inspector-Route": "/v1/chat/completions"}
    edited = {"messages": [{"role": "user", "content": "once more"}]}
    async with gateway.session.post(gateway.url + "/inspect/api/replay", json=edited, headers=headers) as response:
        assert response.status == 200
        assert (await response.json())["choices"][0]["message"]["content"] == "Again."
        replay = response.headers["X-Request-Id"]
    assert gateway.upstream.last_body["messages"] == edited["messages"]
    record = await ended(gateway, replay)
    assert record["summary"]["route"] == "/v1/chat/completions" and record["summary"]["replay_of"] == original
    headers["X-Inspector-Route"] = "/v1/embeddings"
    async with gateway.session.post(gateway.url + "/inspect/api/replay", json=edited, headers=headers) as response:
        assert response.status == 400 and (await response.json())["error"]["code"] == "unknown_route"


async def test_a_shutdown_answers_chat_completions_in_flight(make_gateway: GatewayFactory) -> None:
    """SIGTERM: after the grace period a request vLLM has not answered gets a 503
    server_shutting_down, and a stream already sending keepalives ends with that error as its frame;
    both requests to vLLM are closed."""
    gateway = await make_gateway(FAST_KEEPALIVE, "gateway.shutdown_grace_s=0.5")
    never = asyncio.Event()
    gateway.upstream.queue(Generation(deltas=content("late"), gate=never), Generation(deltas=content("late"), gate=never))
    streaming = asyncio.Event()
    watch(gateway, streaming, count=1)  # set once the stream has started

    async def send(body: dict[str, Any]) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session:
            async with session.post(gateway.url + "/v1/chat/completions", json=body) as response:
                return response.status, await response.read()

    plain = asyncio.ensure_future(send({"messages": MESSAGES}))
    streamed = asyncio.ensure_future(send({"messages": MESSAGES, "stream": True}))
    await asyncio.wait_for(streaming.wait(), WAIT_S)
    while len(gateway.upstream.requests) < 2:  # both are with vLLM
        await asyncio.sleep(0.01)
    await asyncio.wait_for(gateway.runner.cleanup(), WAIT_S)  # what SIGTERM does
    status, body = await plain
    assert status == 503 and json.loads(body)["error"]["code"] == "server_shutting_down"
    status, body = await streamed
    assert status == 200 and body.startswith(KEEPALIVE)
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"event: error\ndata: ")
    assert json.loads(last.split(b"data: ", 1)[1])["error"]["code"] == "server_shutting_down"
    assert all(r["closed_early"] for r in gateway.upstream.requests)
