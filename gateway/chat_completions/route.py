"""The aiohttp handler of ``POST /v1/chat/completions`` (the IO shell around ``convert``).

vLLM is asked without streaming (as Gym does); a streaming client gets the finished answer as
chunks. While vLLM computes, a streaming client gets an SSE comment (``: keepalive``) every
``gateway.keepalive_interval_s``, as Gym sends them, so that proxies do not drop a quiet
connection: after one interval without an answer the stream starts (an answer or a failure
before that is an ordinary HTTP answer), and a failure after it started is an ``event: error``
frame carrying the error object, which Chat Completions clients raise (the openai SDK does).

The request is seen by the app's observers (the inspector, traces; ``gateway/observe.py``) and
written to the transport log, with its tokens in the metrics and its log line, and a graceful
shutdown waits for it, as on /v1/responses. The response store keeps Responses only: chat
completions are not stored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Optional, Union

import orjson
from aiohttp import web

from .. import jsonbytes, offload
from ..observe import Outcome, RequestObserver
from ..server.http import (CLIENT_KEY, CONFIG_KEY, LOG_FIELDS, METRICS_KEY, REQUEST_ID, SECRETS_KEY,
                           SETTINGS_KEY, SHUTDOWN_KEY, SSE_HEADERS, TRANSPORT_KEY, error_response,
                           session_key, shutting_down_response, upstream_error_response, watched_post)
from ..server.observability import nemo_gym_log_context
from ..server.sse import KEEPALIVE
from ..translate.errors import InvalidRequest
from ..upstream.client import UpstreamError, UpstreamHTTPError
from .convert import TokenError, client_answer, empty_answer, plan_upstream_body, synthesize_sse

log = logging.getLogger("gateway.chat_completions")

# What the generation gives: the client's answer (a chat.completion), or an HTTP error to answer.
Result = Union[dict[str, Any], web.Response]


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Known while in flight, for a graceful shutdown, and watched, as /v1/responses."""
    return await watched_post(request, lambda request, raw, observer, outcome:
                              _serve(request, raw, Call(request, observer, outcome)))


class Call:
    """One chat completion: what its observer is told, and its log line, metrics and transport
    log entry (recorded once, at the end)."""

    def __init__(self, request: web.Request, observer: Optional[RequestObserver], outcome: Optional[Outcome]) -> None:
        self.request = request
        self.observer = observer
        self.outcome = outcome
        self.started = time.perf_counter()
        self.body: Optional[dict[str, Any]] = None  # what went to vLLM
        self.server: Optional[str] = None
        self.capture: list[bytes] = []  # vLLM's answer as it came (its fields beyond the schema too)
        self.error: Optional[UpstreamError] = None
        self.answer: Optional[dict[str, Any]] = None  # what the client got

    def sent(self, data: bytes) -> None:
        if self.observer is not None:
            self.observer.sent(data)

    async def ending(self, data: bytes) -> None:
        self.sent(data)
        if self.observer is not None:
            await self.observer.ending()

    def answered(self, answer: dict[str, Any]) -> None:
        self.answer = answer
        choices = answer.get("choices") or [{}]
        if self.outcome is not None:
            self.outcome.completion, self.outcome.finish_reason = answer, choices[0].get("finish_reason")

    def failed_in_stream(self, error: dict[str, Any]) -> None:
        if self.outcome is not None:
            self.outcome.error = error

    def done(self) -> None:
        try:
            self._record()
        except Exception:  # bookkeeping must never turn an answered request into an error
            log.exception("could not record request %s", self.request[REQUEST_ID])

    def _record(self) -> None:
        fields, metrics = self.request[LOG_FIELDS], self.request.app[METRICS_KEY]
        fields["upstream"] = self.server
        if self.error is not None:
            fields["error_code"] = self.error.code
        usage = (self.answer or {}).get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
            fields["input_tokens"], fields["output_tokens"] = usage["prompt_tokens"], usage.get("completion_tokens")
            metrics.input_tokens.inc(max(0, usage["prompt_tokens"]))
            metrics.output_tokens.inc(max(0, usage.get("completion_tokens") or 0))
        transport = self.request.app[TRANSPORT_KEY]
        if transport is not None and self.server is not None and self.body is not None:
            if isinstance(self.error, UpstreamHTTPError):
                status, body = self.error.upstream_status, self.error.body
            else:
                status, body = 200, b"".join(self.capture)
            transport.write(self.request[REQUEST_ID], self.server, self.body, status, body,
                            self.error.message if self.error else None,
                            context=nemo_gym_log_context(self.request.headers),
                            elapsed_s=time.perf_counter() - self.started)


def _decoded_and_planned(raw: bytes, settings: Any) -> tuple[Any, tuple[dict[str, Any], Optional[dict[str, Any]]]]:
    request_body = orjson.loads(raw)
    return request_body, plan_upstream_body(request_body, settings)


async def _serve(request: web.Request, raw: bytes, call: Call) -> web.StreamResponse:
    settings, model = request.app[SETTINGS_KEY], request.app[CONFIG_KEY].model_server
    try:
        # a large body is decoded and converted off the event loop (gateway/offload.py)
        request_body, (body, tokenize) = await offload.run(offload.is_large(raw), _decoded_and_planned, raw, settings)
        stream = isinstance(request_body, dict) and bool(request_body.get("stream"))
        options = request_body.get("stream_options") if isinstance(request_body, dict) else None
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
    except orjson.JSONDecodeError as exc:
        return error_response(400, f"We could not parse the JSON body of your request: {exc}.", code="invalid_json")
    except InvalidRequest as exc:
        return error_response(exc.status, exc.message, param=exc.param, code=exc.code)
    request[LOG_FIELDS].update(model=settings.model, stream=stream)
    key = session_key(request, body.get("prompt_cache_key") if isinstance(body.get("prompt_cache_key"), str) else None)
    if model.forward_session_id_as_conversation_id and key:
        body["conversation_params"] = {"conversation_id": key}
    payload = jsonbytes.dumps(body)  # kept for the request's whole life
    if call.observer is not None:
        call.observer.chat_planned(body, payload, stream)
    try:
        last = body["messages"][-1]
        if not model.sequential_reasoning_allowed and last["role"] == "assistant" and not (
                last.get("content") or last.get("tool_calls")):
            # NeMo Gym's sequential_reasoning_allowed: false: no second reasoning turn; answered here.
            answer = empty_answer(settings.model, int(time.time()), "content_filter")
            return await (_stream(request, _ready(answer), include_usage, call) if stream else _json(answer, call))
        call.body = body
        generation = _generate(request, body, payload, tokenize, key, call)
        if stream:
            return await _stream(request, generation, include_usage, call)
        result = await generation
        return result if isinstance(result, web.Response) else await _json(result, call)
    finally:
        call.done()


async def _ready(answer: dict[str, Any]) -> Result:
    return answer


async def _generate(request: web.Request, body: dict[str, Any], payload: bytes, tokenize: Optional[dict[str, Any]],
                    key: Optional[str], call: Call) -> Result:
    """Ask vLLM (and /tokenize, concurrently, when the prompt's token ids come from there)."""
    settings, client = request.app[SETTINGS_KEY], request.app[CLIENT_KEY]
    model = request.app[CONFIG_KEY].model_server
    backend = client.choose(key)
    call.server = backend.url
    prompt = asyncio.ensure_future(client.tokenize(backend.url, tokenize)) if tokenize is not None else None
    try:
        try:
            completion = await client.complete_chat(payload, backend, key, request[REQUEST_ID], call.capture,
                                                    call.observer)
        except UpstreamHTTPError as exc:
            call.error = exc
            if exc.is_context_overflow and not model.propagate_context_overflow_errors:
                return empty_answer(settings.model, int(time.time()), "length")
            return upstream_error_response(exc)
        except UpstreamError as exc:
            call.error = exc
            return upstream_error_response(exc)
        if call.observer is not None:
            call.observer.received([completion])
        answer = orjson.loads(call.capture[-1])
        needs_prompt = settings.return_token_id_information and answer.get("prompt_token_ids") is None
        prompt_ids = None
        if prompt is not None and needs_prompt:
            try:
                prompt_ids = await prompt
            except UpstreamError as exc:
                call.error = exc
                return upstream_error_response(exc)
        try:
            return client_answer(answer, body, settings, parse_think_tags=model.uses_reasoning_parser,
                                 prompt_token_ids=prompt_ids)
        except TokenError as exc:
            return error_response(502, f"{backend.url}: {exc}", type_="upstream_error", code="token_information_invalid")
    finally:
        if prompt is not None and not prompt.done():
            prompt.cancel()


async def _json(answer: dict[str, Any], call: Call) -> web.Response:
    call.answered(answer)
    data = orjson.dumps(answer)
    await call.ending(data)
    return web.Response(body=data, content_type="application/json")


async def _stream(request: web.Request, generation: Any, include_usage: bool, call: Call) -> web.StreamResponse:
    """The answer as SSE chunks; keepalive comments while vLLM computes (see the module's doc)."""
    interval = request.app[CONFIG_KEY].gateway.keepalive_interval_s
    work: asyncio.Future[Result] = asyncio.ensure_future(generation)
    try:
        await asyncio.wait({work}, timeout=interval)
        if work.done() and isinstance(work.result(), web.Response):
            return work.result()  # failed before the stream started: an ordinary HTTP error
        response = web.StreamResponse(headers={**SSE_HEADERS, "X-Request-Id": request[REQUEST_ID]})
        await response.prepare(request)
        result: Optional[Result] = None
        while not work.done():
            call.sent(KEEPALIVE)
            await response.write(KEEPALIVE)
            try:
                await asyncio.wait({work}, timeout=interval)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not request.app[SHUTDOWN_KEY].is_set() or task is None:
                    raise  # the client left
                task.uncancel()  # the shutdown's grace period is over: the stream says so, and ends
                result = shutting_down_response()
                break
        if result is None:
            try:
                result = work.result()
            except Exception:
                log.exception("chat completion %s failed in the gateway", request[REQUEST_ID])
                result = error_response(500, "The gateway failed unexpectedly; the error has been logged.",
                                        type_="server_error", code="internal_error")
        if isinstance(result, web.Response):  # failed after the stream started: an error frame
            assert isinstance(result.body, bytes)
            call.failed_in_stream(orjson.loads(result.body)["error"])
            data = request.app[SECRETS_KEY].scrub_bytes(b"event: error\ndata: " + result.body + b"\n\n")
        else:
            call.answered(result)
            data = synthesize_sse(result, include_usage)
        await call.ending(data)
        await response.write(data)
        await response.write_eof()
        return response
    finally:
        if not work.done():
            work.cancel()  # the client left: the request to vLLM is closed, vLLM stops
