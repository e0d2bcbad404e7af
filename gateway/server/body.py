"""Reading a request body within two limits: the bytes on the wire and the bytes once decoded.

aiohttp's own decompression runs inside the protocol's ``data_received``, before any handler, and
goes on after the handler has answered (to drain the body): a 6 KB brotli body of 4 GB of zeros kept
the event loop busy for ten seconds, every client waiting, before authentication could refuse it.
So the server is started with ``auto_decompress=False`` and the body is decoded here, by the handler
that wants it (after authentication), in steps of at most ``_STEP`` output bytes with the event loop
running between steps, and never past ``max_decoded`` bytes.
"""

from __future__ import annotations

import asyncio
import zlib
from typing import Callable, Iterator, Optional

from aiohttp import StreamReader

_STEP = 256 * 1024  # decoded bytes per step: about a millisecond of work, then the loop runs
_READ = 64 * 1024


class BodyError(Exception):
    """The body cannot be read: ``status`` and ``code`` for the OpenAI error object."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def too_large(limit: int, what: str, key: str) -> BodyError:
    return BodyError(413, "request_too_large",
                     f"The request body is too large: at most {limit} bytes {what} (gateway.{key}).")


async def read_body(content: StreamReader, encoding: str, content_length: Optional[int], *,
                    max_bytes: int, max_compressed_bytes: int) -> bytes:
    """The decoded body. ``max_bytes`` bounds the decoded body (and a body sent as it is);
    ``max_compressed_bytes`` bounds a compressed body on the wire."""
    codings = [c.strip().lower() for c in encoding.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    for coding in codings:
        if coding not in _DECODERS:
            raise BodyError(415, "unsupported_content_encoding",
                            f"Content-Encoding {coding!r} is not supported (gzip, deflate, br, zstd are).")
    wire_limit, what, key = ((max_compressed_bytes, "compressed", "max_compressed_request_bytes") if codings
                             else (max_bytes, "", "max_request_bytes"))
    if content_length is not None and content_length > wire_limit:
        raise too_large(wire_limit, what, key)  # refused before a byte of it is read
    raw = bytearray()
    while chunk := await content.readany():
        raw += chunk
        if len(raw) > wire_limit:
            raise too_large(wire_limit, what, key)
    body = bytes(raw)
    for coding in reversed(codings):  # "gzip, br": br was applied last, so it comes off first
        decoded = bytearray()
        try:
            for piece in _DECODERS[coding](body):
                decoded += piece
                if len(decoded) > max_bytes:
                    raise too_large(max_bytes, "once decompressed", "max_request_bytes")
                await asyncio.sleep(0)  # other clients are served between steps
        except BodyError:
            raise
        except Exception as exc:  # zlib.error, brotli.error, zstd.ZstdError: not what it says it is
            raise BodyError(400, "invalid_body", f"The request body is not valid {coding} data ({exc}).") from None
        body = bytes(decoded)
    return body


def _zlib(wbits: int) -> Callable[[bytes], Iterator[bytes]]:
    def decode(data: bytes) -> Iterator[bytes]:
        bits = wbits
        if bits == zlib.MAX_WBITS and data and data[0] & 0x0F != 8:
            bits = -zlib.MAX_WBITS  # "deflate" sent raw, without the zlib header: common, accepted
        decompressor = zlib.decompressobj(bits)
        while not decompressor.eof:
            piece = decompressor.decompress(data, _STEP)
            data = decompressor.unconsumed_tail
            if not piece and not data:
                break
            yield piece
        if not decompressor.eof:
            raise ValueError("truncated")

    return decode


def _brotli(data: bytes) -> Iterator[bytes]:
    import brotli

    decompressor = brotli.Decompressor()
    yield decompressor.process(data, output_buffer_limit=_STEP)
    while not decompressor.can_accept_more_data():  # output held back by the limit: take it step by step
        yield decompressor.process(b"", output_buffer_limit=_STEP)
    if not decompressor.is_finished():
        raise ValueError("truncated")


def _zstd(data: bytes) -> Iterator[bytes]:
    try:
        from compression import zstd  # type: ignore[import-not-found]  # Python 3.14
    except ImportError:
        from backports import zstd  # type: ignore[import-not-found,no-redef]

    decompressor = zstd.ZstdDecompressor()
    while not decompressor.eof:
        piece = decompressor.decompress(data, max_length=_STEP)
        data = b""
        yield piece
        if decompressor.needs_input:
            break
    if not decompressor.eof:
        raise ValueError("truncated")


_DECODERS = {
    "gzip": _zlib(16 + zlib.MAX_WBITS), "x-gzip": _zlib(16 + zlib.MAX_WBITS),
    "deflate": _zlib(zlib.MAX_WBITS), "br": _brotli, "zstd": _zstd,
}
