"""Starting and stopping the server on a real socket (used by the CLI and by the tests)."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from typing import Optional

from aiohttp import web

from ..config import Config
from ..upstream.client import VLLMClient
from .app import create_app

log = logging.getLogger("gateway.server")
LISTEN_BACKLOG = 4096


async def start(
    config: Config, *, port: Optional[int] = None, client: Optional[VLLMClient] = None, reuse_port: bool = False
) -> web.AppRunner:
    """Start serving; returns the runner (``await runner.cleanup()`` stops it)."""
    app = create_app(config, client)
    # handler_cancellation: a client that disconnects cancels its handler at once, which closes
    # the upstream request even while vLLM is silent (aiohttp would otherwise notice only at the
    # next write).
    # shutdown_timeout: aiohttp's own wait for handlers, kept longer than our grace period so that
    # streams are ended by us (with response.failed), not cut by aiohttp.
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None,
                           shutdown_timeout=config.gateway.shutdown_grace_s + 5)
    await runner.setup()
    # backlog: aiohttp's default of 128 drops connections when hundreds of clients (an evaluation
    # harness starting its workers) connect at once; the kernel caps it at net.core.somaxconn.
    site = web.TCPSite(runner, config.gateway.host, config.gateway.port if port is None else port,
                       reuse_port=reuse_port or None, backlog=LISTEN_BACKLOG)
    await site.start()
    return runner


def bound_url(runner: web.AppRunner) -> str:
    host, port = runner.addresses[0][:2]
    return f"http://{host}:{port}"


async def serve_forever(config: Config, reuse_port: bool = False) -> None:
    runner = await start(config, reuse_port=reuse_port)
    log.info(
        "vllm-responses-gateway listening on %s, upstream %s, model %s%s",
        bound_url(runner), ", ".join(config.model_server.base_url), config.model_server.model,
        f" (worker {os.getpid()})" if reuse_port else "",
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


def run_event_loop(main: "asyncio.Future[None] | object") -> None:
    """Run a coroutine on uvloop when it is installed (faster sockets), else on asyncio's loop."""
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        asyncio.run(main)  # type: ignore[arg-type]
    else:
        uvloop.run(main)  # type: ignore[arg-type]


def serve(config: Config, workers: int = 1) -> int:
    """Serve until SIGINT/SIGTERM. With several workers, each is a process listening on the same
    port (SO_REUSEPORT: the kernel spreads connections), so all cores are used."""
    if workers <= 1:
        run_event_loop(serve_forever(config))
        return 0
    context = multiprocessing.get_context("fork")  # before any event loop exists: safe to fork
    children = [context.Process(target=_worker, args=(config,), name=f"gateway-worker-{i}") for i in range(workers)]
    for child in children:
        child.start()
    log.info("started %d workers on %s:%d", workers, config.gateway.host, config.gateway.port)

    def stop(signum: int, frame: object) -> None:
        for child in children:
            if child.is_alive():
                child.terminate()  # SIGTERM: each worker shuts down cleanly

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failed = False
    for child in children:
        child.join()
        if child.exitcode not in (0, -signal.SIGTERM):
            failed = True
            stop(signal.SIGTERM, None)  # one worker failed (e.g. the port is taken): stop them all
    return 1 if failed else 0


def _worker(config: Config) -> None:
    try:
        run_event_loop(serve_forever(config, reuse_port=True))
    except OSError as exc:
        print(f"vllm-gateway worker {os.getpid()}: cannot listen on {config.gateway.host}:{config.gateway.port}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
