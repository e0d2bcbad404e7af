"""The floor: the cheapest relay of vLLM's stream an aiohttp process can be. Its own process:

    python -m gateway.bench.floor --upstream http://127.0.0.1:PORT [--port 0]

prints ``READY <port>`` when it listens. ``POST <path>`` is sent on to the upstream's same path,
the request body as it came, and the answer's body is copied to the client as it arrives: no
parsing, no translation, no store, one write per read. ``GET /health`` answers 200.

The gateway does everything this does (aiohttp's server and client, the same event loop), and
translates on top. What this costs per event is the least any aiohttp relay pays on this machine,
so a target below it cannot be met by a gateway built on aiohttp in one process (the bench's
``floor`` section measures it beside the direct run).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import stat

import aiohttp
from aiohttp import web

_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def open_session(app: web.Application) -> None:
        app[session_key] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False)

    async def close_session(app: web.Application) -> None:
        await app[session_key].close()

    async def relay(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with app[session_key].post(upstream + request.path, data=body,
                                          headers={"Content-Type": "application/json"}) as upstream_response:
            response = web.StreamResponse(status=upstream_response.status, headers=_SSE_HEADERS)
            await response.prepare(request)
            async for data in upstream_response.content.iter_any():
                await response.write(data)
            await response.write_eof()
            return response

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_get("/health", health)
    app.router.add_post("/{path:.*}", relay)
    return app


async def serve(upstream: str, host: str, port: int) -> None:
    runner = web.AppRunner(make_app(upstream.rstrip("/")), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
    await site.start()
    sockets = site._server.sockets if site._server is not None else []  # type: ignore[union-attr]
    print(f"READY {sockets[0].getsockname()[1]}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    if stat.S_ISFIFO(os.fstat(0).st_mode):
        # The benchmark holds our stdin: when it goes away (even killed), so do we.
        loop.add_reader(0, lambda: os.read(0, 4096) or stop.set())
    await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.floor", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="the fake vLLM's URL (scheme, host, port)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the benchmark's to handle
    from ..server.runner import run_event_loop  # the gateway's own event loop (uvloop where installed)

    run_event_loop(serve(args.upstream, args.host, args.port))


if __name__ == "__main__":
    main()
