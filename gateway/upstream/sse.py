"""Sans-IO reader of a Server-Sent Events body: feed bytes, get each event's ``data`` payload.

vLLM writes ``data: <json>\\n\\n`` per chunk and ``data: [DONE]`` at the end. The fast path splits
the buffer on the blank lines that end events and takes ``data: `` off a one-line event, all in C
(bytes.split); anything else — comment lines (``: ping``), other fields (``event:``, ``id:``),
several ``data:`` lines (joined with ``\\n``), ``data:`` without its space, ``\\r\\n`` line ends —
goes through the general parser. Events may be split anywhere across network reads.
"""

from __future__ import annotations

DONE = b"[DONE]"


class SSEDecoder:
    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""  # the start of an event whose blank line has not arrived yet

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data if self._buffer else data
        if b"\r" in buffer:
            buffer, held_cr = _normalize_line_ends(buffer)
        else:
            held_cr = b""
        blocks = buffer.split(b"\n\n")
        self._buffer = blocks.pop() + held_cr  # after the last blank line: not complete yet
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
        tail, self._buffer = self._buffer, b""
        if not tail:
            return []
        return self.feed(tail + b"\n\n")


def _normalize_line_ends(buffer: bytes) -> tuple[bytes, bytes]:
    """CRLF and lone CR end lines too. A CR at the very end may be the first half of a CRLF whose
    LF comes with the next read: it is held back."""
    held = b""
    if buffer.endswith(b"\r"):
        buffer, held = buffer[:-1], b"\r"
    return buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n"), held


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
