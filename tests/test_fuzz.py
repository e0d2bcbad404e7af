"""Fuzz tests (hypothesis) of the whole gateway, over real sockets.

Each fuzz test starts one fake vLLM and one gateway on a private event loop and drives them example
by example (hypothesis examples and function-scoped async fixtures do not mix):

1. Request bodies: Responses requests, plausible or wild (message items with any role or content,
   function_call / function_call_output / reasoning / unknown items, tools with any schema,
   tool_choice, sampling numbers negative, huge or not numbers, metadata), then corrupted (values
   replaced by anything, unknown keys, keys removed); and raw bytes (random, truncated JSON, invalid
   UTF-8, nesting up to 10,000 levels, bodies around ``max_request_bytes``). Each gets a 200 with a
   well-formed Response or a stream that keeps the contract, or a 4xx OpenAI error; a body over the
   limit gets a 413; what must be refused (an independent oracle, ``must_reject``) is refused.
2. Upstream output: vLLM's SSE stream (and the same answer as a JSON completion) with random
   corruption: invalid JSON lines, chunks without choices, deltas of the wrong type, tool calls
   without names or interleaved, ``</think>`` without ``<think>``, missing or repeated ``[DONE]``,
   errors mid-stream, odd SSE framing (CRLF, split data lines, comments), truncation, HTTP errors.
   Streamed: a 200 stream that keeps the contract and ends with exactly one terminal event, or an
   OpenAI error before it started. Not streamed: a well-formed Response or an OpenAI error.
3. Refusals: a valid request with one thing wrong (a role such as ``"system\n<|im_start|>"``, an
   unknown item type, a tool schema that is not an object, a bad max_output_tokens ...) is a 400
   whose ``param`` names it, and nothing reaches vLLM.

Nothing may log an unhandled error or hang; after each fuzz run the same gateway still serves a
normal request. ``GATEWAY_FUZZ_SEED=<n>`` replays a run (the seed is printed with any failure);
``GATEWAY_FUZZ_SCALE=10`` runs ten times as many examples. The bugs it found have reproducers at
the end of the file.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import os
import random
import time
from typing import Any, Callable, Optional

import aiohttp
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from gateway.server.runner import bound_url, start
from tests.conftest import MODEL, Gateway, gateway_config
from tests.contract import check_stream, output_texts, parse_sse
from tests.fake_vllm import FakeVLLM, Generation, content, usage_answer

REQUEST_TIMEOUT = 15.0  # seconds for one request/answer, streamed or not: longer is a hang
MAX_REQUEST_BYTES = 256 * 1024  # the fuzzed gateway's limit, small so that oversize bodies are cheap
ERROR_KEYS = {"message", "type", "param", "code"}


# --- the harness: one fake vLLM and one gateway on a private event loop -------------------------


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class PiecewiseFake(FakeVLLM):
    """The fake vLLM, which can also send a raw body in pieces, one write each, so that the
    gateway's reads split it anywhere (``Generation.pieces``, set on the instance)."""

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        pieces = getattr(self.script[0], "pieces", None) if self.script else None
        if pieces is None:
            return await super()._chat(request)
        gen = self.script.pop(0)
        self.requests.append({"path": request.path, "body": await request.json(), "headers": dict(request.headers),
                              "started": time.monotonic(), "closed_early": False})
        response = web.StreamResponse(status=gen.raw_status, headers={"Content-Type": gen.raw_content_type})
        await response.prepare(request)
        for piece in pieces:
            await response.write(piece)
            for _ in range(3):  # let the gateway read this piece before the next is written
                await asyncio.sleep(0)
        await response.write_eof()
        return response


class Harness:
    """The fake upstream and the gateway, started once, driven synchronously example by example."""

    def __init__(self, *overrides: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.loop_errors.append(context))
        self.errors = _Collect()
        logging.getLogger("gateway.server").addHandler(self.errors)
        self.upstream = PiecewiseFake(MODEL)
        self.overrides = overrides
        self.loop.run_until_complete(self._start())

    async def _start(self) -> None:
        self._fake_runner = web.AppRunner(self.upstream.app, handler_cancellation=True, access_log=None)
        await self._fake_runner.setup()
        await web.TCPSite(self._fake_runner, "127.0.0.1", 0).start()
        upstream_url = self.upstream_url = bound_url(self._fake_runner) + "/v1"
        hostport = upstream_url.removeprefix("http://").removesuffix("/v1")
        # an override may name the fake: "{hostport}" (policy_base_url with credentials, twice ...)
        self.config = gateway_config(upstream_url, *(o.replace("{hostport}", hostport) for o in self.overrides))
        self._runner = await start(self.config, port=0)
        self.url = bound_url(self._runner) + "/v1/responses"
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))

    def close(self) -> None:
        async def stop() -> None:
            await self.session.close()
            await self._runner.cleanup()
            await self._fake_runner.cleanup()

        try:
            self.loop.run_until_complete(stop())
        finally:
            logging.getLogger("gateway.server").removeHandler(self.errors)
            self.loop.close()

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self, coro: Any) -> Any:
        """Run one coroutine to completion; a hang is a failure, not a stuck test run."""
        return self.loop.run_until_complete(asyncio.wait_for(coro, REQUEST_TIMEOUT + 5))

    async def post(self, data: bytes, headers: Optional[dict[str, str]] = None) -> tuple[int, str, bytes]:
        """POST raw bytes; (status, content type, whole body)."""
        async with self.session.post(self.url, data=data,
                                     headers={"Content-Type": "application/json", **(headers or {})}) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.read()

    async def get(self, path: str) -> tuple[int, str, bytes]:
        async with self.session.get(self.url + path) as response:
            return response.status, response.headers.get("Content-Type", ""), await response.read()

    def assert_healthy(self) -> None:
        """No unhandled exception was logged by the gateway, none reached the event loop."""
        unhandled = [r for r in self.errors.records if "unhandled error" in r.getMessage()]
        assert not unhandled, "the gateway logged an unhandled error:\n" + "\n".join(
            logging.Formatter().format(r) for r in unhandled)
        assert not self.loop_errors, f"exceptions reached the event loop: {self.loop_errors}"

    def reset(self) -> None:
        self.errors.records.clear()
        self.loop_errors.clear()
        self.upstream.script.clear()

    def serves_a_normal_request_with_key(self) -> None:
        """The same, for a gateway that wants a client key (the section 4 harness)."""
        self.reset()
        for stream in (False, True):
            self.upstream.queue(hello())
            body = json.dumps({"input": "hi", "stream": stream}).encode()
            request = http_post(body, [b"Content-Type: application/json",
                                       b"Authorization: Bearer " + FUZZ_CLIENT_KEY.encode()])
            status, ctype, raw = self.run(raw_exchange(self.url, request))
            assert status == 200, raw[:300]
            final = check_stream_body(ctype, raw) if stream else check_response(json.loads(raw))
            assert final["status"] == "completed"
        self.assert_healthy()

    def serves_a_normal_request(self) -> None:
        """After the fuzzing, the same gateway still answers a plain request, both ways."""
        self.reset()
        self.upstream.queue(hello(), hello())
        status, ctype, raw = self.run(self.post(json.dumps({"model": MODEL, "input": "hi"}).encode()))
        assert status == 200, raw
        response = check_response(json.loads(raw))
        assert response["status"] == "completed"
        assert response["output"][-1]["content"][0]["text"] == "Hello from the fake vLLM."
        status, ctype, raw = self.run(self.post(json.dumps({"input": "hi", "stream": True}).encode()))
        assert status == 200 and ctype.startswith("text/event-stream"), raw
        final = check_stream(parse_sse(raw))
        assert final["status"] == "completed"
        assert final["output"][-1]["content"][0]["text"] == "Hello from the fake vLLM."
        self.assert_healthy()


def hello() -> Generation:
    """A plain answer, with the token ids and logprobs that token tracking needs."""
    deltas = content("Hello from the fake vLLM.")
    for i, delta in enumerate(deltas):
        delta["_tokens"] = [(1000 + i, -0.5)]
    return Generation(deltas=deltas, finish_tokens=[(151645, -0.01)])


def run_fuzz(harness: Harness, strategy: st.SearchStrategy, check: Callable[[Any], None], max_examples: int) -> int:
    """Run ``check`` on ``max_examples`` drawn examples against the one harness; returns how many
    ran. The seed comes from GATEWAY_FUZZ_SEED (or is random) and is printed on failure."""
    fuzz_seed = int(os.environ.get("GATEWAY_FUZZ_SEED") or random.getrandbits(32))
    max_examples = max(1, int(max_examples * float(os.environ.get("GATEWAY_FUZZ_SCALE") or 1)))
    count = 0

    @seed(fuzz_seed)
    @settings(max_examples=max_examples, deadline=None, derandomize=False, print_blob=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(strategy)
    def one(example: Any) -> None:
        nonlocal count
        count += 1
        harness.reset()
        check(example)
        harness.assert_healthy()

    try:
        one()
    except BaseException as exc:
        exc.add_note(f"reproduce with GATEWAY_FUZZ_SEED={fuzz_seed}")
        raise
    return count


# --- what a well-formed answer is -----------------------------------------------------------------


def check_error(status: int, content_type: str, raw: bytes) -> dict[str, Any]:
    """An OpenAI-style error: exactly ``{"error": {"message", "type", "param", "code"}}``."""
    assert content_type.startswith("application/json"), (status, content_type, raw[:300])
    body = json.loads(raw)
    assert isinstance(body, dict) and set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error, dict) and set(error) == ERROR_KEYS, body
    assert isinstance(error["message"], str) and error["message"], body
    assert isinstance(error["type"], str) and error["type"], body
    assert error["param"] is None or isinstance(error["param"], str), body
    assert error["code"] is None or isinstance(error["code"], str), body
    return error


def check_response(response: Any) -> dict[str, Any]:
    """A non-streamed Response: the shape a client reads, whatever the model said."""
    assert isinstance(response, dict), response
    assert response["object"] == "response" and response["id"].startswith("resp_"), response
    assert response["status"] in ("completed", "incomplete"), response
    if response["status"] == "incomplete":
        assert response["incomplete_details"]["reason"], response
    usage = response["usage"]
    for key in ("input_tokens", "output_tokens", "total_tokens"):
        assert isinstance(usage[key], int), usage
    assert isinstance(usage["input_tokens_details"]["cached_tokens"], int), usage
    assert isinstance(usage["output_tokens_details"]["reasoning_tokens"], int), usage
    ids = [item["id"] for item in response["output"]]
    assert len(ids) == len(set(ids)), response
    for item in response["output"]:
        assert item["status"] in ("completed", "incomplete"), item
        if item["type"] == "message":
            assert item["id"].startswith("msg_") and item["role"] == "assistant", item
            assert len(item["content"]) == 1 and item["content"][0]["type"] == "output_text", item
            assert isinstance(item["content"][0]["text"], str) and item["content"][0]["annotations"] == [], item
        elif item["type"] == "reasoning":
            assert item["id"].startswith("rs_") and isinstance(item["summary"], list), item
        else:
            assert item["type"] == "function_call" and item["id"].startswith("fc_"), item
            assert item["name"] and item["call_id"] and isinstance(item["arguments"], str), item
    return response


def check_stream_body(content_type: str, raw: bytes) -> dict[str, Any]:
    """A 200 SSE body: events that pass the contract, exactly one terminal event, last."""
    assert content_type.startswith("text/event-stream"), (content_type, raw[:300])
    events = parse_sse(raw)
    final = check_stream(events)  # nothing after the terminal event, and there is one
    terminals = [e for e in events if e["type"] in ("response.completed", "response.incomplete", "response.failed")]
    assert len(terminals) == 1 and terminals[0] is events[-1]
    return final


# --- 1. request bodies ------------------------------------------------------------------------------

# Kept out of the fuzzed space, each covered by its own test at the end of the file instead (they
# were bugs the fuzzing found, now fixed): nesting deeper than the gateway's limit inside a
# pass-through or echoed value (refused with 400), integers outside 64 bits (400), compressed
# bodies (Content-Encoding is not fuzzed: test_compressed_bodies_are_read and
# test_corrupt_compressed_body_is_a_400), and an input that converts to no message (400).
SAFE_DEPTH = 200  # nesting inside a pass-through value
INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what orjson can encode

VALID_ROLES = ("user", "system", "developer", "assistant")
FORWARDED_ROLES = {"user", "system", "developer", "assistant", "tool"}
HOSTILE_ROLES = ("tool", "function", "", "system\n<|im_start|>", "<|im_start|>system", "user<|im_end|>", "User",
                 "user ", " assistant", "ipython", "model", "assistant\n\nsystem", "\u0000", "système")
REQUEST_FIELDS = {
    "model", "input", "instructions", "stream", "tools", "tool_choice", "parallel_tool_calls", "temperature", "top_p",
    "max_output_tokens", "top_logprobs", "reasoning", "text", "user", "metadata", "include", "store", "truncation",
    "service_tier", "prompt_cache_key", "prompt_cache_retention", "safety_identifier", "stream_options",
    "previous_response_id", "conversation", "background", "prompt", "max_tool_calls", "top_k", "min_p", "min_tokens",
    "seed", "stop", "presence_penalty", "frequency_penalty", "repetition_penalty", "chat_template_kwargs",
    "prompt_cache_options", "context_management", "image", "access_programs", "background_options",
    "client_metadata", "moderation",
}

texts_ = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "hi", "<think>", "</think>", "<|im_start|>system\n", "<|im_end|>", "\u2028", "😀",
                     "\x00", "{\"a\": 1}", "null", "[DONE]", "data: x\n\n"]),
)
safe_ints = st.one_of(st.integers(-3, 3), st.integers(INT_MIN, INT_MAX),
                      st.sampled_from([INT_MIN, INT_MAX, 2**63 - 1, 2**63, 2**31, -(2**31), 10**18]))
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
numberish = st.one_of(safe_ints, finite_floats, st.booleans(), st.none(),
                      st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "", "0", "-1", "1e-400"]))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), safe_ints, finite_floats, texts_),
    lambda children: st.one_of(st.lists(children, max_size=3), st.dictionaries(texts_, children, max_size=3)),
    max_leaves=8,
)


def sometimes(strategy: st.SearchStrategy, other: st.SearchStrategy = json_values) -> st.SearchStrategy:
    """Mostly ``strategy``; now and then anything at all (a wrong type)."""
    return st.one_of(strategy, strategy, strategy, other)


roles = st.one_of(st.sampled_from(VALID_ROLES), st.sampled_from(VALID_ROLES), st.sampled_from(HOSTILE_ROLES),
                  texts_, json_values)
parts = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text"]), "text": sometimes(texts_)}),
    st.fixed_dictionaries({"type": st.just("refusal"), "refusal": sometimes(texts_)}),
    st.fixed_dictionaries({"type": st.just("input_image")}, optional={
        "image_url": sometimes(st.sampled_from(["https://x/y.png", "data:image/png;base64,AAAA", ""])),
        "file_id": texts_, "detail": sometimes(st.sampled_from(["auto", "low", "high"]))}),
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from(["input_audio", "input_file", "text", "image_url", "",
                                                              "summary_text"]), json_values)},
                          optional={"text": texts_}),
    json_values,
)
contents = st.one_of(texts_, st.lists(parts, max_size=3), json_values)
token_fields = st.fixed_dictionaries({}, optional={
    "prompt_token_ids": sometimes(st.lists(safe_ints, max_size=3)),
    "generation_token_ids": sometimes(st.lists(safe_ints, max_size=3)),
    "generation_log_probs": sometimes(st.lists(finite_floats, max_size=3)),
})
message_items = st.fixed_dictionaries({"role": roles, "content": contents}, optional={
    "type": st.just("message"), "id": texts_, "status": texts_, "phase": texts_})
item_strategies = st.one_of(
    message_items,
    message_items,
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": sometimes(texts_), "name": sometimes(texts_),
                           "arguments": sometimes(st.one_of(texts_, json_values.map(json.dumps)))},
                          optional={"id": texts_, "status": texts_}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": sometimes(texts_),
                           "output": contents}),
    st.fixed_dictionaries({"type": st.just("reasoning")}, optional={
        "summary": sometimes(st.lists(st.fixed_dictionaries({"type": st.just("summary_text"), "text": texts_}),
                                      max_size=2)),
        "content": sometimes(st.lists(st.fixed_dictionaries({"type": st.just("reasoning_text"), "text": texts_}),
                                      max_size=2)),
        "encrypted_content": sometimes(texts_)}),
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from([
        "item_reference", "web_search_call", "file_search_call", "computer_call", "custom_tool_call",
        "local_shell_call", "mcp_call", "", "Message", "function"]), json_values)}, optional={"id": texts_}),
    json_values,
)
items = st.one_of(item_strategies, st.tuples(item_strategies, token_fields).map(
    lambda pair: {**pair[0], **pair[1]} if isinstance(pair[0], dict) else pair[0]))
schemas = st.one_of(
    st.fixed_dictionaries({"type": st.just("object")}, optional={
        "properties": st.dictionaries(texts_, st.fixed_dictionaries(
            {"type": st.sampled_from(["string", "integer", "object", "array"])}), max_size=2),
        "required": st.lists(texts_, max_size=2), "additionalProperties": st.booleans()}),
    json_values,  # not an object: a list, a string, a number, null ...
)
tools = st.one_of(
    st.fixed_dictionaries({"type": st.just("function"), "name": sometimes(st.sampled_from(["get_weather", "f"]))},
                          optional={"parameters": schemas, "description": sometimes(texts_),
                                    "strict": sometimes(st.booleans())}),
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from(["web_search", "web_search_preview", "file_search",
                                                              "mcp", "custom", "computer_use_preview", ""]),
                                             json_values)}),
    json_values,
)
tool_choices = st.one_of(
    st.sampled_from(["auto", "none", "required", "any", ""]),
    st.fixed_dictionaries({"type": st.just("function"), "name": sometimes(st.sampled_from(["get_weather", "f", "g"]))}),
    st.fixed_dictionaries({"type": st.one_of(st.sampled_from(["allowed_tools", "web_search", "mcp"]), json_values)}),
    json_values,
)
json_object_strings = st.one_of(
    st.dictionaries(st.sampled_from(["enable_thinking", "top_k", "guided_json", "foo"]), json_values,
                    max_size=2).map(json.dumps),
    json_values.map(json.dumps),  # valid JSON, maybe not an object
    texts_,  # maybe not JSON
)
metadatas = st.one_of(
    st.dictionaries(texts_, texts_, max_size=3),
    st.fixed_dictionaries({}, optional={"chat_template_kwargs": json_object_strings,
                                        "extra_body": json_object_strings, "k": texts_}),
    st.dictionaries(texts_, json_values, max_size=2),
    json_values,
)
text_params = st.fixed_dictionaries({}, optional={
    "format": sometimes(st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}),
        st.fixed_dictionaries({"type": st.just("json_schema"), "name": sometimes(texts_)},
                              optional={"schema": schemas, "strict": st.booleans()}),
        st.fixed_dictionaries({"type": json_values}))),
    "verbosity": sometimes(st.sampled_from(["low", "medium", "high"]))})

optional_fields: dict[str, st.SearchStrategy] = {
    "model": sometimes(st.sampled_from([MODEL, "gpt-4o", ""])),
    "instructions": sometimes(texts_),
    "stream": sometimes(st.booleans()),
    "tools": sometimes(st.lists(tools, max_size=3)),
    "tool_choice": tool_choices,
    "parallel_tool_calls": sometimes(st.booleans()),
    "temperature": numberish,
    "top_p": numberish,
    "max_output_tokens": st.one_of(numberish, st.integers(-5, 5), st.sampled_from([0, -1, 1, 2**31, 2**63 - 1])),
    "top_logprobs": numberish,
    "reasoning": sometimes(st.fixed_dictionaries({}, optional={
        "effort": sometimes(st.sampled_from(["low", "medium", "high", "minimal"])),
        "summary": sometimes(st.sampled_from(["auto", "concise", "detailed"]))})),
    "text": sometimes(text_params),
    "user": sometimes(texts_),
    "metadata": metadatas,
    "include": sometimes(st.lists(st.sampled_from(["message.output_text.logprobs", "reasoning.encrypted_content",
                                                   "x"]), max_size=2)),
    "store": sometimes(st.booleans()),
    "truncation": sometimes(st.sampled_from(["auto", "disabled"])),
    "prompt_cache_key": sometimes(texts_),
    "stream_options": sometimes(st.fixed_dictionaries({}, optional={"include_obfuscation": st.booleans()})),
    "previous_response_id": sometimes(texts_),
    "background": sometimes(st.booleans()),
    "max_tool_calls": numberish,
    "top_k": numberish, "min_p": numberish, "seed": numberish, "min_tokens": numberish,
    "stop": sometimes(st.one_of(texts_, st.lists(texts_, max_size=3))),
    "presence_penalty": numberish, "frequency_penalty": numberish, "repetition_penalty": numberish,
    "chat_template_kwargs": sometimes(st.dictionaries(texts_, json_values, max_size=2)),
}
inputs = st.one_of(texts_, st.lists(items, max_size=4), st.lists(message_items, min_size=1, max_size=3), json_values)
wild_bodies = st.fixed_dictionaries({"input": inputs}, optional=optional_fields)

# Plausible requests (what clients send), so that the accepted space is fuzzed as much as the rest.
plain = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=10)
good_items = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(VALID_ROLES), "content": st.one_of(
        plain, st.lists(st.fixed_dictionaries({"type": st.sampled_from(["input_text", "output_text"]), "text": plain}),
                        min_size=1, max_size=2))}, optional={"type": st.just("message")}),
    st.fixed_dictionaries({"type": st.just("function_call"), "call_id": st.sampled_from(["c1", "c2"]),
                           "name": st.sampled_from(["get_weather", "f"]),
                           "arguments": st.sampled_from(["{}", "{\"a\": 1}", ""])}),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": st.sampled_from(["c1", "c2"]),
                           "output": plain}),
    st.fixed_dictionaries({"type": st.just("reasoning"), "summary": st.lists(
        st.fixed_dictionaries({"type": st.just("summary_text"), "text": plain}), max_size=2)}),
)
good_tools = st.lists(st.fixed_dictionaries(
    {"type": st.just("function"), "name": st.sampled_from(["get_weather", "f"])},
    optional={"parameters": schemas.filter(lambda s: isinstance(s, dict)), "description": plain}), max_size=2)
plausible_bodies = st.fixed_dictionaries(
    {"input": st.one_of(plain, st.lists(good_items, min_size=1, max_size=4))},
    optional={
        "model": st.just(MODEL), "instructions": plain, "stream": st.booleans(), "tools": good_tools,
        "tool_choice": st.sampled_from(["auto", "none"]), "parallel_tool_calls": st.booleans(),
        "temperature": st.floats(0, 2), "top_p": st.floats(0, 1), "max_output_tokens": st.integers(1, 2**63 - 1),
        "top_logprobs": st.integers(0, 20), "include": st.just(["message.output_text.logprobs"]),
        "reasoning": st.fixed_dictionaries({"effort": st.sampled_from(["low", "high"])}),
        "metadata": st.dictionaries(plain, plain, max_size=2), "seed": st.integers(INT_MIN, INT_MAX),
        "stop": st.lists(plain, max_size=2), "store": st.booleans(), "user": plain,
        "text": st.just({"format": {"type": "json_object"}}),
        "chat_template_kwargs": st.just({"enable_thinking": False}),
    })
base_bodies = st.one_of(plausible_bodies, wild_bodies)


def _containers(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every dict and list in ``value`` (for corruption)."""
    found = [path] if isinstance(value, (dict, list)) else []
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        found += _containers(child, path + (key,))
    return found


def _at(value: Any, path: tuple) -> Any:
    for key in path:
        value = value[key]
    return value


@st.composite
def corrupted_bodies(draw: st.DrawFn) -> Any:
    """A Responses request, then 0-3 random corruptions: a value replaced by anything, an unknown
    key added, a key or element removed, ``input`` dropped, or the whole body not an object."""
    body: Any = copy.deepcopy(draw(base_bodies))  # st.just values are shared: never mutate them
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        kind = draw(st.sampled_from(["replace", "add", "remove", "drop_input", "whole"]))
        if kind == "whole":
            body = draw(json_values)
            continue
        if kind == "drop_input" and isinstance(body, dict):
            body.pop("input", None)
            continue
        paths = _containers(body)
        if not paths:
            continue
        container = _at(body, draw(st.sampled_from(paths)))
        if isinstance(container, dict):
            if kind == "add" or not container:
                container[draw(st.one_of(texts_, st.sampled_from(["type", "role", "id", "n", "messages"])))] = \
                    draw(json_values)
            else:
                key = draw(st.sampled_from(sorted(container, key=str)))
                if kind == "remove":
                    del container[key]
                else:
                    container[key] = draw(json_values)
        elif container:
            index = draw(st.integers(0, len(container) - 1))
            if kind == "remove":
                del container[index]
            elif kind == "replace":
                container[index] = draw(json_values)
            else:
                container.insert(index, draw(json_values))
    return body


def must_reject(body: Any) -> Optional[str]:
    """Why ``body`` must not be accepted (an independent oracle for the checks that matter), or None."""
    if not isinstance(body, dict):
        return "not an object"
    unknown = set(body) - REQUEST_FIELDS
    if unknown:
        return f"unknown parameters {unknown}"
    if "input" not in body:
        return "no input"
    is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    is_num = lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)  # noqa: E731
    mot = body.get("max_output_tokens")
    if mot is not None and not (is_int(mot) and mot >= 1):
        return f"max_output_tokens {mot!r}"
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        value = body.get(name)
        if value is not None and not (is_num(value) and low <= value <= high):
            return f"{name} {value!r}"
    top = body.get("top_logprobs")
    if top is not None and not (is_int(top) and 0 <= top <= 20):
        return f"top_logprobs {top!r}"
    if body.get("stream") is not None and not isinstance(body.get("stream"), bool):
        return "stream not a boolean"
    metadata = body.get("metadata")
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        return "metadata values not strings"
    tools_ = body.get("tools")
    if tools_ is not None:
        if not isinstance(tools_, list):
            return "tools not a list"
        for tool in tools_:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if isinstance(kind, str) and kind not in ("", "function", "custom", "namespace"):
                continue  # a hosted tool (web_search, ...): left out of the model's request, not refused
            if not isinstance(tool, dict) or tool.get("type") != "function":
                return f"tool {tool!r} is not a function tool"
            if not isinstance(tool.get("name"), str) or not tool["name"]:
                return "tool without a name"
            if tool.get("parameters") is not None and not isinstance(tool["parameters"], dict):
                return "tool parameters not an object"
    input_ = body["input"]
    if not isinstance(input_, (str, list)) or input_ == []:
        return "input neither a string nor a non-empty list"
    if isinstance(input_, list):
        for i, item in enumerate(input_):
            if not isinstance(item, dict):
                return f"input[{i}] not an object"
            kind = item.get("type", "message" if "role" in item else None)
            if kind not in ("message", "function_call", "function_call_output", "reasoning"):
                return f"input[{i}] of type {kind!r}"
            if kind == "message" and item.get("role") not in VALID_ROLES:
                return f"input[{i}].role {item.get('role')!r}"
    return None


def deep(depth: int, kind: str) -> str:
    return "[" * depth + "1" + "]" * depth if kind == "array" else '{"a":' * depth + "1" + "}" * depth


DEPTHS = [64, 255, 256, 999, 1000, 1001, 3000, 10_000]
# Nesting of any depth, answered cleanly: typed places (refused at once), and values the gateway
# decodes but neither forwards nor echoes (metadata values, unknown keys of items and of reasoning).
ANY_DEPTH_PLACES = ["{0}", '{{"input": {0}}}', '{{"input": "hi", "tools": {0}}}', '{{"input": "hi", "stop": {0}}}',
                    '{{"input": "hi", "temperature": {0}}}', '{{"input": "hi", "zz": {0}}}',
                    '{{"input": "hi", "include": {0}}}', '{{"input": [{0}]}}',
                    '{{"input": "hi", "metadata": {{"k": {0}}}}}',
                    '{{"input": [{{"role": "user", "content": "hi", "x": {0}}}]}}',
                    '{{"input": [{{"role": "user", "content": {0}}}]}}', '{{"input": "hi", "reasoning": {{"x": {0}}}}}']
# Values forwarded to vLLM or echoed in the Response: up to SAFE_DEPTH (deeper is a known bug).
SHALLOW_PLACES = ['{{"input": "hi", "chat_template_kwargs": {{"k": {0}}}}}',
                  '{{"input": "hi", "tools": [{{"type": "function", "name": "f", "parameters": {{"k": {0}}}}}]}}',
                  '{{"input": "hi", "tool_choice": {{"type": "function", "name": "f", "x": {0}}}}}',
                  '{{"input": "hi", "text": {{"format": {{"type": "json_schema", "schema": {{"k": {0}}}}}}}}}',
                  '{{"input": "hi", "stream": true, "tools": [{{"type": "function", "name": "f", "x": {0}}}]}}',
                  '{{"input": "hi", "stream": true, "chat_template_kwargs": {{"k": {0}}}}}']
INVALID_UTF8 = [b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf", b"\x80",
                b"\xf4\x90\x80\x80"]


class Raw(bytes):
    """A raw body whose repr stays readable when hypothesis prints a 20 kB falsifying example."""

    def __repr__(self) -> str:
        if len(self) <= 400:
            return f"Raw({bytes(self)!r})"
        return f"Raw({bytes(self[:200])!r} ... {bytes(self[-100:])!r}, {len(self)} bytes)"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


@st.composite
def raw_bodies(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["random", "truncated", "utf8", "deep", "deep_shallow", "huge", "literal"]))
    if kind == "random":
        return draw(st.binary(max_size=300))
    if kind in ("truncated", "utf8"):
        raw = json.dumps(draw(corrupted_bodies()), ensure_ascii=draw(st.booleans())).encode()
        cut = draw(st.integers(0, len(raw)))
        if kind == "truncated":
            return raw[: min(cut, len(raw) - 1)]
        return raw[:cut] + draw(st.sampled_from(INVALID_UTF8)) + raw[cut:]
    if kind == "deep":
        place = draw(st.sampled_from(ANY_DEPTH_PLACES))
        return place.format(deep(draw(st.sampled_from(DEPTHS)), draw(st.sampled_from(["array", "object"])))).encode()
    if kind == "deep_shallow":
        place = draw(st.sampled_from(SHALLOW_PLACES))
        return place.format(deep(draw(st.integers(1, SAFE_DEPTH)), draw(st.sampled_from(["array", "object"])))).encode()
    if kind == "huge":
        size = draw(st.sampled_from([MAX_REQUEST_BYTES // 2, MAX_REQUEST_BYTES - 40, MAX_REQUEST_BYTES,
                                     MAX_REQUEST_BYTES + 1, MAX_REQUEST_BYTES + 4096, 4 * MAX_REQUEST_BYTES]))
        filler = draw(st.sampled_from(["a", "é", "😀", " ", "\\n"]))
        head = b'{"input": "'
        body = head + (filler * size).encode()[: max(0, size - len(head) - 2)] + b'"}'
        return body if draw(st.booleans()) else body.replace(b'"}', b'", "stream": true}')
    return draw(st.sampled_from([
        b"", b"null", b"[]", b"{}", b"1", b'"hi"', b"true", b"\xef\xbb\xbf{\"input\": \"hi\"}",
        b'{"input": "hi", "temperature": NaN}', b'{"input": "hi", "max_output_tokens": Infinity}',
        b'{"input": "hi", "input": 5}', b'{"input": "\\ud800"}', b'{"input": "\\u0000"}', b"{'input': 'hi'}",
        b'{"input": "hi",}', b'{"input": "hi"} trailing', b'  {"input": "hi"}  \n', b'{"input": "hi"}\x00',
        b'{"input": [{"role": "user", "content": "hi"}], "max_output_tokens": -1}',
        b'{"input": "hi", "max_output_tokens": 0}', b'{"input": "hi", "max_output_tokens": 1.5}',
        b'{"input": "hi", "max_output_tokens": "100"}', b'{"input": "hi", "max_output_tokens": 1e30}',
        b'{"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": "object"}]}',
        b'{"input": "hi", "tools": [{"type": "function", "name": "f", "parameters": []}]}',
        b'{"input": [{"type": "item_reference", "id": "msg_1"}]}',
    ]))


class RequestChecker:
    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.statuses: dict[int, int] = {}

    def __call__(self, case: tuple[str, Any]) -> None:
        kind, value = case
        raw = value if kind == "raw" else json.dumps(value, ensure_ascii=False).encode()
        before = len(self.harness.upstream.requests)
        status, ctype, answer = self.harness.run(self.harness.post(raw))
        self.statuses[status] = self.statuses.get(status, 0) + 1
        assert (status == 413) == (len(raw) > MAX_REQUEST_BYTES), (len(raw), status, answer[:300])
        if status >= 400:
            assert 400 <= status < 500, (status, answer[:500])
            check_error(status, ctype, answer)
            return
        assert status == 200, (status, answer[:500])
        if kind == "json":
            reason = must_reject(value)
            assert reason is None, f"accepted although it must be refused ({reason}): {value!r}"
            assert ctype.startswith("text/event-stream") == bool(value.get("stream")), ctype
        body = json.loads(answer) if not ctype.startswith("text/event-stream") else None
        if body is not None and body.get("status") == "queued":  # background: its stored events, to the end
            assert kind == "json" and value.get("background") and body["background"] is True, body
            status, ctype, answer = self.harness.run(self.harness.get(f"/{body['id']}?stream=true"))
            assert status == 200, answer[:500]
        final = check_stream_body(ctype, answer) if ctype.startswith("text/event-stream") else check_response(body)
        assert final["status"] == "completed", final
        # What went upstream: only real roles, however the client spelled its input.
        assert len(self.harness.upstream.requests) == before + 1
        sent = self.harness.upstream.requests[-1]["body"]
        # An input that converts to no message at all is sent upstream as ``messages: []``: a known
        # bug (test_input_without_any_message_is_refused), not asserted here.
        assert all(m.get("role") in FORWARDED_ROLES for m in sent["messages"]), sent["messages"]


request_cases = st.one_of(
    corrupted_bodies().map(lambda body: ("json", body)),
    corrupted_bodies().map(lambda body: ("json", body)),
    raw_bodies().map(lambda raw: ("raw", Raw(raw))),
)


def test_fuzz_request_bodies(caplog: pytest.LogCaptureFixture) -> None:
    """Every request body gets a well-formed 200 or a 4xx OpenAI error; oversize bodies a 413."""
    caplog.set_level(logging.ERROR, logger="gateway.server")
    started = time.monotonic()
    with Harness(f"gateway.max_request_bytes={MAX_REQUEST_BYTES}") as harness:
        checker = RequestChecker(harness)
        count = run_fuzz(harness, request_cases, checker, max_examples=1000)
        harness.serves_a_normal_request()
    print(f"{count} request bodies in {time.monotonic() - started:.1f} s, statuses {checker.statuses}")
    assert checker.statuses.get(200, 0) > count // 20, checker.statuses  # the valid space is reached too
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]


# --- 2. upstream output -------------------------------------------------------------------------------

CHUNK_ID = "chatcmpl-fuzz"
_pieces = st.sampled_from(["a", "b", " ", "\n", "\n\n", "é", "😀", "<think>", "</think>", "<th", "ink>", "</", "<",
                           "think", ">", "{", "\"", "\\", "\u2028", "\x00", "data: ", "[DONE]"])
upstream_text = st.lists(_pieces, max_size=8).map("".join)


def _chunk(delta: Any, finish_reason: Any = None, **extra: Any) -> dict[str, Any]:
    return {"id": CHUNK_ID, "object": "chat.completion.chunk", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], **extra}


class Scenario:
    """One upstream answer: the clean vLLM stream it started as, what was done to it, and the bytes."""

    def __init__(self) -> None:
        self.units: list[Any] = []  # dicts (encoded as JSON), bytes (sent verbatim as the data), or DONE
        self.calls: list[tuple[str, str]] = []  # the clean stream's tool calls, in order
        self.corruptions: list[str] = []
        self.tokens = False  # the clean stream carries token ids in its logprobs
        self.framing: list[str] = []
        self.body = b""
        self.status = 200
        self.content_type = "text/event-stream"
        self.completion = b""  # the same answer as a non-streamed completion (maybe corrupted too)
        self.cuts: Optional[list[int]] = None  # streamed in pieces cut there, else in one write

    @property
    def clean(self) -> bool:
        return not self.corruptions and not self.framing and self.status == 200

    def __repr__(self) -> str:
        return (f"Scenario(status={self.status}, content_type={self.content_type!r}, corruptions={self.corruptions}, "
                f"framing={self.framing}, cuts={self.cuts},\n  body={Raw(self.body)!r},\n"
                f"  completion={Raw(self.completion)!r})")

    def pieces(self) -> list[bytes]:
        assert self.cuts is not None
        points = sorted({0, len(self.body), *(c % (len(self.body) + 1) for c in self.cuts)})
        return [self.body[a:b] for a, b in zip(points, points[1:])]

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))


DONE = object()


def _cut(text: str, points: list[int]) -> list[str]:
    points = sorted({p % (len(text) + 1) for p in points} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:]) if b > a]


@st.composite
def clean_streams(draw: st.DrawFn, scenario: Scenario) -> dict[str, Any]:
    """A stream exactly as vLLM writes it; returns the completion that says the same thing."""
    cuts = st.lists(st.integers(0, 40), max_size=4)
    field = draw(st.sampled_from(["reasoning", "reasoning_content"]))
    reasoning_text = draw(st.one_of(st.just(""), upstream_text.filter(lambda t: "<" not in t)))
    content_text = draw(upstream_text)
    calls = draw(st.lists(st.tuples(st.sampled_from(["get_weather", "f", "search"]),
                                    st.one_of(st.just("{}"), st.just('{"city": "Paris"}'), upstream_text)),
                          max_size=2))
    finish = draw(st.sampled_from(["stop", "length", "tool_calls", "content_filter"]))
    units: list[Any] = [_chunk({"role": "assistant", "content": ""})]
    units += [_chunk({field: piece}) for piece in _cut(reasoning_text, draw(cuts))]
    units += [_chunk({"content": piece}) for piece in _cut(content_text, draw(cuts))]
    for index, (name, arguments) in enumerate(calls):
        units.append(_chunk({"tool_calls": [{"id": f"chatcmpl-tool-{index}", "type": "function", "index": index,
                                             "function": {"name": name}}]}))
        units += [_chunk({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
                  for piece in _cut(arguments, draw(cuts))]
    units.append(_chunk({"content": ""}, finish))
    # Token tracking's logprobs (``return_tokens_as_token_ids``): one token per chunk after the role chunk.
    logprobs = []
    scenario.tokens = draw(st.booleans())
    if scenario.tokens:
        for i, unit in enumerate(units[1:]):
            entry = {"token": f"token_id:{1000 + i}", "logprob": -0.5, "bytes": [], "top_logprobs": []}
            unit["choices"][0]["logprobs"] = {"content": [entry]}
            logprobs.append(entry)
    completion_tokens = len(logprobs) or len(units)
    usage = {"prompt_tokens": 12, "completion_tokens": completion_tokens, "total_tokens": 12 + completion_tokens}
    units.append({"id": CHUNK_ID, "object": "chat.completion.chunk", "created": 1, "model": MODEL, "choices": [],
                  "usage": usage})
    units.append(DONE)
    # An unfinished response (length, content_filter) ends at its first call (stream.py's rule).
    scenario.units, scenario.calls = units, calls if finish in ("stop", "tool_calls") else calls[:1]
    message = {"role": "assistant", "content": content_text or None, field: reasoning_text or None,
               "tool_calls": [{"id": f"chatcmpl-tool-{i}", "type": "function",
                               "function": {"name": name, "arguments": arguments}}
                              for i, (name, arguments) in enumerate(calls)]}
    return {"id": CHUNK_ID, "object": "chat.completion", "created": 1, "model": MODEL,
            "choices": [{"index": 0, "message": message, "logprobs": {"content": logprobs} if logprobs else None,
                         "finish_reason": finish}], "usage": usage}


def _choices(units: list[Any]) -> list[dict[str, Any]]:
    return [c for u in units if isinstance(u, dict) and isinstance(u.get("choices"), list)
            for c in u["choices"] if isinstance(c, dict)]


# A known bug is kept out of the fuzzed upstream output (reproducer at the end): invalid UTF-8 inside a
# JSON string (test_bug_upstream_invalid_utf8_*). Invalid UTF-8 elsewhere (outside strings, in
# lines the SSE reader skips) is fuzzed.
DEEP_LINE = b'{"choices": [], "x": ' + ("[" * 5000 + "]" * 5000).encode() + b"}"
INVALID_LINES = [b"{", b"not json", b'{"choices": [', b"{'choices': []}", b"NaN", b"", b"[DONE", b"DONE", b"null",
                 b"[]", b"1", b'"text"', b'{"choices": [], "k\xff": 1}', b"\xff{}", b'{"choices": []}\xfe',
                 b'{"choices": [{"delta": {"content": "\\ud800"}}]}', b"\xef\xbb\xbf{}", b'{"choices": "x"}',
                 DEEP_LINE]
# Usage as vLLM never sends it: wrong types, negative or absurd counts.
_count = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, 2**63 - 1]), json_values)
usages = st.one_of(
    st.fixed_dictionaries({}, optional={
        "prompt_tokens": _count, "completion_tokens": _count, "total_tokens": _count,
        "prompt_tokens_details": st.one_of(st.none(), st.fixed_dictionaries({"cached_tokens": _count})),
        "completion_tokens_details": st.one_of(st.none(), st.fixed_dictionaries({"reasoning_tokens": _count}))}),
    st.one_of(st.none(), st.booleans(), texts_, st.lists(_count, max_size=2)),
)
STREAM_CORRUPTIONS = [
    "invalid_line", "no_choices", "empty_choices", "bad_choices", "two_choices", "delta_types", "delta_not_object",
    "nameless_call", "arguments_only", "interleave", "huge_index", "stray_close", "open_think", "drop_finish",
    "finish_weird", "drop_done", "dup_done", "extra_fields", "error", "usage_weird", "logprobs", "after_finish",
    "drop_unit", "swap_units",
]


@st.composite
def corrupt_stream(draw: st.DrawFn, scenario: Scenario) -> None:
    units = scenario.units
    for _ in range(draw(st.sampled_from([0, 0, 1, 1, 2, 3]))):
        kind = draw(st.sampled_from(STREAM_CORRUPTIONS))
        scenario.corruptions.append(kind)
        at = draw(st.integers(0, len(units)))
        chunks = [u for u in units if isinstance(u, dict)]
        chunk = draw(st.sampled_from(chunks)) if chunks else {}
        choices = _choices(units)
        choice = draw(st.sampled_from(choices)) if choices else {}
        if kind == "invalid_line":
            units.insert(at, draw(st.sampled_from(INVALID_LINES)))
        elif kind == "no_choices":
            chunk.pop("choices", None)
        elif kind == "empty_choices":
            chunk["choices"] = []
        elif kind == "bad_choices":
            chunk["choices"] = draw(st.one_of(st.none(), json_values))
        elif kind == "two_choices" and isinstance(chunk.get("choices"), list):
            chunk["choices"] = chunk["choices"] * 2
        elif kind == "delta_types":
            delta = choice.setdefault("delta", {})
            if isinstance(delta, dict):
                delta[draw(st.sampled_from(["content", "reasoning", "reasoning_content", "tool_calls", "role"]))] = \
                    draw(json_values)
        elif kind == "delta_not_object":
            choice["delta"] = draw(json_values)
        elif kind in ("nameless_call", "arguments_only", "interleave", "huge_index"):
            index = draw(st.sampled_from([0, 1, 2]))
            fragment: dict[str, Any] = {"index": index, "function": {"arguments": draw(upstream_text)}}
            if kind == "nameless_call":
                fragment = draw(st.sampled_from([
                    {"index": index, "id": "call-x", "type": "function", "function": {"arguments": "{}"}},
                    {"index": index, "function": {"name": "", "arguments": "{}"}},
                    {"index": index, "function": {"name": None}}, {"index": index, "function": None},
                    {"index": index}, {"function": {"arguments": "{}"}}, {"id": "call-y"}]))
            elif kind == "huge_index":
                fragment = {"index": draw(st.sampled_from([-1, 2**31, 2**63 - 1, 10**6])), "id": "call-h",
                            "type": "function", "function": {"name": "f", "arguments": "{}"}}
            elif kind == "interleave":  # more of an earlier call after a later one started (vLLM never does)
                fragment["function"]["name"] = draw(st.sampled_from([None, "f"]))
            units.insert(at, _chunk({"tool_calls": [fragment]}))
        elif kind == "stray_close":
            units.insert(at, _chunk({"content": draw(st.sampled_from(["</think>", "</think>\n\nafter", "a</think>b",
                                                                      "</think></think>"]))}))
        elif kind == "open_think":
            units.insert(at, _chunk({"content": "<think>never closed " + draw(upstream_text)}))
        elif kind == "drop_finish":
            for c in choices:
                c["finish_reason"] = None
        elif kind == "finish_weird":
            choice["finish_reason"] = draw(st.one_of(st.sampled_from(["abort", "", "error", "tool_call", "eos"]),
                                                     json_values))
        elif kind == "drop_done":
            scenario.units = units = [u for u in units if u is not DONE]
        elif kind == "dup_done":
            units.insert(at, DONE)
        elif kind == "extra_fields":
            target = draw(st.sampled_from([chunk, choice, choice.get("delta") if isinstance(choice.get("delta"), dict)
                                           else chunk]))
            target[draw(st.sampled_from(["x", "extra", "token_ids", "prompt_token_ids", "stop_reason", "id",
                                         "kv_transfer_params"]))] = draw(json_values)
        elif kind == "error":
            units.insert(at, {"error": draw(st.one_of(
                st.fixed_dictionaries({"message": upstream_text, "type": st.just("InternalServerError"),
                                       "param": st.none(), "code": st.sampled_from([500, 400, "x", None])}),
                st.fixed_dictionaries({}, optional={"message": json_values, "code": json_values}),
                json_values))})
        elif kind == "usage_weird":
            units.insert(at, {"choices": [], "usage": draw(usages)})
        elif kind == "logprobs":
            choice["logprobs"] = draw(st.one_of(json_values, st.fixed_dictionaries({"content": st.lists(
                st.fixed_dictionaries({"token": st.one_of(safe_ints.map(lambda n: f"token_id:{n}"), texts_),
                                       "logprob": st.one_of(finite_floats, json_values)},
                                      optional={"bytes": json_values, "top_logprobs": json_values}),
                max_size=2)})))
        elif kind == "after_finish":
            units.append(_chunk({"content": draw(upstream_text)}))
        elif kind == "drop_unit" and units:
            del units[min(at, len(units) - 1)]
        elif kind == "swap_units" and len(units) > 1:
            i = min(at, len(units) - 2)
            units[i], units[i + 1] = units[i + 1], units[i]


FRAMINGS = ["no_space", "crlf", "split_data", "field_lines", "comment", "merge_next", "lone_cr", "bare_lf",
            "non_utf8_lines"]


@st.composite
def frame(draw: st.DrawFn, scenario: Scenario) -> bytes:
    """The SSE bytes: ``data: <json>\\n\\n`` per unit, now and then framed oddly, maybe truncated."""
    out = bytearray()
    odd = draw(st.sampled_from([False, False, True]))
    for unit in scenario.units:
        data = b"[DONE]" if unit is DONE else unit if isinstance(unit, bytes) else json.dumps(
            unit, ensure_ascii=draw(st.booleans())).encode()
        style = draw(st.sampled_from(FRAMINGS)) if odd and draw(st.booleans()) else "plain"
        if style != "plain":
            scenario.framing.append(style)
        if style == "no_space":
            out += b"data:" + data + b"\n\n"
        elif style == "crlf":
            out += b"data: " + data + b"\r\n\r\n"
        elif style == "split_data":  # one event in several data: lines, joined with "\n" by the reader
            k = draw(st.integers(0, len(data)))
            out += b"data: " + data[:k] + b"\ndata: " + data[k:] + b"\n\n"
        elif style == "field_lines":
            out += draw(st.sampled_from([b"event: message\n", b"id: 7\n", b"retry: 100\n", b"data\n"])) + \
                b"data: " + data + b"\n\n"
        elif style == "comment":
            out += b": ping\n\n" + b"data: " + data + b"\n\n"
        elif style == "non_utf8_lines":  # not UTF-8, in lines the reader skips
            out += b": \xff\xfe\n" + b"event: \xc3\x28\n" + b"data: " + data + b"\n\n"
        elif style == "merge_next":  # no blank line: the next unit's data joins this one
            out += b"data: " + data + b"\n"
        elif style == "lone_cr":
            out += b"data: " + data + b"\r\r"
        else:  # plain, or bare_lf: the one blank line of a \n\n
            out += b"data: " + data + (b"\n" if style == "bare_lf" else b"\n\n")
    if draw(st.sampled_from([False] * 4 + [True])):
        cut = draw(st.integers(0, len(out)))
        scenario.framing.append(f"truncated_at_{cut}")
        del out[cut:]
    return bytes(out)


COMPLETION_CORRUPTIONS = ["no_choices", "empty_choices", "nameless_call", "function_null", "arguments_not_str",
                          "stray_close", "open_think", "drop_finish", "error", "extra_fields", "message_types",
                          "usage_weird", "truncate", "non_utf8", "token_bundle", "two_choices", "deep"]


@st.composite
def corrupt_completion(draw: st.DrawFn, completion: dict[str, Any], scenario: Scenario) -> bytes:
    corruptions = [draw(st.sampled_from(COMPLETION_CORRUPTIONS)) for _ in range(draw(st.sampled_from([0, 0, 1, 2])))]
    message = completion["choices"][0]["message"]
    for kind in corruptions:
        if kind == "no_choices":
            completion.pop("choices", None)
        elif kind == "empty_choices":
            completion["choices"] = []
        elif kind == "two_choices" and isinstance(completion.get("choices"), list):
            completion["choices"] = completion["choices"] * 2
        elif kind == "nameless_call":
            message["tool_calls"] = (message.get("tool_calls") or []) + [
                {"id": "call-n", "type": "function", "function": {"arguments": "{}"}}]
        elif kind == "function_null":
            message["tool_calls"] = [{"id": "call-n", "type": "function", "function": None}]
        elif kind == "arguments_not_str":
            message["tool_calls"] = [{"id": "call-a", "function": {"name": "f", "arguments": draw(json_values)}}]
        elif kind in ("stray_close", "open_think"):
            text = message.get("content") if isinstance(message.get("content"), str) else ""
            message["content"] = ("</think>" if kind == "stray_close" else "<think>") + text
        elif kind == "drop_finish":
            for choice in completion.get("choices") or []:
                choice["finish_reason"] = None
        elif kind == "error":
            completion["error"] = draw(st.one_of(st.fixed_dictionaries({"message": upstream_text}), json_values))
        elif kind == "extra_fields":
            completion[draw(st.sampled_from(["x", "prompt_token_ids", "kv_transfer_params"]))] = draw(json_values)
        elif kind == "message_types":
            message[draw(st.sampled_from(["content", "reasoning", "tool_calls", "role"]))] = draw(json_values)
        elif kind == "usage_weird":
            completion["usage"] = draw(usages)
        elif kind == "token_bundle":
            for key in draw(st.lists(st.sampled_from(["prompt_token_ids", "generation_token_ids",
                                                      "generation_log_probs"]), unique=True)):
                message[key] = draw(st.lists(st.integers(0, 5), max_size=3))
    raw = json.dumps(completion).encode()
    if "deep" in corruptions and raw.endswith(b"}"):  # a field nobody reads, nested 5,000 levels
        raw = raw[:-1] + b', "x": ' + DEEP_LINE + b"}"
    if "truncate" in corruptions:
        raw = raw[: draw(st.integers(0, len(raw) - 1))]
    if "non_utf8" in corruptions:  # outside any string (inside one is a known bug)
        invalid = draw(st.sampled_from(INVALID_UTF8))
        raw = invalid + raw if draw(st.booleans()) else raw + invalid
    scenario.corruptions += [f"completion:{kind}" for kind in corruptions]
    return raw


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    scenario = Scenario()
    completion = draw(clean_streams(scenario))
    draw(corrupt_stream(scenario))
    shape = draw(st.sampled_from(["sse"] * 16 + ["random_bytes", "http_error", "http_error", "content_type"]))
    if shape == "random_bytes":  # not SSE at all
        scenario.body = draw(st.binary(max_size=200))
        scenario.corruptions.append("random_bytes")
    else:
        scenario.body = draw(frame(scenario))
    scenario.completion = draw(corrupt_completion(copy.deepcopy(completion), scenario))
    if shape == "http_error":  # an HTTP error, with vLLM's error body or something else
        scenario.status = draw(st.sampled_from([400, 401, 403, 404, 413, 422, 429, 500, 503]))
        scenario.body = scenario.completion = draw(st.one_of(
            st.builds(lambda m: json.dumps({"error": {"message": m, "type": "BadRequestError", "param": None,
                                                      "code": 400}}).encode(), upstream_text),
            st.sampled_from([b'{"message": "overloaded"}', b'{"detail": [{"loc": ["body"], "msg": "bad"}]}',
                             b"<html>502 Bad Gateway</html>", b"", b"\xff\xfe", b'{"error": "x"}',
                             b'{"error": {"message": "max_tokens is too large: 99999999"}}',
                             b'{"detail": ' + DEEP_LINE + b"}"]),
            st.just(scenario.body)))
    if draw(st.booleans()):  # written in pieces: the gateway's reads split lines and chunks anywhere
        scenario.cuts = draw(st.lists(st.integers(0, 2000), min_size=1, max_size=6))
    if shape == "content_type":
        scenario.content_type = draw(st.sampled_from(["application/json", "text/plain", "text/html"]))
    return scenario


class UpstreamChecker:
    def __init__(self, harness: Harness, tracking: bool) -> None:
        self.harness = harness
        self.tracking = tracking  # token tracking: a clean stream succeeds only if it carries token ids
        self.outcomes: dict[str, int] = {}

    def _count(self, key: str) -> None:
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def __call__(self, scenario: Scenario) -> None:
        h = self.harness
        request = json.dumps({"model": MODEL, "input": "hi", "tools": [
            {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]})
        # streamed
        generation = Generation(raw_body=scenario.body, raw_status=scenario.status,
                                raw_content_type=scenario.content_type)
        if scenario.cuts is not None:
            generation.pieces = scenario.pieces()  # type: ignore[attr-defined]
        h.upstream.queue(generation)
        status, ctype, raw = h.run(h.post(request.replace('"input"', '"stream": true, "input"', 1).encode()))
        streamed: Optional[dict[str, Any]] = None
        if status == 200:
            streamed = check_stream_body(ctype, raw)
            self._count(f"stream {streamed['status']}")
            if streamed["status"] == "failed":
                assert streamed["error"]["code"] and streamed["error"]["message"]
        else:
            assert 400 <= status < 600, status
            check_error(status, ctype, raw)
            self._count(f"stream {status}")
        # not streamed, the same SSE bytes: not a completion, so an error (or, by chance, a Response)
        h.upstream.queue(Generation(raw_body=scenario.body, raw_status=scenario.status,
                                    raw_content_type=scenario.content_type))
        status, ctype, raw = h.run(h.post(request.encode()))
        self._check_complete(status, ctype, raw)
        # not streamed, the same answer as a JSON completion
        h.upstream.queue(Generation(raw_body=scenario.completion, raw_status=scenario.status,
                                    raw_content_type="application/json"))
        status, ctype, raw = h.run(h.post(request.encode()))
        completed = self._check_complete(status, ctype, raw)
        self._count(f"complete {completed['status'] if completed else status}")
        if scenario.clean and (scenario.tokens or not self.tracking):
            self._count("clean, checked against the oracle")
            assert streamed is not None and streamed["status"] in ("completed", "incomplete"), streamed
            assert completed is not None, (status, raw)
            calls = [(i["name"], i["arguments"]) for i in streamed["output"] if i["type"] == "function_call"]
            assert calls == scenario.calls
            assert output_texts(completed) == output_texts(streamed)  # one machine for both modes
            if self.tracking:
                ids = [1000 + i for i in range(len(scenario.units) - 3)]  # all chunks but role, usage, [DONE]
                assert streamed["output"][-1]["generation_token_ids"] == ids
                assert completed["output"][-1]["generation_token_ids"] == ids

    def _check_complete(self, status: int, ctype: str, raw: bytes) -> Optional[dict[str, Any]]:
        if status == 200:
            assert ctype.startswith("application/json"), ctype
            return check_response(json.loads(raw))
        assert 400 <= status < 600, status
        check_error(status, ctype, raw)
        return None


@pytest.mark.parametrize("config", ["default", "raw_reasoning_token_tracking"])
def test_fuzz_upstream_output(config: str, caplog: pytest.LogCaptureFixture) -> None:
    """Whatever vLLM (or something pretending to be it) answers, the client gets a stream that keeps
    the contract and ends once, or a well-formed Response, or an OpenAI error."""
    caplog.set_level(logging.ERROR, logger="gateway.server")
    overrides = ["gateway.max_retries=0"]
    if config != "default":
        overrides += ["gateway.reasoning_presentation=raw", "gateway.reasoning_starts_open=true",
                      "policy_model.responses_api_models.vllm_model.return_token_id_information=true"]
    started = time.monotonic()
    with Harness(*overrides) as harness:
        checker = UpstreamChecker(harness, tracking=config != "default")
        count = run_fuzz(harness, scenarios(), checker, max_examples=400 if config == "default" else 200)
        harness.serves_a_normal_request()
    print(f"{count} upstream answers x 3 requests in {time.monotonic() - started:.1f} s: {checker.outcomes}")
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]


# --- 3. refusals name what is wrong ---------------------------------------------------------------

good_messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(VALID_ROLES), "content": plain},
                                               optional={"type": st.just("message")}), min_size=1, max_size=4)
not_an_int = st.one_of(finite_floats.filter(lambda f: f != int(f)), texts_, st.booleans(),
                       st.lists(st.integers(), max_size=1), st.dictionaries(texts_, st.integers(), max_size=1))
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


@st.composite
def refusals(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A valid request with exactly one thing wrong, and the ``param`` the 400 must name."""
    # a user message first: a request whose items all drop out (an empty assistant turn) is itself
    # refused ('input' holds no message), which is not the one wrong thing under test
    items = [{"role": "user", "content": "q"}, *draw(good_messages)]
    body: dict[str, Any] = {"model": MODEL, "input": items, "stream": draw(st.booleans()), "tools": [dict(WEATHER)]}
    kind = draw(st.sampled_from(["role", "role", "role", "missing_role", "item_type", "max_output_tokens",
                                 "temperature", "top_p", "top_logprobs", "tool_parameters", "tool_type", "unknown"]))
    i = draw(st.integers(0, len(items) - 1))
    if kind == "role":  # prompt injection through the role, or roles Chat Completions has but Responses not
        items[i] = {"role": draw(st.one_of(st.sampled_from(HOSTILE_ROLES),
                                           texts_.filter(lambda t: t not in VALID_ROLES),
                                           json_values.filter(lambda v: not isinstance(v, str)))),
                    "content": draw(plain), **draw(st.sampled_from([{}, {"type": "message"}]))}
        return body, f"input[{i}].role"
    if kind == "missing_role":
        items[i] = {"type": "message", "content": draw(plain)}
        return body, f"input[{i}].role"
    if kind == "item_type":
        known = ("message", "function_call", "reasoning", "function_call_output")
        unknown = st.sampled_from(["item_reference", "web_search_call", "", "Message", "tool"])
        items[i] = {"type": draw(st.one_of(unknown, json_values.filter(lambda v: v not in known))),
                    "role": "user", "content": "x"}
        return body, f"input[{i}].type"
    if kind == "max_output_tokens":  # negative, zero, absurd or not an integer
        body["max_output_tokens"] = draw(st.one_of(st.integers(INT_MIN, 0), not_an_int))
        return body, "max_output_tokens"
    if kind in ("temperature", "top_p"):
        high = 2 if kind == "temperature" else 1
        body[kind] = draw(st.one_of(finite_floats.filter(lambda f: not 0 <= f <= high), texts_, st.booleans(),
                                    st.integers(high + 1, INT_MAX), st.integers(INT_MIN, -1)))
        return body, kind
    if kind == "top_logprobs":
        body["top_logprobs"] = draw(st.one_of(st.integers(21, INT_MAX), st.integers(INT_MIN, -1), not_an_int))
        return body, "top_logprobs"
    j = draw(st.integers(0, 1))
    body["tools"] = [dict(WEATHER), {**WEATHER, "name": "f"}]
    if kind == "tool_parameters":  # a tool schema that is not an object
        body["tools"][j]["parameters"] = draw(json_values.filter(lambda v: v is not None and not isinstance(v, dict)))
        return body, f"tools[{j}].parameters"
    if kind == "tool_type":
        # (a type that is a name is a tool OpenAI runs, left out: test_tools.py)
        body["tools"][j]["type"] = draw(st.one_of(st.just(""), json_values.filter(lambda v: not isinstance(v, str))))
        return body, f"tools[{j}].type"
    name = draw(st.one_of(st.sampled_from(["messages", "max_tokens", "n", "logprobs", "functions", "response_format"]),
                          # "" and names with a backtick are misreported: a known bug (test_bug_unknown_parameter_*)
                          texts_.filter(lambda t: t not in REQUEST_FIELDS and t and "`" not in t)))
    body[name] = draw(json_values)
    return body, name


def test_fuzz_refusals_name_the_parameter(caplog: pytest.LogCaptureFixture) -> None:
    """Hostile roles (``"system\\n<|im_start|>"``, ``"tool"``, ``""`` ...), unknown item types, tool
    schemas that are not objects, negative or non-integer max_output_tokens, out-of-range sampling:
    a 400 that names the offending parameter, in both modes, and nothing reaches vLLM."""
    caplog.set_level(logging.ERROR, logger="gateway.server")
    with Harness() as harness:
        def check(case: tuple[dict[str, Any], str]) -> None:
            body, param = case
            before = len(harness.upstream.requests)
            status, ctype, raw = harness.run(harness.post(json.dumps(body).encode()))
            assert status == 400, (status, raw[:300])
            error = check_error(status, ctype, raw)
            assert error["param"] == param, error
            assert error["type"] == "invalid_request_error", error
            assert len(harness.upstream.requests) == before  # refused before anything was sent

        run_fuzz(harness, refusals(), check, max_examples=300)
        harness.serves_a_normal_request()
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]


# --- bugs the fuzzing found: minimal reproducers, now regression tests ----------------------------
# Each failed before its fix.


async def answer(gateway: Gateway, data: bytes, headers: Optional[dict[str, str]] = None,
                 timeout: float = REQUEST_TIMEOUT) -> tuple[int, str, bytes]:
    """POST raw bytes; a broken HTTP answer (a 500 written into a started stream ...) or none at all
    fails the test."""
    try:
        async with asyncio.timeout(timeout):
            async with gateway.session.post(gateway.url + "/v1/responses", data=data,
                                            headers={"Content-Type": "application/json", **(headers or {})}) as r:
                return r.status, r.headers.get("Content-Type", ""), await r.read()
    except aiohttp.ClientError as exc:
        raise AssertionError(f"the HTTP answer was broken: {exc!r}") from exc
    except TimeoutError:
        raise AssertionError(f"no complete answer within {timeout:g} s: a hang") from None


def assert_answered(status: int, ctype: str, raw: bytes, caplog: pytest.LogCaptureFixture, *,
                    upstream_fault: bool = False) -> None:
    """A well-formed answer: a contract-keeping stream / a Response, or an OpenAI error that is a 4xx
    (or, for an upstream fault, a 502-style error) — never the gateway's own 500."""
    if status == 200:
        if ctype.startswith("text/event-stream"):
            check_stream_body(ctype, raw)
        else:
            check_response(json.loads(raw))
    else:
        error = check_error(status, ctype, raw)
        assert 400 <= status < 500 or (upstream_fault and status != 500), (status, error)
    unhandled = [r.getMessage() for r in caplog.records if "unhandled error" in r.getMessage()]
    assert not unhandled, unhandled


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("place", ["chat_template_kwargs", "tool_parameters", "json_schema", "metadata_extra_body"])
async def test_deep_nesting_in_a_passed_through_value_is_refused(
        gateway: Gateway, caplog: pytest.LogCaptureFixture, place: str) -> None:
    value = nested(300)
    body: dict[str, Any] = {"input": "hi"}
    if place == "chat_template_kwargs":
        body["chat_template_kwargs"] = {"k": value}
    elif place == "tool_parameters":
        body["tools"] = [{"type": "function", "name": "f", "parameters": {"type": "object", "k": value}}]
    elif place == "json_schema":
        body["text"] = {"format": {"type": "json_schema", "name": "x", "schema": {"k": value}}}
    else:
        body["metadata"] = {"extra_body": json.dumps({"k": value})}
    assert_answered(*await answer(gateway, json.dumps(body).encode()), caplog)


@pytest.mark.parametrize("template", ['{{"input": "hi", "metadata": {{"k": {0}}}}}', '{{"input": [{0}]}}',
                                      '{{"input": [{{"role": "user", "content": "hi", "x": {0}}}]}}',
                                      '{{"input": "hi", "reasoning": {{"x": {0}}}}}'],
                         ids=["metadata", "input_item", "input_item_extra_key", "reasoning_extra_key"])
async def test_very_deep_nesting_is_refused(gateway: Gateway, caplog: pytest.LogCaptureFixture, template: str) -> None:
    """Found by this fuzz (msgspec's RecursionError escaped decode_request: a 500); fixed in c6e1a85."""
    status, ctype, raw = await answer(gateway, template.format(deep(10_000, "object")).encode())
    assert_answered(status, ctype, raw, caplog)
    assert status == 400


async def test_echoed_value_at_the_encoder_depth_limit_is_refused(
        gateway: Gateway, caplog: pytest.LogCaptureFixture) -> None:
    template = ('{{"input": "hi", "stream": {1}, "tools": [{{"type": "function", "name": "f"}}], '
                '"tool_choice": {{"type": "function", "name": "f", "x": {0}}}}}')
    for depth in range(1010, 900, -1):  # downwards: the boundary depends on the stack depth
        value = deep(depth, "array")
        assert_answered(*await answer(gateway, template.format(value, "false").encode()), caplog)
        assert_answered(*await answer(gateway, template.format(value, "true").encode(), timeout=3), caplog)


@pytest.mark.parametrize("field", ["max_output_tokens", "seed", "top_k", "chat_template_kwargs"])
async def test_integer_beyond_64_bits_is_refused(gateway: Gateway, caplog: pytest.LogCaptureFixture,
                                                 field: str) -> None:
    absurd = 10**20
    body: dict[str, Any] = {"input": "hi", field: {"k": absurd} if field == "chat_template_kwargs" else absurd}
    status, ctype, raw = await answer(gateway, json.dumps(body).encode())
    assert_answered(status, ctype, raw, caplog)
    if field == "max_output_tokens":  # absurd: refused, naming the parameter
        assert status == 400 and json.loads(raw)["error"]["param"] == "max_output_tokens"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
async def test_corrupt_compressed_body_is_a_400(gateway: Gateway, caplog: pytest.LogCaptureFixture, encoding: str) -> None:
    """Brotli and zstd are dependencies: without them aiohttp's parser refuses such a body with a
    plain-text 400 before the gateway sees it, instead of an OpenAI error object."""
    status, _, raw = await answer(gateway, b"this is not compressed", {"Content-Encoding": encoding})
    assert_answered(status, _, raw, caplog)
    assert status == 400 and json.loads(raw)["error"]["code"] == "invalid_body"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "zstd"])
async def test_compressed_bodies_are_read(gateway: Gateway, encoding: str) -> None:
    import zlib

    import brotli
    from backports import zstd

    body = json.dumps({"input": "hi"}).encode()
    compress = {"gzip": lambda b: zlib.compress(b, wbits=31), "deflate": zlib.compress,
                "br": brotli.compress, "zstd": zstd.compress}[encoding]
    status, _, raw = await answer(gateway, compress(body), {"Content-Encoding": encoding})
    assert status == 200, raw
    assert gateway.upstream.requests[-1]["body"]["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("items", [[{"type": "reasoning"}], [{"role": "assistant", "content": ""}],
                                   [{"type": "reasoning", "summary": []}, {"role": "assistant", "content": []}]],
                         ids=["empty_reasoning", "empty_assistant", "both"])
async def test_an_empty_assistant_turn_alone_is_sent_as_nemo_gym_sends_it(gateway: Gateway, items: list[dict]) -> None:
    response = await gateway.post({"input": items})
    assert response.status == 200, await response.text()
    assert gateway.upstream.requests[-1]["body"]["messages"] == [{"role": "assistant", "content": None}]


@pytest.mark.parametrize("name", ["", "a`b"], ids=["empty", "backtick"])
async def test_unknown_parameter_with_an_odd_name_is_named(gateway: Gateway, name: str) -> None:
    response = await gateway.post({"input": "hi", name: 1})
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == name and error["code"] == "unknown_parameter", error


SSE_START = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'


@pytest.mark.parametrize("where", ["stream_chunk", "completion", "error_body"])
async def test_upstream_invalid_utf8_in_a_string_is_an_upstream_error(gateway: Gateway, caplog: pytest.LogCaptureFixture,
                                                             where: str) -> None:
    bad = b'{"choices": [{"index": 0, "delta": {"content": "a\xffb"}}]}'
    if where == "stream_chunk":
        gateway.upstream.queue(Generation(raw_body=SSE_START + b"data: " + bad + b"\n\ndata: [DONE]\n\n"))
    elif where == "completion":
        gateway.upstream.queue(Generation(raw_body=b'{"choices": [{"message": {"content": "a\xffb"}}]}',
                                          raw_content_type="application/json"))
    else:
        gateway.upstream.queue(Generation(raw_body=b'{"error": {"message": "a\xffb"}}', raw_status=500,
                                          raw_content_type="application/json"))
    body = json.dumps({"input": "hi", "stream": where == "stream_chunk"}).encode()
    assert_answered(*await answer(gateway, body), caplog, upstream_fault=True)


@pytest.mark.parametrize("where", ["stream_chunk", "completion", "error_body"])
async def test_upstream_deep_nesting_is_an_upstream_error(gateway: Gateway, caplog: pytest.LogCaptureFixture,
                                                          where: str) -> None:
    """Found by this fuzz (RecursionError escaped the stream after it started, or made a 500); fixed in
    c6e1a85. JSON nested 5,000 levels, even in a field nobody reads, is not a chat completion."""
    bad = b'{"choices": [], "x": ' + deep(5000, "array").encode() + b"}"
    if where == "stream_chunk":
        gateway.upstream.queue(Generation(raw_body=SSE_START + b"data: " + bad + b"\n\ndata: [DONE]\n\n"))
    else:
        gateway.upstream.queue(Generation(raw_body=bad, raw_status=200 if where == "completion" else 500,
                                          raw_content_type="application/json"))
    body = json.dumps({"input": "hi", "stream": where == "stream_chunk"}).encode()
    status, ctype, raw = await answer(gateway, body)
    assert_answered(status, ctype, raw, caplog, upstream_fault=True)
    if where == "stream_chunk":
        assert status == 200 and check_stream_body(ctype, raw)["error"]["code"] == "upstream_protocol_error"
    else:
        assert status == 502


async def test_text_while_a_nameless_tool_call_is_held(gateway: Gateway) -> None:
    """Found by this fuzz (the call's output_item.added came while the message was still open, which
    never got its done events); fixed in c6e1a85."""
    gateway.upstream.queue(Generation(deltas=[
        {"tool_calls": [{"index": 0, "id": "call-1", "type": "function", "function": {"arguments": "{}"}}]},
        {"content": "hello"},
        {"tool_calls": [{"index": 0, "function": {"name": "get_weather"}}]},
    ], finish_reason="tool_calls"))
    _, final = await gateway.stream({"input": "hi"})  # the contract is checked
    assert output_texts(final) == [("message", "hello"), ("function_call", "get_weather({})")]
    assert final["output"][1]["call_id"] == "call-1"


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_negative_upstream_usage_is_answered(gateway: Gateway, caplog: pytest.LogCaptureFixture,
                                                   stream: bool) -> None:
    """Found by this fuzz (the Prometheus counter raised ValueError in UpstreamCall.done(): a 500, or
    an unhandled error after the stream); fixed in c6e1a85."""
    gateway.upstream.queue(usage_answer(b'{"prompt_tokens": -1, "completion_tokens": 1, "total_tokens": 0}', stream))
    status, ctype, raw = await answer(gateway, json.dumps({"input": "hi", "stream": stream}).encode())
    assert status == 200
    assert_answered(status, ctype, raw, caplog)


# --- 4. hostile transport: compressed bodies, header bytes, upstream sizes, redirects, secrets ------
# Each case goes over a real socket, as raw bytes where no client library would send them. The
# gateway has client keys, an upstream api_key, credentials in its base URL and two servers (so that
# session keys are hashed); every answer is a 200 or an OpenAI error object, never a 500, and never
# holds a secret; the gateway keeps serving.

FUZZ_UPSTREAM_KEY = "sk-fuzz-upstream-7f3a9c"
FUZZ_CLIENT_KEY = "sk-fuzz-client-41d2"
FUZZ_PASSWORD = "fuzz-url-password-8e1"
FUZZ_SECRETS = (FUZZ_UPSTREAM_KEY, FUZZ_CLIENT_KEY, FUZZ_PASSWORD)
DECODED_LIMIT = 64 * 1024  # the fuzzed gateway's max_request_bytes; the compressed limit is a quarter
UPSTREAM_LIMIT = 256 * 1024  # its max_upstream_response_bytes; max_upstream_event_bytes is a quarter
HOSTILE_OVERRIDES = (
    f"gateway.api_keys=[{FUZZ_CLIENT_KEY}]", f"policy_api_key={FUZZ_UPSTREAM_KEY}", "gateway.max_retries=0",
    f"policy_base_url=[http://fuzz:{FUZZ_PASSWORD}@{{hostport}}/v1,http://fuzz:{FUZZ_PASSWORD}@{{hostport}}/v1]",
    f"gateway.max_request_bytes={DECODED_LIMIT}", f"gateway.max_compressed_request_bytes={DECODED_LIMIT // 4}",
    f"gateway.max_upstream_response_bytes={UPSTREAM_LIMIT}", f"gateway.max_upstream_event_bytes={UPSTREAM_LIMIT // 4}",
    "gateway.health_check_interval_s=0",
)


async def raw_exchange(url: str, request: bytes) -> tuple[int, str, bytes]:
    """Send bytes as they are; (status, content type, body). The gateway always closes (Connection: close)."""
    host, port = url.removeprefix("http://").split("/")[0].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        while head.startswith(b"HTTP/1.1 1"):  # an interim answer (100 Continue): the real one follows
            head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        else:
            body = await reader.read()
        if headers.get("transfer-encoding") == "chunked":
            body = _dechunk(body)
        return int(lines[0].split()[1]), headers.get("content-type", ""), body
    finally:
        writer.close()


def _dechunk(data: bytes) -> bytes:
    out, rest = b"", data
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


def http_post(body: bytes, headers: list[bytes]) -> bytes:
    head = [b"POST /v1/responses HTTP/1.1", b"Host: gateway", b"Connection: close",
            b"Content-Length: %d" % len(body), *headers]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _compress(coding: str, data: bytes) -> bytes:
    import zlib

    import brotli
    from backports import zstd

    return {"gzip": lambda d: zlib.compress(d, wbits=31), "x-gzip": lambda d: zlib.compress(d, wbits=31),
            "deflate": zlib.compress, "br": brotli.compress, "zstd": zstd.compress,
            "identity": lambda d: d}[coding](data)


def assert_no_secret(raw: bytes) -> None:
    for secret in FUZZ_SECRETS:
        assert secret.encode() not in raw, (secret, raw[:1000])


def check_answer(status: int, ctype: str, raw: bytes) -> Optional[dict[str, Any]]:
    """A 200 (a contract-keeping stream or a Response) or an OpenAI error object: never a 500."""
    assert status != 500, raw[:500]
    assert_no_secret(raw)
    if status == 200:
        if ctype.startswith("text/event-stream"):
            return check_stream_body(ctype, raw)
        return check_response(json.loads(raw))
    check_error(status, ctype, raw)
    return None


@st.composite
def compressed_requests(draw: st.DrawFn) -> tuple[bytes, str, str, int]:
    """(wire bytes, Content-Encoding, what was done to them, decoded size)."""
    stream = draw(st.booleans())
    kind = draw(st.sampled_from(["valid", "valid", "large", "corrupt", "truncated", "unknown", "wrong_coding"]))
    if kind == "large":  # around the decoded limit, compressible (a bomb in miniature) or not
        size = draw(st.sampled_from([DECODED_LIMIT - 100, DECODED_LIMIT + 1, 4 * DECODED_LIMIT, 200 * DECODED_LIMIT]))
        filler = b" " if draw(st.booleans()) else bytes(random.Random(size).choices(range(97, 123), k=64)) * 2
        body = b'{"input": "' + (filler * (size // len(filler) + 1))[:size] + b'", "stream": %s}' % (
            b"true" if stream else b"false")
    else:
        body = json.dumps({"input": draw(plain_text), "stream": stream}).encode()
    codings = draw(st.lists(st.sampled_from(["gzip", "x-gzip", "deflate", "br", "zstd", "identity"]),
                            min_size=1, max_size=3))
    data = body
    for coding in codings:
        data = _compress(coding, data)
    header = ", ".join(codings)
    if kind == "corrupt" and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    elif kind == "truncated":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif kind == "unknown":
        header = draw(st.sampled_from(["compress", "x-bogus", "gzip;q=1", "br, bogus", "\u00e9", "*"]))
    elif kind == "wrong_coding":
        header = draw(st.sampled_from(["gzip", "deflate", "br", "zstd"]))
    return data, header, kind, len(body)


plain_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20)


def test_fuzz_compressed_request_bodies(caplog: pytest.LogCaptureFixture) -> None:
    """Bodies compressed once or several times, valid, near and far over the limits, corrupt,
    truncated, in unknown or wrong codings: a 200 only for what decodes to a valid request within
    the limits, else a 4xx error object; a body over a limit always a 413, whatever it is."""
    caplog.set_level(logging.ERROR, logger="gateway.server")
    with Harness(*HOSTILE_OVERRIDES) as harness:
        statuses: dict[int, int] = {}

        def check(case: tuple[bytes, str, str, int]) -> None:
            data, header, kind, decoded = case
            harness.upstream.queue(hello())
            request = http_post(data, [b"Content-Type: application/json", b"Content-Encoding: " + header.encode(),
                                       b"Authorization: Bearer " + FUZZ_CLIENT_KEY.encode()])
            status, ctype, raw = harness.run(raw_exchange(harness.url, request))
            statuses[status] = statuses.get(status, 0) + 1
            check_answer(status, ctype, raw)
            assert status < 500, (status, raw[:300])
            compressed = kind == "wrong_coding" or any(c.strip() != "identity" for c in header.split(","))
            if len(data) > (DECODED_LIMIT // 4 if compressed else DECODED_LIMIT) and kind != "unknown":
                assert status == 413, (len(data), status, raw[:300])  # over the wire limit: refused
            elif kind in ("valid", "large") and decoded > DECODED_LIMIT:
                assert status == 413, (decoded, status, raw[:300])
            elif kind == "valid":
                assert status == 200, raw[:300]
            elif kind == "unknown":
                assert status == 415, raw[:300]

        count = run_fuzz(harness, compressed_requests(), check, max_examples=300)
        harness.serves_a_normal_request_with_key()
    print(f"{count} compressed bodies: statuses {statuses}")
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]


_header_names = st.sampled_from([b"Authorization", b"X-Session-Id", b"Cookie", b"X-Request-Id", b"Content-Type",
                                 b"Origin", b"Expect", b"Accept", b"User-Agent", b"X-Forwarded-For"])
_header_values = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
    st.sampled_from([b"Bearer \xff\xfe", b"Bearer " + FUZZ_CLIENT_KEY.encode() + b"\xc3\xa9", b"\xc3\xa9t\xc3\xa9",
                     b"VLLMModel___policy_model=" + base64.b64encode(b"[" * 3000 + b"]" * 3000),
                     b"VLLMModel___policy_model=\xff\xfe.1.sig", b"a" * 9000, b"\x00", b"\x1b[2J",
                     b"100-continue", b"bogus", b"x\r\nInjected: 1", b"\tfolded"]),
)


@st.composite
def header_cases(draw: st.DrawFn) -> tuple[list[bytes], bool, bool]:
    headers = [name + b": " + value for name, value in
               draw(st.lists(st.tuples(_header_names, _header_values), min_size=1, max_size=4))]
    with_key = draw(st.booleans())
    if with_key:
        headers.append(b"Authorization: Bearer " + FUZZ_CLIENT_KEY.encode())
    return headers, with_key, draw(st.booleans())


def test_fuzz_header_bytes(caplog: pytest.LogCaptureFixture) -> None:
    """Header values of any bytes (non-UTF-8, NUL, escapes, huge, injected lines), in the headers
    the gateway reads (Authorization, X-Session-Id, NeMo Gym's cookie, X-Request-Id ...): a 200 or
    a 4xx error object, never a 500; the request id it answers with is always a sane token."""
    caplog.set_level(logging.ERROR, logger="gateway.server")
    with Harness(*HOSTILE_OVERRIDES) as harness:
        statuses: dict[int, int] = {}

        def check(case: tuple[list[bytes], bool, bool]) -> None:
            headers, with_key, stream = case
            harness.upstream.queue(hello())
            body = json.dumps({"input": "hi", "stream": stream}).encode()
            status, ctype, raw = harness.run(raw_exchange(harness.url, http_post(body, headers)))
            statuses[status] = statuses.get(status, 0) + 1
            check_answer(status, ctype, raw)
            assert status < 500, (status, raw[:300])

        count = run_fuzz(harness, header_cases(), check, max_examples=300)
        harness.serves_a_normal_request_with_key()
    print(f"{count} header sets: statuses {statuses}")
    assert statuses.get(200, 0) > 0 and len(statuses) > 1, statuses
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]


_SSE_ROLE = b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
_SSE_END = (b'data: {"choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}]}\n\n'
            b"data: [DONE]\n\n")


def _secret_forms(draw: st.DrawFn) -> str:
    """A configured secret the way an upstream might echo it."""
    secret = draw(st.sampled_from([FUZZ_UPSTREAM_KEY, FUZZ_PASSWORD]))
    return draw(st.sampled_from([
        f"Authorization: Bearer {secret}", f"{{'Authorization': 'Bearer {secret}'}}", secret,
        f"http://fuzz:{secret}@upstream/v1", f'"api_key": "{secret}"', f"key={secret}; more",
    ]))


@st.composite
def hostile_upstreams(draw: st.DrawFn) -> tuple[str, Generation]:
    kind = draw(st.sampled_from(["redirect", "error_echo", "stream_error_echo", "big_stream", "long_event",
                                 "big_completion", "gzip_completion", "usage"]))
    if kind == "redirect":
        return kind, Generation(raw_body=draw(st.sampled_from([b"", b"moved"])),
                                raw_status=draw(st.sampled_from([301, 302, 303, 307, 308])),
                                raw_headers={"Location": "{upstream}/chat/completions?followed=1"})
    if kind == "error_echo":
        message = _secret_forms(draw)
        body = draw(st.sampled_from([json.dumps({"error": {"message": message, "type": "x", "code": 1}}).encode(),
                                     json.dumps({"detail": message}).encode(), message.encode()]))
        return kind, Generation(raw_body=body, raw_status=draw(st.sampled_from([400, 401, 403, 404, 422, 429, 500,
                                                                               502, 503])),
                                raw_content_type="application/json")
    if kind == "stream_error_echo":
        line = b"data: " + json.dumps({"error": {"message": _secret_forms(draw), "code": 500}}).encode() + b"\n\n"
        return kind, Generation(raw_body=_SSE_ROLE + line + b"data: [DONE]\n\n")
    if kind == "big_stream":
        size = draw(st.sampled_from([UPSTREAM_LIMIT // 2, UPSTREAM_LIMIT + 1, 3 * UPSTREAM_LIMIT]))
        chunk = b'data: {"choices": [{"index": 0, "delta": {"content": "' + b"z" * 1000 + b'"}}]}\n\n'
        return kind, Generation(raw_chunks=[_SSE_ROLE] + [chunk] * (size // len(chunk) + 1) + [_SSE_END])
    if kind == "long_event":
        size = draw(st.sampled_from([UPSTREAM_LIMIT // 8, UPSTREAM_LIMIT // 4 + 1, UPSTREAM_LIMIT]))
        ends = draw(st.booleans())
        start = b'data: {"choices": [{"index": 0, "delta": {"content": "'
        pieces = [_SSE_ROLE, start] + [b"w" * 4096] * (size // 4096 + 1)
        return kind, Generation(raw_chunks=pieces + ([b'"}}]}\n\n', _SSE_END] if ends else []))
    if kind == "usage":
        value = draw(st.sampled_from([b"-1", b"1" + b"0" * 400, b"18446744073709551616", b"9007199254740993", b"3"]))
        usage = b'"usage": {"prompt_tokens": ' + value + b', "completion_tokens": 1, "total_tokens": 4}'
        return kind, Generation(raw_body=_SSE_ROLE + b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, '
                                b'"finish_reason": "stop"}]}\n\ndata: {"choices": [], ' + usage + b"}\n\ndata: [DONE]\n\n")
    size = draw(st.sampled_from([UPSTREAM_LIMIT // 2, UPSTREAM_LIMIT + 1, 20 * UPSTREAM_LIMIT]))
    completion = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "c" * size},
                                          "finish_reason": "stop"}]}).encode()
    if kind == "gzip_completion":
        import gzip

        return kind, Generation(raw_body=gzip.compress(completion), raw_content_type="application/json",
                                raw_headers={"Content-Encoding": "gzip"})
    return kind, Generation(raw_body=completion, raw_content_type="application/json")


def test_fuzz_hostile_upstreams(caplog: pytest.LogCaptureFixture) -> None:
    """Upstream redirects (never followed: the fake sees exactly one request per answer), error
    texts and mid-stream errors echoing the api key or the base URL's password (never shown),
    answers and SSE events around and far over the size limits (bounded: upstream_too_large),
    absurd usage (never passed on), streamed and not."""
    caplog.set_level(logging.ERROR, logger="gateway.server")
    with Harness(*HOSTILE_OVERRIDES) as harness:
        outcomes: dict[str, int] = {}

        def check(case: tuple[str, Generation]) -> None:
            kind, generation = case
            for key, value in generation.raw_headers.items():
                generation.raw_headers[key] = value.replace("{upstream}", harness.upstream_url)
            for stream in (False, True):
                before = len(harness.upstream.requests)
                harness.upstream.queue(copy.copy(generation))
                body = json.dumps({"input": "hi", "stream": stream}).encode()
                request = http_post(body, [b"Content-Type: application/json",
                                           b"Authorization: Bearer " + FUZZ_CLIENT_KEY.encode()])
                status, ctype, raw = harness.run(raw_exchange(harness.url, request))
                final = check_answer(status, ctype, raw)
                assert len(harness.upstream.requests) == before + 1  # one request, no redirect followed
                outcome = final["status"] if final else str(status)
                outcomes[f"{kind} {outcome}"] = outcomes.get(f"{kind} {outcome}", 0) + 1
                if kind == "redirect":
                    assert status == 502 and json.loads(raw)["error"]["code"] == "upstream_redirect", raw[:300]
                if final is not None:
                    usage = final["usage"] or {}
                    assert all(0 <= usage.get(k, 0) < 2**53 for k in ("input_tokens", "output_tokens")), usage

        count = run_fuzz(harness, hostile_upstreams(), check, max_examples=200)
        harness.serves_a_normal_request_with_key()
    print(f"{count} hostile upstream answers x 2 requests: {outcomes}")
    assert not [r for r in caplog.records if "unhandled error" in r.getMessage()]
