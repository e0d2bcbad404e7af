"""Starting and stopping the server on a real socket (used by the CLI and by the tests)."""

from __future__ import annotations

import asyncio
import gc
import logging
import multiprocessing
import os
import signal
import sys
from typing import Optional

from aiohttp import http_exceptions, web, web_protocol, web_server

from ..config import Config
from ..upstream.client import VLLMClient
from .app import CLIENT_KEY, SHUTDOWN_ANSWER_S, create_app, error_response

log = logging.getLogger("gateway.server")
LISTEN_BACKLOG = 4096

# What the client got wrong, by the exception aiohttp's parser raised; never the request's own bytes.
_PARSE_ERRORS = (
    (http_exceptions.LineTooLong, "a request line or header is too long"),
    (http_exceptions.BadHttpMethod, "the method is not a valid HTTP method"),
    (http_exceptions.InvalidHeader, "a header is invalid"),
    (http_exceptions.BadStatusLine, "the request line is not valid HTTP"),
    (http_exceptions.TransferEncodingError, "the chunked body framing is invalid"),
    (http_exceptions.ContentLengthError, "the body is shorter than its Content-Length"),
)


class _JsonErrorHandler(web_protocol.RequestHandler):
    """aiohttp answers what its parser refuses (headers over 8,190 bytes, too many headers, a bad
    method ...) before any middleware runs, as text/plain that may echo the request, and logs a
    traceback. Here: the OpenAI error object, and one log line, since the fault is the client's."""

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: Optional[BaseException] = None,
                     message: Optional[str] = None) -> web.StreamResponse:
        if request.writer.output_size > 0:  # as aiohttp: an answer has started, the connection is broken
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        if status >= 500:
            self.log_exception("Error handling request", exc_info=exc)
            response = error_response(500, "The gateway failed unexpectedly; the error has been logged.",
                                      type_="server_error", code="internal_error")
        else:
            why = next((text for cls, text in _PARSE_ERRORS if isinstance(exc, cls)), "it is not valid HTTP")
            log.info("refused a request that could not be parsed (%s): %s", type(exc).__name__, why)
            response = error_response(status, f"The request could not be parsed: {why}.", code="invalid_http_request")
        response.force_close()
        return response


class _JsonErrorServer(web_server.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """aiohttp's AppRunner, whose connections answer parse errors with JSON (``_JsonErrorHandler``)."""

    async def _make_server(self) -> web_server.Server:
        server = await super()._make_server()
        server.__class__ = _JsonErrorServer  # the same object, only how it makes connection handlers differs
        return server


async def start(
    config: Config, *, port: Optional[int] = None, client: Optional[VLLMClient] = None, reuse_port: bool = False
) -> web.AppRunner:
    """Start serving; returns the runner (``await runner.cleanup()`` stops it)."""
    app = create_app(config, client)
    # handler_cancellation: a client that disconnects cancels its handler at once, which closes
    # the upstream request even while vLLM is silent (aiohttp would otherwise notice only at the
    # next write).
    # shutdown_timeout: aiohttp's own wait for handlers, after ours (drain_requests), by which time
    # every request has been answered: streams ended by us with response.failed, the others with
    # a 503, none cut by aiohttp.
    # auto_decompress=False: request bodies are decoded by the handler, within limits (server/body.py).
    runner = GatewayRunner(app, handler_cancellation=True, access_log=None, auto_decompress=False,
                           shutdown_timeout=SHUTDOWN_ANSWER_S)
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


def tune_gc(threshold: int) -> None:
    """A server's settings for the cyclic collector, once everything is loaded: the modules and the
    app (tens of thousands of objects that live as long as the process) are frozen out of its passes,
    and a pass waits for ``threshold`` new containers (see ``gc_threshold`` in config.py; the bench
    README has the measurement)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(threshold)  # the older generations keep Python's ratios


async def serve_forever(config: Config, reuse_port: bool = False) -> None:
    runner = await start(config, reuse_port=reuse_port)
    tune_gc(config.gateway.gc_threshold)
    log.info(
        "vllm-responses-gateway listening on %s, upstream %s, model %s%s",
        bound_url(runner), ", ".join(runner.app[CLIENT_KEY].base_urls), config.model_server.model,
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
