"""The upstream client's connection protocol and body reader: aiohttp's, minus a call chain per chunk.

vLLM sends each SSE event as an HTTP chunk of its own. aiohttp's StreamReader, for every chunk it
hands out, asks its protocol to resume reading, paused or not; each ask runs the HTTP parser on
``b""`` and the transport's ``resume_reading``: five Python calls per token for nothing. Here the
ask goes through only when reading is paused, which is the only time it does anything (aiohttp
pauses past its high-water mark and resumes below its low-water mark, as before). Measured: 0.35
µs of the gateway's CPU per token at c=64 (gateway/bench/README.md).

aiohttp has no public way to choose a connector's protocol: ``lean_connector`` replaces its
factory when it is the one aiohttp builds (``functools.partial(ResponseHandler, loop=...)``) and
leaves it alone otherwise, so another aiohttp only loses the saving (a test notices).

The body reader (``lean_body``): aiohttp's StreamReader hands a read out chunk by chunk, two Python
calls per HTTP chunk (and so per token: vLLM writes each event as a chunk of its own), and records
where each HTTP chunk ended, for ``readchunk()``, which the gateway never calls. ``LeanStreamReader``
takes the same fields and gives ``readany()`` the whole buffer at once and ``read(n)`` its first n
bytes at once; everything else (feeding, pausing past the high-water mark, errors, EOF) stays aiohttp's. Measured alone (a
256-chunk burst read by readany): 0.72 -> 0.48 µs per chunk.
"""

from __future__ import annotations

import functools
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler
from aiohttp.streams import StreamReader


class LeanResponseHandler(ResponseHandler):
    def resume_reading(self, resume_parser: bool = True) -> None:
        if self._reading_paused or getattr(self, "_buffer_paused", False):
            super().resume_reading(resume_parser)

    def data_received(self, data: bytes) -> None:
        """Every response's body is read by LeanStreamReader from its first byte. aiohttp's parser
        makes the reader at the response's head and, in the same call, feeds it the rest of the
        read, chunk by chunk: a read that holds a head and the start of its body (a fast vLLM's
        first read, or a whole short answer) is parsed in two, the head first, so that the reader
        is lean before its first chunk. Splitting a read anywhere is safe: the parser is
        incremental."""
        payload = self._payload
        if not (payload is None or payload.is_eof()):
            super().data_received(data)  # inside a body: the common case, one check
            return
        end = data.find(b"\r\n\r\n") + 4  # between responses: a head is next
        if 4 <= end < len(data):
            super().data_received(data[:end])
            if self.exception() is not None:
                return  # the head did not parse: the connection is closed, its caller told
            _make_lean(self._payload)
            data = data[end:]
        super().data_received(data)
        _make_lean(self._payload)


def lean_connector(**kwargs: Any) -> aiohttp.TCPConnector:
    connector = aiohttp.TCPConnector(**kwargs)
    factory = getattr(connector, "_factory", None)
    if isinstance(factory, functools.partial) and factory.func is ResponseHandler:
        connector._factory = functools.partial(LeanResponseHandler, *factory.args, **factory.keywords)
    return connector


class LeanStreamReader(StreamReader):
    """aiohttp's StreamReader, with ``readany()`` in one step and no record of HTTP chunk ends (only
    ``readchunk()`` reads them). Adds no field: an open response's reader becomes one in place."""

    __slots__ = ()

    def begin_http_chunk_receiving(self) -> None:
        pass

    def end_http_chunk_receiving(self) -> None:
        pass

    async def readany(self) -> bytes:
        if self._exception is not None:
            raise self._exception
        while not self._buffer and not self._eof:
            await self._wait("readany")
        self._timer.assert_timeout()  # as aiohttp's reader does, at EOF too
        buffer = self._buffer
        if not buffer:
            return b""  # EOF
        data = buffer.popleft() if len(buffer) == 1 else b"".join(buffer)
        buffer.clear()
        if self._buffer_offset:  # a read(n) took the head of the first piece
            data = data[self._buffer_offset:]
            self._buffer_offset = 0
        size = len(data)
        self._size -= size
        self._cursor += size
        self._protocol.resume_reading()  # the buffer is empty: below the low-water mark
        return data

    async def read(self, n: int = -1) -> bytes:
        """At most ``n`` bytes: the pieces they span, joined (aiohttp's takes each through two
        calls and its chunk and water-mark checks, ~1.5 µs per HTTP chunk, and the gateway reads so
        until a response's first output: a dozen chunks, or a whole short answer). What is left
        of the last piece stays first in the buffer, read from ``_buffer_offset`` on. ``n`` <= 0,
        and an error to raise: aiohttp's."""
        if n <= 0 or self._exception is not None:
            return await super().read(n)
        if _RAISE_LIMITS is not None:
            _RAISE_LIMITS(self, n)
        while not self._buffer and not self._eof:
            await self._wait("read")
        self._timer.assert_timeout()
        if self._size <= n:
            return await self.readany()  # all of it (or EOF): nothing to wait for, one step
        buffer = self._buffer
        pieces = []
        need, offset = n, self._buffer_offset
        while True:  # the buffer holds more than n bytes: it never runs out here
            piece = buffer[0]
            available = len(piece) - offset
            if available > need:
                pieces.append(piece[offset:offset + need])
                offset += need
                break
            pieces.append(piece[offset:] if offset else piece)
            buffer.popleft()
            offset = 0
            need -= available
            if not need:
                break
        self._buffer_offset = offset
        self._size -= n
        self._cursor += n
        if self._size < self._low_water:
            self._protocol.resume_reading()  # the lean protocol's: does something only when paused
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)


# The fields LeanStreamReader reads and writes: an aiohttp without one of them keeps its own reader.
_FIELDS = {"_buffer", "_buffer_offset", "_size", "_cursor", "_eof", "_exception", "_timer", "_protocol", "_low_water"}
# aiohttp's read(n) raises its buffer's limits to n first (since 3.12); an older one has no such step.
_RAISE_LIMITS = getattr(StreamReader, "set_read_chunk_size", None)
_LEAN_FITS = _FIELDS <= set(getattr(StreamReader, "__slots__", ()))


def _make_lean(reader: Any) -> None:
    if _LEAN_FITS and type(reader) is StreamReader:
        reader.__class__ = LeanStreamReader


def lean_body(response: aiohttp.ClientResponse) -> None:
    """Reads ``response``'s body with LeanStreamReader, when it is aiohttp's plain StreamReader
    (LeanResponseHandler has made it one already; this covers a connection of another protocol,
    from its next read on)."""
    _make_lean(response.content)
