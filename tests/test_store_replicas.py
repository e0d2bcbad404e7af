"""Several gateway processes sharing one store: a real Redis server (Debian's redis-server, started
here on a free loopback port; CI installs it with tests/install_redis.sh), and, the same tests,
one SQLite file shared by two processes on one machine.

Each replica is a real ``python -m gateway serve`` process in front of the scripted upstream:
what one creates, the other retrieves, continues, cancels and resumes; a replica killed during a
background run leaves a response that ends ``failed`` instead of ``in_progress`` forever.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI

from tests.conftest import MODEL, ROOT, free_port
from tests.contract import check_stream, parse_sse
from tests.fake_vllm import FakeVLLM, Generation, content, reasoning

DEADLINE_S = 60.0  # generous: the machine is shared; nothing below depends on it being fast


def _require(binary: str) -> str:
    path = shutil.which(binary)
    if path is None:
        message = f"{binary} is not installed: bash tests/install_redis.sh"
        if os.environ.get("GATEWAY_REQUIRE_REAL_BACKEND") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server of its own on a free loopback port, nothing persisted."""
    binary = _require("redis-server")
    try:
        import redis
    except ImportError:
        pytest.fail("redis-py is missing: pip install -e '.[test]'")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                             "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url, socket_timeout=1)
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            client.ping()
            break
        except redis.exceptions.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


class Replica:
    def __init__(self, proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
        self.proc, self.url, self.log = proc, url, log
        self.client = AsyncOpenAI(base_url=url + "/v1", api_key="x", max_retries=0)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


ReplicaFactory = Callable[[], Awaitable[Replica]]


@pytest.fixture(params=["redis", "sqlite"])
async def replicas(request: pytest.FixtureRequest, upstream: FakeVLLM, tmp_path: Path) -> AsyncIterator[ReplicaFactory]:
    """Start gateway processes that share one store (Redis, or one SQLite file)."""
    backend = request.param
    if backend == "redis":
        store_overrides = ["gateway.store_backend=redis", f"gateway.redis_url={request.getfixturevalue('redis_url')}"]
    else:
        store_overrides = ["gateway.store_backend=sqlite"]
    started: list[Replica] = []

    async def start() -> Replica:
        port = free_port()
        log = tmp_path / f"replica-{len(started)}.log"
        command = [sys.executable, "-m", "gateway", "serve", "--base-url", upstream.url, "--model", MODEL,  # type: ignore[attr-defined]
                   "--port", str(port), f"gateway.data_dir={tmp_path / 'data'}", "gateway.store_lease_s=1",
                   "gateway.health_check_interval_s=0", *store_overrides]
        proc = subprocess.Popen(command, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        replica = Replica(proc, f"http://127.0.0.1:{port}", log)
        started.append(replica)
        deadline = time.monotonic() + DEADLINE_S
        async with aiohttp.ClientSession() as session:
            while True:
                try:
                    async with session.get(replica.url + "/v1/responses/resp_none") as r:
                        if r.status == 404:
                            return replica
                except aiohttp.ClientError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the gateway did not start: {log.read_text()}")
                await asyncio.sleep(0.1)

    yield start
    for replica in started:
        await replica.client.close()
        if replica.proc.poll() is None:
            replica.proc.terminate()
            replica.proc.wait(timeout=60)


async def until(condition: Callable[[], Any], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def terminal(client: AsyncOpenAI, rid: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        response = await client.responses.retrieve(rid)
        if response.status not in ("queued", "in_progress"):
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"{rid} did not end")


def stalling() -> Generation:
    return Generation(deltas=content("one two three four five six", size=4), pauses={3: 120.0})


async def test_create_on_one_retrieve_and_continue_on_the_other(replicas: ReplicaFactory, upstream: FakeVLLM) -> None:
    a, b = await replicas(), await replicas()
    upstream.queue(Generation(deltas=reasoning("Greet.") + content("Hi! What is up?")),
                   Generation(deltas=content("Paris is in France.")))
    async with a.client.responses.stream(model="m", input="Hello", instructions="Be kind.") as stream:
        async for _ in stream:
            pass
        created = await stream.get_final_response()
    retrieved = await b.client.responses.retrieve(created.id)
    assert retrieved.model_dump(exclude={"output"}) == created.model_dump(exclude={"output"})
    assert [item.id for item in retrieved.output] == [item.id for item in created.output]
    second = await b.client.responses.create(model="m", input="Where is Paris?", previous_response_id=created.id)
    assert second.output_text == "Paris is in France."
    assert upstream.last_body["messages"] == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! What is up?", "reasoning_content": "Greet.", "reasoning": "Greet."},
        {"role": "user", "content": "Where is Paris?"},
    ]
    items = await a.client.responses.input_items.list(second.id, order="asc")
    assert [(i.type, i.content[0].text if i.type == "message" else i.summary[0].text) for i in items.data] == [
        ("message", "Hello"), ("reasoning", "Greet."), ("message", "Hi! What is up?"),
        ("message", "Where is Paris?")]
    await a.client.responses.delete(created.id)
    with pytest.raises(openai.NotFoundError):
        await b.client.responses.retrieve(created.id)


async def test_cancel_and_resume_on_the_other_replica(replicas: ReplicaFactory, upstream: FakeVLLM) -> None:
    a, b = await replicas(), await replicas()
    upstream.queue(stalling())
    queued = await a.client.responses.create(model="m", input="count", background=True)
    await until(lambda: upstream.requests and upstream.requests[-1]["sent"] >= 3, "the generation to stall")

    async def resume() -> list[dict[str, Any]]:
        stream = await b.client.responses.retrieve(queued.id, stream=True, starting_after=1)
        return [e.model_dump(mode="json", exclude_unset=True) async for e in stream]

    resuming = asyncio.ensure_future(resume())
    cancelled = await b.client.responses.cancel(queued.id)
    assert cancelled.status == "cancelled"
    await until(lambda: upstream.requests[-1]["closed_early"], "replica A to close vLLM's request")
    events = await asyncio.wait_for(resuming, DEADLINE_S)
    assert events[0]["sequence_number"] == 2
    assert events[-1]["type"] == "response.failed" and events[-1]["response"]["status"] == "cancelled"
    async with aiohttp.ClientSession() as session:
        async with session.get(a.url + f"/v1/responses/{queued.id}?stream=true") as r:
            whole = parse_sse(await r.read())
    assert whole[2:] == events and check_stream(whole, nemo_gym=True)["status"] == "cancelled"  # the default conventions
    deltas = "".join(e["delta"] for e in whole if e["type"] == "response.output_text.delta")
    assert deltas == "one two thre"  # the three deltas vLLM sent before the stall, nothing lost


async def test_a_replica_killed_during_a_background_run(replicas: ReplicaFactory, upstream: FakeVLLM) -> None:
    a, b = await replicas(), await replicas()
    upstream.queue(stalling())
    queued = await a.client.responses.create(model="m", input="count", background=True)
    await until(lambda: upstream.requests and upstream.requests[-1]["sent"] >= 3, "the generation to stall")
    deadline = time.monotonic() + DEADLINE_S  # its first events are stored: in progress, as B sees it
    while (await b.client.responses.retrieve(queued.id)).status != "in_progress":
        assert time.monotonic() < deadline, "the run never showed as in_progress"
        await asyncio.sleep(0.05)
    a.kill()
    done = await terminal(b.client, queued.id)  # once its lease (1 s here) ran out
    assert done.status == "failed" and done.error.code == "response_lost"
    assert "stopped before it ended" in done.error.message
    stream = await b.client.responses.retrieve(queued.id, stream=True)
    events = [e.model_dump(mode="json", exclude_unset=True) async for e in stream]
    assert [e["type"] for e in events[-2:]] == ["error", "response.failed"]
    assert [e["sequence_number"] for e in events] == list(range(len(events)))


async def test_a_conversation_across_replicas(replicas: ReplicaFactory, upstream: FakeVLLM) -> None:
    a, b = await replicas(), await replicas()
    conv = await a.client.conversations.create(items=[{"type": "message", "role": "user", "content": "I am Ada."}])
    upstream.queue(Generation(deltas=content("Hello Ada.")))
    response = await b.client.responses.create(model="m", input="Hi", conversation=conv.id)
    assert response.conversation.id == conv.id
    assert upstream.last_body["messages"] == [{"role": "user", "content": "I am Ada."}, {"role": "user", "content": "Hi"}]
    items = await a.client.conversations.items.list(conv.id, order="asc")
    assert [i.content[0].text for i in items.data] == ["I am Ada.", "Hi", "Hello Ada."]
    deleted = await a.client.conversations.items.delete(items.data[1].id, conversation_id=conv.id)
    assert deleted.id == conv.id
    assert [i.content[0].text async for i in b.client.conversations.items.list(conv.id)] == ["Hello Ada.", "I am Ada."]
    await b.client.conversations.delete(conv.id)
    with pytest.raises(openai.NotFoundError):
        await a.client.conversations.retrieve(conv.id)


async def test_redis_retention_and_size_bound(redis_url: str) -> None:
    """store_ttl: Redis expires both keys of a response itself; store_max_bytes: the sweep drops
    the oldest responses until the total is under the bound."""
    from gateway.store.base import Record
    from gateway.store.redis import RedisStore

    now = [time.time()]
    store = RedisStore(redis_url, max_bytes=2500, ttl=3600, clock=lambda: now[0])
    await store.start()
    for i in range(5):
        await store.create(Record(id=f"r{i}", owner="", status="in_progress", response=b"{}" * 200, input=b"[]",
                                  created_at=now[0] + i, expires_at=now[0] + 3600, lease_until=now[0] + 30))
        await store.finish(f"r{i}", "completed", b"x" * 500, 0, b"event: e\ndata: {}\n\n" * 10)
    await store.sweep(now[0])
    assert [i for i in range(5) if await store.get("", f"r{i}") is not None] == [2, 3, 4]
    assert await store.events_after("r1", -1) == []  # its events went with it
    await store.close()

    short = RedisStore(redis_url, max_bytes=10**9, ttl=0.3, clock=time.time)
    await short.start()
    await short.create(Record(id="brief", owner="", status="in_progress", response=b"{}", input=b"[]",
                              created_at=time.time(), expires_at=time.time() + 0.3, lease_until=time.time() + 30))
    await short.append("brief", 0, b"event: e\ndata: {}\n\n")
    deadline = time.time() + 0.3
    while time.time() < deadline + 0.1:
        await asyncio.sleep(0.05)
    assert await short.get("", "brief") is None
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(redis_url)
    deadline = time.monotonic() + DEADLINE_S  # Redis drops expired keys lazily or within its cycle
    while await raw.exists("vgw:r:brief", "vgw:e:brief"):
        assert time.monotonic() < deadline, "Redis kept expired keys"
        await asyncio.sleep(0.05)
    await raw.aclose()
    await short.close()
