"""What the server's parts share, so that the store, the inspector and /v1/chat/completions need
nothing from ``app.py`` (which wires them in): the app's keys, OpenAI-style error answers, the SSE
headers, the observers' bracket around a request, and NeMo Gym's session affinity (header,
``prompt_cache_key``, cookie)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, Awaitable, Callable, Optional, Union

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from ..config import Config
from ..observe import Outcome, RequestObserver, observe
from ..redact import Secrets
from ..translate.errors import InvalidRequest
from ..translate.request import ConversionSettings
from ..upstream.client import UpstreamError, UpstreamHTTPError, VLLMClient
from ..upstream.developer_role import DeveloperRole
from .body import BodyError, read_body
from .observability import Metrics

# --- the app's keys -------------------------------------------------------------------------------

CONFIG_KEY = web.AppKey("config", Config)
CLIENT_KEY = web.AppKey("client", VLLMClient)
SETTINGS_KEY = web.AppKey("settings", ConversionSettings)
FOLDING_SETTINGS_KEY = web.AppKey("folding_settings", ConversionSettings)  # developer messages folded
DEVELOPER_KEY = web.AppKey("developer_role", DeveloperRole)
STREAMS_KEY = web.AppKey("streams", set)  # the tasks serving an open stream (graceful shutdown)
SHUTDOWN_KEY = web.AppKey("shutdown", asyncio.Event)  # set when the grace period is over
REQUESTS_KEY = web.AppKey("requests", set)  # the tasks serving a POST /v1/responses (graceful shutdown)
KEYS_KEY = web.AppKey("keys", list)  # client API keys, as bytes
METRICS_KEY = web.AppKey("metrics", Metrics)
SECRETS_KEY = web.AppKey("secrets", Secrets)  # every configured secret: what must not leave the process
# Per-request storage: typed keys where aiohttp has them (3.13+), plain strings before.
_RequestKey = getattr(web, "RequestKey", None)
REQUEST_ID = _RequestKey("request_id", str) if _RequestKey else "request_id"
LOG_FIELDS = _RequestKey("log_fields", dict) if _RequestKey else "log_fields"
TRANSPORT_KEY = web.AppKey("transport_log", object)  # a TransportLog, or None
# Who watches requests (the inspector, traces, the store): see gateway/observe.py. Empty: nobody.
OBSERVERS_KEY = web.AppKey("observers", list)
STORE_KEY = web.AppKey("store", object)  # the gateway.store StoreService, or None (gateway.store: false)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and friends: do not buffer the stream
}


class SSEResponseHeadWithFirstEvents(web.StreamResponse):
    """An SSE response whose head leaves with the first events written after ``prepare()``, in one
    socket write. aiohttp sends a StreamResponse's head on its own at ``prepare()``; a stream of
    Responses events writes ``response.created`` right after, so that was a send(2) per response
    for nothing. Only for a response whose first write follows ``prepare()`` at once: the head is
    held until it. (An aiohttp without this switch sends the head at ``prepare()``, as before.)"""

    _send_headers_immediately = False


# --- errors ---------------------------------------------------------------------------------------


def error_response(
    status: int, message: str, *, type_: str = "invalid_request_error", param: Optional[str] = None,
    code: Optional[str] = None, headers: Optional[dict[str, str]] = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)


async def request_body(request: web.Request) -> Union[bytes, web.Response]:
    """The request's body, decoded within the configured limits, or the error to answer instead."""
    gw = request.app[CONFIG_KEY].gateway
    try:
        return await read_body(request.content, request.headers.get("Content-Encoding", ""), request.content_length,
                               max_bytes=gw.max_request_bytes, max_compressed_bytes=gw.max_compressed_request_bytes)
    except BodyError as exc:
        return error_response(exc.status, exc.message, code=exc.code)
    except RequestPayloadError as exc:  # e.g. broken chunked framing from the client
        return error_response(400, f"The request body could not be read: {exc}.", code="invalid_body")


def upstream_error_response(exc: UpstreamError) -> web.Response:
    type_ = "invalid_request_error" if 400 <= exc.status < 500 and exc.status != 429 else "upstream_error"
    param = exc.param if isinstance(exc, UpstreamHTTPError) and 400 <= exc.status < 500 else None
    return error_response(exc.status, exc.message, type_=type_, param=param, code=exc.code)


def invalid_request_response(exc: InvalidRequest) -> web.Response:
    """A 4xx naming the field; or a 5xx (the response store unavailable) that is no client's fault."""
    kind = "server_error" if exc.status >= 500 else "invalid_request_error"
    return error_response(exc.status, exc.message, type_=kind, param=exc.param, code=exc.code)


# --- requests in flight ---------------------------------------------------------------------------


def shutting_down_response() -> web.Response:
    return error_response(503, "The gateway is shutting down; the request was not completed. Retry it.",
                          type_="server_error", code="server_shutting_down", headers={"Retry-After": "1"})


async def tracked(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
    """``handler(request)``, known while it runs (``REQUESTS_KEY``) so that SIGTERM can wait for it:
    streamed or not, answered by vLLM yet or not. When the grace period is over, what is still
    running is cancelled; an answer that has not started is a 503 ``server_shutting_down`` from
    here, never a bare disconnect (one that started ends itself: response.failed on /v1/responses,
    an error frame on /v1/chat/completions)."""
    task = asyncio.current_task()
    requests: set[asyncio.Task[Any]] = request.app[REQUESTS_KEY]
    if task is not None:
        requests.add(task)
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if task is None or not request.app[SHUTDOWN_KEY].is_set() or request.transport is None \
                or request.writer.output_size > 0:
            raise  # the client left, or the answer has started: nothing more can be said
        task.uncancel()
        return shutting_down_response()
    finally:
        requests.discard(task)  # type: ignore[arg-type]


# --- observers ------------------------------------------------------------------------------------


async def observed(observer: Optional[RequestObserver],
                   answer: Callable[[Optional[Outcome]], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """``answer(outcome)`` for a request that ``observer`` watches (None: nobody, and no cost),
    which is told how the request ended whatever happens (``RequestObserver.ended``)."""
    if observer is None:
        return await answer(None)
    outcome = Outcome(status=499)  # stays so when the client leaves before the end
    try:
        response = await answer(outcome)
        outcome.status = response.status
        if response.status >= 400 and isinstance(response, web.Response) and isinstance(response.body, bytes):
            outcome.error = orjson.loads(response.body).get("error")
        return response
    except (asyncio.CancelledError, ConnectionResetError):
        raise  # the client left
    except Exception:
        outcome.status = 500
        raise
    finally:
        observer.ended(outcome)


Answer = Callable[[web.Request, bytes, Optional[RequestObserver], Optional[Outcome]], Awaitable[web.StreamResponse]]


async def watched_post(request: web.Request, answer: Answer) -> web.StreamResponse:
    """A POST of /v1/responses or /v1/chat/completions: known while in flight (``tracked``), its
    body read within its limits, and ``answer(request, body, observer, outcome)`` watched by the
    configured observers (``observed``)."""
    async def handle(request: web.Request) -> web.StreamResponse:
        raw = await request_body(request)
        if isinstance(raw, web.Response):
            return raw
        observer = observe(request.app[OBSERVERS_KEY], request[REQUEST_ID], request, raw)
        return await observed(observer, lambda outcome: answer(request, raw, observer, outcome))
    return await tracked(request, handle)


# --- session affinity -----------------------------------------------------------------------------


def session_cookie_name(config: Config) -> str:
    """NeMo Gym's model server names its session cookie ``VLLMModel___<server name>``."""
    return f"VLLMModel___{config.server_name}"


def session_key(request: web.Request, prompt_cache_key: Optional[str]) -> Optional[str]:
    """The key to route by: a session header wins, then the request's ``prompt_cache_key``, then
    NeMo Gym's session cookie. None: route by load (and hand out a cookie, see create_response)."""
    config = request.app[CONFIG_KEY]
    header = request.headers.get(config.gateway.session_header)
    if header:
        return header
    if prompt_cache_key:
        return prompt_cache_key
    cookie = request.cookies.get(session_cookie_name(config))
    return cookie_session_id(cookie) if cookie else None


def cookie_session_id(value: str) -> str:
    """A Starlette-signed NeMo Gym cookie is ``base64(json).timestamp.signature`` and re-signed on
    every response: route by the session id inside, which stays the same."""
    payload = value.split(".", 1)[0]
    try:
        data = json.loads(base64.b64decode(payload + "=" * (-len(payload) % 4)))
        if isinstance(data, dict) and isinstance(data.get("session_id"), str):
            return data["session_id"]
    except (ValueError, TypeError, RecursionError):  # not ours, or absurd (JSON nested 10,000 deep)
        pass
    return value
