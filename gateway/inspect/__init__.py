"""The inspector: every request live at ``GET /inspect`` (see README, "Inspector"), and
OpenTelemetry traces of the same requests. Both watch requests through ``gateway.observe`` and are
installed by ``install`` when the config turns them on; otherwise nothing of this package runs.

- ``buffer``: the records (a bounded ring buffer) and the viewers watching them;
- ``routes``: the page, its feed (SSE), the JSON API and replay, behind the inspector's own guard;
- ``otel``: spans per request and per upstream attempt (the optional ``otel`` extra);
- ``static/``: the page itself, plain HTML, CSS and JavaScript (nothing to build, nothing fetched).
"""

from __future__ import annotations

from typing import Any, Mapping

from aiohttp import web

from ..config import Config, _display_url
from ..redact import Secrets
from ..server.http import session_cookie_name
from .buffer import Inspector, nemo_cookie_session
from .routes import INSPECTOR_KEY, Handler, install_routes

TRACING_KEY = web.AppKey("tracing", object)


def install(app: web.Application, config: Config, observers: list[Any], client_keys: list[bytes],
            secrets: Secrets, handlers: Mapping[str, Handler]) -> None:
    """Adds the inspector and/or tracing to ``app``, as ``config.gateway`` says; ``observers`` is
    the app's observer list, ``client_keys`` the clients' API keys, ``secrets`` what to mask,
    ``handlers`` the handlers of ``/v1/responses`` and ``/v1/chat/completions`` by route (they answer
    the inspector's replays)."""
    gw = config.gateway
    if gw.inspect:
        if gw.inspect_admin_key and gw.inspect_admin_key.encode() in client_keys:
            raise ValueError("gateway.inspect_admin_key must differ from every client API key")
        inspector = Inspector(gw.inspect_buffer, gw.session_header, secrets, gw.inspect_buffer_mb << 20,
                              nemo_cookie_session(session_cookie_name(config)))
        observers.append(inspector.observe)
        install_routes(app, inspector, gw.inspect_admin_key, handlers)
    if gw.tracing:
        from .otel import Tracing, default_tracer_provider

        tracing = Tracing(default_tracer_provider(), gw.session_header, _display_url)
        observers.append(tracing)
        app[TRACING_KEY] = tracing

        async def flush(app: web.Application) -> None:
            tracing.shutdown()

        app.on_cleanup.append(flush)


__all__ = ["INSPECTOR_KEY", "TRACING_KEY", "Inspector", "install"]
