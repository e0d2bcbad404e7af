"""OpenTelemetry traces (gateway.tracing): the spans of a streamed request, of failed ones and of a
retry, collected with the SDK's in-memory exporter, and their GenAI / HTTP attributes."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest

pytest.importorskip("opentelemetry.sdk", reason="the otel extra is not installed")

from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402
from opentelemetry.trace import SpanKind, StatusCode  # noqa: E402

from gateway.server.app import CLIENT_KEY  # noqa: E402
from tests.conftest import GatewayFactory, free_port  # noqa: E402
from tests.fake_vllm import Generation, content, reasoning, tool_call  # noqa: E402

WEATHER_TOOL = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}
_exporter = InMemorySpanExporter()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The process's tracer provider (set once: OpenTelemetry allows one), emptied per test. The
    gateway uses the global provider when the application has set one, as here."""
    if not isinstance(trace.get_tracer_provider(), TracerProvider):
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    _exporter.clear()
    yield _exporter
    _exporter.clear()


async def request_spans(exporter: InMemorySpanExporter, request_id: str) -> tuple[Any, list[Any]]:
    """The request's span and its children, once the request span has ended (just after the client
    read the last byte): waits for that, with a generous bound."""
    for _ in range(2000):
        finished = exporter.get_finished_spans()
        parents = [s for s in finished if s.attributes.get("gateway.request.id") == request_id]
        if parents:
            parent = parents[0]
            children = [s for s in finished if s.parent is not None and s.parent.span_id == parent.context.span_id]
            return parent, sorted(children, key=lambda s: s.start_time)
        await asyncio.sleep(0.005)
    raise AssertionError(f"no span for {request_id}")


async def test_spans_of_a_streamed_request(make_gateway: GatewayFactory, spans: InMemorySpanExporter) -> None:
    gateway = await make_gateway("gateway.tracing=true")
    deltas = reasoning("Think.") + content("Hi.") + tool_call(0, "get_weather", '{"city": "Lima"}')
    gateway.upstream.queue(Generation(deltas=deltas, finish_reason="tool_calls", prompt_tokens=31))
    body = {"input": "q", "stream": True, "tools": [WEATHER_TOOL], "temperature": 0.25, "max_output_tokens": 77,
            "top_p": 0.5}
    async with gateway.session.post(gateway.url + "/v1/responses", json=body,
                                    headers={"x-session-id": "run-5"}) as response:
        assert response.status == 200
        text = await response.text()
        rid = response.headers["X-Request-Id"]
    parent, children = await request_spans(spans, rid)
    assert parent.name == "chat Qwen/Qwen3-8B" and parent.kind is SpanKind.SERVER
    a = parent.attributes
    assert a["gen_ai.operation.name"] == "chat" and a["gen_ai.provider.name"] == "vllm"
    assert a["gen_ai.request.model"] == "Qwen/Qwen3-8B" and a["gen_ai.response.model"] == "Qwen/Qwen3-8B"
    assert a["gen_ai.request.temperature"] == 0.25 and a["gen_ai.request.top_p"] == 0.5
    assert a["gen_ai.request.max_tokens"] == 77
    assert a["gen_ai.usage.input_tokens"] == 31 and a["gen_ai.usage.output_tokens"] == len(deltas)
    assert tuple(a["gen_ai.response.finish_reasons"]) == ("tool_calls",)
    assert a["gen_ai.response.id"] in text  # the Response's id, as the client got it
    assert a["gen_ai.conversation.id"] == "run-5"
    assert a["http.response.status_code"] == 200 and a["gateway.stream"] is True
    assert parent.status.status_code is StatusCode.UNSET and "error.type" not in a
    assert [e.name for e in parent.events] == ["gen_ai.first_chunk"]
    [attempt] = children
    assert attempt.name == "POST" and attempt.kind is SpanKind.CLIENT
    port = int(gateway.upstream.url.rsplit(":", 1)[1].split("/")[0])
    assert attempt.attributes["server.address"] == "127.0.0.1" and attempt.attributes["server.port"] == port
    assert attempt.attributes["url.full"] == gateway.upstream.url + "/chat/completions"
    assert attempt.attributes["http.response.status_code"] == 200
    # the try lasts as long as the answer is read: it ends with the request, inside it
    assert parent.start_time <= attempt.start_time and attempt.end_time <= parent.end_time


async def test_spans_of_failed_requests(make_gateway: GatewayFactory, spans: InMemorySpanExporter) -> None:
    gateway = await make_gateway("gateway.tracing=true")
    # vLLM refuses: the client gets an HTTP error
    gateway.upstream.queue(Generation(status=500, error_message="engine dead"))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as response:
        assert response.status == 502
        refused = response.headers["X-Request-Id"]
    parent, [attempt] = await request_spans(spans, refused)
    assert parent.status.status_code is StatusCode.ERROR and "engine dead" in parent.status.description
    assert parent.attributes["error.type"] == "upstream_error"
    assert parent.attributes["http.response.status_code"] == 502
    assert "gen_ai.usage.output_tokens" not in parent.attributes
    assert attempt.status.status_code is StatusCode.ERROR
    assert attempt.attributes["error.type"] == "500" and attempt.attributes["http.response.status_code"] == 500

    # vLLM fails mid-stream: response.failed
    gateway.upstream.queue(Generation(deltas=content("abcdefgh", size=2), stream_error_after=2, error_message="oom"))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as response:
        assert response.status == 200
        assert "response.failed" in await response.text()
        broken = response.headers["X-Request-Id"]
    parent, [attempt] = await request_spans(spans, broken)
    assert parent.status.status_code is StatusCode.ERROR and "oom" in parent.status.description
    assert parent.attributes["gateway.response.status"] == "failed"
    assert parent.attributes["error.type"]
    assert attempt.attributes["http.response.status_code"] == 200  # the try itself got its answer


async def test_a_retry_is_a_second_child(make_gateway: GatewayFactory, upstream2: Any,
                                         spans: InMemorySpanExporter) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gateway = await make_gateway("gateway.tracing=true", "gateway.retry_backoff_s=0.01",
                                 "gateway.health_check_interval_s=0", base_url=[dead, upstream2.url])
    pool = gateway.runner.app[CLIENT_KEY].pool
    session = pool.key_for(next(b for b in pool.backends if b.url == dead))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q"},
                                    headers={"x-session-id": session}) as response:
        assert response.status == 200
        rid = response.headers["X-Request-Id"]
    parent, children = await request_spans(spans, rid)
    assert [c.attributes["url.full"] for c in children] == [dead + "/chat/completions", upstream2.url + "/chat/completions"]
    assert children[0].status.status_code is StatusCode.ERROR
    assert children[0].attributes["error.type"] == "upstream_unreachable"
    assert children[1].status.status_code is StatusCode.UNSET
    assert parent.status.status_code is StatusCode.UNSET and parent.attributes["gateway.stream"] is False


async def test_spans_of_chat_completions(make_gateway: GatewayFactory, spans: InMemorySpanExporter) -> None:
    """/v1/chat/completions goes through the same observer hook: a span with the body sent to vLLM,
    the answer's usage, and an error for a stream that failed after it started."""
    gateway = await make_gateway("gateway.tracing=true", "gateway.keepalive_interval_s=0.02")
    gateway.upstream.queue(Generation(deltas=content("Hi."), prompt_tokens=9))
    body = {"messages": [{"role": "user", "content": "q"}], "temperature": 0.3, "prompt_cache_key": "run-8"}
    async with gateway.session.post(gateway.url + "/v1/chat/completions", json=body) as response:
        answer = await response.json()
        rid = response.headers["X-Request-Id"]
    parent, [attempt] = await request_spans(spans, rid)
    a = parent.attributes
    assert parent.name == "chat Qwen/Qwen3-8B" and a["url.path"] == "/v1/chat/completions"
    assert a["gen_ai.request.temperature"] == 0.3 and a["gen_ai.conversation.id"] == "run-8"
    assert a["gen_ai.usage.input_tokens"] == 9 and a["gen_ai.usage.output_tokens"] == 1
    assert a["gen_ai.response.id"] == answer["id"] and a["gateway.stream"] is False
    assert parent.status.status_code is StatusCode.UNSET and attempt.name == "POST"

    from tests.test_chat_completions import watch

    gate = asyncio.Event()
    gateway.upstream.queue(Generation(status=400, error_message="refused late", gate=gate))
    watch(gateway, gate)  # vLLM refuses once the stream has started (two keepalives are out)
    async with gateway.session.post(gateway.url + "/v1/chat/completions", json={**body, "stream": True}) as response:
        assert response.status == 200
        assert "event: error" in await response.text()
        rid = response.headers["X-Request-Id"]
    parent, _ = await request_spans(spans, rid)
    assert parent.status.status_code is StatusCode.ERROR and "refused late" in parent.status.description
    assert parent.attributes["error.type"] == "invalid_request_error"  # vLLM sent no code: the type
    assert parent.attributes["http.response.status_code"] == 200
