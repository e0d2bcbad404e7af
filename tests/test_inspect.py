"""The inspector's server side over real sockets: access (admin key, loopback only), masking, the
bounded ring buffer and viewer queues, the live feed, export and replay. The page itself is tested
in a real browser in test_inspect_browser.py."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, AsyncIterator, Optional
from unittest import mock

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from gateway.config import ConfigError
from gateway.inspect.buffer import Inspector, Viewer
from gateway.redact import Secrets
from gateway.inspect.routes import INSPECTOR_KEY, Guard
from gateway.server.app import OBSERVERS_KEY
from tests.conftest import Gateway, GatewayFactory, gateway_config
from tests.contract import parse_sse
from tests.fake_vllm import Generation, content, reasoning, tool_call

ADMIN_KEY = "inspector-admin-key-for-tests"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIENT_KEY = "client-key-abcdef123"
ROUTES = [("GET", "/inspect"), ("GET", "/inspect/api/feed"), ("GET", "/inspect/api/requests"),
          ("GET", "/inspect/api/requests/req_x"), ("GET", "/inspect/static/inspect.js"),
          ("POST", "/inspect/api/replay")]


async def inspected(make_gateway: GatewayFactory, *overrides: str) -> Gateway:
    return await make_gateway("gateway.inspect=true", f"gateway.inspect_admin_key={ADMIN_KEY}", *overrides)


async def summaries(gateway: Gateway, **query: str) -> list[dict[str, Any]]:
    async with gateway.session.get(gateway.url + "/inspect/api/requests", headers=ADMIN, params=query) as response:
        assert response.status == 200
        return await response.json()


async def export(gateway: Gateway, request_id: str) -> dict[str, Any]:
    async with gateway.session.get(f"{gateway.url}/inspect/api/requests/{request_id}", headers=ADMIN) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def ended(gateway: Gateway, request_id: str) -> dict[str, Any]:
    """The record once the request has ended (the observer hears of the end just after the client
    read its last byte): waits for that event, not for a while."""
    inspector = gateway.runner.app[INSPECTOR_KEY]
    for _ in range(2000):
        record = inspector.get(request_id)
        if record is not None and record.http_status is not None:
            return await export(gateway, request_id)
        await asyncio.sleep(0.005)
    raise AssertionError(f"{request_id} never ended")


def assert_openai_error(body: dict[str, Any], code: str) -> None:
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == code


# --- access ---------------------------------------------------------------------------------------


async def test_off_by_default(gateway: Gateway) -> None:
    assert gateway.runner.app[OBSERVERS_KEY] == []
    for method, path in ROUTES:
        async with gateway.session.request(method, gateway.url + path) as response:
            assert response.status in (404, 405)
            assert "error" in await response.json()


async def test_without_the_admin_key_page_and_feed_answer_401(make_gateway: GatewayFactory) -> None:
    gateway = await inspected(make_gateway, f"gateway.api_keys=[{CLIENT_KEY}]")
    wrong = [{}, {"Authorization": "Bearer nope-nope-nope"}, {"Authorization": f"Bearer {CLIENT_KEY}"},
             {"Authorization": "Basic " + base64.b64encode(f"admin:{CLIENT_KEY}".encode()).decode()},
             {"Cookie": "gateway_inspect=forged"}]
    for method, path in ROUTES:
        for headers in wrong:
            async with gateway.session.request(method, gateway.url + path, headers=headers) as response:
                assert response.status == 401, (method, path, headers)
                assert response.headers["WWW-Authenticate"].startswith("Basic")
                assert_openai_error(await response.json(), "invalid_admin_key")
    async with gateway.session.get(gateway.url + "/inspect?key=wrong-wrong") as response:
        assert response.status == 401
    # the right key, three ways
    basic = {"Authorization": "Basic " + base64.b64encode(f"anyone:{ADMIN_KEY}".encode()).decode()}
    for headers in (ADMIN, basic):
        async with gateway.session.get(gateway.url + "/inspect", headers=headers) as response:
            assert response.status == 200 and "text/html" in response.headers["Content-Type"]
            assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    # keeps cookies (of an IP address too: unsafe=True), follows the redirect
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as browser_like:
        async with browser_like.get(f"{gateway.url}/inspect?key={ADMIN_KEY}") as response:
            assert response.status == 200 and str(response.url).endswith("/inspect")
            assert response.history[0].status == 303
            assert "HttpOnly" in response.history[0].headers["Set-Cookie"]
        async with browser_like.get(gateway.url + "/inspect/static/inspect.js") as response:
            assert response.status == 200 and response.headers["Content-Type"].startswith("text/javascript")
    # the client's key still works where it belongs
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q"},
                                    headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as response:
        assert response.status == 200


def test_admin_key_must_not_be_a_client_key() -> None:
    with pytest.raises(ConfigError, match="inspect_admin_key"):
        gateway_config("http://127.0.0.1:9/v1", "gateway.inspect=true", f"gateway.inspect_admin_key={CLIENT_KEY}",
                       f"gateway.api_keys=[{CLIENT_KEY}]")
    with pytest.raises(ConfigError, match="inspect_admin_key"):
        gateway_config("http://127.0.0.1:9/v1", "gateway.inspect_admin_key=short")


async def test_without_an_admin_key_loopback_only(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.inspect=true")
    async with gateway.session.get(gateway.url + "/inspect/api/requests") as response:
        assert response.status == 200  # we are on loopback
    # a page whose name resolves to 127.0.0.1 (DNS rebinding) does not get in through the browser
    async with gateway.session.get(gateway.url + "/inspect/api/requests", headers={"Host": "evil.example"}) as response:
        assert response.status == 401
        assert_openai_error(await response.json(), "inspector_loopback_only")
    guard = Guard(None)
    for peer, host, allowed in ((("10.1.2.3", 5000), "gateway:8300", False), (("10.1.2.3", 5000), "127.0.0.1", False),
                                (("127.0.0.1", 5000), "localhost:8300", True), (("::1", 5000, 0, 0), "[::1]:8300", True)):
        transport = mock.Mock()
        transport.get_extra_info.side_effect = lambda name, default=None, peer=peer: peer if name == "peername" else default
        request = make_mocked_request("GET", "/inspect", headers={"Host": host}, transport=transport)
        assert guard.allowed(request) is allowed, (peer, host)


async def test_replay_needs_the_inspector_header(make_gateway: GatewayFactory) -> None:
    gateway = await inspected(make_gateway)
    async with gateway.session.post(gateway.url + "/inspect/api/replay", headers=ADMIN, json={"input": "q"}) as response:
        assert response.status == 403
        assert_openai_error(await response.json(), "missing_inspector_header")


# --- what is recorded -----------------------------------------------------------------------------


async def test_a_streamed_request_is_recorded_whole(make_gateway: GatewayFactory) -> None:
    gateway = await inspected(make_gateway)
    deltas = reasoning("Think.") + content("Hi.") + tool_call(0, "get_weather", '{"city": "Lima"}', call_id="c1")
    gateway.upstream.queue(Generation(deltas=deltas, finish_reason="tool_calls"))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as response:
        body = await response.read()
        rid = response.headers["X-Request-Id"]
    record = await ended(gateway, rid)
    summary = record["summary"]
    assert summary["status"] == "completed" and summary["finish_reason"] == "tool_calls"
    assert summary["output_tokens"] == len(deltas) and summary["ttft_ms"] is not None
    assert record["request"] == {"input": "q", "stream": True}
    kinds = [kind for _, kind, _ in record["entries"]]
    assert kinds[:3] == ["plan", "attempt", "attempt"] and kinds[-1] == "end"
    assert record["entries"][0][2] == gateway.upstream.last_body  # the Chat Completions body, exactly
    # the events the client got, in order, are the "sent" entries
    sent = [event for _, kind, payload in record["entries"] if kind == "sent" for event in payload]
    assert sent == [event for event in parse_sse(body)]
    # what vLLM sent, read by read: role, deltas, finish, usage, [DONE]
    upstream = "".join(payload for _, kind, payload in record["entries"] if kind == "read")
    assert upstream.count("data: ") == 1 + len(deltas) + 2 + 1 and upstream.endswith("data: [DONE]\n\n")
    times = [t for t, _, _ in record["entries"]]
    assert times == sorted(times)


async def test_errors_and_non_streamed_requests(make_gateway: GatewayFactory) -> None:
    gateway = await inspected(make_gateway)
    async with gateway.session.post(gateway.url + "/v1/responses", data=b'{"input": ') as response:
        assert response.status == 400
        invalid = response.headers["X-Request-Id"]
    gateway.upstream.queue(Generation(deltas=content("Fine.")))
    whole = await gateway.create({"input": "q"})
    gateway.upstream.queue(Generation(deltas=content("abcdefgh", size=2), stream_error_after=2, error_message="engine died"))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as response:
        await response.read()
        failed = response.headers["X-Request-Id"]
    record = await ended(gateway, invalid)
    assert record["summary"]["status"] == "error" and record["summary"]["error"] == "invalid_json"
    assert record["request"] == {"unparsed_body": '{"input": '}
    record = await ended(gateway, failed)
    assert record["summary"]["status"] == "failed"
    end = record["entries"][-1][2]
    assert end["response"]["error"]["message"].endswith("engine died")
    listed = await summaries(gateway)
    [plain] = [s for s in listed if s["response_id"] == whole["id"]]
    assert plain["status"] == "completed" and plain["stream"] is False
    assert {s["id"] for s in await summaries(gateway, error="any")} == {invalid, failed}
    assert [s["id"] for s in await summaries(gateway, status="failed")] == [failed]
    assert len(await summaries(gateway, model="Qwen/Qwen3-8B")) == 2  # the invalid one never named a model


async def test_secrets_are_masked(make_gateway: GatewayFactory) -> None:
    vllm_key = "vllm-upstream-secret-42"
    gateway = await inspected(make_gateway, f"gateway.api_keys=[{CLIENT_KEY}]", f"policy_api_key={vllm_key}")
    gateway.upstream.queue(Generation(deltas=content(f"the key is {vllm_key}")))
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Cookie": "sessionid=cookie-secret-value",
               "X-Api-Key": "another-secret-value"}
    async with gateway.session.post(gateway.url + "/v1/responses", headers=headers,
                                    json={"input": f"my key is {CLIENT_KEY}", "stream": True}) as response:
        await response.read()
        rid = response.headers["X-Request-Id"]
    assert gateway.upstream.requests[-1]["headers"]["Authorization"] == f"Bearer {vllm_key}"
    await ended(gateway, rid)
    async with gateway.session.get(f"{gateway.url}/inspect/api/requests/{rid}", headers=ADMIN) as response:
        text = await response.text()
    for secret in (CLIENT_KEY, vllm_key, "cookie-secret-value", "another-secret-value", ADMIN_KEY):
        assert secret not in text
    record = json.loads(text)
    assert record["headers"]["Authorization"] == record["headers"]["X-Api-Key"] == "***"
    assert record["request"]["input"] == "my key is ***"


async def test_the_ring_buffer_is_bounded(make_gateway: GatewayFactory) -> None:
    gateway = await inspected(make_gateway, "gateway.inspect_buffer=3")
    ids = []
    for i in range(5):
        async with gateway.session.post(gateway.url + "/v1/responses", json={"input": f"q{i}"}) as response:
            assert response.status == 200
            ids.append(response.headers["X-Request-Id"])
        await ended(gateway, ids[-1])
    assert [s["id"] for s in await summaries(gateway)] == ids[-3:]
    async with gateway.session.get(f"{gateway.url}/inspect/api/requests/{ids[0]}", headers=ADMIN) as response:
        assert response.status == 404
        assert_openai_error(await response.json(), "not_found")
    async with gateway.session.get(f"{gateway.url}/inspect/api/requests/{ids[-1]}?download=1", headers=ADMIN) as response:
        assert response.headers["Content-Disposition"] == f'attachment; filename="{ids[-1]}.json"'


async def test_the_memory_budget_evicts_the_oldest(make_gateway: GatewayFactory) -> None:
    gateway = await inspected(make_gateway, "gateway.inspect_buffer_mb=1")
    ids = []
    for i in range(4):  # each ~400 KB of input: at most two fit in 1 MB
        async with gateway.session.post(gateway.url + "/v1/responses", json={"input": f"{i}" + "x" * 400_000}) as r:
            assert r.status == 200
            ids.append(r.headers["X-Request-Id"])
        await ended(gateway, ids[-1])
    kept = [s["id"] for s in await summaries(gateway)]
    assert kept == ids[-len(kept):] and 1 <= len(kept) <= 2
    inspector = gateway.runner.app[INSPECTOR_KEY]
    assert sum(r.size for r in inspector.records.values()) <= 1 << 20


async def test_a_reused_request_id_gets_its_own_record(make_gateway: GatewayFactory) -> None:
    gateway = await inspected(make_gateway)
    for _ in range(2):
        async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q"},
                                        headers={"X-Request-Id": "my-id-1"}) as response:
            assert response.status == 200
    inspector = gateway.runner.app[INSPECTOR_KEY]
    for _ in range(2000):
        if not inspector.live:
            break
        await asyncio.sleep(0.005)
    assert [s["id"] for s in await summaries(gateway)] == ["my-id-1", "my-id-1.2"]
    assert inspector.finished_bytes == sum(r.size for r in inspector.records.values())


def test_a_viewer_that_falls_behind_is_dropped_not_buffered() -> None:
    inspector = Inspector(10, "x-session-id", Secrets(), viewer_limit=5)

    async def run() -> None:
        request = make_mocked_request("POST", "/v1/responses")
        record = inspector.observe("req_1", request, b"{}")
        viewer = inspector.connect("req_1")  # list + detail: 2 messages queued
        for _ in range(3):
            record.read(b"data: [DONE]\n\n")
        assert not viewer.overflowed and len(viewer.queue) == 5
        record.read(b"data: [DONE]\n\n")  # one past the bound: dropped, its queue freed
        assert viewer.overflowed and not viewer.queue
        record.read(b"data: [DONE]\n\n")
        assert not viewer.queue
        assert len(record.entries) == 5  # recording goes on regardless
        inspector.disconnect(viewer)
        assert not record.viewers and not inspector.viewers

    asyncio.run(run())
    assert Viewer().limit > 0


# --- the live feed --------------------------------------------------------------------------------


async def feed_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    event: Optional[str] = None
    async for line in response.content:
        line = line.rstrip(b"\n")
        if line.startswith(b"event: "):
            event = line[7:].decode()
        elif line.startswith(b"data: ") and event is not None:
            yield event, json.loads(line[6:])
            event = None


async def test_the_feed_streams_a_request_as_it_happens(make_gateway: GatewayFactory) -> None:
    gateway = await inspected(make_gateway)
    gate = asyncio.Event()
    deltas = reasoning("Hmm.") + content("Half of it, then the rest.")
    gateway.upstream.queue(Generation(deltas=deltas, gate_before=len(deltas) - 2, gate=gate))

    async def client() -> bytes:
        async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as r:
            return await r.read()

    streaming = asyncio.ensure_future(client())
    inspector = gateway.runner.app[INSPECTOR_KEY]
    for _ in range(4000):  # until the request has arrived (bounded: a failure must not hang)
        if inspector.live:
            break
        await asyncio.sleep(0.005)
    [rid] = inspector.live
    entries: list[Any] = []
    async with aiohttp.ClientSession() as viewer:
        async with viewer.get(f"{gateway.url}/inspect/api/feed?watch={rid}", headers=ADMIN) as feed:
            assert feed.headers["Content-Type"].startswith("text/event-stream")
            events = feed_events(feed)
            kind, listed = await anext(events)
            assert kind == "list" and [s["id"] for s in listed] == [rid] and listed[0]["status"] == "live"
            kind, detail = await anext(events)
            assert kind == "detail" and detail["summary"]["id"] == rid
            entries += detail["entries"]
            gate.set()
            async for kind, data in events:
                if kind == "entries":
                    entries += data
                    if data[-1][1] == "end":
                        break
                else:
                    assert kind == "summary" and data["id"] == rid
    await streaming
    # snapshot + live entries: every entry once, in order, the same as the export
    assert entries == (await export(gateway, rid))["entries"]
    assert not inspector.viewers  # the viewer left: nothing is kept for it


async def test_sessions_group_requests(make_gateway: GatewayFactory) -> None:
    gateway = await inspected(make_gateway)
    cookie = "VLLMModel___policy_model=" + base64.b64encode(b'{"session_id": "gym-7"}').decode().rstrip("=") + ".x.y"
    sent = [({"x-session-id": "run-1"}, {"input": "a"}), ({}, {"input": "b", "prompt_cache_key": "pck-9"}),
            ({"Cookie": cookie}, {"input": "c"}), ({}, {"input": "d"})]
    for headers, body in sent:
        async with gateway.session.post(gateway.url + "/v1/responses", headers=headers, json=body) as response:
            assert response.status == 200
            await ended(gateway, response.headers["X-Request-Id"])
    listed = await summaries(gateway)
    assert [(s["session"], s["session_source"]) for s in listed] == [
        ("run-1", "header"), ("pck-9", "prompt_cache_key"), ("gym-7", "cookie"), (None, None)]
    assert listed[2]["session"] == "gym-7"


async def test_stored_turns_join_their_session(make_gateway: GatewayFactory) -> None:
    """With the response store: a turn continuing a response (previous_response_id) joins that
    response's session; the turns of a conversation are one session."""
    gateway = await inspected(make_gateway)
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "a"},
                                    headers={"x-session-id": "agent-3"}) as response:
        first = await response.json()
        await ended(gateway, response.headers["X-Request-Id"])
    async with gateway.session.post(gateway.url + "/v1/responses",
                                    json={"input": "b", "previous_response_id": first["id"]}) as response:
        assert response.status == 200, await response.text()
        second = response.headers["X-Request-Id"]
    async with gateway.session.post(gateway.url + "/v1/conversations", json={}) as response:
        conversation = (await response.json())["id"]
    async with gateway.session.post(gateway.url + "/v1/responses",
                                    json={"input": "c", "conversation": conversation}) as response:
        assert response.status == 200, await response.text()
        third = response.headers["X-Request-Id"]
    assert (await ended(gateway, second))["summary"]["session"] == "agent-3"
    summary = (await ended(gateway, third))["summary"]
    assert (summary["session"], summary["session_source"]) == (conversation, "conversation")


@pytest.mark.real_model
async def test_a_real_model_stream_is_recorded(make_gateway: GatewayFactory, llama_server: str) -> None:
    """The real llama.cpp server's stream, as the inspector keeps it: its reads rebuild vLLM-shaped
    chunks, the events are what the client got, the summary has the usage."""
    from gateway.backends.llama_cpp import MODEL_ALIAS

    gateway = await make_gateway("gateway.upstream_flavour=llama.cpp", "gateway.inspect=true",
                                 f"gateway.inspect_admin_key={ADMIN_KEY}", base_url=llama_server, model=MODEL_ALIAS)
    body = {"model": MODEL_ALIAS, "input": "Count from one to five.", "stream": True, "max_output_tokens": 24,
            "temperature": 0}
    async with gateway.session.post(gateway.url + "/v1/responses", json=body) as response:
        assert response.status == 200
        events = parse_sse(await response.read())
        rid = response.headers["X-Request-Id"]
    record = await ended(gateway, rid)
    summary = record["summary"]
    assert summary["status"] in ("completed", "incomplete") and summary["output_tokens"] > 0
    assert summary["ttft_ms"] is not None and summary["duration_ms"] >= summary["ttft_ms"]
    upstream = "".join(payload for _, kind, payload in record["entries"] if kind == "read")
    chunks = [json.loads(line[6:]) for line in upstream.split("\n") if line.startswith("data: {")]
    text = "".join((c["choices"][0]["delta"].get("content") or "") for c in chunks if c.get("choices"))
    assert text and text.strip() in events[-1]["response"]["output"][-1]["content"][0]["text"]
    assert [e for _, kind, payload in record["entries"] if kind == "sent" for e in payload] == events
