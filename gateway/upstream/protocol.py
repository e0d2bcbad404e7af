"""The connection protocol of the gateway's upstream client: aiohttp's, minus a call chain per chunk.

vLLM sends each SSE event as an HTTP chunk of its own. aiohttp's StreamReader, for every chunk it
hands out, asks its protocol to resume reading, paused or not; each ask runs the HTTP parser on
``b""`` and the transport's ``resume_reading``: five Python calls per token for nothing. Here the
ask goes through only when reading is paused, which is the only time it does anything (aiohttp
pauses past its high-water mark and resumes below its low-water mark, as before). Measured: 0.35
µs of the gateway's CPU per token at c=64 (gateway/bench/README.md).

aiohttp has no public way to choose a connector's protocol: ``lean_connector`` replaces its
factory when it is the one aiohttp builds (``functools.partial(ResponseHandler, loop=...)``) and
leaves it alone otherwise, so another aiohttp only loses the saving (a test notices).
"""

from __future__ import annotations

import functools
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler


class LeanResponseHandler(ResponseHandler):
    def resume_reading(self, resume_parser: bool = True) -> None:
        if self._reading_paused or getattr(self, "_buffer_paused", False):
            super().resume_reading(resume_parser)


def lean_connector(**kwargs: Any) -> aiohttp.TCPConnector:
    connector = aiohttp.TCPConnector(**kwargs)
    factory = getattr(connector, "_factory", None)
    if isinstance(factory, functools.partial) and factory.func is ResponseHandler:
        connector._factory = functools.partial(LeanResponseHandler, *factory.args, **factory.keywords)
    return connector
