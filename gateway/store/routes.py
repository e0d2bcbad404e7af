"""HTTP routes of stored responses, as OpenAI defines them:

    GET    /v1/responses/{id}                 the Response (``?stream=true&starting_after=N``: its events)
    DELETE /v1/responses/{id}
    GET    /v1/responses/{id}/input_items     ``after``, ``before``, ``limit`` (1-100, 20), ``order`` (desc)
    POST   /v1/responses/{id}/cancel          background responses only
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from ..translate.errors import InvalidRequest
from .items import page
from .service import StoreService

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200) -> web.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return web.Response(body=data, status=status, content_type="application/json")


def _errors(handler: Handler) -> Handler:
    """InvalidRequest (and its 404 / 503 kinds) become OpenAI-style errors."""
    from ..server.app import invalid_request_response

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except InvalidRequest as exc:
            return invalid_request_response(exc)

    return wrapped


def _bool(request: web.Request, name: str) -> bool:
    value = request.query.get(name, "false").lower()
    if value not in ("true", "false", "1", "0"):
        raise InvalidRequest(f"Invalid '{name}': expected true or false, got {value!r}.", param=name)
    return value in ("true", "1")


def _int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"Invalid '{name}': expected an integer, got {raw!r}.", param=name) from None
    if not low <= value <= high:
        raise InvalidRequest(f"Invalid '{name}': expected a value from {low} to {high}, got {value}.", param=name)
    return value


def add_routes(app: web.Application, service: StoreService) -> None:
    @_errors
    async def retrieve(request: web.Request) -> web.StreamResponse:
        owner, rid = service.owner(request), request.match_info["response_id"]
        record = await service.get(owner, rid)
        if _bool(request, "stream"):
            after = _int(request, "starting_after", -1, -1, 2**62)
            return await service.follow(request, owner, rid, after)
        return _json(service.snapshot(record))

    @_errors
    async def delete(request: web.Request) -> web.StreamResponse:
        rid = request.match_info["response_id"]
        await service.delete(service.owner(request), rid)
        return _json({"id": rid, "object": "response.deleted", "deleted": True})

    @_errors
    async def input_items(request: web.Request) -> web.StreamResponse:
        record = await service.get(service.owner(request), request.match_info["response_id"])
        order = request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise InvalidRequest(f"Invalid 'order': expected 'asc' or 'desc', got {order!r}.", param="order")
        limit = _int(request, "limit", 20, 1, 100)
        items = await service.input_items(record)
        try:
            body = page(items, after=request.query.get("after"), before=request.query.get("before"), limit=limit,
                        order=order)
        except KeyError as exc:
            name = exc.args[0]
            raise InvalidRequest(f"Invalid '{name}': no input item with id {request.query[name]!r} in this response.",
                                 param=name) from None
        return _json(body)

    @_errors
    async def cancel(request: web.Request) -> web.StreamResponse:
        record = await service.cancel(service.owner(request), request.match_info["response_id"])
        return _json(service.snapshot(record))

    app.router.add_get("/v1/responses/{response_id}", retrieve)
    app.router.add_delete("/v1/responses/{response_id}", delete)
    app.router.add_get("/v1/responses/{response_id}/input_items", input_items)
    app.router.add_post("/v1/responses/{response_id}/cancel", cancel)
