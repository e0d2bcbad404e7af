"""OpenAI Responses API shapes: the request the gateway accepts, the Response it returns, and every
stream event it emits (a tagged union on ``type``).

Field sets follow the openai-python SDK types (``openai/types/responses``). Output Structs declare
every field a client may read, with its default, so that each encodes the same keys every time
(``annotations: []``, ``logprobs: []``, ``summary: []`` ... are part of the contract). Token
tracking keys for RL training are ``UNSET`` unless filled, and then appear on the item (NeMo Gym's
placement).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

import msgspec
from msgspec import UNSET, UnsetType

# --- request ------------------------------------------------------------------------------------


class ReasoningParam(msgspec.Struct, gc=False, kw_only=True):
    effort: Optional[str] = None
    summary: Optional[str] = None
    generate_summary: Optional[str] = None


class TextParam(msgspec.Struct, gc=False, kw_only=True):
    format: Optional[dict[str, Any]] = None
    verbosity: Optional[str] = None


class ResponsesRequest(msgspec.Struct, gc=False, kw_only=True, forbid_unknown_fields=True):
    """``POST /v1/responses`` body. Unknown top-level parameters are rejected, as OpenAI does.

    ``input`` items stay dicts here; ``translate.request`` validates each against ``InputItem`` so
    that an error names its position (``input[3].content[0].type``).
    """

    model: Optional[str] = None
    input: Union[str, list[dict[str, Any]]]
    instructions: Optional[str] = None
    stream: bool = False
    tools: Optional[list[dict[str, Any]]] = None
    tool_choice: Union[str, dict[str, Any], None] = None
    parallel_tool_calls: Optional[bool] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    max_output_tokens: Optional[int] = None
    top_logprobs: Optional[int] = None
    reasoning: Optional[ReasoningParam] = None
    text: Optional[TextParam] = None
    user: Optional[str] = None
    metadata: Optional[dict[str, Any]] = None  # values must be strings: checked where the key can be named
    include: Optional[list[str]] = None
    max_tool_calls: Optional[int] = None  # limits built-in (hosted) tool calls; none run here
    # Echoed on the Response, changing nothing here: the gateway keeps no state, has one service
    # tier, and vLLM caches prefixes by itself (prompt_cache_key also picks the server, for affinity).
    store: Optional[bool] = None
    truncation: Optional[str] = None
    service_tier: Optional[str] = None
    prompt_cache_key: Optional[str] = None
    safety_identifier: Optional[str] = None
    # Accepted without effect and not echoed (see README, "What the gateway does with a request").
    prompt_cache_retention: Optional[str] = None
    prompt_cache_options: Optional[dict[str, Any]] = None  # prewarm: true is refused
    stream_options: Optional[dict[str, Any]] = None
    context_management: Optional[list[Any]] = None
    image: Optional[dict[str, Any]] = None
    access_programs: Optional[dict[str, Any]] = None
    background_options: Optional[dict[str, Any]] = None
    client_metadata: Optional[dict[str, Any]] = None  # Codex sends it on every request
    # Refused when set: they need server-side state or services a Chat Completions server lacks.
    previous_response_id: Optional[str] = None
    conversation: Any = None
    background: Optional[bool] = None
    prompt: Any = None
    moderation: Optional[dict[str, Any]] = None
    # vLLM sampling extensions, as the openai SDK's ``extra_body`` puts them at the top level.
    top_k: Optional[int] = None
    min_p: Optional[float] = None
    min_tokens: Optional[int] = None
    seed: Optional[int] = None
    stop: Union[str, list[str], None] = None
    presence_penalty: Optional[float] = None
    frequency_penalty: Optional[float] = None
    repetition_penalty: Optional[float] = None
    chat_template_kwargs: Optional[dict[str, Any]] = None


# Input items. Unknown fields on items are ignored (clients attach ids, statuses, phases ...);
# an unknown item or part *type* is an error.


class TokenFields(msgspec.Struct, gc=False, kw_only=True):
    """NeMo Gym's token information, carried on items it sends back as history."""

    prompt_token_ids: Union[list[int], UnsetType] = UNSET
    generation_token_ids: Union[list[int], UnsetType] = UNSET
    generation_log_probs: Union[list[float], UnsetType] = UNSET
    # NeMo RL's MoE router replay: the experts vLLM routed each token to (NeMo Gym passes it through).
    routed_experts: Union[str, list[list[list[int]]], UnsetType] = UNSET


class InputTextPart(msgspec.Struct, gc=False, tag="input_text", tag_field="type"):
    text: str


class OutputTextPart(msgspec.Struct, gc=False, tag="output_text", tag_field="type"):
    text: str


class RefusalPart(msgspec.Struct, gc=False, tag="refusal", tag_field="type"):
    refusal: str


class InputImagePart(msgspec.Struct, gc=False, tag="input_image", tag_field="type", kw_only=True):
    image_url: Optional[str] = None
    file_id: Optional[str] = None
    detail: Optional[str] = None


ContentPart = Union[InputTextPart, OutputTextPart, RefusalPart, InputImagePart]


class MessageItem(TokenFields, tag="message", tag_field="type", kw_only=True):
    role: Literal["user", "system", "developer", "assistant"]
    content: Union[str, list[ContentPart]]


class FunctionCallInput(TokenFields, tag="function_call", tag_field="type", kw_only=True):
    call_id: str
    name: str
    arguments: str
    namespace: Optional[str] = None


class CustomToolCallInput(TokenFields, tag="custom_tool_call", tag_field="type", kw_only=True):
    call_id: str
    name: str
    input: str
    namespace: Optional[str] = None


class FunctionCallOutputItem(msgspec.Struct, gc=False, tag="function_call_output", tag_field="type", kw_only=True):
    call_id: str
    output: Union[str, list[ContentPart]]


class CustomToolCallOutputItem(msgspec.Struct, gc=False, tag="custom_tool_call_output", tag_field="type",
                               kw_only=True):
    call_id: str
    output: Union[str, list[ContentPart]]


class SummaryTextPart(msgspec.Struct, gc=False, tag="summary_text", tag_field="type"):
    text: str


class ReasoningTextPart(msgspec.Struct, gc=False, tag="reasoning_text", tag_field="type"):
    text: str


class ReasoningInput(TokenFields, tag="reasoning", tag_field="type", kw_only=True):
    summary: list[SummaryTextPart] = []
    content: Optional[list[ReasoningTextPart]] = None
    encrypted_content: Optional[str] = None


InputItem = Union[MessageItem, FunctionCallInput, FunctionCallOutputItem, ReasoningInput, CustomToolCallInput,
                  CustomToolCallOutputItem]


# --- output items -------------------------------------------------------------------------------


class OutputText(msgspec.Struct, gc=False, tag="output_text", tag_field="type", kw_only=True):
    text: str
    annotations: list[Any] = []
    logprobs: list[Any] = []


class ReasoningText(msgspec.Struct, gc=False, tag="reasoning_text", tag_field="type"):
    text: str


class SummaryText(msgspec.Struct, gc=False, tag="summary_text", tag_field="type"):
    text: str


class OutputMessage(msgspec.Struct, gc=False, tag="message", tag_field="type", kw_only=True):
    id: str
    status: str
    role: str = "assistant"
    content: list[OutputText] = []
    prompt_token_ids: Union[list[int], UnsetType] = UNSET
    generation_token_ids: Union[list[int], UnsetType] = UNSET
    generation_log_probs: Union[list[float], UnsetType] = UNSET
    # NeMo RL's MoE router replay: the experts vLLM routed each token to (NeMo Gym passes it through).
    routed_experts: Union[str, list[list[list[int]]], UnsetType] = UNSET


class ReasoningItem(msgspec.Struct, gc=False, tag="reasoning", tag_field="type", kw_only=True):
    id: str
    status: str
    summary: list[SummaryText] = []
    # Present (possibly empty) only in the raw presentation.
    content: Union[list[ReasoningText], UnsetType] = UNSET
    # Left out: the Open Responses schema allows a string or no key (not null), and the gateway
    # has nothing encrypted to give (the reasoning is in the clear, in summary or content).
    encrypted_content: Union[str, UnsetType] = UNSET
    prompt_token_ids: Union[list[int], UnsetType] = UNSET
    generation_token_ids: Union[list[int], UnsetType] = UNSET
    generation_log_probs: Union[list[float], UnsetType] = UNSET
    # NeMo RL's MoE router replay: the experts vLLM routed each token to (NeMo Gym passes it through).
    routed_experts: Union[str, list[list[list[int]]], UnsetType] = UNSET


class FunctionCallItem(msgspec.Struct, gc=False, tag="function_call", tag_field="type", kw_only=True):
    id: str
    status: str
    call_id: str
    name: str
    arguments: str = ""
    namespace: Union[str, UnsetType] = UNSET  # set for a function of a ``namespace`` tool
    prompt_token_ids: Union[list[int], UnsetType] = UNSET
    generation_token_ids: Union[list[int], UnsetType] = UNSET
    generation_log_probs: Union[list[float], UnsetType] = UNSET
    # NeMo RL's MoE router replay: the experts vLLM routed each token to (NeMo Gym passes it through).
    routed_experts: Union[str, list[list[list[int]]], UnsetType] = UNSET


class CustomToolCallItem(msgspec.Struct, gc=False, tag="custom_tool_call", tag_field="type", kw_only=True):
    """A call of a ``custom`` tool: free-form ``input`` (the offered function's one argument)."""

    id: str
    status: str
    call_id: str
    name: str
    input: str = ""
    namespace: Union[str, UnsetType] = UNSET
    prompt_token_ids: Union[list[int], UnsetType] = UNSET
    generation_token_ids: Union[list[int], UnsetType] = UNSET
    generation_log_probs: Union[list[float], UnsetType] = UNSET
    # NeMo RL's MoE router replay: the experts vLLM routed each token to (NeMo Gym passes it through).
    routed_experts: Union[str, list[list[list[int]]], UnsetType] = UNSET


OutputItem = Union[OutputMessage, ReasoningItem, FunctionCallItem, CustomToolCallItem]


# --- the Response -------------------------------------------------------------------------------


class InputTokensDetails(msgspec.Struct, gc=False, kw_only=True):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, gc=False, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, gc=False, kw_only=True):
    input_tokens: int = 0
    input_tokens_details: InputTokensDetails = msgspec.field(default_factory=InputTokensDetails)
    output_tokens: int = 0
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)
    total_tokens: int = 0


class ResponseError(msgspec.Struct, gc=False, kw_only=True):
    code: str
    message: str


class IncompleteDetails(msgspec.Struct, gc=False, kw_only=True):
    reason: str
    # Why, in words, when the reason alone would mislead (e.g. nothing was generated at all).
    message: Union[str, UnsetType] = UNSET


class Response(msgspec.Struct, gc=False, kw_only=True):
    """Every key the Open Responses schema requires is always present. The sampling values are
    the ones sent to vLLM (``translate.request`` makes the defaults explicit), so the echo is
    what was used."""

    id: str
    object: str = "response"
    created_at: int
    completed_at: Optional[int] = None  # set when the status becomes completed
    status: str
    error: Optional[ResponseError] = None
    incomplete_details: Optional[IncompleteDetails] = None
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = None
    max_tool_calls: Optional[int] = None
    model: str
    output: list[OutputItem] = []
    parallel_tool_calls: bool = True
    previous_response_id: Optional[str] = None
    reasoning: dict[str, Any] = msgspec.field(default_factory=lambda: {"effort": None, "summary": None})
    store: bool = False
    background: bool = False
    conversation: Union[dict[str, Any], UnsetType] = UNSET  # {"id": ...} of a response in a conversation
    service_tier: str = "default"
    # null where a request under NeMo Gym's conventions sent none (see ConversionSettings)
    temperature: Optional[float] = 1.0
    top_p: Optional[float] = 1.0
    presence_penalty: Optional[float] = 0.0
    frequency_penalty: Optional[float] = 0.0
    top_logprobs: Optional[int] = 0
    text: dict[str, Any] = msgspec.field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Any = "auto"
    tools: list[Any] = []
    truncation: str = "disabled"
    usage: Optional[ResponseUsage] = None
    user: Optional[str] = None
    metadata: dict[str, str] = {}
    safety_identifier: Optional[str] = None
    prompt_cache_key: Optional[str] = None


# --- stream events ------------------------------------------------------------------------------
# Every event carries ``sequence_number``; the state machine numbers them. Kept in the order in
# which a stream uses them.


class _Event(msgspec.Struct, gc=False, tag_field="type", kw_only=True):
    sequence_number: int = 0


class ResponseCreated(_Event, tag="response.created"):
    response: Response


class ResponseInProgress(_Event, tag="response.in_progress"):
    response: Response


class OutputItemAdded(_Event, tag="response.output_item.added"):
    output_index: int
    item: OutputItem


class OutputItemDone(_Event, tag="response.output_item.done"):
    output_index: int
    item: OutputItem


class ContentPartAdded(_Event, tag="response.content_part.added"):
    item_id: str
    output_index: int
    content_index: int
    part: Union[OutputText, ReasoningText]


class ContentPartDone(_Event, tag="response.content_part.done"):
    item_id: str
    output_index: int
    content_index: int
    part: Union[OutputText, ReasoningText]


class OutputTextDelta(_Event, tag="response.output_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str
    logprobs: list[Any] = []


class OutputTextDone(_Event, tag="response.output_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str
    logprobs: list[Any] = []


class ReasoningTextDelta(_Event, tag="response.reasoning_text.delta"):
    item_id: str
    output_index: int
    content_index: int
    delta: str


class ReasoningTextDone(_Event, tag="response.reasoning_text.done"):
    item_id: str
    output_index: int
    content_index: int
    text: str


class ReasoningSummaryPartAdded(_Event, tag="response.reasoning_summary_part.added"):
    item_id: str
    output_index: int
    summary_index: int
    part: SummaryText


class ReasoningSummaryPartDone(_Event, tag="response.reasoning_summary_part.done"):
    item_id: str
    output_index: int
    summary_index: int
    part: SummaryText


class ReasoningSummaryTextDelta(_Event, tag="response.reasoning_summary_text.delta"):
    item_id: str
    output_index: int
    summary_index: int
    delta: str


class ReasoningSummaryTextDone(_Event, tag="response.reasoning_summary_text.done"):
    item_id: str
    output_index: int
    summary_index: int
    text: str


class FunctionCallArgumentsDelta(_Event, tag="response.function_call_arguments.delta"):
    item_id: str
    output_index: int
    delta: str


class FunctionCallArgumentsDone(_Event, tag="response.function_call_arguments.done"):
    item_id: str
    output_index: int
    name: str
    arguments: str


class CustomToolCallInputDelta(_Event, tag="response.custom_tool_call_input.delta"):
    item_id: str
    output_index: int
    delta: str


class CustomToolCallInputDone(_Event, tag="response.custom_tool_call_input.done"):
    item_id: str
    output_index: int
    input: str


class Keepalive(_Event, tag="keepalive"):
    """Sent during upstream silences (OpenAI's servers send it too): an SSE *event*, so clients
    that time out on silence between events (Codex's ``stream_idle_timeout_ms``) see it."""


class ErrorEvent(_Event, tag="error"):
    code: Optional[str]
    message: str
    param: Optional[str] = None


class ResponseCompleted(_Event, tag="response.completed"):
    response: Response


class ResponseIncomplete(_Event, tag="response.incomplete"):
    response: Response


class ResponseFailed(_Event, tag="response.failed"):
    response: Response


StreamEvent = Union[
    ResponseCreated,
    ResponseInProgress,
    OutputItemAdded,
    OutputItemDone,
    ContentPartAdded,
    ContentPartDone,
    OutputTextDelta,
    OutputTextDone,
    ReasoningTextDelta,
    ReasoningTextDone,
    ReasoningSummaryPartAdded,
    ReasoningSummaryPartDone,
    ReasoningSummaryTextDelta,
    ReasoningSummaryTextDone,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    CustomToolCallInputDelta,
    CustomToolCallInputDone,
    Keepalive,
    ErrorEvent,
    ResponseCompleted,
    ResponseIncomplete,
    ResponseFailed,
]

TERMINAL_EVENTS = (ResponseCompleted, ResponseIncomplete, ResponseFailed)


def event_type(event: StreamEvent) -> str:
    """The SSE ``event:`` name, which is the Struct's tag."""
    return type(event).__struct_config__.tag  # type: ignore[return-value]
