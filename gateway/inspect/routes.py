"""The inspector's routes: the page, its static files, the live feed (SSE), the JSON API, replay.

Access: with ``gateway.inspect_admin_key`` set, every route wants that key — as a Bearer token, as
the password of HTTP Basic auth (the browser asks for it), or through the cookie that
``/inspect?key=...`` sets (then the address bar loses the key). Without an admin key only loopback
clients get in, and only under a loopback host name (so a web page whose name resolves to 127.0.0.1
cannot read it through the victim's browser). Clients' API keys never open the inspector.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
from importlib import resources
from typing import Awaitable, Callable, Mapping, Optional

import orjson
from aiohttp import web

from ..server.http import error_response
from .buffer import Inspector, encode_record, replay_route

INSPECTOR_KEY = web.AppKey("inspector", Inspector)
COOKIE = "gateway_inspect"
_KEEPALIVE = b": keepalive\n\n"
_FEED_KEEPALIVE_S = 15.0
# A viewer gets what happened in the last 50 ms in one write: a person cannot tell, and the gateway
# writes to it at most 20 times a second, however fast the streams it watches go.
_FEED_BATCH_S = 0.05

# The page may load only what the gateway itself serves: no CDN, no inline script, no framing.
_SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_STATIC_TYPES = {"inspect.js": "text/javascript", "inspect.css": "text/css", "favicon.svg": "image/svg+xml"}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, code: str, headers: Optional[dict[str, str]] = None) -> web.Response:
    type_ = "authentication_error" if status == 401 else "invalid_request_error"
    return error_response(status, message, type_=type_, code=code, headers=headers)


def _is_loopback(host: Optional[str]) -> bool:
    if not host:
        return False
    host = host.strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Guard:
    """Who may use the inspector (see the module docstring)."""

    def __init__(self, admin_key: Optional[str]) -> None:
        self.admin_key = admin_key.encode() if admin_key else None
        # What the login cookie holds: a MAC of the key under a secret of this process, so the
        # cookie does not carry the key and dies with the process.
        self._cookie_value = (hmac.new(os.urandom(32), self.admin_key, hashlib.sha256).hexdigest()
                              if self.admin_key else None)

    def _key_matches(self, given: bytes) -> bool:
        assert self.admin_key is not None
        return hmac.compare_digest(given, self.admin_key)

    def allowed(self, request: web.Request) -> bool:
        if self.admin_key is None:
            return _is_loopback(request.remote) and _is_loopback(request.url.host)
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer":
            return self._key_matches(value.strip().encode())
        if scheme.lower() == "basic":
            try:
                _user, _, password = base64.b64decode(value.strip(), validate=True).partition(b":")
            except (binascii.Error, ValueError):
                return False
            return self._key_matches(password)
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and self._cookie_value is not None and hmac.compare_digest(
            cookie.encode(), self._cookie_value.encode())

    def denied(self) -> web.Response:
        if self.admin_key is None:
            return _error(401, "The inspector answers loopback clients only (no inspect_admin_key is configured).",
                          "inspector_loopback_only")
        return _error(401, "The inspector needs its admin key (gateway.inspect_admin_key): as a Bearer token, "
                           "as the Basic auth password, or once as /inspect?key=...",
                      "invalid_admin_key", headers={"WWW-Authenticate": 'Basic realm="gateway inspector"'})

    def __call__(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if not self.allowed(request):
                return self.denied()
            return await handler(request)

        return guarded

    async def login(self, request: web.Request) -> Optional[web.StreamResponse]:
        """``/inspect?key=...``: the right key sets the cookie and sends the browser on without it."""
        given = request.query.get("key")
        if given is None or self.admin_key is None:
            return None
        if not self._key_matches(given.encode()):
            return self.denied()
        response = web.Response(status=303, headers={"Location": "/inspect", "Referrer-Policy": "no-referrer"})
        assert self._cookie_value is not None
        response.set_cookie(COOKIE, self._cookie_value, path="/inspect", httponly=True, samesite="Strict")
        return response


def _static_files() -> dict[str, bytes]:
    folder = resources.files("gateway.inspect") / "static"
    return {name: (folder / name).read_bytes() for name in ("index.html", *_STATIC_TYPES)}


def install_routes(app: web.Application, inspector: Inspector, admin_key: Optional[str],
                   handlers: Mapping[str, Handler]) -> None:
    """``handlers``: route -> its handler, for replays (``/v1/responses``, ``/v1/chat/completions``)."""
    guard = Guard(admin_key)
    files = _static_files()
    app[INSPECTOR_KEY] = inspector

    async def page(request: web.Request) -> web.StreamResponse:
        login = await guard.login(request)
        if login is not None:
            return login
        if not guard.allowed(request):
            return guard.denied()
        return web.Response(body=files["index.html"], content_type="text/html", charset="utf-8",
                            headers=_SECURITY_HEADERS)

    async def static(request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name not in _STATIC_TYPES:
            raise web.HTTPNotFound()
        return web.Response(body=files[name], headers={**_SECURITY_HEADERS, "Content-Type": _STATIC_TYPES[name]})

    async def list_requests(request: web.Request) -> web.StreamResponse:
        """Summaries, newest last; ``status``, ``model``, ``error`` (a code, or ``any``) filter."""
        wanted = {k: request.query[k] for k in ("status", "model", "error", "session") if request.query.get(k)}
        shown = []
        for record in [*inspector.records.values()]:
            summary = record.summary()
            if "error" in wanted and wanted["error"] == "any":
                if not summary["error"]:
                    continue
            elif any(str(summary.get(key)) != value for key, value in wanted.items()):
                continue
            shown.append(summary)
        return web.Response(body=inspector.mask(orjson.dumps(shown)), content_type="application/json",
                            headers=_SECURITY_HEADERS)

    async def export(request: web.Request) -> web.StreamResponse:
        record = inspector.get(request.match_info["id"])
        if record is None:
            return _error(404, f"No request {request.match_info['id']!r} in the inspector's buffer "
                               f"(it keeps the last {inspector.size}).", "not_found")
        headers = dict(_SECURITY_HEADERS)
        if request.query.get("download"):
            headers["Content-Disposition"] = f'attachment; filename="{record.id}.json"'
        return web.Response(body=inspector.mask(encode_record(record)), content_type="application/json",
                            headers=headers)

    async def feed(request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: ``list`` (all summaries), then ``summary`` per change; with
        ``?watch=<request id>``, ``detail`` (that request so far), then its ``entries`` as they come.
        ``overflow``: the viewer fell too far behind and must reconnect."""
        viewer = inspector.connect(request.query.get("watch"))
        try:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                                   "X-Accel-Buffering": "no", **_SECURITY_HEADERS})
            await response.prepare(request)
            while not viewer.closed:
                messages = viewer.take()
                if messages:
                    await response.write(inspector.encode(messages))
                if viewer.overflowed:
                    await response.write(b"event: overflow\ndata: {}\n\n")
                    break
                await viewer.wait(_FEED_KEEPALIVE_S)
                if not viewer.queue and not viewer.overflowed and not viewer.closed:
                    await response.write(_KEEPALIVE)
                elif not viewer.closed:
                    await asyncio.sleep(_FEED_BATCH_S)  # let more gather: one write for all of it
            return response
        except ConnectionResetError:
            raise asyncio.CancelledError from None
        finally:
            inspector.disconnect(viewer)

    async def replay(request: web.Request) -> web.StreamResponse:
        """The edited request, answered exactly as its route (``X-Inspector-Route``: /v1/responses,
        or /v1/chat/completions) would (it appears in the list as a replay of the original). The
        header check stops other sites' forms from sending one."""
        if request.headers.get("X-Inspector") != "replay":
            return _error(403, "A replay must carry the header X-Inspector: replay.", "missing_inspector_header")
        route = replay_route(request)
        handler = handlers.get(route)
        if handler is None:
            return _error(400, f"Cannot replay to {route!r}: replays go to {', '.join(handlers)}.", "unknown_route")
        return await handler(request)

    async def close_feeds(app: web.Application) -> None:
        inspector.close_viewers()

    app.router.add_get("/inspect", page)
    app.router.add_get("/inspect/static/{name}", guard(static))
    app.router.add_get("/inspect/api/requests", guard(list_requests))
    app.router.add_get("/inspect/api/requests/{id}", guard(export))
    app.router.add_get("/inspect/api/feed", guard(feed))
    app.router.add_post("/inspect/api/replay", guard(replay))
    app.on_shutdown.insert(0, close_feeds)


