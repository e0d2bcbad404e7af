"""HTTP client for the vLLM servers behind the gateway.

Failures are raised as ``UpstreamError`` subclasses that say which server and what happened, so the
server can answer with a clear status and message. The API key is sent as a header and never put in
a message.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass
from typing import Any, AsyncIterator, Optional, Union

import aiohttp
import msgspec
import orjson

from ..schema import chat
from .sse import DONE, SSEDecoder


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

    def __init__(self, message: str, upstream_status: int, upstream_message: str, body: bytes) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.upstream_message = upstream_message
        self.body = body
        if upstream_status in (400, 404, 413, 422):
            self.status, self.code = (400 if upstream_status == 422 else upstream_status), "invalid_request_error"
        elif upstream_status == 429:
            self.status, self.code = 429, "rate_limit_exceeded"
        elif upstream_status in (401, 403):
            self.status, self.code = 502, "upstream_auth_failed"

    @property
    def is_context_overflow(self) -> bool:
        """vLLM's 400 for a prompt (plus max_tokens) beyond the context window; the substrings are
        the ones NeMo Gym matches."""
        if self.upstream_status != 400:
            return False
        text = self.body.decode("utf-8", "replace")
        return "context length" in text or "max_tokens" in text or "maximum context" in text


class UpstreamStreamBroken(UpstreamError):
    """The stream started and then failed (connection lost, invalid line)."""

    code = "upstream_disconnected"


@dataclass(frozen=True)
class Timeouts:
    connect: float = 10.0
    total: float = 3600.0


Streamed = Union[chat.ChatChunk, None]  # None marks [DONE]


class ChatStream:
    """An open streaming chat completion. Iterate for chunks (``None`` = ``[DONE]``); ``close()``
    aborts the HTTP request, which makes vLLM stop generating."""

    def __init__(self, response: aiohttp.ClientResponse, url: str) -> None:
        self._response = response
        self._url = url

    async def __aiter__(self) -> AsyncIterator[Streamed]:
        decoder = SSEDecoder()
        decode = chat.chunk_decoder.decode
        try:
            async for data in self._response.content.iter_any():
                for payload in decoder.feed(data):
                    yield _decode_chunk(payload, decode)
            for payload in decoder.close():
                yield _decode_chunk(payload, decode)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionResetError) as exc:
            raise UpstreamStreamBroken(f"the connection to {self._url} was lost mid-stream ({_describe(exc)})") from None
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"{self._url} did not finish the stream in time") from None

    def close(self) -> None:
        if not self._response.closed:
            # ``close`` (not ``release``) drops the connection: vLLM sees the client leave.
            self._response.close()


def _decode_chunk(payload: bytes, decode: Any) -> Streamed:
    if payload == DONE:
        return None
    try:
        return decode(payload)
    except msgspec.DecodeError as exc:
        raise UpstreamStreamBroken(f"the upstream sent a line that is not a chat.completion.chunk: {exc}") from None


class VLLMClient:
    """One client for all configured servers (``base_url`` as a list): requests are spread round-robin."""

    def __init__(
        self,
        base_urls: list[str],
        api_key: str = "",
        default_headers: Optional[dict[str, str]] = None,
        timeouts: Timeouts = Timeouts(),
        flavour: str = "vllm",
    ) -> None:
        if not base_urls:
            raise ValueError("at least one base_url is needed")
        self.base_urls = [url.rstrip("/") for url in base_urls]
        self._headers = {"Content-Type": "application/json", **(default_headers or {})}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._timeouts = timeouts
        self.flavour = flavour
        self._next = itertools.cycle(range(len(self.base_urls)))
        self._session: Optional[aiohttp.ClientSession] = None

    async def start(self) -> None:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self._timeouts.total, connect=self._timeouts.connect),
                json_serialize=lambda obj: orjson.dumps(obj).decode(),
                auto_decompress=True,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("VLLMClient.start() was not awaited")
        return self._session

    def pick(self) -> str:
        return self.base_urls[next(self._next)]

    async def open_chat_stream(self, body: dict[str, Any], base: Optional[str] = None) -> ChatStream:
        base = base or self.pick()
        url = f"{base}/chat/completions"
        response = await self._post(url, body)
        return ChatStream(response, base)

    async def complete_chat(self, body: dict[str, Any], base: Optional[str] = None) -> chat.ChatCompletion:
        base = base or self.pick()
        url = f"{base}/chat/completions"
        response = await self._post(url, body)
        try:
            raw = await response.read()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            raise UpstreamStreamBroken(f"the connection to {base} was lost ({_describe(exc)})") from None
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"{base} did not answer in time") from None
        finally:
            response.release()
        try:
            return chat.completion_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"{base} answered with something that is not a chat completion: {exc}") from None

    async def get_json(self, base: str, path: str) -> Any:
        url = f"{base}{path}"
        try:
            async with self.session.get(url, headers=self._headers) as response:
                raw = await response.read()
                if response.status >= 400:
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
        root = base[: -len("/v1")] if base.endswith("/v1") else base
        if self.flavour == "llama.cpp":
            rendered = await self._post_json(root, "/apply-template", {k: v for k, v in body.items() if k != "model"})
            prompt = rendered.get("prompt")
            if not isinstance(prompt, str):
                raise UpstreamError(f"{root}/apply-template did not answer with {{prompt}}")
            body = {"content": prompt, "add_special": False, "parse_special": True}
        answer = await self._post_json(root, "/tokenize", body)
        tokens = answer.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
            raise UpstreamError(f"{root}/tokenize did not answer with a list of integer 'tokens'")
        return tokens

    async def _post_json(self, root: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = f"{root}{path}"
        try:
            async with self.session.post(url, data=orjson.dumps(body), headers=self._headers) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise UpstreamError(f"{path} failed: {_http_error(root, response.status, raw).message}")
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
        return await self.get_json(self.base_urls[0], "/models")

    async def health(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Per server: does it answer ``/models``? (``/health`` lives at the root and is not
        OpenAI-compatible; ``/models`` proves the API answers and the key works.)"""

        async def probe(base: str) -> dict[str, Any]:
            try:
                await asyncio.wait_for(self.get_json(base, "/models"), timeout)
                return {"url": base, "ok": True}
            except asyncio.TimeoutError:
                return {"url": base, "ok": False, "error": f"no answer within {timeout:g} s"}
            except UpstreamError as exc:
                return {"url": base, "ok": False, "error": exc.message}

        return list(await asyncio.gather(*(probe(base) for base in self.base_urls)))

    async def _post(self, url: str, body: dict[str, Any]) -> aiohttp.ClientResponse:
        base = url.rsplit("/chat/completions", 1)[0]
        try:
            response = await self.session.post(url, data=orjson.dumps(body), headers=self._headers)
        except aiohttp.ClientConnectorError as exc:
            raise UpstreamUnreachable(f"Could not connect to the vLLM server at {base}: {_describe(exc)}") from None
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"{base} did not answer in time") from None
        except aiohttp.ClientError as exc:
            raise UpstreamUnreachable(f"The request to the vLLM server at {base} failed: {_describe(exc)}") from None
        if response.status >= 400:
            try:
                raw = await response.read()
            except aiohttp.ClientError:
                raw = b""
            finally:
                response.release()
            raise _http_error(base, response.status, raw)
        return response


def _http_error(base: str, status: int, raw: bytes) -> UpstreamHTTPError:
    upstream_message = ""
    try:
        parsed = chat.error_decoder.decode(raw)
        if parsed.error is not None and parsed.error.message:
            upstream_message = parsed.error.message
        elif parsed.message:
            upstream_message = parsed.message
        elif parsed.detail is not None:
            upstream_message = str(parsed.detail)
    except msgspec.DecodeError:
        upstream_message = raw[:500].decode("utf-8", "replace").strip()
    text = upstream_message or f"HTTP {status}"
    return UpstreamHTTPError(f"The vLLM server at {base} answered {status}: {text}", status, text, raw)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorError):
        return str(exc.os_error.strerror or exc.os_error) if exc.os_error else str(exc)
    return str(exc) or type(exc).__name__
