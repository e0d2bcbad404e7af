"""The Responses event state machine: the one place that decides which event comes next.

Fed vLLM ``chat.completion.chunk``s, it returns Responses stream events; it never touches a socket
or reads a clock itself (after h11: the IO shells in ``server/`` and ``upstream/`` only feed it and write what it
returns). A non-streaming request runs the same machine on the whole completion as one chunk
(``chunk_from_completion``), so both modes give the same Response by construction.

Each chunk is read in a fixed order: the reasoning field, then ``content`` (through the
``<think>`` splitter), then tool-call fragments. Every piece is an *input* below; what it does
depends only on which output item is open (at most one is, ever):

    input                    | nothing open | reasoning open | message open | call open
    -------------------------+--------------+----------------+--------------+-----------------
    reasoning text           | open R       | append (*)     | switch to R  | switch to R (**)
    answer text              | open M       | switch to M    | append       | switch to M (**)
    end of a <think> block   | -            | mark ended     | -            | -
    tool call, new index     | open F       | switch to F    | switch to F  | switch to F (**)
    tool call, open index    | -            | -              | -            | append
    tool call, closed index  | fail: the upstream interleaved calls (vLLM never does)
    finish_reason / usage    | remembered; the terminal event comes from finish()
    silence (keepalive())    | a ``keepalive`` event, never held
    (*) switch to a new R when the open one's <think> block has ended (with
        ``reasoning_blocks_as_parts``: a new summary part of the same R, and a reasoning
        field's block ends when content starts)
    (**) and hold: see "Tool calls of unfinished responses"

A terminal event comes from ``finish()`` (completed / incomplete), ``fail()`` or ``cancel()`` (a
stored background run cancelled by its client: ``error`` + ``response.failed``, status
``cancelled``).

"switch" closes the open item (its ``*.done`` events, then ``output_item.done``) and opens the new
one. The last item stays open until ``finish()``, because with token tracking its
``output_item.done`` carries the generation's token ids (NeMo Gym reads them from the last item).

A call (F) is a ``function_call``, or a ``custom_tool_call`` when its name is an offered custom
tool (``translate.tools``): then its input is decoded out of the function's one string argument as
it streams (``custom_tool_call_input.delta``/``.done``); a namespace member's call carries its
``namespace``.

Tool calls of unfinished responses. A client may run a call as soon as it sees the call's
``output_item.done`` (Codex does, whatever its ``status``), so a call is done only in a response
that completed. Closing a call before the end (another item follows it) *holds* its done events
and every event after them until the end: a completed ``finish()`` releases them; an unfinished end
(``fail()``, or finish_reason ``length`` / ``content_filter``) drops them and cuts the output after
that call. An unfinished end with a call open sends no done events for it. Either way the terminal
Response lists that call, as far as it streamed, with status ``incomplete``. Sequence numbers are
given as events leave the machine, so dropped events leave no gaps.

Whitespace never opens an item: the leading whitespace of a block is dropped and trailing
whitespace is held until more text shows it was not trailing, so ``"</think>\\n\\n"`` before a tool
call does not produce an empty message. A tool call whose name has not arrived yet is held (its
argument pieces buffered) until the name arrives, because ``output_item.added`` must carry it.

Client logprobs (``include: ["message.output_text.logprobs"]``) are not an input of the table:
every chunk's tokens go to a ``LogprobAligner``, and each message delta takes the tokens that wrote
its text (``translate.logprobs``), so reasoning, tags and tool markup never get any, however vLLM
chunked them, and a completion fed whole gets the same list as its stream.
"""

from __future__ import annotations

import enum
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import msgspec

from ..schema import chat
from ..schema import responses as r
from .logprobs import LogprobAligner
from .think import ThinkSplitter
from .tokens import GenerationTokens, TokenInfoError, bundle_from_message
from .tools import CustomInputDecoder, ToolTarget


def random_id(prefix: str) -> str:
    """``<prefix>_`` and 32 random hex digits (as uuid4().hex looks), from the OS's CSPRNG: ids of
    stored responses are their only key, so they must not be guessable."""
    try:
        digits = next(_random_hex.pool)
    except StopIteration:
        digits = next(_random_hex.refill())
    return f"{prefix}_{digits}"


class _RandomHex:
    """The OS's random bytes taken 4 KiB at a time, as 128 ids' worth of hex digits: one getrandom
    call per 128 ids, not one per id (each call lets go of the GIL, and at every response's start
    the store's writer thread took it: 5 % of the event loop's samples, gateway/bench/README.md).
    Each id is handed out once by ``next`` (atomic under the GIL); two threads refilling at once
    each make a pool of their own. A forked worker starts empty, never with its parent's ids."""

    IDS = 128

    def __init__(self) -> None:
        self.pool: Any = iter(())
        os.register_at_fork(after_in_child=self.forget)

    def refill(self) -> Any:
        digits = os.urandom(16 * self.IDS).hex()
        self.pool = pool = iter([digits[i:i + 32] for i in range(0, len(digits), 32)])
        return pool

    def forget(self) -> None:
        self.pool = iter(())


_random_hex = _RandomHex()


def wall_clock() -> int:
    """Unix seconds, for ``completed_at``; injected like ``new_id`` so tests can fix it."""
    return int(time.time())


@dataclass(frozen=True)
class StreamOptions:
    # Read <think> tags out of content (NeMo Gym's ``uses_reasoning_parser``). Reasoning fields
    # (``delta.reasoning`` / ``delta.reasoning_content``) are always reasoning.
    parse_think_tags: bool = True
    # The chat template opened <think> in the prompt: output starts inside reasoning.
    reasoning_starts_open: bool = False
    # "summary": summary_text parts (NeMo Gym, Codex); "raw": reasoning_text content.
    reasoning_presentation: str = "summary"
    # Where NeMo Gym's Response differs from OpenAI's (``gateway.response_conventions``; the
    # defaults here are OpenAI's, ``nemo_gym`` turns each one over):
    trim_whitespace: bool = True  # blocks trimmed, whitespace opens no item; else text as generated
    keep_stray_close_tag: bool = False  # a </think> outside reasoning stays in the answer text
    empty_output_message: bool = False  # nothing generated: one empty message rather than output []
    cut_items_completed: bool = False  # items of a response cut by length/content_filter: "completed"
    # reasoning blocks in a row: one reasoning item, a summary part each (else one item each)
    reasoning_blocks_as_parts: bool = False
    # The request continues a final assistant message: vLLM's parser split the continuation into
    # reasoning and content, NeMo Gym joins them back into the one text being continued.
    reasoning_field_as_text: bool = False


class Kind(enum.Enum):
    REASONING = "reasoning"
    MESSAGE = "message"
    CALL = "function_call"


_INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


class _OpenItem:
    """The item currently streaming: its final Struct and the text gathered so far."""

    __slots__ = ("kind", "item", "index", "parts", "pending_ws", "call_index", "ended", "logprobs", "decoder", "done_parts")

    def __init__(self, kind: Kind, item: r.OutputItem, index: int, call_index: int = -1) -> None:
        self.kind = kind
        self.item = item
        self.index = index
        self.parts: list[str] = []  # text / arguments pieces, joined once at close
        self.pending_ws = ""  # trailing whitespace not yet known to be inside the block
        self.call_index = call_index
        self.ended = False  # a reasoning block whose </think> was seen
        self.logprobs: list[Any] = []  # client-requested logprobs of a message's text
        # a custom tool call's input, decoded from its arguments as they stream
        self.decoder = CustomInputDecoder() if isinstance(item, r.CustomToolCallItem) else None
        self.done_parts: list[str] = []  # a reasoning item's finished summary (or content) parts


class _HeldCall:
    """A tool call seen before its name: buffered until ``output_item.added`` can be written."""

    __slots__ = ("call_id", "parts")

    def __init__(self, call_id: Optional[str]) -> None:
        self.call_id = call_id
        self.parts: list[str] = []


class ResponseStateMachine:
    def __init__(
        self,
        response: r.Response,
        options: StreamOptions = StreamOptions(),
        new_id: Callable[[str], str] = random_id,
        *,
        clock: Callable[[], int] = wall_clock,
        track_tokens: bool = False,
        text_logprobs: Optional[int] = None,
        tools: Optional[dict[str, ToolTarget]] = None,
    ) -> None:
        # ``response`` carries the request's echo fields (model, tools, instructions, ...).
        self._base = response
        self._options = options
        self._new_id = new_id
        self._clock = clock
        self._splitter = (ThinkSplitter(options.reasoning_starts_open, options.keep_stray_close_tag)
                          if options.parse_think_tags else None)
        self._seq = 0
        self._events: list[r.StreamEvent] = []
        self._output: list[r.OutputItem] = []
        self._open: Optional[_OpenItem] = None
        self._held_call: Optional[tuple[int, _HeldCall]] = None
        self._closed_calls: set[int] = set()
        self._seen_reasoning_field = False
        self._field_block_open = False  # reasoning-field text came last (reasoning_blocks_as_parts)
        self._finish_reason: Optional[str] = None
        self._usage: Optional[chat.Usage] = None
        self._started = False
        self._tools = tools or {}  # offered function name -> the tool the client declared
        # Events held back after a call closed before the end (see the module docstring), the
        # number of output items the client has seen added, and the call that started the hold.
        self._held: Optional[list[r.StreamEvent]] = None
        self._visible = 0
        self._hold_start: Optional[_OpenItem] = None
        # Token tracking for RL (ids of the whole generation) and logprobs a client asked for.
        self.tokens: Optional[GenerationTokens] = GenerationTokens() if track_tokens else None
        self._routed_experts: Any = None  # vLLM's MoE routing of the generation, kept with the token ids
        # Logprobs on output_text (with ``text_logprobs`` alternatives per token), or None: off.
        # Tokens are matched to the text they wrote, whatever the chunking (see translate.logprobs).
        self._aligner = LogprobAligner(text_logprobs) if text_logprobs is not None else None
        self.final: Optional[r.Response] = None  # set once a terminal event was produced
        # The open message while the machine is where the fast path applies (see _more_message_text),
        # found once and kept until the next transition: every other one ends in _take(), which drops it.
        self._fast_item: Optional[_OpenItem] = None

    # --- public API ----------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        return self.final is not None

    @property
    def has_output(self) -> bool:
        """An output item has started (for time-to-first-token)."""
        return bool(self._output)

    @property
    def finish_reason(self) -> Optional[str]:
        return self._finish_reason

    def start(self) -> list[r.StreamEvent]:
        """``response.created`` and ``response.in_progress``."""
        self._live()
        return self._take()

    def _live(self) -> bool:
        """False once the response has ended. Any input before ``start()`` starts it first (its
        events then go out with that input's)."""
        if self.final is not None:
            return False
        if not self._started:
            self._started = True
            snapshot = msgspec.structs.replace(self._base, status="in_progress", output=[])
            self._emit(r.ResponseCreated(response=snapshot))
            self._emit(r.ResponseInProgress(response=snapshot))
        return True

    def keepalive(self) -> list[r.StreamEvent]:
        """The upstream is silent: a ``keepalive`` event (numbered like every event), so that
        clients timing out on silence between events stay. Never held back."""
        if not self._live():
            return []
        self._events.append(r.Keepalive())
        return self._take()

    def feed(self, chunk: chat.ChatChunk) -> list[r.StreamEvent]:
        fast = self._more_message_text(chunk)
        if fast is not None:
            return fast
        if not self._live():
            return []
        if chunk.error is not None:
            return self.fail("upstream_error", chunk.error.message or "the upstream reported an error")
        if chunk.usage is not None:
            self._usage = chunk.usage
        if chunk.prompt_token_ids is not None and self.tokens is not None:
            self.tokens.inline_prompt_ids = chunk.prompt_token_ids
        try:
            if len(chunk.choices) > 1:
                raise _UpstreamProtocolError("the upstream sent several choices; the gateway asks for one (n=1)")
            for choice in chunk.choices:
                self._feed_choice(choice)
        except _UpstreamProtocolError as exc:
            return self.fail("upstream_protocol_error", str(exc))
        except TokenInfoError as exc:
            return self.fail("token_information_invalid", str(exc))
        return self._take()

    # Most chunks of a stream are one transition: a message is streaming and the chunk brings more
    # of its text, nothing else. That one is taken here without the general path (its checks, four
    # calls and two lists per chunk: half the machine's time); it emits exactly what the general
    # path would, which tests/test_stream_properties.py checks on every kind of stream.
    def _more_message_text(self, chunk: chat.ChatChunk) -> Optional[list[r.StreamEvent]]:
        """The one ``output_text.delta`` of a chunk that only continues the open message, or None
        when the chunk is anything else (then the general path runs, as if this did not exist)."""
        open_item = self._fast_item
        if open_item is None:
            open_item = self._fast_item = self._fast_path_item()
            if open_item is None:
                return None
        if chunk.usage is not None or chunk.error is not None or chunk.prompt_token_ids is not None \
                or len(chunk.choices) != 1:
            return None
        choice = chunk.choices[0]
        delta = choice.delta
        text = delta.content
        if (not text or choice.finish_reason is not None or delta.reasoning is not None
                or delta.reasoning_content is not None or delta.tool_calls):
            return None
        if self._splitter is not None and "<" in text:
            return None  # a tag may begin here
        if self._options.trim_whitespace and text[-1].isspace():
            return None  # trailing whitespace is held until more text shows it is inside the block
        if self.tokens is not None:
            self.tokens.add_choice(choice)
        open_item.parts.append(text)
        event = r.OutputTextDelta(item_id=open_item.item.id, output_index=open_item.index, content_index=0,
                                  delta=text, logprobs=[], sequence_number=self._seq)
        self._seq += 1
        return [event]

    def _fast_path_item(self) -> Optional[_OpenItem]:
        """The open message, when nothing but the next chunk itself can keep it from taking the
        fast path: no other output pending or held, no logprobs to align, no reasoning-field block,
        no <think> state (inside one, a partial tag held, the stream's start), no held whitespace."""
        open_item = self._open
        if (open_item is None or open_item.kind is not Kind.MESSAGE or open_item.ended or self.final is not None
                or self._held is not None or self._events or self._aligner is not None or self._field_block_open
                or (self._options.trim_whitespace and open_item.pending_ws)
                or (self._splitter is not None and not self._splitter.answering)):
            return None
        return open_item

    def feed_completion(self, completion: chat.ChatCompletion) -> list[r.StreamEvent]:
        """A whole non-streaming completion: the same machine, fed it as one chunk."""
        if self.tokens is not None and completion.choices:
            try:
                self.tokens.bundle = bundle_from_message(completion.choices[0].message)
            except TokenInfoError as exc:
                return self.fail("token_information_invalid", str(exc))
            self._routed_experts = completion.choices[0].message.routed_experts
        return self.feed(chunk_from_completion(completion))

    def finish(self, prompt_token_ids: Optional[list[int]] = None) -> list[r.StreamEvent]:
        """The upstream stream ended normally (``[DONE]`` or end of body). With token tracking,
        ``prompt_token_ids`` are what ``/tokenize`` returned (unless vLLM sent them inline)."""
        if not self._live():
            return []
        if self._finish_reason is None:
            return self.fail("upstream_incomplete", "the upstream stream ended without a finish_reason")
        self._flush_splitter()
        if self._held_call is not None:
            return self.fail("upstream_protocol_error", "the upstream sent a tool call without a function name")
        if self._open is None and not self._output and self._options.empty_output_message:
            self._open_text_item(Kind.MESSAGE)
        if self.tokens is not None:
            try:
                info = self.tokens.assemble(prompt_token_ids, self._usage.completion_tokens if self._usage else None)
            except TokenInfoError as exc:
                return self.fail("token_information_invalid", str(exc))
            if self._open is None:  # nothing was generated but tokens were: an empty message holds them
                self._open_text_item(Kind.MESSAGE)
        reason = _INCOMPLETE_REASONS.get(self._finish_reason)
        events = self._terminal("incomplete" if reason else "completed",
                                r.IncompleteDetails(reason=reason) if reason else None)
        if self.tokens is not None:  # on the last item (NeMo Gym's placement); nothing is encoded yet
            item = self._output[-1]
            item.prompt_token_ids = info.prompt_token_ids
            item.generation_token_ids = info.generation_token_ids
            item.generation_log_probs = info.generation_log_probs
            if self._routed_experts is not None:
                item.routed_experts = self._routed_experts
        return events

    def context_overflow(self, message: str) -> list[r.StreamEvent]:
        """vLLM refused the prompt as longer than the context: an empty ``incomplete`` Response, so
        that a training rollout goes on (NeMo Gym's behaviour), saying why and that no tokens exist."""
        if not self._live():
            return []
        note = f"Nothing was generated: {message}"
        if self.tokens is not None:
            note += " No token information exists for this response."
        if self._options.empty_output_message:
            self._open_text_item(Kind.MESSAGE)
        return self._terminal("incomplete", r.IncompleteDetails(reason="max_output_tokens", message=note))

    def _terminal(self, status: str, details: Optional[r.IncompleteDetails]) -> list[r.StreamEvent]:
        item_status = "completed" if self._options.cut_items_completed else status
        final = self._end(item_status, status, usage=self._response_usage(), incomplete_details=details,
                          completed_at=self._clock() if status == "completed" else None)
        self._emit(r.ResponseIncomplete(response=final) if details else r.ResponseCompleted(response=final))
        return self._take()

    def fail(self, code: str, message: str) -> list[r.StreamEvent]:
        """End the stream as failed: close the open item, then ``error`` and ``response.failed``."""
        if not self._live():
            return []
        final = self._end("incomplete", "failed", usage=self._response_usage() if self._usage is not None else None,
                          error=r.ResponseError(code=code, message=message))
        self._emit(r.ErrorEvent(code=code, message=message))
        self._emit(r.ResponseFailed(response=final))
        return self._take()

    def cancel(self) -> list[r.StreamEvent]:
        """A stored background response cancelled by its client: like ``fail``, with the status
        ``cancelled`` (the SDK knows no cancelled event; followers see ``error`` + ``response.failed``)."""
        if not self._live():
            return []
        message = "the response was cancelled"
        final = self._end("incomplete", "cancelled", usage=self._response_usage() if self._usage is not None else None,
                          error=r.ResponseError(code="response_cancelled", message=message))
        self._emit(r.ErrorEvent(code="response_cancelled", message=message))
        self._emit(r.ResponseFailed(response=final))
        return self._take()

    def _end(self, item_status: str, status: str, **fields: Any) -> r.Response:
        """Settle the output and fix the final Response (what the terminal event carries)."""
        self._settle(status == "completed", item_status)
        self.final = msgspec.structs.replace(self._base, status=status, output=self._output, **fields)
        return self.final

    def _settle(self, completed: bool, item_status: str) -> None:
        """The output at the end, by the rule for tool calls of unfinished responses."""
        held, self._held = self._held, None
        if completed:
            if held:
                self._events += held
            self._close_open(item_status)
            return
        if held is not None:  # cut after the call that started the hold; it never got its done events
            start = self._hold_start
            assert start is not None
            del self._output[self._visible:]
            self._open = None
            _leave_unfinished(start)
            return
        if self._open is not None and self._open.kind is Kind.CALL:
            _leave_unfinished(self._open)
            self._open = None
            return
        self._close_open(item_status)

    # --- inputs --------------------------------------------------------------------------------

    def _feed_choice(self, choice: chat.ChunkChoice) -> None:
        delta = choice.delta
        if self.tokens is not None:
            self.tokens.add_choice(choice)
        if self._aligner is not None and choice.logprobs is not None and choice.logprobs.content:
            self._aligner.add(choice.logprobs.content)
        reasoning = delta.reasoning if delta.reasoning is not None else delta.reasoning_content
        content = delta.content
        if reasoning and self._options.reasoning_field_as_text:
            content, reasoning = reasoning + (content or ""), None  # a continued message is one text
        if reasoning:
            self._flush_splitter()  # held-back "<th" cannot become a tag once other output starts
            if not self._seen_reasoning_field:
                # The server runs a reasoning parser: content will carry no open <think>.
                self._seen_reasoning_field = True
                if self._splitter is not None:
                    self._splitter.inside = False
            self._field_block_open = self._options.reasoning_blocks_as_parts
            self._text(Kind.REASONING, reasoning)
        if content:
            if self._field_block_open and self._open is not None and self._open.kind is Kind.REASONING:
                self._open.ended = True  # the reasoning field's block is over once content comes
            self._field_block_open = False
            if self._splitter is None:
                self._text(Kind.MESSAGE, content)
            else:
                for is_reasoning, text in self._splitter.feed(content):
                    if text:
                        self._text(Kind.REASONING if is_reasoning else Kind.MESSAGE, text)
                    elif self._open is not None and self._open.kind is Kind.REASONING:
                        self._open.ended = True  # end of a <think> block; closed when output moves on
        if delta.tool_calls:
            self._flush_splitter()
            for fragment in delta.tool_calls:
                self._tool_fragment(fragment)
        if choice.finish_reason is not None:
            self._finish_reason = choice.finish_reason

    def _flush_splitter(self) -> None:
        if self._splitter is not None:
            for is_reasoning, text in self._splitter.flush():
                self._text(Kind.REASONING if is_reasoning else Kind.MESSAGE, text)

    def _text(self, kind: Kind, text: str) -> None:
        open_item = self._open
        if open_item is None or open_item.kind is not kind or open_item.ended:
            if self._options.trim_whitespace:
                text = text.lstrip()
                if not text:
                    return  # whitespace never opens an item
            if open_item is not None and open_item.kind is kind and self._options.reasoning_blocks_as_parts:
                self._next_reasoning_part(open_item)
            else:
                self._switch()
                open_item = self._open_text_item(kind)
        if not self._options.trim_whitespace:
            open_item.parts.append(text)
            self._emit_text_delta(open_item, text)
            return
        body = text.rstrip()
        if not body:
            open_item.pending_ws += text
            return
        tail = text[len(body) :]
        if open_item.pending_ws:
            body = open_item.pending_ws + body
        open_item.pending_ws = tail
        open_item.parts.append(body)
        self._emit_text_delta(open_item, body)

    def _tool_fragment(self, fragment: chat.ToolCallDelta) -> None:
        index = fragment.index
        fn = fragment.function
        name = fn.name if fn is not None else None
        args = fn.arguments if fn is not None else None
        open_item = self._open
        if open_item is not None and open_item.kind is Kind.CALL and open_item.call_index == index:
            if args:
                self._call_arguments(open_item, args)
            return
        if index in self._closed_calls:
            raise _UpstreamProtocolError(
                f"the upstream sent more of tool call {index} after a later output had started"
            )
        held = self._held_call
        if held is None or held[0] != index:
            self._switch()
            held = (index, _HeldCall(fragment.id))
            self._held_call = held
        call = held[1]
        if call.call_id is None and fragment.id:
            call.call_id = fragment.id
        if args:
            call.parts.append(args)
        if not name:
            return  # wait for the name
        self._held_call = None
        self._switch()  # text may have opened a message while the call waited for its name
        target = self._tools.get(name)
        call_id = call.call_id or self._new_id("call")
        namespace: Any = target.namespace if target is not None and target.namespace else msgspec.UNSET
        item: r.OutputItem
        if target is not None and target.kind == "custom":
            item = r.CustomToolCallItem(id=self._new_id("ctc"), status="in_progress", call_id=call_id,
                                        name=target.name, namespace=namespace)
        else:
            item = r.FunctionCallItem(id=self._new_id("fc"), status="in_progress", call_id=call_id,
                                      name=target.name if target is not None else name, namespace=namespace)
        open_item = self._open_item(Kind.CALL, item, call_index=index)
        if call.parts:
            self._call_arguments(open_item, "".join(call.parts))

    def _call_arguments(self, open_item: _OpenItem, args: str) -> None:
        open_item.parts.append(args)
        self._skip_tokens(args)
        item_id, index = open_item.item.id, open_item.index
        if open_item.decoder is None:
            self._emit(r.FunctionCallArgumentsDelta(item_id=item_id, output_index=index, delta=args))
            return
        text = open_item.decoder.feed(args)
        if text:
            self._emit(r.CustomToolCallInputDelta(item_id=item_id, output_index=index, delta=text))

    # --- opening and closing items -------------------------------------------------------------

    def _switch(self) -> None:
        """Another item follows the open one. A call closing before the end starts the hold."""
        open_item = self._open
        if open_item is not None and open_item.kind is Kind.CALL and self._held is None:
            self._held = []
            self._visible = len(self._output)
            self._hold_start = open_item
            self._close_open("completed")  # its done events: the hold's first events
            return
        self._close_open("completed")

    def _open_item(self, kind: Kind, item: r.OutputItem, call_index: int = -1) -> _OpenItem:
        index = len(self._output)
        self._output.append(item)
        open_item = _OpenItem(kind, item, index, call_index)
        self._open = open_item
        self._emit(r.OutputItemAdded(output_index=index, item=_added_snapshot(item)))
        return open_item

    def _open_text_item(self, kind: Kind) -> _OpenItem:
        if kind is Kind.MESSAGE:
            item: r.OutputItem = r.OutputMessage(id=self._new_id("msg"), status="in_progress", content=[])
            open_item = self._open_item(kind, item)
            self._emit(
                r.ContentPartAdded(item_id=item.id, output_index=open_item.index, content_index=0, part=r.OutputText(text=""))
            )
            return open_item
        raw = self._options.reasoning_presentation == "raw"
        item = r.ReasoningItem(id=self._new_id("rs"), status="in_progress", summary=[], content=[] if raw else msgspec.UNSET)
        open_item = self._open_item(kind, item)
        if raw:
            self._emit(
                r.ContentPartAdded(
                    item_id=item.id, output_index=open_item.index, content_index=0, part=r.ReasoningText(text="")
                )
            )
        else:
            self._emit(
                r.ReasoningSummaryPartAdded(
                    item_id=item.id, output_index=open_item.index, summary_index=0, part=r.SummaryText(text="")
                )
            )
        return open_item

    def _next_reasoning_part(self, open_item: _OpenItem) -> None:
        """The open reasoning item's block ended and another follows: close its part, open the next."""
        item_id, index, done = open_item.item.id, open_item.index, len(open_item.done_parts)
        text = "".join(open_item.parts)
        open_item.done_parts.append(text)
        open_item.parts, open_item.pending_ws, open_item.ended = [], "", False
        if self._options.reasoning_presentation == "raw":
            self._emit(r.ReasoningTextDone(item_id=item_id, output_index=index, content_index=done, text=text))
            self._emit(r.ContentPartDone(item_id=item_id, output_index=index, content_index=done,
                                         part=r.ReasoningText(text=text)))
            self._emit(r.ContentPartAdded(item_id=item_id, output_index=index, content_index=done + 1,
                                          part=r.ReasoningText(text="")))
        else:
            self._emit(r.ReasoningSummaryTextDone(item_id=item_id, output_index=index, summary_index=done, text=text))
            self._emit(r.ReasoningSummaryPartDone(item_id=item_id, output_index=index, summary_index=done,
                                                  part=r.SummaryText(text=text)))
            self._emit(r.ReasoningSummaryPartAdded(item_id=item_id, output_index=index, summary_index=done + 1,
                                                   part=r.SummaryText(text="")))

    def _emit_text_delta(self, open_item: _OpenItem, text: str) -> None:
        item_id, index = open_item.item.id, open_item.index
        if open_item.kind is Kind.MESSAGE:
            logprobs: list[Any] = []
            if self._aligner is not None:
                logprobs = self._aligner.take(text)
                open_item.logprobs += logprobs
            self._emit(
                r.OutputTextDelta(item_id=item_id, output_index=index, content_index=0, delta=text, logprobs=logprobs)
            )
            return
        self._skip_tokens(text)
        if self._options.reasoning_presentation == "raw":
            self._emit(r.ReasoningTextDelta(item_id=item_id, output_index=index, content_index=len(open_item.done_parts),
                                            delta=text))
        else:
            self._emit(r.ReasoningSummaryTextDelta(item_id=item_id, output_index=index,
                                                   summary_index=len(open_item.done_parts), delta=text))

    def _skip_tokens(self, text: str) -> None:
        """Text that is not message text: the tokens that wrote it get no client logprobs."""
        if self._aligner is not None:
            self._aligner.skip(text)

    def _close_open(self, status: str) -> None:
        open_item = self._open
        if open_item is None:
            return
        self._open = None
        item, index = open_item.item, open_item.index
        text = "".join(open_item.parts)
        item.status = status
        if isinstance(item, r.OutputMessage):
            part = r.OutputText(text=text, logprobs=open_item.logprobs)
            item.content = [part]
            self._emit(
                r.OutputTextDone(item_id=item.id, output_index=index, content_index=0, text=text,
                                 logprobs=open_item.logprobs)
            )
            self._emit(r.ContentPartDone(item_id=item.id, output_index=index, content_index=0, part=part))
        elif isinstance(item, r.ReasoningItem):
            last = len(open_item.done_parts)
            if self._options.reasoning_presentation == "raw":
                raw_part = r.ReasoningText(text=text)
                item.content = [*(r.ReasoningText(text=t) for t in open_item.done_parts), raw_part]
                self._emit(r.ReasoningTextDone(item_id=item.id, output_index=index, content_index=last, text=text))
                self._emit(r.ContentPartDone(item_id=item.id, output_index=index, content_index=last, part=raw_part))
            else:
                summary = r.SummaryText(text=text)
                item.summary = [*(r.SummaryText(text=t) for t in open_item.done_parts), summary]
                self._emit(r.ReasoningSummaryTextDone(item_id=item.id, output_index=index, summary_index=last, text=text))
                self._emit(r.ReasoningSummaryPartDone(item_id=item.id, output_index=index, summary_index=last,
                                                      part=summary))
        elif isinstance(item, r.CustomToolCallItem):
            assert open_item.decoder is not None
            tail, item.input = open_item.decoder.finish()
            self._closed_calls.add(open_item.call_index)
            if tail:
                self._emit(r.CustomToolCallInputDelta(item_id=item.id, output_index=index, delta=tail))
            self._emit(r.CustomToolCallInputDone(item_id=item.id, output_index=index, input=item.input))
        else:
            item.arguments = text
            self._closed_calls.add(open_item.call_index)
            self._emit(r.FunctionCallArgumentsDone(item_id=item.id, output_index=index, name=item.name, arguments=text))
        self._emit(r.OutputItemDone(output_index=index, item=item))

    # --- plumbing ------------------------------------------------------------------------------

    def _emit(self, event: r.StreamEvent) -> None:
        (self._events if self._held is None else self._held).append(event)

    def _take(self) -> list[r.StreamEvent]:
        """The events ready to leave the machine, numbered in the order they leave it. Every
        transition ends here but the fast path's (which changes no state it depends on): what it
        found is looked for again."""
        self._fast_item = None
        events, self._events = self._events, []
        seq = self._seq
        for event in events:
            event.sequence_number = seq
            seq += 1
        self._seq = seq
        return events

    def _response_usage(self) -> r.ResponseUsage:
        usage = self._usage or chat.Usage()
        cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else None
        reasoning = usage.completion_tokens_details.reasoning_tokens if usage.completion_tokens_details else None
        return r.ResponseUsage(
            input_tokens=usage.prompt_tokens,
            input_tokens_details=r.InputTokensDetails(cached_tokens=cached or 0),
            output_tokens=usage.completion_tokens,
            output_tokens_details=r.OutputTokensDetails(reasoning_tokens=reasoning or 0),
            total_tokens=usage.total_tokens or usage.prompt_tokens + usage.completion_tokens,
        )


class _UpstreamProtocolError(Exception):
    pass


def _leave_unfinished(open_item: _OpenItem) -> None:
    """A call of an unfinished response: ``incomplete``, holding what the client saw of it."""
    item = open_item.item
    item.status = "incomplete"
    if isinstance(item, r.CustomToolCallItem):
        assert open_item.decoder is not None
        item.input = open_item.decoder.streamed
    elif isinstance(item, r.FunctionCallItem):
        item.arguments = "".join(open_item.parts)


def _added_snapshot(item: r.OutputItem) -> r.OutputItem:
    """The item as ``output_item.added`` shows it: in progress, nothing streamed yet.

    A fresh Struct, because the open item is mutated as it streams and events may be encoded
    after this call returns.
    """
    if isinstance(item, r.OutputMessage):
        return r.OutputMessage(id=item.id, status="in_progress", content=[])
    if isinstance(item, r.ReasoningItem):
        content = [] if item.content is not msgspec.UNSET else msgspec.UNSET
        return r.ReasoningItem(id=item.id, status="in_progress", summary=[], content=content)
    if isinstance(item, r.CustomToolCallItem):
        return r.CustomToolCallItem(id=item.id, status="in_progress", call_id=item.call_id, name=item.name,
                                    namespace=item.namespace)
    return r.FunctionCallItem(id=item.id, status="in_progress", call_id=item.call_id, name=item.name, arguments="",
                              namespace=item.namespace)


def chunk_from_completion(completion: chat.ChatCompletion) -> chat.ChatChunk:
    """A non-streaming completion as the one chunk that carries all of it."""
    choices = []
    for choice in completion.choices:
        message = choice.message
        tool_calls = None
        if message.tool_calls:
            tool_calls = [
                chat.ToolCallDelta(
                    index=i,
                    id=call.id,
                    type=call.type,
                    function=chat.FunctionDelta(
                        name=call.function.name if call.function else None,
                        arguments=call.function.arguments if call.function else None,
                    ),
                )
                for i, call in enumerate(message.tool_calls)
            ]
        delta = chat.Delta(
            role=message.role,
            content=message.content,
            reasoning=message.reasoning,
            reasoning_content=message.reasoning_content,
            tool_calls=tool_calls,
        )
        choices.append(
            chat.ChunkChoice(
                index=choice.index,
                delta=delta,
                finish_reason=choice.finish_reason,
                logprobs=choice.logprobs,
                token_ids=choice.token_ids,
            )
        )
    return chat.ChatChunk(
        choices=choices,
        usage=completion.usage,
        prompt_token_ids=completion.prompt_token_ids,
        error=completion.error,
    )
