"""Responses request -> Chat Completions request (pure).

Everything the client sent is either mapped onto the Chat Completions body, echoed on the Response,
or rejected with an ``InvalidRequest`` naming the field: nothing is dropped silently, except the
parameters listed in ``ACCEPTED_WITHOUT_EFFECT`` (documented in the README).

History follows NeMo Gym's converter: consecutive reasoning / assistant message / function_call
items become one assistant message (text joined, ``tool_calls`` in order); a user, system or
developer message, or a ``function_call_output``, ends that assistant turn.
"""

from __future__ import annotations

import copy
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import msgspec
import orjson

from .. import jsonbytes
from ..schema import responses as r
from .errors import InvalidRequest, from_validation_error
from .stream import StreamOptions
from .tokens import tokenize_body
from .tools import OfferedTools, custom_arguments, offer_tools, offered_name, plan_tool_choice

# Parameters a client may send that the gateway accepts but which change nothing here: it has one
# service tier, runs no hosted tools and never compacts, and vLLM caches prefixes by itself. Each is
# in the README's request table, with what it does here. (``store``, ``previous_response_id`` and
# ``background`` are the store's: gateway/store.)
ACCEPTED_WITHOUT_EFFECT = (
    "truncation",
    "service_tier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "prompt_cache_options",
    "safety_identifier",
    "max_tool_calls",
    "stream_options",
    "context_management",
    "image",
    "access_programs",
    "background_options",
    "client_metadata",
    "text.verbosity",
    "reasoning.summary",
)

# OpenAI's documented defaults, sent to vLLM explicitly when nothing else sets them, so that the
# Response echoes what was used (vLLM would otherwise apply the model's generation_config).
# Lowest precedence: the configured extra_body, metadata.extra_body and the request override them.
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_p": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0}

# Passed to vLLM unchanged (the openai SDK's ``extra_body`` puts them at the top level).
_VLLM_SAMPLING_EXTENSIONS = (
    "top_k",
    "min_p",
    "min_tokens",
    "seed",
    "stop",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)

LOGPROBS_INCLUDE = "message.output_text.logprobs"
# Each input item type's struct, by its tag. Converted to its own struct, not to the union: msgspec
# keeps a struct's decoding plan, but builds a union's again on every call (13 µs an item, not 0.6).
_ITEM_STRUCTS: dict[str, type] = {cls.__struct_config__.tag: cls for cls in typing.get_args(r.InputItem)}
_ITEM_TYPES = tuple(_ITEM_STRUCTS)
_TOKEN_KEYS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")


@dataclass(frozen=True)
class ConversionSettings:
    """What the configuration decides about conversion (built by the server from ``Config``)."""

    model: str
    reasoning_history: str = "think_tags"  # "think_tags" | "field" | "drop"
    reasoning_field: str = "reasoning_content"  # "reasoning_content" | "reasoning" | "both"
    # OpenAI's sampling defaults sent explicitly (openai conventions); NeMo Gym sends none.
    send_sampling_defaults: bool = True
    # NeMo Gym's Response echoes the request's own sampling values, null where it sent none;
    # else (openai conventions) what vLLM was sent, OpenAI's defaults filled in.
    echo_request_sampling: bool = False
    # NeMo Gym's forward_request_chat_template_kwargs: the request's own chat_template_kwargs count.
    forward_request_chat_template_kwargs: bool = True
    # NeMo Gym's continue_final_assistant_message: a trailing assistant message is continued.
    continue_final_assistant_message: bool = False
    # NeMo Gym's metadata.audio_path(s): a path -> a data: URL (the server reads the file).
    load_audio: Optional[Callable[[str], str]] = None
    replace_developer_role_with_system: bool = False
    # Developer messages go into the system message: the chat template does not render them.
    fold_developer_messages: bool = False
    # gateway.hosted_tools: "reject" refuses tools only OpenAI runs instead of leaving them out.
    reject_hosted_tools: bool = False
    return_token_id_information: bool = False
    request_prompt_and_generation_token_ids: bool = False
    upstream_flavour: str = "vllm"  # "vllm" | "llama.cpp"
    chat_template_kwargs: Optional[dict[str, Any]] = None
    extra_body: Optional[dict[str, Any]] = None
    sampling_overrides: Optional[dict[str, Any]] = None
    stream_options: StreamOptions = field(default_factory=StreamOptions)


@dataclass
class ChatPlan:
    """Everything one request needs: the upstream body and the Response skeleton to fill."""

    body: dict[str, Any]
    stream: bool
    response: r.Response
    options: StreamOptions
    track_tokens: bool = False  # return_token_id_information: ids and logprobs of the generation
    # include: ["message.output_text.logprobs"]: alternatives per token (top_logprobs), else None
    text_logprobs: Optional[int] = None
    # /tokenize body, when prompt ids must come from there (started concurrently with generation)
    tokenize: Optional[dict[str, Any]] = None
    payload: bytes = b""  # ``body`` encoded once, as it goes to vLLM
    tools: OfferedTools = field(default_factory=OfferedTools)  # offered names -> declared tools
    # vLLM's 400 for an over-long prompt becomes an empty incomplete Response (NeMo Gym's default;
    # its propagate_context_overflow_errors passes the 400 on instead).
    overflow_is_empty_answer: bool = True


_request_decoder = msgspec.json.Decoder(r.ResponsesRequest)


def has_developer_messages(req: r.ResponsesRequest) -> bool:
    """Whether folding could matter (checked before planning; items are still plain dicts here)."""
    return not isinstance(req.input, str) and any(
        isinstance(item, dict) and item.get("role") == "developer" for item in req.input)


def decode_request(raw: bytes) -> r.ResponsesRequest:
    try:
        return _request_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        raise from_validation_error(exc) from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}.", param=None, code="invalid_json"
        ) from None


def plan_chat_request(
    req: r.ResponsesRequest, settings: ConversionSettings, *, response_id: str, created_at: int
) -> ChatPlan:
    _reject_unsupported(req)
    _check_values(req)
    offered = offer_tools(req.tools, reject_hosted=settings.reject_hosted_tools)
    messages = _messages(req, settings, offered)
    choice = plan_tool_choice(req.tool_choice, offered)
    tools = choice.functions
    body: dict[str, Any] = {"model": settings.model, "messages": messages}
    if tools:
        body["tools"] = tools
    if choice.tool_choice is not None:
        body["tool_choice"] = choice.tool_choice
    if req.parallel_tool_calls is not None and tools:
        body["parallel_tool_calls"] = req.parallel_tool_calls
    _sampling(req, body)
    response_format = _response_format(req.text)
    if response_format is not None:
        body["response_format"] = response_format
    if req.reasoning is not None and req.reasoning.effort is not None:
        body["reasoning_effort"] = req.reasoning.effort
    if req.user is not None:
        body["user"] = req.user

    metadata = req.metadata or {}
    add_audio(messages, metadata, settings)
    # NeMo Gym's precedence: config < the request's own (when forwarded) < metadata.
    template_kwargs = {
        **(settings.chat_template_kwargs or {}),
        **((req.chat_template_kwargs or {}) if settings.forward_request_chat_template_kwargs else {}),
        **json_object_from_metadata(metadata, "chat_template_kwargs"),
    }
    if template_kwargs:
        body["chat_template_kwargs"] = template_kwargs
    # NeMo Gym's precedence: config extra_body < metadata extra_body < request < sampling_overrides.
    extra = {**copy.deepcopy(settings.extra_body or {}), **json_object_from_metadata(metadata, "extra_body")}
    # NeMo Gym sends no sampling value the caller did not: vLLM then applies the model's own
    # generation_config, the distribution a policy is trained under (response_conventions nemo_gym).
    body = {**(SAMPLING_DEFAULTS if settings.send_sampling_defaults else {}), **extra, **body}
    if settings.continue_final_assistant_message and messages[-1]["role"] == "assistant":
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    if settings.sampling_overrides:
        body.update(copy.deepcopy(settings.sampling_overrides))
    text_logprobs = (req.top_logprobs or 0) if req.include and LOGPROBS_INCLUDE in req.include else None
    # llama.cpp sends logprobs only when asked for at least one alternative per token.
    min_top = 1 if settings.upstream_flavour == "llama.cpp" else 0
    if text_logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = max(req.top_logprobs or 0, min_top)
    tokenize = None
    if settings.return_token_id_information:
        if body.get("n", 1) != 1:
            raise InvalidRequest("token tracking needs one choice per request: n must be 1.", param="n")
        body["logprobs"] = True
        # Pinned (as NeMo Gym does): a null from metadata.extra_body would make vLLM return no logprobs.
        body["top_logprobs"] = max(body.get("top_logprobs") or 0, min_top)
        # The client reading the logprobs too wants readable tokens: then the ids come inline.
        inline_ids = settings.request_prompt_and_generation_token_ids or text_logprobs is not None
        if settings.upstream_flavour == "vllm" and text_logprobs is None:
            body["return_tokens_as_token_ids"] = True  # each logprob's token is "token_id:<int>"
        if inline_ids and settings.upstream_flavour == "vllm":
            body["return_token_ids"] = True
        else:
            tokenize = tokenize_body(body)
    if "top_logprobs" in body and body["top_logprobs"] is None:
        del body["top_logprobs"]  # vLLM reads null as "no logprobs", absent as its default
    body["stream"] = req.stream
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    try:
        payload = jsonbytes.dumps(body)  # kept for the stream's whole life
    except (TypeError, orjson.JSONEncodeError) as exc:  # the checks above should leave nothing for here
        raise InvalidRequest(f"The request cannot be passed on to vLLM: {exc}.", param=None) from None

    sent = {key: _sent_number(body, key) for key in SAMPLING_DEFAULTS}  # checks extra_body's values too
    max_tokens = body.get("max_tokens")
    if settings.echo_request_sampling:
        echoed = dict(temperature=req.temperature, top_p=req.top_p, presence_penalty=req.presence_penalty,
                      frequency_penalty=req.frequency_penalty, top_logprobs=req.top_logprobs,
                      max_output_tokens=req.max_output_tokens)
    else:
        echoed = dict(sent, top_logprobs=req.top_logprobs or 0,
                      max_output_tokens=max_tokens if isinstance(max_tokens, int) and not isinstance(max_tokens, bool)
                      else None)
    response = r.Response(
        id=response_id,
        created_at=created_at,
        status="in_progress",
        model=settings.model,
        instructions=req.instructions,
        max_tool_calls=req.max_tool_calls,
        parallel_tool_calls=True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        reasoning={
            "effort": req.reasoning.effort if req.reasoning else None,
            "summary": req.reasoning.summary if req.reasoning else None,
        },
        **echoed,
        text={"format": (req.text.format if req.text and req.text.format else {"type": "text"})},
        tool_choice=req.tool_choice if req.tool_choice is not None else "auto",
        tools=[_echoed_tool(tool) for tool in req.tools or []],
        user=req.user,
        metadata=dict(metadata),
        safety_identifier=req.safety_identifier,
        prompt_cache_key=req.prompt_cache_key,
    )
    options = settings.stream_options
    if body.get("continue_final_message") and options.parse_think_tags and options.reasoning_blocks_as_parts:
        options = dataclasses.replace(options, reasoning_field_as_text=True)  # NeMo Gym's conventions
    return ChatPlan(body=body, stream=req.stream, response=response, options=options,
                    track_tokens=settings.return_token_id_information, text_logprobs=text_logprobs,
                    tokenize=tokenize, payload=payload, tools=offered)


# --- validation of what cannot be honoured ------------------------------------------------------


def _reject_unsupported(req: r.ResponsesRequest) -> None:
    for key, value in (req.metadata or {}).items():
        if not isinstance(value, str):
            raise InvalidRequest(f"Invalid 'metadata.{key}': metadata values must be strings.",
                                 param=f"metadata.{key}", code="invalid_type")
    if req.previous_response_id is not None:
        raise InvalidRequest(
            "previous_response_id is not supported: storing responses is off on this gateway "
            "(gateway.store: false). Send the previous output items back in 'input' instead.",
            param="previous_response_id",
            code="unsupported_parameter",
        )
    if req.conversation is not None:
        raise InvalidRequest("'conversation' is not supported by this gateway: it stores no conversations. "
                             "Send the conversation's items in 'input' instead.",
                             param="conversation", code="unsupported_parameter")
    if req.prompt is not None:
        raise InvalidRequest("'prompt' is not supported by this gateway: prompt templates are stored on OpenAI's "
                             "servers, which the gateway cannot read. Send the prompt's text in 'instructions' "
                             "and 'input' instead.", param="prompt", code="unsupported_parameter")
    if req.moderation is not None:
        raise InvalidRequest("'moderation' is not supported by this gateway: it has no moderation model to score "
                             "or block input and output with.", param="moderation", code="unsupported_parameter")
    if (req.prompt_cache_options or {}).get("prewarm"):
        raise InvalidRequest("'prompt_cache_options.prewarm' is not supported by this gateway: vLLM fills its "
                             "prefix cache only by generating.", param="prompt_cache_options.prewarm",
                             code="unsupported_parameter")
    if req.max_tool_calls is not None and req.max_tool_calls < 0:
        raise InvalidRequest(f"Invalid 'max_tool_calls': expected a value >= 0, got {req.max_tool_calls}.",
                             param="max_tool_calls", code="integer_below_min_value")
    if req.background:
        raise InvalidRequest(
            "background responses are not supported: storing responses is off on this gateway (gateway.store: false).",
            param="background",
            code="unsupported_parameter",
        )
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= 20:
        raise InvalidRequest(
            f"Invalid 'top_logprobs': expected a value between 0 and 20, got {req.top_logprobs}.",
            param="top_logprobs",
        )
    if req.max_output_tokens is not None and req.max_output_tokens > MAX_OUTPUT_TOKENS:
        raise InvalidRequest(
            f"Invalid 'max_output_tokens': {req.max_output_tokens} is beyond any model's context; "
            f"the gateway accepts at most {MAX_OUTPUT_TOKENS:,}.",
            param="max_output_tokens",
            code="integer_above_max_value",
        )
    if req.max_output_tokens is not None and req.max_output_tokens < 1:
        raise InvalidRequest(
            f"Invalid 'max_output_tokens': integer below minimum value. Expected a value >= 1, "
            f"but got {req.max_output_tokens} instead.",
            param="max_output_tokens",
            code="integer_below_min_value",
        )
    if req.temperature is not None and not 0 <= req.temperature <= 2:
        raise InvalidRequest(
            f"Invalid 'temperature': expected a value between 0 and 2, got {req.temperature}.",
            param="temperature",
        )
    if req.top_p is not None and not 0 <= req.top_p <= 1:
        raise InvalidRequest(f"Invalid 'top_p': expected a value between 0 and 1, got {req.top_p}.", param="top_p")


# Bounds on what is passed through to vLLM unparsed: deeper or bigger than this is not a real
# schema or setting, and would fail to encode (orjson stops at 255 levels and 64-bit integers).
MAX_DEPTH = 64
MAX_OUTPUT_TOKENS = 10_000_000
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _check_values(req: r.ResponsesRequest) -> None:
    for name in ("max_output_tokens", "max_tool_calls", "seed", "top_k", "min_tokens", "top_logprobs"):
        value = getattr(req, name)
        if value is not None and not _INT_MIN <= value <= _INT_MAX:
            raise InvalidRequest(f"Invalid '{name}': {value} does not fit in 64 bits.", param=name,
                                 code="integer_above_max_value")
    # ``input`` is not walked: items are validated field by field, extra keys on them are dropped,
    # and what is kept is strings and token-id lists (the encoding check in plan_chat_request
    # catches an oversized id). Walking every node of a long conversation would cost on each request.
    _check_json(req.tools, "tools")
    _check_json(req.tool_choice, "tool_choice")
    _check_json(req.text.format if req.text else None, "text.format")
    _check_json(req.chat_template_kwargs, "chat_template_kwargs")


def _check_json(value: Any, where: str) -> None:
    """Depth and integer size of a free-form JSON value, iteratively (no recursion to exhaust)."""
    stack: list[tuple[Any, str, int]] = [(value, where, 1)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, dict):
            if depth > MAX_DEPTH:
                raise InvalidRequest(f"Invalid '{path}': nested more than {MAX_DEPTH} levels deep.", param=path)
            stack.extend((v, f"{path}.{k}", depth + 1) for k, v in node.items())
        elif isinstance(node, list):
            if depth > MAX_DEPTH:
                raise InvalidRequest(f"Invalid '{path}': nested more than {MAX_DEPTH} levels deep.", param=path)
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node))
        elif isinstance(node, int) and not isinstance(node, bool) and not _INT_MIN <= node <= _INT_MAX:
            raise InvalidRequest(f"Invalid '{path}': the integer {node} does not fit in 64 bits.", param=path,
                                 code="integer_above_max_value")


# --- input items -> messages ----------------------------------------------------------------------


THINK_BLOCK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def set_reasoning_fields(message: dict[str, Any], blocks: list[str], settings: ConversionSettings) -> None:
    """History reasoning on an assistant message, in the key(s) NeMo Gym's reasoning_field names
    (all blocks, joined: Gym keeps only the first)."""
    if blocks and settings.reasoning_history == "field":
        reasoning = "\n\n".join(blocks)
        if settings.reasoning_field in ("both", "reasoning_content"):
            message["reasoning_content"] = reasoning
        if settings.reasoning_field in ("both", "reasoning"):
            message["reasoning"] = reasoning


class _AssistantTurn:
    """Consecutive assistant-side items, gathered into one Chat Completions message.

    Built as NeMo Gym 0.7.0 builds it: one content buffer in item order, reasoning as
    ``<think>…</think>``; then, unless reasoning stays in the content, every ``<think>`` block is
    taken out of the content into the reasoning field(s). Where Gym errs the gateway does not:
    all blocks are kept (Gym keeps the first), a reasoning item with an empty summary gives its
    ``content`` (Gym drops it), and a refusal part stays in the content (Gym moves it to
    ``refusal``, which chat templates do not render).
    """

    __slots__ = ("buffer", "tool_calls", "token_fields")

    def __init__(self) -> None:
        self.buffer: list[str] = []  # content as the model wrote it, reasoning in <think> tags
        self.tool_calls: list[dict[str, Any]] = []
        self.token_fields: Optional[dict[str, Any]] = None

    def to_message(self, settings: ConversionSettings) -> dict[str, Any]:
        text = "".join(self.buffer)
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if text and settings.reasoning_history != "think_tags":
            blocks = THINK_BLOCK.findall(text)
            message["content"] = THINK_BLOCK.sub("", text)
            set_reasoning_fields(message, blocks, settings)
        if self.tool_calls:
            message["tool_calls"] = self.tool_calls
        if self.token_fields is not None and settings.return_token_id_information:
            message.update(self.token_fields)
        return message


def _messages(req: r.ResponsesRequest, settings: ConversionSettings, offered: OfferedTools) -> list[dict[str, Any]]:
    raw_items: list[Any] = (
        [{"type": "message", "role": "user", "content": req.input}] if isinstance(req.input, str) else req.input
    )
    if not raw_items:
        raise InvalidRequest("'input' must not be empty.", param="input", code="empty_array")
    messages: list[dict[str, Any]] = []
    turn: Optional[_AssistantTurn] = None

    def end_turn() -> None:
        nonlocal turn
        if turn is not None:  # an empty turn too: NeMo Gym sends {"role": "assistant", "content": null}
            messages.append(turn.to_message(settings))
            turn = None

    for i, raw in enumerate(raw_items):
        item = _decode_item(raw, i)
        where = f"input[{i}]"
        if isinstance(item, r.MessageItem) and item.role != "assistant":
            end_turn()
            messages.append({"role": item.role, "content": _user_content(item.content, where)})
            continue
        if isinstance(item, (r.FunctionCallOutputItem, r.CustomToolCallOutputItem)):
            end_turn()
            messages.append(
                {"role": "tool", "tool_call_id": item.call_id, "content": _tool_output(item.output, where)}
            )
            continue
        if turn is None:
            turn = _AssistantTurn()
        if isinstance(item, r.MessageItem):
            turn.buffer.append(_assistant_text(item.content, where))
        elif isinstance(item, r.FunctionCallInput):
            name = offered_name(item.name, item.namespace)
            turn.tool_calls.append({"id": item.call_id, "type": "function",
                                    "function": {"name": name, "arguments": item.arguments}})
        elif isinstance(item, r.CustomToolCallInput):
            name = offered_name(item.name, item.namespace)
            turn.tool_calls.append({"id": item.call_id, "type": "function",
                                    "function": {"name": name, "arguments": custom_arguments(item.input)}})
        elif isinstance(item, r.ReasoningInput):
            blocks = [p.text for p in item.summary if p.text] or [p.text for p in item.content or [] if p.text]
            turn.buffer.extend(f"<think>{block}</think>" for block in blocks)
        token_fields = _token_fields(item, where)
        if token_fields is not None:
            turn.token_fields = token_fields  # the last item carrying them wins (NeMo Gym)
    end_turn()

    if req.instructions:
        # One system message first: instructions, then the text of any leading system/developer
        # messages (NeMo Gym's folding; one with an image ends the run rather than lose the image).
        leading: list[str] = [req.instructions]
        while messages and messages[0]["role"] in ("system", "developer"):
            text = _plain_text(messages[0]["content"])
            if text is None:
                break
            leading.append(text)
            messages.pop(0)
        messages.insert(0, {"role": "system", "content": "\n\n".join(leading)})
    if settings.replace_developer_role_with_system:
        for message in messages:
            if message["role"] == "developer":
                message["role"] = "system"
    elif settings.fold_developer_messages:
        _fold_developer_messages(messages)
    return messages


def _fold_developer_messages(messages: list[dict[str, Any]]) -> None:
    """For chat templates that silently drop ``developer`` messages (Qwen2.5's, Qwen3's): their text
    joins the system message at the start, which every template renders (Codex sends its whole
    system prompt this way). One holding more than text (an image) becomes a system message in place."""
    texts: list[str] = []
    kept: list[dict[str, Any]] = []
    for message in messages:
        text = _plain_text(message["content"]) if message["role"] == "developer" else None
        if text is not None:
            texts.append(text)
            continue
        if message["role"] == "developer":
            message["role"] = "system"
        kept.append(message)
    if not texts:
        return
    lead = _plain_text(kept[0]["content"]) if kept and kept[0]["role"] == "system" else None
    if lead is not None:
        kept[0] = {"role": "system", "content": "\n\n".join([lead, *texts])}
    else:
        kept.insert(0, {"role": "system", "content": "\n\n".join(texts)})
    messages[:] = kept


def _plain_text(content: Any) -> Optional[str]:
    """A message's content as one string when it is only text, else None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(p["text"] for p in content)
    return None


_AUDIO_KEYS = ("audio_data", "audio_path", "audio_paths")


def add_audio(messages: list[dict[str, Any]], metadata: dict[str, str], settings: ConversionSettings) -> None:
    """NeMo Gym's audio side channel: ``metadata.audio_data`` (a data: URL), ``audio_path`` or
    ``audio_paths`` (files, read by the server) become ``audio_url`` parts at the start of the last
    user message."""
    present = [key for key in _AUDIO_KEYS if metadata.get(key)]
    if not present:
        return
    if len(present) > 1:
        raise InvalidRequest(f"metadata audio keys are mutually exclusive, got {', '.join(present)}: "
                             "set one of audio_data, audio_path, audio_paths.", param=f"metadata.{present[1]}")
    key = present[0]
    if key == "audio_data":
        urls = [metadata[key]]
    else:
        if settings.load_audio is None:
            raise InvalidRequest(f"metadata.{key} is not supported here: no audio loader.", param=f"metadata.{key}")
        paths: Any = [metadata[key]]
        if key == "audio_paths":
            try:
                paths = orjson.loads(metadata[key])
            except orjson.JSONDecodeError:
                paths = None
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise InvalidRequest("metadata.audio_paths must be a JSON list of paths encoded as a string.",
                                     param="metadata.audio_paths")
        urls = [settings.load_audio(path) for path in paths]
    parts = [{"type": "audio_url", "audio_url": {"url": url}} for url in urls]
    for message in reversed(messages):
        if message["role"] == "user":
            content = message["content"]
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            message["content"] = parts + list(content or [])
            return
    messages.append({"role": "user", "content": parts})


def _decode_item(raw: Any, i: int) -> r.InputItem:
    where = f"input[{i}]"
    if not isinstance(raw, dict):
        raise InvalidRequest(f"Invalid '{where}': expected an object.", param=where, code="invalid_type")
    if "type" not in raw and "role" in raw:
        raw = {**raw, "type": "message"}
    kind = raw.get("type")
    struct = _ITEM_STRUCTS.get(kind) if isinstance(kind, str) else None
    if struct is None:
        raise InvalidRequest(
            f"Invalid '{where}.type': {kind!r} is not supported by this gateway "
            f"(supported: {', '.join(_ITEM_TYPES)}).",
            param=f"{where}.type",
            code="unsupported_value",
        )
    try:
        return msgspec.convert(raw, struct)
    except msgspec.ValidationError as exc:
        raise from_validation_error(exc, prefix=where) from None


def _token_fields(item: r.InputItem, where: str) -> Optional[dict[str, Any]]:
    present = {key: getattr(item, key, msgspec.UNSET) for key in _TOKEN_KEYS}
    present = {key: value for key, value in present.items() if value is not msgspec.UNSET}
    routed = getattr(item, "routed_experts", msgspec.UNSET)
    if not present:
        if routed is not msgspec.UNSET:
            raise InvalidRequest(f"'{where}' carries routed_experts without its token ids.",
                                 param=f"{where}.routed_experts")
        return None

    if len(present) != len(_TOKEN_KEYS):
        missing = [key for key in _TOKEN_KEYS if key not in present]
        raise InvalidRequest(
            f"'{where}' carries token information without {', '.join(missing)}: "
            "the three token keys come together or not at all.",
            param=f"{where}.{missing[0]}",
        )
    if len(present["generation_token_ids"]) != len(present["generation_log_probs"]):
        raise InvalidRequest(
            f"'{where}': generation_token_ids and generation_log_probs differ in length.",
            param=f"{where}.generation_log_probs",
        )
    if routed is not msgspec.UNSET:  # NeMo RL's router replay: goes back with the ids (as NeMo Gym)
        present["routed_experts"] = routed
    return present


def _user_content(content: Any, where: str) -> Any:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        if isinstance(part, (r.InputTextPart, r.OutputTextPart)):
            parts.append({"type": "text", "text": part.text})
        elif isinstance(part, r.InputImagePart):
            if not part.image_url:
                raise InvalidRequest(
                    "input_image needs an 'image_url' (a URL or a data: URL); file ids are not supported.",
                    param=f"{where}.content[{j}].image_url",
                    code="missing_required_parameter",
                )
            image: dict[str, Any] = {"url": part.image_url}
            if part.detail:
                image["detail"] = part.detail
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidRequest(
                f"Invalid '{where}.content[{j}].type': a refusal part belongs to an assistant message.",
                param=f"{where}.content[{j}].type",
            )
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def _assistant_text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, (r.InputTextPart, r.OutputTextPart)):
            texts.append(part.text)
        elif isinstance(part, r.RefusalPart):
            texts.append(part.refusal)
        else:
            raise InvalidRequest(
                f"Invalid '{where}.content[{j}].type': an assistant message holds text only.",
                param=f"{where}.content[{j}].type",
            )
    return "".join(texts)


def _tool_output(output: Any, where: str) -> Any:
    if isinstance(output, str):
        return output
    return _user_content(output, f"{where}.output")


# --- tools ----------------------------------------------------------------------------------------


def _echoed_tool(tool: Any) -> Any:
    """A function tool as the Response lists it: ``description``, ``parameters`` and ``strict`` are
    always there (null when not given), as the Open Responses schema requires. Other kinds as sent."""
    if not isinstance(tool, dict) or tool.get("type") != "function":
        return tool
    return {"description": None, "parameters": None, "strict": None, **tool}


# --- sampling and output format -------------------------------------------------------------------


def _sampling(req: r.ResponsesRequest, body: dict[str, Any]) -> None:
    if req.temperature is not None:
        body["temperature"] = req.temperature
    if req.top_p is not None:
        body["top_p"] = req.top_p
    if req.max_output_tokens is not None:
        body["max_tokens"] = req.max_output_tokens
    for name in _VLLM_SAMPLING_EXTENSIONS:
        value = getattr(req, name)
        if value is not None:
            body[name] = value


def _sent_number(body: dict[str, Any], key: str) -> float:
    """A sampling value as sent to vLLM, for the Response's echo under the openai conventions
    (OpenAI's schema wants a number): OpenAI's default when none was sent."""
    value = body.get(key, SAMPLING_DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"Invalid '{key}': expected a number, got {value!r} (from extra_body or "
                             "sampling_overrides).", param=key, code="invalid_type")
    return float(value)


def _response_format(text: Optional[r.TextParam]) -> Optional[dict[str, Any]]:
    if text is None or text.format is None:
        return None
    fmt = text.format
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = fmt.get("schema")
        if not isinstance(schema, dict):
            raise InvalidRequest("text.format json_schema needs a 'schema' object.", param="text.format.schema",
                                 code="missing_required_parameter")
        json_schema: dict[str, Any] = {"name": fmt.get("name") or "response", "schema": schema}
        for key in ("strict", "description"):
            if fmt.get(key) is not None:
                json_schema[key] = fmt[key]
        return {"type": "json_schema", "json_schema": json_schema}
    raise InvalidRequest(
        f"Invalid 'text.format.type': {kind!r}; expected 'text', 'json_object' or 'json_schema'.",
        param="text.format.type",
    )


def json_object_from_metadata(metadata: dict[str, str], key: str) -> dict[str, Any]:
    """NeMo Gym passes ``chat_template_kwargs`` and ``extra_body`` as JSON strings in metadata."""
    raw = metadata.get(key)
    if raw is None:
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"metadata.{key} must be a JSON object encoded as a string: {exc}.",
                             param=f"metadata.{key}") from None
    if not isinstance(value, dict):
        raise InvalidRequest(f"metadata.{key} must encode a JSON object.", param=f"metadata.{key}")
    _check_json(value, f"metadata.{key}")
    return value
