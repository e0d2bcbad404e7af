"""The aiohttp application: routes, the SSE shell around the state machine, error mapping.

The handler decides nothing about events: it feeds the state machine what the upstream sends and
writes what the machine returns, one socket write per upstream chunk.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any, Optional

import msgspec
import orjson
from aiohttp import web

from ..config import Config
from ..schema.responses import Response
from ..translate.errors import InvalidRequest
from ..translate.request import ChatPlan, ConversionSettings, decode_request, plan_chat_request
from ..translate.stream import ResponseStateMachine, StreamOptions
from ..upstream.client import (
    ChatStream,
    Timeouts,
    UpstreamError,
    UpstreamHTTPError,
    VLLMClient,
)
from .sse import encode_events

log = logging.getLogger("gateway.server")
access_log = logging.getLogger("gateway.access")

CONFIG_KEY = web.AppKey("config", Config)
CLIENT_KEY = web.AppKey("client", VLLMClient)
SETTINGS_KEY = web.AppKey("settings", ConversionSettings)

SSE_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # nginx and friends: do not buffer the stream
}

_response_encoder = msgspec.json.Encoder()


# --- errors ---------------------------------------------------------------------------------------


def error_response(
    status: int, message: str, *, type_: str = "invalid_request_error", param: Optional[str] = None,
    code: Optional[str] = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def _upstream_error_response(exc: UpstreamError) -> web.Response:
    type_ = "invalid_request_error" if 400 <= exc.status < 500 and exc.status != 429 else "upstream_error"
    return error_response(exc.status, exc.message, type_=type_, code=exc.code)


@web.middleware
async def errors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every failure becomes an OpenAI-style error object: never a traceback, never HTML."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPRequestEntityTooLarge as exc:
        status = 413
        return error_response(413, f"The request body is too large: {exc.text}", code="request_too_large")
    except web.HTTPException as exc:
        status = exc.status
        if exc.status < 400:
            raise
        reason = exc.reason or "error"
        return error_response(exc.status, f"{reason}: {request.method} {request.path}", code=reason.lower().replace(" ", "_"))
    except asyncio.CancelledError:
        status = 499  # the client went away
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "The gateway failed unexpectedly; the error has been logged.", type_="server_error",
                              code="internal_error")
    finally:
        access_log.info("%s %s %d %.1fms", request.method, request.path, status, (time.perf_counter() - started) * 1000)


# --- routes ---------------------------------------------------------------------------------------


async def create_response(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    try:
        raw = await request.read()
        req = decode_request(raw)
        plan = plan_chat_request(req, settings, response_id=f"resp_{uuid.uuid4().hex}", created_at=int(time.time()))
    except InvalidRequest as exc:
        return error_response(400, exc.message, param=exc.param, code=exc.code)
    client = request.app[CLIENT_KEY]
    if plan.stream:
        return await _stream(request, client, plan)
    return await _complete(client, plan)


class PromptTokens:
    """Prompt token ids for token tracking: ``/tokenize`` runs concurrently with the generation,
    so it adds no latency; it is skipped when vLLM sends the ids inline."""

    def __init__(self, client: VLLMClient, base: str, plan: ChatPlan) -> None:
        self._client, self._base, self._plan = client, base, plan
        self._task: Optional[asyncio.Task[list[int]]] = None
        if plan.track_tokens and plan.tokenize is not None:
            self._task = asyncio.ensure_future(client.tokenize(base, plan.tokenize))

    async def get(self, machine: ResponseStateMachine) -> Optional[list[int]]:
        tokens = machine.tokens
        if tokens is None or tokens.bundle is not None or tokens.inline_prompt_ids is not None:
            return None  # not needed
        if self._task is None:  # inline ids were asked for but did not come: fall back to /tokenize
            from ..translate.tokens import tokenize_body

            self._task = asyncio.ensure_future(self._client.tokenize(self._base, tokenize_body(self._plan.body)))
        return await self._task

    def cancel(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
        elif self._task is not None and not self._task.cancelled():
            self._task.exception()  # retrieved, so asyncio does not log it as never retrieved


def _machine(plan: ChatPlan) -> ResponseStateMachine:
    return ResponseStateMachine(plan.response, plan.options, track_tokens=plan.track_tokens,
                                text_logprobs=plan.text_logprobs)


async def _complete(client: VLLMClient, plan: ChatPlan) -> web.Response:
    machine = _machine(plan)
    machine.start()
    base = client.pick()
    prompt = PromptTokens(client, base, plan)
    try:
        try:
            completion = await client.complete_chat(plan.body, base)
        except UpstreamHTTPError as exc:
            if not exc.is_context_overflow:
                return _upstream_error_response(exc)
            machine.context_overflow(exc.upstream_message)
            return _json(machine.final)
        except UpstreamError as exc:
            return _upstream_error_response(exc)
        machine.feed_completion(completion)
        if not machine.done:
            try:
                prompt_ids = await prompt.get(machine)
            except UpstreamError as exc:
                return _upstream_error_response(exc)
            machine.finish(prompt_ids)
        final = machine.final
        if final is not None and final.status == "failed" and final.error is not None:
            # Without a stream there is no response.failed to carry it: an HTTP error says it.
            return error_response(502, final.error.message, type_="upstream_error", code=final.error.code)
        return _json(final)
    finally:
        prompt.cancel()


async def _stream(request: web.Request, client: VLLMClient, plan: ChatPlan) -> web.StreamResponse:
    machine = _machine(plan)
    overflow: Optional[str] = None
    upstream: Optional[ChatStream] = None
    base = client.pick()
    prompt = PromptTokens(client, base, plan)
    try:
        # Open the upstream first: a failure before any byte reaches the client is an HTTP error.
        try:
            upstream = await client.open_chat_stream(plan.body, base)
        except UpstreamHTTPError as exc:
            if not exc.is_context_overflow:
                return _upstream_error_response(exc)
            overflow = exc.upstream_message
        except UpstreamError as exc:
            return _upstream_error_response(exc)

        response = web.StreamResponse(headers=SSE_HEADERS)
        await response.prepare(request)
        await response.write(encode_events(machine.start()))
        if overflow is not None:
            await response.write(encode_events(machine.context_overflow(overflow)))
        else:
            assert upstream is not None
            await _relay(upstream, machine, response, prompt)
        await response.write_eof()
        return response
    finally:
        prompt.cancel()
        if upstream is not None:
            upstream.close()  # on any exit, including a client that left: vLLM stops generating


async def _relay(
    upstream: ChatStream, machine: ResponseStateMachine, response: web.StreamResponse, prompt: PromptTokens
) -> None:
    try:
        async for chunk in upstream:
            if chunk is None:  # [DONE]
                break
            events = machine.feed(chunk)
            if events:
                await response.write(encode_events(events))
            if machine.done:
                return
        if machine.finish_reason is None:
            events = machine.finish()  # fails: the stream ended without finishing
        else:
            events = machine.finish(await prompt.get(machine))
    except UpstreamError as exc:
        events = machine.fail(exc.code, exc.message)
    if events:
        await response.write(encode_events(events))


def _json(response: Optional[Response]) -> web.Response:
    assert response is not None
    return web.Response(body=_response_encoder.encode(response), content_type="application/json")


async def list_models(request: web.Request) -> web.Response:
    try:
        models = await request.app[CLIENT_KEY].models()
    except UpstreamError as exc:
        return _upstream_error_response(exc)
    return web.Response(body=orjson.dumps(models), content_type="application/json")


async def health(request: web.Request) -> web.Response:
    upstreams = await request.app[CLIENT_KEY].health()
    ok = any(u["ok"] for u in upstreams)
    body = {"status": "ok" if ok else "unavailable", "upstreams": upstreams}
    return web.Response(status=200 if ok else 503, body=orjson.dumps(body), content_type="application/json")


# --- the application ------------------------------------------------------------------------------


def conversion_settings(config: Config) -> ConversionSettings:
    model, gw = config.model_server, config.gateway
    return ConversionSettings(
        model=model.model,
        reasoning_history=gw.reasoning_history,
        reasoning_field=gw.reasoning_field,
        replace_developer_role_with_system=model.replace_developer_role_with_system,
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
        ),
    )


def create_app(config: Config, client: Optional[VLLMClient] = None) -> web.Application:
    app = web.Application(middlewares=[errors_middleware], client_max_size=config.gateway.max_request_bytes)
    app[CONFIG_KEY] = config
    app[SETTINGS_KEY] = conversion_settings(config)
    model = config.model_server
    app[CLIENT_KEY] = client or VLLMClient(
        model.base_url,
        api_key=model.api_key,
        default_headers=model.default_headers,
        timeouts=Timeouts(connect=config.gateway.connect_timeout_s, total=config.gateway.request_timeout_s),
        flavour=config.gateway.upstream_flavour,
    )

    async def start_client(app: web.Application) -> None:
        await app[CLIENT_KEY].start()

    async def close_client(app: web.Application) -> None:
        await app[CLIENT_KEY].close()

    app.on_startup.append(start_client)
    app.on_cleanup.append(close_client)
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    return app
