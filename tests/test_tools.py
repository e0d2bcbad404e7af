"""Tools of every kind a client runs itself, the keepalive event, the rule for calls of unfinished
responses, and developer messages: the request conversion, the state machine, and real clients
(the openai SDK and the Agents SDK) through the running gateway.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
from typing import Any, AsyncIterator

import msgspec
import pytest
from agents import Agent, ModelSettings, OpenAIResponsesModel, RunConfig, Runner, function_tool, set_tracing_disabled
from hypothesis import given, settings
from hypothesis import strategies as st
from openai import AsyncOpenAI, OpenAI
from openai.types.responses import (
    ResponseCustomToolCall,
    ResponseCustomToolCallInputDeltaEvent,
    ResponseCustomToolCallInputDoneEvent,
    ResponseFunctionToolCall,
)

from gateway.schema import chat
from gateway.schema import responses as r
from gateway.server.sse import encode_events
from gateway.translate.stream import ResponseStateMachine
from gateway.translate.tools import CustomInputDecoder, ToolTarget
from tests.conftest import MODEL, Gateway, GatewayFactory
from tests.contract import check_stream, parse_sse
from tests.fake_vllm import Generation, content, tool_call
from tests.test_request import chat as chat_body
from tests.test_request import rejected, user

set_tracing_disabled(True)

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
AGENTS = {"type": "namespace", "name": "multi_agent_v1", "description": "Tools for managing sub-agents.",
          "tools": [{"type": "function", "name": "spawn_agent", "description": "Start an agent.",
                     "parameters": {"type": "object", "properties": {"task": {"type": "string"}}}},
                    {"type": "custom", "name": "note", "description": "Write a note."}]}
PATCH_GRAMMAR = 'start: begin_patch hunk+ end_patch\nbegin_patch: "*** Begin Patch" LF'
APPLY_PATCH = {"type": "custom", "name": "apply_patch", "description": "Edit files with a patch.",
               "format": {"type": "grammar", "syntax": "lark", "definition": PATCH_GRAMMAR}}
PATCH = '*** Begin Patch\n*** Add File: hello.txt\n+Hi "there" \\ tab\there é 😀\n*** End Patch\n'


# --- offering tools to the model -------------------------------------------------------------------


def test_namespace_functions_are_offered_by_qualified_name() -> None:
    body = chat_body({"input": "hi", "tools": [WEATHER, AGENTS]})
    names = [t["function"]["name"] for t in body["tools"]]
    assert names == ["get_weather", "multi_agent_v1__spawn_agent", "multi_agent_v1__note"]
    spawn = body["tools"][1]["function"]
    assert spawn["description"] == "Tools for managing sub-agents.\n\nStart an agent."
    assert spawn["parameters"] == AGENTS["tools"][0]["parameters"]


def test_custom_tool_is_a_function_of_one_string() -> None:
    function = chat_body({"input": "hi", "tools": [APPLY_PATCH]})["tools"][0]["function"]
    assert function["name"] == "apply_patch"
    assert function["parameters"] == {"type": "object", "properties": {"input": {
        "type": "string", "description": "The tool's whole input, as text."}}, "required": ["input"],
        "additionalProperties": False}
    # vLLM cannot enforce a grammar on one argument: the model is told it.
    assert function["description"].startswith("Edit files with a patch.\n\nThe input must follow this lark grammar:")
    assert PATCH_GRAMMAR in function["description"]


HOSTED = [{"type": "web_search", "external_web_access": False}, {"type": "file_search", "vector_store_ids": ["v"]},
          {"type": "code_interpreter", "container": {"type": "auto"}}, {"type": "image_generation"},
          {"type": "mcp", "server_label": "x", "server_url": "https://mcp.example/"},
          {"type": "computer_use_preview", "display_width": 1, "display_height": 1, "environment": "linux"},
          {"type": "a_tool_type_from_next_year"}]


def test_hosted_tools_are_left_out() -> None:
    from tests.test_request import plan

    planned = plan({"input": "hi", "tools": [*HOSTED, WEATHER], "tool_choice": "auto"})
    assert [t["function"]["name"] for t in planned.body["tools"]] == ["get_weather"]
    assert planned.tools.left_out == [t["type"] for t in HOSTED]
    assert planned.response.tools[:-1] == HOSTED  # echoed as the client sent them
    only_hosted = plan({"input": "hi", "tools": HOSTED, "tool_choice": "auto", "parallel_tool_calls": True}).body
    assert "tools" not in only_hosted and "tool_choice" not in only_hosted and "parallel_tool_calls" not in only_hosted


def test_hosted_tools_rejected_when_configured() -> None:
    error = rejected({"input": "hi", "tools": [WEATHER, {"type": "web_search"}]}, reject_hosted_tools=True)
    assert error.param == "tools[1].type" and error.code == "unsupported_value"
    assert "'web_search'" in error.message and "OpenAI's servers" in error.message


@pytest.mark.parametrize("choice, offered, expected", [
    ({"type": "function", "name": "get_weather"}, None, {"type": "function", "function": {"name": "get_weather"}}),
    ({"type": "function", "name": "spawn_agent"}, None,
     {"type": "function", "function": {"name": "multi_agent_v1__spawn_agent"}}),
    ({"type": "custom", "name": "apply_patch"}, None, {"type": "function", "function": {"name": "apply_patch"}}),
    ({"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_weather"},
                                                             {"type": "custom", "name": "apply_patch"}]},
     ["get_weather", "apply_patch"], "required"),
    ({"type": "allowed_tools", "mode": "auto", "tools": [{"type": "namespace", "name": "multi_agent_v1"},
                                                         {"type": "web_search"}]},
     ["multi_agent_v1__spawn_agent", "multi_agent_v1__note"], "auto"),
], ids=["function", "namespace_member", "custom", "allowed_required", "allowed_namespace"])
def test_tool_choice(choice: dict[str, Any], offered: Any, expected: Any) -> None:
    body = chat_body({"input": "hi", "tools": [WEATHER, AGENTS, APPLY_PATCH, {"type": "web_search"}],
                      "tool_choice": choice})
    assert body["tool_choice"] == expected
    # allowed_tools is enforced: the model is offered only the allowed tools
    names = [t["function"]["name"] for t in body["tools"]]
    assert names == (offered or ["get_weather", "multi_agent_v1__spawn_agent", "multi_agent_v1__note", "apply_patch"])


def test_tool_choice_forcing_a_hosted_tool_is_refused() -> None:
    error = rejected({"input": "hi", "tools": [WEATHER, {"type": "web_search"}], "tool_choice": {"type": "web_search"}})
    assert error.param == "tool_choice.type" and "only OpenAI's servers run" in error.message


def test_history_of_namespace_and_custom_calls() -> None:
    items = [user("patch it"),
             {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": PATCH, "id": "ctc_1",
              "status": "completed"},
             {"type": "function_call", "call_id": "c2", "name": "spawn_agent", "namespace": "multi_agent_v1",
              "arguments": "{}"},
             {"type": "custom_tool_call_output", "call_id": "c1", "output": "Done!"},
             {"type": "function_call_output", "call_id": "c2", "output": "agent 7"}]
    messages = chat_body({"input": items, "tools": [AGENTS, APPLY_PATCH]})["messages"]
    assert messages[1] == {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "apply_patch", "arguments": json.dumps(
            {"input": PATCH}, ensure_ascii=False)}},
        {"id": "c2", "type": "function", "function": {"name": "multi_agent_v1__spawn_agent", "arguments": "{}"}}]}
    assert messages[2:] == [{"role": "tool", "tool_call_id": "c1", "content": "Done!"},
                            {"role": "tool", "tool_call_id": "c2", "content": "agent 7"}]


# --- custom tool input, decoded as it streams ------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40), data=st.data(), spaced=st.booleans())
def test_custom_input_decodes_however_the_arguments_are_cut(text: str, data: st.DataObject, spaced: bool) -> None:
    text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")  # no lone surrogates
    arguments = json.dumps({"input": text}, ensure_ascii=data.draw(st.booleans()))
    if spaced:
        arguments = arguments.replace('{"input": ', ' {\n "input" :  ', 1)
    points = sorted(set(data.draw(st.lists(st.integers(0, len(arguments)), max_size=8))) | {0, len(arguments)})
    decoder = CustomInputDecoder()
    streamed = "".join(decoder.feed(arguments[a:b]) for a, b in zip(points, points[1:]))
    tail, whole = decoder.finish()
    assert whole == text and streamed + tail == text
    if len(text) > 2:  # streamed as it came, not all at the end
        assert streamed


@pytest.mark.parametrize("arguments, expected", [
    ('{"patch": "x y"}', "x y"),  # the model named the one argument differently
    ("not json at all", "not json at all"),
    ('{"input": 5}', '{"input": 5}'),
])
def test_custom_input_that_is_not_the_offered_shape(arguments: str, expected: str) -> None:
    decoder = CustomInputDecoder()
    assert decoder.feed(arguments) == ""
    assert decoder.finish() == (expected, expected)


TARGETS = {"apply_patch": ToolTarget("custom", "apply_patch"),
           "multi_agent_v1__spawn_agent": ToolTarget("function", "spawn_agent", "multi_agent_v1")}


def machine_run(chunks: list[dict[str, Any]], finish: bool = True) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    counter = itertools.count()
    machine = ResponseStateMachine(r.Response(id="resp_t", created_at=0, status="in_progress", model="m"),
                                   new_id=lambda prefix: f"{prefix}_{next(counter)}", tools=TARGETS)
    events = machine.start()
    for chunk in chunks:
        events += machine.feed(msgspec.convert(chunk, chat.ChatChunk))
    events += machine.finish() if finish else machine.fail("upstream_disconnected", "the connection was lost")
    decoded = parse_sse(encode_events(events))
    return decoded, check_stream(decoded)


def fragments(deltas: list[dict[str, Any]], finish_reason: str = "tool_calls") -> list[dict[str, Any]]:
    chunks = [{"choices": [{"index": 0, "delta": d}]} for d in deltas]
    return chunks + [{"choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]}] if finish_reason else chunks


def test_custom_and_namespace_calls_stream_as_their_items() -> None:
    deltas = (tool_call(0, "apply_patch", json.dumps({"input": PATCH}), size=3, call_id="c1")
              + tool_call(1, "multi_agent_v1__spawn_agent", '{"task": "t"}', call_id="c2"))
    events, final = machine_run(fragments(deltas))
    custom, namespaced = final["output"]
    assert custom == {"type": "custom_tool_call", "id": "ctc_0", "status": "completed", "call_id": "c1",
                      "name": "apply_patch", "input": PATCH}
    assert namespaced == {"type": "function_call", "id": "fc_1", "status": "completed", "call_id": "c2",
                          "name": "spawn_agent", "arguments": '{"task": "t"}', "namespace": "multi_agent_v1"}
    deltas_seen = [e["delta"] for e in events if e["type"] == "response.custom_tool_call_input.delta"]
    assert len(deltas_seen) > 5 and "".join(deltas_seen) == PATCH


# --- the rule: no finished-looking call from an unfinished response -------------------------------


CALL = tool_call(0, "get_weather", '{"city": "Paris"}', call_id="c-paris")
SECOND = tool_call(1, "get_weather", '{"city": "Rome"}', call_id="c-rome")


def done_calls(events: list[dict[str, Any]]) -> list[str]:
    return [e["item"]["call_id"] for e in events
            if e["type"] == "response.output_item.done" and e["item"]["type"] in ("function_call", "custom_tool_call")]


@pytest.mark.parametrize("how", ["dropped", "length"])
def test_an_unfinished_response_has_no_done_call(how: str) -> None:
    events, final = machine_run(fragments(CALL, None if how == "dropped" else "length"), finish=how == "length")
    assert done_calls(events) == []
    assert not any(e["type"] == "response.function_call_arguments.done" for e in events)
    assert final["status"] == ("failed" if how == "dropped" else "incomplete")
    assert final["output"] == [{"type": "function_call", "id": "fc_0", "status": "incomplete", "call_id": "c-paris",
                                "name": "get_weather", "arguments": '{"city": "Paris"}'}]


def test_calls_are_held_until_the_response_completes() -> None:
    # Two calls: the first closes when the second starts, before the response is known to finish.
    chunks = fragments(CALL + SECOND)
    counter = itertools.count()
    machine = ResponseStateMachine(r.Response(id="resp_t", created_at=0, status="in_progress", model="m"),
                                   new_id=lambda prefix: f"{prefix}_{next(counter)}")
    seen = machine.start()
    for chunk in chunks[:-1]:
        seen += machine.feed(msgspec.convert(chunk, chat.ChatChunk))
    early = parse_sse(encode_events(seen))
    assert done_calls(early) == []  # nothing looks done yet, but the first call's arguments streamed live
    assert "".join(e["delta"] for e in early if e["type"] == "response.function_call_arguments.delta") == \
        '{"city": "Paris"}'
    rest = machine.feed(msgspec.convert(chunks[-1], chat.ChatChunk)) + machine.finish()
    events = parse_sse(encode_events(seen + rest))
    final = check_stream(events)
    assert done_calls(events) == ["c-paris", "c-rome"] and final["status"] == "completed"


def test_a_failure_after_a_complete_call_cuts_the_output_there() -> None:
    events, final = machine_run(fragments(CALL + SECOND + content("more"), None), finish=False)
    assert done_calls(events) == []
    assert [(i["call_id"], i["status"]) for i in final["output"]] == [("c-paris", "incomplete")]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))  # dropped events leave no gaps


# --- through the gateway, with real clients --------------------------------------------------------


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


async def test_sdk_reads_custom_and_namespace_calls(client: AsyncOpenAI, gateway: Gateway) -> None:
    deltas = (tool_call(0, "apply_patch", json.dumps({"input": PATCH}), size=4, call_id="c1")
              + tool_call(1, "multi_agent_v1__spawn_agent", '{"task": "t"}', call_id="c2"))
    gateway.upstream.queue(Generation(deltas=deltas, finish_reason="tool_calls"),
                           Generation(deltas=deltas, finish_reason="tool_calls"))
    body = {"model": "m", "input": "go", "tools": [AGENTS, APPLY_PATCH]}
    async with client.responses.stream(**body) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_response()
    input_deltas = [e.delta for e in events if isinstance(e, ResponseCustomToolCallInputDeltaEvent)]
    assert "".join(input_deltas) == PATCH
    assert [e.input for e in events if isinstance(e, ResponseCustomToolCallInputDoneEvent)] == [PATCH]
    custom, namespaced = final.output
    assert isinstance(custom, ResponseCustomToolCall) and custom.input == PATCH and custom.call_id == "c1"
    assert isinstance(namespaced, ResponseFunctionToolCall)
    assert (namespaced.namespace, namespaced.name, namespaced.arguments) == ("multi_agent_v1", "spawn_agent",
                                                                            '{"task": "t"}')
    created = await client.responses.create(**body)  # not streamed: the same items
    assert [i.model_dump(exclude={"id"}) for i in created.output] == [
        i.model_dump(exclude={"id", "parsed_arguments"}) for i in final.output]
    sent = gateway.upstream.last_body
    assert [t["function"]["name"] for t in sent["tools"]] == ["multi_agent_v1__spawn_agent", "multi_agent_v1__note",
                                                              "apply_patch"]


async def test_hosted_tools_are_logged_once_and_left_out(client: AsyncOpenAI, gateway: Gateway,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    from gateway.server import app

    app._left_out_seen.discard("web_search")
    caplog.set_level(logging.INFO, logger="gateway.server")
    for _ in range(2):
        response = await client.responses.create(model="m", input="q", tools=[{"type": "web_search"}, WEATHER])
        assert response.status == "completed"
        assert [t["function"]["name"] for t in gateway.upstream.last_body["tools"]] == ["get_weather"]
    lines = [rec.getMessage() for rec in caplog.records if "left out" in rec.getMessage()]
    assert len(lines) == 1 and "'web_search'" in lines[0]


async def test_hosted_tools_refused_when_configured(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.hosted_tools=reject")
    response = await gateway.post({"input": "q", "tools": [{"type": "web_search"}]})
    assert response.status == 400
    assert (await response.json())["error"]["param"] == "tools[0].type"
    assert gateway.upstream.requests == []


async def test_a_dropped_stream_gives_no_done_call(gateway: Gateway) -> None:
    # The call's arguments are complete, then the connection drops before finish_reason.
    gateway.upstream.queue(Generation(deltas=CALL, drop_after=len(CALL), finish_reason=None))
    events, final = await gateway.stream({"input": "q", "tools": [WEATHER]})
    assert done_calls(events) == [] and final["status"] == "failed"
    assert final["output"][0]["status"] == "incomplete" and final["output"][0]["arguments"] == '{"city": "Paris"}'


async def test_agents_sdk_does_not_run_a_call_cut_off_by_a_drop(client: AsyncOpenAI, gateway: Gateway) -> None:
    ran: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """Weather for a city."""
        ran.append(city)
        return "sunny"

    agent = Agent(name="w", instructions="Weather.", tools=[get_weather],
                  model=OpenAIResponsesModel(model=MODEL, openai_client=client), model_settings=ModelSettings())
    gateway.upstream.queue(Generation(deltas=CALL, drop_after=len(CALL), finish_reason=None))
    result = Runner.run_streamed(agent, "weather in Paris?", run_config=RunConfig(tracing_disabled=True))
    with pytest.raises(Exception):
        async for _ in result.stream_events():
            pass
    assert ran == []


# --- the keepalive event and the clients that must tolerate it -------------------------------------


def slow() -> Generation:
    return Generation(deltas=content("after a long pause"), pauses={1: 0.6})


@pytest.fixture
async def slow_gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway("gateway.keepalive_interval_s=0.1")


async def test_openai_sdk_tolerates_keepalive_events(slow_gateway: Gateway) -> None:
    gateway = slow_gateway
    gateway.upstream.queue(*(slow() for _ in range(4)))
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as client:
        async with client.responses.stream(model="m", input="q") as stream:
            types = [event.type async for event in stream]
            final = await stream.get_final_response()
        assert final.output_text == "after a long pause" and types.count("keepalive") >= 3
        raw = [event async for event in await client.responses.create(model="m", input="q", stream=True)]
        assert raw[-1].type == "response.completed" and sum(e.type == "keepalive" for e in raw) >= 3

    def sync() -> tuple[str, str]:
        with OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as client:
            with client.responses.stream(model="m", input="q") as stream:
                for _ in stream:
                    pass
                text = stream.get_final_response().output_text
            events = list(client.responses.create(model="m", input="q", stream=True))
            return text, events[-1].response.output_text

    assert await asyncio.to_thread(sync) == ("after a long pause", "after a long pause")


async def test_agents_sdk_tolerates_keepalive_events(slow_gateway: Gateway) -> None:
    slow_gateway.upstream.queue(slow(), slow())
    async with AsyncOpenAI(base_url=slow_gateway.url + "/v1", api_key="x", max_retries=0) as client:
        agent = Agent(name="a", instructions="Be brief.", model=OpenAIResponsesModel(model=MODEL, openai_client=client))
        result = Runner.run_streamed(agent, "q", run_config=RunConfig(tracing_disabled=True))
        async for _ in result.stream_events():
            pass
        assert result.final_output == "after a long pause"
        assert (await Runner.run(agent, "q", run_config=RunConfig(tracing_disabled=True))).final_output == \
            "after a long pause"


# --- developer messages ----------------------------------------------------------------------------

CODEX_LIKE = [{"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "You are Codex."}]},
              {"type": "message", "role": "developer", "content": "Skills: none."},
              user("hi")]


@pytest.mark.parametrize("template, folded", [("render", False), ("drop", True), ("reject", True)])
async def test_developer_messages_fold_where_the_template_drops_them(make_gateway: GatewayFactory, template: str,
                                                                   folded: bool) -> None:
    gateway = await make_gateway()
    gateway.upstream.developer_template = template
    for _ in range(2):
        await gateway.create({"input": CODEX_LIKE})
        sent = gateway.upstream.last_body["messages"]
        if folded:
            assert sent == [{"role": "system", "content": "You are Codex.\n\nSkills: none."},
                            {"role": "user", "content": "hi"}]
        else:
            assert [m["role"] for m in sent] == ["developer", "developer", "user"]
    assert len(gateway.upstream.tokenize_requests) == 2  # asked once (with and without), then remembered


@pytest.mark.parametrize("mode, folded", [("fold", True), ("keep", False)])
async def test_developer_messages_forced(make_gateway: GatewayFactory, mode: str, folded: bool) -> None:
    gateway = await make_gateway(f"gateway.developer_messages={mode}")
    gateway.upstream.developer_template = "render" if folded else "drop"  # the config wins over the probe
    await gateway.create({"input": CODEX_LIKE})
    roles = [m["role"] for m in gateway.upstream.last_body["messages"]]
    assert roles == (["system", "user"] if folded else ["developer", "developer", "user"])
    assert gateway.upstream.tokenize_requests == []


async def test_no_probe_without_developer_messages(gateway: Gateway) -> None:
    gateway.upstream.developer_template = "drop"
    await gateway.create({"input": "hi"})
    assert gateway.upstream.tokenize_requests == []


def test_fold_keeps_system_first_and_order() -> None:
    items = [{"role": "system", "content": "sys"}, {"role": "developer", "content": "d1"}, user("u1"),
             {"role": "developer", "content": "d2"}, {"role": "assistant", "content": "a"}]
    messages = chat_body({"input": items}, fold_developer_messages=True)["messages"]
    assert messages == [{"role": "system", "content": "sys\n\nd1\n\nd2"}, {"role": "user", "content": "u1"},
                        {"role": "assistant", "content": "a"}]
    # NeMo Gym's replace_developer_role_with_system stays as it is (and wins)
    renamed = chat_body({"input": items}, fold_developer_messages=True,
                        replace_developer_role_with_system=True)["messages"]
    assert [m["role"] for m in renamed] == ["system", "system", "user", "system", "assistant"]


@pytest.mark.real_model
async def test_real_server_developer_messages_reach_the_prompt(make_gateway: GatewayFactory, llama_server: str,
                                                              tmp_path: Any) -> None:
    """Whatever the real server's template does with a developer message (llama-server maps the
    role to system itself; Qwen's templates behind vLLM drop it), the probe tells it right and the
    text the client sent ends up in the prompt the model reads."""
    import aiohttp

    from gateway.backends.llama_cpp import MODEL_ALIAS
    from gateway.upstream.client import VLLMClient
    from gateway.upstream.developer_role import probe_developer_role

    secret = "The codeword is PAPAYA-17."
    root = llama_server[: -len("/v1")] if llama_server.endswith("/v1") else llama_server
    as_sent = [{"role": "developer", "content": secret}, {"role": "user", "content": "Say hi."}]
    async with aiohttp.ClientSession() as session:
        async def rendered(messages: list[dict[str, Any]]) -> str:
            async with session.post(root + "/apply-template", json={"messages": messages}) as answer:
                assert answer.status == 200, await answer.text()
                return (await answer.json())["prompt"]

        client = VLLMClient([llama_server], flavour="llama.cpp")
        await client.start()
        try:
            renders = await probe_developer_role(client, llama_server, MODEL_ALIAS)
        finally:
            await client.close()
        assert renders == (secret in await rendered(as_sent))
        transport = tmp_path / "transport.jsonl"
        gateway = await make_gateway("gateway.upstream_flavour=llama.cpp", f"gateway.transport_log={transport}",
                                     base_url=llama_server, model=MODEL_ALIAS)
        response = await gateway.create({"input": as_sent, "max_output_tokens": 4})
        assert response["status"] in ("completed", "incomplete")
        sent = json.loads(transport.read_text().splitlines()[-1])["request"]["messages"]
        assert sent[0]["role"] == ("developer" if renders else "system")
        assert secret in await rendered(sent)
