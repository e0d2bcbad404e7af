"""The observation hook: what passes through the gateway, for whoever wants to see it.

Capabilities that watch requests (the inspector, OpenTelemetry traces, the response store) plug
in here instead of adding branches to the server. An application holds a list of *observers*
(``OBSERVERS_KEY`` in ``gateway.server.app``): callables that are given each request as it
arrives and return a ``RequestObserver`` for it, or None to let it pass unseen. When no observer
takes a request the server does no extra work for it at all: one ``is None`` check per upstream
read.

For one request the server calls, in this order (each call is optional but the last):

- ``planned(request, plan)``: the decoded Responses request and the Chat Completions body made of it
  (``plan.body``, sent as ``plan.payload``). Not called for a request the gateway refused (400);
  a ``POST /v1/chat/completions`` gets ``chat_planned(body, payload, stream)`` instead: the body
  sent to vLLM (always without streaming) and whether the client streams;
- ``attempt_started(server)`` / ``attempt_ended(server, error)``: each try at a vLLM server (the
  client retries on another one when a server fails before answering); ``error`` None: it answered;
- ``read(data)``: each network read from vLLM, the bytes as they came (an SSE event may span two
  reads); without streaming, once, the whole body. Keeping these (untracked by the garbage
  collector) is cheaper than keeping the decoded chunks;
- ``received(chunks)``: then the chunks that read completed, an iterable of ``ChatChunk`` (``None``
  in it is ``[DONE]``) that the relay decodes as it takes them: an observer must not iterate it;
  without streaming, once, with ``[ChatCompletion]``;
- ``sent(data)``: each write to the client, as the bytes written (SSE frames, keepalives too;
  without streaming, the JSON body). The frames written after a ``received`` are the events made
  of its chunks;
- ``await ending()``: right after the ``sent`` of the write that ends the response (its terminal
  event; without streaming, the JSON body), before the client gets it: the one awaited call, so
  that what the client is told has ended has also been stored as ended (the response store). It
  must bound its own wait;
- ``ended(outcome)``: always, last, even when the client left or the gateway failed.

Observers must be quick and must not raise or block: they run inside the stream's own task. They
get references, not copies: they must not mutate what they are given.

The response store joins its recorder to a request's observer (``join``) once the request is
converted and ``store`` is on, so a request that is not stored costs nothing either. A background
run (``background: true``), which outlives its POST, is seen by the POST's observers until the
queued Response is answered; its generation is recorded by the store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

if TYPE_CHECKING:
    from aiohttp import web

    from .schema.responses import Response, ResponsesRequest
    from .translate.request import ChatPlan
    from .upstream.client import UpstreamError


@dataclass
class Outcome:
    """How a request ended."""

    status: int  # the HTTP status the client got; 499: the client left before the end
    response: Optional["Response"] = None  # the final Response (streamed or not), when there is one
    # The OpenAI-style error object the client got as an HTTP error (``{"message", "type", "param",
    # "code"}``); a streamed failure is in ``response.error`` instead (/v1/chat/completions, which
    # has no Response: here, the status 200 of the stream that carried it).
    error: Optional[dict[str, Any]] = None
    finish_reason: Optional[str] = None  # vLLM's, when it sent one
    # /v1/chat/completions: the answer the client got (a chat.completion object), when there is one
    completion: Optional[dict[str, Any]] = None


class RequestObserver:
    """Watches one request. Every method does nothing here: subclasses take what they need."""

    __slots__ = ()  # subclasses may have slots only

    def planned(self, request: "ResponsesRequest", plan: "ChatPlan") -> None:
        pass

    def chat_planned(self, body: dict[str, Any], payload: bytes, stream: bool) -> None:
        pass

    def attempt_started(self, server: str) -> None:
        pass

    def attempt_ended(self, server: str, error: Optional["UpstreamError"]) -> None:
        pass

    def read(self, data: bytes) -> None:
        pass

    def received(self, chunks: Iterable[Any]) -> None:
        """The chunks of one upstream read, decoded as the relay takes them: not to be iterated here."""

    def sent(self, data: bytes) -> None:
        pass

    async def ending(self) -> None:
        pass

    def ended(self, outcome: Outcome) -> None:
        pass


# Called for each request with its id, the aiohttp request (headers, cookies, remote address) and
# the raw body as received; returns the request's observer, or None.
Observer = Callable[[str, "web.Request", bytes], Optional[RequestObserver]]


class _Fanout(RequestObserver):
    """Several observers of one request, called in order."""

    def __init__(self, observers: list[RequestObserver]) -> None:
        self._observers = observers

    def planned(self, request: "ResponsesRequest", plan: "ChatPlan") -> None:
        for o in self._observers:
            o.planned(request, plan)

    def chat_planned(self, body: dict[str, Any], payload: bytes, stream: bool) -> None:
        for o in self._observers:
            o.chat_planned(body, payload, stream)

    def attempt_started(self, server: str) -> None:
        for o in self._observers:
            o.attempt_started(server)

    def attempt_ended(self, server: str, error: Optional["UpstreamError"]) -> None:
        for o in self._observers:
            o.attempt_ended(server, error)

    def read(self, data: bytes) -> None:
        for o in self._observers:
            o.read(data)

    def received(self, chunks: Iterable[Any]) -> None:
        for o in self._observers:
            o.received(chunks)

    def sent(self, data: bytes) -> None:
        for o in self._observers:
            o.sent(data)

    async def ending(self) -> None:
        for o in self._observers:
            await o.ending()

    def ended(self, outcome: Outcome) -> None:
        for o in self._observers:
            o.ended(outcome)


def observe(observers: list[Observer], request_id: str, request: "web.Request", raw: bytes) -> Optional[RequestObserver]:
    """The observer of one request: None when nobody takes it (the usual case: no cost at all)."""
    if not observers:
        return None
    taken = [o for o in (observer(request_id, request, raw) for observer in observers) if o is not None]
    if not taken:
        return None
    return taken[0] if len(taken) == 1 else _Fanout(taken)


def join(first: Optional[RequestObserver], second: Optional[RequestObserver]) -> Optional[RequestObserver]:
    """Both observers (``second`` called after ``first``), either, or None."""
    if first is None or second is None:
        return first or second
    return _Fanout([first, second])
