"""The store failing while a response streams: a full disk (SQLite's own "database or disk is
full", from a page limit set mid-stream), a Redis server that stops answering or is gone. The
client always gets its answer or a clear error, never a hang, and nothing half-written is served
later (the response reads as absent, or as failed saying why)."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import pytest
from openai import AsyncOpenAI

from gateway.server.app import STORE_KEY
from tests.conftest import Gateway, GatewayFactory
from tests.contract import check_stream, parse_sse
from tests.fake_vllm import Generation, content
from tests.test_store_replicas import redis_url  # noqa: F401  (the real redis-server fixture)

DEADLINE_S = 60.0
TEXT = "All work and no play makes a gateway dull. " * 200


def held(at: int) -> tuple[Generation, asyncio.Event]:
    """A long answer whose upstream waits before delta ``at`` until the test releases it."""
    release = asyncio.Event()
    return Generation(deltas=content(TEXT, size=64), hold_at=at, hold=release), release


async def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def read_stream(gateway: Gateway, response: Any) -> dict[str, Any]:
    events = parse_sse(await asyncio.wait_for(response.read(), DEADLINE_S))
    return check_stream(events)


async def assert_not_served_half_written(gateway: Gateway, rid: str) -> None:
    """Absent (removed), or failed with a clear error; never in_progress forever, never a
    'completed' response missing its end. Its lease is 1 s in these tests."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        async with gateway.session.get(gateway.url + f"/v1/responses/{rid}") as r:
            body = await r.json()
            if r.status == 404:
                return
            if r.status == 200 and body["status"] == "failed":
                assert body["error"]["code"] == "response_lost" and body["error"]["message"]
                return
            assert r.status in (200, 503), body
            assert r.status == 503 or body["status"] == "in_progress", body
        assert time.monotonic() < deadline, "the response stayed in_progress"
        await asyncio.sleep(0.1)


async def fill_disk(gateway: Gateway) -> None:
    """From now on, the SQLite file cannot grow: every write that needs a page fails with SQLite's
    own SQLITE_FULL ("database or disk is full"), as on a full disk."""
    store = gateway.runner.app[STORE_KEY].store

    def limit(conn: Any) -> None:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    await store._write(limit)
    limit(store._loop_connection())  # the event loop's own connection (small writes): full too


@pytest.mark.parametrize("hold_at", [2, 600], ids=["mid-stream", "at-the-end"])
async def test_disk_full_while_streaming(make_gateway: GatewayFactory, tmp_path: Any, hold_at: int,
                                         caplog: pytest.LogCaptureFixture) -> None:
    gateway = await make_gateway(f"gateway.data_dir={tmp_path}", "gateway.store_lease_s=1")
    generation, release = held(min(hold_at, len(content(TEXT, size=64)) - 1))
    gateway.upstream.queue(generation)
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "write", "stream": True}) as r:
        first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), DEADLINE_S)
        assert b"response.created" in first
        rid = parse_sse(first)[0]["response"]["id"]
        await fill_disk(gateway)
        release.set()
        rest = await asyncio.wait_for(r.read(), DEADLINE_S)
    final = check_stream(parse_sse(first + rest))
    assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == TEXT.strip()
    assert "database or disk is full" in caplog.text  # the fault happened, and was logged
    await assert_not_served_half_written(gateway, rid)


async def test_disk_full_without_streaming_still_answers(make_gateway: GatewayFactory, tmp_path: Any,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    gateway = await make_gateway(f"gateway.data_dir={tmp_path}", "gateway.store_lease_s=1")
    await fill_disk(gateway)
    gateway.upstream.queue(Generation(deltas=content(TEXT, size=64)))
    created = await asyncio.wait_for(gateway.create({"input": "write"}), DEADLINE_S)
    assert created["status"] == "completed"
    assert "database or disk is full" in caplog.text
    await assert_not_served_half_written(gateway, created["id"])


@pytest.fixture
async def redis_gateway(make_gateway: GatewayFactory, redis_url: str) -> Gateway:  # noqa: F811
    return await make_gateway("gateway.store_backend=redis", f"gateway.redis_url={redis_url}",
                              "gateway.store_lease_s=1")


async def test_redis_stops_answering_mid_stream(redis_gateway: Gateway, redis_url: str) -> None:  # noqa: F811
    """A Redis that hangs (SIGSTOP) mid-stream: the client's stream still ends, within the store's
    bounded wait; once Redis is back, the response reads as failed, not in_progress forever."""
    gateway = redis_gateway
    pid = int((await _redis_info(redis_url))["process_id"])
    generation, release = held(2)
    gateway.upstream.queue(generation)
    try:
        async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "w", "stream": True}) as r:
            first = await asyncio.wait_for(r.content.readuntil(b"\n\n"), DEADLINE_S)
            rid = parse_sse(first)[0]["response"]["id"]
            await until(lambda: gateway.upstream.requests[-1]["sent"] >= 2, "two deltas")
            signal_redis(pid, signal.SIGSTOP)
            release.set()
            rest = await asyncio.wait_for(r.read(), DEADLINE_S)
        final = check_stream(parse_sse(first + rest))
        assert final["status"] == "completed" and final["output"][0]["content"][0]["text"] == TEXT.strip()
        async with gateway.session.get(gateway.url + f"/v1/responses/{rid}") as r:  # Redis still hung
            assert r.status == 503
            error = (await r.json())["error"]
        assert error["code"] == "store_unavailable" and "Redis" in error["message"]
    finally:
        signal_redis(pid, signal.SIGCONT)
    await assert_not_served_half_written(gateway, rid)


async def test_redis_down(redis_gateway: Gateway, redis_url: str) -> None:  # noqa: F811
    """Redis gone: answers still come (not stored); what needs the store is a clear 503."""
    gateway = redis_gateway
    gateway.upstream.queue(Generation(deltas=content("first")), Generation(deltas=content("second")))
    stored = await gateway.create({"input": "one"})
    pid = int((await _redis_info(redis_url))["process_id"])
    signal_redis(pid, signal.SIGKILL)
    created = await asyncio.wait_for(gateway.create({"input": "two"}), DEADLINE_S)
    assert created["status"] == "completed" and created["output"][0]["content"][0]["text"] == "second"
    events, final = await asyncio.wait_for(gateway.stream({"input": "three"}), DEADLINE_S)
    assert final["status"] == "completed"
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as client:
        for attempt in (lambda: client.responses.retrieve(stored["id"]),
                        lambda: client.responses.create(model="m", input="x", previous_response_id=stored["id"]),
                        lambda: client.responses.create(model="m", input="x", background=True)):
            with pytest.raises(Exception) as caught:
                await asyncio.wait_for(attempt(), DEADLINE_S)
            assert getattr(caught.value, "status_code", None) == 503, caught.value
            assert "store" in str(caught.value)


def signal_redis(pid: int, sig: int) -> None:
    import os

    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


async def _redis_info(url: str) -> dict[str, Any]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url)
    try:
        return await client.info("server")
    finally:
        await client.aclose()


async def test_a_client_leaving_while_its_events_are_being_stored_leaves_one_record(
        tmp_path: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the soak (1 request in ~20,000): a stream's end waits for the flush in flight; the
    client left then (its handler is cancelled), and the cancellation reached the flush while the
    writer was already creating its record. The record was written anyway, so the next write
    inserted it a second time, failed on the duplicate id, and the response was removed. It must
    be stored once, and end as failed (its client left before the end)."""
    import sqlite3
    import threading

    from gateway.observe import Outcome
    from gateway.store import sqlite as sqlite_store
    from gateway.store.base import Record
    from gateway.store.service import Recorder, StoreService
    from tests.conftest import gateway_config

    store = sqlite_store.SQLiteStore(str(tmp_path), max_bytes=10**9, clock=time.time)
    service = StoreService(gateway_config("http://127.0.0.1:9/v1"), store)
    await service.start()
    now = time.time()
    snapshot = b'{"id":"resp_left","object":"response","status":"in_progress","output":[]}'
    record = Record(id="resp_left", owner="", status="in_progress", response=snapshot, input=b"[]",
                    created_at=now, expires_at=now + 3600, lease_until=now + 30)
    recorder = Recorder(service, record, frames=True, client_stream=True)
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another process's transaction: the writer takes the create, then waits
    waiting = threading.Event()
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # the writer's wait for the lock
        waiting.set()
        real_sleep(seconds)

    monkeypatch.setattr(sqlite_store.time, "sleep", sleep)
    recorder.sent(b'event: response.created\ndata: {"type":"response.created","sequence_number":0}\n\n')
    recorder.followed()  # a follower asked: the flush (its create first) starts now
    await asyncio.get_running_loop().run_in_executor(None, waiting.wait, 60)  # the writer holds the create
    completed = b'{"id":"resp_left","object":"response","status":"completed","output":[]}'
    recorder.sent(b'event: response.completed\ndata: {"type":"response.completed","sequence_number":1,'
                  b'"response":' + completed + b'}\n\n')
    ending = asyncio.ensure_future(recorder.ending())  # the stream's end, in the client's handler
    for _ in range(10):
        await asyncio.sleep(0)  # ending() is now waiting for the flush
    ending.cancel()  # the client left: its handler is cancelled
    with pytest.raises(asyncio.CancelledError):
        await ending
    recorder.ended(Outcome(status=499))
    other.execute("COMMIT")  # the other process is done: the writer goes on
    other.close()
    deadline = time.monotonic() + 60
    while service._tasks or recorder._flushing is not None:
        assert time.monotonic() < deadline, "the recorder did not settle"
        await asyncio.sleep(0.01)
    assert "will not be stored" not in caplog.text, caplog.text
    stored = await store.get("", "resp_left")
    assert stored is not None and stored.status == "failed"
    assert b"client_disconnected" in stored.response
    await service.close()
