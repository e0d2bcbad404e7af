"""HTTP client for the vLLM servers behind the gateway.

Failures are raised as ``UpstreamError`` subclasses that say which server and what happened, so the
server can answer with a clear status and message. The API key is sent as a header and never put in
a message.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator, Optional, Union
from urllib.parse import unquote, urlsplit, urlunsplit

import aiohttp
import msgspec
from aiohttp.http_exceptions import HttpProcessingError
import orjson

from ..observe import RequestObserver
from ..schema import chat
from .pool import Backend, BackendPool
from .deadline import ReadDeadline
from .protocol import lean_body, lean_connector
from .sse import DONE, SSEDecoder, SSEEventTooLarge

log = logging.getLogger("gateway.upstream")


class UpstreamError(Exception):
    """The upstream could not give an answer. ``status`` is what the gateway answers with."""

    status = 502
    code = "upstream_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UpstreamUnreachable(UpstreamError):
    code = "upstream_unreachable"


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class UpstreamHTTPError(UpstreamError):
    """A non-2xx answer, with vLLM's own message."""

    def __init__(self, message: str, upstream_status: int, upstream_message: str, body: bytes,
                 param: Optional[str] = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.upstream_message = upstream_message
        self.body = body
        self.param = param  # the request field vLLM named, passed on to the client
        if upstream_status in (400, 404, 413, 422):
            self.status, self.code = (400 if upstream_status == 422 else upstream_status), "invalid_request_error"
        elif upstream_status == 429:
            self.status, self.code = 429, "rate_limit_exceeded"
        elif upstream_status in (401, 403):
            self.status, self.code = 502, "upstream_auth_failed"
        elif 300 <= upstream_status < 400:
            self.status, self.code = 502, "upstream_redirect"

    @property
    def is_context_overflow(self) -> bool:
        """vLLM's 400 for a prompt (plus max_tokens) beyond the context window; the substrings are
        the ones NeMo Gym matches."""
        if self.upstream_status != 400:
            return False
        text = self.body.decode("utf-8", "replace")
        # "This model's maximum context length is ..." (all versions); "'max_tokens' or
        # 'max_completion_tokens' is too large" (older). Not any message naming max_tokens: "min_tokens
        # must be less than or equal to max_tokens" is a plain 400.
        return "context length" in text or ("max_tokens" in text and "too large" in text)


class UpstreamEndpointError(UpstreamError):
    """An auxiliary endpoint (``/tokenize``, ``/apply-template``) answered an HTTP error."""

    def __init__(self, message: str, upstream_status: int) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status


class UpstreamStreamBroken(UpstreamError):
    """The stream started and then failed (connection lost, invalid line)."""

    code = "upstream_disconnected"


class UpstreamProtocolError(UpstreamError):
    """The upstream sent something that is not a chat completion stream."""

    code = "upstream_protocol_error"


class UpstreamTooLarge(UpstreamError):
    """The upstream sent more than the gateway reads from one answer (or one SSE event)."""

    code = "upstream_too_large"


class UpstreamStalled(UpstreamError):
    """vLLM sent nothing for longer than the first-byte or idle timeout."""

    status = 504
    code = "upstream_stalled"


class UpstreamDead(UpstreamError):
    """vLLM stopped sending and its /health fails: its engine died. (A dead engine can leave the
    stream open and silent; this ends it long before idle_timeout_s.)"""

    code = "upstream_dead"


@dataclass(frozen=True)
class ClientSettings:
    connect: float = 10.0
    first_byte: float = 600.0
    idle: float = 300.0
    total: float = 3600.0
    keepalive: float = 15.0
    max_retries: int = 2
    backoff: float = 0.2
    backoff_max: float = 2.0
    health_interval: float = 10.0
    eject_after: int = 3
    eject_s: float = 10.0
    dead_probe: float = 10.0  # silence after which /health is asked (then as often); 0: never
    max_response_bytes: int = 64 * 1024 * 1024  # the most read from one answer, streamed or not
    max_event_bytes: int = 4 * 1024 * 1024  # the most held of one SSE event still incomplete


KEEPALIVE = object()  # yielded by ChatStream during a silence: time to write a keepalive (event or comment)
Streamed = Optional[chat.ChatChunk]  # a chunk, or None for [DONE]


# The most read at once before the client has its first output (see __aiter__): a dozen chunks.
_FIRST_OUTPUT_READ_BYTES = 4096


class DecodedRead:
    """The chunks of one upstream read (``len``: how many), each decoded when the relay takes it,
    so it is translated and freed before the next one is made. A busy vLLM's read holds hundreds of
    chunks (a burst, a whole answer); decoding them all first cost 20-30 % more CPU per token at
    c=64: the decoded chunks of 64 streams no longer fit in the CPU's caches (gateway/bench/README.md)."""

    __slots__ = ("_stream", "_payloads", "_decode")

    def __init__(self, stream: "ChatStream", payloads: list[bytes], decode: Any) -> None:
        self._stream, self._payloads, self._decode = stream, payloads, decode

    def __len__(self) -> int:  # what follows [DONE] is not read
        payloads = self._payloads
        return payloads.index(DONE) + 1 if DONE in payloads else len(payloads)

    def __iter__(self) -> Iterator[Streamed]:
        return self._stream._decoded(self._payloads, self._decode)


class ChatStream:
    """An open streaming chat completion. Iterating yields, per network read, the chunks it carried
    (a ``DecodedRead``; ``None`` in it = ``[DONE]``), or ``KEEPALIVE`` during silences: the relay then
    writes once per read, however many chunks a busy vLLM packed into it. ``close()`` aborts the
    HTTP request, which makes vLLM stop generating."""

    def __init__(self, response: aiohttp.ClientResponse, backend: Backend, client: "VLLMClient",
                 started: float, capture: Optional[list[bytes]] = None,
                 observer: Optional[RequestObserver] = None) -> None:
        self._response = response
        self.backend = backend
        self._client = client
        self._settings = client.settings
        self._started = started
        self._closed = False
        self.capture = capture  # raw bytes as received, for the transport log
        self.observer = observer  # told each read's bytes, when someone watches
        self.done_seen = False  # [DONE] arrived: the connection may go back to the pool
        self.watch = HealthWatch(client, backend, response)
        self._clock = asyncio.get_running_loop().time
        self._last_write = self._clock()  # when the client last got something (see wrote())
        # Reads take all that has arrived: the client has its first output, or nobody waits for one.
        # Until then a few KB at a time (see __aiter__).
        self._whole_reads = False
        self._deadline: Optional[ReadDeadline] = None

    def wrote(self) -> None:
        """The relay wrote to the client: the keepalive interval counts from now. Upstream bytes
        that make no event (whitespace deltas, ``choices: []``, a tool call without a name yet)
        do not count, so keepalives go on while they arrive."""
        self._last_write = self._clock()
        self._whole_reads = True

    def no_first_output(self) -> None:
        """Nobody waits for this stream's first output (a background run: its followers read
        stored batches): each read takes all that has arrived, not 4 KB at a time (see __aiter__)."""
        self._whole_reads = True

    async def __aiter__(self) -> AsyncIterator[Union[DecodedRead, object]]:
        """The timers, all measured on the one clock:

        - first byte / idle: *silence*, the time spent waiting for vLLM since its last bytes (or
          since the request was sent). Time the relay spends writing to a slow client between two
          reads is not silence: vLLM was not asked for anything then.
        - keepalive: the time since the client last got something (``wrote()``).
        - total (request_timeout_s): since the request was sent, whatever happened; when it is over
          the stream ends (``upstream_timeout``) and the upstream request is closed.
        """
        settings = self._settings
        decoder = SSEDecoder(settings.max_event_bytes)
        decode = chat.chunk_decoder.decode
        content = self._response.content
        clock = self._clock
        capture = self.capture
        silence = clock() - self._started  # the wait for the response headers was silence too
        silence_limit = settings.first_byte
        total_deadline = self._started + settings.total
        keepalive = settings.keepalive
        max_bytes = settings.max_response_bytes
        received = 0
        observer = self.observer
        first = True
        # one timer for every read's deadline (not asyncio.timeout per read); stopped by close()
        deadline = self._deadline = ReadDeadline()
        try:
            while True:
                now = clock()
                stall_in, total_in = silence_limit - silence, total_deadline - now
                wait = min(stall_in, self._last_write + keepalive - now, total_in)
                data: Optional[bytes] = None
                if wait > 0:
                    deadline.waiting_until(now + wait)
                    try:
                        # Until the client has its first output, reads are small: a busy vLLM's
                        # first read can hold a whole answer, and the first delta leaves as soon
                        # as it exists, not once the whole read is split, decoded, translated.
                        data = await (content.readany() if self._whole_reads
                                      else content.read(_FIRST_OUTPUT_READ_BYTES))
                    except asyncio.CancelledError:
                        if not deadline.expired():
                            raise  # not the deadline's: the client left, a shutdown
                    deadline.done_waiting()
                    silence += clock() - now
                if data is None:  # a timer ran out: which one is known from the wait chosen (the
                    # clock may be coarser than the wait: uvloop's ticks in milliseconds)
                    if wait == total_in:
                        raise UpstreamTimeout(self._total_message())
                    if wait == stall_in:
                        raise UpstreamStalled(self._stall_message(first))
                    yield KEEPALIVE
                    self._last_write = clock()  # written: the next interval starts now, however long that took
                    continue
                if not data:
                    break
                first = False
                silence, silence_limit = 0.0, settings.idle
                received += len(data)
                if received > max_bytes:
                    raise UpstreamTooLarge(f"the vLLM server at {self.backend.url} sent more than {max_bytes} bytes "
                                           "in one answer (gateway.max_upstream_response_bytes)")
                if capture is not None:
                    capture.append(data)
                if observer is not None:
                    observer.read(data)
                payloads = decoder.feed(data)
                if payloads:
                    yield self._decode(payloads, decode)
                if clock() - self._last_write >= keepalive:  # bytes came, but nothing for the client
                    yield KEEPALIVE
                    self._last_write = clock()
            payloads = decoder.close()
            if payloads:
                yield self._decode(payloads, decode)
        except SSEEventTooLarge:
            error = UpstreamTooLarge(f"the vLLM server at {self.backend.url} sent an SSE event longer than "
                                     f"{settings.max_event_bytes} bytes (gateway.max_upstream_event_bytes)")
            self._client.failed(self.backend, error)
            raise error from None
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionResetError,
                HttpProcessingError) as exc:  # HttpProcessingError: invalid chunked framing, raised as is
            error = UpstreamStreamBroken(f"the connection to {self.backend.url} was lost mid-stream ({_describe(exc)})")
            self._client.failed(self.backend, error)
            raise error from None
        except UpstreamError as exc:
            self._client.failed(self.backend, exc)
            raise
        finally:
            deadline.stop()

    def _total_message(self) -> str:
        return (f"the request to the vLLM server at {self.backend.url} took longer than "
                f"{self._settings.total:g} s (request_timeout_s)")

    def _decode(self, payloads: list[bytes], decode: Any) -> "DecodedRead":
        return DecodedRead(self, payloads, decode)

    def _decoded(self, payloads: list[bytes], decode: Any) -> Iterator[Streamed]:
        for payload in payloads:
            if payload == DONE:
                self.done_seen = True
                yield None
                return
            try:
                chunk = decode(payload)
            except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:  # absurd depth, bad UTF-8
                error = UpstreamProtocolError(f"the upstream sent a line that is not a chat.completion.chunk: {exc}")
                self._client.failed(self.backend, error)  # as for any failure of the stream (__aiter__)
                raise error from None
            if chunk.usage is not None:
                chunk.usage = checked_usage(chunk.usage, self.backend.url)
            yield chunk

    def _stall_message(self, first: bool) -> str:
        if first:
            return (f"the vLLM server at {self.backend.url} sent nothing within {self._settings.first_byte:g} s "
                    "(first_byte_timeout_s)")
        return f"the vLLM server at {self.backend.url} stalled: no output for {self._settings.idle:g} s (idle_timeout_s)"

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.watch.stop()
        if self._deadline is not None:  # the relay may leave the iteration suspended (at [DONE])
            self._deadline.stop()
        self.backend.in_flight -= 1
        if self._response.closed:
            return
        if self.done_seen:
            # Finished: read the end of the body in the background so that the connection goes
            # back to the pool (a new TCP connection per request costs under load).
            asyncio.ensure_future(self._drain())
        else:
            # ``close`` (not ``release``) drops the connection: vLLM sees the client leave.
            self._response.close()

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(1.0):
                while await self._response.content.readany():
                    pass
            self._response.release()
        except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError):
            self._response.close()


class HealthWatch:
    """While an answer is silent, asks the server's ``/health`` every ``dead_probe`` seconds; when
    that fails (an error status, a refused connection, no answer), the read waiting on the answer
    fails at once with ``UpstreamDead``, instead of after idle_timeout_s or request_timeout_s. Runs
    beside the reader, so it changes none of the reader's timers. A timer, not a task, while the
    stream is busy: a probe task exists only when the stream has been silent for an interval."""

    def __init__(self, client: "VLLMClient", backend: Backend, response: aiohttp.ClientResponse) -> None:
        self._client, self._backend, self._response = client, backend, response
        self._interval = client.settings.dead_probe
        self._timer: Optional[asyncio.TimerHandle] = None
        self._probe: Optional[asyncio.Task[None]] = None
        self._seen = response.content.total_bytes
        if self._interval > 0:
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._look)

    def _look(self) -> None:
        self._timer = None
        content = self._response.content
        if content.is_eof() or content.exception() is not None:
            return
        if content.total_bytes != self._seen:  # bytes came since the last look: not silent
            self._seen = content.total_bytes
            self._timer = asyncio.get_running_loop().call_later(self._interval, self._look)
            return
        self._probe = asyncio.ensure_future(self._ask())

    async def _ask(self) -> None:
        content = self._response.content
        reason = await self._client.probe_health(self._backend)
        self._probe = None
        if reason is not None and content.total_bytes == self._seen and not content.is_eof():
            content.set_exception(UpstreamDead(
                f"the vLLM server at {self._backend.url} sent nothing for {self._interval:g} s and its {reason}: "
                "its engine has most likely died"))
        elif not content.is_eof() and content.exception() is None:
            self._look()

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None


class _DeadlineWatch:
    """``VLLMClient._until_dead``'s watch over one wait: every ``interval`` without an answer, a
    ``/health`` probe; a failing one cancels the waiting task, which then raises ``UpstreamDead``.
    A timer per wait, a task only for a probe."""

    def __init__(self, client: "VLLMClient", backend: Backend, interval: float) -> None:
        self._client, self._backend, self._interval = client, backend, interval
        self._task = asyncio.current_task()
        self._loop = asyncio.get_running_loop()
        self._timer: Optional[asyncio.TimerHandle] = self._loop.call_later(interval, self._look)
        self._probe: Optional[asyncio.Task[None]] = None
        self.dead: Optional[str] = None  # why the server is taken for dead, once it is
        self.finished = False

    def _look(self) -> None:
        self._timer = None
        self._probe = asyncio.ensure_future(self._ask())

    async def _ask(self) -> None:
        reason = await self._client.probe_health(self._backend)
        self._probe = None
        if self.finished:
            return
        if reason is None:
            self._timer = self._loop.call_later(self._interval, self._look)
        elif self._task is not None:
            self.dead = reason
            self._task.cancel()

    def stop(self) -> None:
        self.finished = True
        if self._timer is not None:
            self._timer.cancel()
        if self._probe is not None:
            self._probe.cancel()


# A failure before vLLM answered that another try (on another server) may not have.
_RETRY_STATUSES = frozenset({429, 502, 503, 504})


class VLLMClient:
    """Talks to every configured vLLM server: picks one per request (``pool``), retries failures
    that happened before vLLM answered, checks the servers' health in the background."""

    def __init__(
        self,
        base_urls: list[str],
        api_key: str = "",
        default_headers: Optional[dict[str, str]] = None,
        settings: ClientSettings = ClientSettings(),
        flavour: str = "vllm",
        metrics: Optional[Any] = None,
    ) -> None:
        self.metrics = metrics  # has upstream_error(server, code) and upstream_retry(server)
        # Credentials in a base URL (http://user:pw@host/v1) leave the URL here and become that
        # server's Authorization header, so the URL (in messages, /health, metrics labels) holds none.
        servers = [split_credentials(url.rstrip("/")) for url in base_urls]
        self.pool = BackendPool([url for url, _ in servers], eject_after=settings.eject_after,
                                eject_s=settings.eject_s)
        self.base_urls = [b.url for b in self.pool.backends]
        self._headers = {"Content-Type": "application/json", **(default_headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        has_authorization = any(name.lower() == "authorization" for name in self._headers)
        self._server_headers: dict[str, dict[str, str]] = {}
        for url, basic in servers:
            if basic is None:
                continue
            if has_authorization:  # one Authorization header only: api_key (or default_headers) wins
                log.warning("%s: the credentials in base_url are not sent, api_key is sent instead", url)
            else:
                self._server_headers[url] = {**self._headers, "Authorization": basic}
        self.settings = settings
        self.flavour = flavour
        self.retries = 0  # tries repeated after a failure, since start
        self._session: Optional[aiohttp.ClientSession] = None
        # /models, /tokenize, /apply-template: the session times no request (start()), these carry their own
        self._call_timeout = aiohttp.ClientTimeout(total=settings.total, sock_connect=settings.connect)
        self._health_task: Optional[asyncio.Task[None]] = None
        self._probes: dict[str, asyncio.Task[Optional[str]]] = {}  # one /health probe per server at a time

    async def start(self) -> None:
        if self._session is None:
            connector = lean_connector(limit=0, ttl_dns_cache=300)
            # The session times only a new connection's connect: every request has its own deadlines
            # (the first byte, idle, request_timeout_s: _post, ChatStream, complete_chat; the
            # auxiliary calls: _call_timeout). aiohttp's total and connect ran two more timers per
            # request, an asyncio.timeout for the pool (limit=0: nothing ever waits there) and a
            # timer for the total, which the stream's own deadline already ends.
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect),
                auto_decompress=True,
            )
        if self.settings.health_interval > 0 and len(self.pool.backends) > 1 and self._health_task is None:
            self._health_task = asyncio.ensure_future(self._check_health_forever())

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            try:
                await self._health_task
            except asyncio.CancelledError:
                pass
            self._health_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def headers_for(self, base: str) -> dict[str, str]:
        """The headers every request to this server carries (its own credentials, if any)."""
        return self._server_headers.get(base, self._headers)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("VLLMClient.start() was not awaited")
        return self._session

    def choose(self, session_key: Optional[str] = None) -> Backend:
        backend = self.pool.choose(session_key)
        assert backend is not None  # the pool never has zero servers
        return backend

    def failed(self, backend: Backend, error: UpstreamError) -> None:
        """A server failure: counts towards its ejection, and in the metrics."""
        self.pool.failure(backend, error.message)
        if self.metrics is not None:
            self.metrics.upstream_error(backend.url, error.code)

    async def open_chat_stream(self, body: Union[bytes, dict[str, Any]], first: Optional[Backend] = None,
                               session_key: Optional[str] = None, request_id: Optional[str] = None,
                               capture: Optional[list[bytes]] = None,
                               observer: Optional[RequestObserver] = None) -> ChatStream:
        started = asyncio.get_running_loop().time()
        # the wait for the head is bounded by the first-byte timeout, and by the request's total
        header_timeout = min(self.settings.first_byte, self.settings.total)
        backend, response = await self._send(body, first, session_key, header_timeout, request_id, observer)
        lean_body(response)
        return ChatStream(response, backend, self, started, capture, observer)

    async def complete_chat(self, body: Union[bytes, dict[str, Any]], first: Optional[Backend] = None,
                            session_key: Optional[str] = None, request_id: Optional[str] = None,
                            capture: Optional[list[bytes]] = None,
                            observer: Optional[RequestObserver] = None) -> chat.ChatCompletion:
        started = asyncio.get_running_loop().time()
        total = self.settings.total
        backend, response = await self._send(body, first, session_key, total, request_id, observer)
        try:
            async with asyncio.timeout(max(0.0, started + total - asyncio.get_running_loop().time())):
                raw = await self._until_dead(backend, read_at_most(response, self.settings.max_response_bytes,
                                                                   backend.url, idle=self.settings.idle))
            if capture is not None:
                capture.append(raw)
            if observer is not None:
                observer.read(raw)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, HttpProcessingError) as exc:
            error = UpstreamStreamBroken(f"the connection to {backend.url} was lost ({_describe(exc)})")
            self.failed(backend, error)
            raise error from None
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"{backend.url} did not answer within {total:g} s (request_timeout_s)") from None
        except (UpstreamDead, UpstreamTooLarge, UpstreamStalled) as exc:
            self.failed(backend, exc)
            raise
        finally:
            if raw_read_completely(response):
                response.release()
            else:
                response.close()  # not read to its end: the connection cannot be reused
            backend.in_flight -= 1
        try:
            completion = chat.completion_decoder.decode(raw)
        except (msgspec.DecodeError, RecursionError, UnicodeDecodeError) as exc:
            raise UpstreamError(f"{backend.url} answered with something that is not a chat completion: {exc}") from None
        if completion.usage is not None:
            completion.usage = checked_usage(completion.usage, backend.url)
        return completion

    async def _send(self, body: Union[bytes, dict[str, Any]], first: Optional[Backend], session_key: Optional[str],
                    header_timeout: Optional[float], request_id: Optional[str],
                    observer: Optional[RequestObserver] = None) -> tuple[Backend, aiohttp.ClientResponse]:
        """POST to a server; on a failure before it answered, retry (bounded, with backoff) on
        another server when there is one. Nothing is retried once vLLM answered 200. The observer
        (when one watches) sees each try start and end."""
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        backend = first or self.choose(session_key)
        tried: set[str] = set()
        attempt = 0
        while True:
            headers = self.headers_for(backend.url)
            if request_id:
                headers = {**headers, "X-Request-Id": request_id}
            backend.in_flight += 1
            if observer is not None:
                observer.attempt_started(backend.url)
            try:
                response = await self._post(backend, payload, header_timeout, headers)
            except BaseException as exc:
                backend.in_flight -= 1  # whatever happened (the client left, a failure), it is not in flight
                if not isinstance(exc, UpstreamError):
                    raise
                if observer is not None:
                    observer.attempt_ended(backend.url, exc)
                status = exc.upstream_status if isinstance(exc, UpstreamHTTPError) else None
                if isinstance(exc, (UpstreamUnreachable, UpstreamTimeout, UpstreamDead)) or (status or 0) >= 500:
                    self.failed(backend, exc)
                elif self.metrics is not None:
                    self.metrics.upstream_error(backend.url, exc.code)
                retriable = isinstance(exc, (UpstreamUnreachable, UpstreamDead)) or status in _RETRY_STATUSES
                if not retriable or attempt >= self.settings.max_retries:
                    raise
                attempt += 1
                self.retries += 1
                if self.metrics is not None:
                    self.metrics.upstream_retry(backend.url)
                tried.add(backend.url)
                delay = min(self.settings.backoff * 2 ** (attempt - 1), self.settings.backoff_max)
                await asyncio.sleep(delay * (0.5 + random.random() / 2))  # jitter: retries do not align
                backend = self.pool.choose(session_key, exclude=frozenset(tried)) or self.choose(session_key)
                continue
            self.pool.success(backend)
            if observer is not None:
                observer.attempt_ended(backend.url, None)
            return backend, response

    async def _post(self, backend: Backend, payload: bytes, header_timeout: Optional[float],
                    headers: dict[str, str]) -> aiohttp.ClientResponse:
        base = backend.url
        try:
            async with asyncio.timeout(header_timeout):
                response = await self._until_dead(backend, self.session.post(
                    f"{base}/chat/completions", data=payload, headers=headers, allow_redirects=False))
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(f"Could not connect to the vLLM server at {base}: {_describe(exc)}") from None
        except asyncio.TimeoutError:
            limit = header_timeout if header_timeout is not None else self.settings.total
            raise UpstreamTimeout(f"the vLLM server at {base} did not answer within {limit:g} s") from None
        except (aiohttp.ClientError, ValueError) as exc:  # ValueError: aiohttp refused to build the request
            raise UpstreamUnreachable(f"The request to the vLLM server at {base} failed: {_describe(exc)}") from None
        if response.status >= 300:  # redirects are not followed (allow_redirects=False): an answer, not a hop
            try:
                raw = await read_at_most(response, _ERROR_BODY_BYTES, base, truncate=True)
            except (aiohttp.ClientError, asyncio.TimeoutError):
                raw = b""
            finally:
                if raw_read_completely(response):
                    response.release()  # the connection goes back to the pool: a retry reuses it
                else:
                    response.close()
            raise _http_error(base, response.status, raw)
        return response

    async def get_json(self, base: str, path: str) -> Any:
        url = f"{base}{path}"
        try:
            async with self.session.get(url, headers=self.headers_for(base), allow_redirects=False,
                                        timeout=self._call_timeout) as response:
                raw = await read_at_most(response, self.settings.max_response_bytes, base)
                if response.status >= 300:
                    raise _http_error(base, response.status, raw)
                return orjson.loads(raw)
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(f"Could not connect to the vLLM server at {base}: {_describe(exc)}") from None
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"{base} did not answer {path} in time") from None
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{base}{path} did not answer with JSON") from None

    async def tokenize(self, base: str, body: dict[str, Any]) -> list[int]:
        """The prompt's token ids. vLLM: ``/tokenize`` with the chat fields; llama.cpp: render the
        prompt with ``/apply-template``, then ``/tokenize`` it. Both live at the server root."""
        root = _root(base)
        headers = self.headers_for(base)
        if self.flavour == "llama.cpp":
            prompt = await self.render_template(base, body)
            body = {"content": prompt, "add_special": False, "parse_special": True}
        answer = await self._post_json(root, "/tokenize", body, headers)
        tokens = answer.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise UpstreamError(f"{root}/tokenize did not answer with a list of integer 'tokens'")
        return tokens

    async def render_template(self, base: str, body: dict[str, Any]) -> str:
        """llama.cpp's ``/apply-template``: the prompt its chat template renders for ``messages``."""
        root = _root(base)
        rendered = await self._post_json(root, "/apply-template", {k: v for k, v in body.items() if k != "model"},
                                         self.headers_for(base))
        prompt = rendered.get("prompt")
        if not isinstance(prompt, str):
            raise UpstreamError(f"{root}/apply-template did not answer with {{prompt}}")
        return prompt

    async def _post_json(self, root: str, path: str, body: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        url = f"{root}{path}"
        try:
            async with self.session.post(url, data=orjson.dumps(body), headers=headers, allow_redirects=False,
                                         timeout=self._call_timeout) as response:
                raw = await read_at_most(response, self.settings.max_response_bytes, root)
                if response.status >= 300:
                    raise UpstreamEndpointError(f"{path} failed: {_http_error(root, response.status, raw).message}",
                                                response.status)
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(f"Could not connect to the server at {root} for {path}: {_describe(exc)}") from None
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"{url} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamError(f"{url} failed: {_describe(exc)}") from None
        try:
            answer = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"{url} did not answer with JSON") from None
        if not isinstance(answer, dict):
            raise UpstreamError(f"{url} did not answer with a JSON object")
        return answer

    async def models(self) -> Any:
        return await self.get_json(self.choose().url, "/models")

    async def _check_health_forever(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(self.settings.health_interval)

    async def check_health(self, timeout: float = 5.0) -> list[dict[str, object]]:
        """Ask every server's ``/health`` (vLLM and llama.cpp have it at the root) and record it."""

        async def probe(backend: Backend) -> None:
            reason = await self._ask_health(backend, timeout)
            self.pool.health(backend, reason is None, reason)

        await asyncio.gather(*(probe(b) for b in self.pool.backends))
        return self.pool.status()

    async def _until_dead(self, backend: Backend, awaitable: Any) -> Any:
        """Awaits what arrives only once vLLM is done with it (the response headers, a whole
        non-streaming body), asking the server's /health every ``dead_probe`` seconds meanwhile: a
        failing /health ends the wait with ``UpstreamDead``."""
        interval = self.settings.dead_probe
        if interval <= 0:
            return await awaitable
        watch = _DeadlineWatch(self, backend, interval)
        try:
            return await awaitable
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if watch.dead is None or task is None:
                raise  # not the watch's doing: the client left, a timeout, a shutdown
            task.uncancel()
            raise UpstreamDead(f"the vLLM server at {backend.url} has not answered for {interval:g} s and its "
                               f"{watch.dead}: its engine has most likely died") from None
        finally:
            watch.stop()

    async def probe_health(self, backend: Backend) -> Optional[str]:
        """``/health`` for a silent stream: None when it answers 200, else why not. Streams that
        are silent together share one probe per server."""
        task = self._probes.get(backend.url)
        if task is None or task.done():
            task = self._probes[backend.url] = asyncio.ensure_future(
                self._ask_health(backend, max(5.0, self.settings.dead_probe)))
        return await asyncio.shield(task)  # a stream that goes away does not cancel the others' probe

    async def _ask_health(self, backend: Backend, timeout: float) -> Optional[str]:
        try:
            async with asyncio.timeout(timeout):
                async with self.session.get(f"{_root(backend.url)}/health", headers=self.headers_for(backend.url),
                                            allow_redirects=False) as response:
                    await response.read()
                    return None if response.status == 200 else f"/health answered {response.status}"
        except asyncio.TimeoutError:
            return f"/health: no answer in {timeout:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return f"/health: {_describe(exc)}"


def _http_error(base: str, status: int, raw: bytes) -> UpstreamHTTPError:
    upstream_message = ""
    param = None
    try:
        parsed = chat.error_decoder.decode(raw)
        if parsed.error is not None and parsed.error.message:
            upstream_message = parsed.error.message
            param = parsed.error.param if isinstance(parsed.error.param, str) else None
        elif parsed.message:
            upstream_message = parsed.message
        elif parsed.detail is not None:
            upstream_message = str(parsed.detail)
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        upstream_message = raw[:500].decode("utf-8", "replace").strip()
    text = upstream_message or f"HTTP {status}"
    if 300 <= status < 400:  # where it points is not shown: the gateway goes only where it is configured to
        text = f"a redirect, which the gateway does not follow; set base_url to the server itself ({text})"
    return UpstreamHTTPError(f"The vLLM server at {base} answered {status}: {text}", status, text, raw, param)


_ERROR_BODY_BYTES = 64 * 1024  # of an error answer (or /health's): the message is at its start


async def read_at_most(response: aiohttp.ClientResponse, limit: int, base: str, truncate: bool = False,
                       idle: Optional[float] = None) -> bytes:
    """The body, read (and decompressed, by aiohttp, step by step) up to ``limit`` bytes: more is
    ``UpstreamTooLarge``, or with ``truncate`` the first ``limit`` bytes. ``idle``: the longest
    silence between two reads (``UpstreamStalled``; also what ends a body whose chunked framing
    broke, which aiohttp's reader does not report)."""
    out = bytearray()
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await response.content.readany()
        except TimeoutError:
            if idle is None:
                raise
            raise UpstreamStalled(f"the vLLM server at {base} stalled: no output for {idle:g} s "
                                  "(idle_timeout_s)") from None
        if not chunk:
            break
        out += chunk
        if len(out) > limit:
            if truncate:
                return bytes(out[:limit])
            raise UpstreamTooLarge(f"the vLLM server at {base} sent more than {limit} bytes in one answer "
                                   "(gateway.max_upstream_response_bytes)")
    return bytes(out)


def raw_read_completely(response: aiohttp.ClientResponse) -> bool:
    return response.content.at_eof()


_USAGE_LIMIT = 2**53  # no count of tokens is larger; what is, or is negative, is not a count


def checked_usage(usage: chat.Usage, base: str) -> Optional[chat.Usage]:
    """vLLM's usage, when its numbers are counts; otherwise None (as if it had sent none), so
    clients and the metrics never see a negative or absurd number."""
    numbers = [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens]
    if usage.prompt_tokens_details is not None:
        numbers.append(usage.prompt_tokens_details.cached_tokens)
    if usage.completion_tokens_details is not None:
        numbers.append(usage.completion_tokens_details.reasoning_tokens)
    if all(n is None or 0 <= n < _USAGE_LIMIT for n in numbers):
        return usage
    log.warning("%s sent a usage that is not made of token counts (%s); it is ignored", base,
                ", ".join(str(n)[:30] for n in numbers))
    return None


def split_credentials(url: str) -> tuple[str, Optional[str]]:
    """``http://user:pw@host/v1`` -> (``http://host/v1``, ``Basic <base64 user:pw>``); a URL without
    credentials -> (the URL, None)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    user, password = unquote(parts.username or ""), unquote(parts.password or "")
    basic = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return urlunsplit(parts._replace(netloc=host)), basic


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error.strerror or exc.os_error) if exc.os_error else str(exc)
    if isinstance(exc, HttpProcessingError):
        return f"invalid HTTP framing: {exc.message}"
    return str(exc) or type(exc).__name__


def _root(base: str) -> str:
    """The server root of an OpenAI base URL: /health and /tokenize live there, not under /v1."""
    return base[: -len("/v1")] if base.endswith("/v1") else base
