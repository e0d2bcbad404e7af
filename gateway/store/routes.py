"""HTTP routes of stored responses, as OpenAI defines them:

    GET    /v1/responses/{id}                 the Response (``?stream=true&starting_after=N``: its events)
    DELETE /v1/responses/{id}
    GET    /v1/responses/{id}/input_items     ``after``, ``before``, ``limit`` (1-100, 20), ``order`` (desc)
    POST   /v1/responses/{id}/cancel          background responses only

and the Conversations API:

    POST   /v1/conversations                  ``items`` (up to 20), ``metadata``
    GET    /v1/conversations/{id}
    POST   /v1/conversations/{id}             ``metadata``
    DELETE /v1/conversations/{id}
    POST   /v1/conversations/{id}/items       ``items`` (up to 20)
    GET    /v1/conversations/{id}/items       ``after``, ``limit`` (1-100, 20), ``order`` (desc)
    GET    /v1/conversations/{id}/items/{item_id}
    DELETE /v1/conversations/{id}/items/{item_id}
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import orjson
from aiohttp import web

from ..config import Config
from ..server.http import STORE_KEY, invalid_request_response
from ..translate.errors import InvalidRequest
from .items import normalize_input, page
from .service import StoreService, conversation_json, not_found, open_store

MAX_ITEMS_PER_CALL = 20  # OpenAI's bound on items added at once
MAX_METADATA_KEYS = 16
_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(body: Any, status: int = 200) -> web.Response:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return web.Response(body=data, status=status, content_type="application/json")


def _errors(handler: Handler) -> Handler:
    """InvalidRequest (and its 404 / 503 kinds) become OpenAI-style errors."""
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


def _page(request: web.Request, items: list[dict[str, Any]], what: str, where: str) -> web.Response:
    """OpenAI's cursor list of ``items`` as the query asks: ``after``, ``before``, ``limit``, ``order``."""
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"Invalid 'order': expected 'asc' or 'desc', got {order!r}.", param="order")
    try:
        body = page(items, after=request.query.get("after"), before=request.query.get("before"),
                    limit=_int(request, "limit", 20, 1, 100), order=order)
    except KeyError as exc:
        name = exc.args[0]
        raise InvalidRequest(f"Invalid '{name}': no {what} with id {request.query[name]!r} in {where}.",
                             param=name) from None
    return _json(body)


async def _body(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read() or b"{}")
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}.", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_type")
    return body


def _metadata(body: dict[str, Any]) -> dict[str, str]:
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA_KEYS or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in metadata.items()):
        raise InvalidRequest("Invalid 'metadata': at most 16 string keys (64 characters) with string values "
                             "(512 characters).", param="metadata")
    return metadata


def _items(body: dict[str, Any], required: bool) -> list[dict[str, Any]]:
    items = body.get("items")
    if items is None and not required:
        return []
    if not isinstance(items, list) or (required and not items) or len(items) > MAX_ITEMS_PER_CALL:
        raise InvalidRequest(f"Invalid 'items': expected a list of 1 to {MAX_ITEMS_PER_CALL} items.", param="items")
    for i, item in enumerate(items):
        kind = item.get("type", "message" if isinstance(item, dict) and "role" in item else None) \
            if isinstance(item, dict) else None
        if kind not in _ITEM_TYPES:
            raise InvalidRequest(f"Invalid 'items[{i}]': expected an item of type {', '.join(_ITEM_TYPES)}.",
                                 param=f"items[{i}]")
    try:
        normalized = normalize_input(items)
        orjson.dumps(normalized)
    except orjson.JSONEncodeError as exc:
        raise InvalidRequest(f"Invalid 'items': {exc}.", param="items") from None
    return normalized


def add_routes(app: web.Application, service: StoreService) -> None:
    @_errors
    async def retrieve(request: web.Request) -> web.StreamResponse:
        owner, rid = service.owner(request), request.match_info["response_id"]
        record = await service.get(owner, rid)
        if _bool(request, "stream"):
            if record.terminal and record.last_seq < 0:
                raise InvalidRequest(f"Response '{rid}' was created without streaming: it has no events to stream. "
                                     "Retrieve it without stream=true.", param="stream")
            after = _int(request, "starting_after", -1, -1, 2**62)
            return await service.follow(request, owner, rid, after)
        return _json(await service.snapshot(record))

    @_errors
    async def delete(request: web.Request) -> web.StreamResponse:
        rid = request.match_info["response_id"]
        await service.delete(service.owner(request), rid)
        return _json({"id": rid, "object": "response.deleted", "deleted": True})

    @_errors
    async def input_items(request: web.Request) -> web.StreamResponse:
        record = await service.get(service.owner(request), request.match_info["response_id"])
        return _page(request, await service.input_items(record), "input item", "this response")

    @_errors
    async def cancel(request: web.Request) -> web.StreamResponse:
        record = await service.cancel(service.owner(request), request.match_info["response_id"])
        return _json(await service.snapshot(record))

    # --- conversations -----------------------------------------------------------------------------

    @_errors
    async def create_conversation(request: web.Request) -> web.StreamResponse:
        body = await _body(request)
        return _json(await service.create_conversation(service.owner(request), _metadata(body), _items(body, False)))

    @_errors
    async def get_conversation(request: web.Request) -> web.StreamResponse:
        found = await service.conversation(service.owner(request), request.match_info["conversation_id"])
        return _json(conversation_json(found))

    @_errors
    async def update_conversation(request: web.Request) -> web.StreamResponse:
        owner, cid = service.owner(request), request.match_info["conversation_id"]
        metadata = _metadata(await _body(request))
        if not await service._call(service.store.update_conversation(owner, cid, orjson.dumps(metadata))):
            raise not_found("Conversation", cid)
        return _json(conversation_json(await service.conversation(owner, cid)))

    @_errors
    async def delete_conversation(request: web.Request) -> web.StreamResponse:
        owner, cid = service.owner(request), request.match_info["conversation_id"]
        if not await service._call(service.store.delete_conversation(owner, cid)):
            raise not_found("Conversation", cid)
        return _json({"id": cid, "object": "conversation.deleted", "deleted": True})

    @_errors
    async def add_items(request: web.Request) -> web.StreamResponse:
        owner, cid = service.owner(request), request.match_info["conversation_id"]
        items = _items(await _body(request), True)
        if not await service._call(service.store.add_items(owner, cid, [(i["id"], orjson.dumps(i)) for i in items])):
            raise not_found("Conversation", cid)
        return _json({"object": "list", "data": items, "first_id": items[0]["id"], "last_id": items[-1]["id"],
                      "has_more": False})

    @_errors
    async def list_items(request: web.Request) -> web.StreamResponse:
        items = await service.conversation_items(service.owner(request), request.match_info["conversation_id"])
        return _page(request, items, "item", "this conversation")

    @_errors
    async def get_item(request: web.Request) -> web.StreamResponse:
        item_id = request.match_info["item_id"]
        items = await service.conversation_items(service.owner(request), request.match_info["conversation_id"])
        for item in items:
            if item.get("id") == item_id:
                return _json(item)
        raise not_found("Item", item_id)

    @_errors
    async def delete_item(request: web.Request) -> web.StreamResponse:
        owner, cid, item_id = service.owner(request), request.match_info["conversation_id"], request.match_info["item_id"]
        found = await service.conversation(owner, cid)
        if not await service._call(service.store.delete_item(owner, cid, item_id)):
            raise not_found("Item", item_id)
        return _json(conversation_json(found))

    app.router.add_post("/v1/conversations", create_conversation)
    app.router.add_get("/v1/conversations/{conversation_id}", get_conversation)
    app.router.add_post("/v1/conversations/{conversation_id}", update_conversation)
    app.router.add_delete("/v1/conversations/{conversation_id}", delete_conversation)
    app.router.add_post("/v1/conversations/{conversation_id}/items", add_items)
    app.router.add_get("/v1/conversations/{conversation_id}/items", list_items)
    app.router.add_get("/v1/conversations/{conversation_id}/items/{item_id}", get_item)
    app.router.add_delete("/v1/conversations/{conversation_id}/items/{item_id}", delete_item)
    app.router.add_get("/v1/responses/{response_id}", retrieve)
    app.router.add_delete("/v1/responses/{response_id}", delete)
    app.router.add_get("/v1/responses/{response_id}/input_items", input_items)
    app.router.add_post("/v1/responses/{response_id}/cancel", cancel)


def install_store(app: web.Application, config: Config) -> StoreService:
    """Wire the store into the app: the service, its observer, its routes, its lifecycle."""
    service = StoreService(config, open_store(config))
    app[STORE_KEY] = service
    add_routes(app, service)

    async def start(app: web.Application) -> None:
        await service.start()

    async def close(app: web.Application) -> None:
        await service.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)
    return service
