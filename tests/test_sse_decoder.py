"""The upstream SSE reader (gateway/upstream/sse.py) against the WHATWG event-stream rules written
out plainly: whatever the events (vLLM's one-line ``data:``, several data lines, comments, other
fields, ``data:`` without a space, empty events, CRLF or CR line ends) and wherever the network
splits them, the payloads are those of the plain reading, in order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.upstream.sse import SSEDecoder, SSEEventTooLarge


def reference(body: bytes) -> list[bytes]:
    """The spec's reading, line by line: ``data`` lines of an event joined with LF, an event ends
    at a blank line, events without data dispatch nothing; a last event not ended still counts
    (the decoder's ``close``, lenient as vLLM's clients are)."""
    text = body.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    out: list[bytes] = []
    data: list[bytes] = []
    for line in text.split(b"\n"):
        if not line:
            if data:
                out.append(b"\n".join(data))
            data = []
        elif line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        out.append(b"\n".join(data))
    return out


def decode(body: bytes, cuts: list[int]) -> list[bytes]:
    decoder = SSEDecoder()
    out: list[bytes] = []
    start = 0
    for cut in sorted(set(cuts)) + [len(body)]:
        out += decoder.feed(body[start:cut])
        start = cut
    return out + decoder.close()


payload = st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b)
vllm_event = payload.map(lambda p: b"data: " + p + b"\n\n")
other_event = st.one_of(
    st.lists(payload, min_size=1, max_size=3).map(lambda ps: b"".join(b"data: " + p + b"\n" for p in ps) + b"\n"),
    payload.map(lambda p: b": " + p + b"\n\n"),  # a comment: no event
    payload.map(lambda p: b"data:" + p + b"\n\n"),  # no space after the colon
    payload.map(lambda p: b"event: x\nid: 1\ndata: " + p + b"\n\n"),
    st.just(b"\n\n"),  # an empty event
    payload.map(lambda p: b"data: " + p + b"\r\n\r\n"),
    payload.map(lambda p: b"data: " + p + b"\r\r"),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(vllm_event, vllm_event, vllm_event, other_event), max_size=12), st.data())
def test_payloads_are_the_plain_readings_wherever_the_reads_split(events: list[bytes], data: st.DataObject) -> None:
    body = b"".join(events)
    cuts = data.draw(st.lists(st.integers(0, len(body)), max_size=6))
    assert decode(body, cuts) == reference(body)


def test_a_burst_of_vllm_events_in_one_read() -> None:
    body = b"".join(b'data: {"n":%d}\n\n' % i for i in range(300)) + b"data: [DONE]\n\n"
    assert SSEDecoder().feed(body) == [b'{"n":%d}' % i for i in range(300)] + [b"[DONE]"]


def test_an_event_longer_than_the_limit_is_refused_on_the_fast_path_too() -> None:
    decoder = SSEDecoder(max_event_bytes=100)
    try:
        decoder.feed(b"data: a\n\ndata: " + b"x" * 200)
    except SSEEventTooLarge:
        return
    raise AssertionError("a 200-byte event that has not ended was held past a 100-byte limit")
