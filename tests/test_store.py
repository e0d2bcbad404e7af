"""Stored responses (gateway/store): the openai SDK's retrieve / delete / input_items and
``previous_response_id``, sync and async, streamed and not, against the real gateway on SQLite, and
the Agents SDK running a tool conversation on ``previous_response_id`` alone.

The sync ``OpenAI`` client runs in a worker thread (the gateway runs on the test's loop).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any, AsyncIterator

import httpx2
import openai
import pytest
from agents import Runner
from openai import AsyncOpenAI, OpenAI

from gateway.store.base import Record
from gateway.store.sqlite import SQLiteStore
from tests.conftest import Gateway, GatewayFactory
from tests.contract import check_stream, parse_sse
from tests.fake_vllm import Generation, content, reasoning, tool_call
from tests.test_agents_sdk import (
    ARGUMENTS, CALL_ID, FINAL, INSTRUCTIONS, QUESTION, RUN_CONFIG, WeatherTool, assistant_call_message,
    weather_agent, weather_answer, weather_call,
)


def answer(text: str = "Hello there, how can I help?") -> Generation:
    return Generation(deltas=content(text), prompt_tokens=31, completion_tokens=17)


@pytest.fixture
async def aclient(gateway: Gateway) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0) as c:
        yield c


@pytest.fixture
def sclient(gateway: Gateway) -> OpenAI:
    return OpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0)


async def create(client: AsyncOpenAI | OpenAI, streamed: bool, **params: Any) -> Any:
    """responses.create (or .stream, the SDK's accumulator) with either client; the final Response."""
    params.setdefault("model", "m")
    if isinstance(client, OpenAI):
        def run() -> Any:
            if streamed:
                with client.responses.stream(**params) as stream:
                    for _ in stream:
                        pass
                    return stream.get_final_response()
            return client.responses.create(**params)
        return await asyncio.to_thread(run)
    if streamed:
        async with client.responses.stream(**params) as stream:
            async for _ in stream:
                pass
            return await stream.get_final_response()
    return await client.responses.create(**params)


async def call(client: AsyncOpenAI | OpenAI, method: str, *args: Any, **kwargs: Any) -> Any:
    """client.responses.<method>(...), or responses.input_items.list for "input_items"."""
    resource = client.responses.input_items if method == "input_items" else client.responses
    fn = getattr(resource, "list" if method == "input_items" else method)
    if isinstance(client, OpenAI):
        return await asyncio.to_thread(fn, *args, **kwargs)
    return await fn(*args, **kwargs)


def dump(response: Any) -> Any:
    """The Response as data, without the SDK stream accumulator's own ``parsed`` additions."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "parsed"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return strip(response.model_dump())


CLIENTS = ["async", "sync"]


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest, aclient: AsyncOpenAI, sclient: OpenAI) -> AsyncOpenAI | OpenAI:
    return aclient if request.param == "async" else sclient


# --- retrieve -------------------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_retrieve_returns_the_response_exactly(client: Any, gateway: Gateway, streamed: bool) -> None:
    gateway.upstream.queue(answer())
    created = await create(client, streamed, input="Hi!", instructions="Be brief.")
    assert created.store is True
    retrieved = await call(client, "retrieve", created.id)
    assert dump(retrieved) == dump(created)
    assert retrieved.status == "completed" and retrieved.output_text == "Hello there, how can I help?"
    assert (retrieved.usage.input_tokens, retrieved.usage.output_tokens) == (31, 17)


async def test_stream_retrieval_of_a_response_created_without_streaming(gateway: Gateway) -> None:
    gateway.upstream.queue(answer())
    created = await gateway.create({"input": "hi"})
    async with gateway.session.get(gateway.url + f"/v1/responses/{created['id']}?stream=true") as r:
        assert r.status == 400
        error = (await r.json())["error"]
    assert error["param"] == "stream" and "without streaming" in error["message"]


async def test_store_false_keeps_nothing(client: Any, gateway: Gateway) -> None:
    gateway.upstream.queue(answer())
    created = await create(client, False, input="Hi!", store=False)
    assert created.store is False
    with pytest.raises(openai.NotFoundError):
        await call(client, "retrieve", created.id)


async def test_token_tracking_fields_are_stored_and_replayed_exactly(make_gateway: GatewayFactory) -> None:
    """With return_token_id_information, the ids and logprobs on the last item come back from the
    store byte for byte."""
    gateway = await make_gateway("+policy_model.vllm_model.return_token_id_information=true")
    gateway.upstream.queue(Generation(deltas=[{"content": "Hi", "_tokens": [(13048, -0.25)]},
                                              {"content": " there", "_tokens": [(1052, -1.5)]}],
                                      finish_tokens=[(151645, -0.001)]))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "hi", "stream": True}) as r:
        events = parse_sse(await r.read())
    final = check_stream(events)
    assert final["output"][-1]["generation_token_ids"] == [13048, 1052, 151645]
    async with gateway.session.get(gateway.url + f"/v1/responses/{final['id']}") as r:
        assert r.status == 200
        stored = await r.json()
    assert stored == final
    assert stored["output"][-1]["generation_log_probs"] == [-0.25, -1.5, -0.001]
    assert stored["output"][-1]["prompt_token_ids"] == final["output"][-1]["prompt_token_ids"]


async def test_stream_replay_after_a_sequence_number(client: Any, gateway: Gateway) -> None:
    """GET ?stream=true&starting_after=N: the stored events after N, the same as streamed."""
    gateway.upstream.queue(Generation(deltas=reasoning("Think.") + content("Answer.")))
    async with gateway.session.post(gateway.url + "/v1/responses",
                                    json={"input": "q", "stream": True}) as r:
        original = parse_sse(await r.read())
    rid = original[0]["response"]["id"]
    replayed = await call(client, "retrieve", rid, stream=True, starting_after=3)
    if isinstance(client, OpenAI):
        events = await asyncio.to_thread(lambda: [e.model_dump(exclude_unset=True) for e in replayed])
    else:
        events = [e.model_dump(exclude_unset=True) async for e in replayed]
    assert [e["sequence_number"] for e in events] == list(range(4, len(original)))
    assert events == original[4:]
    async with gateway.session.get(gateway.url + f"/v1/responses/{rid}?stream=true") as r:
        assert parse_sse(await r.read()) == original  # from the start, and contract-valid


async def test_comment_keepalives_are_not_stored_and_replay_numbers_stay_right(make_gateway: GatewayFactory) -> None:
    """With keepalive_format: comment, the ``: keepalive`` lines a silent upstream causes are not
    events: the stored events are exactly the numbered ones, and starting_after=N starts at N+1."""
    gateway = await make_gateway("gateway.keepalive_format=comment", "gateway.keepalive_interval_s=0.05")
    gateway.upstream.queue(Generation(deltas=content("one two three four five six"), pauses={1: 0.6}))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True}) as r:
        raw = await r.read()
    assert b": keepalive\n\n" in raw  # the silence did produce comment lines
    original = parse_sse(raw)
    rid = original[0]["response"]["id"]
    after = len(original) - 4  # past the silence, so a stored comment would shift the numbering
    async with gateway.session.get(gateway.url + f"/v1/responses/{rid}?stream=true&starting_after={after}") as r:
        replayed = parse_sse(await r.read())
    assert [e["sequence_number"] for e in replayed] == list(range(after + 1, len(original)))
    assert replayed == original[after + 1:]


# --- delete ---------------------------------------------------------------------------------------


async def test_delete(client: Any, gateway: Gateway) -> None:
    gateway.upstream.queue(answer())
    created = await create(client, False, input="Hi!")
    assert await call(client, "delete", created.id) is None  # the SDK returns None on success
    with pytest.raises(openai.NotFoundError):
        await call(client, "retrieve", created.id)
    with pytest.raises(openai.NotFoundError):
        await call(client, "delete", created.id)
    async with gateway.session.delete(gateway.url + "/v1/responses/resp_nope") as r:
        assert r.status == 404
        error = (await r.json())["error"]
    assert "resp_nope" in error["message"] and error["type"] == "invalid_request_error"


# --- previous_response_id -------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_previous_response_id_prefixes_earlier_input_and_output(client: Any, gateway: Gateway,
                                                                      streamed: bool) -> None:
    gateway.upstream.queue(Generation(deltas=reasoning("Greet.") + content("Hi! What is up?")),
                           answer("Paris is in France."), answer("Yes."))
    first = await create(client, streamed, input="Hello", instructions="Be kind.")
    second = await create(client, streamed, input="Where is Paris?", previous_response_id=first.id,
                          instructions="Be brief.")
    assert second.previous_response_id == first.id
    assert gateway.upstream.last_body["messages"] == [
        {"role": "system", "content": "Be brief."},  # the first request's instructions are not carried over
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! What is up?", "reasoning_content": "Greet.", "reasoning": "Greet."},
        {"role": "user", "content": "Where is Paris?"},
    ]
    third = await create(client, streamed, input=[{"role": "user", "content": "Sure?"}],
                         previous_response_id=second.id)
    assert third.output_text == "Yes."
    assert gateway.upstream.last_body["messages"] == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi! What is up?", "reasoning_content": "Greet.", "reasoning": "Greet."},
        {"role": "user", "content": "Where is Paris?"},
        {"role": "assistant", "content": "Paris is in France."},
        {"role": "user", "content": "Sure?"},
    ]


async def test_previous_response_id_unknown_deleted_or_running(client: Any, gateway: Gateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        await create(client, False, input="x", previous_response_id="resp_unknown")
    assert "resp_unknown" in str(caught.value)
    gateway.upstream.queue(answer(), answer())
    first = await create(client, False, input="one")
    second = await create(client, False, input="two", previous_response_id=first.id)
    await call(client, "delete", first.id)
    with pytest.raises(openai.NotFoundError) as caught:  # an earlier turn of the chain is gone
        await create(client, False, input="three", previous_response_id=second.id)
    assert first.id in str(caught.value)
    assert len(gateway.upstream.requests) == 2


async def test_previous_response_id_with_store_false_continues_without_storing(client: Any,
                                                                              gateway: Gateway) -> None:
    gateway.upstream.queue(answer("A."), answer("B."))
    first = await create(client, False, input="one")
    second = await create(client, False, input="two", previous_response_id=first.id, store=False)
    assert second.previous_response_id == first.id and second.store is False
    assert len(gateway.upstream.last_body["messages"]) == 3
    with pytest.raises(openai.NotFoundError):
        await call(client, "retrieve", second.id)


# --- input_items ----------------------------------------------------------------------------------


async def test_input_items_pagination(client: Any, gateway: Gateway) -> None:
    gateway.upstream.queue(answer("First answer."), answer("Second answer."))
    first = await create(client, False, input=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])
    second = await create(client, False, input="c", previous_response_id=first.id)
    page = await call(client, "input_items", second.id)  # default: desc, 20
    texts = [item.content[0].text for item in page.data]
    assert texts == ["c", "First answer.", "b", "a"]
    assert page.data[1].id == first.output[0].id  # the earlier output, under its own id
    assert all(item.id for item in page.data) and page.first_id == page.data[0].id and page.has_more is False
    asc = await call(client, "input_items", second.id, order="asc", limit=2)
    assert [i.content[0].text for i in asc.data] == ["a", "b"] and asc.has_more is True
    rest = await call(client, "input_items", second.id, order="asc", after=asc.last_id)
    assert [i.content[0].text for i in rest.data] == ["First answer.", "c"] and rest.has_more is False
    ids = [item.id for item in page.data]
    async with gateway.session.get(gateway.url + f"/v1/responses/{second.id}/input_items",
                                   params={"order": "asc", "before": ids[0], "after": ids[3]}) as r:
        between = await r.json()
    assert [i["id"] for i in between["data"]] == [ids[2], ids[1]]
    for query, param in (({"limit": "0"}, "limit"), ({"order": "up"}, "order"), ({"after": "msg_x"}, "after")):
        async with gateway.session.get(gateway.url + f"/v1/responses/{second.id}/input_items", params=query) as r:
            assert r.status == 400 and (await r.json())["error"]["param"] == param


async def test_input_items_async_auto_pagination(aclient: AsyncOpenAI, gateway: Gateway) -> None:
    gateway.upstream.queue(answer())
    items = [{"role": "user", "content": f"m{i}"} for i in range(25)]
    created = await create(aclient, False, input=items)
    seen = [item.content[0].text async for item in aclient.responses.input_items.list(created.id, limit=10,
                                                                                          order="asc")]
    assert seen == [f"m{i}" for i in range(25)]


# --- isolation, configuration, retention, persistence --------------------------------------------


async def test_one_key_cannot_see_another_keys_responses(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.api_keys=[key-a,key-b]")
    gateway.upstream.queue(answer())
    a = AsyncOpenAI(base_url=gateway.url + "/v1", api_key="key-a", max_retries=0)
    b = AsyncOpenAI(base_url=gateway.url + "/v1", api_key="key-b", max_retries=0)
    created = await a.responses.create(model="m", input="secret")
    assert (await a.responses.retrieve(created.id)).id == created.id
    for attempt in (lambda: b.responses.retrieve(created.id), lambda: b.responses.delete(created.id),
                    lambda: b.responses.input_items.list(created.id),
                    lambda: b.responses.create(model="m", input="x", previous_response_id=created.id)):
        with pytest.raises(openai.NotFoundError):
            await attempt()
    assert (await a.responses.retrieve(created.id)).id == created.id  # b's delete did nothing
    assert len(gateway.upstream.requests) == 1
    await a.close()
    await b.close()


async def test_store_turned_off_in_the_config(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.store=false")
    gateway.upstream.queue(answer())
    created = await gateway.create({"input": "hi"})
    assert created["store"] is False
    async with gateway.session.get(gateway.url + f"/v1/responses/{created['id']}") as r:
        assert r.status == 404
    async with gateway.session.post(gateway.url + "/v1/responses",
                                    json={"input": "x", "previous_response_id": created["id"]}) as r:
        assert r.status == 400 and (await r.json())["error"]["param"] == "previous_response_id"


async def test_expired_responses_are_gone(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.store_ttl=0.5")
    gateway.upstream.queue(answer())
    created = await gateway.create({"input": "hi"})
    deadline = time.time() + 0.5  # created_at is whole seconds: wait from the request's end
    while time.time() < deadline + 0.05:
        await asyncio.sleep(0.05)
    async with gateway.session.get(gateway.url + f"/v1/responses/{created['id']}") as r:
        assert r.status == 404


async def test_responses_outlive_the_gateway_process(make_gateway: GatewayFactory, tmp_path: Any) -> None:
    first = await make_gateway(f"gateway.data_dir={tmp_path}")
    first.upstream.queue(answer())
    created = await first.create({"input": "hi"})
    await first.runner.cleanup()
    second = await make_gateway(f"gateway.data_dir={tmp_path}")
    async with second.session.get(second.url + f"/v1/responses/{created['id']}") as r:
        assert await r.json() == created
    assert (tmp_path / "responses.sqlite3").exists()


async def test_event_batches_are_stored_compressed_and_older_ones_still_read(tmp_path: Any) -> None:
    """Batches go to disk compressed with zstd (a 256-token stream's frames repeat their field names
    in every event); a batch an older gateway wrote deflated (zlib) or raw is read as it is."""
    import sqlite3
    import zlib

    store = SQLiteStore(str(tmp_path), max_bytes=10**9, clock=time.time)
    await store.start()
    frames = b"".join(b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
                      b'"item_id":"msg_1","delta":"w%d","sequence_number":%d}\n\n' % (i, i + 2) for i in range(256))
    now = time.time()
    for rid in ("fresh", "old", "deflated"):
        await store.create(Record(id=rid, owner="", status="in_progress", response=b"{}", input=b"[]",
                                  created_at=now, expires_at=now + 100))
    await store.append("fresh", 2, frames)
    await store.finish("fresh", "completed", b'{"status":"completed"}', 258, b"event: e\ndata: {}\n\n")
    await store.close()
    with sqlite3.connect(tmp_path / "responses.sqlite3") as conn:
        stored = conn.execute("SELECT frames FROM events WHERE response_id = 'fresh' ORDER BY first_seq").fetchall()
        assert len(stored[0][0]) * 5 < len(frames)
        assert stored[0][0][:4] == b"\x28\xb5\x2f\xfd"  # a zstd frame
        conn.execute("INSERT INTO events VALUES ('old', 0, 255, ?)", (frames,))  # as written before compression
        conn.execute("INSERT INTO events VALUES ('deflated', 0, 255, ?)", (zlib.compress(frames, 1),))  # before zstd
    store = SQLiteStore(str(tmp_path), max_bytes=10**9, clock=time.time)
    await store.start()
    assert await store.events_after("fresh", -1) == [(2, frames), (258, b"event: e\ndata: {}\n\n")]
    assert await store.events_after("old", -1) == [(0, frames)]
    assert await store.events_after("deflated", -1) == [(0, frames)]
    await store.close()


@pytest.mark.parametrize("layout", ["new", "older"])
async def test_events_table_layout_new_files_rowid_older_files_kept(tmp_path: Any, layout: str) -> None:
    """A new file's events table is a rowid table (its rows appended, not spilled to overflow
    pages); a file made by an older gateway, WITHOUT ROWID, keeps its layout and is written, read,
    replayed after a sequence number and deleted from as before."""
    import sqlite3

    if layout == "older":
        with sqlite3.connect(tmp_path / "responses.sqlite3") as conn:
            conn.execute("CREATE TABLE events (response_id TEXT NOT NULL, first_seq INTEGER NOT NULL, "
                         "last_seq INTEGER NOT NULL, frames BLOB NOT NULL, PRIMARY KEY (response_id, first_seq)) "
                         "WITHOUT ROWID")
    store = SQLiteStore(str(tmp_path), max_bytes=10**9, clock=time.time)
    await store.start()
    now = time.time()
    batches = [b'event: e\ndata: {"sequence_number":%d}\n\n' % i for i in range(3)]
    await store.create(Record(id="r1", owner="", status="in_progress", response=b"{}", input=b"[]",
                              created_at=now, expires_at=now + 100))
    await store.append("r1", 0, batches[0])
    await store.append("r1", 1, batches[1])
    await store.finish("r1", "completed", b'{"status":"completed"}', 2, batches[2])
    assert await store.events_after("r1", -1) == [(0, batches[0]), (1, batches[1]), (2, batches[2])]
    assert await store.events_after("r1", 0) == [(1, batches[1]), (2, batches[2])]
    assert await store.delete("", "r1")
    assert await store.events_after("r1", -1) == []
    await store.close()
    with sqlite3.connect(tmp_path / "responses.sqlite3") as conn:
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    assert ("WITHOUT ROWID" in sql) is (layout == "older")


async def test_size_bound_drops_the_oldest(tmp_path: Any) -> None:
    now = [1000.0]
    store = SQLiteStore(str(tmp_path), max_bytes=2500, clock=lambda: now[0])
    await store.start()
    for i in range(5):
        await store.create(Record(id=f"r{i}", owner="", status="in_progress", response=b"{}" * 200,
                                  input=b"[]", created_at=now[0] + i, expires_at=now[0] + 100))
        await store.finish(f"r{i}", "completed", b"x" * 500, 0, b"event: e\ndata: {}\n\n" * 10)
    await store.sweep(now[0])
    kept = [i for i in range(5) if await store.get("", f"r{i}") is not None]
    assert kept == [2, 3, 4]  # ~700 bytes each: the two oldest went
    now[0] += 200
    await store.sweep(now[0])
    assert await store.get("", "r4") is None  # expired
    await store.close()


async def test_a_responses_end_is_stored_in_its_own_row_and_replayed_after_its_other_batches(tmp_path: Any) -> None:
    """A response's last batch of events goes in the response's row, not in the events table: a
    response stored whole at its end is one row (the store's most frequent write), and one whose
    events were flushed before keeps those rows and gets its end in its own. Replays are the same
    as from separate rows, after any sequence number."""
    import sqlite3

    store = SQLiteStore(str(tmp_path), max_bytes=10**9, clock=time.time)
    await store.start()
    now = time.time()
    batches = [b'event: e\ndata: {"sequence_number":%d}\n\n' % i for i in range(4)]
    whole = Record(id="whole", owner="", status="in_progress", response=b"{}", input=b"[]", created_at=now,
                   expires_at=now + 100)
    await store.create_finished(whole, "completed", b'{"status":"completed"}', 0, batches[0] + batches[1])
    await store.create(Record(id="flushed", owner="", status="in_progress", response=b"{}", input=b"[]",
                              created_at=now, expires_at=now + 100))
    await store.append("flushed", 0, batches[0])
    await store.append("flushed", 1, batches[1])
    await store.finish("flushed", "completed", b'{"status":"completed"}', 2, batches[2] + batches[3])
    await store.create_finished(dataclasses.replace(whole, id="silent"), "completed", b"{}", 0, b"")

    assert await store.events_after("whole", -1) == [(0, batches[0] + batches[1])]
    assert await store.events_after("whole", 0) == [(0, batches[0] + batches[1])]  # the batch holding seq 1
    assert await store.events_after("whole", 1) == []
    assert await store.events_after("flushed", -1) == [(0, batches[0]), (1, batches[1]), (2, batches[2] + batches[3])]
    assert await store.events_after("flushed", 1) == [(2, batches[2] + batches[3])]
    assert await store.events_after("flushed", 3) == []
    assert await store.events_after("silent", -1) == []
    assert (await store.get("", "whole")).last_seq == 1  # type: ignore[union-attr]
    assert (await store.get("", "flushed")).last_seq == 3  # type: ignore[union-attr]
    await store.close()
    with sqlite3.connect(tmp_path / "responses.sqlite3") as conn:
        rows = conn.execute("SELECT response_id, first_seq FROM events ORDER BY response_id, first_seq").fetchall()
        assert rows == [("flushed", 0), ("flushed", 1)]
        ends = dict(conn.execute("SELECT id, end_first_seq FROM responses").fetchall())
        assert ends == {"whole": 0, "flushed": 2, "silent": None}
        indexes = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                                              "AND tbl_name = 'responses'")]
        assert indexes == ["sqlite_autoindex_responses_1"]  # the ids' index only


async def test_a_file_made_before_ends_were_kept_in_the_row_is_upgraded_at_start(tmp_path: Any) -> None:
    """A file written by a gateway that kept every batch in the events table (and an index on
    created_at): at start the row gets its end columns and the index goes, in every process that
    starts on it at once; what was stored before replays as before, and new writes use the row."""
    import sqlite3

    with sqlite3.connect(tmp_path / "responses.sqlite3") as conn:
        conn.executescript("""
            CREATE TABLE responses (id TEXT PRIMARY KEY, owner TEXT NOT NULL, status TEXT NOT NULL,
                response BLOB NOT NULL, input BLOB NOT NULL, chain TEXT NOT NULL, created_at REAL NOT NULL,
                expires_at REAL NOT NULL, background INTEGER NOT NULL, lease_until REAL,
                cancel_requested INTEGER NOT NULL DEFAULT 0, last_seq INTEGER NOT NULL DEFAULT -1,
                size INTEGER NOT NULL);
            CREATE INDEX responses_by_creation ON responses (created_at);
            CREATE TABLE events (response_id TEXT NOT NULL, first_seq INTEGER NOT NULL, last_seq INTEGER NOT NULL,
                frames BLOB NOT NULL, PRIMARY KEY (response_id, first_seq));""")
        conn.execute("INSERT INTO responses VALUES ('old', '', 'completed', '{}', '[]', '[]', ?, ?, 0, NULL, 0, 1, 40)",
                     (time.time(), time.time() + 100))
        conn.execute("INSERT INTO events VALUES ('old', 0, 1, ?)", (b"event: e\ndata: {}\n\n" * 2,))
    stores = [SQLiteStore(str(tmp_path), max_bytes=10**9, clock=time.time) for _ in range(2)]
    await asyncio.gather(*(s.start() for s in stores))
    assert await stores[1].events_after("old", -1) == [(0, b"event: e\ndata: {}\n\n" * 2)]
    now = time.time()
    await stores[0].create_finished(Record(id="new", owner="", status="in_progress", response=b"{}", input=b"[]",
                                           created_at=now, expires_at=now + 100), "completed", b"{}", 0,
                                    b"event: e\ndata: {}\n\n")
    assert await stores[1].events_after("new", -1) == [(0, b"event: e\ndata: {}\n\n")]
    for s in stores:
        await s.close()
    with sqlite3.connect(tmp_path / "responses.sqlite3") as conn:
        columns = [r[1] for r in conn.execute("PRAGMA table_info(responses)")]
        assert columns[-2:] == ["end_first_seq", "end_frames"]
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'responses_by_creation'").fetchone() is None
        assert conn.execute("SELECT COUNT(*) FROM events WHERE response_id = 'new'").fetchone() == (0,)


async def test_writes_queued_together_commit_together_and_fail_alone(tmp_path: Any) -> None:
    """The writes asked for together commit in one transaction (a thousand streams storing at
    once cost one commit, not a thousand), on the event loop or, queued behind a busy writer
    thread, on it; one that fails in the group (here a duplicate id) fails alone: the others are
    done."""
    import threading

    store = SQLiteStore(str(tmp_path), max_bytes=10**9, clock=lambda: 1000.0)
    await store.start()
    record = Record(id="r0", owner="", status="in_progress", response=b"{}", input=b"[]", expires_at=2000.0)
    await store.create(record)
    busy, release = threading.Event(), threading.Event()

    def hold_the_writer(conn: Any) -> None:
        busy.set()
        release.wait(60)

    holding = asyncio.ensure_future(store._write(hold_the_writer))
    await asyncio.get_running_loop().run_in_executor(None, busy.wait, 60)
    commits: list[str] = []
    conn_of_writer: list[Any] = []

    def count_commits(conn: Any) -> None:
        conn_of_writer.append(conn)
        conn.set_trace_callback(lambda sql: commits.append(sql) if sql == "COMMIT" else None)

    tracing = asyncio.ensure_future(store._write(count_commits))
    assert store._loop_conn is not None  # small writes commit on the event loop's own connection: counted too
    count_commits(store._loop_conn)
    writes = [asyncio.ensure_future(w) for w in (
        store.append("r0", 0, b"event: a\ndata: {}\n\n"),
        store.create(record),  # a duplicate: fails
        store.create(dataclasses.replace(record, id="r1")),
        store.finish("r0", "completed", b'{"status": "completed"}', 1, b"event: b\ndata: {}\n\n"),
    )]
    await asyncio.sleep(0)  # all four queued behind the held writer
    release.set()
    await holding
    await tracing
    results = await asyncio.gather(*writes, return_exceptions=True)
    assert [type(r).__name__ for r in results] == ["NoneType", "StoreError", "NoneType", "NoneType"], results
    assert "UNIQUE" in str(results[1])
    assert len(commits) == 3  # the group (rolled back), then each alone: the three that worked committed
    finished = await store.get("", "r0")
    assert finished is not None and finished.status == "completed" and finished.last_seq == 1
    assert await store.get("", "r1") is not None
    assert [seq for seq, _ in await store.events_after("r0", -1)] == [0, 1]
    busy.clear()
    release.clear()
    holding = asyncio.ensure_future(store._write(hold_the_writer))
    await asyncio.get_running_loop().run_in_executor(None, busy.wait, 60)
    commits.clear()
    appends = [asyncio.ensure_future(store.append("r1", seq, b"event: c\ndata: {}\n\n")) for seq in range(50)]
    await asyncio.sleep(0)
    release.set()
    await holding
    await asyncio.gather(*appends)
    assert len(commits) == 1  # fifty writes, one transaction
    assert [seq for seq, _ in await store.events_after("r1", -1)] == list(range(50))
    for conn in conn_of_writer:
        conn.set_trace_callback(None)
    await store.close()


def trace_commits(conn: Any, into: list[str]) -> None:
    conn.set_trace_callback(lambda sql: into.append(sql) if sql == "COMMIT" or "wal_checkpoint" in sql else None)


async def traced_store(tmp_path: Any) -> tuple[SQLiteStore, list[str], list[str]]:
    """A started store, and the commits (and checkpoints) of its event loop's connection and of its
    writer thread's, as they happen."""
    store = SQLiteStore(str(tmp_path), max_bytes=10**9, clock=lambda: 1000.0)
    await store.start()
    on_loop: list[str] = []
    on_thread: list[str] = []
    trace_commits(store._loop_connection(), on_loop)
    await store._write(lambda conn: trace_commits(conn, on_thread))
    return store, on_loop, on_thread


def small_record(i: int) -> Record:
    return Record(id=f"r{i}", owner="", status="in_progress", response=b"{}", input=b"[]", expires_at=2000.0)


async def test_small_writes_commit_on_the_event_loop_and_a_taken_lock_sends_them_to_the_thread(tmp_path: Any) -> None:
    """A response's row commits on the event loop's own connection, which never waits for the
    file's lock: while another process holds it, the write goes to the writer thread, which waits
    for it; the write is done once the lock is free. A large write goes to the thread at once."""
    import sqlite3

    from gateway.store import sqlite as sqlite_store

    store, on_loop, on_thread = await traced_store(tmp_path)
    record = small_record(0)
    await store.create(record)
    assert on_loop == ["COMMIT"] and on_thread == []
    loop_conn = store._loop_connection()
    assert loop_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0  # the thread checkpoints
    assert loop_conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0  # a taken lock is never waited for here

    other = sqlite3.connect(store.path, isolation_level=None)  # another gateway process, writing
    other.execute("BEGIN IMMEDIATE")
    waiting = asyncio.ensure_future(store.create(dataclasses.replace(record, id="r1")))
    for _ in range(5):
        await asyncio.sleep(0)  # the loop goes on: the write waits on the thread, not here
    assert not waiting.done() and store._on_thread == 1
    other.execute("COMMIT")
    await asyncio.wait_for(waiting, 60)
    assert on_thread == ["COMMIT"] and on_loop == ["COMMIT"] and store._on_thread == 0
    assert await store.get("", "r1") is not None

    large = dataclasses.replace(record, id="r2", input=b"[" + b" " * sqlite_store.INLINE_MAX_BYTES + b"]")
    await store.create(large)
    assert on_thread == ["COMMIT", "COMMIT"] and on_loop == ["COMMIT"]
    other.close()
    await store.close()


async def test_the_writer_thread_checkpoints_what_the_event_loop_wrote(tmp_path: Any,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's connection never checkpoints the WAL (that writes the database file and syncs
    it): every CHECKPOINT_EVERY transactions of the loop, the writer thread does."""
    from gateway.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 2)
    store, on_loop, on_thread = await traced_store(tmp_path)
    for i in range(5):
        await store.create(small_record(i))
    await store._write(lambda conn: None)  # after the checkpoints asked for (the thread's queue is in order)
    assert on_loop == ["COMMIT"] * 5
    assert on_thread == ["PRAGMA wal_checkpoint(PASSIVE)"] * 2
    await store.close()


async def test_past_its_bound_the_wal_is_started_over_by_the_writer_thread(tmp_path: Any,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A PASSIVE checkpoint never completes while the event loop goes on writing, and only a
    complete one lets the WAL start over: under steady load it grew by every page written. Once it
    holds WAL_RESTART_FRAMES frames, the writer thread follows the PASSIVE checkpoint with a
    RESTART, and the next write starts the WAL at its beginning."""
    import sqlite3

    from gateway.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "CHECKPOINT_EVERY", 2)
    monkeypatch.setattr(sqlite_store, "WAL_RESTART_FRAMES", 1)
    store, on_loop, on_thread = await traced_store(tmp_path)
    for i in range(4):
        await store.create(small_record(i))
    await store._write(lambda conn: None)  # after the checkpoints asked for
    assert on_loop == ["COMMIT"] * 4
    assert on_thread == ["PRAGMA wal_checkpoint(PASSIVE)", "PRAGMA wal_checkpoint(RESTART)"] * 2
    await store.create(small_record(4))
    with sqlite3.connect(tmp_path / "responses.sqlite3") as conn:
        one_write = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
    assert 0 < one_write <= 3  # the frames of the last write alone: the WAL started over before it
    await store.close()


async def test_a_slow_transaction_on_the_event_loop_sends_the_next_writes_to_the_thread(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A slow disk must not hold the event loop: after a transaction there took longer than
    SLOW_ON_LOOP_S (here: any), the writes go to the writer thread, and a warning says so."""
    from gateway.store import sqlite as sqlite_store

    monkeypatch.setattr(sqlite_store, "SLOW_ON_LOOP_S", -1.0)
    store, on_loop, on_thread = await traced_store(tmp_path)
    for i in range(3):
        await store.create(small_record(i))
    assert on_loop == ["COMMIT"] and on_thread == ["COMMIT", "COMMIT"]
    assert "every write goes to its writer thread" in caplog.text
    await store.close()


async def test_event_writes_are_batched(gateway: Gateway) -> None:
    """At most one store write per socket write to the client (itself at most one per upstream
    read), whatever the number of events."""
    service = gateway.runner.app[__import__("gateway.server.app", fromlist=["STORE_KEY"]).STORE_KEY]
    writes: list[int] = []
    original = service.store.append

    async def counting(response_id: str, first_seq: int, frames: bytes) -> None:
        writes.append(frames.count(b"\n\n"))
        await original(response_id, first_seq, frames)

    service.store.append = counting
    gateway.upstream.queue(Generation(deltas=content("x" * 400, size=2)))  # 200 chunks
    events, final = await gateway.stream({"input": "hi"})
    assert len(writes) <= 200 and sum(writes) < len(events)  # the terminal batch went with finish
    async with gateway.session.get(gateway.url + f"/v1/responses/{final['id']}?stream=true") as r:
        assert parse_sse(await r.read()) == events


# --- the Agents SDK on previous_response_id alone -------------------------------------------------


async def test_agents_sdk_tool_conversation_on_previous_response_id(gateway: Gateway) -> None:
    """auto_previous_response_id: every request after the first carries only the new items (the
    tool's output, the next question) and previous_response_id; the gateway rebuilds the whole
    history for vLLM from the store."""
    sent: list[dict[str, Any]] = []

    async def record(request: httpx2.Request) -> None:
        if request.method == "POST":
            sent.append(json.loads(request.content))

    http = httpx2.AsyncClient(event_hooks={"request": [record]})
    client = AsyncOpenAI(base_url=gateway.url + "/v1", api_key="x", max_retries=0, http_client=http)
    tool = WeatherTool()
    agent = weather_agent(client, tool)
    gateway.upstream.queue(weather_call(with_reasoning=True), weather_answer(), Generation(deltas=content("No.")))
    first = await Runner.run(agent, QUESTION, auto_previous_response_id=True, run_config=RUN_CONFIG)
    assert first.final_output == FINAL and tool.calls == ["Paris"]
    second = await Runner.run(agent, "Rain?", previous_response_id=first.last_response_id,
                              auto_previous_response_id=True, run_config=RUN_CONFIG)
    assert second.final_output == "No."
    assert "previous_response_id" not in sent[0]
    assert [(s.get("previous_response_id"), [i.get("type", "message") for i in s["input"]]) for s in sent[1:]] == [
        (sent_id, kinds) for sent_id, kinds in zip(
            [first.raw_responses[0].response_id, first.last_response_id], [["function_call_output"], ["message"]])]
    history = [
        {"role": "system", "content": INSTRUCTIONS},
        {"role": "user", "content": QUESTION},
        {**assistant_call_message(with_reasoning=True), "content": ""},
        {"role": "tool", "tool_call_id": CALL_ID, "content": WeatherTool.output("Paris")},
    ]
    assert gateway.upstream.requests[1]["body"]["messages"] == history
    assert gateway.upstream.last_body["messages"] == history + [
        {"role": "assistant", "content": FINAL}, {"role": "user", "content": "Rain?"}]
    await client.close()


# --- background -----------------------------------------------------------------------------------


async def wait_terminal(client: Any, rid: str) -> Any:
    """Poll retrieve until the response has ended (generous bound: the machine is shared)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = await call(client, "retrieve", rid)
        if response.status not in ("queued", "in_progress"):
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"{rid} did not end")


async def test_background_poll_until_completed(client: Any, gateway: Gateway) -> None:
    gateway.upstream.queue(answer())
    queued = await create(client, False, input="Hi!", background=True)
    assert queued.status == "queued" and queued.background is True and queued.output == []
    done = await wait_terminal(client, queued.id)
    assert done.status == "completed", done.error
    assert done.output_text == "Hello there, how can I help?"
    assert done.background is True


async def until(condition: Any, what: str) -> None:
    """Wait for a condition the test caused (generous bound: the machine is shared and slow)."""
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def long_generation(stall_at: int = 3) -> Generation:
    """Streams a few deltas, then stalls (as a long generation does) until it is closed."""
    return Generation(deltas=content("one two three four five six", size=4), pauses={stall_at: 120.0})


async def test_background_stream_and_the_client_leaving(aclient: AsyncOpenAI, gateway: Gateway) -> None:
    """stream: true on a background request follows its stored events; a client that leaves does
    not stop the run, which completes, and can be read again from any point."""
    gateway.upstream.queue(Generation(deltas=content("one two three four five six", size=4), pauses={3: 1.0}))
    stream = await aclient.responses.create(model="m", input="count", background=True, stream=True)
    seen = []
    async for event in stream:
        seen.append(event)
        if event.type == "response.output_text.delta":
            break  # the client leaves mid-answer
    await stream.close()
    rid = seen[0].response.id
    assert seen[0].response.status == "queued" or seen[0].response.status == "in_progress"
    done = await wait_terminal(aclient, rid)
    assert done.status == "completed" and done.output_text == "one two three four five six"
    assert gateway.upstream.requests[-1]["finished"] and not gateway.upstream.requests[-1]["closed_early"]
    async with gateway.session.get(gateway.url + f"/v1/responses/{rid}?stream=true") as r:
        events = parse_sse(await r.read())
    assert check_stream(events)["output"] == done.model_dump(mode="json", exclude_unset=True)["output"]


async def test_background_resume_follows_a_running_response(gateway: Gateway, aclient: AsyncOpenAI) -> None:
    """GET ?stream=true&starting_after=N on a running response: the stored events after N, then the
    rest as they come, to the terminal event."""
    release = asyncio.Event()  # vLLM holds the fourth delta until the test lets it go
    gateway.upstream.queue(Generation(deltas=content("one two three four five six", size=4), hold_at=3,
                                      hold=release))
    queued = await aclient.responses.create(model="m", input="count", background=True)
    await until(lambda: gateway.upstream.requests and gateway.upstream.requests[-1]["sent"] >= 3, "three deltas")
    deadline = time.monotonic() + 60  # its first events are stored: GET shows the output so far
    while not (running := await aclient.responses.retrieve(queued.id)).output:
        assert time.monotonic() < deadline, "no output was shown while running"
        await asyncio.sleep(0.05)
    assert running.status == "in_progress" and running.output[0].status == "in_progress"
    resumed = await aclient.responses.retrieve(queued.id, stream=True, starting_after=2)
    events: list[dict[str, Any]] = []
    async for event in resumed:
        events.append(event.model_dump(mode="json", exclude_unset=True))
        if event.type == "response.output_text.delta":
            release.set()  # the resumed stream is following a response still running: let it end
    assert events[0]["sequence_number"] == 3 and events[-1]["type"] == "response.completed"
    async with gateway.session.get(gateway.url + f"/v1/responses/{queued.id}?stream=true&starting_after=-1") as r:
        whole = parse_sse(await r.read())
    assert whole[3:] == events
    assert check_stream(whole)["status"] == "completed"


@pytest.mark.parametrize("client_kind", CLIENTS)
async def test_cancel_stops_vllm(gateway: Gateway, aclient: AsyncOpenAI, sclient: OpenAI, client_kind: str) -> None:
    client = aclient if client_kind == "async" else sclient
    gateway.upstream.queue(long_generation())
    queued = await create(client, False, input="count", background=True)
    await until(lambda: gateway.upstream.requests and gateway.upstream.requests[-1]["sent"] >= 3, "the stall")
    cancelled = await call(client, "cancel", queued.id)
    assert cancelled.status == "cancelled" and cancelled.id == queued.id
    await until(lambda: gateway.upstream.requests[-1]["closed_early"], "vLLM's request to be closed")
    assert (await call(client, "retrieve", queued.id)).status == "cancelled"
    again = await call(client, "cancel", queued.id)  # idempotent
    assert again.status == "cancelled"
    async with gateway.session.get(gateway.url + f"/v1/responses/{queued.id}?stream=true") as r:
        events = parse_sse(await r.read())
    assert events[-2]["type"] == "error" and events[-2]["code"] == "response_cancelled"
    assert check_stream(events)["status"] == "cancelled"


async def test_cancel_refusals(aclient: AsyncOpenAI, gateway: Gateway) -> None:
    gateway.upstream.queue(answer(), answer())
    foreground = await aclient.responses.create(model="m", input="x")
    with pytest.raises(openai.BadRequestError) as caught:
        await aclient.responses.cancel(foreground.id)
    assert "background" in str(caught.value)
    background = await aclient.responses.create(model="m", input="x", background=True)
    await wait_terminal(aclient, background.id)
    with pytest.raises(openai.BadRequestError) as caught:
        await aclient.responses.cancel(background.id)
    assert "completed" in str(caught.value)
    with pytest.raises(openai.NotFoundError):
        await aclient.responses.cancel("resp_nope")
    with pytest.raises(openai.BadRequestError) as caught:
        await aclient.responses.create(model="m", input="x", background=True, store=False)
    assert caught.value.param == "store"


async def test_background_run_that_vllm_refuses_ends_failed(aclient: AsyncOpenAI, gateway: Gateway) -> None:
    """No HTTP error can reach a client that was already answered: the run ends failed, saying why."""
    gateway.upstream.queue(Generation(status=400, error_message="temperature must be positive"))
    queued = await aclient.responses.create(model="m", input="x", background=True)
    done = await wait_terminal(aclient, queued.id)
    assert done.status == "failed" and "temperature must be positive" in done.error.message


# --- the Conversations API ------------------------------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["create", "stream"])
async def test_conversation_turns(client: Any, gateway: Gateway, streamed: bool) -> None:
    """A response in a conversation starts from its items; its input and output join it."""
    conv = await call_conv(client, "create", items=[{"type": "message", "role": "user", "content": "My name is Ada."}],
                           metadata={"topic": "names"})
    assert conv.id.startswith("conv_") and conv.metadata == {"topic": "names"}
    gateway.upstream.queue(answer("Hello Ada."), answer("You are Ada."))
    first = await create(client, streamed, input="Hi!", conversation=conv.id)
    assert first.conversation.id == conv.id
    assert gateway.upstream.last_body["messages"] == [{"role": "user", "content": "My name is Ada."},
                                                      {"role": "user", "content": "Hi!"}]
    second = await create(client, streamed, input="Who am I?", conversation={"id": conv.id}, store=False)
    assert second.output_text == "You are Ada."
    assert gateway.upstream.last_body["messages"] == [
        {"role": "user", "content": "My name is Ada."}, {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello Ada."}, {"role": "user", "content": "Who am I?"}]
    items = await call_conv(client, "items.list", conv.id, order="asc")
    texts = [(i.role, i.content[0].text) for i in items.data]
    assert texts == [("user", "My name is Ada."), ("user", "Hi!"), ("assistant", "Hello Ada."),
                     ("user", "Who am I?"), ("assistant", "You are Ada.")]  # store: false still joins it
    assert items.data[2].id == first.output[0].id


async def test_conversation_api(aclient: AsyncOpenAI, gateway: Gateway) -> None:
    conv = await aclient.conversations.create()
    assert (await aclient.conversations.retrieve(conv.id)).metadata == {}
    updated = await aclient.conversations.update(conv.id, metadata={"a": "b"})
    assert updated.metadata == {"a": "b"}
    added = await aclient.conversations.items.create(conv.id, items=[
        {"type": "message", "role": "user", "content": "one"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "two"}]}])
    assert [i.content[0].text for i in added.data] == ["one", "two"]
    second = added.data[1].id
    got = await aclient.conversations.items.retrieve(second, conversation_id=conv.id)
    assert got.content[0].text == "two"
    listed = [i.content[0].text async for i in aclient.conversations.items.list(conv.id, limit=1)]
    assert listed == ["two", "one"]  # desc by default, page by page
    after = await aclient.conversations.items.delete(second, conversation_id=conv.id)
    assert after.id == conv.id
    assert [i.content[0].text async for i in aclient.conversations.items.list(conv.id)] == ["one"]
    with pytest.raises(openai.NotFoundError):
        await aclient.conversations.items.retrieve(second, conversation_id=conv.id)
    deleted = await aclient.conversations.delete(conv.id)
    assert deleted.deleted is True and deleted.id == conv.id
    with pytest.raises(openai.NotFoundError):
        await aclient.conversations.retrieve(conv.id)
    with pytest.raises(openai.NotFoundError):
        await aclient.responses.create(model="m", input="x", conversation=conv.id)
    with pytest.raises(openai.BadRequestError) as caught:
        await aclient.conversations.items.create(conv.id, items=[{"type": "nonsense"}])
    assert caught.value.param == "items[0]"
    other = await aclient.conversations.create()
    with pytest.raises(openai.BadRequestError) as caught:
        await aclient.responses.create(model="m", input="x", conversation=other.id, previous_response_id="resp_1")
    assert caught.value.param == "conversation"
    assert gateway.upstream.requests == []


async def test_conversations_are_per_key(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.api_keys=[key-a,key-b]")
    a = AsyncOpenAI(base_url=gateway.url + "/v1", api_key="key-a", max_retries=0)
    b = AsyncOpenAI(base_url=gateway.url + "/v1", api_key="key-b", max_retries=0)
    conv = await a.conversations.create(items=[{"type": "message", "role": "user", "content": "secret"}])
    for attempt in (lambda: b.conversations.retrieve(conv.id), lambda: b.conversations.items.list(conv.id),
                    lambda: b.conversations.delete(conv.id),
                    lambda: b.conversations.items.create(conv.id, items=[{"role": "user", "content": "x"}]),
                    lambda: b.responses.create(model="m", input="x", conversation=conv.id)):
        with pytest.raises(openai.NotFoundError):
            await attempt()
    assert [i.content[0].text async for i in a.conversations.items.list(conv.id)] == ["secret"]
    await a.close()
    await b.close()


async def call_conv(client: AsyncOpenAI | OpenAI, method: str, *args: Any, **kwargs: Any) -> Any:
    resource: Any = client.conversations
    for part in method.split("."):
        resource = getattr(resource, part)
    if isinstance(client, OpenAI):
        return await asyncio.to_thread(resource, *args, **kwargs)
    return await resource(*args, **kwargs)


async def test_a_write_waits_its_turn_behind_another_process_without_sleeping_milliseconds(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's transaction holds the file's write lock (--workers sharing it): the
    writer retries BEGIN itself, 50 µs apart and doubling (SQLite's busy handler slept 1 ms, then
    2, 5, 10 ...), and writes once the lock is free. Past LOCK_WAIT_S it fails with a StoreError."""
    import sqlite3

    from gateway.store import sqlite as sqlite_store
    from gateway.store.base import StoreError

    store = SQLiteStore(str(tmp_path), max_bytes=10**9, clock=lambda: 1000.0)
    await store.start()
    other = sqlite3.connect(store.path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    slept: list[float] = []
    real_sleep = time.sleep

    def sleep(seconds: float) -> None:  # the writer thread's waits: the lock is freed at the third
        slept.append(seconds)
        if len(slept) == 3:
            other.execute("COMMIT")
        real_sleep(seconds)

    monkeypatch.setattr(sqlite_store.time, "sleep", sleep)
    record = Record(id="r0", owner="", status="in_progress", response=b"{}", input=b"[]", expires_at=2000.0)
    await asyncio.wait_for(store.create(record), 60)
    assert slept == [50e-6, 100e-6, 200e-6]
    assert await store.get("", "r0") is not None

    other.execute("BEGIN IMMEDIATE")
    monkeypatch.setattr(sqlite_store, "LOCK_WAIT_S", 0.0)
    with pytest.raises(StoreError, match="locked"):
        await asyncio.wait_for(store.create(dataclasses.replace(record, id="r1")), 60)
    other.execute("ROLLBACK")
    other.close()
    await store.create(dataclasses.replace(record, id="r1"))  # and the store goes on
    await store.close()


# --- the Response stored at a stream's end ---------------------------------------------------------


def _streamed_frames(text: str) -> bytes:
    """A whole stream's SSE frames, as the gateway writes them, for an answer of ``text``."""
    import msgspec

    from gateway.schema import chat
    from gateway.server.sse import encode_events
    from gateway.translate.request import ConversionSettings, decode_request, plan_chat_request
    from gateway.translate.stream import ResponseStateMachine

    plan = plan_chat_request(decode_request(b'{"model": "m", "input": "Hi", "stream": true}'),
                             ConversionSettings(model="m"), response_id="resp_1", created_at=0)
    machine = ResponseStateMachine(plan.response, plan.options)
    events = machine.start()
    events += machine.feed(msgspec.convert({"choices": [{"index": 0, "delta": {"content": text}}]}, chat.ChatChunk))
    events += machine.feed(msgspec.convert({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
                                           chat.ChatChunk))
    return encode_events(events + machine.finish())


@pytest.mark.parametrize("text", ["Hello", 'a tail like the event\'s own: ,"sequence_number":7}', '"}\n\nmore'])
def test_the_stored_response_is_the_terminal_events_as_the_client_got_it(text: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.store import service
    from gateway.store.service import _terminal_response

    frames = _streamed_frames(text)
    # The gateway's own shape is cut, never parsed: a parse here would fail the test.
    monkeypatch.setattr(service.orjson, "loads", lambda *_: pytest.fail("the terminal event was parsed"))
    last = parse_sse(frames)[-1]
    assert last["type"] == "response.completed"
    stored = _terminal_response(frames)
    assert json.loads(stored) == last["response"] and json.loads(stored)["output"][0]["content"][0]["text"] == text
    assert stored in frames  # cut out of the frames, byte for byte


def test_a_terminal_event_of_another_shape_is_parsed_and_a_non_terminal_one_refused() -> None:
    from gateway.store.service import _terminal_response

    response = {"id": "resp_1", "status": "completed", "output": []}
    reordered = b"event: response.completed\ndata: " + json.dumps(
        {"sequence_number": 3, "response": response, "type": "response.completed"}).encode() + b"\n\n"
    assert json.loads(_terminal_response(reordered)) == response
    with pytest.raises(ValueError):
        _terminal_response(b'event: response.in_progress\ndata: {"type":"response.in_progress","sequence_number":1}\n\n')
