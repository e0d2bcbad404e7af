"""Token tracking for RL training: exact ids and log-probabilities, streaming and not, placed where
NeMo Gym reads them, with /tokenize overlapping the generation."""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.schema import chat
from gateway.schema import responses as r
from gateway.server.sse import encode_events
from gateway.translate.stream import ResponseStateMachine, StreamOptions
from tests.conftest import GatewayFactory
from tests.contract import check_stream, parse_sse
from tests.fake_vllm import CONTEXT_OVERFLOW_MESSAGE, Generation, tool_call

TRAINING = ("+policy_model.vllm_model.return_token_id_information=true",)
INLINE = TRAINING + ("+policy_model.vllm_model.request_prompt_and_generation_token_ids=true",)
TOKEN_KEYS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")

# "<think>", "Let", " me", ... each a token with an id and a logprob, as a Qwen model emits them.
PIECES = ["<think>", "Let", " me", " think", ".", "</think>", "\n\n", "The", " answer", " is", " 4", "."]
TOKENS = [(151667 + i if p in ("<think>", "</think>") else 1000 + i, -0.01 * (i + 1)) for i, p in enumerate(PIECES)]
END = [(151645, -0.0001)]  # <|im_end|>: text "", but generated and counted


def tokenized(groups: list[int]) -> Generation:
    """The same tokens, grouped into chunks of the given sizes (vLLM's stream interval)."""
    deltas, i = [], 0
    for size in groups:
        chunk = list(range(i, min(i + size, len(PIECES))))
        if not chunk:
            break
        deltas.append({"content": "".join(PIECES[j] for j in chunk), "_tokens": [(*TOKENS[j], PIECES[j]) for j in chunk]})
        i += size
    if i < len(PIECES):
        deltas.append({"content": "".join(PIECES[i:]), "_tokens": [(*TOKENS[j], PIECES[j]) for j in range(i, len(PIECES))]})
    return Generation(deltas=deltas, finish_tokens=END)


EXPECTED_IDS = [t for t, _ in TOKENS + END]
EXPECTED_LOGPROBS = [lp for _, lp in TOKENS + END]


def token_keys(item: dict) -> dict:
    return {key: item.get(key) for key in TOKEN_KEYS}


@pytest.mark.parametrize("groups", [[1] * 12, [2, 3, 7], [12], [5, 1, 1, 5]])
async def test_streamed_ids_exact_and_on_the_last_item(make_gateway: GatewayFactory, groups: list[int]) -> None:
    gateway = await make_gateway(*TRAINING)
    gateway.upstream.queue(tokenized(groups))
    events, final = await gateway.stream({"input": "2+2?"})
    prompt = gateway.upstream.tokenize_prompt
    expected = {"prompt_token_ids": prompt, "generation_token_ids": EXPECTED_IDS,
                "generation_log_probs": EXPECTED_LOGPROBS}
    assert [i["type"] for i in final["output"]] == ["reasoning", "message"]
    assert token_keys(final["output"][-1]) == expected
    assert token_keys(final["output"][0]) == dict.fromkeys(TOKEN_KEYS)  # only the last item carries them
    done = [e for e in events if e["type"] == "response.output_item.done"]
    assert token_keys(done[-1]["item"]) == expected
    body = gateway.upstream.requests[-1]["body"]
    assert (body["logprobs"], body["top_logprobs"], body["return_tokens_as_token_ids"]) == (True, 0, True)
    # /tokenize got exactly the prompt-affecting fields of the generation request
    assert gateway.upstream.tokenize_requests[-1]["body"] == {
        "model": body["model"], "messages": body["messages"], "add_generation_prompt": True}


async def test_non_streaming_ids_equal_streamed(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(*TRAINING)
    gateway.upstream.queue(tokenized([3, 3, 6]))
    response = await gateway.create({"input": "2+2?"})
    assert token_keys(response["output"][-1]) == {"prompt_token_ids": gateway.upstream.tokenize_prompt,
                                                  "generation_token_ids": EXPECTED_IDS,
                                                  "generation_log_probs": EXPECTED_LOGPROBS}


async def test_tokenize_overlaps_the_generation(make_gateway: GatewayFactory) -> None:
    """/tokenize starts before vLLM has sent its first chunk: prompt ids cost no latency."""
    gateway = await make_gateway(*TRAINING)
    generation = tokenized([4])
    generation.stall_before = 0.3
    gateway.upstream.queue(generation)
    await gateway.stream({"input": "2+2?"})
    started = gateway.upstream.tokenize_requests[-1]["started"]
    assert started < gateway.upstream.requests[-1]["first_chunk_at"]


async def test_tool_call_tokens_count_too(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(*TRAINING)
    deltas = tool_call(0, "get_weather", '{"city": "Paris"}', call_id="chatcmpl-tool-1")
    for n, delta in enumerate(deltas):
        delta["_tokens"] = [(5000 + n, -0.5)]
    gateway.upstream.queue(Generation(deltas=deltas, finish_reason="tool_calls", finish_tokens=END))
    response = await gateway.create({"input": "weather?", "tools": [
        {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]})
    last = response["output"][-1]
    assert last["type"] == "function_call"
    assert last["generation_token_ids"] == [5000 + n for n in range(len(deltas))] + [151645]


async def test_inline_ids_skip_tokenize(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(*INLINE)
    gateway.upstream.queue(tokenized([2, 10]))
    _, final = await gateway.stream({"input": "2+2?"})
    assert gateway.upstream.last_body["return_token_ids"] is True
    assert gateway.upstream.tokenize_requests == []
    assert final["output"][-1]["prompt_token_ids"] == Generation().prompt_token_ids
    assert final["output"][-1]["generation_token_ids"] == EXPECTED_IDS


async def test_inline_ids_missing_falls_back_to_tokenize(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(*INLINE)
    generation = tokenized([6, 6])
    generation.inline_token_ids = False  # an older vLLM ignores return_token_ids
    gateway.upstream.queue(generation)
    _, final = await gateway.stream({"input": "2+2?"})
    assert len(gateway.upstream.tokenize_requests) == 1
    assert final["output"][-1]["prompt_token_ids"] == gateway.upstream.tokenize_prompt


async def test_dropped_tokens_are_an_error_not_a_wrong_sample(make_gateway: GatewayFactory) -> None:
    """vLLM's streaming leaves out the logprobs of tokens its tool parser holds back; the usage
    count reveals it, and the gateway refuses to hand out a sample with missing tokens."""
    gateway = await make_gateway(*TRAINING)
    generation = tokenized([12])
    generation.completion_tokens = len(EXPECTED_IDS) + 3
    gateway.upstream.queue(generation)
    events, final = await gateway.stream({"input": "2+2?"})
    assert final["status"] == "failed" and final["error"]["code"] == "token_information_invalid"
    assert f"upstream reported {len(EXPECTED_IDS) + 3} generated tokens but sent log-probabilities for {len(EXPECTED_IDS)}" in final["error"]["message"]
    generation = tokenized([12])
    generation.completion_tokens = 99
    gateway.upstream.queue(generation)
    response = await gateway.post({"input": "2+2?"})
    assert response.status == 502
    assert (await response.json())["error"]["code"] == "token_information_invalid"


async def test_context_overflow_says_no_tokens_exist(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(*TRAINING)
    gateway.upstream.queue(Generation(status=400, error_message=CONTEXT_OVERFLOW_MESSAGE))
    _, final = await gateway.stream({"input": "long"})
    assert final["status"] == "incomplete" and final["output"] == []
    details = final["incomplete_details"]
    assert details["reason"] == "max_output_tokens"
    assert "No token information exists" in details["message"] and "maximum context length" in details["message"]


async def test_history_token_keys_travel_to_vllm(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(*TRAINING)
    gateway.upstream.queue(tokenized([12]))
    history = [
        {"role": "user", "content": "2+2?"},
        {"type": "message", "role": "assistant", "id": "msg_1", "status": "completed",
         "content": [{"type": "output_text", "text": "4", "annotations": []}],
         "prompt_token_ids": [1, 2], "generation_token_ids": [3, 4], "generation_log_probs": [-0.1, -0.2]},
        {"role": "user", "content": "and 3+3?"},
    ]
    await gateway.stream({"input": history})
    assistant = gateway.upstream.last_body["messages"][1]
    assert assistant == {"role": "assistant", "content": "4", "prompt_token_ids": [1, 2],
                         "generation_token_ids": [3, 4], "generation_log_probs": [-0.1, -0.2]}


async def test_client_logprobs_on_text_deltas(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    gateway.upstream.queue(tokenized([1] * 12))
    events, final = await gateway.stream({"input": "2+2?", "include": ["message.output_text.logprobs"],
                                          "top_logprobs": 1})
    body = gateway.upstream.last_body
    assert body["logprobs"] is True and body["top_logprobs"] == 1
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    streamed = [lp for d in deltas for lp in d["logprobs"]]
    part = final["output"][-1]["content"][0]
    assert part["logprobs"] == streamed
    # the answer's tokens only: not the "\n\n" after </think>, which the gateway trims from the answer
    assert [lp["token"] for lp in streamed] == PIECES[7:]
    assert all(lp["bytes"] == list(lp["token"].encode()) and len(lp["top_logprobs"]) == 1 for lp in streamed)


async def test_tracking_off_adds_nothing(gateway: Any) -> None:
    gateway.upstream.queue(tokenized([12]))
    _, final = await gateway.stream({"input": "2+2?"})
    assert all(key not in final["output"][-1] for key in TOKEN_KEYS)
    assert "logprobs" not in gateway.upstream.last_body and gateway.upstream.tokenize_requests == []


# --- the pure machine: chunking never changes the token lists -------------------------------------

@settings(max_examples=300, deadline=None)
@given(groups=st.lists(st.integers(min_value=1, max_value=5), max_size=12),
       inline=st.booleans(), finish_in_last=st.booleans())
def test_chunking_never_changes_token_lists(groups: list[int], inline: bool, finish_in_last: bool) -> None:
    tokens = TOKENS + END
    chunks, i = [], 0
    for size in groups + [len(tokens)]:
        part = tokens[i:i + size]
        if not part:
            break
        text = "".join(PIECES[j] if j < len(PIECES) else "" for j in range(i, i + len(part)))
        choice: dict[str, Any] = {"index": 0, "delta": {"content": text}, "logprobs": {"content": [
            {"token": f"token_id:{t}", "logprob": lp} for t, lp in part]}}
        if inline:
            choice["token_ids"] = [t for t, _ in part]
        chunks.append(choice)
        i += len(part)
    if finish_in_last:
        chunks[-1]["finish_reason"] = "stop"
    else:
        chunks.append({"index": 0, "delta": {"content": ""}, "finish_reason": "stop"})
    counter = itertools.count()
    machine = ResponseStateMachine(r.Response(id="resp_x", created_at=0, status="in_progress", model="m"),
                                   StreamOptions(), new_id=lambda p: f"{p}_{next(counter)}", track_tokens=True)
    events = machine.start()
    for choice in chunks:
        events += machine.feed(msgspec.convert({"choices": [choice]}, chat.ChatChunk))
    events += machine.feed(msgspec.convert({"choices": [], "usage": {
        "prompt_tokens": 3, "completion_tokens": len(tokens), "total_tokens": 3 + len(tokens)}}, chat.ChatChunk))
    events += machine.finish(prompt_token_ids=[7, 8, 9])
    final = check_stream(parse_sse(encode_events(events)))
    assert final["output"][-1]["generation_token_ids"] == [t for t, _ in tokens]
    assert final["output"][-1]["generation_log_probs"] == [lp for _, lp in tokens]
    assert final["output"][-1]["prompt_token_ids"] == [7, 8, 9]


def test_disagreeing_inline_ids_fail() -> None:
    machine = ResponseStateMachine(r.Response(id="resp_x", created_at=0, status="in_progress", model="m"),
                                   track_tokens=True)
    machine.start()
    machine.feed(msgspec.convert({"choices": [{"delta": {"content": "a"}, "token_ids": [1],
                                               "logprobs": {"content": [{"token": "token_id:2", "logprob": -1}]},
                                               "finish_reason": "stop"}]}, chat.ChatChunk))
    machine.finish([0])
    assert machine.final is not None and machine.final.status == "failed"
    assert "disagree" in machine.final.error.message


def test_logprob_tokens_that_are_not_ids_fail() -> None:
    machine = ResponseStateMachine(r.Response(id="resp_x", created_at=0, status="in_progress", model="m"),
                                   track_tokens=True)
    machine.start()
    machine.feed(msgspec.convert({"choices": [{"delta": {"content": "a"}, "logprobs": {
        "content": [{"token": "a", "logprob": -1}]}, "finish_reason": "stop"}]}, chat.ChatChunk))
    events = machine.finish([0])  # readable tokens and no inline ids: nothing says which tokens they were
    assert machine.final is not None and machine.final.status == "failed"
    assert "return_tokens_as_token_ids" in machine.final.error.message
    assert isinstance(events[-1], r.ResponseFailed)
