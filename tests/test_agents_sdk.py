"""The OpenAI Agents SDK (``agents``) as the client of the running gateway.

test_openai_sdk.py proves that the ``openai`` SDK parses what the gateway sends; this file proves
the agent loop built on top of it works end to end: the SDK's ``OpenAIResponsesModel`` sends its
own request shape (strict function schemas, ``include``, ``text.format``), turns the gateway's
output items into run items, runs the tool, and sends everything back as input items
(``reasoning``, ``function_call``, ``function_call_output``, assistant ``message``) that the gateway
must rebuild into one coherent Chat Completions history. The fake upstream records every request
body, so the history the model would see is asserted exactly.

Tests marked ``real_model`` run the same loop against a real llama.cpp server with a small model:
their assertions hold for any sane output and check that the SDK parsed every event and item.

Tracing is disabled (globally and per run) so nothing tries to reach api.openai.com. Every client
is built with ``max_retries=0`` so that an error surfaces at once.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import openai
import pytest
from agents import (
    Agent,
    ModelBehaviorError,
    ModelSettings,
    OpenAIResponsesModel,
    RawResponsesStreamEvent,
    RunConfig,
    Runner,
    RunItemStreamEvent,
    SQLiteSession,
    function_tool,
    set_tracing_disabled,
)
from agents.items import MessageOutputItem, ReasoningItem, ToolCallItem, ToolCallOutputItem
from openai import AsyncOpenAI
from openai.types.responses import (
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionToolCall,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseReasoningTextDeltaEvent,
    ResponseTextDeltaEvent,
)
from openai.types.shared import Reasoning
from pydantic import BaseModel

from tests.conftest import MODEL, Gateway, GatewayFactory
from tests.fake_vllm import Generation, content, reasoning, tool_call

set_tracing_disabled(True)
RUN_CONFIG = RunConfig(tracing_disabled=True)

INSTRUCTIONS = "You are a weather assistant."
QUESTION = "What is the weather in Paris?"
CALL_ID = "chatcmpl-tool-paris-1"
ARGUMENTS = '{"city": "Paris"}'
THOUGHT = "The user wants the weather; I should call get_weather."
FINAL = "It is sunny in Paris, 21 degrees."


# --- the tool -------------------------------------------------------------------------------------


@dataclass
class WeatherTool:
    """``get_weather`` as an Agents SDK function tool that records every call it gets."""

    calls: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        @function_tool
        def get_weather(city: str) -> str:
            """Get the current weather for a city.

            Args:
                city: The name of the city.
            """
            self.calls.append(city)
            return self.output(city)

        self.tool = get_weather

    @staticmethod
    def output(city: str) -> str:
        return f"Sunny in {city}, 21 C"


# --- scripted generations (builders: the fake pops each one) --------------------------------------


def weather_call(with_reasoning: bool) -> Generation:
    """The model thinks (optionally, in vLLM's reasoning field) then calls get_weather(Paris)."""
    deltas = (reasoning(THOUGHT) if with_reasoning else []) + tool_call(0, "get_weather", ARGUMENTS,
                                                                         call_id=CALL_ID)
    return Generation(deltas=deltas, finish_reason="tool_calls", prompt_tokens=40, completion_tokens=15)


def weather_answer() -> Generation:
    return Generation(deltas=content(FINAL), prompt_tokens=70, completion_tokens=9)


# --- helpers --------------------------------------------------------------------------------------


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def weather_agent(client: AsyncOpenAI, tool: WeatherTool, model: str = MODEL, instructions: str = INSTRUCTIONS,
                  settings: ModelSettings | None = None) -> Agent[Any]:
    return Agent(name="weather", instructions=instructions, tools=[tool.tool],
                 model=OpenAIResponsesModel(model=model, openai_client=client),
                 model_settings=settings or ModelSettings())


async def run(agent: Agent[Any], input: Any, streamed: bool) -> tuple[Any, list[Any]]:
    """Runner.run, or Runner.run_streamed with every event consumed; returns (result, events)."""
    if not streamed:
        return await Runner.run(agent, input, run_config=RUN_CONFIG), []
    result = Runner.run_streamed(agent, input, run_config=RUN_CONFIG)
    events = [event async for event in result.stream_events()]
    assert result.is_complete
    return result, events


def raw(events: list[Any], kind: type) -> list[Any]:
    return [e.data for e in events if isinstance(e, RawResponsesStreamEvent) and isinstance(e.data, kind)]


def assistant_call_message(with_reasoning: bool) -> dict[str, Any]:
    """The assistant turn the gateway must rebuild from the SDK's reasoning + function_call items."""
    return {"role": "assistant",
            "tool_calls": [{"id": CALL_ID, "type": "function",
                            "function": {"name": "get_weather", "arguments": ARGUMENTS}}],
            # NeMo Gym 0.7.0's default (reasoning_field: both): the reasoning rides in both fields.
            **({"reasoning_content": THOUGHT, "reasoning": THOUGHT} if with_reasoning else {})}


def without_empty_content(message: dict[str, Any]) -> dict[str, Any]:
    """An assistant message with only tool calls may carry content None, "" or none at all: all
    mean the same to a chat template."""
    return {k: v for k, v in message.items() if not (k == "content" and not v)}


def assert_tool_round_trip_bodies(gateway: Gateway, with_reasoning: bool, streamed: bool) -> None:
    bodies = [r["body"] for r in gateway.upstream.requests]
    assert len(bodies) == 2
    first, second = bodies
    assert first["stream"] is streamed and second["stream"] is streamed
    assert first["messages"] == [{"role": "system", "content": INSTRUCTIONS}, {"role": "user", "content": QUESTION}]
    # The SDK's strict function schema arrives as a Chat Completions tool.
    assert [t["function"]["name"] for t in first["tools"]] == ["get_weather"]
    assert first["tools"][0]["type"] == "function"
    assert first["tools"][0]["function"]["parameters"]["properties"]["city"]["type"] == "string"
    assert first["tools"][0]["function"]["parameters"]["required"] == ["city"]
    assert second["tools"] == first["tools"]
    # The second request carries the whole first turn: the assistant's call (upstream id kept) and
    # the SDK's function_call_output as a tool message answering it.
    messages = second["messages"]
    assert messages[:2] == first["messages"]
    assert len(messages) == 4
    assert without_empty_content(messages[2]) == assistant_call_message(with_reasoning)
    assert messages[3] == {"role": "tool", "tool_call_id": CALL_ID, "content": WeatherTool.output("Paris")}


def assert_round_trip_items(result: Any, with_reasoning: bool) -> None:
    expected = ["tool_call_item", "tool_call_output_item", "message_output_item"]
    assert [item.type for item in result.new_items] == (["reasoning_item"] if with_reasoning else []) + expected
    items = result.new_items[1:] if with_reasoning else result.new_items
    if with_reasoning:
        reasoning_item = result.new_items[0]
        assert isinstance(reasoning_item, ReasoningItem)
        assert [part.text for part in reasoning_item.raw_item.summary] == [THOUGHT]
    call, output, message = items
    assert isinstance(call, ToolCallItem) and isinstance(call.raw_item, ResponseFunctionToolCall)
    assert (call.raw_item.call_id, call.raw_item.name, call.raw_item.arguments) == (CALL_ID, "get_weather", ARGUMENTS)
    assert isinstance(output, ToolCallOutputItem) and output.output == WeatherTool.output("Paris")
    assert isinstance(message, MessageOutputItem)
    # Usage from vLLM's usage chunks, summed by the SDK over the two model calls.
    usage = result.context_wrapper.usage
    assert (usage.requests, usage.input_tokens, usage.output_tokens) == (2, 40 + 70, 15 + 9)
    assert [r.usage.input_tokens for r in result.raw_responses] == [40, 70]


# --- scripted upstream: one tool round trip -------------------------------------------------------


@pytest.mark.parametrize("with_reasoning", [False, True], ids=["plain", "reasoning"])
async def test_run_tool_round_trip(client: AsyncOpenAI, gateway: Gateway, with_reasoning: bool) -> None:
    tool = WeatherTool()
    gateway.upstream.queue(weather_call(with_reasoning), weather_answer())
    result = await Runner.run(weather_agent(client, tool), QUESTION, run_config=RUN_CONFIG)
    assert tool.calls == ["Paris"]
    assert result.final_output == FINAL
    assert_round_trip_items(result, with_reasoning)
    assert_tool_round_trip_bodies(gateway, with_reasoning, streamed=False)


@pytest.mark.parametrize("with_reasoning", [False, True], ids=["plain", "reasoning"])
async def test_run_streamed_tool_round_trip(client: AsyncOpenAI, gateway: Gateway, with_reasoning: bool) -> None:
    tool = WeatherTool()
    gateway.upstream.queue(weather_call(with_reasoning), weather_answer())
    result, events = await run(weather_agent(client, tool), QUESTION, streamed=True)
    assert tool.calls == ["Paris"]
    assert result.final_output == FINAL
    # The answer streamed as text deltas (the fake cuts it into 4-character pieces).
    text_deltas = [e.delta for e in raw(events, ResponseTextDeltaEvent)]
    assert len(text_deltas) > 1 and "".join(text_deltas) == FINAL
    # The call's arguments streamed as deltas too, and add up to the arguments the tool got.
    argument_deltas = [e.delta for e in raw(events, ResponseFunctionCallArgumentsDeltaEvent)]
    assert len(argument_deltas) > 1 and "".join(argument_deltas) == ARGUMENTS
    thought_deltas = [e.delta for e in raw(events, ResponseReasoningSummaryTextDeltaEvent)]
    assert "".join(thought_deltas) == (THOUGHT if with_reasoning else "")
    # Two model calls, each ending with response.completed; run items in order.
    raw_types = [e.data.type for e in events if isinstance(e, RawResponsesStreamEvent)]
    assert raw_types.count("response.created") == 2 and raw_types.count("response.completed") == 2
    assert "response.failed" not in raw_types and "error" not in raw_types
    names = [e.name for e in events if isinstance(e, RunItemStreamEvent)]
    assert names == (["reasoning_item_created"] if with_reasoning else []) + [
        "tool_called", "tool_output", "message_output_created"]
    assert_round_trip_items(result, with_reasoning)
    assert_tool_round_trip_bodies(gateway, with_reasoning, streamed=True)


async def test_parallel_tool_calls_come_back_in_order(client: AsyncOpenAI, gateway: Gateway) -> None:
    tool = WeatherTool()
    calls = (tool_call(0, "get_weather", '{"city": "Paris"}', call_id="chatcmpl-tool-p")
             + tool_call(1, "get_weather", '{"city": "Rome"}', call_id="chatcmpl-tool-r"))
    gateway.upstream.queue(Generation(deltas=calls, finish_reason="tool_calls"), weather_answer())
    result = await Runner.run(weather_agent(client, tool), "Paris and Rome?", run_config=RUN_CONFIG)
    assert sorted(tool.calls) == ["Paris", "Rome"]
    assert result.final_output == FINAL
    messages = gateway.upstream.last_body["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool", "tool"]
    assert [(c["id"], json.loads(c["function"]["arguments"])) for c in messages[2]["tool_calls"]] == [
        ("chatcmpl-tool-p", {"city": "Paris"}), ("chatcmpl-tool-r", {"city": "Rome"})]
    assert [(m["tool_call_id"], m["content"]) for m in messages[3:]] == [
        ("chatcmpl-tool-p", "Sunny in Paris, 21 C"), ("chatcmpl-tool-r", "Sunny in Rome, 21 C")]


# --- multi-turn: the caller keeps the history (NeMo Gym, Codex) -----------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
async def test_multi_turn_history_from_to_input_list(client: AsyncOpenAI, gateway: Gateway, streamed: bool) -> None:
    """Turn 2's input is ``result.to_input_list()`` of turn 1 plus a new user message: SDK-serialised
    output items (ids, statuses, ``encrypted_content: null``, ``logprobs: []``) that the gateway
    must accept and turn into the whole history, in order."""
    tool = WeatherTool()
    agent = weather_agent(client, tool)
    gateway.upstream.queue(weather_call(with_reasoning=True), weather_answer())
    first, _ = await run(agent, QUESTION, streamed)
    history = first.to_input_list()
    assert [item.get("type", "message") for item in history] == [
        "message", "reasoning", "function_call", "function_call_output", "message"]

    follow_up = "And should I take an umbrella?"
    gateway.upstream.queue(Generation(deltas=content("No, no rain is expected.")))
    second, _ = await run(agent, history + [{"role": "user", "content": follow_up}], streamed)
    assert second.final_output == "No, no rain is expected."
    assert tool.calls == ["Paris"]  # turn 2 ran no tool
    assert len(gateway.upstream.requests) == 3
    messages = gateway.upstream.last_body["messages"]
    assert messages == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": "", "reasoning_content": THOUGHT, "reasoning": THOUGHT,
         "tool_calls": [{"id": CALL_ID, "type": "function",
                         "function": {"name": "get_weather", "arguments": ARGUMENTS}}]},
        {"role": "tool", "tool_call_id": CALL_ID, "content": WeatherTool.output("Paris")},
        {"role": "assistant", "content": FINAL},
        {"role": "user", "content": follow_up},
    ]
    # A third turn on top of the second: the history only grows, in order.
    gateway.upstream.queue(Generation(deltas=content("You're welcome.")))
    third, _ = await run(agent, second.to_input_list() + [{"role": "user", "content": "Thanks!"}], streamed)
    assert third.final_output == "You're welcome."
    assert gateway.upstream.last_body["messages"] == messages + [
        {"role": "assistant", "content": "No, no rain is expected."}, {"role": "user", "content": "Thanks!"}]


async def test_multi_turn_with_sdk_session(client: AsyncOpenAI, gateway: Gateway) -> None:
    """The SDK's own client-side memory (``SQLiteSession``) resends the stored items each turn:
    the same history as ``to_input_list()``, serialised from the session's JSON."""
    session = SQLiteSession("weather-chat")
    agent = weather_agent(client, WeatherTool())
    gateway.upstream.queue(weather_call(with_reasoning=True), weather_answer(), Generation(deltas=content("No.")))
    await Runner.run(agent, QUESTION, session=session, run_config=RUN_CONFIG)
    second = await Runner.run(agent, "Rain?", session=session, run_config=RUN_CONFIG)
    assert second.final_output == "No."
    assert gateway.upstream.last_body["messages"] == [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": QUESTION},
        {**assistant_call_message(with_reasoning=True), "content": ""},
        {"role": "tool", "tool_call_id": CALL_ID, "content": WeatherTool.output("Paris")},
        {"role": "assistant", "content": FINAL},
        {"role": "user", "content": "Rain?"},
    ]
    session.close()


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
@pytest.mark.parametrize("presentation, history, assistant", [
    ("raw", "think_tags", {"content": f"<think>{THOUGHT}</think>"}),
    ("summary", "field", {"reasoning_content": THOUGHT}),
    ("raw", "field", {"reasoning_content": THOUGHT}),
    ("summary", "drop", {}),
])
async def test_reasoning_settings_round_trip(make_gateway: GatewayFactory, streamed: bool, presentation: str,
                                             history: str, assistant: dict[str, Any]) -> None:
    """With ``reasoning_presentation: raw`` the SDK gets (and sends back) reasoning as
    ``reasoning_text`` content with an empty summary; each ``reasoning_history`` then puts the
    thought where it says, or nowhere."""
    gateway = await make_gateway(f"gateway.reasoning_presentation={presentation}",
                                 f"gateway.reasoning_history={history}")
    gateway.upstream.queue(weather_call(with_reasoning=True), weather_answer())
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as client:
        result, events = await run(weather_agent(client, WeatherTool()), QUESTION, streamed)
    assert result.final_output == FINAL
    reasoning_item = result.new_items[0]
    assert isinstance(reasoning_item, ReasoningItem)
    if presentation == "raw":
        assert reasoning_item.raw_item.summary == []
        assert [(p.type, p.text) for p in reasoning_item.raw_item.content or []] == [("reasoning_text", THOUGHT)]
    else:
        assert [p.text for p in reasoning_item.raw_item.summary] == [THOUGHT]
    if streamed:
        kind = ResponseReasoningTextDeltaEvent if presentation == "raw" else ResponseReasoningSummaryTextDeltaEvent
        assert "".join(e.delta for e in raw(events, kind)) == THOUGHT
    call = without_empty_content(gateway.upstream.last_body["messages"][2])
    assert call == {**assistant_call_message(with_reasoning=False), **assistant}


# --- what else the SDK sends ----------------------------------------------------------------------


async def test_model_settings_reach_vllm(client: AsyncOpenAI, gateway: Gateway) -> None:
    """The ModelSettings an agent sets (sampling, tool choice, reasoning effort, vLLM extensions via
    extra_body, and fields the gateway accepts without effect) reach vLLM in their Chat form."""
    settings = ModelSettings(temperature=0.2, top_p=0.9, max_tokens=77, tool_choice="get_weather",
                             parallel_tool_calls=False, truncation="auto", store=False,
                             reasoning=Reasoning(effort="low"), response_include=["reasoning.encrypted_content"],
                             extra_body={"top_k": 20, "seed": 7})
    gateway.upstream.queue(Generation(deltas=content("Hi.")))
    result = await Runner.run(weather_agent(client, WeatherTool(), settings=settings), "hi", run_config=RUN_CONFIG)
    assert result.final_output == "Hi."
    body = gateway.upstream.last_body
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.2, 0.9, 77)
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["reasoning_effort"] == "low"
    assert (body["top_k"], body["seed"]) == (20, 7)


async def test_every_model_setting_the_sdk_forwards_is_accepted(client: AsyncOpenAI, gateway: Gateway) -> None:
    """The newer ModelSettings the SDK passes to responses.create (prompt cache options and
    retention, context management, top_logprobs, metadata, verbosity, extra_args, extra_body such
    as Codex's client_metadata) are accepted, and the Response echoes what was used."""
    settings = ModelSettings(store=False, prompt_cache_retention="24h",
                             prompt_cache_options={"mode": "implicit", "ttl": "30m"},
                             context_management=[{"type": "compaction", "compact_threshold": 50000}],
                             top_logprobs=2, metadata={"run": "r1"}, verbosity="low", truncation="disabled",
                             extra_args={"safety_identifier": "sid-1", "max_tool_calls": 2},
                             extra_body={"client_metadata": {"x-client": "agents"}})
    gateway.upstream.queue(Generation(deltas=content("Hi.")))
    run = Runner.run_streamed(weather_agent(client, WeatherTool(), settings=settings), "hi", run_config=RUN_CONFIG)
    completed = [event.data async for event in run.stream_events()
                 if isinstance(event, RawResponsesStreamEvent) and event.data.type == "response.completed"]
    assert run.final_output == "Hi."
    echo = completed[0].response.model_dump(mode="json", exclude_unset=True)
    assert (echo["temperature"], echo["top_p"], echo["presence_penalty"], echo["top_logprobs"]) == (1.0, 1.0, 0.0, 2)
    assert (echo["safety_identifier"], echo["max_tool_calls"], echo["metadata"]) == ("sid-1", 2, {"run": "r1"})
    assert (echo["store"], echo["truncation"]) == (False, "disabled")
    body = gateway.upstream.last_body
    assert (body["temperature"], body["top_p"]) == (1.0, 1.0)  # OpenAI's defaults, sent explicitly
    for key in ("client_metadata", "context_management", "prompt_cache_options", "metadata", "store"):
        assert key not in body, key


class WeatherReport(BaseModel):
    city: str
    celsius: int


async def test_structured_output_type(client: AsyncOpenAI, gateway: Gateway) -> None:
    """``Agent(output_type=...)`` sends ``text.format`` json_schema; the gateway forwards it as
    ``response_format`` and the SDK validates the answer into the model, reasoning stripped."""
    gateway.upstream.queue(Generation(deltas=content('<think>Make JSON.</think>{"city": "Paris", "celsius": 21}')))
    agent = Agent(name="report", instructions="Report as JSON.", output_type=WeatherReport,
                  model=OpenAIResponsesModel(model=MODEL, openai_client=client))
    result = await Runner.run(agent, QUESTION, run_config=RUN_CONFIG)
    assert result.final_output == WeatherReport(city="Paris", celsius=21)
    assert [item.type for item in result.new_items] == ["reasoning_item", "message_output_item"]
    response_format = gateway.upstream.last_body["response_format"]
    assert response_format["type"] == "json_schema"
    schema = response_format["json_schema"]["schema"]
    assert set(schema["properties"]) == {"city", "celsius"} and sorted(schema["required"]) == ["celsius", "city"]


# --- failures surface as the SDK's errors ---------------------------------------------------------


async def test_unknown_previous_response_id_is_not_found(client: AsyncOpenAI, gateway: Gateway) -> None:
    """A previous_response_id the store does not hold is a 404 naming it, which the SDK raises as
    openai.NotFoundError; vLLM is never called."""
    with pytest.raises(openai.NotFoundError) as caught:
        await Runner.run(weather_agent(client, WeatherTool()), "hi", previous_response_id="resp_123",
                         run_config=RUN_CONFIG)
    assert caught.value.status_code == 404
    assert "resp_123" in str(caught.value)
    assert gateway.upstream.requests == []


@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
async def test_length_cut_raises_model_behavior_error(client: AsyncOpenAI, gateway: Gateway, streamed: bool) -> None:
    """vLLM's finish_reason "length" is an incomplete Response; Agents SDK 0.24 refuses incomplete
    responses with ModelBehaviorError, whose message carries the gateway's incomplete_details."""
    gateway.upstream.queue(Generation(deltas=content("It is sunny and"), finish_reason="length"))
    with pytest.raises(ModelBehaviorError) as caught:
        await run(weather_agent(client, WeatherTool()), QUESTION, streamed)
    assert "incomplete" in str(caught.value) and "max_output_tokens" in str(caught.value)


async def test_mid_stream_upstream_error_raises_model_behavior_error(client: AsyncOpenAI, gateway: Gateway) -> None:
    gateway.upstream.queue(Generation(deltas=content("It is sunny in Paris."), stream_error_after=2,
                                      error_message="engine died"))
    tool = WeatherTool()
    with pytest.raises(ModelBehaviorError) as caught:
        await run(weather_agent(client, tool), QUESTION, streamed=True)
    # The SDK stops at the gateway's `error` event, which carries vLLM's message.
    assert "terminal event `error`" in str(caught.value) and "engine died" in str(caught.value)
    assert tool.calls == []


# --- a real model (llama.cpp + Qwen2.5-Coder-0.5B) ------------------------------------------------

# Worded for Qwen2.5-Coder-0.5B at temperature 0: told that it MUST call the tool, or to answer in
# one sentence, it calls get_weather again after every tool response until max_turns runs out (the
# same prompt sent straight to llama-server does that too: the model, not the gateway). Asked to
# report what the tool returned, it calls the tool once and then answers with text.
REAL_INSTRUCTIONS = ("You are a weather assistant. Use the get_weather tool to find the weather, then tell the "
                     "user what it returned.")


@pytest.fixture
async def real_client(real_gateway: Gateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=real_gateway.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


def real_agent(client: AsyncOpenAI, tool: WeatherTool) -> Agent[Any]:
    from gateway.backends.llama_cpp import MODEL_ALIAS

    return weather_agent(client, tool, model=MODEL_ALIAS, instructions=REAL_INSTRUCTIONS,
                         settings=ModelSettings(max_tokens=64, temperature=0))


@pytest.mark.real_model
async def test_real_model_run(real_client: AsyncOpenAI) -> None:
    tool = WeatherTool()
    started = time.monotonic()
    result = await Runner.run(real_agent(real_client, tool), QUESTION, run_config=RUN_CONFIG, max_turns=4)
    print(f"real model Runner.run: {time.monotonic() - started:.1f}s, tool calls {tool.calls}, "
          f"items {[i.type for i in result.new_items]}, output {result.final_output!r}")
    assert isinstance(result.final_output, str)
    if tool.calls:
        # The SDK parsed the streamed-through arguments as JSON with a string city.
        assert all(isinstance(city, str) and city.strip() for city in tool.calls)
        assert "tool_call_item" in [i.type for i in result.new_items]
        assert "tool_call_output_item" in [i.type for i in result.new_items]
        assert result.final_output.strip()
    assert result.raw_responses
    assert all(r.usage.input_tokens > 0 for r in result.raw_responses)
    assert result.context_wrapper.usage.requests == len(result.raw_responses)


@pytest.mark.real_model
async def test_real_model_run_streamed(real_client: AsyncOpenAI) -> None:
    tool = WeatherTool()
    started = time.monotonic()
    result, events = await run(real_agent(real_client, tool), QUESTION, streamed=True)
    print(f"real model Runner.run_streamed: {time.monotonic() - started:.1f}s, tool calls {tool.calls}, "
          f"{len(events)} events, output {result.final_output!r}")
    assert isinstance(result.final_output, str)
    raw_types = [e.data.type for e in events if isinstance(e, RawResponsesStreamEvent)]
    assert raw_types[0] == "response.created" and raw_types[-1] == "response.completed"
    assert raw_types.count("response.created") == raw_types.count("response.completed") == len(result.raw_responses)
    text = "".join(e.delta for e in raw(events, ResponseTextDeltaEvent))
    # The final output is the last turn's text, which streamed as deltas.
    assert result.final_output in text
    if tool.calls:
        assert all(isinstance(city, str) and city.strip() for city in tool.calls)
        assert raw(events, ResponseFunctionCallArgumentsDeltaEvent)
    assert all(r.usage.input_tokens > 0 for r in result.raw_responses)
