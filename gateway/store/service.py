"""The store inside the gateway: what ``POST /v1/responses`` asks of it, the observer that records a
response as it streams, background runs, and the housekeeping (leases, cancellation, retention).

The server calls it at three points only (``gateway/server/app.py``): ``prepare`` before the
request is converted (``previous_response_id`` becomes input), ``StoredRequest.adopt`` after (the
Response echoes the store, and a kept response gets a ``Recorder``, joined to the request's
observer: ``gateway/observe.py``), and ``run_in_background`` for ``background: true``. The routes
of stored responses (``routes.py``) use the rest.

Writes never sit on the per-token path: the recorder appends the frames of one socket write to a
buffer and one flush task writes whatever gathered (one store write per upstream read at most,
fewer when the store is slower than the stream). The terminal batch and the final Response are
written in one atomic step *before* the client sees the terminal event (the observer's
``ending``), so a client that was told "completed" can continue from that response at once. A store that fails never fails the answer:
the recorder stops, removes what it wrote, and the response is simply not stored (logged).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Coroutine, Optional

import msgspec
import orjson
from aiohttp import web

from .. import jsonbytes, offload
from ..config import Config
from ..schema.responses import Response, ResponsesRequest
from ..observe import Outcome, RequestObserver
from ..server.http import KEYS_KEY, REQUEST_ID, SSE_HEADERS
from ..server.sse import KEEPALIVE
from ..translate.errors import InvalidRequest
from ..translate.request import ChatPlan
from .base import Conversation, Record, Store, StoreError, sequence_numbers
from .items import history_items, new_id, normalize_input

log = logging.getLogger("gateway.store")

# A flush that does not finish in this long (a hung disk, an unreachable Redis) gives up: the
# client gets its answer, the response is not stored. (asyncio.timeout, not wait_for, on the
# per-response path: wait_for makes a task per call.)
STORE_WAIT_S = 10.0
# A batch waits this long for the next ones before it is written: a fast stream's reads share one
# store write (followers of a running response see its events this much later, at most).
FLUSH_DELAY_S = 0.05
# A response whose client is attached (not background) is, nearly always, followed by nobody
# else: its events are written at most this often, until a follower in this process asks for
# them (then every FLUSH_DELAY_S). A write per upstream read of every stream was most of what
# storing cost: with 1,000 streams trickling tokens the gateway could not keep up.
ATTACHED_FLUSH_DELAY_S = 1.0
# Frames waiting this much are written at once, whatever the delay (a fast stream's second of
# frames would not fit in MAX_PENDING_BYTES).
FLUSH_NOW_BYTES = 1024 * 1024
# Frames waiting for the store beyond this: it fell behind; stop storing this response.
MAX_PENDING_BYTES = 8 * 1024 * 1024
# How often this process looks for cancel requests of its background runs made on other replicas.
CANCEL_POLL_S = 0.5
# How often a follower (GET ?stream=true) looks for new events written by another process.
FOLLOW_POLL_S = 0.25
SWEEP_S = 60.0

_encoder = msgspec.json.Encoder()


class NotFound(InvalidRequest):
    status = 404


class StoreUnavailable(InvalidRequest):
    status = 503


def not_found(what: str, rid: str, param: Optional[str] = None) -> NotFound:
    return NotFound(f"{what} with id '{rid}' not found.", param=param, code="not_found")


@dataclass
class StoredRequest:
    """What the store made of one request: the request to convert (history prepended), whether
    the response is kept, and the record it will become."""

    request: ResponsesRequest
    owner: str
    keep: bool
    background: bool
    client_stream: bool = False
    conversation_id: Optional[str] = None  # its items were prepended; input and output are appended
    previous_response_id: Optional[str] = None
    chain: list[str] = field(default_factory=list)
    own_input: bytes = b"[]"
    large: bool = False  # the body, or the history it continues, is large: converted off the event loop
    service: Optional["StoreService"] = None
    recorder: Optional["Recorder"] = None

    def adopt(self, plan: ChatPlan) -> Optional["Recorder"]:
        """The Response echoes what the store does; a kept response gets its recorder."""
        plan.response.store = self.keep
        plan.response.background = self.background
        plan.response.previous_response_id = self.previous_response_id
        if self.conversation_id is not None:
            plan.response.conversation = {"id": self.conversation_id}
        if self.service is None or not (self.keep or self.conversation_id):
            return None  # store: false costs nothing from here on
        self.recorder = self.service.recorder(self, plan)
        return self.recorder


class StoreService:
    def __init__(self, config: Config, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.ttl = config.gateway.store_ttl
        self.lease = config.gateway.store_lease_s
        self._running: dict[str, Recorder] = {}  # responses this process is writing (leases to renew)
        self._background: dict[str, asyncio.Task[None]] = {}
        self._changed: dict[str, asyncio.Event] = {}  # wakes local followers of a response
        self._tasks: set[asyncio.Task[Any]] = set()
        self._housekeeping: Optional[asyncio.Task[None]] = None

    # --- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.start()
        self._housekeeping = asyncio.ensure_future(self._keep_house())

    async def close(self) -> None:
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        for task in list(self._background.values()):
            task.cancel()
        pending = list(self._tasks) + list(self._background.values())
        if pending:
            await asyncio.wait(pending, timeout=STORE_WAIT_S)
        await self.store.close()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- owners ----------------------------------------------------------------------------------

    def owner(self, request: web.Request) -> str:
        """Who may see what this request stores: a digest of its API key when the gateway checks
        keys (so one key never sees another's responses), everyone alike otherwise."""
        if not request.app[KEYS_KEY]:
            return ""
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header[:7].lower() == "bearer " else ""
        return hashlib.sha256(b"gateway-store\0" + key.encode()).hexdigest()[:32]

    # --- POST /v1/responses ----------------------------------------------------------------------

    async def prepare(self, request: web.Request, req: ResponsesRequest, large: bool = False) -> StoredRequest:
        """``large``: the body is (gateway/offload.py); so is a request whose stored history is.
        Work proportional to either runs off the event loop then (``stored.large`` says so to
        the converter too)."""
        keep = req.store is not False
        background = bool(req.background)
        if background and not keep:
            raise InvalidRequest("background responses are stored: 'store' cannot be false with 'background'.",
                                 param="store", code="invalid_value")
        owner = self.owner(request)
        stored = StoredRequest(request=req, owner=owner, keep=keep, background=background, service=self,
                               large=large)
        prefix: list[dict[str, Any]] = []
        if req.conversation is not None:
            if req.previous_response_id is not None:
                raise InvalidRequest("'previous_response_id' and 'conversation' cannot be used together.",
                                     param="conversation", code="invalid_value")
            stored.conversation_id = conversation_id(req.conversation)
            if await self._call(self.store.get_conversation(owner, stored.conversation_id)) is None:
                raise not_found("Conversation", stored.conversation_id, "conversation")
            stored_items = await self._call(self.store.conversation_items(owner, stored.conversation_id))
            stored.large = stored.large or sum(map(len, stored_items)) > offload.LARGE_BODY_BYTES
            prefix = await offload.run(stored.large, _decoded_items, stored_items)
        if req.previous_response_id is not None:
            previous = await self._get(owner, req.previous_response_id)
            if previous is None:
                raise not_found("Previous response", req.previous_response_id, "previous_response_id")
            if not previous.terminal:
                raise InvalidRequest(
                    f"Previous response with id '{previous.id}' is still {previous.status}; wait until it ends.",
                    param="previous_response_id", code="previous_response_in_progress")
            stored.chain = previous.chain + [previous.id]
            stored.previous_response_id = previous.id
        own, stored.own_input = await offload.run(large, _own_input, req.input, keep or bool(stored.conversation_id))
        if stored.chain:
            histories = await self._call(self.store.history(owner, stored.chain))
            missing = [rid for rid, h in zip(stored.chain, histories) if h is None]
            if missing:
                raise NotFound(f"Response with id '{missing[0]}', an earlier turn of previous_response_id "
                               f"'{stored.previous_response_id}', was deleted or expired.",
                               param="previous_response_id", code="not_found")
            stored.large = stored.large or sum(len(h.input) + len(h.response)  # type: ignore[union-attr]
                                               for h in histories) > offload.LARGE_BODY_BYTES
            own = await offload.run(stored.large, history_items, histories) + own
        if prefix:
            own = prefix + own
        if stored.chain or prefix or req.background is not None or req.store is not None \
                or req.conversation is not None:
            # A background run always streams from vLLM (its events are stored as they come);
            # whether its client gets a stream is ``client_stream``.
            stored.request = msgspec.structs.replace(req, input=own if stored.chain or prefix else req.input,
                                                     previous_response_id=None, background=None, conversation=None,
                                                     stream=req.stream or background)
        stored.client_stream = req.stream
        return stored

    def recorder(self, stored: StoredRequest, plan: ChatPlan) -> "Recorder":
        now = self.clock()
        record = Record(id=plan.response.id, owner=stored.owner, status="queued" if stored.background else "in_progress",
                        response=_encoder.encode(plan.response), input=stored.own_input, chain=stored.chain,
                        created_at=now, expires_at=now + self.ttl, background=stored.background,
                        lease_until=now + self.lease)
        return Recorder(self, record, frames=plan.stream, client_stream=stored.client_stream, keep=stored.keep,
                        conversation_id=stored.conversation_id)

    async def run_in_background(self, request: web.Request, run: Coroutine[Any, Any, None], plan: ChatPlan,
                                recorder: "Recorder") -> web.StreamResponse:
        """Store the queued response, start its run in a task of its own, and answer: the queued
        Response, or (``stream: true``) its events as they are stored."""
        owner = recorder.record.owner
        queued = msgspec.structs.replace(plan.response, status="queued")
        recorder.record.response = _encoder.encode(queued)
        try:
            await recorder.create()
        except (StoreError, asyncio.TimeoutError) as exc:
            run.close()
            raise StoreUnavailable(f"The response store is unavailable, so a background response cannot be "
                                   f"started: {exc or 'it did not answer in time'}", code="store_unavailable") from None
        task = asyncio.ensure_future(run)
        self._background[plan.response.id] = task
        task.add_done_callback(lambda _: self._background.pop(plan.response.id, None))
        if recorder.client_stream:
            return await self.follow(request, owner, plan.response.id, -1)
        return web.Response(body=recorder.record.response, content_type="application/json")

    # --- what recorders tell the service ---------------------------------------------------------

    def running(self, recorder: "Recorder") -> None:
        self._running[recorder.record.id] = recorder

    def stopped(self, recorder: "Recorder") -> None:
        self._running.pop(recorder.record.id, None)

    def changed(self, response_id: str) -> None:
        event = self._changed.pop(response_id, None)
        if event is not None:
            event.set()

    def stop_run(self, response_id: str) -> bool:
        task = self._background.get(response_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def add_to_conversation(self, recorder: "Recorder", response: bytes) -> None:
        """A response of a conversation ended: its input and its output join the conversation
        (not when it failed: the next turn would build on nothing)."""
        final = orjson.loads(response)
        if final.get("status") not in ("completed", "incomplete"):
            return
        items = orjson.loads(recorder.record.input) + (final.get("output") or [])
        entries = [(str(item.get("id")), orjson.dumps(item)) for item in items if isinstance(item, dict)]
        assert recorder.conversation_id is not None
        if not await self.store.add_items(recorder.record.owner, recorder.conversation_id, entries):
            log.warning("conversation %s is gone: response %s was not added to it", recorder.conversation_id,
                        recorder.record.id)

    # --- the Conversations API -------------------------------------------------------------------

    async def create_conversation(self, owner: str, metadata: dict[str, str], items: list[dict[str, Any]]) -> bytes:
        now = self.clock()
        conversation = Conversation(id=new_id("conv"), owner=owner, metadata=orjson.dumps(metadata),
                                    created_at=now, expires_at=now + self.ttl)
        await self._call(self.store.create_conversation(
            conversation, [(item["id"], orjson.dumps(item)) for item in items]))
        return conversation_json(conversation)

    async def conversation(self, owner: str, cid: str) -> Conversation:
        found = await self._call(self.store.get_conversation(owner, cid))
        if found is None:
            raise not_found("Conversation", cid)
        return found

    async def conversation_items(self, owner: str, cid: str) -> list[dict[str, Any]]:
        await self.conversation(owner, cid)
        return [orjson.loads(item) for item in await self._call(self.store.conversation_items(owner, cid))]

    # --- reads -----------------------------------------------------------------------------------

    async def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        try:
            return await asyncio.wait_for(coro, STORE_WAIT_S)
        except (StoreError, asyncio.TimeoutError) as exc:
            raise StoreUnavailable(f"The response store is unavailable: {exc or 'it did not answer in time'}",
                                   code="store_unavailable") from None

    async def _get(self, owner: str, response_id: str) -> Optional[Record]:
        """The record; a running one whose process died (lease expired) is ended as failed first."""
        record = await self._call(self.store.get(owner, response_id))
        if record is not None and not record.terminal and record.lease_until is not None \
                and record.lease_until < self.clock() and response_id not in self._running:
            await self._abandon(record)
            record = await self._call(self.store.get(owner, response_id))
        return record

    async def get(self, owner: str, response_id: str) -> Record:
        record = await self._get(owner, response_id)
        if record is None:
            raise not_found("Response", response_id)
        return record

    async def _abandon(self, record: Record) -> None:
        message = ("The gateway process running this response stopped before it ended (it was killed, or lost "
                   "its store); the response cannot be resumed.")
        first = record.last_seq + 1
        response, frames = failed_ending(record.response, "response_lost", message, first)
        try:
            await self._call(self.store.abandon(record.id, self.clock(), response, first, frames))
        except StoreUnavailable:
            log.warning("could not mark abandoned response %s as failed", record.id)

    async def snapshot(self, record: Record) -> bytes:
        """The Response JSON as stored; a running one with its current status and the output
        items stored so far (finished ones whole, the open one as ``output_item.added`` showed it)."""
        if record.terminal:
            return record.response
        snapshot = orjson.loads(record.response)
        snapshot["status"] = record.status
        if record.last_seq >= 0:
            output: dict[int, Any] = {}
            for _, frames in await self._call(self.store.events_after(record.id, -1)):
                for frame in frames.split(b"\n\n")[:-1]:
                    kind, _, data = frame.partition(b"\ndata: ")
                    if kind in (b"event: response.output_item.added", b"event: response.output_item.done"):
                        event = orjson.loads(data)
                        output[event["output_index"]] = event["item"]
            snapshot["output"] = [output[i] for i in sorted(output)]
        return jsonbytes.dumps(snapshot)

    async def input_items(self, record: Record) -> list[dict[str, Any]]:
        histories = await self._call(self.store.history(record.owner, record.chain)) if record.chain else []
        return history_items([h for h in histories if h is not None]) + orjson.loads(record.input)

    async def follow(self, request: web.Request, owner: str, response_id: str, after: int) -> web.StreamResponse:
        """SSE: the stored events after ``after``, then new ones as they are stored, until the
        terminal event. The client leaving changes nothing for the response."""
        response = web.StreamResponse(headers={**SSE_HEADERS, "X-Request-Id": request[REQUEST_ID]})
        await response.prepare(request)
        seq = after
        quiet_since = time.monotonic()
        keepalive = self.config.gateway.keepalive_interval_s
        running = self._running.get(response_id)
        if running is not None:
            running.followed()  # its events go to the store as fast as a background run's from now on
        while True:
            out = bytearray()
            for first, frames in await self._call(self.store.events_after(response_id, seq)):
                for i, frame in enumerate(frames.split(b"\n\n")[:-1]):
                    if first + i > seq:
                        out += frame + b"\n\n"
                        seq = first + i
            if out:
                await response.write(bytes(out))
                quiet_since = time.monotonic()
            record = await self._get(owner, response_id)
            if record is None or (record.terminal and seq >= record.last_seq):
                break
            if not out and (record.terminal or record.last_seq > seq):
                continue  # written between the two reads
            event = self._changed.setdefault(response_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), FOLLOW_POLL_S)
            except asyncio.TimeoutError:
                pass
            if time.monotonic() - quiet_since >= keepalive:
                await response.write(KEEPALIVE)
                quiet_since = time.monotonic()
        await response.write_eof()
        return response

    async def cancel(self, owner: str, response_id: str) -> Record:
        record = await self.get(owner, response_id)
        if not record.background:
            raise InvalidRequest("Only responses created with background=true can be cancelled.", param=None,
                                 code="invalid_request")
        if record.terminal:
            if record.status == "cancelled":
                return record
            raise InvalidRequest(f"Cannot cancel a {record.status} response.", param=None, code="invalid_request")
        if not self.stop_run(response_id):
            await self._call(self.store.request_cancel(owner, response_id))  # its process polls for this
        deadline = time.monotonic() + STORE_WAIT_S
        while not record.terminal and time.monotonic() < deadline:
            event = self._changed.setdefault(response_id, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), FOLLOW_POLL_S)
            except asyncio.TimeoutError:
                pass
            record = await self.get(owner, response_id)
        return record

    async def delete(self, owner: str, response_id: str) -> None:
        record = await self.get(owner, response_id)
        if not record.terminal:
            self.stop_run(response_id)
        if not await self._call(self.store.delete(owner, response_id)):
            raise not_found("Response", response_id)
        self.changed(response_id)

    # --- housekeeping ----------------------------------------------------------------------------

    async def _keep_house(self) -> None:
        renew_every = self.lease / 3
        last_renew = last_sweep = time.monotonic()
        while True:
            await asyncio.sleep(min(renew_every, CANCEL_POLL_S))
            try:
                now = time.monotonic()
                if self._running and now - last_renew >= renew_every:
                    last_renew = now
                    await asyncio.wait_for(self.store.renew(list(self._running), self.clock() + self.lease),
                                           STORE_WAIT_S)
                if self._background:
                    for rid in await asyncio.wait_for(self.store.cancel_requested(list(self._background)),
                                                      STORE_WAIT_S):
                        self.stop_run(rid)
                if now - last_sweep >= SWEEP_S:
                    last_sweep = now
                    await asyncio.wait_for(self.store.sweep(self.clock()), STORE_WAIT_S * 6)
            except (StoreError, asyncio.TimeoutError) as exc:
                log.warning("store housekeeping failed: %s", exc or "timed out")


def _own_input(value: Any, kept: bool) -> tuple[list[dict[str, Any]], bytes]:
    """The request's own input items (with ids) and, when they are kept, their JSON."""
    own = normalize_input(value)
    if not kept:
        return own, b"[]"
    try:
        return own, jsonbytes.dumps(own)  # kept with the record
    except orjson.JSONEncodeError as exc:  # e.g. an unknown key nested hundreds of levels deep
        raise InvalidRequest(f"The input cannot be stored: {exc}. Send it with store: false.", param="input") from None


def _decoded_items(items: list[bytes]) -> list[dict[str, Any]]:
    return [orjson.loads(item) for item in items]


def conversation_id(value: Any) -> str:
    """``conversation`` on a request: its id, or ``{"id": ...}``."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict) and isinstance(value.get("id"), str) and value["id"]:
        return value["id"]
    raise InvalidRequest("Invalid 'conversation': expected a conversation id or an object with an 'id'.",
                         param="conversation", code="invalid_type")


def conversation_json(conversation: Conversation) -> bytes:
    return orjson.dumps({"id": conversation.id, "object": "conversation", "created_at": int(conversation.created_at),
                         "metadata": orjson.loads(conversation.metadata)})


def _frame(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


class Recorder(RequestObserver):
    """Records one response as it streams (see the module docstring). ``frames``: the client gets
    SSE frames (stored as events); otherwise it gets one JSON body, the final Response."""

    def __init__(self, service: StoreService, record: Record, *, frames: bool, client_stream: bool, keep: bool = True,
                 conversation_id: Optional[str] = None) -> None:
        self.service = service
        self.client_stream = client_stream
        # keep False: a store: false response in a conversation, only added to the conversation
        self.keep = keep
        self.conversation_id = conversation_id
        self.store = service.store
        self.record = record
        self._frames = frames
        self._flush_delay = FLUSH_DELAY_S if record.background else ATTACHED_FLUSH_DELAY_S
        # The frames sent and not stored yet, as written (not copied: joined once, when stored).
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._body = b""  # without streaming: the Response JSON the client gets
        self._next_seq = 0
        self._flushing: Optional[asyncio.Task[None]] = None
        self._timer: Optional[asyncio.TimerHandle] = None
        self._created = False
        self._ending = False
        self._done = False
        self._broken = False

    async def create(self) -> None:
        if not self._created:
            async with asyncio.timeout(STORE_WAIT_S):
                await self.store.create(self.record)
            self._created = True
            self.service.running(self)

    # --- RequestObserver ---------------------------------------------------------------------------

    def sent(self, data: bytes) -> None:
        if self._broken or self._ending:
            return
        if not self._frames:
            self._body = data
            return
        if data == KEEPALIVE:  # an SSE comment, not an event: nothing to replay, no sequence number
            return
        if type(data) is not bytes:
            data = bytes(data)  # the relay's own buffer (its last batch): kept, so not to change
        if not self.keep:
            self._pending = [data]  # only the terminal batch matters: it carries the final Response
            return
        if self._pending_bytes + len(data) > MAX_PENDING_BYTES:  # checked first: a huge end is not copied
            self._fail("the store fell behind the stream" if len(data) < MAX_PENDING_BYTES else
                       f"its last events ({len(data)} bytes: the whole text, four times) are more than the "
                       f"{MAX_PENDING_BYTES} bytes that may wait for the store")
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._flushing is None:
            if self._pending_bytes >= FLUSH_NOW_BYTES:  # a fast stream does not wait for the timer
                self._cancel_timer()
                self._start_flush()
            elif self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(self._flush_delay, self._start_flush)

    def followed(self) -> None:
        """Someone here follows this response: what waits goes now, and then every FLUSH_DELAY_S."""
        self._flush_delay = FLUSH_DELAY_S
        if self._timer is not None:
            self._cancel_timer()
            self._start_flush()

    def _start_flush(self) -> None:
        self._timer = None
        if self._flushing is None and not self._ending and not self._broken:
            self._flushing = asyncio.ensure_future(self._flush())

    async def ending(self) -> None:
        """The batch just sent ends the response: store it and the final Response, atomically,
        before the client gets it."""
        if self._broken or self._done:
            return
        self._ending = True
        self._cancel_timer()
        try:
            async with asyncio.timeout(STORE_WAIT_S):
                await self._finish()
        except (StoreError, asyncio.TimeoutError, ValueError) as exc:
            self._fail(exc)

    def ended(self, outcome: Outcome) -> None:
        if self._done or self._broken or not self.keep:
            return
        if not self._created and self._flushing is None and not self._pending:
            return  # nothing was stored (vLLM failed before the stream; the client got an HTTP error)
        # The client left before the end: the response ends for the store as failed.
        self._ending = True
        self._cancel_timer()
        self.service.spawn(self._end_unfinished())

    # --- writing -----------------------------------------------------------------------------------

    async def _flush(self) -> None:
        try:
            await self.create()
            while self._pending and not self._ending and not self._broken:
                data = self._take_pending()
                first, last = sequence_numbers(data)
                self._next_seq = last + 1
                async with asyncio.timeout(STORE_WAIT_S):
                    await self.store.append(self.record.id, first, data)
                self.service.changed(self.record.id)
        except (StoreError, asyncio.TimeoutError, ValueError) as exc:  # ValueError: frames without events
            self._fail(exc)
        finally:
            self._flushing = None

    async def _finish(self, frames: Optional[bytes] = None, response: Optional[bytes] = None) -> None:
        if self._flushing is not None:
            # Shielded: the caller may be cancelled (its client left, its timeout ran out), and a
            # flush cancelled halfway through its create() leaves a row the recorder believes it
            # never wrote; the next write inserted it again and failed on the duplicate id.
            await asyncio.shield(self._flushing)
        if self._broken:
            return
        pending = self._take_pending()  # stored now; or dropped, for an end given here (frames)
        if frames is None:
            frames, response = (pending, None) if self._frames else (b"", self._body)
        if response is None:
            response = _terminal_response(frames)
        if self.conversation_id is not None:
            await self.service.add_to_conversation(self, response)
        if not self.keep:
            self._done = True
            return
        first = self._next_seq
        if frames:
            first, last = sequence_numbers(frames)
            self._next_seq = last + 1
        status = _status_of(response)
        if self._created:
            await self.store.finish(self.record.id, status, response, first, frames)
        else:  # nothing of it is stored yet: one write, not two
            await self.store.create_finished(self.record, status, response, first, frames)
            self._created = True
        self._done = True
        self.service.stopped(self)
        self.service.changed(self.record.id)

    def _take_pending(self) -> bytes:
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        return pending[0] if len(pending) == 1 else b"".join(pending)

    async def _end_unfinished(self) -> None:
        message = "The client disconnected before the response ended; it was not finished."
        if self._flushing is not None:
            await asyncio.shield(self._flushing)  # see _finish
        response, frames = failed_ending(self.record.response, "client_disconnected", message, self._next_seq)
        try:
            async with asyncio.timeout(STORE_WAIT_S):
                await self._finish(frames, response)
        except (StoreError, asyncio.TimeoutError) as exc:
            self._fail(exc)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, exc: Any) -> None:
        if self._broken:
            return
        self._broken = True
        self._cancel_timer()
        self._pending, self._pending_bytes = [], 0
        self.service.stopped(self)
        log.error("response %s will not be stored: %s", self.record.id, exc or "the store did not answer in time")
        self.service.stop_run(self.record.id)  # a background run nobody can read is not worth running
        if self._created or self._flushing is not None:
            self.service.spawn(self._remove())

    async def _remove(self) -> None:
        """What was written is removed, so a half-written response is never served. If even that
        fails, its lease runs out and readers see it as failed."""
        try:
            await asyncio.wait_for(self.store.delete(self.record.owner, self.record.id), STORE_WAIT_S)
        except (StoreError, asyncio.TimeoutError) as exc:
            log.warning("could not remove the partly stored response %s: %s", self.record.id, exc or "timed out")
        self.service.changed(self.record.id)


_STATUS = re.compile(rb'"status":"([a-z_]+)"')


def _status_of(response: bytes) -> str:
    """The status of a Response JSON, read from its head (``status`` is among its first keys, after
    id, object and the timestamps): decoding a whole answer of 200 MB for it took 200 MB more."""
    found = _STATUS.search(response, 0, 512)
    return found.group(1).decode() if found else orjson.loads(response)["status"]


# The gateway's terminal events as its encoder writes them: the tag, the Response, then the number.
_TERMINAL_HEADS = tuple(b'{"type":"response.%s","response":' % kind for kind in (b"completed", b"incomplete", b"failed"))
_SEQUENCE_TAIL = b',"sequence_number":'


def _terminal_response(frames: bytes) -> bytes:
    """The Response carried by the terminal event, the last frame of ``frames`` (found from the
    end: the batch is not copied). In the gateway's own shape it is cut out as the client got it
    (parsing and re-encoding it was most of what a response's end cost the event loop); any other
    shape is parsed."""
    stop = len(frames)
    while stop and frames[stop - 1] == 10:  # "\n"
        stop -= 1
    at = frames.rfind(b"\n\n", 0, stop)
    last = frames[at + 2 if at >= 0 else 0:stop]
    _, _, data = last.partition(b"\ndata: ")
    for head in _TERMINAL_HEADS:
        if data.startswith(head):
            # the last ``,"sequence_number":`` is the event's own: only its digits and "}" follow
            end = data.rfind(_SEQUENCE_TAIL)
            if end > len(head) and data.endswith(b"}") and data[end + len(_SEQUENCE_TAIL):-1].isdigit():
                return data[len(head):end]
            break
    event = orjson.loads(data)
    if not isinstance(event, dict) or not isinstance(event.get("response"), dict):
        raise ValueError("the last event written is not a terminal event")
    return orjson.dumps(event["response"])


def failed_ending(snapshot: bytes, code: str, message: str, first_seq: int) -> tuple[bytes, bytes]:
    """A running response ended as failed by the store (its client left, its process died): the
    Response JSON and the ``error`` + ``response.failed`` frames, numbered from ``first_seq``."""
    response = orjson.loads(snapshot)
    response.update(status="failed", error={"code": code, "message": message})
    frames = (_frame("error", {"type": "error", "code": code, "message": message, "param": None,
                               "sequence_number": first_seq})
              + _frame("response.failed", {"type": "response.failed", "response": response,
                                           "sequence_number": first_seq + 1}))
    return orjson.dumps(response), frames


def open_store(config: Config, clock: Callable[[], float] = time.time) -> Store:
    gw = config.gateway
    if gw.store_backend == "redis":
        from .redis import RedisStore

        assert gw.redis_url is not None
        return RedisStore(gw.redis_url, max_bytes=gw.store_max_bytes, ttl=gw.store_ttl, clock=clock)
    from .sqlite import SQLiteStore

    return SQLiteStore(gw.data_dir, max_bytes=gw.store_max_bytes, clock=clock)
