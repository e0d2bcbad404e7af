"""The real gateway over real sockets against an upstream that sends exactly vLLM's shapes."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from tests.conftest import Gateway, GatewayFactory, free_port
from tests.contract import check_stream, output_texts as texts, parse_sse
from tests.fake_vllm import CONTEXT_OVERFLOW_MESSAGE, Generation, content, reasoning, tool_call

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


async def test_plain_text(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("Hello there, how can I help?")))
    events, final = await gateway.stream({"model": "x", "input": "hi"})
    assert texts(final) == [("message", "Hello there, how can I help?")]
    assert final["status"] == "completed"
    assert final["usage"]["input_tokens"] == 12 and final["usage"]["output_tokens"] == 7
    body = gateway.upstream.last_body
    assert body["model"] == "Qwen/Qwen3-8B"
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}


async def test_reasoning_then_text_from_think_tags(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("<think>\nThe user greets me.\n</think>\n\nHi!", size=3)))
    _, final = await gateway.stream({"input": "hi"})
    assert texts(final) == [("reasoning", "The user greets me."), ("message", "Hi!")]
    assert final["output"][0]["summary"][0]["type"] == "summary_text"


async def test_reasoning_via_delta_reasoning_field(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=reasoning("Thinking hard.") + content("Done.")))
    _, final = await gateway.stream({"input": "hi"})
    assert texts(final) == [("reasoning", "Thinking hard."), ("message", "Done.")]


async def test_reasoning_content_field_of_older_vllm(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=reasoning("Old style.", field_name="reasoning_content") + content("Ok")))
    _, final = await gateway.stream({"input": "hi"})
    assert texts(final) == [("reasoning", "Old style."), ("message", "Ok")]


async def test_implicit_open_thinking(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.reasoning_starts_open=true")
    gateway.upstream.queue(Generation(deltas=content("I should greet back.</think>Hello!", size=5)))
    _, final = await gateway.stream({"input": "hi"})
    assert texts(final) == [("reasoning", "I should greet back."), ("message", "Hello!")]


async def test_stray_close_tag_does_not_leak(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("Answer</think> text", size=3)))
    _, final = await gateway.stream({"input": "hi"})
    assert texts(final) == [("message", "Answer text")]


async def test_raw_reasoning_presentation(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.reasoning_presentation=raw")
    gateway.upstream.queue(Generation(deltas=content("<think>why</think>because")))
    events, final = await gateway.stream({"input": "q"})
    assert final["output"][0]["content"] == [{"type": "reasoning_text", "text": "why"}]
    assert final["output"][0]["summary"] == []
    assert "response.reasoning_text.delta" in {e["type"] for e in events}


async def test_reasoning_parser_off_leaves_tags_in_text(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("+policy_model.vllm_model.uses_reasoning_parser=false")
    gateway.upstream.queue(Generation(deltas=content("<think>hm</think>Yes")))
    _, final = await gateway.stream({"input": "q"})
    assert texts(final) == [("message", "<think>hm</think>Yes")]


async def test_text_then_two_parallel_tool_calls(gateway: Gateway) -> None:
    deltas = (content("Let me check both.")
              + tool_call(0, "get_weather", '{"city": "Paris"}', call_id="chatcmpl-tool-a")
              + tool_call(1, "get_weather", '{"city": "Rome"}', call_id="chatcmpl-tool-b"))
    gateway.upstream.queue(Generation(deltas=deltas, finish_reason="tool_calls"))
    events, final = await gateway.stream({"input": "weather?", "tools": [WEATHER_TOOL]})
    assert texts(final) == [("message", "Let me check both."),
                            ("function_call", 'get_weather({"city": "Paris"})'),
                            ("function_call", 'get_weather({"city": "Rome"})')]
    assert [item.get("call_id") for item in final["output"][1:]] == ["chatcmpl-tool-a", "chatcmpl-tool-b"]
    body = gateway.upstream.last_body
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER_TOOL["parameters"]}}]


async def test_tool_call_only(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=tool_call(0, "get_weather", '{"city": "Oslo"}'), finish_reason="tool_calls"))
    _, final = await gateway.stream({"input": "weather?", "tools": [WEATHER_TOOL], "tool_choice": "required"})
    assert texts(final) == [("function_call", 'get_weather({"city": "Oslo"})')]
    assert gateway.upstream.last_body["tool_choice"] == "required"


@pytest.mark.parametrize("where", ["reasoning", "text"])
async def test_finish_length_gives_incomplete(gateway: Gateway, where: str) -> None:
    deltas = content("<think>long thought") if where == "reasoning" else content("<think>a</think>partial answ")
    gateway.upstream.queue(Generation(deltas=deltas, finish_reason="length"))
    _, final = await gateway.stream({"input": "q", "max_output_tokens": 5})
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][-1]["status"] == "incomplete"
    assert gateway.upstream.last_body["max_tokens"] == 5


async def test_mid_stream_error_becomes_failed(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("Hello world"), stream_error_after=2,
                                      error_message="CUDA out of memory"))
    events, final = await gateway.stream({"input": "q"})
    assert final["status"] == "failed"
    error = [e for e in events if e["type"] == "error"][0]
    assert "CUDA out of memory" in error["message"] and error["code"] == "upstream_error"
    assert final["output"][0]["status"] == "incomplete"


async def test_upstream_drops_connection(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("Hello world, this is long"), drop_after=3))
    events, final = await gateway.stream({"input": "q"})
    assert final["status"] == "failed"
    assert final["error"]["code"] in ("upstream_disconnected", "upstream_incomplete")


async def test_context_length_400_gives_empty_incomplete(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(status=400, error_message=CONTEXT_OVERFLOW_MESSAGE))
    _, final = await gateway.stream({"input": "very long"})
    assert final["status"] == "incomplete" and final["output"] == []
    assert final["incomplete_details"]["reason"] == "max_output_tokens"
    gateway.upstream.queue(Generation(status=400, error_message=CONTEXT_OVERFLOW_MESSAGE))
    response = await gateway.create({"input": "very long"})
    assert response["status"] == "incomplete" and response["output"] == []


async def test_other_upstream_400_is_passed_on(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(status=400, error_message="tool_choice: unknown function 'x'"))
    response = await gateway.post({"input": "q", "stream": True})
    assert response.status == 400
    error = (await response.json())["error"]
    assert "unknown function 'x'" in error["message"] and error["type"] == "invalid_request_error"


async def test_upstream_500_is_502(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(status=500, error_message="engine dead"))
    response = await gateway.post({"input": "q"})
    assert response.status == 502
    assert "engine dead" in (await response.json())["error"]["message"]


async def test_unreachable_upstream_names_the_url(make_gateway: GatewayFactory) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gateway = await make_gateway(base_url=dead)
    for stream in (True, False):
        response = await gateway.post({"input": "q", "stream": stream})
        assert response.status == 502
        error = (await response.json())["error"]
        assert dead in error["message"] and "onnect" in error["message"]
        assert error["code"] == "upstream_unreachable"
    health = await gateway.session.get(gateway.url + "/health")
    assert health.status == 503 and (await health.json())["upstreams"][0]["ok"] is False


async def test_client_disconnect_closes_upstream(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("x" * 400, size=1), delay=0.01))
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as response:
            await response.content.readline()  # the stream has started
    # the client is gone: the gateway must close its upstream request well before the 4 s it would take
    await asyncio.wait_for(gateway.upstream.closed_early.wait(), timeout=2)
    assert gateway.upstream.requests[-1]["closed_early"] is True


async def test_client_disconnect_while_upstream_silent(gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("late"), stall_before=30))
    async with aiohttp.ClientSession() as session:
        async with session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as response:
            await response.content.readline()
    await asyncio.wait_for(gateway.upstream.closed_early.wait(), timeout=2)


async def test_non_streaming_equals_streamed_final(gateway: Gateway) -> None:
    deltas = reasoning("Plan it.") + content("Sure.") + tool_call(0, "get_weather", '{"city": "Lima"}', call_id="c1")
    gateway.upstream.queue(Generation(deltas=deltas, finish_reason="tool_calls"),
                           Generation(deltas=deltas, finish_reason="tool_calls"))
    _, streamed = await gateway.stream({"input": "q", "tools": [WEATHER_TOOL]})
    whole = await gateway.create({"input": "q", "tools": [WEATHER_TOOL]})
    assert gateway.upstream.last_body["stream"] is False

    def without_ids(response: dict) -> dict:
        response = json.loads(json.dumps(response))
        response.pop("id"), response.pop("created_at"), response.pop("completed_at")
        for item in response["output"]:
            item.pop("id")
        return response

    assert without_ids(whole) == without_ids(streamed)


async def test_models_and_health(gateway: Gateway) -> None:
    models = await (await gateway.session.get(gateway.url + "/v1/models")).json()
    assert models["data"][0]["id"] == "Qwen/Qwen3-8B"
    health = await gateway.session.get(gateway.url + "/health")
    assert health.status == 200 and (await health.json())["status"] == "ok"


@pytest.mark.parametrize(
    "body, param, code",
    [
        (b"{not json", None, "invalid_json"),
        (b'{"input": 5}', "input", "invalid_type"),
        (b'{"input": "x", "temprature": 1}', "temprature", "unknown_parameter"),
        (b'{"input": [{"type": "web_search_call"}]}', "input[0].type", "unsupported_value"),
        (b'{"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}',
         "input[0].content[0].type", None),
        (b'{"input": "x", "tools": [{"type": 7}]}', "tools[0].type", "invalid_type"),
        (b'{"input": "x", "tools": [{"type": "function", "name": "f", "parameters": "no"}]}',
         "tools[0].parameters", "invalid_type"),
        (b'{"input": "x", "max_output_tokens": -3}', "max_output_tokens", "integer_below_min_value"),
        (b'{"input": "x", "metadata": {"extra_body": "{oops"}}', "metadata.extra_body", "invalid_value"),
        (b'{"input": "x", "tool_choice": "required"}', "tool_choice", "invalid_value"),
        (b'\xff\xfe{"input": "x"}', None, "invalid_json"),
    ],
)
async def test_bad_requests_get_openai_errors(gateway: Gateway, body: bytes, param: str, code: str) -> None:
    async with gateway.session.post(gateway.url + "/v1/responses", data=body,
                                    headers={"Content-Type": "application/json"}) as response:
        assert response.status == 400
        error = (await response.json())["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    assert gateway.upstream.requests == []  # nothing reached vLLM


async def test_body_over_limit_is_413(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.max_request_bytes=1000")
    response = await gateway.post({"input": "x" * 5000})
    assert response.status == 413
    assert (await response.json())["error"]["code"] == "request_too_large"


async def test_unknown_route_is_json_404(gateway: Gateway) -> None:
    response = await gateway.session.get(gateway.url + "/v1/nothing")
    assert response.status == 404
    assert (await response.json())["error"]["message"]


async def test_api_key_sent_upstream_never_echoed(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("policy_api_key=sk-very-secret-123")
    gateway.upstream.queue(Generation(status=401, error_message="bad key"))
    response = await gateway.post({"input": "q"})
    text = await response.text()
    assert gateway.upstream.requests[-1]["headers"]["Authorization"] == "Bearer sk-very-secret-123"
    assert "sk-very-secret-123" not in text and response.status == 502


async def test_sse_is_written_as_produced(gateway: Gateway) -> None:
    """The first delta reaches the client while the upstream is still generating."""
    gateway.upstream.queue(Generation(deltas=[{"content": "first"}, {"content": " second"}], pauses={1: 4.0}))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as response:
        seen = b""
        while b"response.output_text.delta" not in seen:  # must arrive long before the 4 s pause ends
            seen += await asyncio.wait_for(response.content.readany(), timeout=3)
        rest = await response.read()
    events = parse_sse(seen + rest)
    check_stream(events)
