"""Fault injection: every fault answered, nothing hung, nothing leaked. Each test says what the
client receives, checks that the upstream request was closed where it should be, and that the
gateway keeps serving others."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import aiohttp
import pytest

from gateway.server.app import CLIENT_KEY
from tests.conftest import Gateway, GatewayFactory, free_port
from tests.contract import check_stream, parse_sse
from tests.fake_vllm import FakeVLLM, Generation, content

FAST_RETRY = ("gateway.retry_backoff_s=0.01", "gateway.retry_backoff_max_s=0.02")


async def still_serves(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("fine")))
    _, final = await gateway.stream({"input": "q"})
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "fine"


# --- before the first byte: retried on another server ---------------------------------------------


async def test_refused_server_fails_over_to_the_other(make_gateway: GatewayFactory, upstream2: FakeVLLM) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gateway = await make_gateway(*FAST_RETRY, "gateway.health_check_interval_s=0", base_url=[dead, upstream2.url])
    for _ in range(4):  # whichever server is chosen first, every request succeeds
        upstream2.queue(Generation(deltas=content("from two")))
        _, final = await gateway.stream({"input": "q"})
        assert final["output"][0]["content"][0]["text"] == "from two"
    assert len(upstream2.requests) == 4


@pytest.mark.parametrize("status", [429, 502, 503, 504])
async def test_retriable_status_is_retried_elsewhere(make_gateway: GatewayFactory, upstream: FakeVLLM,
                                                     upstream2: FakeVLLM, status: int) -> None:
    gateway = await make_gateway(*FAST_RETRY, base_url=[upstream.url, upstream2.url])
    upstream.queue(*[Generation(status=status, error_message="busy")] * 3)  # the first server always fails
    upstream2.queue(*[Generation(deltas=content("ok"))] * 3)
    for _ in range(3):
        _, final = await gateway.stream({"input": "q"})
        assert final["status"] == "completed"
    assert len(upstream.requests) >= 1  # some requests went there first ...
    assert len(upstream2.requests) == 3  # ... and were retried on the other server


async def test_400_is_not_retried(make_gateway: GatewayFactory, upstream: FakeVLLM, upstream2: FakeVLLM) -> None:
    gateway = await make_gateway(*FAST_RETRY, base_url=[upstream.url, upstream2.url])
    for fake in (upstream, upstream2):
        fake.queue(Generation(status=400, error_message="bad tool schema"))
    response = await gateway.post({"input": "q", "stream": True})
    assert response.status == 400
    assert len(upstream.requests) + len(upstream2.requests) == 1


async def test_retries_are_bounded(make_gateway: GatewayFactory, upstream: FakeVLLM) -> None:
    gateway = await make_gateway(*FAST_RETRY, "gateway.max_retries=2")
    upstream.queue(*[Generation(status=503, error_message="overloaded")] * 5)
    response = await gateway.post({"input": "q"})
    assert response.status == 502
    error = (await response.json())["error"]
    assert "503" in error["message"] and "overloaded" in error["message"]
    assert len(upstream.requests) == 3  # one try and two retries, no more


async def test_nothing_is_retried_after_the_first_byte(make_gateway: GatewayFactory, upstream: FakeVLLM,
                                                       upstream2: FakeVLLM) -> None:
    gateway = await make_gateway(*FAST_RETRY, base_url=[upstream.url, upstream2.url])
    for fake in (upstream, upstream2):
        fake.queue(Generation(deltas=content("partial answer here"), drop_after=2))
    events, final = await gateway.stream({"input": "q"})
    assert final["status"] == "failed" and final["error"]["code"] == "upstream_disconnected"
    assert len(upstream.requests) + len(upstream2.requests) == 1


# --- stalls, keepalive ----------------------------------------------------------------------------


async def test_stall_before_the_first_chunk(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.first_byte_timeout_s=0.5")
    gateway.upstream.queue(Generation(deltas=content("too late"), stall_before=10))
    started = time.monotonic()
    events, final = await gateway.stream({"input": "q"})
    assert time.monotonic() - started < 5
    assert final["status"] == "failed" and final["error"]["code"] == "upstream_stalled"
    assert "first_byte_timeout_s" in final["error"]["message"]
    await asyncio.wait_for(gateway.upstream.closed_early.wait(), 2)  # vLLM was told to stop
    await still_serves(gateway)


async def test_stall_mid_stream(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.idle_timeout_s=0.5")
    gateway.upstream.queue(Generation(deltas=content("one two three four"), pauses={2: 10}))
    events, final = await gateway.stream({"input": "q"})
    assert final["status"] == "failed" and final["error"]["code"] == "upstream_stalled"
    assert "stalled" in final["error"]["message"] and "idle_timeout_s" in final["error"]["message"]
    assert final["output"][0]["content"][0]["text"] == "one two"  # what came is kept
    await asyncio.wait_for(gateway.upstream.closed_early.wait(), 2)
    await still_serves(gateway)


async def test_keepalive_events_during_silence(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.keepalive_interval_s=0.1")
    gateway.upstream.queue(Generation(deltas=content("slow thinker"), pauses={1: 0.6}))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as response:
        body = await response.read()
    events = parse_sse(body)
    keepalives = [e for e in events if e["type"] == "keepalive"]
    assert len(keepalives) >= 3 and b"\n: keepalive" not in body
    assert all(set(e) == {"type", "sequence_number"} for e in keepalives)
    assert b"event: keepalive\ndata: {" in body  # an SSE event with data: what resets Codex's idle timer
    final = check_stream(events)  # numbered in line with every other event
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == "slow thinker"


async def test_keepalive_comments_during_silence(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.keepalive_interval_s=0.1", "gateway.keepalive_format=comment")
    gateway.upstream.queue(Generation(deltas=content("slow thinker"), pauses={1: 0.6}))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as response:
        body = await response.read()
    assert body.count(b": keepalive\n\n") >= 3 and b'"keepalive"' not in body
    final = check_stream(parse_sse(body))
    assert final["status"] == "completed"


async def test_slow_trickle_completes(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("a slow but steady stream", size=1), delay=0.01))
    _, final = await gateway.stream({"input": "q"})
    assert final["output"][0]["content"][0]["text"] == "a slow but steady stream"


# --- malformed upstream output --------------------------------------------------------------------


def sse(*lines: str) -> bytes:
    return "".join(f"data: {line}\n\n" for line in lines).encode()


CHUNK = '{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":%s,"finish_reason":%s}]}'


@pytest.mark.parametrize("body, status, code", [
    (sse(CHUNK % ('{"content":"Hi"}', "null"), "{not json", "[DONE]"), "failed", "upstream_protocol_error"),
    (sse('{"id":"c","object":"chat.completion.chunk","created":1,"model":"m"}',
         CHUNK % ('{"content":"Hi"}', '"stop"'), "[DONE]"), "completed", None),  # a chunk without choices
    (sse(CHUNK % ('{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}', '"tool_calls"'), "[DONE]"),
     "failed", "upstream_protocol_error"),  # a tool call that never gets a name
    (sse(CHUNK % ('{"content":"plain</think> answer"}', '"stop"'), "[DONE]"), "completed", None),
    (sse(CHUNK % ('{"content":"cut"}', "null")), "failed", "upstream_incomplete"),  # no finish, no [DONE]
])
async def test_malformed_upstream_output_never_crashes(gateway: Gateway, body: bytes, status: str, code) -> None:
    gateway.upstream.queue(Generation(raw_body=body))
    events, final = await gateway.stream({"input": "q"})
    assert final["status"] == status
    if code:
        assert final["error"]["code"] == code
    await still_serves(gateway)


# --- the client goes away -------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["waiting_for_vllm", "mid_stream", "during_keepalive"])
async def test_client_disconnect_at_every_phase_closes_upstream(make_gateway: GatewayFactory, phase: str) -> None:
    gateway = await make_gateway("gateway.keepalive_interval_s=0.05")
    generation = {
        "waiting_for_vllm": Generation(deltas=content("late"), stall_before=30),
        "mid_stream": Generation(deltas=content("x" * 200, size=1), delay=0.02),
        "during_keepalive": Generation(deltas=content("a b c"), pauses={1: 30}),
    }[phase]
    gateway.upstream.queue(generation)
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as response:
            seen = b""
            want = b"keepalive" if phase == "during_keepalive" else b"in_progress"
            while want not in seen:
                seen += await asyncio.wait_for(response.content.readany(), 5)
    await asyncio.wait_for(gateway.upstream.closed_early.wait(), 2)
    assert gateway.upstream.requests[-1]["closed_early"]
    await still_serves(gateway)


async def test_client_leaving_before_vllm_answers_leaves_no_request_in_flight(gateway: Gateway) -> None:
    """The per-server in-flight count (least-in-flight balancing, metrics) must come back to 0 when a
    client leaves while the gateway still waits for vLLM's response headers."""
    gateway.upstream.queue(*[Generation(deltas=content("late"), stall_headers=30) for _ in range(3)])
    async with aiohttp.ClientSession() as session:
        for stream in (True, False, True):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(session.post(gateway.url + "/v1/responses",
                                                    json={"input": "q", "stream": stream}), 0.3)
    await asyncio.sleep(0.3)
    text = await (await gateway.session.get(gateway.url + "/metrics")).text()
    assert f'gateway_upstream_in_flight{{server="{gateway.upstream.url}"}} 0.0' in text
    assert "gateway_open_streams 0.0" in text
    assert all(r["closed_early"] for r in gateway.upstream.requests)


async def test_client_disconnect_during_non_streaming_closes_upstream(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("late"), stall_before=30))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(session.post(gateway.url + "/v1/responses", json={"input": "q"}), 0.5)
    # the non-streaming upstream request was cancelled with the handler: the fake saw it go
    await asyncio.wait_for(gateway.upstream.closed_early.wait(), 2)
    assert gateway.upstream.requests[-1]["closed_early"] and not gateway.upstream.requests[-1]["finished"]
    await still_serves(gateway)


async def test_slow_client_pauses_the_upstream(gateway: Gateway) -> None:
    """Backpressure: a client that stops reading makes the gateway stop reading vLLM, so the
    gateway's memory per stream stays bounded; when it reads again, nothing is lost."""
    piece = "y" * 1000
    total = 20000  # 20 MB of text: far more than socket buffers hold
    gateway.upstream.queue(Generation(deltas=[{"content": piece}] * total))
    async with aiohttp.ClientSession(read_bufsize=2**14) as session:
        async with session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as response:
            body = await response.content.readany()
            record = gateway.upstream.requests[-1]
            # Wait (however slow the machine) until the upstream stops sending, then check it
            # stopped well short of the end: paused by backpressure, not racing ahead.
            sent, deadline = -1, time.monotonic() + 60
            while record["sent"] != sent and record["sent"] < total and time.monotonic() < deadline:
                sent = record["sent"]
                await asyncio.sleep(0.5)
            assert record["sent"] == sent < total
            body += await response.read()
    final = check_stream(parse_sse(body))
    assert len(final["output"][0]["content"][0]["text"]) == total * len(piece)


# --- several servers ------------------------------------------------------------------------------


async def test_session_affinity_keeps_a_conversation_on_one_server(make_gateway: GatewayFactory, upstream: FakeVLLM,
                                                                   upstream2: FakeVLLM) -> None:
    gateway = await make_gateway(base_url=[upstream.url, upstream2.url])
    where = {}
    # 32 keys: the servers' ports are random, and 12 keys all hashed to one server one run in 2,048
    for key in [f"session-{i}" for i in range(32)]:
        for _ in range(2):
            before = (len(upstream.requests), len(upstream2.requests))
            async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q"},
                                            headers={"X-Session-Id": key}) as response:
                assert response.status == 200
            server = 0 if len(upstream.requests) > before[0] else 1
            assert where.setdefault(key, server) == server  # the same server every time
    assert set(where.values()) == {0, 1}  # and sessions spread over both


async def test_session_cookie_for_clients_without_a_key(make_gateway: GatewayFactory, upstream: FakeVLLM,
                                                        upstream2: FakeVLLM) -> None:
    gateway = await make_gateway(base_url=[upstream.url, upstream2.url])
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:  # keeps cookies
        for _ in range(6):
            async with session.post(gateway.url + "/v1/responses", json={"input": "q"}) as response:
                assert response.status == 200
        assert {len(upstream.requests), len(upstream2.requests)} == {0, 6}
        assert any(c.key == "VLLMModel___policy_model" for c in session.cookie_jar)


async def test_least_in_flight_balancing(make_gateway: GatewayFactory, upstream: FakeVLLM, upstream2: FakeVLLM) -> None:
    gateway = await make_gateway(base_url=[upstream.url, upstream2.url])
    for fake in (upstream, upstream2):
        fake.queue(*[Generation(deltas=content("slow answer"), delay=0.1) for _ in range(3)])
    results = await asyncio.gather(*[gateway.stream({"input": "q"}) for _ in range(6)])
    assert all(final["status"] == "completed" for _, final in results)
    assert len(upstream.requests) == len(upstream2.requests) == 3


async def test_failing_server_is_ejected_then_recovers(make_gateway: GatewayFactory, upstream: FakeVLLM,
                                                       upstream2: FakeVLLM) -> None:
    gateway = await make_gateway(*FAST_RETRY, "gateway.eject_after_failures=2", "gateway.eject_s=0.5",
                                 "gateway.health_check_interval_s=0", base_url=[upstream.url, upstream2.url])
    # The pool's clock is the test's: the ejection lasts until the test says it is over, however
    # slowly the machine runs the requests in between.
    now = [1000.0]
    gateway.runner.app[CLIENT_KEY].pool._clock = lambda: now[0]
    upstream.queue(*[Generation(status=503, error_message="sick")] * 50)
    for _ in range(10):
        upstream2.queue(Generation(deltas=content("healthy")))
        response = await gateway.post({"input": "q"})
        assert response.status == 200
    assert len(upstream.requests) == 2  # two failures, then no more traffic while ejected
    upstream.script.clear()
    now[0] += 0.6  # the ejection is over
    for _ in range(4):
        response = await gateway.post({"input": "q"})
        assert response.status == 200
    assert len(upstream.requests) > 2  # it gets traffic again


async def _until_health_says(gateway: Gateway, healthy: list[bool]) -> None:
    """Waits for the active checks to reach a verdict (as long as a slow machine needs)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        health = await (await gateway.session.get(gateway.url + "/health")).json()
        if [u["healthy"] for u in health["upstreams"]] == healthy:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"/health never said {healthy}: {health}")


async def test_active_health_checks(make_gateway: GatewayFactory, upstream: FakeVLLM, upstream2: FakeVLLM) -> None:
    gateway = await make_gateway("gateway.health_check_interval_s=0.1", base_url=[upstream.url, upstream2.url])
    upstream.healthy = False
    await _until_health_says(gateway, [False, True])
    for _ in range(6):
        assert (await gateway.post({"input": "q"})).status == 200
    assert len(upstream.requests) == 0 and len(upstream2.requests) == 6
    upstream.healthy = True
    await _until_health_says(gateway, [True, True])
    for _ in range(6):
        assert (await gateway.post({"input": "q"})).status == 200
    assert len(upstream.requests) > 0
    health = await (await gateway.session.get(gateway.url + "/health")).json()
    assert [u["healthy"] for u in health["upstreams"]] == [True, True]


# --- security -------------------------------------------------------------------------------------


async def test_client_api_keys(make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    gateway = await make_gateway("gateway.api_keys=[sk-client-one,sk-client-two]")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "sk-client-one"}):
        async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q"}, headers=headers) as r:
            assert r.status == 401
            assert (await r.json())["error"] == {"message": "Invalid or missing API key.",
                                                 "type": "invalid_request_error", "param": None,
                                                 "code": "invalid_api_key"}
    for key in ("sk-client-one", "sk-client-two"):
        async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q"},
                                        headers={"Authorization": f"Bearer {key}"}) as r:
            assert r.status == 200
    async with gateway.session.get(gateway.url + "/health") as r:
        assert r.status == 200  # probes need no key
    assert "sk-client" not in caplog.text


async def test_api_keys_file(make_gateway: GatewayFactory, tmp_path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_text("# one per line\nsk-from-file\n")
    gateway = await make_gateway(f"gateway.api_keys_file={keys}")
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q"},
                                    headers={"Authorization": "Bearer sk-from-file"}) as r:
        assert r.status == 200


async def test_cors_off_by_default_and_on_when_configured(make_gateway: GatewayFactory) -> None:
    plain = await make_gateway()
    async with plain.session.post(plain.url + "/v1/responses", json={"input": "q"},
                                  headers={"Origin": "http://evil.example"}) as r:
        assert "Access-Control-Allow-Origin" not in r.headers
    open_ = await make_gateway("gateway.cors_allow_origins=[http://app.example]")
    async with open_.session.options(open_.url + "/v1/responses", headers={"Origin": "http://app.example"}) as r:
        assert r.status == 204 and r.headers["Access-Control-Allow-Origin"] == "http://app.example"
    async with open_.session.post(open_.url + "/v1/responses", json={"input": "q"},
                                  headers={"Origin": "http://other.example"}) as r:
        assert "Access-Control-Allow-Origin" not in r.headers


# --- graceful shutdown ----------------------------------------------------------------------------


async def test_shutdown_lets_streams_finish_then_ends_the_rest(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.shutdown_grace_s=0.5")
    gateway.upstream.queue(Generation(deltas=content("quick")),  # finishes within the grace period
                           Generation(deltas=content("x" * 100, size=1), delay=0.1))  # does not

    async def read(body: dict) -> list[dict]:
        async with aiohttp.ClientSession() as session:
            async with session.post(gateway.url + "/v1/responses", json={**body, "stream": True}) as response:
                return parse_sse(await response.read())

    quick = asyncio.ensure_future(read({"input": "a"}))
    await asyncio.sleep(0.05)
    slow = asyncio.ensure_future(read({"input": "b"}))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await gateway.runner.cleanup()  # what SIGTERM does
    assert time.monotonic() - started < 3
    assert check_stream(await quick)["status"] == "completed"
    final = check_stream(await slow)
    assert final["status"] == "failed" and final["error"]["code"] == "server_shutting_down"
    assert gateway.upstream.requests[-1]["closed_early"]


# --- hostile upstreams and bodies (issue 12): answered, closed, nothing leaked, still serving -------

SECRET_KEY = "sk-fault-upstream-9d1e"
_LINE = b'data: {"choices": [{"index": 0, "delta": {"content": "'


def _fault(name: str, upstream_url: str) -> tuple[Generation, tuple[str, ...], bool]:
    """(what vLLM does, gateway overrides, whether the gateway must close the upstream itself)."""
    echo = f"bad request, headers: {{'Authorization': 'Bearer {SECRET_KEY}'}}"
    return {
        "redirect": (Generation(raw_body=b"", raw_status=307,
                                raw_headers={"Location": upstream_url + "/chat/completions?again"}), (), False),
        "secret_in_error": (Generation(status=500, error_message=echo), (), False),
        "secret_mid_stream": (Generation(deltas=content("a b c"), stream_error_after=1, error_message=echo), (), False),
        # Far more than socket buffers hold (30 MB, 256 MB): the fake is still writing when the
        # gateway gives up, so it sees the close, however fast or slow the machine is.
        "too_large": (Generation(deltas=[{"content": "q" * 1000}] * 30_000),
                      ("gateway.max_upstream_response_bytes=500000",), True),
        "endless_line": (Generation(raw_chunks=[_LINE] + [b"e" * 65536] * 4096),
                         ("gateway.max_upstream_event_bytes=65536",), True),
        "longer_than_total": (Generation(deltas=content("t" * 3000, size=1), delay=0.01),
                              ("gateway.request_timeout_s=1",), True),
        "absurd_usage": (Generation(deltas=content("ok"), prompt_tokens=-3), (), False),
    }[name]


@pytest.mark.parametrize("name", ["redirect", "secret_in_error", "secret_mid_stream", "too_large", "endless_line",
                                  "longer_than_total", "absurd_usage"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "complete"])
async def test_hostile_upstream_is_answered_and_closed(make_gateway: GatewayFactory, upstream: FakeVLLM,
                                                       name: str, stream: bool) -> None:
    generation, overrides, must_close = _fault(name, upstream.url)  # type: ignore[attr-defined]
    gateway = await make_gateway(f"policy_api_key={SECRET_KEY}", "gateway.max_retries=0", *overrides)
    upstream.queue(generation)
    async with asyncio.timeout(60):  # answered, not hung
        async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": stream}) as r:
            raw = await r.read()
            status, ctype = r.status, r.headers["Content-Type"]
    assert SECRET_KEY.encode() not in raw
    if status == 200 and ctype.startswith("text/event-stream"):
        final = check_stream(parse_sse(raw))
    elif status == 200:
        final = json.loads(raw)
    else:
        final = None
        assert 400 <= status < 600 and status != 500 and set(json.loads(raw)) == {"error"}, raw[:300]
    if final is not None and final["usage"] is not None:
        assert all(final["usage"][k] >= 0 for k in ("input_tokens", "output_tokens", "total_tokens"))
    assert len(upstream.requests) == 1  # a redirect is not followed, nothing is retried here
    if must_close and stream:
        await asyncio.wait_for(upstream.closed_early.wait(), 10)
    text = await (await gateway.session.get(gateway.url + "/metrics")).text()
    assert f'gateway_upstream_in_flight{{server="{upstream.url}"}} 0.0' in text  # type: ignore[attr-defined]
    await still_serves(gateway)


@pytest.mark.parametrize("headers", [{"Content-Encoding": "br"}, {"Content-Encoding": "gzip, zstd"},
                                     {"Content-Encoding": "snappy"}, {"X-Session-Id": "s\u00e9ssion"}])
async def test_hostile_request_bytes_are_answered(gateway: Gateway, headers: dict[str, str]) -> None:
    import zlib

    import brotli
    from backports import zstd

    body = json.dumps({"input": "q" * 100}).encode()
    coding = headers.get("Content-Encoding", "")
    if coding == "br":
        body = brotli.compress(b'{"input": "' + b" " * 20_000_000 + b'"}', quality=1)  # 20 MB of spaces: over the limit
    elif coding == "gzip, zstd":
        body = zstd.compress(zlib.compress(body, wbits=31))
    async with gateway.session.post(gateway.url + "/v1/responses", data=body,
                                    headers={"Content-Type": "application/json", **headers}) as r:
        answer = await r.read()
        expected = {"br": 413, "gzip, zstd": 200, "snappy": 415}.get(coding, 200)
        assert r.status == expected, answer[:300]
        if expected != 200:
            assert set(json.loads(answer)["error"]) == {"message", "type", "param", "code"}
    await still_serves(gateway)
