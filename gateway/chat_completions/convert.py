"""Chat Completions request -> the body sent to vLLM, and vLLM's answer -> the client's (pure).

Follows NeMo Gym 0.7.0's ``VLLMModel.chat_completions``: ``strict`` is taken off function tools, the
model is the configured one, ``chat_template_kwargs`` are config < request (when forwarded) <
``metadata``, ``extra_body`` from config and metadata under the request, reasoning left in earlier
assistant turns as ``<think>`` tags goes to the reasoning field(s) (all blocks: Gym keeps the
first), token tracking asks for logprobs as token ids, ``sampling_overrides`` win. The answer's
reasoning field is wrapped back into the content as ``<think>…</think>`` and, with tracking,
``prompt_token_ids`` / ``generation_token_ids`` / ``generation_log_probs`` (and ``routed_experts``)
sit on the message.
"""

from __future__ import annotations

import copy
from typing import Any, Optional

from ..translate.errors import InvalidRequest
from ..translate.request import (THINK_BLOCK, ConversionSettings, add_audio, json_object_from_metadata,
                                 set_reasoning_fields)
from ..translate.tokens import tokenize_body


def plan_upstream_body(body: Any, settings: ConversionSettings) -> tuple[dict[str, Any], Optional[dict[str, Any]]]:
    """The body for vLLM's /v1/chat/completions, and the /tokenize body when prompt ids come from there."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", param=None)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and isinstance(m.get("role"), str)
                                                                  for m in messages):
        raise InvalidRequest("'messages' must be a non-empty list of messages with a role.", param="messages")
    body = copy.deepcopy(body)
    # Streaming clients get the finished answer as chunks (synthesize_sse): vLLM is asked without.
    body.pop("stream", None)
    body.pop("stream_options", None)
    for tool in body.get("tools") or []:
        if isinstance(tool, dict) and tool.get("type") == "function" and isinstance(tool.get("function"), dict):
            tool["function"].pop("strict", None)  # vLLM does not enforce it; templates would render it
    if settings.replace_developer_role_with_system:
        for message in body["messages"]:
            if message["role"] == "developer":
                message["role"] = "system"
    body["model"] = settings.model
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise InvalidRequest("'metadata' must be an object.", param="metadata")
    template_kwargs = dict(copy.deepcopy(settings.chat_template_kwargs or {}))
    own = body.pop("chat_template_kwargs", None)
    if own and settings.forward_request_chat_template_kwargs:
        if not isinstance(own, dict):
            raise InvalidRequest("'chat_template_kwargs' must be an object.", param="chat_template_kwargs")
        template_kwargs.update(own)
    template_kwargs.update(json_object_from_metadata(metadata, "chat_template_kwargs"))
    if template_kwargs:
        body["chat_template_kwargs"] = template_kwargs
    extra = {**copy.deepcopy(settings.extra_body or {}), **json_object_from_metadata(metadata, "extra_body")}
    if settings.continue_final_assistant_message and body["messages"][-1]["role"] == "assistant":
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    tracking = settings.return_token_id_information
    inline_ids = settings.request_prompt_and_generation_token_ids and settings.upstream_flavour == "vllm"
    if tracking:
        body["logprobs"] = True
        body["top_logprobs"] = 1 if settings.upstream_flavour == "llama.cpp" else 0
        if settings.upstream_flavour == "vllm":
            body["return_tokens_as_token_ids"] = True
        if inline_ids:
            body["return_token_ids"] = True
    if settings.reasoning_history != "think_tags":
        for message in body["messages"]:
            if message["role"] == "assistant":
                _reasoning_out_of_content(message, settings)
    if "top_logprobs" in body and body["top_logprobs"] is None:
        del body["top_logprobs"]  # vLLM reads null as "no logprobs"
    body = {**extra, **body}
    add_audio(body["messages"], metadata, settings)
    if settings.sampling_overrides:
        body.update(copy.deepcopy(settings.sampling_overrides))
    if tracking and body.get("n") not in (None, 1):
        raise InvalidRequest("token tracking needs one choice per request: n must be 1.", param="n")
    return body, (tokenize_body(body) if tracking and not inline_ids else None)


def _reasoning_out_of_content(message: dict[str, Any], settings: ConversionSettings) -> None:
    content = message.get("content")
    blocks: list[str] = []
    if isinstance(content, str):
        blocks = THINK_BLOCK.findall(content)
        message["content"] = THINK_BLOCK.sub("", content)
    elif isinstance(content, list):
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                blocks += THINK_BLOCK.findall(part["text"])
                part["text"] = THINK_BLOCK.sub("", part["text"])
    set_reasoning_fields(message, blocks, settings)


class TokenError(Exception):
    """vLLM's answer lacks, or contradicts, the token information tracking needs."""


def client_answer(answer: dict[str, Any], body: dict[str, Any], settings: ConversionSettings, *,
                  parse_think_tags: bool, prompt_token_ids: Optional[list[int]] = None) -> dict[str, Any]:
    """vLLM's completion as NeMo Gym returns it. ``prompt_token_ids``: from /tokenize, when asked."""
    choices = answer.get("choices")
    if not isinstance(choices, list) or len(choices) != 1 or not isinstance(choices[0].get("message"), dict):
        raise TokenError("vLLM answered without exactly one choice with a message")
    choice = choices[0]
    message = choice["message"]
    reasoning = message.get("reasoning_content") or message.get("reasoning")
    if parse_think_tags and reasoning:
        message.pop("reasoning_content", None)
        message.pop("reasoning", None)
        if body.get("continue_final_message"):
            message["content"] = reasoning + (message.get("content") or "")  # a continuation is one text
        else:
            message["content"] = f"<think>{reasoning}</think>" + (message.get("content") or "")
    if settings.return_token_id_information:
        message.update(_token_bundle(answer, choice, prompt_token_ids))
        choice.pop("logprobs", None)
        answer.pop("prompt_token_ids", None)
        choice.pop("token_ids", None)
    return answer


def _token_bundle(answer: dict[str, Any], choice: dict[str, Any], prompt_ids: Optional[list[int]]) -> dict[str, Any]:
    message = choice["message"]
    keys = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")
    if any(message.get(k) is not None for k in keys):
        if not all(isinstance(message.get(k), list) for k in keys):
            raise TokenError("the completion message carries only part of the token information")
        bundle = {k: message[k] for k in keys}
    else:
        logprobs = (choice.get("logprobs") or {}).get("content")
        if not isinstance(logprobs, list):
            raise TokenError("vLLM sent no logprobs, so no generation token ids")
        ids, values = [], []
        for entry in logprobs:
            token = entry.get("token") if isinstance(entry, dict) else None
            if not isinstance(token, str) or not token.startswith("token_id:"):
                raise TokenError("a logprob's token is not in vLLM's token_id:<int> form")
            ids.append(int(token.removeprefix("token_id:")))
            values.append(float(entry["logprob"]))
        inline_prompt, inline_ids = answer.get("prompt_token_ids"), choice.get("token_ids")
        if (inline_prompt is None) != (inline_ids is None):
            raise TokenError("vLLM sent prompt_token_ids or token_ids without the other")
        if inline_ids is not None:
            if inline_ids != ids:
                raise TokenError("vLLM's token_ids disagree with its logprobs")
            prompt_ids = inline_prompt
        if prompt_ids is None:
            raise TokenError("no prompt token ids (neither inline nor from /tokenize)")
        bundle = {"prompt_token_ids": prompt_ids, "generation_token_ids": ids, "generation_log_probs": values}
    if len(bundle["generation_token_ids"]) != len(bundle["generation_log_probs"]):
        raise TokenError("generation token ids and logprobs differ in length")
    if message.get("routed_experts") is not None:
        bundle["routed_experts"] = message["routed_experts"]
    return bundle


def empty_answer(model: str, created: int, finish_reason: str) -> dict[str, Any]:
    """Nothing generated (a context overflow: finish_reason length), as NeMo Gym answers it."""
    return {"id": "chatcmpl-empty", "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "finish_reason": finish_reason,
                         "message": {"role": "assistant", "content": None, "tool_calls": None}}]}


def synthesize_sse(answer: dict[str, Any], include_usage: bool) -> bytes:
    """The finished answer as the ``chat.completion.chunk`` stream NeMo Gym re-emits for streaming
    clients: per choice a role chunk, reasoning / content / refusal / tool-call chunks when present,
    a finish chunk; the usage chunk when asked for; then ``data: [DONE]``. Token ids have no place
    in chunks (as in Gym)."""
    import json

    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
        data: dict[str, Any] = {"id": answer.get("id"), "object": "chat.completion.chunk",
                                "created": answer.get("created"), "model": answer.get("model"), "choices": choices}
        if answer.get("system_fingerprint") is not None:
            data["system_fingerprint"] = answer["system_fingerprint"]
        if usage is not None:
            data["usage"] = usage
        return f"data: {json.dumps(data)}\n\n".encode()

    out = []
    for index, choice in enumerate(answer.get("choices") or []):
        message = choice.get("message") or {}
        out.append(chunk([{"index": index, "delta": {"role": message.get("role") or "assistant"}, "finish_reason": None}]))
        reasoning = message.get("reasoning_content") or message.get("reasoning")
        for key, value in (("reasoning_content", reasoning), ("content", message.get("content")),
                           ("refusal", message.get("refusal"))):
            if value:
                out.append(chunk([{"index": index, "delta": {key: value}, "finish_reason": None}]))
        if message.get("tool_calls"):
            calls = [{"index": i, "id": call.get("id"), "type": call.get("type") or "function",
                      "function": {"name": (call.get("function") or {}).get("name"),
                                   "arguments": (call.get("function") or {}).get("arguments") or ""}}
                     for i, call in enumerate(message["tool_calls"])]
            out.append(chunk([{"index": index, "delta": {"tool_calls": calls}, "finish_reason": None}]))
        out.append(chunk([{"index": index, "delta": {}, "finish_reason": choice.get("finish_reason")}]))
    if include_usage and answer.get("usage") is not None:
        out.append(chunk([], usage=answer["usage"]))
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)
