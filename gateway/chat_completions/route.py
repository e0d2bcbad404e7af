"""The aiohttp handler of ``POST /v1/chat/completions`` (the IO shell around ``convert``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from .. import offload
from ..server.http import (CLIENT_KEY, CONFIG_KEY, LOG_FIELDS, REQUEST_ID, SETTINGS_KEY, error_response,
                           session_key, upstream_error_response)
from ..server.body import BodyError, read_body
from ..translate.errors import InvalidRequest
from ..upstream.client import UpstreamError, UpstreamHTTPError
from .convert import TokenError, client_answer, empty_answer, plan_upstream_body, synthesize_sse


def _decoded_and_planned(raw: bytes, settings: Any) -> tuple[Any, tuple[dict[str, Any], Optional[dict[str, Any]]]]:
    request_body = orjson.loads(raw)
    return request_body, plan_upstream_body(request_body, settings)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    config, settings, client = request.app[CONFIG_KEY], request.app[SETTINGS_KEY], request.app[CLIENT_KEY]
    gw, model = config.gateway, config.model_server
    try:
        raw = await read_body(request.content, request.headers.get("Content-Encoding", ""), request.content_length,
                              max_bytes=gw.max_request_bytes, max_compressed_bytes=gw.max_compressed_request_bytes)
    except BodyError as exc:
        return error_response(exc.status, exc.message, code=exc.code)
    except RequestPayloadError as exc:
        return error_response(400, f"The request body could not be read: {exc}.", code="invalid_body")
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
    last = body["messages"][-1]
    if not model.sequential_reasoning_allowed and last["role"] == "assistant" and not (
            last.get("content") or last.get("tool_calls")):
        # NeMo Gym's sequential_reasoning_allowed: false: no second reasoning turn; answered here.
        return await _answer(request, empty_answer(settings.model, int(time.time()), "content_filter"), stream,
                             include_usage)
    key = session_key(request, body.get("prompt_cache_key") if isinstance(body.get("prompt_cache_key"), str) else None)
    if model.forward_session_id_as_conversation_id and key:
        body["conversation_params"] = {"conversation_id": key}
    backend = client.choose(key)
    prompt = None
    if tokenize is not None:  # concurrently with the generation, as on /v1/responses
        prompt = asyncio.ensure_future(client.tokenize(backend.url, tokenize))
    try:
        capture: list[bytes] = []
        try:
            await client.complete_chat(orjson.dumps(body), backend, key, request[REQUEST_ID], capture)
        except UpstreamHTTPError as exc:
            if exc.is_context_overflow and not model.propagate_context_overflow_errors:
                return await _answer(request, empty_answer(settings.model, int(time.time()), "length"), stream,
                                     include_usage)
            return upstream_error_response(exc)
        except UpstreamError as exc:
            return upstream_error_response(exc)
        answer = orjson.loads(capture[0])
        needs_prompt = settings.return_token_id_information and answer.get("prompt_token_ids") is None
        prompt_ids = None
        if prompt is not None and needs_prompt:
            try:
                prompt_ids = await prompt
            except UpstreamError as exc:
                return upstream_error_response(exc)
        try:
            answer = client_answer(answer, body, settings, parse_think_tags=model.uses_reasoning_parser,
                                   prompt_token_ids=prompt_ids)
        except TokenError as exc:
            return error_response(502, f"{backend.url}: {exc}", type_="upstream_error", code="token_information_invalid")
        return await _answer(request, answer, stream, include_usage)
    finally:
        if prompt is not None and not prompt.done():
            prompt.cancel()


async def _answer(request: web.Request, answer: dict, stream: bool, include_usage: bool) -> web.StreamResponse:
    if not stream:
        return web.Response(body=orjson.dumps(answer), content_type="application/json")
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Request-Id": request[REQUEST_ID]})
    await response.prepare(request)
    await response.write(synthesize_sse(answer, include_usage))
    await response.write_eof()
    return response
