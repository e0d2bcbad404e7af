"""Sans-IO reader of a Server-Sent Events body: feed bytes, get each event's ``data`` payload.

vLLM writes ``data: <json>\\n\\n`` per chunk and ``data: [DONE]`` at the end; comment lines
(``: ping``) and other fields are skipped. Lines may be split anywhere across network reads and
end in ``\\n`` or ``\\r\\n``; an event's several ``data:`` lines are joined with ``\\n``.
"""

from __future__ import annotations

DONE = b"[DONE]"


class SSEDecoder:
    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, data: bytes) -> list[bytes]:
        buffer = self._buffer + data if self._buffer else data
        payloads: list[bytes] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if not line:  # blank line: the event is complete
                if self._data:
                    payloads.append(self._data[0] if len(self._data) == 1 else b"\n".join(self._data))
                    self._data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                self._data.append(value[1:] if value.startswith(b" ") else value)
            # comments (":") and other fields (event:, id:, retry:) carry nothing we use
        self._buffer = buffer[start:]
        return payloads

    def close(self) -> list[bytes]:
        """End of body: an event not followed by a blank line still counts (lenient servers)."""
        payloads = self.feed(b"\n\n") if self._buffer or self._data else []
        self._buffer = b""
        return payloads
