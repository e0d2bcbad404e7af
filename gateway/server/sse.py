"""Encoding of stream events as Server-Sent Events frames. One reused msgspec encoder; each event
type's ``event: <type>\\ndata: `` prefix is built once."""

from __future__ import annotations

from typing import Iterable

import msgspec

from ..schema.responses import StreamEvent, event_type

_encoder = msgspec.json.Encoder()
_prefixes: dict[type, bytes] = {}


def encode_events(events: Iterable[StreamEvent]) -> bytes:
    """``event: <type>\\ndata: <json>\\n\\n`` for each event, as one buffer (one socket write)."""
    out = bytearray()
    encode_events_into(events, out)
    return bytes(out)


def encode_events_into(events: Iterable[StreamEvent], out: bytearray) -> None:
    """The same, appended to ``out``: the relay gathers a whole upstream read into one write."""
    for event in events:
        cls = type(event)
        prefix = _prefixes.get(cls)
        if prefix is None:
            prefix = _prefixes[cls] = b"event: " + event_type(event).encode() + b"\ndata: "
        out += prefix
        _encoder.encode_into(event, out, -1)  # -1: at the end
        out += b"\n\n"


KEEPALIVE = b": keepalive\n\n"
