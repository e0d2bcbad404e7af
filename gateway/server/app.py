"""The aiohttp application: routes, the SSE shell around the state machine, error mapping.

The handler decides nothing about events: it feeds the state machine what the upstream sends and
writes what the machine returns, one socket write per upstream read. Writing awaits the client
(aiohttp drains when the socket buffer is full), and only then is the upstream read again, so a
slow client slows the upstream read (TCP pushes back to vLLM) and memory per stream stays bounded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import hmac
import logging
import os
import time
from typing import Any, Optional

import msgspec
import orjson
from aiohttp import web

from .. import jsonbytes, offload
from ..config import Config
from ..redact import Secrets, secrets_of
from ..observe import Outcome, RequestObserver, join
from ..schema import chat
from ..schema.responses import Response
from ..translate.errors import InvalidRequest
from ..translate.request import ChatPlan, ConversionSettings, decode_request, has_developer_messages, plan_chat_request
from ..translate.stream import ResponseStateMachine, StreamOptions, random_id
from ..translate.tokens import tokenize_body
from ..upstream.client import (
    KEEPALIVE,
    ChatStream,
    ClientSettings,
    UpstreamError,
    UpstreamHTTPError,
    VLLMClient,
)
from ..upstream.developer_role import DeveloperRole
from ..upstream.pool import Backend
from .http import (CLIENT_KEY, CONFIG_KEY, DEVELOPER_KEY, FOLDING_SETTINGS_KEY, KEYS_KEY, LOG_FIELDS, METRICS_KEY,
                   OBSERVERS_KEY, REQUEST_ID, REQUESTS_KEY, SECRETS_KEY, SETTINGS_KEY, SHUTDOWN_KEY, SSE_HEADERS,
                   SSEResponseHeadWithFirstEvents,
                   STORE_KEY, STREAMS_KEY, TRANSPORT_KEY, error_response, invalid_request_response,
                   session_cookie_name, session_key, watched_post)
from .http import upstream_error_response as _upstream_error_response
from .observability import Metrics, NemoGymTransportLog, TransportLog, nemo_gym_log_context, request_id
from .sse import KEEPALIVE as KEEPALIVE_FRAME
from .sse import encode_events, encode_events_into

log = logging.getLogger("gateway.server")
access_log = logging.getLogger("gateway.access")

# After the grace period, the time the cancelled requests get to write their answer; the process
# exits within shutdown_grace_s + SHUTDOWN_ANSWER_S (+ the 1 s aiohttp gives connections to close).
SHUTDOWN_ANSWER_S = 3.0

_response_encoder = msgspec.json.Encoder()


# --- errors ---------------------------------------------------------------------------------------


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure becomes an OpenAI-style error object: never a traceback, never HTML. Also
    where each request gets its id (``X-Request-Id``, sent upstream too) and its log line."""
    started = time.perf_counter()
    status = 500
    rid = request[REQUEST_ID] = request_id(request.headers.get("X-Request-Id"))
    request[LOG_FIELDS] = fields = {}
    try:
        response = await handler(request)
        status = response.status
        if not response.prepared:
            response.headers["X-Request-Id"] = rid
        return _scrubbed(request, response)
    except web.HTTPRequestEntityTooLarge as exc:
        status = 413
        return error_response(413, f"The request body is too large: {exc.text}", code="request_too_large")
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        reason = exc.reason or "error"
        return _scrubbed(request, error_response(exc.status, f"{reason}: {request.method} {request.path}",
                                                 code=reason.lower().replace(" ", "_")))
    except (asyncio.CancelledError, ConnectionResetError):
        status = 499  # the client went away (noticed at once, or at the next write)
        raise
    except Exception:
        log.exception("unhandled error on %s %s (request %s)", request.method, request.path, rid)
        return error_response(500, "The gateway failed unexpectedly; the error has been logged.", type_="server_error",
                              code="internal_error", headers={"X-Request-Id": rid})
    finally:
        elapsed = time.perf_counter() - started
        route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
        request.app[METRICS_KEY].answered(route, status, bool(fields.get("stream")), elapsed)
        if access_log.isEnabledFor(logging.INFO):  # its fields are not built for a line nobody keeps
            access_log.info("%s %s %d %.1fms", request.method, request.path, status, elapsed * 1000,
                            extra={"fields": {"request_id": rid, "method": request.method, "path": request.path,
                                              "status": status, "duration_ms": round(elapsed * 1000, 1), **fields}})


def _scrubbed(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Every answer not streamed leaves through here: configured secrets are taken out of it
    (an upstream's error text may echo its Authorization header). Streams: ``_write_end``."""
    secrets: Secrets = request.app[SECRETS_KEY]
    if secrets and isinstance(response, web.Response) and isinstance(response.body, bytes):
        body = secrets.scrub_bytes(response.body)
        if body is not response.body:
            response.body = body
    return response


@web.middleware
async def auth_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Bearer keys for the gateway's own clients, when configured. /health stays open (probes)."""
    keys: list[bytes] = request.app[KEYS_KEY]
    if keys and request.path.startswith("/v1/") and request.method != "OPTIONS":
        header = request.headers.get("Authorization", "")
        # aiohttp decodes header bytes as UTF-8 with surrogateescape: any byte comes back as it was
        given = header[7:].strip().encode("utf-8", "surrogateescape") if header[:7].lower() == "bearer " else b""
        # compare with every key, whatever matches first: the time taken tells nothing
        matched = False
        for key in keys:
            matched |= hmac.compare_digest(given, key)
        if not matched:
            return error_response(401, "Invalid or missing API key.", code="invalid_api_key",
                                  headers={"WWW-Authenticate": "Bearer"})
    return await handler(request)


def cors_middleware(origins: list[str]) -> Any:
    allow_all = "*" in origins

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        allowed = origin is not None and (allow_all or origin in origins)
        if request.method == "OPTIONS" and allowed:
            response: web.StreamResponse = web.Response(status=204)
        else:
            response = await handler(request)
        if allowed and not response.prepared:
            response.headers["Access-Control-Allow-Origin"] = "*" if allow_all else origin  # type: ignore[assignment]
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-Session-Id"
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE, OPTIONS"
        return response

    return middleware


# --- routes ---------------------------------------------------------------------------------------


async def create_response(request: web.Request) -> web.StreamResponse:
    """Known while in flight, for a graceful shutdown; a stream that started ends with
    response.failed (in _stream)."""
    return await watched_post(request, _respond)


async def _respond(request: web.Request, raw: bytes, observer: Optional[RequestObserver],
                   outcome: Optional[Outcome]) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    store = request.app[STORE_KEY]
    stored = None
    large = offload.is_large(raw)  # then decoding and converting run off the event loop
    try:
        req, developer = await offload.run(large, _decode, raw)
        if developer and await request.app[DEVELOPER_KEY].must_fold():
            settings = request.app[FOLDING_SETTINGS_KEY]
        if store is not None:  # previous_response_id becomes input; store and background are read
            stored = await store.prepare(request, req, large)
            req, large = stored.request, stored.large
        plan = await offload.run(large, plan_chat_request, req, settings, response_id=random_id("resp"),
                                 created_at=int(time.time()))
    except InvalidRequest as exc:
        return invalid_request_response(exc)
    recorder = stored.adopt(plan) if stored is not None else None  # None unless the response is kept
    if observer is not None:
        observer.planned(req, plan)
    if recorder is not None:
        if stored.background:  # type: ignore[union-attr]
            return await _start_background(request, req, plan, recorder)
        observer = join(observer, recorder)
        outcome = outcome or Outcome(status=499)
    try:
        return await _generate(request, req, plan, observer, outcome)
    finally:
        if recorder is not None:
            recorder.ended(outcome)  # type: ignore[arg-type]


def _decode(raw: bytes) -> tuple[Any, bool]:
    """The Responses request, and whether it has developer messages (folding may apply)."""
    req = decode_request(raw)
    return req, has_developer_messages(req)


async def _generate(request: web.Request, req: Any, plan: ChatPlan, observer: Optional[RequestObserver],
                    outcome: Optional[Outcome]) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    request[LOG_FIELDS].update(model=settings.model, stream=plan.stream)
    if plan.tools.left_out:
        _note_left_out(plan.tools.left_out)
        request[LOG_FIELDS]["tools_left_out"] = plan.tools.left_out
    key = session_key(request, req.prompt_cache_key)
    model = request.app[CONFIG_KEY].model_server
    plan.overflow_is_empty_answer = not model.propagate_context_overflow_errors
    if model.forward_session_id_as_conversation_id and key:
        # NeMo Gym's rank-affine routing: the session as the backend's conversation id.
        plan.body["conversation_params"] = {"conversation_id": key}
        plan.payload = jsonbytes.dumps(plan.body)
    if not model.sequential_reasoning_allowed and _ends_with_empty_assistant_turn(plan.body["messages"]):
        return await _local_answer(request, plan, "content_filter", observer)
    client = request.app[CLIENT_KEY]
    backend = client.choose(key)
    new_cookie = None
    if key is None and len(client.pool.backends) > 1:
        # As NeMo Gym's server does: a client without a session gets one, here for the server
        # that load balancing picked, so that its next turns land there too (prefix cache).
        new_cookie = key = client.pool.key_for(backend)
    call = UpstreamCall(request, plan, observer, outcome)
    try:
        if plan.stream:
            response = await _stream(request, client, plan, backend, key, new_cookie, call)
        else:
            response = await _complete(client, plan, backend, key, call)
            if new_cookie and not response.prepared:
                response.set_cookie(session_cookie_name(request.app[CONFIG_KEY]), new_cookie, httponly=True)
    finally:
        call.done()
    return response


_left_out_seen: set[str] = set()


def _note_left_out(kinds: list[str]) -> None:
    """One log line per kind of hosted tool, the first time a request brings it (Codex sends
    web_search with every request); the request's own log line lists them every time."""
    new = sorted(set(kinds) - _left_out_seen)
    if new:
        _left_out_seen.update(new)
        log.info("tools of type %s are left out of the model's requests: only OpenAI's servers run them "
                 "(gateway.hosted_tools: reject refuses them instead)", ", ".join(repr(k) for k in new))


async def _start_background(request: web.Request, req: Any, plan: ChatPlan,
                            recorder: RequestObserver) -> web.StreamResponse:
    """``background: true``: the generation gets a task of its own, which outlives this request
    (the client may leave, or poll); only the store records it. The POST answers with the queued
    Response, or with its events as they are stored (``stream: true``)."""
    request[LOG_FIELDS].update(model=request.app[SETTINGS_KEY].model, stream=plan.stream, background=True)
    key = session_key(request, req.prompt_cache_key)
    client = request.app[CLIENT_KEY]
    backend = client.choose(key)
    call = UpstreamCall(request, plan, recorder, Outcome(status=200))
    run = _background_run(request, client, plan, backend, key, call)
    try:
        return await request.app[STORE_KEY].run_in_background(request, run, plan, recorder)
    except InvalidRequest as exc:  # the store cannot take it (unavailable): nothing was started
        return invalid_request_response(exc)


class _NoClient:
    """The relay's client for a background run: nobody is attached; the store gets every frame."""

    async def write(self, data: bytes) -> None:
        pass

    async def write_eof(self, data: bytes = b"") -> None:
        pass


async def _background_run(request: web.Request, client: VLLMClient, plan: ChatPlan, backend: Backend,
                          key: Optional[str], call: "UpstreamCall") -> None:
    """The relay of a background response. Cancelled by ``POST /v1/responses/{id}/cancel`` (which
    stops vLLM's generation: the upstream request is closed) or by a shutdown whose grace ran out."""
    machine = _machine(plan)
    sink = _NoClient()
    upstream: Optional[ChatStream] = None
    prompt = PromptTokens(client, backend.url, plan)
    streams: set[asyncio.Task[Any]] = request.app[STREAMS_KEY]
    task = asyncio.current_task()
    assert task is not None and call.observer is not None
    streams.add(task)
    call.server = backend.url
    try:
        try:
            await _write(sink, encode_events(machine.start()), call.observer)
            try:
                upstream = await client.open_chat_stream(plan.payload, backend, key, request[REQUEST_ID],
                                                         call.capture, call.observer)
                upstream.no_first_output()
                call.server = upstream.backend.url
            except UpstreamHTTPError as exc:
                call.error = exc
                ending = (machine.context_overflow(exc.upstream_message) if exc.is_context_overflow
                          else machine.fail(exc.code or "upstream_error", exc.message))
                await _write_end(sink, encode_events(ending), call)
                return
            except UpstreamError as exc:
                call.error = exc
                await _write_end(sink, encode_events(machine.fail(exc.code, exc.message)), call)
                return
            await _relay(upstream, machine, sink, prompt, call)
        except asyncio.CancelledError:
            if upstream is not None:
                upstream.close()  # vLLM stops generating now
            task.uncancel()
            if request.app[SHUTDOWN_KEY].is_set():
                ending = machine.fail("server_shutting_down", "the gateway shut down before the response ended")
            else:
                ending = machine.cancel()
            await _write_end(sink, encode_events(ending), call)
        except Exception:
            log.exception("background response %s failed in the gateway", plan.response.id)
            await _write_end(sink, encode_events(machine.fail(
                "internal_error", "the gateway failed while generating; the error has been logged")), call)
    finally:
        call.final, call.finish_reason = machine.final, machine.finish_reason
        streams.discard(task)
        prompt.cancel()
        if upstream is not None:
            upstream.close()
        call.done()
        call.observer.ended(call.outcome)  # type: ignore[arg-type]


def _ends_with_empty_assistant_turn(messages: list[dict[str, Any]]) -> bool:
    last = messages[-1]
    return last["role"] == "assistant" and not (last.get("content") or last.get("tool_calls"))


async def _local_answer(request: web.Request, plan: ChatPlan, finish_reason: str,
                        observer: Optional[RequestObserver]) -> web.StreamResponse:
    """An answer made here without calling vLLM (NeMo Gym's sequential_reasoning_allowed: false,
    for a request that ends in an empty assistant turn): nothing generated, this finish_reason."""
    machine = ResponseStateMachine(plan.response, plan.options, tools=plan.tools.targets)
    events = machine.start()
    events += machine.feed(chat.ChatChunk(choices=[chat.ChunkChoice(delta=chat.Delta(), finish_reason=finish_reason)]))
    events += machine.finish()
    if not plan.stream:
        return await _json_end(machine.final, observer)
    response = web.StreamResponse(headers={**SSE_HEADERS, "X-Request-Id": request[REQUEST_ID]})
    await response.prepare(request)
    data = encode_events(events)
    if observer is not None:
        observer.sent(data)
        await observer.ending()
    await response.write(data)
    await response.write_eof()
    return response


class UpstreamCall:
    """What one request did upstream, for its log line, the metrics and the transport log."""

    def __init__(self, request: web.Request, plan: ChatPlan, observer: Optional[RequestObserver] = None,
                 outcome: Optional[Outcome] = None) -> None:
        self.request = request
        self.plan = plan
        self.observer = observer
        self.outcome = outcome  # filled in for the observer at the end
        self.started = time.perf_counter()
        self.first_output: Optional[float] = None
        self.server: Optional[str] = None
        self.final: Optional[Response] = None
        self.finish_reason: Optional[str] = None
        self.error: Optional[UpstreamError] = None
        transport = request.app[TRANSPORT_KEY]
        self.capture: Optional[list[bytes]] = [] if transport is not None else None

    def output_started(self) -> None:
        if self.first_output is None:
            self.first_output = time.perf_counter()
            self.request.app[METRICS_KEY].ttft.observe(self.first_output - self.started)

    def done(self) -> None:
        if self.outcome is not None:
            self.outcome.response, self.outcome.finish_reason = self.final, self.finish_reason
        try:
            self._record()
        except Exception:  # bookkeeping must never turn an answered request into an error
            log.exception("could not record request %s", self.request[REQUEST_ID])

    def _record(self) -> None:
        fields = self.request[LOG_FIELDS]
        metrics = self.request.app[METRICS_KEY]
        fields["upstream"] = self.server
        if self.first_output is not None:
            fields["ttft_ms"] = round((self.first_output - self.started) * 1000, 1)
        final = self.final
        if final is not None:
            metrics.response_ended(final.status)
            fields["response_status"] = final.status
            if final.error is not None:
                fields["error_code"] = final.error.code
            usage = final.usage
            if usage is not None:
                fields["input_tokens"], fields["output_tokens"] = usage.input_tokens, usage.output_tokens
                # counters only go up: a nonsensical negative count from upstream counts as 0
                metrics.input_tokens.inc(max(0, usage.input_tokens))
                metrics.output_tokens.inc(max(0, usage.output_tokens))
                metrics.reasoning_tokens.inc(max(0, usage.output_tokens_details.reasoning_tokens))
        if self.error is not None:
            fields["error_code"] = self.error.code
        transport = self.request.app[TRANSPORT_KEY]
        if transport is not None and self.server is not None:
            if isinstance(self.error, UpstreamHTTPError):
                status, body = self.error.upstream_status, self.error.body
            else:
                status, body = 200, b"".join(self.capture or [])
            transport.write(self.request[REQUEST_ID], self.server, self.plan.body, status, body,
                            self.error.message if self.error else None,
                            context=nemo_gym_log_context(self.request.headers),
                            elapsed_s=time.perf_counter() - self.started)


class PromptTokens:
    """Prompt token ids for token tracking: ``/tokenize`` runs concurrently with the generation,
    so it adds no latency; it is skipped when vLLM sends the ids inline."""

    def __init__(self, client: VLLMClient, base: str, plan: ChatPlan) -> None:
        self._client, self._base, self._plan = client, base, plan
        self._task: Optional[asyncio.Task[list[int]]] = None
        if plan.track_tokens and plan.tokenize is not None:
            self._task = asyncio.ensure_future(client.tokenize(base, plan.tokenize))

    def ready(self, machine: ResponseStateMachine) -> bool:
        """``get`` would not wait."""
        return not self._needed(machine) or (self._task is not None and self._task.done())

    @staticmethod
    def _needed(machine: ResponseStateMachine) -> bool:
        tokens = machine.tokens
        return not (tokens is None or tokens.bundle is not None or tokens.inline_prompt_ids is not None)

    async def get(self, machine: ResponseStateMachine) -> Optional[list[int]]:
        if not self._needed(machine):
            return None
        if self._task is None:  # inline ids were asked for but did not come: fall back to /tokenize
            self._task = asyncio.ensure_future(self._client.tokenize(self._base, tokenize_body(self._plan.body)))
        return await self._task

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        elif self._task is not None and not self._task.cancelled():
            self._task.exception()  # retrieved, so asyncio does not log it as never retrieved


def _machine(plan: ChatPlan) -> ResponseStateMachine:
    return ResponseStateMachine(plan.response, plan.options, track_tokens=plan.track_tokens,
                                text_logprobs=plan.text_logprobs, tools=plan.tools.targets)


async def _complete(client: VLLMClient, plan: ChatPlan, backend: Backend, key: Optional[str],
                    call: UpstreamCall) -> web.Response:
    machine = _machine(plan)
    machine.start()
    prompt = PromptTokens(client, backend.url, plan)
    call.server = backend.url
    try:
        try:
            completion = await client.complete_chat(plan.payload, backend, key, call.request[REQUEST_ID], call.capture,
                                                    call.observer)
        except UpstreamHTTPError as exc:
            call.error = exc
            if not plan.overflow_is_empty_answer or not exc.is_context_overflow:
                return _upstream_error_response(exc)
            machine.context_overflow(exc.upstream_message)
            call.final = machine.final
            return await _json_end(machine.final, call.observer)
        except UpstreamError as exc:
            call.error = exc
            return _upstream_error_response(exc)
        if call.observer is not None:
            call.observer.received([completion])
        machine.feed_completion(completion)
        call.finish_reason = machine.finish_reason
        if machine.has_output:
            call.output_started()
        if not machine.done:
            try:
                prompt_ids = await prompt.get(machine)
            except UpstreamError as exc:
                return _upstream_error_response(exc)
            machine.finish(prompt_ids)
        final = call.final = machine.final
        if final is not None and final.status == "failed" and final.error is not None:
            # Without a stream there is no response.failed to carry it: an HTTP error says it.
            return error_response(502, final.error.message, type_="upstream_error", code=final.error.code)
        return await _json_end(final, call.observer)
    finally:
        prompt.cancel()


async def _stream(request: web.Request, client: VLLMClient, plan: ChatPlan, backend: Backend,
                  key: Optional[str], new_cookie: Optional[str], call: UpstreamCall) -> web.StreamResponse:
    machine = _machine(plan)
    call.server = backend.url
    overflow: Optional[str] = None
    upstream: Optional[ChatStream] = None
    prompt = PromptTokens(client, backend.url, plan)
    streams: set[asyncio.Task[Any]] = request.app[STREAMS_KEY]
    task = asyncio.current_task()
    try:
        # Open the upstream first: a failure before any byte reaches the client is an HTTP error.
        try:
            upstream = await client.open_chat_stream(plan.payload, backend, key, request[REQUEST_ID], call.capture,
                                                     call.observer)
            call.server = upstream.backend.url
        except UpstreamHTTPError as exc:
            call.error = exc
            if not plan.overflow_is_empty_answer or not exc.is_context_overflow:
                return _upstream_error_response(exc)
            overflow = exc.upstream_message
        except UpstreamError as exc:
            call.error = exc
            return _upstream_error_response(exc)

        try:
            # its head leaves with response.created, written right after prepare(): one write
            response = SSEResponseHeadWithFirstEvents(headers={**SSE_HEADERS, "X-Request-Id": request[REQUEST_ID]})
            if new_cookie:
                response.set_cookie(session_cookie_name(request.app[CONFIG_KEY]), new_cookie, httponly=True)
            await response.prepare(request)
            await _write(response, encode_events(machine.start()), call.observer)
            if overflow is not None:
                await _write_end(response, encode_events(machine.context_overflow(overflow)), call)
            else:
                assert upstream is not None and task is not None
                streams.add(task)
                request.app[METRICS_KEY].open_streams.inc()
                try:
                    try:
                        await _relay(upstream, machine, response, prompt, call)
                    except (asyncio.CancelledError, ConnectionResetError):
                        raise
                    except Exception:
                        # The stream has started: a bug must still end it with a terminal event, not
                        # a second HTTP response written into the body.
                        log.exception("stream %s failed in the gateway", request[REQUEST_ID])
                        await _write_end(response, encode_events(machine.fail(
                            "internal_error", "the gateway failed while streaming; the error has been logged")), call)
                except asyncio.CancelledError:
                    if not request.app[SHUTDOWN_KEY].is_set() or request.transport is None:
                        raise  # the client left: nothing to tell it
                    # the shutdown grace period is over: end the stream properly, then let go
                    task.uncancel()
                    await _write_end(response, encode_events(machine.fail(
                        "server_shutting_down", "the gateway is shutting down; the stream was ended")), call)
            await response.write_eof()
            return response
        except ConnectionResetError:
            # the client left, noticed at a write (prepare, a delta, the end): a disconnect, not an error
            raise asyncio.CancelledError from None
    finally:
        call.final, call.finish_reason = machine.final, machine.finish_reason
        if task is not None and task in streams:
            streams.discard(task)
            request.app[METRICS_KEY].open_streams.dec()
        prompt.cancel()
        if upstream is not None:
            upstream.close()  # on any exit, including a client that left: vLLM stops generating


# A busy vLLM packs many chunks into one read: their events go out in one write, but a write is
# not held back past this size, and the first output of a response goes out at once.
_WRITE_BATCH_BYTES = 16384


async def _write(response: web.StreamResponse, data: bytes, observer: Optional[RequestObserver]) -> None:
    if observer is not None:
        observer.sent(data)
    await response.write(data)


# A stream's end bigger than this (its terminal events carry the whole text four times) is written
# in slices of it: aiohttp joins a chunk with its framing into one new bytes, a copy of all of it.
_END_SLICE_BYTES = 1 << 20


async def _write_end(response: Any, data: bytes | bytearray, call: "UpstreamCall") -> None:
    """The write that carries a stream's terminal events: where upstream text (an error message, a
    context-length refusal) reaches the client, so configured secrets are taken out here; observers
    settle (the store writes the end) before the client sees it. ``data`` may be the relay's own
    buffer (nothing is written after it, so it is not copied)."""
    data = call.request.app[SECRETS_KEY].scrub_bytes(data)  # type: ignore[arg-type]
    observer = call.observer
    if observer is not None:
        observer.sent(data)  # type: ignore[arg-type]
        await observer.ending()
    if len(data) <= _END_SLICE_BYTES:
        await response.write_eof(data)  # the last chunk and the end of the chunked body: one socket write
        return
    view = memoryview(data)
    for start in range(0, len(data), _END_SLICE_BYTES):
        await response.write(view[start:start + _END_SLICE_BYTES])
    await response.write_eof()


async def _write_out(out: bytearray, response: Any, observer: Optional[RequestObserver], upstream: ChatStream) -> None:
    """The relay's buffer to the client, emptied; the keepalive interval counts from now."""
    data = bytes(out)
    out.clear()
    if observer is not None:
        observer.sent(data)
    await response.write(data)
    upstream.wrote()


async def _relay(upstream: ChatStream, machine: ResponseStateMachine, response: Any,
                 prompt: PromptTokens, call: UpstreamCall) -> None:
    out = bytearray()
    observer = call.observer  # None unless someone watches: then one check per read, nothing per token
    keepalive_events = call.request.app[CONFIG_KEY].gateway.keepalive_format == "event"
    feed = machine.feed
    try:
        # Closed here when the relay leaves it early (at [DONE]): an async generator left to the
        # garbage collector is closed by a task the loop schedules through call_soon_threadsafe.
        async with contextlib.aclosing(upstream.__aiter__()) as reads:
            async for batch in reads:
                if batch is KEEPALIVE:
                    await _write(response, encode_events(machine.keepalive()) if keepalive_events else KEEPALIVE_FRAME,
                                 observer)
                    continue
                if observer is not None:
                    observer.received(batch)  # type: ignore[arg-type]
                finished = False
                awaiting_output = call.first_output is None  # per read, not per chunk: set once in a stream
                for chunk in batch:  # type: ignore[union-attr]
                    if chunk is None:  # [DONE]
                        finished = True
                        break
                    events = feed(chunk)
                    if not events:
                        continue
                    encode_events_into(events, out)
                    if machine.final is not None:  # the terminal events: written below, by _write_end
                        finished = True
                        break
                    first_output = awaiting_output and machine.has_output
                    if first_output or len(out) >= _WRITE_BATCH_BYTES:
                        if first_output:
                            awaiting_output = False
                            call.output_started()
                        await _write_out(out, response, observer, upstream)
                if out:
                    if call.first_output is None and machine.has_output:
                        call.output_started()
                    if machine.done:
                        await _write_end(response, out, call)
                    elif finished and prompt.ready(machine):
                        pass  # [DONE], and the end needs no wait: the rest leaves with it, in one write
                    else:
                        await _write_out(out, response, observer, upstream)
                if finished:
                    break
        if machine.done:
            return
        if machine.finish_reason is None:
            events = machine.finish()  # fails: the stream ended without finishing
        else:
            events = machine.finish(await prompt.get(machine))
    except UpstreamError as exc:
        call.error = exc
        events = machine.fail(exc.code, exc.message)
    encode_events_into(events, out)
    if out:
        await _write_end(response, out, call)


async def _json_end(response: Optional[Response], observer: Optional[RequestObserver] = None) -> web.Response:
    assert response is not None
    body = _response_encoder.encode(response)
    if observer is not None:
        observer.sent(body)
        await observer.ending()
    return web.Response(body=body, content_type="application/json")


async def list_models(request: web.Request) -> web.Response:
    try:
        models = await request.app[CLIENT_KEY].models()
    except UpstreamError as exc:
        return _upstream_error_response(exc)
    return web.Response(body=orjson.dumps(models), content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].render(request.app[CLIENT_KEY].pool.status())
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def health(request: web.Request) -> web.Response:
    """200 when at least one vLLM server answers its /health now; 503 with the reasons otherwise."""
    upstreams = await request.app[CLIENT_KEY].check_health(timeout=3.0)
    ok = any(u["healthy"] for u in upstreams)
    body = {"status": "ok" if ok else "unavailable", "upstreams": upstreams}
    return web.Response(status=200 if ok else 503, body=orjson.dumps(body), content_type="application/json")


# --- the application ------------------------------------------------------------------------------


# NeMo Gym's table: vLLM's decoders pick a backend by this subtype, so an unknown one is refused.
_AUDIO_MIME = {".wav": "wav", ".flac": "flac", ".mp3": "mpeg", ".m4a": "mp4", ".ogg": "ogg", ".opus": "opus"}


def load_audio(audio_root: Optional[str], path: str) -> str:
    """``metadata.audio_path`` -> a ``data:audio/<subtype>;base64,`` URL, as NeMo Gym inlines it
    (relative paths only under ``audio_root``)."""
    if not os.path.isabs(path):
        if not audio_root:
            raise InvalidRequest(f"metadata audio path {path!r} is relative and the model server sets no "
                                 "audio_root.", param="metadata.audio_path")
        path = os.path.join(audio_root, path)
    subtype = _AUDIO_MIME.get(os.path.splitext(path)[1].lower())
    if subtype is None:
        raise InvalidRequest(f"metadata audio path {path!r}: unsupported extension; supported: "
                             f"{', '.join(sorted(_AUDIO_MIME))}.", param="metadata.audio_path")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise InvalidRequest(f"metadata audio path {path!r} cannot be read: {exc.strerror}.",
                             param="metadata.audio_path") from None
    return f"data:audio/{subtype};base64,{base64.b64encode(data).decode('ascii')}"


def reasoning_history_mode(config: Config) -> str:
    """How reasoning in history goes back to vLLM: ``gateway.reasoning_history`` when set, else
    what NeMo Gym 0.7.0 does with its keys (tags stay in the content without a reasoning parser
    or with preserve_reasoning_in_assistant_content; a field with interleaved reasoning; else
    dropped)."""
    model, gw = config.model_server, config.gateway
    if gw.reasoning_history is not None:
        return gw.reasoning_history
    if not model.uses_reasoning_parser or model.preserve_reasoning_in_assistant_content:
        return "think_tags"
    return "field" if model.uses_interleaved_reasoning else "drop"


# gateway.response_conventions -> the state machine's switches (README, "NeMo Gym").
NEMO_GYM_STREAM_CONVENTIONS: dict[str, dict[str, bool]] = {
    "openai": {},
    "nemo_gym": dict(trim_whitespace=False, keep_stray_close_tag=True, empty_output_message=True,
                     cut_items_completed=True, reasoning_blocks_as_parts=True),
}


def conversion_settings(config: Config) -> ConversionSettings:
    model, gw = config.model_server, config.gateway
    return ConversionSettings(
        model=model.model,
        reasoning_history=reasoning_history_mode(config),
        reasoning_field=model.reasoning_field if gw.reasoning_history is None else gw.reasoning_field,
        forward_request_chat_template_kwargs=model.forward_request_chat_template_kwargs,
        continue_final_assistant_message=model.continue_final_assistant_message,
        send_sampling_defaults=gw.response_conventions == "openai",
        echo_request_sampling=gw.response_conventions == "nemo_gym",
        load_audio=functools.partial(load_audio, model.audio_root),
        replace_developer_role_with_system=model.replace_developer_role_with_system,
        reject_hosted_tools=gw.hosted_tools == "reject",
        return_token_id_information=model.return_token_id_information,
        request_prompt_and_generation_token_ids=model.request_prompt_and_generation_token_ids,
        upstream_flavour=gw.upstream_flavour,
        chat_template_kwargs=model.chat_template_kwargs,
        extra_body=model.extra_body,
        sampling_overrides=model.sampling_overrides,
        stream_options=StreamOptions(
            parse_think_tags=model.uses_reasoning_parser,
            reasoning_starts_open=gw.reasoning_starts_open,
            reasoning_presentation=gw.reasoning_presentation,
            **NEMO_GYM_STREAM_CONVENTIONS[gw.response_conventions],
        ),
    )


def client_settings(config: Config) -> ClientSettings:
    gw = config.gateway
    return ClientSettings(
        connect=gw.connect_timeout_s, first_byte=gw.first_byte_timeout_s, idle=gw.idle_timeout_s,
        total=gw.request_timeout_s, keepalive=gw.keepalive_interval_s, max_retries=gw.max_retries,
        backoff=gw.retry_backoff_s, backoff_max=gw.retry_backoff_max_s, health_interval=gw.health_check_interval_s,
        eject_after=gw.eject_after_failures, eject_s=gw.eject_s, dead_probe=gw.dead_upstream_probe_s,
        max_response_bytes=gw.max_upstream_response_bytes, max_event_bytes=gw.max_upstream_event_bytes,
    )


def client_keys(config: Config) -> list[bytes]:
    keys = list(config.gateway.api_keys)
    if config.gateway.api_keys_file:
        with open(config.gateway.api_keys_file, encoding="utf-8") as f:
            keys += [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return [key.encode() for key in keys]


def create_app(config: Config, client: Optional[VLLMClient] = None) -> web.Application:
    middlewares = [errors_middleware, auth_middleware]
    if config.gateway.cors_allow_origins:
        middlewares.insert(0, cors_middleware(config.gateway.cors_allow_origins))
    app = web.Application(middlewares=middlewares, client_max_size=config.gateway.max_request_bytes)
    app[CONFIG_KEY] = config
    app[SETTINGS_KEY] = conversion_settings(config)
    app[FOLDING_SETTINGS_KEY] = dataclasses.replace(app[SETTINGS_KEY], fold_developer_messages=True)
    app[STREAMS_KEY] = set()
    app[REQUESTS_KEY] = set()
    app[SHUTDOWN_KEY] = asyncio.Event()
    app[KEYS_KEY] = client_keys(config)
    app[SECRETS_KEY] = secrets_of(config, [key.decode() for key in app[KEYS_KEY]])
    app[METRICS_KEY] = Metrics()
    app[OBSERVERS_KEY] = []
    app[STORE_KEY] = None
    if config.gateway.store:
        from ..store.routes import install_store  # its routes, its recorder, its background tasks

        install_store(app, config)
    transport_path = config.gateway.transport_log or os.environ.get("NEMO_GYM_VLLM_TRANSPORT_LOG", "").strip()
    app[TRANSPORT_KEY] = None
    if transport_path and config.gateway.transport_log_format == "nemo_gym":
        app[TRANSPORT_KEY] = NemoGymTransportLog(transport_path, app[SECRETS_KEY], config.model_server.base_url)
    elif transport_path:
        app[TRANSPORT_KEY] = TransportLog(transport_path, app[SECRETS_KEY])
    model = config.model_server
    app[CLIENT_KEY] = client or VLLMClient(
        model.base_url,
        api_key=model.api_key,
        default_headers=model.default_headers,
        settings=client_settings(config),
        flavour=config.gateway.upstream_flavour,
        metrics=app[METRICS_KEY],
    )

    mode = "keep" if model.replace_developer_role_with_system else config.gateway.developer_messages
    app[DEVELOPER_KEY] = DeveloperRole(app[CLIENT_KEY], mode, model.model)

    async def start_client(app: web.Application) -> None:
        await app[CLIENT_KEY].start()

    async def drain_requests(app: web.Application) -> None:
        """SIGTERM: the listening socket is closed already; every request in flight (streamed or
        not, waiting for vLLM or not, background runs) gets the grace period to finish; then each
        is cancelled, which makes it answer (response.failed, or a 503) within ANSWER_S."""
        running: set[asyncio.Task[Any]] = app[REQUESTS_KEY]
        background: set[asyncio.Task[Any]] = app[STREAMS_KEY]  # relays, and background runs (no request)
        grace = config.gateway.shutdown_grace_s
        deadline = time.monotonic() + grace
        if running or background:
            log.info("waiting up to %.0f s for %d requests in flight", grace, len(running | background))
        while (running or background) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        app[SHUTDOWN_KEY].set()
        for task in list(running | background):
            task.cancel()
        ends = time.monotonic() + SHUTDOWN_ANSWER_S
        while (running or background) and time.monotonic() < ends:
            await asyncio.sleep(0.01)

    async def close_client(app: web.Application) -> None:
        await app[CLIENT_KEY].close()

    app.on_startup.append(start_client)
    app.on_shutdown.append(drain_requests)
    app.on_cleanup.append(close_client)
    app.router.add_post("/v1/responses", create_response, expect_handler=expect_continue)
    from ..chat_completions.route import chat_completions  # NeMo Gym's second route

    app.router.add_post("/v1/chat/completions", chat_completions, expect_handler=expect_continue)
    app.router.add_get("/v1/models", list_models, expect_handler=expect_continue)
    app.router.add_get("/health", health, expect_handler=expect_continue)
    if config.gateway.metrics:
        app.router.add_get("/metrics", metrics, expect_handler=expect_continue)
    if config.gateway.inspect or config.gateway.tracing:
        from ..inspect import install  # only then: nothing of it is imported, let alone run

        install(app, config, app[OBSERVERS_KEY], app[KEYS_KEY], app[SECRETS_KEY],
                {"/v1/responses": create_response, "/v1/chat/completions": chat_completions})
    return app


async def expect_continue(request: web.Request) -> Optional[web.StreamResponse]:
    """``Expect: 100-continue`` as aiohttp answers it; any other expectation is a 417 error object
    (aiohttp's own answer is text/plain, from before the middlewares)."""
    if request.headers.get("Expect", "").lower() != "100-continue":
        return error_response(417, "Only the expectation 100-continue is understood.", code="expectation_failed")
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer itself has not started
    return None
