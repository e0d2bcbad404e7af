"""Chat Completions shapes as vLLM sends and accepts them.

Decoding is tolerant: msgspec ignores fields these Structs do not name, so a newer vLLM that adds
fields still decodes. Only what the gateway reads is declared. Requests are built as plain dicts
(see ``translate.request``) because they are pass-through bags of vLLM extensions
(``chat_template_kwargs``, ``extra_body`` keys, ...), not a closed schema.
"""

from __future__ import annotations

from typing import Union, Any, Optional

import msgspec


class FunctionDelta(msgspec.Struct, gc=False):
    name: Optional[str] = None
    arguments: Optional[str] = None


class ToolCallDelta(msgspec.Struct, gc=False):
    # vLLM always sends ``index``; some servers omit it for a single call, so 0 is the fallback.
    index: int = 0
    id: Optional[str] = None
    type: Optional[str] = None
    function: Optional[FunctionDelta] = None


class Delta(msgspec.Struct, gc=False):
    role: Optional[str] = None
    content: Optional[str] = None
    # vLLM >= 0.16 names it ``reasoning`` (0.11.1-0.14 send both); older vLLM and llama.cpp use
    # ``reasoning_content``.
    reasoning: Optional[str] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[ToolCallDelta]] = None


class TopLogprob(msgspec.Struct, kw_only=True, gc=False):
    token: str
    logprob: float
    id: Optional[int] = None
    bytes: Optional[list[int]] = None


class TokenLogprob(msgspec.Struct, kw_only=True, gc=False):
    token: str
    logprob: float
    # llama.cpp names the token id here; vLLM, asked with return_tokens_as_token_ids, in ``token``.
    id: Optional[int] = None
    bytes: Optional[list[int]] = None
    top_logprobs: Optional[list[TopLogprob]] = None


class ChoiceLogprobs(msgspec.Struct, gc=False):
    content: Optional[list[TokenLogprob]] = None


class ChunkChoice(msgspec.Struct, gc=False):
    index: int = 0
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: Optional[str] = None
    logprobs: Optional[ChoiceLogprobs] = None
    # vLLM with ``return_token_ids: true``: the ids generated in this chunk.
    token_ids: Optional[list[int]] = None


class PromptTokensDetails(msgspec.Struct, gc=False):
    cached_tokens: Optional[int] = None


class CompletionTokensDetails(msgspec.Struct, gc=False):
    reasoning_tokens: Optional[int] = None


class Usage(msgspec.Struct, gc=False):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: Optional[PromptTokensDetails] = None
    completion_tokens_details: Optional[CompletionTokensDetails] = None


class UpstreamErrorBody(msgspec.Struct, gc=False):
    """vLLM's error object (``{"error": {...}}`` mid-stream, or the body of a 4xx/5xx)."""

    message: str = ""
    type: Optional[str] = None
    param: Optional[str] = None
    code: Any = None


class ChatChunk(msgspec.Struct, gc=False):
    """One ``data:`` line of a streamed chat completion, including vLLM's mid-stream error line.

    Not declared: ``id``, ``object``, ``created`` and ``model``, which every chunk repeats and the
    gateway never reads (the response has its own). Skipped unread, they cost nothing; decoded,
    they were 40 % of the decode (0.64 -> 0.37 µs per chunk, gateway/bench/README.md)."""

    choices: list[ChunkChoice] = msgspec.field(default_factory=list)
    usage: Optional[Usage] = None
    prompt_token_ids: Optional[list[int]] = None
    error: Optional[UpstreamErrorBody] = None


# --- non-streaming completion -------------------------------------------------------------------


class FunctionCall(msgspec.Struct, gc=False):
    name: Optional[str] = None
    arguments: Optional[str] = None


class ToolCall(msgspec.Struct, gc=False):
    id: Optional[str] = None
    type: Optional[str] = None
    function: Optional[FunctionCall] = None


class Message(msgspec.Struct, gc=False):
    role: Optional[str] = None
    content: Optional[str] = None
    reasoning: Optional[str] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[list[ToolCall]] = None
    # A complete token bundle some training servers put on the message (NeMo Gym's first source).
    prompt_token_ids: Optional[list[int]] = None
    generation_token_ids: Optional[list[int]] = None
    generation_log_probs: Optional[list[float]] = None
    # vLLM's MoE routing record (--enable-return-routed-experts), passed on with the token ids.
    routed_experts: Union[str, list[list[list[int]]], None] = None


class CompletionChoice(msgspec.Struct, gc=False):
    index: int = 0
    message: Message = msgspec.field(default_factory=Message)
    finish_reason: Optional[str] = None
    logprobs: Optional[ChoiceLogprobs] = None
    token_ids: Optional[list[int]] = None


class ChatCompletion(msgspec.Struct, gc=False):
    id: str = ""
    model: str = ""
    created: int = 0
    choices: list[CompletionChoice] = msgspec.field(default_factory=list)
    usage: Optional[Usage] = None
    prompt_token_ids: Optional[list[int]] = None
    error: Optional[UpstreamErrorBody] = None


class UpstreamErrorResponse(msgspec.Struct, gc=False):
    """Body of a non-2xx answer; vLLM nests the error, some servers put ``message`` at the top."""

    error: Optional[UpstreamErrorBody] = None
    message: Optional[str] = None
    detail: Any = None


chunk_decoder = msgspec.json.Decoder(ChatChunk)
completion_decoder = msgspec.json.Decoder(ChatCompletion)
error_decoder = msgspec.json.Decoder(UpstreamErrorResponse)
