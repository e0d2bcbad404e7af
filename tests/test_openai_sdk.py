"""The real ``openai`` SDK as the client of the running gateway.

test_server.py proves the wire format with a hand-written contract checker; this file proves the
thing users actually depend on: that the official SDK, with its typed models, its stream
accumulator (``responses.stream``, which asserts ordering, indices and item identities on its own)
and its error classes, accepts what the gateway sends. A field the SDK cannot parse, an event it
cannot place, or an error body it cannot map fails here even when the contract checker is happy.

The gateway runs on the test's event loop, so the sync ``OpenAI`` client is driven from a worker
thread (``asyncio.to_thread``); calling it on the loop would deadlock. Every client is built with
``max_retries=0`` so that an error surfaces at once instead of after backoff.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import openai
import pytest
from openai import AsyncOpenAI, OpenAI
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseReasoningItem,
    ResponseReasoningSummaryPartAddedEvent,
    ResponseReasoningSummaryPartDoneEvent,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseReasoningSummaryTextDoneEvent,
    ResponseReasoningTextDeltaEvent,
    ResponseReasoningTextDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from pydantic import BaseModel

from tests.conftest import MODEL, Gateway, GatewayFactory, free_port
from tests.contract import StreamChecker
from tests.fake_vllm import CONTEXT_OVERFLOW_MESSAGE, Generation, content, reasoning, tool_call

WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": False,
}

# --- scripted generations -------------------------------------------------------------------------
# Builders, not constants: a Generation is consumed (popped) by the fake, and several tests queue
# the same output twice to compare two client paths on identical upstream bytes.


def plain() -> Generation:
    # Distinctive token counts, so that usage is proven to come from vLLM's usage chunk.
    return Generation(deltas=content("Hello there, how can I help?"), prompt_tokens=31, completion_tokens=17)


def think_tags() -> Generation:
    # Qwen3 without a server-side reasoning parser: reasoning arrives inside content, tags cut at
    # arbitrary characters (size=3), with the newlines the chat template puts around the block.
    return Generation(deltas=content("<think>\nThe user greets me.\n</think>\n\nHi!", size=3))


def reasoning_field() -> Generation:
    # vLLM >= 0.10 with --reasoning-parser: reasoning in ``delta.reasoning``.
    return Generation(deltas=reasoning("Thinking hard.") + content("Done."))


def two_calls() -> Generation:
    # Two parallel calls, as vLLM's hermes parser streams them: ids come from the upstream and must
    # reach the client unchanged (the client sends them back with the tool outputs).
    deltas = (tool_call(0, "get_weather", '{"city": "Paris"}', call_id="chatcmpl-tool-paris")
              + tool_call(1, "get_weather", '{"city": "Rome"}', call_id="chatcmpl-tool-rome"))
    return Generation(deltas=deltas, finish_reason="tool_calls", prompt_tokens=40, completion_tokens=22)


def mixed() -> Generation:
    # One of each item type: reasoning, message, function call.
    deltas = (reasoning("Plan it.") + content("Sure, checking.")
              + tool_call(0, "get_weather", '{"city": "Lima"}', call_id="chatcmpl-tool-lima"))
    return Generation(deltas=deltas, finish_reason="tool_calls", prompt_tokens=50, completion_tokens=9)


# --- helpers --------------------------------------------------------------------------------------


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key="sk-anything", max_retries=0) as c:
        yield c


def sync_client(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key="sk-anything", max_retries=0)


def summary(response: Response) -> list[tuple]:
    """The output as (type, text-or-call) tuples: what a caller reads, without generated ids."""
    out: list[tuple] = []
    for item in response.output:
        if isinstance(item, ResponseReasoningItem):
            out.append(("reasoning", [part.text for part in item.summary], item.status))
        elif isinstance(item, ResponseOutputMessage):
            out.append(("message", [(part.type, getattr(part, "text", None)) for part in item.content], item.status))
        elif isinstance(item, ResponseFunctionToolCall):
            out.append(("function_call", item.call_id, item.name, item.arguments, item.status))
        else:  # pragma: no cover - the gateway emits no other item type
            out.append(("unexpected", type(item).__name__))
    return out


def comparable(response: Response) -> dict[str, Any]:
    """A Response as JSON minus what legitimately differs between two runs (ids, timestamps) and
    the fields the SDK's stream accumulator adds on top of the wire data (``parsed`` on text parts,
    ``parsed_arguments`` on calls: ParsedResponse extras, not gateway output)."""
    data = response.model_dump(mode="json")
    data.pop("id")
    data.pop("created_at")
    data.pop("completed_at", None)
    for item in data["output"]:
        item.pop("id")
        item.pop("parsed_arguments", None)
        for part in item.get("content") or []:
            part.pop("parsed", None)
    return data


def collapse(types: list[str]) -> list[str]:
    """Event types with runs of the same delta folded into one: how many deltas a text is cut into
    depends on chunking and whitespace holding, the order of everything else does not."""
    out: list[str] = []
    for kind in types:
        if not (out and out[-1] == kind and kind.endswith(".delta")):
            out.append(kind)
    return out


MIXED_EVENT_SEQUENCE = [
    "response.created",
    "response.in_progress",
    # reasoning item (summary presentation, the default)
    "response.output_item.added",
    "response.reasoning_summary_part.added",
    "response.reasoning_summary_text.delta",
    "response.reasoning_summary_text.done",
    "response.reasoning_summary_part.done",
    "response.output_item.done",
    # message item
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    # function call item
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
    "response.completed",
]


def assert_mixed_output(response: Response) -> None:
    assert summary(response) == [
        ("reasoning", ["Plan it."], "completed"),
        ("message", [("output_text", "Sure, checking.")], "completed"),
        ("function_call", "chatcmpl-tool-lima", "get_weather", '{"city": "Lima"}', "completed"),
    ]
    assert response.status == "completed"
    assert response.output_text == "Sure, checking."
    assert response.usage is not None
    assert (response.usage.input_tokens, response.usage.output_tokens, response.usage.total_tokens) == (50, 9, 59)


# --- non-streaming create() -----------------------------------------------------------------------


async def test_create_plain_text(client: AsyncOpenAI, gateway: Gateway) -> None:
    gateway.upstream.queue(plain())
    response = await client.responses.create(model="anything", input="hi")
    assert isinstance(response, Response)
    assert response.object == "response" and response.status == "completed"
    assert response.id.startswith("resp_") and response.output[0].id.startswith("msg_")
    # The configured model is what ran, whatever the client asked for.
    assert response.model == MODEL
    assert summary(response) == [("message", [("output_text", "Hello there, how can I help?")], "completed")]
    assert response.output_text == "Hello there, how can I help?"
    assert response.error is None and response.incomplete_details is None
    usage = response.usage
    assert usage is not None
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (31, 17, 48)
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0
    assert gateway.upstream.last_body["stream"] is False
    assert gateway.upstream.last_body["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    "generation, thought, answer",
    [(think_tags, "The user greets me.", "Hi!"), (reasoning_field, "Thinking hard.", "Done.")],
    ids=["think_tags", "reasoning_field"],
)
async def test_create_reasoning(client: AsyncOpenAI, gateway: Gateway, generation: Any, thought: str,
                                answer: str) -> None:
    gateway.upstream.queue(generation())
    response = await client.responses.create(model="m", input="hi")
    assert summary(response) == [("reasoning", [thought], "completed"),
                                 ("message", [("output_text", answer)], "completed")]
    reasoning_item = response.output[0]
    assert isinstance(reasoning_item, ResponseReasoningItem) and reasoning_item.id.startswith("rs_")
    assert reasoning_item.summary[0].type == "summary_text"
    assert reasoning_item.content is None  # the summary presentation carries no raw reasoning_text
    # output_text is the answer only: reasoning must not leak into it (think tags least of all).
    assert response.output_text == answer


async def test_create_two_parallel_tool_calls(client: AsyncOpenAI, gateway: Gateway) -> None:
    gateway.upstream.queue(two_calls())
    response = await client.responses.create(model="m", input="weather in Paris and Rome?", tools=[WEATHER_TOOL])
    assert summary(response) == [
        ("function_call", "chatcmpl-tool-paris", "get_weather", '{"city": "Paris"}', "completed"),
        ("function_call", "chatcmpl-tool-rome", "get_weather", '{"city": "Rome"}', "completed"),
    ]
    calls = response.output
    assert all(isinstance(c, ResponseFunctionToolCall) and c.id and c.id.startswith("fc_") for c in calls)
    assert calls[0].id != calls[1].id
    assert [json.loads(c.arguments) for c in calls] == [{"city": "Paris"}, {"city": "Rome"}]  # type: ignore[union-attr]
    assert response.output_text == ""
    assert response.usage is not None and (response.usage.input_tokens, response.usage.output_tokens) == (40, 22)
    # The request echo the SDK parses back (tools are typed FunctionTool models).
    assert [t.name for t in response.tools] == ["get_weather"]  # type: ignore[union-attr]
    assert gateway.upstream.last_body["tools"][0]["function"]["name"] == "get_weather"


async def test_tool_round_trip_with_sdk_output_items_as_input(client: AsyncOpenAI, gateway: Gateway) -> None:
    """The SDK idiom for a tool loop: append ``response.output`` (SDK models, with ids, statuses and
    whatever fields the SDK adds) to the input, then the tool results. The gateway must accept that
    serialisation and rebuild one assistant turn from it."""
    gateway.upstream.queue(mixed(), plain())
    first = await client.responses.create(model="m", input="weather in Lima?", tools=[WEATHER_TOOL])
    call = first.output[2]
    assert isinstance(call, ResponseFunctionToolCall)
    history: list[Any] = [{"role": "user", "content": "weather in Lima?"}, *first.output,
                          {"type": "function_call_output", "call_id": call.call_id, "output": "18C, cloudy"}]
    second = await client.responses.create(model="m", input=history, tools=[WEATHER_TOOL])
    assert second.output_text == "Hello there, how can I help?"
    assert gateway.upstream.last_body["messages"] == [
        {"role": "user", "content": "weather in Lima?"},
        {"role": "assistant", "content": "Sure, checking.", "reasoning_content": "Plan it.", "reasoning": "Plan it.",
         "tool_calls": [{"id": "chatcmpl-tool-lima", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Lima"}'}}]},
        {"role": "tool", "tool_call_id": "chatcmpl-tool-lima", "content": "18C, cloudy"},
    ]


async def test_extra_body_sampling_reaches_vllm(client: AsyncOpenAI, gateway: Gateway) -> None:
    """vLLM's sampling extensions have no SDK parameter: users pass them in ``extra_body``, which
    the SDK merges into the top level of the request; they must arrive in vLLM's body."""
    gateway.upstream.queue(plain())
    response = await client.responses.create(
        model="m", input="hi", instructions="Be brief.", temperature=0.3, reasoning={"effort": "low"},
        extra_body={"top_k": 20, "repetition_penalty": 1.05, "chat_template_kwargs": {"enable_thinking": False}},
    )
    body = gateway.upstream.last_body
    assert (body["top_k"], body["repetition_penalty"]) == (20, 1.05)
    # NeMo Gym's forward_request_chat_template_kwargs defaults to false: the request's own are dropped.
    assert "chat_template_kwargs" not in body
    assert body["reasoning_effort"] == "low" and body["temperature"] == 0.3
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert response.instructions == "Be brief." and response.temperature == 0.3


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_non_ascii_text_survives(client: AsyncOpenAI, gateway: Gateway, stream: bool) -> None:
    # Multi-byte characters cut into 3-character deltas, and U+2028 (a line separator to some JSON
    # readers, not to SSE): the SDK must decode exactly what the model wrote.
    text = "Grüße 👋 你好\u2028done"
    gateway.upstream.queue(Generation(deltas=content(text, size=3)))
    if stream:
        async with client.responses.stream(model="m", input="hi") as s:
            response: Response = await s.get_final_response()
    else:
        response = await client.responses.create(model="m", input="hi")
    assert response.output_text == text


# --- responses.stream(): the SDK's accumulating helper ------------------------------------------


async def test_stream_helper_event_sequence_and_final_equals_create(client: AsyncOpenAI, gateway: Gateway) -> None:
    gateway.upstream.queue(mixed(), mixed())
    async with client.responses.stream(model="m", input="weather in Lima?", tools=[WEATHER_TOOL]) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    assert gateway.upstream.requests[0]["body"]["stream"] is True

    assert collapse([e.type for e in events]) == MIXED_EVENT_SEQUENCE
    assert [e.sequence_number for e in events] == list(range(len(events)))
    # The helper's own accumulation (``snapshot``) agrees with what the gateway says at the end.
    text_deltas = [e for e in events if isinstance(e, ResponseTextDeltaEvent)]
    assert text_deltas[-1].snapshot == "Sure, checking."
    arg_deltas = [e for e in events if isinstance(e, ResponseFunctionCallArgumentsDeltaEvent)]
    assert arg_deltas[-1].snapshot == '{"city": "Lima"}'
    assert "".join(e.delta for e in events if isinstance(e, ResponseReasoningSummaryTextDeltaEvent)) == "Plan it."
    # Every event of an item names that item's id, the one output_item.added announced.
    added = [e for e in events if isinstance(e, ResponseOutputItemAddedEvent)]
    assert [e.item.type for e in added] == ["reasoning", "message", "function_call"]
    ids_by_index = {e.output_index: e.item.id for e in added}
    for event in events:
        if hasattr(event, "item_id"):
            assert event.item_id == ids_by_index[event.output_index], event.type  # type: ignore[union-attr]
    assert [item.id for item in final.output] == [ids_by_index[i] for i in range(3)]

    assert_mixed_output(final)
    whole = await client.responses.create(model="m", input="weather in Lima?", tools=[WEATHER_TOOL])
    assert gateway.upstream.last_body["stream"] is False
    assert comparable(final) == comparable(whole)


async def test_stream_helper_incomplete(client: AsyncOpenAI, gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("<think>a</think>partial answ"), finish_reason="length"))
    async with client.responses.stream(model="m", input="q", max_output_tokens=5) as stream:
        events = [event async for event in stream]
        # The SDK only builds a final response from response.completed; an incomplete response is
        # read from its terminal event instead (documented SDK behaviour, not a gateway choice).
        with pytest.raises(RuntimeError, match="response.completed"):
            await stream.get_final_response()
    terminal = events[-1]
    assert isinstance(terminal, ResponseIncompleteEvent)
    assert terminal.response.status == "incomplete"
    assert terminal.response.incomplete_details is not None
    assert terminal.response.incomplete_details.reason == "max_output_tokens"
    assert terminal.response.output_text == "partial answ"
    assert terminal.response.output[-1].status == "incomplete"  # type: ignore[union-attr]


async def test_stream_helper_mid_stream_upstream_error(client: AsyncOpenAI, gateway: Gateway) -> None:
    """vLLM reports an engine failure as an ``{"error": ...}`` data line mid-stream. The gateway
    turns it into an ``error`` event then ``response.failed``.

    Observed SDK behaviour: iteration does NOT raise. The SDK only raises ``APIError`` for an SSE
    payload with a top-level ``"error"`` key, and neither the Responses ``error`` event (fields
    code/message/param at top level) nor ``response.failed`` (error under ``response``) has one;
    both are yielded as typed events. Only ``get_final_response()`` raises, for want of
    ``response.completed``. A gateway that sent vLLM's raw ``{"error": {...}}`` line through would
    instead make the SDK raise ``APIError`` here, losing the partial output.
    """
    gateway.upstream.queue(Generation(deltas=content("Hello world"), stream_error_after=2,
                                      error_message="CUDA out of memory"))
    async with client.responses.stream(model="m", input="q") as stream:
        events = [event async for event in stream]
        with pytest.raises(RuntimeError, match="response.completed"):
            await stream.get_final_response()
    error, failed = events[-2:]
    assert isinstance(error, ResponseErrorEvent)
    assert error.code == "upstream_error" and "CUDA out of memory" in error.message
    assert isinstance(failed, ResponseFailedEvent)
    assert failed.response.status == "failed"
    assert failed.response.error is not None
    assert failed.response.error.code == "upstream_error" and "CUDA out of memory" in failed.response.error.message
    # What was generated before the failure is kept, closed as incomplete.
    assert summary(failed.response) == [("message", [("output_text", "Hello wo")], "incomplete")]


async def test_stream_helper_raw_reasoning_presentation(make_gateway: GatewayFactory) -> None:
    """With ``reasoning_presentation=raw`` reasoning streams as reasoning_text content parts, which
    the SDK types differently from summaries (and which its accumulator does not track itself, so
    the item must arrive whole in output_item.done / response.completed)."""
    gateway = await make_gateway("gateway.reasoning_presentation=raw")
    gateway.upstream.queue(Generation(deltas=content("<think>why not</think>because")))
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key="sk-anything", max_retries=0) as client:
        async with client.responses.stream(model="m", input="q") as stream:
            events = [event async for event in stream]
            final = await stream.get_final_response()
    assert "".join(e.delta for e in events if isinstance(e, ResponseReasoningTextDeltaEvent)) == "why not"
    assert [e.text for e in events if isinstance(e, ResponseReasoningTextDoneEvent)] == ["why not"]
    reasoning_item = final.output[0]
    assert isinstance(reasoning_item, ResponseReasoningItem)
    assert reasoning_item.summary == [] and reasoning_item.content is not None
    assert [(part.type, part.text) for part in reasoning_item.content] == [("reasoning_text", "why not")]
    assert final.output_text == "because"


# --- create(stream=True): raw typed events --------------------------------------------------------


async def test_raw_stream_events_are_typed_and_lossless(client: AsyncOpenAI, gateway: Gateway) -> None:
    """Each SSE event must parse into its specific SDK class (an unknown or malformed event would
    come back as a bare/loose model), and dumping it back (``exclude_unset``: only what was on the
    wire) must give exactly the raw event the gateway sent, which then passes the contract."""
    gateway.upstream.queue(mixed(), mixed())
    stream = await client.responses.create(model="m", input="q", tools=[WEATHER_TOOL], stream=True)
    events = [event async for event in stream]
    raw_events, _ = await gateway.stream({"input": "q", "tools": [WEATHER_TOOL]})

    expected_classes = {
        "response.created": ResponseCreatedEvent,
        "response.in_progress": ResponseInProgressEvent,
        "response.output_item.added": ResponseOutputItemAddedEvent,
        "response.output_item.done": ResponseOutputItemDoneEvent,
        "response.reasoning_summary_part.added": ResponseReasoningSummaryPartAddedEvent,
        "response.reasoning_summary_part.done": ResponseReasoningSummaryPartDoneEvent,
        "response.reasoning_summary_text.delta": ResponseReasoningSummaryTextDeltaEvent,
        "response.reasoning_summary_text.done": ResponseReasoningSummaryTextDoneEvent,
        "response.content_part.added": ResponseContentPartAddedEvent,
        "response.content_part.done": ResponseContentPartDoneEvent,
        "response.output_text.delta": ResponseTextDeltaEvent,
        "response.output_text.done": ResponseTextDoneEvent,
        "response.function_call_arguments.delta": ResponseFunctionCallArgumentsDeltaEvent,
        "response.function_call_arguments.done": ResponseFunctionCallArgumentsDoneEvent,
        "response.completed": ResponseCompletedEvent,
    }
    assert collapse([e.type for e in events]) == MIXED_EVENT_SEQUENCE
    for event in events:
        assert type(event) is expected_classes[event.type], event.type
    items = [e.item for e in events if isinstance(e, ResponseOutputItemDoneEvent)]
    assert [type(i) for i in items] == [ResponseReasoningItem, ResponseOutputMessage, ResponseFunctionToolCall]
    args_done = [e for e in events if isinstance(e, ResponseFunctionCallArgumentsDoneEvent)][0]
    assert (args_done.name, args_done.arguments) == ("get_weather", '{"city": "Lima"}')
    completed = events[-1]
    assert isinstance(completed, ResponseCompletedEvent)
    assert_mixed_output(completed.response)

    checker = StreamChecker()
    dumped = [event.model_dump(mode="json", exclude_unset=True) for event in events]
    for event in dumped:  # the SDK types the timestamps as floats; on the wire they are integers
        for key in ("created_at", "completed_at"):
            if isinstance(event.get("response", {}).get(key), float):
                event["response"][key] = int(event["response"][key])
    for event in dumped:
        checker.feed(event)
    assert checker.final is not None and checker.final["status"] == "completed"

    def without_ids(value: Any) -> Any:
        # ids are random per request; the timestamps may tick between the two requests.
        if isinstance(value, dict):
            return {k: without_ids(v) for k, v in value.items()
                    if k not in ("id", "item_id", "created_at", "completed_at")}
        if isinstance(value, list):
            return [without_ids(v) for v in value]
        return value

    assert without_ids(dumped) == without_ids(raw_events)


async def test_raw_stream_mid_stream_error_events(client: AsyncOpenAI, gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=reasoning("Thinking") + content("Hi"), stream_error_after=1,
                                      error_message="engine died"))
    stream = await client.responses.create(model="m", input="q", stream=True)
    events = [event async for event in stream]
    assert [type(e) for e in events] == [
        ResponseCreatedEvent, ResponseInProgressEvent, ResponseOutputItemAddedEvent,
        ResponseReasoningSummaryPartAddedEvent, ResponseReasoningSummaryTextDeltaEvent,
        ResponseReasoningSummaryTextDoneEvent, ResponseReasoningSummaryPartDoneEvent,
        ResponseOutputItemDoneEvent, ResponseErrorEvent, ResponseFailedEvent,
    ]
    assert events[-2].message == "engine died"  # type: ignore[union-attr]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and summary(failed) == [("reasoning", ["Thin"], "incomplete")]


# --- the sync client ------------------------------------------------------------------------------


async def test_sync_client_create_and_stream(gateway: Gateway) -> None:
    gateway.upstream.queue(two_calls(), mixed())

    def run() -> tuple[Response, list[Any], Response]:
        with sync_client(gateway) as client:
            created = client.responses.create(model="m", input="weather?", tools=[WEATHER_TOOL])
            with client.responses.stream(model="m", input="weather?", tools=[WEATHER_TOOL]) as stream:
                events = list(stream)
                final = stream.get_final_response()
        return created, events, final

    created, events, final = await asyncio.to_thread(run)
    assert summary(created) == [
        ("function_call", "chatcmpl-tool-paris", "get_weather", '{"city": "Paris"}', "completed"),
        ("function_call", "chatcmpl-tool-rome", "get_weather", '{"city": "Rome"}', "completed"),
    ]
    assert collapse([e.type for e in events]) == MIXED_EVENT_SEQUENCE
    assert_mixed_output(final)


async def test_sync_client_raw_stream(gateway: Gateway) -> None:
    gateway.upstream.queue(plain())

    def run() -> list[Any]:
        with sync_client(gateway) as client:
            return list(client.responses.create(model="m", input="hi", stream=True))

    events = await asyncio.to_thread(run)
    assert "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent)) == "Hello there, how can I help?"
    assert isinstance(events[-1], ResponseCompletedEvent)
    assert events[-1].response.output_text == "Hello there, how can I help?"


# --- incomplete -----------------------------------------------------------------------------------


async def test_create_incomplete_on_length(client: AsyncOpenAI, gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("<think>a</think>partial answ"), finish_reason="length"))
    response = await client.responses.create(model="m", input="q", max_output_tokens=5)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.max_output_tokens == 5
    assert response.output_text == "partial answ"
    assert response.output[-1].status == "incomplete"  # type: ignore[union-attr]
    assert gateway.upstream.last_body["max_tokens"] == 5


async def test_context_overflow_is_an_empty_incomplete_response(client: AsyncOpenAI, gateway: Gateway) -> None:
    # A prompt longer than the context is not an SDK exception (NeMo Gym's rollouts go on).
    gateway.upstream.queue(Generation(status=400, error_message=CONTEXT_OVERFLOW_MESSAGE))
    response = await client.responses.create(model="m", input="very long")
    assert response.status == "incomplete" and response.output == [] and response.output_text == ""
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"


# --- structured output ----------------------------------------------------------------------------


class Weather(BaseModel):
    city: str
    temperature_c: float
    conditions: list[str]


WEATHER_JSON = '{"city": "Lima", "temperature_c": 18.5, "conditions": ["cloudy", "humid"]}'
WEATHER_PARSED = Weather(city="Lima", temperature_c=18.5, conditions=["cloudy", "humid"])


def assert_json_schema_sent(body: dict[str, Any]) -> None:
    response_format = body["response_format"]
    assert response_format["type"] == "json_schema"
    json_schema = response_format["json_schema"]
    assert json_schema["name"] == "Weather" and json_schema["strict"] is True
    assert json_schema["schema"]["required"] == ["city", "temperature_c", "conditions"]
    assert json_schema["schema"]["additionalProperties"] is False


async def test_parse_structured_output(client: AsyncOpenAI, gateway: Gateway) -> None:
    # Reasoning first, as Qwen3 does: it must go to its own item, not into the JSON being parsed.
    gateway.upstream.queue(Generation(deltas=content("<think>Need JSON.</think>" + WEATHER_JSON, size=7)))
    response = await client.responses.parse(model="m", input="weather in Lima as JSON", text_format=Weather)
    assert response.output_parsed == WEATHER_PARSED
    assert response.output_text == WEATHER_JSON
    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert_json_schema_sent(gateway.upstream.last_body)
    # The request's format is echoed back, as OpenAI does.
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"


async def test_stream_helper_structured_output(client: AsyncOpenAI, gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content(WEATHER_JSON, size=6)))
    async with client.responses.stream(model="m", input="weather in Lima as JSON", text_format=Weather) as stream:
        done = [event async for event in stream if isinstance(event, ResponseTextDoneEvent)]
        final = await stream.get_final_response()
    assert done[0].parsed == WEATHER_PARSED
    assert final.output_parsed == WEATHER_PARSED
    assert gateway.upstream.last_body["stream"] is True
    assert_json_schema_sent(gateway.upstream.last_body)


# --- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_bad_request_raises_bad_request_error(client: AsyncOpenAI, gateway: Gateway, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(model="m", input="q", tools=[{"type": "function", "name": ""}], stream=stream)
    error = caught.value
    assert error.status_code == 400
    assert error.param == "tools[0].name" and error.code == "missing_required_parameter"
    assert error.type == "invalid_request_error"
    assert "tools[0].name" in error.message
    assert gateway.upstream.requests == []


async def test_upstream_400_passes_on_as_bad_request_error(client: AsyncOpenAI, gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(status=400, error_message="tool_choice: unknown function 'x'"))
    with pytest.raises(openai.BadRequestError, match="unknown function 'x'"):
        await client.responses.create(model="m", input="q", stream=True)


async def test_upstream_500_raises_internal_server_error(client: AsyncOpenAI, gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(status=500, error_message="engine dead"))
    with pytest.raises(openai.InternalServerError) as caught:
        await client.responses.create(model="m", input="q")
    assert caught.value.status_code == 502 and "engine dead" in caught.value.message


@pytest.mark.parametrize("stream", [False, True], ids=["create", "stream"])
async def test_unreachable_upstream_raises_502_naming_the_url(make_gateway: GatewayFactory, stream: bool) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    gateway = await make_gateway(base_url=dead)
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key="sk-anything", max_retries=0) as client:
        with pytest.raises(openai.InternalServerError) as caught:
            await client.responses.create(model="m", input="q", stream=stream)
    error = caught.value
    assert isinstance(error, openai.APIStatusError) and error.status_code == 502
    assert dead in error.message
    assert error.code == "upstream_unreachable"
