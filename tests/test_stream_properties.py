"""Property tests of the pure core: however vLLM's output is cut into chunks (down to one character,
tags cut anywhere, a chunk carrying reasoning, content and tool calls at once), the final Response
is the same, it matches an independent reference, and every event stream satisfies the contract.
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.schema import chat
from gateway.schema import responses as r
from gateway.server.sse import encode_events
from gateway.translate.stream import ResponseStateMachine, StreamOptions, chunk_from_completion
from gateway.translate.think import ThinkSplitter
from tests.contract import check_stream, output_texts, parse_sse

# --- generating model outputs ---------------------------------------------------------------------

_alphabet = st.sampled_from(list("ab <>/thinké\n") + ["😀", "  ", "\n\n"])
_text = st.lists(_alphabet, max_size=12).map("".join)
# Content mixing free text with whole tags and tag fragments, so that tags land anywhere.
_content = st.lists(st.one_of(_text, st.sampled_from(["<think>", "</think>", "<think>\n", "\n</think>\n\n", "<th"])),
                    max_size=8).map("".join)
_arguments = st.one_of(
    st.dictionaries(st.sampled_from(["city", "n", "q"]), st.one_of(st.integers(), _text), max_size=3).map(
        lambda d: msgspec.json.encode(d).decode()),
    _text,
)
_tool_calls = st.lists(st.tuples(st.sampled_from(["get_weather", "search", "f"]), _arguments), max_size=3)


class Output:
    """One generation: reasoning via the field, content (maybe with tags), then tool calls."""

    def __init__(self, reasoning: str, content: str, calls: list[tuple[str, str]], finish: str) -> None:
        self.reasoning, self.content, self.calls, self.finish = reasoning, content, calls, finish


outputs = st.builds(Output, st.one_of(st.just(""), _text), _content, _tool_calls,
                    st.sampled_from(["stop", "length", "tool_calls"]))


def cut(text: str, points: list[int]) -> list[str]:
    points = sorted({p % (len(text) + 1) for p in points} | {0, len(text)})
    return [text[a:b] for a, b in zip(points, points[1:]) if b > a]


_FIELD_ORDER = {"reasoning": 0, "content": 1, "tool_calls": 2}


def chunk_stream(output: Output, data: st.DataObject, reasoning_field: str) -> list[chat.ChatChunk]:
    """vLLM-shaped deltas for ``output``, cut and (order-preservingly) merged at random."""
    draw = lambda strategy: data.draw(strategy)  # noqa: E731
    points = st.lists(st.integers(min_value=0, max_value=200), max_size=12)
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"reasoning": piece} for piece in cut(output.reasoning, draw(points))]
    deltas += [{"content": piece} for piece in cut(output.content, draw(points))]
    for index, (name, arguments) in enumerate(output.calls):
        pieces = cut(arguments, draw(points))
        first: dict[str, Any] = {"index": index, "id": f"call-{index}", "type": "function", "function": {"name": name}}
        if pieces and draw(st.booleans()):  # llama.cpp sends the name with the first argument piece
            first["function"]["arguments"] = pieces.pop(0)
        deltas.append({"tool_calls": [first]})
        deltas += [{"tool_calls": [{"index": index, "function": {"arguments": p}}]} for p in pieces]
    merged: list[dict[str, Any]] = []
    for delta in deltas:
        last = merged[-1] if merged else None
        if last is not None and draw(st.booleans()) and _can_merge(last, delta):
            if "tool_calls" in delta and "tool_calls" in last:
                last["tool_calls"] = last["tool_calls"] + delta["tool_calls"]
            else:
                last.update(delta)
        else:
            merged.append(dict(delta))
    chunks = []
    for delta in merged:
        if "reasoning" in delta:
            delta[reasoning_field] = delta.pop("reasoning")
        chunks.append(msgspec.convert({"choices": [{"index": 0, "delta": delta}]}, chat.ChatChunk))
    chunks.append(msgspec.convert({"choices": [{"index": 0, "delta": {}, "finish_reason": output.finish}]},
                                  chat.ChatChunk))
    chunks.append(msgspec.convert({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9,
                                                            "total_tokens": 12}}, chat.ChatChunk))
    return chunks


def _can_merge(last: dict[str, Any], delta: dict[str, Any]) -> bool:
    # A chunk is read reasoning -> content -> tool_calls: merge only what keeps the order.
    last_fields = [k for k in last if k in _FIELD_ORDER]
    new_fields = [k for k in delta if k in _FIELD_ORDER]
    if not last_fields or not new_fields or "role" in last:
        return False
    new = _FIELD_ORDER[new_fields[0]]
    if new_fields[0] == "tool_calls" and "tool_calls" in last:
        return True
    return all(_FIELD_ORDER[k] < new for k in last_fields)


# --- running the machine --------------------------------------------------------------------------


def skeleton() -> r.Response:
    return r.Response(id="resp_test", created_at=0, status="in_progress", model="m")


def run(chunks: list[chat.ChatChunk], options: StreamOptions) -> tuple[list[dict], dict]:
    counter = itertools.count()
    machine = ResponseStateMachine(skeleton(), options, new_id=lambda prefix: f"{prefix}_{next(counter)}",
                                   clock=lambda: 1)
    events = machine.start()
    for chunk in chunks:
        events += machine.feed(chunk)
    events += machine.finish()
    decoded = parse_sse(encode_events(events))  # exactly what a client reads
    return decoded, check_stream(decoded)


# --- an independent reference ---------------------------------------------------------------------

_TAG = re.compile(r"(<think>|</think>)")


def reference_items(output: Output, options: StreamOptions) -> list[tuple[str, str]]:
    """The output items, computed on the whole text at once with a regex, not incrementally."""
    runs: list[tuple[str, str, bool]] = []  # (kind, text, starts after a </think> boundary)
    if output.reasoning:
        runs.append(("reasoning", output.reasoning, False))
    inside = options.reasoning_starts_open and not output.reasoning
    boundary = False
    content = output.content
    if inside and content.lstrip().startswith("<think>"):  # redundant when already inside
        content = content.lstrip()[len("<think>"):]
    if not options.parse_think_tags:
        runs.append(("message", output.content, False))
    else:
        for token in _TAG.split(content):
            if token == "<think>" and not inside:
                inside = True
            elif token == "</think>":
                if inside:
                    inside, boundary = False, True
            elif token:
                runs.append(("reasoning" if inside else "message", token, boundary))
                boundary = False
    items: list[list[Any]] = []
    pending_boundary = False
    for kind, text, after_boundary in runs:
        pending_boundary = pending_boundary or after_boundary
        last = items[-1] if items else None
        if last is not None and last[0] == kind and not (kind == "reasoning" and pending_boundary):
            last[1] += text  # whitespace inside a block is kept
        elif text.strip():
            items.append([kind, text])
        else:
            continue  # whitespace never opens an item
        pending_boundary = False
    result = [(kind, text.strip()) for kind, text in items]
    result += [("function_call", f"{name}({arguments})") for name, arguments in shown_calls(output)]
    return result


def shown_calls(output: Output) -> list[tuple[str, str]]:
    """An unfinished response (here: cut by length) ends at its first call (stream.py's rule)."""
    return output.calls[:1] if output.finish == "length" else output.calls


# --- the properties -------------------------------------------------------------------------------

_options = st.builds(StreamOptions, parse_think_tags=st.booleans(), reasoning_starts_open=st.booleans(),
                     reasoning_presentation=st.sampled_from(["summary", "raw"]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(output=outputs, options=_options, field_name=st.sampled_from(["reasoning", "reasoning_content"]),
       data=st.data())
def test_any_chunking_gives_the_reference_response(output: Output, options: StreamOptions, field_name: str,
                                                   data: st.DataObject) -> None:
    events, cut_up = same_whole_or_cut_up(output, options, field_name, data)
    assert output_texts(cut_up) == reference_items(output, options)
    expected_status = "incomplete" if output.finish == "length" else "completed"
    assert cut_up["status"] == expected_status
    assert [i.get("call_id") for i in cut_up["output"] if i["type"] == "function_call"] == [
        f"call-{i}" for i in range(len(shown_calls(output)))]
    if output.finish == "length" and output.calls:  # a call of an unfinished response is not done
        assert cut_up["output"][-1]["status"] == "incomplete"
        assert not any(e["type"] == "response.output_item.done" and e["item"]["type"] == "function_call"
                       for e in events)


def same_whole_or_cut_up(output: Output, options: StreamOptions, field_name: str,
                         data: st.DataObject) -> tuple[list[dict], dict]:
    """The events and Response of a drawn chunking, checked equal to those of the one-chunk stream."""
    _, one_chunk = run([one_chunk_of(output, field_name)], options)
    events, cut_up = run(chunk_stream(output, data, field_name), options)
    assert cut_up == one_chunk
    return events, cut_up


# NeMo Gym's conventions (gateway.response_conventions: nemo_gym): untrimmed text, kept stray tags,
# reasoning blocks in a row as summary parts of one item, an empty message for nothing generated.
def one_chunk_of(output: Output, field_name: str) -> chat.ChatChunk:
    """The whole output as one chunk, the reference every chunking is compared with."""
    return msgspec.convert({"choices": [{"index": 0, "delta": {
        field_name: output.reasoning or None, "content": output.content or None,
        "tool_calls": [{"index": i, "id": f"call-{i}", "type": "function",
                        "function": {"name": n, "arguments": a}} for i, (n, a) in enumerate(output.calls)] or None,
    }, "finish_reason": output.finish}], "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}},
        chat.ChatChunk)


_nemo_gym_options = st.builds(StreamOptions, parse_think_tags=st.booleans(), reasoning_starts_open=st.booleans(),
                              reasoning_presentation=st.sampled_from(["summary", "raw"]), trim_whitespace=st.just(False),
                              keep_stray_close_tag=st.just(True), empty_output_message=st.just(True),
                              cut_items_completed=st.just(True), reasoning_blocks_as_parts=st.just(True))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(output=outputs, options=_nemo_gym_options, field_name=st.sampled_from(["reasoning", "reasoning_content"]),
       data=st.data())
def test_nemo_gym_conventions_do_not_depend_on_chunking(output: Output, options: StreamOptions, field_name: str,
                                                        data: st.DataObject) -> None:
    _, cut_up = same_whole_or_cut_up(output, options, field_name, data)
    assert cut_up["output"]  # never output: []
    # Every character of the text that is not a recognised tag is in the output, untrimmed.
    if not options.parse_think_tags:
        assert "".join(t for kind, t in output_texts(cut_up) if kind == "message") == output.content


_any_options = st.builds(StreamOptions, parse_think_tags=st.booleans(), reasoning_starts_open=st.booleans(),
                         reasoning_presentation=st.sampled_from(["summary", "raw"]), trim_whitespace=st.booleans(),
                         keep_stray_close_tag=st.booleans(), empty_output_message=st.booleans(),
                         cut_items_completed=st.booleans(), reasoning_blocks_as_parts=st.booleans(),
                         reasoning_field_as_text=st.booleans())


def events_bytes(chunks: list[chat.ChatChunk], options: StreamOptions, fast_path: bool) -> tuple[bytes, Any]:
    counter = itertools.count()
    machine = ResponseStateMachine(skeleton(), options, new_id=lambda prefix: f"{prefix}_{next(counter)}",
                                   clock=lambda: 1, track_tokens=True)
    if not fast_path:  # the shortcut declines every chunk: the general path takes them all
        machine._more_message_text = lambda chunk: None  # type: ignore[method-assign]
    out = [encode_events(machine.start())]
    out += [encode_events(machine.feed(chunk)) for chunk in chunks]
    out.append(encode_events(machine.finish()))
    return b"".join(out), machine.tokens


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(output=outputs, options=_any_options, field_name=st.sampled_from(["reasoning", "reasoning_content"]),
       data=st.data())
def test_the_fast_path_emits_what_the_general_path_emits(output: Output, options: StreamOptions, field_name: str,
                                                         data: st.DataObject) -> None:
    """ResponseStateMachine's shortcut for "more text of the open message" changes no byte of any
    stream, under any options, and counts the same tokens."""
    chunks = chunk_stream(output, data, field_name)
    fast, fast_tokens = events_bytes(chunks, options, True)
    general, general_tokens = events_bytes(chunks, options, False)
    assert fast == general
    assert msgspec.to_builtins(fast_tokens) == msgspec.to_builtins(general_tokens)


@settings(max_examples=200, deadline=None)
@given(output=outputs, options=_options)
def test_non_streaming_is_the_completed_event(output: Output, options: StreamOptions) -> None:
    """A non-streaming completion, run through chunk_from_completion, gives exactly the Response that
    response.completed carries for the same output streamed."""
    completion = msgspec.convert({"choices": [{"index": 0, "message": {
        "role": "assistant", "reasoning": output.reasoning or None, "content": output.content or None,
        "tool_calls": [{"id": f"call-{i}", "type": "function", "function": {"name": n, "arguments": a}}
                       for i, (n, a) in enumerate(output.calls)]},
        "finish_reason": output.finish}], "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}},
        chat.ChatCompletion)
    _, from_completion = run([chunk_from_completion(completion)], options)
    streamed_chunks = [msgspec.convert({"choices": [{"index": 0, "delta": {"reasoning": c}}]}, chat.ChatChunk)
                       for c in output.reasoning] + [
        msgspec.convert({"choices": [{"index": 0, "delta": {"content": c}}]}, chat.ChatChunk) for c in output.content]
    for i, (name, arguments) in enumerate(output.calls):
        streamed_chunks.append(msgspec.convert({"choices": [{"index": 0, "delta": {"tool_calls": [
            {"index": i, "id": f"call-{i}", "function": {"name": name, "arguments": arguments}}]}}]}, chat.ChatChunk))
    streamed_chunks.append(msgspec.convert({"choices": [{"index": 0, "delta": {}, "finish_reason": output.finish}],
                                            "usage": {"prompt_tokens": 3, "completion_tokens": 9,
                                                      "total_tokens": 12}}, chat.ChatChunk))
    _, streamed = run(streamed_chunks, options)
    assert from_completion == streamed


@settings(max_examples=300, deadline=None)
@given(text=_content, points=st.lists(st.integers(min_value=0, max_value=100), max_size=20),
       starts_inside=st.booleans())
def test_splitter_holds_back_only_a_possible_tag(text: str, points: list[int], starts_inside: bool) -> None:
    """Cutting never changes what the splitter yields, and what it holds back could still be a tag."""
    whole = ThinkSplitter(starts_inside)
    expected = whole.feed(text) + whole.flush()
    splitter = ThinkSplitter(starts_inside)
    got: list[tuple[bool, str]] = []
    for piece in cut(text, points):
        got += splitter.feed(piece)
        held = splitter._held
        assert len(held) < len("</think>")
        assert held == "" or "</think>".startswith(held) or "<think>".startswith(held)
    got += splitter.flush()
    assert _normalize(got) == _normalize(expected)


def _normalize(segments: list[tuple[bool, str]]) -> list[tuple[bool, str]]:
    """Join adjacent text of the same kind; keep block-end markers."""
    out: list[tuple[bool, str]] = []
    for kind, text in segments:
        if text and out and out[-1][0] == kind and out[-1][1]:
            out[-1] = (kind, out[-1][1] + text)
        elif text or not out or out[-1] != (False, ""):
            out.append((kind, text))
    return out


def test_machine_emits_text_before_a_tag_is_complete() -> None:
    """Streaming latency: only the undecided suffix is held; "<" alone is held, "a<b" is not."""
    splitter = ThinkSplitter()
    assert splitter.feed("Hello <") == [(False, "Hello ")]
    assert splitter.feed("b") == [(False, "<b")]
    assert splitter.feed("<thi") == []
    assert splitter.feed("nk>x") == [(True, "x")]
    assert splitter.feed("</think>") == [(False, "")]


def test_interleaved_call_fragments_fail_cleanly() -> None:
    """vLLM streams calls one after another; an upstream that goes back to an earlier call is a
    protocol error, answered with error + response.failed, not a corrupted Response."""
    chunks = [
        msgspec.convert({"choices": [{"delta": {"tool_calls": [
            {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{"}}]}}]}, chat.ChatChunk),
        msgspec.convert({"choices": [{"delta": {"tool_calls": [
            {"index": 1, "id": "b", "function": {"name": "g", "arguments": "{}"}}]}}]}, chat.ChatChunk),
        msgspec.convert({"choices": [{"delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": "}"}}]}}]}, chat.ChatChunk),
    ]
    events, final = run(chunks, StreamOptions())
    assert final["status"] == "failed" and final["error"]["code"] == "upstream_protocol_error"


def test_nameless_tool_call_fails_cleanly() -> None:
    chunks = [msgspec.convert({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]},
                                            "finish_reason": "tool_calls"}]}, chat.ChatChunk)]
    _, final = run(chunks, StreamOptions())
    assert final["status"] == "failed" and "without a function name" in final["error"]["message"]


def test_stream_without_finish_reason_fails() -> None:
    chunks = [msgspec.convert({"choices": [{"delta": {"content": "Hi"}}]}, chat.ChatChunk)]
    _, final = run(chunks, StreamOptions())
    assert final["status"] == "failed" and final["error"]["code"] == "upstream_incomplete"
    assert final["output"][0]["status"] == "incomplete"


def test_usage_maps_detail_objects() -> None:
    chunks = [msgspec.convert({"choices": [{"delta": {"content": "x"}, "finish_reason": "stop"}],
                               "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14,
                                         "prompt_tokens_details": {"cached_tokens": 8},
                                         "completion_tokens_details": {"reasoning_tokens": 2}}}, chat.ChatChunk)]
    _, final = run(chunks, StreamOptions())
    assert final["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 8, "cache_write_tokens": 0},
                              "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 2},
                              "total_tokens": 14}




def test_input_before_start_still_begins_with_created() -> None:
    """start() is optional: the first input starts the response, and its events go out with it."""
    machine = ResponseStateMachine(skeleton(), StreamOptions())
    events = machine.feed(msgspec.convert({"choices": [{"delta": {"content": "Hi"}, "finish_reason": "stop"}]},
                                          chat.ChatChunk))
    events += machine.finish()
    final = check_stream(parse_sse(encode_events(events)))
    assert final["status"] == "completed" and events[0].sequence_number == 0
    failed = ResponseStateMachine(skeleton(), StreamOptions())
    check_stream(parse_sse(encode_events(failed.fail("upstream_error", "down"))))


def test_plain_text_takes_the_fast_path() -> None:
    """The shortcut is taken (the byte-for-byte test above would pass without it): once the message
    is open, chunks of plain text go past the general path, under both conventions."""
    for options in (StreamOptions(), StreamOptions(trim_whitespace=False, keep_stray_close_tag=True)):
        machine = ResponseStateMachine(skeleton(), options, new_id=lambda prefix: f"{prefix}_1", clock=lambda: 1)
        general = []
        feed_choice = machine._feed_choice
        machine._feed_choice = lambda choice: general.append(choice) or feed_choice(choice)  # type: ignore[method-assign]
        machine.start()
        words = ["Hello", " world", ",", " how", " are", " you"]
        for word in words:
            machine.feed(msgspec.convert({"choices": [{"index": 0, "delta": {"content": word}}]}, chat.ChatChunk))
        assert len(general) == 1  # the first opened the message; the other five took the shortcut
        machine.feed(msgspec.convert({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                                     chat.ChatChunk))
        assert machine.finish()[-1].response.output[0].content[0].text == "".join(words)
