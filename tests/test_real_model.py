"""The gateway in front of a real inference server nobody here wrote: llama.cpp's llama-server with
Qwen2.5-Coder-0.5B on the CPU. Assertions hold for any sane model output: what the model says is
not ours to fix, what the gateway makes of it is."""

from __future__ import annotations

import json

import pytest
from openai import AsyncOpenAI

from gateway.backends.llama_cpp import MODEL_ALIAS
from tests.conftest import Gateway

pytestmark = pytest.mark.real_model

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
SHORT = {"model": MODEL_ALIAS, "temperature": 0, "seed": 7}


def strip_ids(response: dict) -> dict:
    response = json.loads(json.dumps(response))
    for key in ("id", "created_at", "completed_at"):
        response.pop(key)
    response["usage"]["input_tokens_details"].pop("cached_tokens")  # the second run hits the prefix cache
    for item in response["output"]:
        item.pop("id")
        item.pop("call_id", None)  # llama.cpp makes up a new call id each time
    return response


async def test_streamed_text_is_well_formed(real_gateway: Gateway) -> None:
    events, final = await real_gateway.stream({**SHORT, "input": "Say hello in one short sentence.",
                                               "max_output_tokens": 24})
    assert final["status"] in ("completed", "incomplete")
    assert final["usage"]["input_tokens"] > 0 and final["usage"]["output_tokens"] > 0
    messages = [item for item in final["output"] if item["type"] == "message"]
    assert messages and messages[0]["content"][0]["text"].strip()


async def test_non_streaming_equals_streamed_final(real_gateway: Gateway) -> None:
    """Same seed, temperature 0: the non-streaming Response is the streamed one (ids aside)."""
    body = {**SHORT, "input": "Name three colors.", "max_output_tokens": 20}
    _, streamed = await real_gateway.stream(body)
    whole = await real_gateway.create(body)
    assert strip_ids(whole) == strip_ids(streamed)


async def test_reasoning_and_tool_call(real_gateway: Gateway) -> None:
    _, final = await real_gateway.stream({
        **SHORT, "input": "What is the weather in Paris? Use the tool.", "tools": [WEATHER_TOOL],
        "max_output_tokens": 120, "chat_template_kwargs": {"enable_thinking": True}})
    assert final["status"] in ("completed", "incomplete")
    for item in final["output"]:
        if item["type"] == "function_call" and item["status"] == "completed":
            assert item["name"] == "get_weather"
            assert isinstance(json.loads(item["arguments"]), dict)  # parsed, valid JSON
        if item["type"] == "reasoning":
            assert item["summary"][0]["text"].strip()
    kinds = [item["type"] for item in final["output"]]
    assert kinds, "the model produced no output at all"


async def test_token_ids_for_training(make_gateway, llama_server: str) -> None:
    gateway = await make_gateway("gateway.upstream_flavour=llama.cpp",
                                 "+policy_model.vllm_model.return_token_id_information=true",
                                 base_url=llama_server, model=MODEL_ALIAS)
    response = await gateway.create({**SHORT, "input": "Say hi.", "max_output_tokens": 12})
    last = response["output"][-1]
    assert last["prompt_token_ids"] and all(isinstance(t, int) for t in last["prompt_token_ids"])
    assert len(last["generation_token_ids"]) == len(last["generation_log_probs"]) == response["usage"]["output_tokens"]
    assert all(lp <= 0 for lp in last["generation_log_probs"])
    # the prompt ids are the prompt the server itself counted
    assert len(last["prompt_token_ids"]) == response["usage"]["input_tokens"]


async def test_openai_sdk_stream_and_structured_output(real_gateway: Gateway) -> None:
    client = AsyncOpenAI(base_url=real_gateway.url + "/v1", api_key="unused", max_retries=0)
    sdk = {"model": MODEL_ALIAS, "temperature": 0, "extra_body": {"seed": 7}}
    async with client.responses.stream(**sdk, input="Count from 1 to 5.", max_output_tokens=24) as stream:
        deltas = [event.delta async for event in stream if event.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(deltas) == final.output_text
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
              "additionalProperties": False}
    response = await client.responses.create(
        **sdk, input="Which city is the capital of France? Answer in JSON.", max_output_tokens=40,
        text={"format": {"type": "json_schema", "name": "capital", "schema": schema, "strict": True}})
    if response.status == "completed":
        assert isinstance(json.loads(response.output_text)["city"], str)  # grammar-constrained by llama.cpp
    await client.close()
