"""What the inspector keeps: one ``Record`` per request in a bounded ring buffer, and the viewers
that watch them live.

Recording is cheap on purpose, because it runs inside each stream: per upstream read and per client
write one tuple is appended (a reference to bytes the server already has: those vLLM sent, those
written to the client; bytes, unlike decoded chunks, cost the garbage collector nothing), and
viewers are told only when there are any. Turning that into JSON happens when
someone looks (``encode_*``), in the viewer's own task, never in the stream's.

A record's entries are ``(t, kind, payload)``, ``t`` in seconds since the request arrived:

======== ===========================================================================================
kind     payload
======== ===========================================================================================
plan     the Chat Completions body sent to vLLM (``plan.payload``, the exact bytes; for a
         ``/v1/chat/completions`` request, the body it became)
attempt  ``{server, state, error}`` (JSON): a try at a vLLM server started, answered or failed
read     the bytes of one network read from vLLM (SSE; an event may span reads), or the whole body
sent     the bytes written to the client: SSE frames, or the JSON body without streaming
end      ``{status, error, finish_reason, response, completion}`` (JSON): how it ended, the final
         Response (``/v1/responses``) or chat.completion (``/v1/chat/completions``)
======== ===========================================================================================
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict, deque
from typing import Any, Iterable, Optional

import msgspec
import orjson

from .. import jsonbytes
from ..observe import Outcome, RequestObserver
from ..redact import MASK, Secrets, is_secret_header
from ..server.http import cookie_session_id

# One request's entries are bounded too: a runaway generation keeps its first reads and its end.
MAX_ENTRIES_PER_REQUEST = 20_000
# Messages queued for one viewer; a viewer that falls this far behind is dropped (it reconnects and
# starts again from a snapshot), so a slow browser never costs the gateway unbounded memory.
VIEWER_QUEUE_LIMIT = 2_000

_encoder = msgspec.json.Encoder()


_SECRET_NAMES: dict[str, bool] = {}  # header name -> is it a credential (asked once per name)


def mask_headers(headers: Iterable[tuple[str, str]], session_header: str) -> dict[str, str]:
    """Request headers fit to show: credentials and cookies masked (the session header is not a
    credential: it is what groups a session's requests)."""
    shown = {}
    for name, value in headers:
        secret = _SECRET_NAMES.get(name)
        if secret is None:
            secret = is_secret_header(name)
            if len(_SECRET_NAMES) < 1024:  # bounded: clients choose header names
                _SECRET_NAMES[name] = secret
        shown[str(name)] = MASK if secret and name.lower() != session_header else str(value)
    return shown


class Record(RequestObserver):
    """One request as the inspector saw it; also its observer. Everything it keeps is bytes, strings
    and numbers: nothing for the garbage collector to walk, nothing that holds a stream's objects
    (an exception would hold its traceback, and so the stream's frames) after the request ended."""

    __slots__ = ("inspector", "id", "started_at", "_t0", "raw", "route", "headers", "remote", "replay_of", "session",
                 "session_source", "model", "stream", "upstream_stream", "response_id", "entries", "size", "dropped",
                 "duration", "first_output", "viewers", "http_status", "response_status", "error_code",
                 "finish_reason", "input_tokens", "output_tokens")

    def __init__(self, inspector: "Inspector", request_id: str, raw: bytes, headers: dict[str, str],
                 remote: Optional[str], session: Optional[tuple[str, str]], replay_of: Optional[str],
                 route: str = "/v1/responses") -> None:
        self.inspector = inspector
        self.id = request_id
        self.started_at = time.time()
        self._t0 = time.perf_counter()
        self.raw = raw
        self.route = route  # /v1/responses or /v1/chat/completions
        self.headers = headers
        self.remote = remote
        self.replay_of = replay_of
        self.session, self.session_source = session if session else (None, None)
        self.model: Optional[str] = None
        self.stream: Optional[bool] = None  # the client's stream
        self.upstream_stream: Optional[bool] = None  # vLLM's: /v1/chat/completions asks without
        self.response_id: Optional[str] = None
        self.entries: list[tuple[float, str, bytes]] = []
        self.size = len(raw)  # bytes it holds, roughly: what the inspector's memory budget counts
        self.dropped = 0  # entries past MAX_ENTRIES_PER_REQUEST
        self.duration: Optional[float] = None
        self.first_output: Optional[float] = None  # t of the first write carrying an output delta
        self.viewers: Optional[list[Viewer]] = None  # viewers watching this record's entries
        # how it ended (None while it runs)
        self.http_status: Optional[int] = None
        self.response_status: Optional[str] = None
        self.error_code: Optional[str] = None
        self.finish_reason: Optional[str] = None
        self.input_tokens: Optional[int] = None
        self.output_tokens: Optional[int] = None

    # --- the observer -----------------------------------------------------------------------------

    def _add(self, kind: str, payload: bytes) -> None:
        if len(self.entries) >= MAX_ENTRIES_PER_REQUEST and kind != "end":
            self.dropped += 1
            return
        self.size += len(payload) + 64
        entry = (time.perf_counter() - self._t0, kind, payload)
        self.entries.append(entry)
        if self.viewers:
            for viewer in self.viewers:
                viewer.push(("entry", self, entry))

    def planned(self, request: Any, plan: Any) -> None:
        self.model = plan.body.get("model")
        self.stream = plan.stream
        self.response_id = plan.response.id
        session = self.inspector.session_of(self, request, plan.response)
        if session is not None:
            self.session, self.session_source = session
        self._add("plan", plan.payload or jsonbytes.dumps(plan.body))  # the exact bytes vLLM gets
        self.inspector.changed(self)

    def chat_planned(self, body: Any, payload: bytes, stream: bool) -> None:
        self.model = body.get("model")
        self.stream, self.upstream_stream = stream, False
        self._add("plan", payload)
        self.inspector.changed(self)

    def attempt_started(self, server: str) -> None:
        self._add("attempt", jsonbytes.dumps({"server": server, "state": "started", "error": None}))

    def attempt_ended(self, server: str, error: Any) -> None:
        failure = None if error is None else {"code": error.code, "message": error.message}
        self._add("attempt", jsonbytes.dumps({"server": server, "state": "failed" if error else "answered",
                                           "error": failure}))

    def read(self, data: bytes) -> None:
        self._add("read", data)

    def sent(self, data: bytes) -> None:
        if self.first_output is None and (b"_text.delta" in data or b"arguments.delta" in data
                                          or b'"chat.completion' in data):
            self.first_output = time.perf_counter() - self._t0
        self._add("sent", data)

    def ended(self, outcome: Outcome) -> None:
        self.duration = time.perf_counter() - self._t0
        if self.first_output is None and not self.stream:
            self.first_output = self.duration  # without streaming, all output comes at the end
        response = outcome.response
        self.http_status, self.finish_reason = outcome.status, outcome.finish_reason
        if outcome.error is not None:
            self.error_code = outcome.error.get("code") or outcome.error.get("type")
            if outcome.status < 400:  # a chat stream that failed after it started
                self.response_status = "failed"
        if response is not None:
            self.response_status = response.status
            if response.error is not None and self.error_code is None:
                self.error_code = response.error.code
            if response.usage is not None:
                self.input_tokens, self.output_tokens = response.usage.input_tokens, response.usage.output_tokens
        usage = outcome.completion.get("usage") if outcome.completion is not None else None
        if isinstance(usage, dict):
            self.input_tokens, self.output_tokens = usage.get("prompt_tokens"), usage.get("completion_tokens")
        self._add("end", jsonbytes.dumps({
            "status": outcome.status, "error": outcome.error, "finish_reason": outcome.finish_reason,
            "response": orjson.Fragment(_encoder.encode(response)),  # encoded once, at the end
            "completion": outcome.completion}))
        self.inspector.ended(self)

    # --- views ----------------------------------------------------------------------------------

    @property
    def status(self) -> str:
        """live, completed, incomplete, failed (a streamed failure), error (an HTTP error) or
        cancelled (the client left)."""
        if self.http_status is None:
            return "live"
        if self.http_status == 499:
            return "cancelled"
        if self.http_status >= 400:
            return "error"
        return self.response_status or "completed"

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "response_id": self.response_id,
            "started_at": self.started_at,
            "route": self.route,
            "model": self.model,
            "stream": self.stream,
            "upstream_stream": self.stream if self.upstream_stream is None else self.upstream_stream,
            "session": self.session,
            "session_source": self.session_source,
            "replay_of": self.replay_of,
            "status": self.status,
            "http_status": self.http_status,
            "error": self.error_code,
            "finish_reason": self.finish_reason,
            "ttft_ms": round(self.first_output * 1000, 1) if self.first_output is not None else None,
            "duration_ms": round(self.duration * 1000, 1) if self.duration is not None else None,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "dropped_entries": self.dropped,
        }


def encode_entry(entry: tuple[float, str, bytes], stream: Optional[bool]) -> bytes:
    """One entry as the JSON array ``[t_ms, kind, payload]`` the page reads."""
    t, kind, payload = entry
    if kind == "read":  # as text: the page splits it into vLLM's events, as the gateway's reader does
        body = jsonbytes.dumps(payload.decode("utf-8", "replace"))
    elif kind == "sent":
        body = _sse_events_json(payload) if stream else b"[" + payload + b"]"
    else:  # plan, attempt, end: JSON already
        body = payload
    return b'[%.3f,"%s",%s]' % (t * 1000, kind.encode(), body)


def _sse_events_json(data: bytes) -> bytes:
    """SSE frames as written (``event: x\\ndata: {...}\\n\\n``...) -> a JSON list of the events,
    without decoding them: each ``data:`` line already is one JSON object."""
    events = []
    for frame in data.split(b"\n\n"):
        at = frame.find(b"data: ")
        if at >= 0:
            event = frame[at + 6:]
            events.append(b'"[DONE]"' if event == b"[DONE]" else event)  # Chat Completions' end: not JSON
    return b"[" + b",".join(events) + b"]"


def _request_json(raw: bytes) -> bytes:
    """The client's request body as JSON: itself when it parses, else a string saying what came."""
    try:
        orjson.loads(raw)
        return raw
    except (orjson.JSONDecodeError, UnicodeDecodeError):
        return jsonbytes.dumps({"unparsed_body": raw[:65536].decode("utf-8", "replace")})


def encode_record(record: Record, upto: Optional[int] = None) -> bytes:
    """The whole record (the export format, and what a viewer opening it first gets)."""
    entries = record.entries if upto is None else record.entries[:upto]
    head = jsonbytes.dumps({"summary": record.summary(), "headers": record.headers, "remote": record.remote})
    return (head[:-1] + b',"request":' + _request_json(record.raw) + b',"entries":['
            + b",".join(encode_entry(e, record.stream) for e in entries) + b"]}")


class Viewer:
    """One open feed (one browser tab): what it still has to be sent, bounded."""

    def __init__(self, limit: int = VIEWER_QUEUE_LIMIT) -> None:
        self.queue: deque[tuple[str, Record, Any]] = deque()
        self.limit = limit
        self.overflowed = False
        self.closed = False  # the gateway is shutting down
        self.watching: Optional[Record] = None
        self._wakeup = asyncio.Event()

    def close(self) -> None:
        self.closed = True
        self._wakeup.set()

    def push(self, message: tuple[str, Record, Any]) -> None:
        if self.overflowed:
            return
        if len(self.queue) >= self.limit:
            self.overflowed = True  # dropped: the feed ends and the page starts again from a snapshot
            self.queue.clear()
        else:
            self.queue.append(message)
        self._wakeup.set()

    async def wait(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._wakeup.wait()
        except TimeoutError:
            pass
        self._wakeup.clear()

    def take(self) -> list[tuple[str, Record, Any]]:
        messages = list(self.queue)
        self.queue.clear()
        return messages


class Inspector:
    """The ring buffer of records and the viewers. One per application."""

    def __init__(self, size: int, session_header: str, secrets: Secrets, max_bytes: int = 256 << 20,
                 cookie_session: Any = None, viewer_limit: int = VIEWER_QUEUE_LIMIT) -> None:
        self.size = size
        self.max_bytes = max_bytes  # the records' memory, roughly (Record.size): the oldest go first
        self.finished_bytes = 0  # the sizes of the records that have ended, still in ``records``
        self._reused = 2  # suffix for a request id seen before
        self.session_header = session_header.lower()
        self.mask = secrets.scrub_bytes  # every configured secret, out of all the inspector sends
        self._cookie_session = cookie_session  # (aiohttp request) -> NeMo Gym's session id, or None
        self.records: OrderedDict[str, Record] = OrderedDict()
        self.by_response: dict[str, Record] = {}  # response id -> record: previous_response_id chains
        self.live: dict[str, Record] = {}  # still running: never evicted before they end
        self.viewers: set[Viewer] = set()
        self.viewer_limit = viewer_limit

    # --- recording ------------------------------------------------------------------------------

    def observe(self, request_id: str, request: Any, raw: bytes) -> Record:
        """The ``Observer`` registered on the app: every request to /v1/responses and
        /v1/chat/completions gets a record."""
        headers = mask_headers(request.headers.items(), self.session_header)
        session = None
        header = request.headers.get(self.session_header)
        if header:
            session = (header, "header")
        elif self._cookie_session is not None:
            cookie = self._cookie_session(request)
            if cookie:
                session = (cookie, "cookie")
        if request_id in self.records or request_id in self.live:  # a client reusing its X-Request-Id
            request_id = f"{request_id}.{self._reused}"
            self._reused += 1
        replay_of = request.headers.get("X-Inspector-Replay-Of")
        original = self.get(replay_of) if replay_of else None
        if session is None and original is not None and original.session:
            session = (original.session, original.session_source or "replay")  # a replay stays in its session
        record = Record(self, request_id, raw, headers, request.remote, session, replay_of, replay_route(request))
        self.records[request_id] = record
        self.records.move_to_end(request_id)
        self.live[request_id] = record
        self._evict()
        self.changed(record)
        return record

    def _evict(self) -> None:
        """The oldest finished records go while there are more than ``size`` or they hold more than
        ``max_bytes``; running requests stay until they end, and the newest record always stays."""
        count = len(self.records)
        total = self.finished_bytes + sum(r.size for r in self.live.values())
        if count <= self.size and total <= self.max_bytes:
            return
        victims = []
        for request_id, record in self.records.items():  # oldest first; usually stops at the first
            if count <= 1 or (count <= self.size and total <= self.max_bytes):
                break
            if request_id in self.live:
                continue
            victims.append(record)
            count -= 1
            total -= record.size
        for record in victims:
            del self.records[record.id]
            self.finished_bytes -= record.size
            if record.response_id:
                self.by_response.pop(record.response_id, None)

    def session_of(self, record: Record, request: Any, response: Any) -> Optional[tuple[str, str]]:
        """The session a request belongs to, once its body is decoded: the session header wins, then
        the prompt_cache_key, then its conversation, then the session of the response it continues,
        then NeMo Gym's cookie (as the gateway routes). The response store takes ``conversation`` and
        ``previous_response_id`` out of the request it passes on and puts them on the Response."""
        if record.session_source == "header" or record.replay_of:
            return None
        if request.prompt_cache_key:
            return request.prompt_cache_key, "prompt_cache_key"
        conversation = getattr(response, "conversation", None) or request.conversation
        if isinstance(conversation, dict):
            conversation = conversation.get("id")
        if isinstance(conversation, str) and conversation:
            return conversation, "conversation"
        previous_id = getattr(response, "previous_response_id", None) or request.previous_response_id
        previous = self.by_response.get(previous_id or "")
        if previous is not None and previous.session:
            return previous.session, previous.session_source or "previous_response_id"
        if previous_id:
            return previous_id, "previous_response_id"
        return None

    def changed(self, record: Record) -> None:
        if record.response_id:
            self.by_response[record.response_id] = record
        for viewer in self.viewers:
            viewer.push(("summary", record, None))

    def ended(self, record: Record) -> None:
        if self.live.pop(record.id, None) is not None and record.id in self.records:
            self.finished_bytes += record.size
        self._evict()
        self.changed(record)

    def get(self, request_id: str) -> Optional[Record]:
        return self.records.get(request_id) or self.live.get(request_id)

    # --- viewers --------------------------------------------------------------------------------

    def connect(self, watch: Optional[str]) -> Viewer:
        """A new viewer: a snapshot of the list first, and of the watched record so far, then live
        changes. Taken in one go, on the event loop: nothing can slip in between."""
        viewer = Viewer(self.viewer_limit)
        viewer.push(("list", None, [*self.records.values()]))  # type: ignore[arg-type]
        record = self.get(watch) if watch else None
        if record is not None:
            viewer.watching = record
            viewer.push(("detail", record, len(record.entries)))
            if record.viewers is None:
                record.viewers = []
            record.viewers.append(viewer)
        self.viewers.add(viewer)
        return viewer

    def disconnect(self, viewer: Viewer) -> None:
        self.viewers.discard(viewer)
        watched = viewer.watching
        if watched is not None and watched.viewers and viewer in watched.viewers:
            watched.viewers.remove(viewer)

    def close_viewers(self) -> None:
        for viewer in [*self.viewers]:
            viewer.close()

    def encode(self, messages: list[tuple[str, Any, Any]]) -> bytes:
        """A viewer's pending messages as SSE frames, secrets masked. Consecutive entries of the
        watched record go out as one ``entries`` event."""
        out = bytearray()
        pending: list[bytes] = []

        def flush_entries() -> None:
            if pending:
                out.extend(b"event: entries\ndata: [" + b",".join(pending) + b"]\n\n")
                pending.clear()

        for kind, record, value in messages:
            if kind == "entry":
                pending.append(self.mask(encode_entry(value, record.stream)))
                continue
            flush_entries()
            if kind == "summary":
                out += b"event: summary\ndata: " + self.mask(jsonbytes.dumps(record.summary())) + b"\n\n"
            elif kind == "list":
                out += b"event: list\ndata: " + self.mask(jsonbytes.dumps([r.summary() for r in value])) + b"\n\n"
            elif kind == "detail":
                out += b"event: detail\ndata: " + self.mask(encode_record(record, value)) + b"\n\n"
        flush_entries()
        return bytes(out)


def replay_route(request: Any) -> str:
    """The route a request is for: its path, or for a replay the route it replays."""
    if request.path.startswith("/v1/"):
        return request.path
    return request.headers.get("X-Inspector-Route", "/v1/responses")


def nemo_cookie_session(cookie_name: str) -> Any:
    """NeMo Gym's session cookie -> its session id (as the gateway routes by it)."""
    def read(request: Any) -> Optional[str]:
        value = request.cookies.get(cookie_name)
        return cookie_session_id(value) if value else None

    return read


