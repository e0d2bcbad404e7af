"""Every field a real client sends to ``POST /v1/responses`` is accepted, and what the Response
echoes is what was used.

The field lists come from the clients themselves: the installed openai SDK's
``ResponseCreateParams`` (read by introspection, so an SDK upgrade that adds a field fails here
until the gateway and the README's request table know it), the fields Codex's
``ResponsesApiRequest`` serializes, what the Agents SDK passes to ``responses.create`` and the
Open Responses ``CreateResponseBody``. The end-to-end tests run the real openai SDK against the
real gateway over sockets, in front of the scripted vLLM, and look at both ends: what vLLM
received and what the client got back.
"""

from __future__ import annotations

import typing
from typing import Any, AsyncIterator

import msgspec
import openai
import orjson
import pytest
from openai import AsyncOpenAI
from openai.types.responses import response_create_params

from gateway.schema import responses as r
from gateway.translate.errors import InvalidRequest
from gateway.translate.request import SAMPLING_DEFAULTS, ConversionSettings, decode_request, plan_chat_request
from tests.conftest import MODEL, Gateway, GatewayFactory
from tests.contract import check_response

# Codex's ResponsesApiRequest (codex-rs/codex-api): every key it serializes over HTTP.
CODEX_FIELDS = {"model", "instructions", "input", "tools", "tool_choice", "parallel_tool_calls", "reasoning", "store",
                "stream", "include", "service_tier", "prompt_cache_key", "text", "client_metadata"}
# The Open Responses specification's CreateResponseBody.
OPEN_RESPONSES_FIELDS = {
    "model", "input", "previous_response_id", "include", "tools", "tool_choice", "metadata", "text", "temperature",
    "top_p", "presence_penalty", "frequency_penalty", "parallel_tool_calls", "stream", "stream_options",
    "background", "max_output_tokens", "max_tool_calls", "reasoning", "safety_identifier", "prompt_cache_key",
    "truncation", "instructions", "store", "service_tier", "top_logprobs",
}
# Refused with a 400 that says why: server-side state (being built in gateway/store) or services
# that only OpenAI's servers have.
REFUSED = {"previous_response_id", "conversation", "background", "prompt", "moderation"}

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}

# One value for every field of ResponseCreateParams, as a client would send it (refused fields at
# a value that asks for nothing: null, or background false).
EVERY_FIELD: dict[str, Any] = {
    "model": "client-model",
    "input": "What is the weather in Paris?",
    "instructions": "Be brief.",
    "tools": [WEATHER_TOOL],
    "tool_choice": "auto",
    "parallel_tool_calls": False,
    "temperature": 0.5,
    "top_p": 0.9,
    "max_output_tokens": 64,
    "top_logprobs": 2,
    "include": ["message.output_text.logprobs", "reasoning.encrypted_content", "web_search_call.action.sources"],
    "reasoning": {"effort": "low", "summary": "auto"},
    "text": {"format": {"type": "text"}, "verbosity": "low"},
    "user": "user-1",
    "metadata": {"task": "t1"},
    "store": True,
    "truncation": "auto",
    "service_tier": "flex",
    "prompt_cache_key": "session-7",
    "prompt_cache_retention": "24h",
    "prompt_cache_options": {"mode": "implicit", "ttl": "30m"},
    "safety_identifier": "hashed-user-1",
    "max_tool_calls": 3,
    "stream_options": {"include_obfuscation": False},
    "context_management": [{"type": "compaction", "compact_threshold": 100000}],
    "image": {"context_compression": "auto"},
    "access_programs": {"cyber": "standard"},
    "background": False,
    "background_options": {"completion_window": "soonest"},
    "previous_response_id": None,
    "conversation": None,
    "prompt": None,
    "moderation": None,
}


def sdk_create_fields() -> set[str]:
    """The keyword fields of the installed openai SDK's ``responses.create`` body."""
    return set(typing.get_type_hints(response_create_params.ResponseCreateParamsBase)) | {"stream"}


def plan(body: dict[str, Any], **settings: Any):
    return plan_chat_request(decode_request(orjson.dumps(body)), ConversionSettings(model=MODEL, **settings),
                             response_id="resp_1", created_at=1)


# --- the field lists --------------------------------------------------------------------------------


def test_every_sdk_create_field_is_known_to_the_gateway() -> None:
    known = set(r.ResponsesRequest.__struct_fields__)
    missing = sdk_create_fields() - known
    assert not missing, f"the openai SDK sends fields the gateway rejects as unknown: {sorted(missing)}"


def test_every_codex_and_open_responses_field_is_known() -> None:
    known = set(r.ResponsesRequest.__struct_fields__)
    assert not (CODEX_FIELDS | OPEN_RESPONSES_FIELDS) - known


def test_the_end_to_end_body_sets_every_sdk_field() -> None:
    """EVERY_FIELD below must keep up with the SDK, or the socket tests would miss a field."""
    assert sdk_create_fields() - {"stream"} <= set(EVERY_FIELD)


@pytest.mark.parametrize("name", sorted(sdk_create_fields() | CODEX_FIELDS | OPEN_RESPONSES_FIELDS))
def test_field_is_accepted_or_refused_with_its_name(name: str) -> None:
    """Each field alone, at a real value: accepted, or a 400 naming the field and saying why."""
    value = {**EVERY_FIELD, "client_metadata": {"x-codex-turn": "1"}, "presence_penalty": 0.5,
             "frequency_penalty": 0.5, "stream": True}.get(name)
    refused_values = {"previous_response_id": "resp_1", "conversation": "conv_1", "background": True,
                      "prompt": {"id": "pmpt_1"}, "moderation": {"model": "omni-moderation-latest"}}
    body = {"input": "hi", name: refused_values.get(name, value)}
    if name in REFUSED:
        with pytest.raises(InvalidRequest) as caught:
            plan(body)
        assert caught.value.param == name and caught.value.code == "unsupported_parameter"
        assert "gateway" in caught.value.message and ":" in caught.value.message  # says why
    else:
        plan(body)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_refused_fields_at_an_empty_value_are_accepted(name: str) -> None:
    plan({"input": "hi", name: False if name == "background" else None})


def test_codex_request_is_accepted() -> None:
    """The body Codex sends on its first turn (fields as codex-rs serializes them)."""
    result = plan({
        "model": "gpt-5-codex", "instructions": "", "input": [
            {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "rules"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        "tools": [WEATHER_TOOL], "tool_choice": "auto", "parallel_tool_calls": False,
        "reasoning": {"effort": "medium", "summary": "auto"}, "store": False, "stream": True,
        "include": ["reasoning.encrypted_content"], "service_tier": "priority", "prompt_cache_key": "conv-uuid",
        "text": {"verbosity": "low"}, "client_metadata": {"x-codex-installation-id": "abc"},
    })
    assert "client_metadata" not in result.body and "service_tier" not in result.body
    assert result.response.prompt_cache_key == "conv-uuid" and result.response.service_tier == "default"


# --- sampling values: sent explicitly, echoed as sent ------------------------------------------------


def test_defaults_are_sent_and_echoed() -> None:
    result = plan({"input": "hi"})
    for key, value in SAMPLING_DEFAULTS.items():
        assert result.body[key] == value
        assert getattr(result.response, key) == value


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({}, 1.0),
        ({"extra_body": {"temperature": 0.6}}, 0.6),  # the config's extra_body beats the default
        ({"extra_body": {"temperature": 0.6}, "metadata_extra": 0.3}, 0.3),  # metadata beats the config
        ({"metadata_extra": 0.3, "request": 0.2}, 0.2),  # the request beats both
        ({"request": 0.2, "sampling_overrides": {"temperature": 0.0}}, 0.0),  # overrides win
    ],
)
def test_echoed_temperature_is_the_one_sent(where: dict[str, Any], expected: float) -> None:
    body: dict[str, Any] = {"input": "hi"}
    if "metadata_extra" in where:
        body["metadata"] = {"extra_body": orjson.dumps({"temperature": where["metadata_extra"]}).decode()}
    if "request" in where:
        body["temperature"] = where["request"]
    settings = {k: v for k, v in where.items() if k in ("extra_body", "sampling_overrides")}
    result = plan(body, **settings)
    assert result.body["temperature"] == result.response.temperature == expected


def test_penalties_from_the_request_are_sent_and_echoed() -> None:
    result = plan({"input": "hi", "presence_penalty": 0.5, "frequency_penalty": -0.25, "top_p": 0.8})
    assert (result.body["presence_penalty"], result.body["frequency_penalty"], result.body["top_p"]) == (0.5, -0.25, 0.8)
    assert (result.response.presence_penalty, result.response.frequency_penalty, result.response.top_p) == (
        0.5, -0.25, 0.8)


def test_a_sampling_value_that_is_not_a_number_is_named() -> None:
    with pytest.raises(InvalidRequest) as caught:
        plan({"input": "hi", "metadata": {"extra_body": '{"top_p": "high"}'}})
    assert caught.value.param == "top_p" and caught.value.code == "invalid_type"


def test_max_output_tokens_echo_follows_the_sent_max_tokens() -> None:
    assert plan({"input": "hi", "max_output_tokens": 9}).response.max_output_tokens == 9
    assert plan({"input": "hi"}, sampling_overrides={"max_tokens": 7}).response.max_output_tokens == 7


def test_function_tools_are_echoed_with_every_key() -> None:
    bare = {"type": "function", "name": "ping"}
    tools = plan({"input": "hi", "tools": [bare, WEATHER_TOOL]}).response.tools
    assert tools == [{"type": "function", "name": "ping", "description": None, "parameters": None, "strict": None},
                     WEATHER_TOOL]


def test_reasoning_items_have_no_null_encrypted_content() -> None:
    item = r.ReasoningItem(id="rs_1", status="completed")
    assert "encrypted_content" not in msgspec.json.decode(msgspec.json.encode(item))


# --- end to end: the openai SDK over sockets ------------------------------------------------------------


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key="sk-anything", max_retries=0) as c:
        yield c


def assert_echo(data: dict[str, Any]) -> None:
    """What the Response says about the request in EVERY_FIELD: what was used here."""
    assert data["model"] == MODEL  # the configured model answers
    assert (data["temperature"], data["top_p"], data["presence_penalty"], data["frequency_penalty"]) == (
        0.5, 0.9, 0.0, 0.0)
    assert (data["top_logprobs"], data["max_output_tokens"], data["max_tool_calls"]) == (2, 64, 3)
    assert (data["safety_identifier"], data["prompt_cache_key"], data["user"]) == ("hashed-user-1", "session-7",
                                                                                   "user-1")
    # Truthful, not parroted: stored (store: true), nothing runs in the background, one tier, no truncation.
    assert (data["store"], data["background"], data["service_tier"], data["truncation"]) == (
        True, False, "default", "disabled")
    assert data["parallel_tool_calls"] is False and data["tools"] == [WEATHER_TOOL]
    assert data["metadata"] == {"task": "t1"} and data["instructions"] == "Be brief."
    assert data["completed_at"] is not None and data["completed_at"] >= data["created_at"]


def assert_upstream_body(body: dict[str, Any]) -> None:
    assert body["model"] == MODEL
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.5, 0.9, 64)
    assert (body["presence_penalty"], body["frequency_penalty"]) == (0.0, 0.0)
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2)
    assert (body["reasoning_effort"], body["user"], body["parallel_tool_calls"]) == ("low", "user-1", False)
    # Nothing that only OpenAI's servers understand reaches vLLM.
    for key in ("store", "service_tier", "prompt_cache_key", "safety_identifier", "max_tool_calls", "include",
                "context_management", "image", "access_programs", "background", "client_metadata", "metadata"):
        assert key not in body, key


async def test_sdk_create_with_every_field(client: AsyncOpenAI, gateway: Gateway) -> None:
    fields = {k: v for k, v in EVERY_FIELD.items() if v is not None}
    raw = await client.responses.with_raw_response.create(**fields)
    response = raw.parse()  # the SDK's typed Response
    assert response.status == "completed" and response.output_text == "Hello from the fake vLLM."
    wire = raw.http_response.json()  # the SDK turns integer timestamps into floats: check the wire too
    check_response(wire)
    assert_echo(wire)
    assert_echo(response.model_dump(mode="json", exclude_unset=True))
    assert_upstream_body(gateway.upstream.last_body)


async def test_sync_sdk_create_with_every_field(gateway: Gateway) -> None:
    """The sync client, from a worker thread (the gateway runs on this test's loop)."""
    import asyncio

    from openai import OpenAI

    fields = {k: v for k, v in EVERY_FIELD.items() if v is not None}

    def create() -> dict[str, Any]:
        with OpenAI(base_url=gateway.url + "/v1", api_key="sk-anything", max_retries=0) as sdk:
            return sdk.responses.with_raw_response.create(**fields).http_response.json()

    wire = await asyncio.to_thread(create)
    check_response(wire)
    assert_echo(wire)
    assert_upstream_body(gateway.upstream.last_body)


async def test_sdk_stream_with_every_field_and_codex_metadata(client: AsyncOpenAI, gateway: Gateway) -> None:
    fields = {k: v for k, v in EVERY_FIELD.items() if v is not None}
    async with client.responses.stream(**fields, extra_body={"client_metadata": {"x-codex-turn": "1"}}) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_response()
    assert final.output_text == "Hello from the fake vLLM."
    assert_echo(final.model_dump(mode="json", exclude_unset=True))
    assert_upstream_body(gateway.upstream.last_body)
    assert gateway.upstream.last_body["stream"] is True


async def test_sdk_created_and_completed_snapshots_agree(gateway: Gateway) -> None:
    """response.created carries the same echo as the terminal Response (minus what only ends have)."""
    events, final = await gateway.stream({k: v for k, v in EVERY_FIELD.items() if v is not None})
    created = events[0]["response"]
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "top_logprobs", "tools",
                "safety_identifier", "prompt_cache_key", "max_tool_calls", "service_tier", "background"):
        assert created[key] == final[key], key
    assert created["completed_at"] is None and isinstance(final["completed_at"], int)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"moderation": {"model": "omni-moderation-latest"}}, "moderation"),
        ({"prompt": {"id": "pmpt_1"}}, "prompt"),
        # background and previous_response_id are the store's (tests/test_store.py)
        ({"prompt_cache_options": {"prewarm": True}}, "prompt_cache_options.prewarm"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
async def test_sdk_refusal_names_the_field(client: AsyncOpenAI, gateway: Gateway, fields: dict[str, Any],
                                           param: str) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="m", input="hi", **fields)
    assert caught.value.param == param and caught.value.code == "unsupported_parameter"
    assert gateway.upstream.requests == []  # refused before anything reached vLLM


async def test_incomplete_response_has_no_completed_at(make_gateway: GatewayFactory) -> None:
    from tests.fake_vllm import Generation, content

    gateway = await make_gateway()
    gateway.upstream.queue(Generation(deltas=content("cut"), finish_reason="length"))
    data = await gateway.create({"input": "hi"})
    assert data["status"] == "incomplete" and data["completed_at"] is None
    check_response(data)


# --- the streamed error event: OpenAI's flat shape, not the spec's nested one -------------------------


async def test_the_sdk_raises_on_a_nested_error_event_so_the_gateway_sends_it_flat() -> None:
    """The Open Responses schema nests the error event's fields (``{"type": "error", "error":
    {...}}``); OpenAI sends them flat, and the openai SDK raises APIError on any event whose data
    has an ``error`` key, so a client would lose ``response.failed``. The gateway sends the flat form
    (test_openai_sdk.py: the SDK yields it as ResponseErrorEvent, then response.failed). Should a
    future SDK stop raising here, the spec's nested form becomes possible: this test says so."""
    from aiohttp import web

    from gateway.server.runner import bound_url

    nested = (b'event: error\ndata: {"type": "error", "sequence_number": 0, "error": {"type": "server_error", '
              b'"code": "upstream_error", "message": "engine died", "param": null}}\n\n')

    async def answer(request: web.Request) -> web.Response:
        return web.Response(body=nested, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/responses", answer)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        async with AsyncOpenAI(base_url=bound_url(runner) + "/v1", api_key="k", max_retries=0) as sdk:
            stream = await sdk.responses.create(model="m", input="hi", stream=True)
            with pytest.raises(openai.APIError, match="engine died"):
                async for _ in stream:
                    pass
    finally:
        await runner.cleanup()


async def test_the_gateway_error_event_is_flat(gateway: Gateway) -> None:
    from tests.fake_vllm import Generation, content

    gateway.upstream.queue(Generation(deltas=content("Hi there"), stream_error_after=1, error_message="engine died"))
    events, final = await gateway.stream({"input": "hi"})
    error = events[-2]
    assert error["type"] == "error" and "error" not in error
    assert (error["code"], error["message"], error["param"]) == ("upstream_error", "engine died", None)
    assert final["status"] == "failed" and final["error"] == {"code": "upstream_error", "message": "engine died"}
