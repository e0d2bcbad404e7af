"""What token tracking costs a request: end-to-end latency with ``return_token_id_information``
on and off, same upstream, same run.

    .venv/bin/python -m gateway.bench.tracking [--requests 200] [--tokens 256] [--token-ms 0,1]

Starts one vLLM-shaped upstream (which answers ``logprobs`` with ``token_id:<int>`` entries and
serves ``/tokenize``, 2 ms per call as a small real server takes) and two gateways in front of it,
one tracking tokens and one not, each in its own process. Requests alternate between the two
gateways, so noise falls on both; each request is timed from sending to its last byte (the
terminal event when streaming). Printed: median and p90 per mode, and the ratio on/off of the
medians. ``--token-ms`` paces the upstream (milliseconds between chunks; 0 = as fast as it can).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

TOKENIZE_MS = 2.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- the upstream (run in its own process) --------------------------------------------------------


def serve_upstream(port: int, tokens: int) -> None:
    import orjson
    from aiohttp import web

    def chunk(delta: dict[str, Any], i: int, finish: Any = None, logprobs: bool = False) -> bytes:
        choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        if logprobs:
            choice["logprobs"] = {"content": [{"token": f"token_id:{1000 + i}", "logprob": -0.5,
                                               "bytes": [32], "top_logprobs": []}]}
        return b"data: " + orjson.dumps({"id": "chatcmpl-b", "object": "chat.completion.chunk", "created": 1,
                                         "model": "bench", "choices": [choice]}) + b"\n\n"

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        logprobs = bool(body.get("logprobs"))
        pace = float(request.match_info["ms"]) / 1000  # the base URL carries the pacing: /p<ms>/v1
        if not body.get("stream"):
            content = [{"token": f"token_id:{1000 + i}", "logprob": -0.5, "bytes": [32], "top_logprobs": []}
                       for i in range(tokens)]
            await asyncio.sleep(pace * tokens)
            return web.json_response({
                "id": "chatcmpl-b", "object": "chat.completion", "created": 1, "model": "bench",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " tok" * tokens},
                             "logprobs": {"content": content} if logprobs else None, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(chunk({"role": "assistant", "content": ""}, 0))
        for i in range(tokens):
            if pace:
                await asyncio.sleep(pace)
            await response.write(chunk({"content": " tok"}, i, logprobs=logprobs))
        await response.write(chunk({"content": ""}, 0, "stop"))
        usage = {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}
        await response.write(b"data: " + orjson.dumps({"id": "chatcmpl-b", "object": "chat.completion.chunk",
                                                       "created": 1, "model": "bench", "choices": [],
                                                       "usage": usage}) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        return response

    async def tokenize(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(TOKENIZE_MS / 1000)
        return web.json_response({"tokens": [151644, 872, 198, 6023, 151645], "count": 5, "max_model_len": 4096})

    app = web.Application()
    app.router.add_post("/p{ms}/v1/chat/completions", chat)
    app.router.add_post("/p{ms}/tokenize", tokenize)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --- the run --------------------------------------------------------------------------------------


def _start(command: list[str], port: int, cwd: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return process
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}")
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"{' '.join(command)} did not start")


async def _measure(urls: dict[str, str], requests: int, stream: bool) -> dict[str, list[float]]:
    import aiohttp

    times: dict[str, list[float]] = {mode: [] for mode in urls}
    async with aiohttp.ClientSession() as session:
        for i in range(requests + 10):
            for mode, url in (list(urls.items()) if i % 2 else list(urls.items())[::-1]):  # alternate order
                started = time.perf_counter()
                async with session.post(url + "/v1/responses", json={"input": "hi", "stream": stream}) as response:
                    body = await response.read()
                elapsed = time.perf_counter() - started
                if response.status != 200 or (mode == "on" and b"generation_token_ids" not in body):
                    raise RuntimeError(f"{mode}: {response.status} {body[:300]!r}")
                if i >= 10:  # the first ten are warm-up
                    times[mode].append(elapsed * 1000)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.tracking", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=200, help="timed requests per mode and case")
    parser.add_argument("--tokens", type=int, default=256, help="tokens per response")
    parser.add_argument("--token-ms", default="0,1", help="upstream pacing(s), ms between chunks")
    parser.add_argument("--serve-upstream", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_upstream:
        serve_upstream(args.serve_upstream, args.tokens)
        return 0
    up_port, on_port, off_port = _free_port(), _free_port(), _free_port()
    workdir = tempfile.mkdtemp(prefix="vllm-gateway-bench-")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(_start([sys.executable, "-m", "gateway.bench.tracking", "--serve-upstream", str(up_port),
                                 "--tokens", str(args.tokens)], up_port, workdir))
        print(f"token tracking on vs off: {args.tokens} tokens/response, /tokenize takes {TOKENIZE_MS:g} ms, "
              f"{args.requests} requests per mode, alternating; {os.cpu_count()} cores")
        print(f"{'case':<28}{'off p50 ms':>12}{'off p90':>10}{'on p50 ms':>12}{'on p90':>10}{'on/off p50':>12}")
        for pace in [float(p) for p in args.token_ms.split(",")]:
            base = f"http://127.0.0.1:{up_port}/p{pace:g}/v1"
            gateways = {}
            for mode, port in (("off", off_port), ("on", on_port)):
                command = [sys.executable, "-m", "gateway", "serve", "--base-url", base, "--model", "bench",
                           "--port", str(port), "gateway.log_level=WARNING"]
                if mode == "on":
                    command.append("+policy_model.vllm_model.return_token_id_information=true")
                gateways[mode] = command
            started = [_start(gateways[m], p, workdir) for m, p in (("off", off_port), ("on", on_port))]
            processes.extend(started)
            for stream in (True, False):
                times = asyncio.run(_measure({"off": f"http://127.0.0.1:{off_port}",
                                              "on": f"http://127.0.0.1:{on_port}"}, args.requests, stream))
                off, on = times["off"], times["on"]
                p90 = lambda xs: statistics.quantiles(xs, n=10)[-1]  # noqa: E731
                case = f"{'stream' if stream else 'no stream'}, {pace:g} ms/token"
                print(f"{case:<28}{statistics.median(off):>12.2f}{p90(off):>10.2f}{statistics.median(on):>12.2f}"
                      f"{p90(on):>10.2f}{statistics.median(on) / statistics.median(off):>12.3f}")
            for process in started:
                process.terminate()
                process.wait(timeout=10)
                processes.remove(process)
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
