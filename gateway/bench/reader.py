"""What reading vLLM's streamed body costs: aiohttp's StreamReader against the gateway's lean one
(gateway/upstream/protocol.py), the same bytes, the same process.

    .venv/bin/python -m gateway.bench.reader [--responses 1500] [--tokens 256] [--repeats 5]

An upstream of a few lines (an asyncio protocol, not aiohttp: its own cost stays small) answers
each request with one write: the bench's fake vLLM's burst answer (gateway/bench/upstream.py), a
chunked body of ``--tokens`` chat.completion.chunk events, one HTTP chunk each, as vLLM sends them,
then ``[DONE]``. The client (aiohttp, through the gateway's lean
connector, 16 requests at once) reads each body with ``readany()`` until EOF, once with aiohttp's
reader and once with ``LeanStreamReader``, alternating, ``--repeats`` times. Printed: the process's
CPU per token (client and upstream together: the upstream's share is the same in both) per repeat,
the medians and their difference.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import aiohttp

from gateway.bench.upstream import BODIES
from gateway.bench.workload import Workload
from gateway.upstream.protocol import lean_body, lean_connector

AT_ONCE = 16


class _Upstream(asyncio.Protocol):
    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.pending = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while b"\r\n\r\n" in self.pending:  # a request's head (GET, no body): answer it whole
            _, _, self.pending = self.pending.partition(b"\r\n\r\n")
            self.transport.write(self.answer)


async def _cpu_per_token(url: str, lean: bool, responses: int, tokens: int, body_size: int) -> float:
    async with aiohttp.ClientSession(connector=lean_connector()) as session:
        async def one() -> None:
            async with session.get(url) as response:
                if lean:
                    lean_body(response)
                size = 0
                while data := await response.content.readany():
                    size += len(data)
            if size != body_size:  # a figure for a reader that loses bytes would mean nothing
                raise SystemExit(f"{'LeanStreamReader' if lean else 'StreamReader'} read {size} bytes of a "
                                 f"{body_size}-byte body")

        await asyncio.gather(*(one() for _ in range(AT_ONCE)))  # connections open, code warm
        started = time.process_time()
        for _ in range(responses // AT_ONCE):
            await asyncio.gather(*(one() for _ in range(AT_ONCE)))
        return (time.process_time() - started) / (responses // AT_ONCE * AT_ONCE) / tokens * 1e6


async def run(responses: int, tokens: int, repeats: int) -> None:
    # The bench's fake vLLM's burst answer, byte for byte: role chunk, one chunk per token, finish, [DONE].
    workload = Workload("text", tokens, 1)
    answer = BODIES.whole("reader", workload, include_usage=False)
    body_size = sum(len(frame) for frame in workload.sse_frames(include_usage=False))
    server = await asyncio.get_running_loop().create_server(lambda: _Upstream(answer), "127.0.0.1", 0)
    url = "http://127.0.0.1:%d/" % server.sockets[0].getsockname()[1]
    figures: dict[str, list[float]] = {"aiohttp's StreamReader": [], "LeanStreamReader": []}
    try:
        for repeat in range(repeats):
            for name, lean in (("aiohttp's StreamReader", False), ("LeanStreamReader", True)):
                figure = await _cpu_per_token(url, lean, responses, tokens, body_size)
                figures[name].append(figure)
                print(f"repeat {repeat + 1}: {name:24s} {figure:.3f} µs of CPU per token", flush=True)
    finally:
        server.close()
    stock, lean = (statistics.median(v) for v in figures.values())
    print(f"\nmedians: aiohttp's StreamReader {stock:.3f}, LeanStreamReader {lean:.3f} µs per token "
          f"({stock - lean:.3f} less, {lean / stock:.2f}×); {tokens} tokens per response, one HTTP chunk each, "
          f"{AT_ONCE} at once, {responses} responses per figure")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway.bench.reader", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--responses", type=int, default=1500, help="responses per figure (default 1500)")
    parser.add_argument("--tokens", type=int, default=256, help="tokens (HTTP chunks) per response (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="alternating repeats (default 5)")
    args = parser.parse_args()
    if args.responses < AT_ONCE or args.tokens < 1 or args.repeats < 1:
        parser.error(f"--responses must be at least {AT_ONCE}, --tokens and --repeats at least 1")
    try:
        import uvloop
    except ImportError:  # asyncio's own loop: the gateway's, where uvloop does not exist
        asyncio.run(run(args.responses, args.tokens, args.repeats))
    else:
        uvloop.run(run(args.responses, args.tokens, args.repeats))


if __name__ == "__main__":
    main()
