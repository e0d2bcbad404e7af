"""Recorded vLLM answers (tests/data/vllm/, see its README) replayed byte for byte through the real
gateway: what vLLM's OpenAI server writes for each case, and the exact Response that must come out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.schema import chat
from gateway.upstream.sse import SSEDecoder
from tests.conftest import Gateway, GatewayFactory
from tests.fake_vllm import Generation

DATA = Path(__file__).resolve().parent / "data" / "vllm"
SSE_TYPE = "text/event-stream; charset=utf-8"  # Starlette's StreamingResponse(media_type="text/event-stream")
TRAINING = ("+policy_model.vllm_model.return_token_id_information=true",)
INLINE = TRAINING + ("+policy_model.vllm_model.request_prompt_and_generation_token_ids=true",)
TOKEN_KEYS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}

# Texts of the recorded generations (see the README for the token sequences).
MATH_REASONING = "Okay, 17 times 23. 17 × 20 is 340, plus 17 × 3 is 51, so 391."
MATH_ANSWER = "17 × 23 = **391**."
WEATHER_REASONING = "The user wants the weather in Zürich and Paris. I'll call get_weather twice."
# The generation ids of logprobs_token_ids.sse / return_token_ids.sse: "<think>\nThe user asks for
# 2+2. That is 4.\n</think>\n\n2 + 2 = 4." in Qwen3 tokens, then <|im_end|>.
TWO_PLUS_TWO_IDS = [151667, 198, 785, 1196, 17064, 369, 220, 17, 10, 17, 13, 2938, 374, 220, 19, 624, 151668, 271,
                    17, 488, 220, 17, 284, 220, 19, 13, 151645]
TWO_PLUS_TWO_PROMPT = [151644, 872, 198, 3838, 374, 220, 17, 10, 17, 30, 151645, 198, 151644, 77091, 198]


def recording(name: str, status: int = 200) -> Generation:
    body = (DATA / name).read_bytes()
    content_type = SSE_TYPE if name.endswith(".sse") else "application/json"
    return Generation(raw_body=body, raw_status=status, raw_content_type=content_type)


def payloads(name: str) -> list[Any]:
    """The ``data:`` payloads of a recorded stream, JSON-decoded ("[DONE]" stays a string)."""
    events = (DATA / name).read_bytes().split(b"\n\n")
    assert events[-1] == b"", "a recording ends with a blank line"
    out = []
    for event in events[:-1]:
        assert event.startswith(b"data: ") and b"\n" not in event, event[:80]
        data = event[len(b"data: "):]
        out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def recorded_entries(name: str) -> list[dict]:
    """Every ``choices[0].logprobs.content`` entry of a recorded stream, in order."""
    return [entry for p in payloads(name) if isinstance(p, dict)
            for c in p.get("choices", []) for entry in ((c.get("logprobs") or {}).get("content") or [])]


def recorded_logprobs(name: str) -> list[float]:
    return [entry["logprob"] for entry in recorded_entries(name)]


def summary(response: dict) -> list[tuple]:
    """(type, status, text) per output item; a call as (type, status, name, arguments, call_id)."""
    out: list[tuple] = []
    for item in response["output"]:
        if item["type"] == "message":
            assert [part["type"] for part in item["content"]] == ["output_text"]
            out.append(("message", item["status"], item["content"][0]["text"]))
        elif item["type"] == "reasoning":
            out.append(("reasoning", item["status"], "".join(part["text"] for part in item["summary"])))
        else:
            out.append(("function_call", item["status"], item["name"], item["arguments"], item["call_id"]))
    return out


def usage(response: dict) -> tuple[int, int, int, int]:
    u = response["usage"]
    return u["input_tokens"], u["input_tokens_details"]["cached_tokens"], u["output_tokens"], u["total_tokens"]


def token_keys(item: dict) -> dict:
    return {key: item.get(key) for key in TOKEN_KEYS}


# --- the recordings themselves ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.sse")))
def test_recorded_streams_are_framed_as_vllm_frames_them(name: str) -> None:
    """Guards the data files (an editor adding a newline would silently change what is tested): one
    ``data: <json>\\n\\n`` per chunk, one id and ``created`` throughout, ``data: [DONE]`` last, and
    before it the usage chunk with ``choices: []`` or an error line."""
    events = payloads(name)
    assert events[-1] == "[DONE]" and "[DONE]" not in events[:-1]
    chunks = [e for e in events[:-1] if "error" not in e]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == "Qwen/Qwen3-8B" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    last = events[-2]
    if "error" in last:
        assert set(last["error"]) == {"message", "type", "param", "code"}
    else:
        assert last["choices"] == [] and set(last["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}


@pytest.mark.parametrize("name", sorted(p.name for p in DATA.glob("*.sse")))
def test_recorded_streams_decode_however_the_network_splits_them(name: str) -> None:
    """The gateway's SSE reader and chunk decoder on vLLM's real bytes, cut anywhere (inside
    "Zürich" or "×" too): the same payloads as a plain split, and every line a valid chunk."""
    raw = (DATA / name).read_bytes()
    whole = SSEDecoder().feed(raw)
    for size in (1, 2, 5, 13, 4096):
        decoder = SSEDecoder()
        pieces = [p for i in range(0, len(raw), size) for p in decoder.feed(raw[i:i + size])] + decoder.close()
        assert pieces == whole
    assert ["[DONE]" if p == b"[DONE]" else json.loads(p) for p in whole] == payloads(name)
    chunks = [chat.chunk_decoder.decode(p) for p in whole[:-1]]
    for chunk, payload in zip(chunks, payloads(name)):
        if "error" in payload:
            assert chunk.error is not None and chunk.error.message == payload["error"]["message"]
        elif payload["choices"]:
            assert chunk.choices[0].finish_reason == payload["choices"][0]["finish_reason"]
        else:
            assert chunk.usage is not None and chunk.usage.completion_tokens == payload["usage"]["completion_tokens"]


# --- plain text and reasoning ----------------------------------------------------------------------


async def test_text_plain(gateway: Gateway) -> None:
    gateway.upstream.queue(recording("text_plain.sse"))
    events, final = await gateway.stream({"input": "Say hello in one short sentence."})
    assert summary(final) == [("message", "completed", "Hello! It's nice to meet you.")]
    assert final["status"] == "completed" and final["incomplete_details"] is None
    assert usage(final) == (19, 0, 10, 29)
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "Hello! It's nice to meet you." and len(deltas) == 9  # one per vLLM chunk


@pytest.mark.parametrize("name", ["reasoning_parser_on.sse",  # vLLM 0.19.1: delta.reasoning
                                  "reasoning_parser_on_v0.13.0.sse",  # both reasoning and reasoning_content
                                  "reasoning_parser_on_v0.11.0.sse"])  # delta.reasoning_content
async def test_reasoning_parser_on(gateway: Gateway, name: str) -> None:
    gateway.upstream.queue(recording(name))
    _, final = await gateway.stream({"input": "What is 17 × 23?"})
    assert summary(final) == [("reasoning", "completed", MATH_REASONING), ("message", "completed", MATH_ANSWER)]
    assert final["output"][0]["summary"][0]["type"] == "summary_text"
    assert usage(final) == (18, 0, 59, 77)


async def test_reasoning_parser_off_tags_parsed_by_the_gateway(gateway: Gateway) -> None:
    """No reasoning parser in vLLM: ``<think>`` is its own content chunk; the gateway splits it out."""
    gateway.upstream.queue(recording("reasoning_parser_off_think_tags.sse"))
    _, final = await gateway.stream({"input": "What is 17 × 23?"})
    assert summary(final) == [("reasoning", "completed", MATH_REASONING), ("message", "completed", MATH_ANSWER)]
    assert usage(final) == (18, 0, 59, 77)


async def test_reasoning_parser_off_tags_kept_when_not_parsing(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("+policy_model.vllm_model.uses_reasoning_parser=false")
    gateway.upstream.queue(recording("reasoning_parser_off_think_tags.sse"))
    _, final = await gateway.stream({"input": "What is 17 × 23?"})
    text = f"<think>\n{MATH_REASONING}\n</think>\n\n{MATH_ANSWER}"
    assert summary(final) == [("message", "completed", text)]


async def test_length_inside_reasoning_is_incomplete(gateway: Gateway) -> None:
    gateway.upstream.queue(recording("length_mid_reasoning.sse"))
    _, final = await gateway.stream({"input": "Explain why the sky is blue.", "max_output_tokens": 12})
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert summary(final) == [("reasoning", "incomplete", "Okay, the user is asking why the sky is")]
    assert usage(final) == (16, 0, 12, 28)
    assert gateway.upstream.last_body["max_tokens"] == 12


# --- tool calls (hermes parser) --------------------------------------------------------------------

TWO_CALLS_STREAMED = [
    ("reasoning", "completed", WEATHER_REASONING),
    ("message", "completed", "I will check both cities."),
    ("function_call", "completed", "get_weather", '{"city": "Zürich"}', "chatcmpl-tool-5bcd9c5c5038d397"),
    ("function_call", "completed", "get_weather", '{"city": "Paris"}', "chatcmpl-tool-8aa8849e4de1c004"),
]


async def test_hermes_reasoning_text_and_two_calls(gateway: Gateway) -> None:
    gateway.upstream.queue(recording("hermes_two_tool_calls.sse"))
    events, final = await gateway.stream({"input": "What's the weather in Zürich and in Paris?",
                                          "tools": [WEATHER_TOOL]})
    assert summary(final) == TWO_CALLS_STREAMED
    assert final["status"] == "completed"
    assert usage(final) == (157, 144, 71, 228)  # cached_tokens from usage.prompt_tokens_details
    arguments = [e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert arguments[:3] == ['{"', "city", '":']  # streamed as vLLM streamed them, not buffered
    assert gateway.upstream.last_body["tools"][0]["function"]["name"] == "get_weather"


async def test_non_streaming_completion_with_reasoning_and_calls(gateway: Gateway) -> None:
    gateway.upstream.queue(recording("completion_tool_calls_reasoning.json"))
    response = await gateway.create({"input": "What's the weather in Zürich and in Paris?", "tools": [WEATHER_TOOL]})
    assert gateway.upstream.last_body["stream"] is False
    assert summary(response) == [
        ("reasoning", "completed", WEATHER_REASONING),
        ("message", "completed", "I will check both cities."),
        ("function_call", "completed", "get_weather", '{"city": "Zürich"}', "chatcmpl-tool-e5bf66eada51c6dd"),
        ("function_call", "completed", "get_weather", '{"city": "Paris"}', "chatcmpl-tool-0c7b1c77c136b9d3"),
    ]
    assert response["status"] == "completed"
    assert usage(response) == (157, 144, 71, 228)


async def test_streamed_and_whole_recordings_agree(gateway: Gateway) -> None:
    """The same generation streamed and not: the same Response but for ids (vLLM's call ids differ)."""
    gateway.upstream.queue(recording("hermes_two_tool_calls.sse"), recording("completion_tool_calls_reasoning.json"))
    body = {"input": "What's the weather in Zürich and in Paris?", "tools": [WEATHER_TOOL]}
    _, streamed = await gateway.stream(body)
    whole = await gateway.create(body)

    def without_ids(response: dict) -> dict:
        response = json.loads(json.dumps(response))
        for key in ("id", "created_at", "completed_at"):
            response.pop(key)
        for item in response["output"]:
            item.pop("id")
            item.pop("call_id", None)
        return response

    assert without_ids(whole) == without_ids(streamed)


async def test_tool_call_only(gateway: Gateway) -> None:
    gateway.upstream.queue(recording("tool_call_only.sse"))
    events, final = await gateway.stream({"input": "Weather in Oslo?", "tools": [WEATHER_TOOL]})
    assert summary(final) == [
        ("function_call", "completed", "get_weather", '{"city": "Oslo"}', "chatcmpl-tool-fbc88bb77df279ec")]
    assert usage(final) == (153, 0, 21, 174)
    assert not [e for e in events if e["type"].startswith("response.output_text")]  # no empty message


async def test_client_logprobs_with_top_logprobs(gateway: Gateway) -> None:
    """include=["message.output_text.logprobs"]: vLLM's entries (text tokens, bytes, top_logprobs in
    vLLM's order: the sampled token first even when it was not rank 1, as " How" here) reach the
    client on each text delta and on the part; the end-of-turn token's entry has no text and stays out."""
    gateway.upstream.queue(recording("logprobs_top_logprobs.sse"))
    events, final = await gateway.stream({"input": "Greet me.", "include": ["message.output_text.logprobs"],
                                          "top_logprobs": 2})
    body = gateway.upstream.last_body
    assert (body["logprobs"], body["top_logprobs"]) == (True, 2) and not body.get("return_tokens_as_token_ids")
    recorded = recorded_entries("logprobs_top_logprobs.sse")
    assert recorded[-1]["token"] == "<|im_end|>" and len(recorded) == 10
    assert [t["token"] for t in recorded[2]["top_logprobs"]] == [" How", " What"]
    part = final["output"][0]["content"][0]
    assert part["text"] == "Hello! How can I help you today?"
    assert part["logprobs"] == recorded[:-1]
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert [d["logprobs"] for d in deltas] == [[entry] for entry in recorded[:-1]]


# --- token ids for training ------------------------------------------------------------------------


async def test_logprobs_with_token_ids(make_gateway: GatewayFactory) -> None:
    """return_tokens_as_token_ids: every token (``<think>`` too, and the end-of-turn token that only
    the finish chunk carries) is in the generation, with its logprob; prompt ids from /tokenize."""
    gateway = await make_gateway(*TRAINING)
    gateway.upstream.tokenize_prompt = json.loads((DATA / "tokenize_2plus2.json").read_bytes())["tokens"]
    gateway.upstream.queue(recording("logprobs_token_ids.sse"))
    events, final = await gateway.stream({"input": "What is 2+2?"})
    assert summary(final) == [("reasoning", "completed", "The user asks for 2+2. That is 4."),
                              ("message", "completed", "2 + 2 = 4.")]
    logprobs = recorded_logprobs("logprobs_token_ids.sse")
    assert len(logprobs) == len(TWO_PLUS_TWO_IDS) and logprobs[-1] == -1.1920928955078125e-07
    expected = {"prompt_token_ids": TWO_PLUS_TWO_PROMPT, "generation_token_ids": TWO_PLUS_TWO_IDS,
                "generation_log_probs": logprobs}
    assert token_keys(final["output"][-1]) == expected
    assert token_keys(final["output"][0]) == dict.fromkeys(TOKEN_KEYS)
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert token_keys(done[-1]["item"]) == expected
    assert usage(final) == (15, 0, 27, 42)
    body = gateway.upstream.last_body
    assert (body["logprobs"], body["return_tokens_as_token_ids"]) == (True, True)
    assert len(gateway.upstream.tokenize_requests) == 1


async def test_inline_token_ids(make_gateway: GatewayFactory) -> None:
    """return_token_ids: prompt_token_ids on the role chunk, token_ids on every chunk, and with the
    reasoning parser the ``<think>`` / ``</think>`` chunks still come (empty delta) so nothing is lost."""
    gateway = await make_gateway(*INLINE)
    gateway.upstream.queue(recording("return_token_ids.sse"))
    _, final = await gateway.stream({"input": "What is 2+2?"})
    assert gateway.upstream.last_body["return_token_ids"] is True
    assert gateway.upstream.tokenize_requests == []  # the inline prompt ids were used
    assert summary(final) == [("reasoning", "completed", "The user asks for 2+2. That is 4."),
                              ("message", "completed", "2 + 2 = 4.")]
    assert token_keys(final["output"][-1]) == {
        "prompt_token_ids": TWO_PLUS_TWO_PROMPT, "generation_token_ids": TWO_PLUS_TWO_IDS,
        "generation_log_probs": recorded_logprobs("return_token_ids.sse")}


async def test_reasoning_parser_drops_think_tokens_without_inline_ids(make_gateway: GatewayFactory) -> None:
    """vLLM 0.19.1 with a reasoning parser and logprobs but no return_token_ids sends no chunk for
    ``<think>`` and ``</think>`` (the parser returns no delta): 27 tokens generated, 25 logprobs. A
    training sample missing tokens must be refused, not handed out."""
    gateway = await make_gateway(*TRAINING)
    gateway.upstream.queue(recording("logprobs_reasoning_parser_dropped.sse"))
    events, final = await gateway.stream({"input": "What is 2+2?"})
    assert len(recorded_logprobs("logprobs_reasoning_parser_dropped.sse")) == 25
    assert final["status"] == "failed"
    assert final["error"]["code"] == "token_information_invalid"
    assert "reported 27 generated tokens but sent log-probabilities for 25" in final["error"]["message"]


# --- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, message, text", [
    ("mid_stream_error.sse", "Internal server error", "Once upon a time,"),  # GenerationError, 0.19.1
    ("mid_stream_error_v0.11.0.sse", "EngineCore encountered an issue", "Once upon a time"),  # EngineDeadError
])
async def test_mid_stream_error_line_fails_the_response(gateway: Gateway, name: str, message: str, text: str) -> None:
    gateway.upstream.queue(recording(name))
    events, final = await gateway.stream({"input": "Tell me a story."})
    assert final["status"] == "failed"
    error = [e for e in events if e["type"] == "error"]
    assert len(error) == 1 and message in error[0]["message"] and error[0]["code"] == "upstream_error"
    assert final["error"]["code"] == "upstream_error" and message in final["error"]["message"]
    assert summary(final) == [("message", "incomplete", text)]


@pytest.mark.parametrize("name, message", [
    ("error_context_length.json", "prompt contains at least 3097 input tokens"),  # 0.19.1
    ("error_max_tokens_too_large_v0.11.0.json", "'max_tokens' or 'max_completion_tokens' is too large: 1000"),
])
@pytest.mark.parametrize("stream", [True, False])
async def test_context_overflow_400_gives_empty_incomplete(gateway: Gateway, name: str, message: str,
                                                           stream: bool) -> None:
    gateway.upstream.queue(recording(name, status=400))
    body = {"input": "a very long prompt", "max_output_tokens": 1000}
    final = (await gateway.stream(body))[1] if stream else await gateway.create(body)
    assert final["status"] == "incomplete" and final["output"] == []
    assert final["incomplete_details"]["reason"] == "max_output_tokens"
    assert message in final["incomplete_details"]["message"]
    assert gateway.upstream.last_body["max_tokens"] == 1000
