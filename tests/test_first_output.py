"""The first output of a response leaves before the whole first upstream read is translated: a
busy vLLM (or a fast one) can have a whole answer waiting in the socket when the gateway first reads
it. Until the client has its first output, the upstream is read a few KB at a time
(gateway/upstream/client.py); then as much as is there."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Optional

import pytest

from gateway.upstream.client import VLLMClient
from tests.conftest import GatewayFactory
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


async def test_a_stream_nobody_waits_on_is_read_whole_from_the_start(upstream: FakeVLLM) -> None:
    """``no_first_output()`` (a background run's stream): the first read takes all that waits."""
    upstream.queue(Generation(deltas=content("w " * 300, size=2)))
    client = VLLMClient([upstream.url])  # type: ignore[attr-defined]
    await client.start()
    try:
        stream = await client.open_chat_stream({"model": "m", "messages": [], "stream": True})
        stream.no_first_output()
        deadline = time.monotonic() + 60
        while not upstream.requests[-1]["finished"]:
            assert time.monotonic() < deadline, "the fake vLLM did not finish writing"
            await asyncio.sleep(0.01)
        batches = [len(batch) async for batch in stream]
        stream.close()
    finally:
        await client.close()
    assert sum(batches) >= 300 and batches[0] > 100, batches[:3]


async def test_a_background_run_reads_its_stream_whole(make_gateway: GatewayFactory,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A background run's stream is one nobody waits on (its followers read stored batches)."""
    from gateway.upstream.client import ChatStream

    marked: list[ChatStream] = []
    mark = ChatStream.no_first_output
    monkeypatch.setattr(ChatStream, "no_first_output", lambda self: marked.append(self) or mark(self))
    gateway = await make_gateway()
    gateway.upstream.queue(Generation(deltas=content("one two three")))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "hi", "background": True}) as r:
        queued = await r.json()
    deadline = time.monotonic() + 60
    while True:
        async with gateway.session.get(gateway.url + f"/v1/responses/{queued['id']}") as r:
            if (await r.json())["status"] == "completed":
                break
        assert time.monotonic() < deadline, "the background run did not complete"
        await asyncio.sleep(0.05)
    assert len(marked) == 1
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "hi", "stream": True}) as r:
        await r.read()
    assert len(marked) == 1  # an attached stream's client waits for its first output


async def test_a_read_is_decoded_chunk_by_chunk_as_the_relay_takes_it(make_gateway: GatewayFactory) -> None:
    """The chunks of one read are decoded one at a time (DecodedRead), not all before the first is
    translated: the chunks before a line that is not JSON, in the same read, reach the client
    before the stream fails on that line (decoded all first, the read failed whole)."""
    import json

    from tests.contract import check_stream, parse_sse
    from tests.fake_vllm import Generation

    def chunk(text: str) -> bytes:
        return b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                       "choices": [{"index": 0, "delta": {"content": text}}]}).encode() + b"\n\n"

    gateway = await make_gateway()
    gateway.upstream.queue(Generation(raw_body=chunk("Once") + chunk(" upon") + chunk(" a") + b"data: {not json\n\n"
                                      + chunk(" time") + b"data: [DONE]\n\n"))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "story", "stream": True}) as r:
        events = parse_sse(await asyncio.wait_for(r.read(), 60))
    final = check_stream(events)
    assert [e["delta"] for e in events if e["type"] == "response.output_text.delta"] == ["Once", " upon", " a"]
    assert final["status"] == "failed" and final["error"]["code"] == "upstream_protocol_error"


async def test_a_streams_head_leaves_with_its_first_events_in_one_write(make_gateway: GatewayFactory,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The response's head is not a socket write of its own: it leaves with response.created."""
    from aiohttp.http_writer import StreamWriter

    writes: list[bytes] = []
    single, several = StreamWriter._write, StreamWriter._writelines
    monkeypatch.setattr(StreamWriter, "_write", lambda self, chunk: writes.append(bytes(chunk)) or single(self, chunk))
    monkeypatch.setattr(StreamWriter, "_writelines", lambda self, chunks: writes.append(
        b"".join(bytes(c) for c in chunks)) or several(self, chunks))
    gateway = await make_gateway()
    gateway.upstream.queue(Generation(deltas=content("one two three", size=4)))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "hi", "stream": True}) as r:
        body = await r.read()
    assert b"response.completed" in body
    heads = [w for w in writes if w.startswith(b"HTTP/1.1 200") and b"X-Accel-Buffering: no" in w]  # the gateway's
    assert len(heads) == 1, heads
    assert b"event: response.created\ndata: " in heads[0]


async def test_the_first_output_leaves_alone_and_the_rest_of_a_read_in_one_write(make_gateway: GatewayFactory,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A whole answer waiting in one read: the first delta is written the moment it exists, and the
    events of the rest of each read leave together (one socket write per read, not one per event)."""
    from tests.contract import check_stream, parse_sse

    writes = _recorded_writes(monkeypatch)
    words = [f" w{i}" for i in range(40)]
    body = _chunk({"role": "assistant"}) + b"".join(_chunk({"content": w}) for w in words) + b"data: [DONE]\n\n"
    gateway = await make_gateway()
    gateway.upstream.queue(Generation(raw_body=body))  # one write: all of it waits for the gateway's reads
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "hi", "stream": True}) as r:
        events = parse_sse(await asyncio.wait_for(r.read(), 60))
    check_stream(events)
    per_write = [w.count(b"event: response.output_text.delta\n") for w in writes]
    carrying = [n for n in per_write if n]
    assert sum(carrying) == len(words)
    assert carrying[0] == 1, per_write  # the first output, at once
    assert len(carrying) <= 4, per_write  # then a read's worth at a time (~4 KB, then the rest)


def _chunk(delta: dict, finish_reason: Optional[str] = None, token: Optional[int] = None) -> bytes:
    """One chat.completion.chunk as vLLM frames it; with ``token``, the logprob of that one token
    (as vLLM gives it with ``return_tokens_as_token_ids``)."""
    logprobs = None if token is None else {"content": [
        {"token": f"token_id:{token}", "logprob": -0.5, "bytes": list(delta.get("content", "").encode()),
         "top_logprobs": []}]}
    return b"data: " + json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
                                   "choices": [{"index": 0, "delta": delta, "logprobs": logprobs,
                                                "finish_reason": finish_reason}]}).encode() + b"\n\n"


def _recorded_writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every socket write of aiohttp's server and client (``StreamWriter._writelines``)."""
    from aiohttp.http_writer import StreamWriter

    writes: list[bytes] = []
    several = StreamWriter._writelines
    monkeypatch.setattr(StreamWriter, "_writelines", lambda self, chunks: writes.append(
        b"".join(bytes(c) for c in chunks)) or several(self, chunks))
    return writes


async def test_the_last_deltas_of_a_read_leave_with_the_end(make_gateway: GatewayFactory,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The deltas read together with [DONE] are not a write of their own before the terminal
    events: nothing is waited for in between (no /tokenize), so they go out together."""
    from tests.contract import check_stream, parse_sse

    writes = _recorded_writes(monkeypatch)
    words = [f" w{i}" for i in range(60)]
    body = (_chunk({"role": "assistant"}) + b"".join(_chunk({"content": w}) for w in words)
            + _chunk({}, "stop") + b"data: [DONE]\n\n")
    gateway = await make_gateway()
    gateway.upstream.queue(Generation(raw_body=body))  # one write: all of it waits for the gateway's reads
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "hi", "stream": True}) as r:
        events = parse_sse(await asyncio.wait_for(r.read(), 60))
    check_stream(events)
    ends = [w for w in writes if b"event: response.completed\n" in w]
    assert len(ends) == 1
    assert b"event: response.output_text.delta\n" in ends[0], [len(w) for w in writes]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "".join(words).lstrip()  # the answer's leading whitespace is not sent


async def test_the_last_deltas_of_a_read_do_not_wait_for_tokenize(make_gateway: GatewayFactory) -> None:
    """With token ids asked for and /tokenize not answered yet, the deltas read together with
    [DONE] go out at once: only the terminal events wait for the prompt's ids."""
    from tests.contract import check_stream, parse_sse

    gateway = await make_gateway("+policy_model.vllm_model.return_token_id_information=true")
    gateway.upstream.tokenize_gate = asyncio.Event()
    words = [f" w{i}" for i in range(60)]
    body = (_chunk({"role": "assistant", "content": ""}) + b"".join(
        _chunk({"content": w}, token=1000 + i) for i, w in enumerate(words))
        + _chunk({"content": ""}, "stop", token=151645) + b"data: [DONE]\n\n")
    gateway.upstream.queue(Generation(raw_body=body))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "hi", "stream": True}) as r:
        received = b""
        while received.count(b"event: response.output_text.delta\n") < len(words):
            piece = await asyncio.wait_for(r.content.readany(), 60)  # held back: this times out
            assert piece, received[-500:]
            received += piece
        assert b"event: response.completed\n" not in received
        assert gateway.upstream.tokenize_requests, "the prompt's ids were not asked for"
        gateway.upstream.tokenize_gate.set()
        received += await asyncio.wait_for(r.read(), 60)
    events = parse_sse(received)
    check_stream(events)
    final = events[-1]["response"]
    assert final["status"] == "completed"
    assert final["output"][-1]["prompt_token_ids"] == gateway.upstream.tokenize_prompt
    assert final["output"][-1]["generation_token_ids"] == [1000 + i for i in range(len(words))] + [151645]


async def test_the_relay_closes_the_upstreams_reads_itself(make_gateway: GatewayFactory) -> None:
    """Left at [DONE], the generator of the upstream's reads is closed by the relay, not handed to
    the event loop's async generator finalizer (a task and a cross-thread wake-up per response)."""
    import sys

    hooks = sys.get_asyncgen_hooks()
    finalized: list[str] = []

    def finalizer(agen: object) -> None:
        finalized.append(agen.ag_code.co_qualname)  # type: ignore[attr-defined]
        hooks.finalizer(agen)  # type: ignore[misc]

    gateway = await make_gateway()
    gateway.upstream.queue(Generation(deltas=content("one two three", size=4)))
    sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=finalizer)
    try:
        async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "hi", "stream": True}) as r:
            body = await r.read()
        await asyncio.sleep(0)
    finally:
        sys.set_asyncgen_hooks(firstiter=hooks.firstiter, finalizer=hooks.finalizer)
    assert b"event: response.completed\n" in body
    assert "ChatStream.__aiter__" not in finalized, finalized
