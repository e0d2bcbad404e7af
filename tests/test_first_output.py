"""The first output of a response leaves before the whole first upstream read is translated: a
busy vLLM (or a fast one) can have a whole answer waiting in the socket when the gateway first reads
it. Until the client has its first output, the upstream is read a few KB at a time
(gateway/upstream/client.py); then as much as is there."""

from __future__ import annotations

import asyncio
import time

from gateway.upstream.client import VLLMClient
from tests.fake_vllm import FakeVLLM, Generation, content


async def test_a_whole_answer_waiting_is_read_in_small_pieces_until_the_first_output(upstream: FakeVLLM) -> None:
    upstream.queue(Generation(deltas=content("w " * 300, size=2)))  # 300 chunks, ~60 KB of SSE
    client = VLLMClient([upstream.url])  # type: ignore[attr-defined]
    await client.start()
    try:
        stream = await client.open_chat_stream({"model": "m", "messages": [], "stream": True})
        deadline = time.monotonic() + 60
        while not upstream.requests[-1]["finished"]:  # the whole answer now waits in the socket
            assert time.monotonic() < deadline, "the fake vLLM did not finish writing"
            await asyncio.sleep(0.01)
        batches = []
        async for batch in stream:
            batches.append(len(batch))
            if len(batches) == 2:
                stream.wrote()  # the relay wrote the first output: from now on, read what is there
        stream.close()
    finally:
        await client.close()
    assert sum(batches) >= 300
    assert batches[0] <= 40 and batches[1] <= 40, batches[:3]  # 4 KB of ~200-byte events
    assert max(batches[2:]) > 100, batches  # after the first output, whole reads again
