"""Sans-IO reader of a Server-Sent Events body: feed bytes, get each event's ``data`` payload.

vLLM writes ``data: <json>\\n\\n`` per chunk and ``data: [DONE]`` at the end. The fast path splits
the buffer on what separates two such events (``\\n\\ndata: ``), which leaves the payloads
themselves, all in C (bytes.split, and one newline count to prove the shape); anything else —
comment lines (``: ping``), other fields (``event:``, ``id:``), several ``data:`` lines (joined
with ``\\n``), ``data:`` without its space, ``\\r\\n`` line ends — goes through the general parser.
Events may be split anywhere across network reads.
"""

from __future__ import annotations

DONE = b"[DONE]"


class SSEEventTooLarge(Exception):
    """An event longer than the decoder's limit has not ended yet."""


class SSEDecoder:
    """``max_event_bytes`` bounds what is held of an event that has not ended; bytes already held
    are never searched again (a line that never ends costs its length once, not once per read)."""

    __slots__ = ("_pending", "_held_cr", "_limit")

    def __init__(self, max_event_bytes: int = 4 * 1024 * 1024) -> None:
        self._pending = bytearray()  # the start of an event whose blank line has not arrived yet
        self._held_cr = False  # the last byte was a CR: it may be the first half of a CRLF
        self._limit = max_event_bytes

    def feed(self, data: bytes) -> list[bytes]:
        if self._held_cr:
            data = b"\r" + data
            self._held_cr = False
        if b"\r" in data:  # CRLF and lone CR end lines too
            if data.endswith(b"\r"):
                data, self._held_cr = data[:-1], True
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        pending = self._pending
        if pending:
            # only the new bytes are searched (and the one blank line that may straddle old and new)
            if b"\n\n" not in data and not (pending[-1] == 10 and data[:1] == b"\n"):
                pending += data
                if len(pending) > self._limit:
                    raise SSEEventTooLarge(len(pending))
                return []
            buffer = bytes(pending) + data
            pending.clear()
        else:
            buffer = data
        if buffer.startswith(b"data: "):
            payloads = self._fast(buffer)
            if payloads is not None:
                return payloads
        return self._general(buffer)

    def _fast(self, buffer: bytes) -> "list[bytes] | None":
        """vLLM's shape: ``data: <one line>`` events only. One split in C on the separator between
        two such events gives the payloads themselves; a newline count over the whole proves that
        none holds another line. None: not that shape, for the general parser."""
        payloads = buffer.split(b"\n\ndata: ")
        last = payloads.pop()  # the last event: whole (``...\n\n`` and maybe more), or not ended
        if buffer.count(b"\n", 0, len(buffer) - len(last)) != 2 * len(payloads):
            return None  # an event of several lines, a comment, an empty event: the general case
        if payloads:
            payloads[0] = payloads[0][6:]
            last_event = b"data: " + last
        else:
            last_event = buffer
        end = last_event.find(b"\n\n")
        if end < 0 or b"\n" in last_event[:end]:
            return payloads + self._general(last_event)  # not ended yet, or of several lines
        payloads.append(last_event[6:end])
        rest = last_event[end + 2:]
        return payloads + self._general(rest) if rest else payloads

    def _general(self, buffer: bytes) -> list[bytes]:
        """Any SSE: split on blank lines; the part after the last one is held for the next read."""
        pending = self._pending
        blocks = buffer.split(b"\n\n")
        tail = blocks.pop()  # after the last blank line: not complete yet
        if tail:
            if len(tail) > self._limit:
                raise SSEEventTooLarge(len(tail))
            pending += tail
        payloads: list[bytes] = []
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:
                payloads.append(block[6:])  # vLLM's shape, nearly every event
            elif block:
                payload = _parse_event(block)
                if payload is not None:
                    payloads.append(payload)
        return payloads

    def close(self) -> list[bytes]:
        """End of body: an event not followed by a blank line still counts (lenient servers)."""
        if not self._pending and not self._held_cr:
            return []
        return self.feed(b"\n\n")


def _parse_event(block: bytes) -> bytes | None:
    """The general case: an event's lines, its ``data`` joined; None when it has no data."""
    data: list[bytes] = []
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            value = line[5:]
            data.append(value[1:] if value.startswith(b" ") else value)
        # comments (":") and other fields (event:, id:, retry:) carry nothing we use
    if not data:
        return None
    return data[0] if len(data) == 1 else b"\n".join(data)
