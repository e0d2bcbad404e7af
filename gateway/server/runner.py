"""Starting and stopping the server on a real socket (used by the CLI and by the tests)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Optional

from aiohttp import web

from ..config import Config
from ..upstream.client import VLLMClient
from .app import create_app

log = logging.getLogger("gateway.server")


async def start(config: Config, *, port: Optional[int] = None, client: Optional[VLLMClient] = None) -> web.AppRunner:
    """Start serving; returns the runner (``await runner.cleanup()`` stops it)."""
    app = create_app(config, client)
    # handler_cancellation: a client that disconnects cancels its handler at once, which closes
    # the upstream request even while vLLM is silent (aiohttp would otherwise notice only at the
    # next write).
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, config.gateway.host, config.gateway.port if port is None else port)
    await site.start()
    return runner


def bound_url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def serve_forever(config: Config) -> None:
    runner = await start(config)
    log.info(
        "vllm-responses-gateway listening on %s, upstream %s, model %s",
        bound_url(runner), ", ".join(config.model_server.base_url), config.model_server.model,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()
