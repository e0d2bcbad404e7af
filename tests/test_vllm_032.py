"""Answers recorded from a real vLLM 0.32.0 (``tests/data/vllm/v0.32.0/``, made by its
``record.sh`` against ``python -m gateway.backends.vllm_cpu start``: Qwen2.5-Coder-0.5B on the
CPU), replayed byte for byte through the real gateway. Unlike the older reconstructed files, every
byte here came out of vLLM; the ``real_vllm`` tests check the same things against the live server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.schema import chat
from gateway.schema import responses as r
from gateway.translate.logprobs import LogprobAligner
from gateway.translate.stream import ResponseStateMachine, StreamOptions
from gateway.upstream.sse import SSEDecoder
from tests.conftest import Gateway, GatewayFactory
from tests.fake_vllm import Generation
from tests.test_vllm_recordings import SSE_TYPE, summary, token_keys

DATA = Path(__file__).resolve().parent / "data" / "vllm" / "v0.32.0"
MODEL = "qwen2.5-coder-0.5b"
TRAINING = ("+policy_model.vllm_model.return_token_id_information=true",)
LOGPROBS = {"include": ["message.output_text.logprobs"], "top_logprobs": 1}
WEATHER_TOOL = {
    "type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]},
}
THINK_INPUT = "What is 6+5?"
# What the model wrote for the <think> prompt of record.sh (no parser): the tag is plain text tokens.
THINK_TOKENS = ["<th", "ink", ">", "6", " plus", " ", "5", " makes", " ", "1", "1", ".</", "think", ">The", " answer",
                " is", " ", "1", "1", ".", "<|im_end|>"]
# The answer's tokens: ">The" straddles the tag and writes "The", so it belongs to the answer.
ANSWER_TOKENS = [">The", " answer", " is", " ", "1", "1", "."]


def recording(name: str) -> Generation:
    headers = DATA / f"{name}.headers"  # the context-length answers have none: 400s, too long to keep
    status = int(headers.read_text().split()[1]) if headers.exists() else 200 if name.endswith(".sse") else 400
    content_type = SSE_TYPE if name.endswith(".sse") else "application/json"
    return Generation(raw_body=(DATA / name).read_bytes(), raw_status=status, raw_content_type=content_type)


def payloads(name: str) -> list[Any]:
    out = []
    for event in (DATA / name).read_bytes().split(b"\n\n")[:-1]:
        assert event.startswith(b"data: ") and b"\n" not in event, event[:80]
        data = event[len(b"data: "):]
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def entries(name: str) -> list[dict]:
    """Every logprobs entry of a recording, streamed or not, in order."""
    if name.endswith(".json"):
        return json.loads((DATA / name).read_bytes())["choices"][0]["logprobs"]["content"]
    return [e for p in payloads(name) if isinstance(p, dict) for c in p.get("choices", [])
            for e in ((c.get("logprobs") or {}).get("content") or [])]


def inline_ids(name: str) -> list[int]:
    if name.endswith(".json"):
        return json.loads((DATA / name).read_bytes())["choices"][0]["token_ids"]
    return [i for p in payloads(name) if isinstance(p, dict) for c in p.get("choices", []) for i in (c.get("token_ids") or [])]


async def run(gateway: Gateway, name: str, body: dict[str, Any]) -> tuple[list[dict], dict]:
    gateway.upstream.queue(recording(name))
    if name.endswith(".sse"):
        return await gateway.stream(body)
    return [], await gateway.create(body)


def message_logprobs(response: dict) -> list[dict]:
    [message] = [item for item in response["output"] if item["type"] == "message"]
    return message["content"][0]["logprobs"]


def delta_logprobs(events: list[dict]) -> list[dict]:
    return [lp for e in events if e["type"] == "response.output_text.delta" for lp in e["logprobs"]]


# --- the recordings themselves ---------------------------------------------------------------------

STREAMS = sorted(p.name for p in DATA.glob("*.sse"))


@pytest.mark.parametrize("name", STREAMS)
def test_recorded_streams_are_vllm_032_frames(name: str) -> None:
    """vLLM 0.32's framing, as recorded: one id, the role chunk with ``prompt_text: null``, ``[DONE]``
    last; the usage chunk with ``system_fingerprint``, or an error line (possibly before any chunk)."""
    events = payloads(name)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = [e for e in events[:-1] if "error" not in e]
    if chunks:
        assert len({c["id"] for c in chunks}) == 1 and all(c["model"] == MODEL for c in chunks)
        role = chunks[0]
        assert role["choices"][0]["delta"] == {"role": "assistant", "content": ""}
        assert "prompt_text" in role and role["prompt_text"] is None
    last = events[-2]
    if "error" in last:
        assert set(last["error"]) == {"message", "type", "param", "code"}
    else:
        assert last["choices"] == [] and last["system_fingerprint"].startswith("vllm-0.32.0")


@pytest.mark.parametrize("name", STREAMS)
def test_recorded_streams_decode_however_split(name: str) -> None:
    raw = (DATA / name).read_bytes()
    whole = SSEDecoder().feed(raw)
    for size in (1, 3, 7, 4096):
        decoder = SSEDecoder()
        assert [p for i in range(0, len(raw), size) for p in decoder.feed(raw[i:i + size])] + decoder.close() == whole
    for payload in whole[:-1]:
        chat.chunk_decoder.decode(payload)


def test_what_differs_from_older_vllm() -> None:
    """The wire facts of issue 13, item 5, as recorded: no ``tool_calls: []`` on hermes content
    deltas, swallowed tokens as ``{}`` deltas with their logprobs, ``{}`` finish delta without a
    parser, ``reasoning_tokens`` 0 with a reasoning parser, extra non-streaming fields."""
    text_chunks = [p for p in payloads("text_plain.sse") if isinstance(p, dict) and p["choices"]]
    assert text_chunks[-1]["choices"][0]["delta"] == {} and text_chunks[-1]["choices"][0]["finish_reason"] == "stop"
    hermes = [p["choices"][0]["delta"] for p in payloads("hermes_auto_text_and_call.sse") if isinstance(p, dict) and p["choices"]]
    assert {"content": "Let"} in hermes and all("tool_calls" not in d for d in hermes if d.get("content"))
    swallowed = [p["choices"][0] for p in payloads("logprobs_hermes_auto.sse")
                 if isinstance(p, dict) and p["choices"] and p["choices"][0]["delta"] == {}]
    assert swallowed and all(c["logprobs"]["content"] for c in swallowed)
    olmo = [p for p in payloads("reasoning_parser_olmo3.sse") if isinstance(p, dict)]
    assert olmo[-1]["usage"]["completion_tokens_details"] == {"reasoning_tokens": 0}
    whole = json.loads((DATA / "text_plain.json").read_bytes())
    assert {"kv_transfer_params", "prompt_text", "metrics"} <= set(whole) and "routed_experts" in whole["choices"][0]
    assert json.loads((DATA / "tool_required.json").read_bytes())["choices"][0]["message"]["content"] == ""


# --- text, tools, reasoning ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["text_plain.sse", "text_plain.json"])
async def test_text(gateway: Gateway, name: str) -> None:
    _, final = await run(gateway, name, {"input": "Say hi in five words."})
    assert summary(final) == [("message", "completed", "Hello! How can I assist you today?")]
    assert final["usage"]["input_tokens"] == 35 and final["usage"]["output_tokens"] == 10


async def test_length(gateway: Gateway) -> None:
    _, final = await run(gateway, "length.sse", {"input": "Say hi in five words.", "max_output_tokens": 4})
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert summary(final) == [("message", "incomplete", "Hello! How can")]


@pytest.mark.parametrize("name, call_id", [("tool_required.sse", None), ("tool_required.json", "chatcmpl-tool-9260d05b48f29f76"),
                                           ("tool_named.sse", None)])
async def test_forced_tool_call(gateway: Gateway, name: str, call_id: str | None) -> None:
    """``required`` and a named tool_choice: vLLM writes the call as text and parses it; the
    non-streaming ``content: ""`` opens no message."""
    _, final = await run(gateway, name, {"input": "What is the weather in Paris?", "tools": [WEATHER_TOOL],
                                         "tool_choice": "required"})
    [(kind, status, fn, arguments, got_id)] = summary(final)
    assert (kind, status, fn, json.loads(arguments)) == ("function_call", "completed", "get_weather", {"city": "Paris"})
    assert got_id.startswith("chatcmpl-tool-") and (call_id is None or got_id == call_id)


@pytest.mark.parametrize("name", ["hermes_auto_text_and_call.sse", "hermes_auto_text_and_call.json"])
async def test_hermes_auto_text_then_call(gateway: Gateway, name: str) -> None:
    _, final = await run(gateway, name, {"input": "What is the weather in Paris?", "tools": [WEATHER_TOOL]})
    assert [s[:3] for s in summary(final)] == [("message", "completed", "Let me check."),
                                             ("function_call", "completed", "get_weather")]
    assert json.loads(final["output"][1]["arguments"]) == {"city": "Paris"}


async def test_think_tags_in_content(gateway: Gateway) -> None:
    _, final = await run(gateway, "think_tags_no_parser.sse", {"input": THINK_INPUT})
    assert summary(final) == [("reasoning", "completed", "6 plus 5 makes 11."),
                              ("message", "completed", "The answer is 11.")]


@pytest.mark.parametrize("name", ["reasoning_parser_olmo3.sse", "reasoning_parser_olmo3.json"])
async def test_reasoning_field(gateway: Gateway, name: str) -> None:
    _, final = await run(gateway, name, {"input": THINK_INPUT})
    assert summary(final) == [("reasoning", "completed", "6 plus 5 makes 11."),
                              ("message", "completed", "The answer is 11.")]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 0  # what vLLM counts


# --- include: ["message.output_text.logprobs"] (issue 13, items 1-3) --------------------------------


@pytest.mark.parametrize("name", ["logprobs_think_tags.sse", "logprobs_think_tags.json",
                                  "reasoning_parser_olmo3_logprobs.sse", "reasoning_parser_olmo3_logprobs.json"])
async def test_answer_logprobs_are_the_answers_tokens(gateway: Gateway, name: str) -> None:
    """Items 1 and 2: the message's logprobs are the tokens that wrote "The answer is 11.", streamed
    or not, with or without vLLM's reasoning parser: not the reasoning, not the tag pieces
    (``<th`` ``ink`` ``>``, held by the splitter while undecided), not ``<|im_end|>``."""
    recorded = entries(name)
    assert [e["token"] for e in recorded] == THINK_TOKENS
    events, final = await run(gateway, name, {"input": THINK_INPUT, **LOGPROBS})
    assert summary(final)[-1] == ("message", "completed", "The answer is 11.")
    logprobs = message_logprobs(final)
    assert [lp["token"] for lp in logprobs] == ANSWER_TOKENS
    assert logprobs == [{**e, "top_logprobs": e["top_logprobs"][:1]} for e in recorded[13:20]]
    if events:
        assert delta_logprobs(events) == logprobs
        assert [e["logprobs"] for e in events if e["type"] == "response.output_text.done"] == [logprobs]


@pytest.mark.parametrize("name", ["logprobs_hermes_auto.sse", "logprobs_hermes_auto.json"])
async def test_answer_logprobs_leave_out_tool_markup(gateway: Gateway, name: str) -> None:
    """Item 1: "Let me check." before a call gets its four tokens, not the call's markup nor the
    trailing newline the gateway trims, streamed or not."""
    events, final = await run(gateway, name, {"input": "What is the weather in Paris?", "tools": [WEATHER_TOOL],
                                              **LOGPROBS})
    assert summary(final)[0] == ("message", "completed", "Let me check.")
    assert [lp["token"] for lp in message_logprobs(final)] == ["Let", " me", " check", "."]
    assert len(entries(name)) == 30
    if events:
        assert delta_logprobs(events) == message_logprobs(final)


@pytest.mark.parametrize("name", ["logprobs_think_tags_return_token_ids.sse", "logprobs_think_tags_return_token_ids.json"])
async def test_token_tracking_with_readable_logprobs(make_gateway: GatewayFactory, name: str) -> None:
    """Item 3: token tracking and ``include`` together. The gateway asks vLLM for readable logprobs
    and the ids inline (``return_token_ids``) instead of ``token_id:N`` tokens, so the client sees
    ">The", not "token_id:...", with the token's true bytes; the training ids stay exact."""
    gateway = await make_gateway(*TRAINING)
    events, final = await run(gateway, name, {"input": THINK_INPUT, **LOGPROBS})
    body = gateway.upstream.last_body
    assert body.get("return_token_ids") is True and not body.get("return_tokens_as_token_ids")
    logprobs = message_logprobs(final)
    assert [lp["token"] for lp in logprobs] == ANSWER_TOKENS
    assert all(bytes(lp["bytes"]).decode() == lp["token"] for lp in logprobs)
    recorded = entries(name)
    assert token_keys(final["output"][-1])["generation_token_ids"] == inline_ids(name)
    assert token_keys(final["output"][-1])["generation_log_probs"] == [e["logprob"] for e in recorded]
    assert len(inline_ids(name)) == len(recorded) == final["usage"]["output_tokens"] == 21
    assert gateway.upstream.tokenize_requests == []  # the prompt ids came inline too


async def test_token_tracking_streaming_with_tools(make_gateway: GatewayFactory) -> None:
    """Item 4: on vLLM 0.32 the tokens the tool parser swallows still come (``{}`` deltas with their
    logprobs), so token tracking while streaming a tool call is exact: 25 of 25."""
    gateway = await make_gateway(*TRAINING)
    gateway.upstream.tokenize_prompt = list(range(178))
    events, final = await run(gateway, "tool_required_token_ids.sse",
                              {"input": "What is the weather in Paris?", "tools": [WEATHER_TOOL], "tool_choice": "required"})
    assert final["status"] == "completed", final.get("error")
    ids = [int(e["token"].split(":")[1]) for e in entries("tool_required_token_ids.sse")]
    assert token_keys(final["output"][-1])["generation_token_ids"] == ids and len(ids) == 25


# --- errors ----------------------------------------------------------------------------------------


async def test_unknown_model_keeps_404_and_param(gateway: Gateway) -> None:
    gateway.upstream.queue(recording("error_unknown_model.json"))
    response = await gateway.post({"input": "hi"})
    assert response.status == 404
    error = (await response.json())["error"]
    assert error["param"] == "model" and "does not exist" in error["message"]


@pytest.mark.parametrize("name, param", [("error_top_p.json", "top_p"), ("error_auto_tool_choice_unknown_tool.json", "tool_choice")])
async def test_400_keeps_vllms_param(gateway: Gateway, name: str, param: str) -> None:
    gateway.upstream.queue(recording(name))
    response = await gateway.post({"input": "hi"})
    assert response.status == 400 and (await response.json())["error"]["param"] == param


@pytest.mark.parametrize("stream", [True, False])
async def test_context_overflow_is_an_empty_incomplete(gateway: Gateway, stream: bool) -> None:
    gateway.upstream.queue(recording("error_context_length.json"))
    body = {"input": "apple " * 5000, "max_output_tokens": 20}
    final = (await gateway.stream(body))[1] if stream else await gateway.create(body)
    assert final["status"] == "incomplete" and final["output"] == []
    assert "at least 4097 input tokens" in final["incomplete_details"]["message"]


async def test_prompt_plus_max_tokens_over_the_context_is_accepted(gateway: Gateway) -> None:
    _, final = await run(gateway, "prompt_plus_max_tokens_over_context.json",
                         {"input": "Say hi in five words.", "max_output_tokens": 4090})
    assert final["status"] == "completed" and summary(final)[0][2] == "Hello! How can I assist you today?"


async def test_error_before_any_chunk_fails_the_stream(gateway: Gateway) -> None:
    """vLLM 0.32 can answer 200 and then an error line before any chunk (here: a bad grammar)."""
    events, final = await run(gateway, "error_bad_grammar_stream.sse", {"input": "hi"})
    assert final["status"] == "failed" and final["output"] == []
    assert "Grammar error" in final["error"]["message"]


async def test_engine_death_mid_stream(gateway: Gateway) -> None:
    """The engine killed mid-stream: vLLM writes a 500 ``InternalServerError`` line, then [DONE]."""
    events, final = await run(gateway, "mid_stream_engine_dead.sse", {"input": "Tell me a story."})
    assert final["status"] == "failed" and "EngineCore encountered an issue" in final["error"]["message"]
    assert [e for e in events if e["type"] == "error"][0]["code"] == "upstream_error"
    assert final["output"][0]["status"] == "incomplete"


# --- the attribution alone, on the recorded tokens cut every which way ------------------------------


def _machine_logprobs(choices: list[dict], reasoning_field: bool = False) -> list[str]:
    machine = ResponseStateMachine(r.Response(id="resp_x", created_at=0, status="in_progress", model="m"),
                                   StreamOptions(), text_logprobs=1)
    machine.start()
    for choice in choices:
        machine.feed(msgspec.convert({"choices": [choice]}, chat.ChatChunk))
    machine.finish()
    assert machine.final is not None and machine.final.status == "completed"
    [message] = [item for item in machine.final.output if isinstance(item, r.OutputMessage)]
    assert message.content[0].text == "The answer is 11."
    return [lp["token"] for lp in message.content[0].logprobs]


@settings(max_examples=200, deadline=None)
@given(cuts=st.sets(st.integers(min_value=1, max_value=20)))
def test_any_chunking_gives_the_answers_tokens(cuts: set[int]) -> None:
    """The recorded tokens of "<think>6 plus 5 makes 11.</think>The answer is 11." regrouped into
    chunks of any sizes (as a busy vLLM merges engine steps): always the same seven tokens."""
    recorded = entries("logprobs_think_tags.sse")
    bounds = [0, *sorted(cuts), len(recorded)]
    choices = []
    for start, end in zip(bounds, bounds[1:]):
        group = recorded[start:end]
        text = "".join(e["token"] for e in group if e["token"] != "<|im_end|>")
        choices.append({"delta": {"content": text}, "logprobs": {"content": group}})
    choices[-1]["finish_reason"] = "stop"
    assert _machine_logprobs(choices) == ANSWER_TOKENS


def test_partial_characters_match_their_text() -> None:
    """A token holding part of a character comes as U+FFFD (vLLM decodes each token alone): it still
    belongs to the text it helped write."""
    aligner = LogprobAligner(0)
    aligner.add([chat.TokenLogprob(token=t, logprob=-1.0) for t in ["<think>", "x", "</think>", "Z", "\ufffd", "\ufffd", "rich"]])
    aligner.skip("x")
    assert [lp["token"] for lp in aligner.take("Zü")] == ["Z", "\ufffd", "\ufffd"]
    assert [lp["token"] for lp in aligner.take("rich")] == ["rich"]
    assert aligner.take("nowhere") == []
