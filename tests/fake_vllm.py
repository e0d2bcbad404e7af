"""A scripted upstream that answers exactly as vLLM's OpenAI server does (shapes from vLLM's
serving_chat.py / protocol.py): the role chunk first, content / reasoning / tool-call deltas, the
finish chunk, the usage chunk with ``choices: []``, ``data: [DONE]``; errors as vLLM's
``{"error": {...}}`` bodies, mid-stream too. It runs on a real socket and records every request,
when it started, and whether the client closed it before the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from aiohttp import web


@dataclass
class Generation:
    """What the model "generates" for one request, as an ordered list of delta dicts."""

    deltas: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: Optional[str] = "stop"
    prompt_tokens: int = 12
    completion_tokens: Optional[int] = None  # default: number of deltas
    # faults
    status: int = 200  # != 200: answer with vLLM's error body instead
    error_message: str = ""
    stream_error_after: Optional[int] = None  # send a {"error": ...} line after this many deltas
    drop_after: Optional[int] = None  # cut the connection after this many deltas
    stall_before: float = 0.0  # seconds before the first chunk
    stall_headers: float = 0.0  # seconds before even the response headers
    delay: float = 0.0  # seconds between chunks
    pauses: dict[int, float] = field(default_factory=dict)  # extra seconds before delta i
    hold_at: Optional[int] = None  # wait for ``hold`` before delta i (a test decides when it goes on)
    hold: Optional[asyncio.Event] = None
    # before delta gate_before (without streaming: before the answer), wait until the test sets
    # ``gate`` (no timing assumptions)
    gate_before: Optional[int] = None
    gate: Optional[asyncio.Event] = None
    send_done: bool = True
    # token tracking: a delta may carry "_tokens": [(id, logprob), ...], the tokens it decodes from
    # (or (id, logprob, text); a delta's only token has the delta's text); finish_tokens are the
    # tokens of the finish chunk (the end-of-turn token, text "").
    finish_tokens: list[tuple[int, float]] = field(default_factory=list)
    prompt_token_ids: list[int] = field(default_factory=lambda: [151644, 872, 198, 6023, 151645])
    inline_token_ids: bool = True  # honour return_token_ids (older vLLM ignores it)
    # A recorded answer, replayed byte for byte instead of the above: a streamed body (SSE) or a
    # JSON completion, with its HTTP status.
    raw_body: Optional[bytes] = None
    raw_status: int = 200
    raw_content_type: str = "text/event-stream"
    raw_headers: dict[str, str] = field(default_factory=dict)  # e.g. Location, Content-Encoding
    # Raw SSE pieces, each its own write, ``delay`` apart (lines that never end, chunks without events).
    raw_chunks: Optional[list[bytes]] = None

    def all_tokens(self) -> list[tuple[int, float]]:
        return [t for d in self.deltas for t in d.get("_tokens", [])] + self.finish_tokens

    def usage(self) -> dict[str, Any]:
        counted = len(self.all_tokens()) or len(self.deltas)
        completion = self.completion_tokens if self.completion_tokens is not None else counted
        return {
            "prompt_tokens": self.prompt_tokens,
            "total_tokens": self.prompt_tokens + completion,
            "completion_tokens": completion,
            "prompt_tokens_details": None,
        }


# --- builders of vLLM-shaped deltas ---------------------------------------------------------------


def split(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def content(text: str, size: int = 4) -> list[dict[str, Any]]:
    return [{"content": piece} for piece in split(text, size)]


def reasoning(text: str, size: int = 4, field_name: str = "reasoning") -> list[dict[str, Any]]:
    return [{field_name: piece} for piece in split(text, size)]


def tool_call(index: int, name: str, arguments: str, size: int = 5, call_id: Optional[str] = None) -> list[dict]:
    """vLLM's hermes parser: the first fragment carries id, type and name; then argument pieces."""
    call_id = call_id or f"chatcmpl-tool-{uuid.uuid4().hex}"
    first = {"tool_calls": [{"id": call_id, "type": "function", "index": index, "function": {"name": name}}]}
    rest = [{"tool_calls": [{"index": index, "function": {"arguments": piece}}]} for piece in split(arguments, size)]
    return [first, *rest]


CONTEXT_OVERFLOW_MESSAGE = (
    "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
    "(4000 in the messages, 1000 in the completion). Please reduce the length of the messages or completion."
)


class FakeVLLM:
    """``queue(Generation)`` scripts the next request; unscripted requests get a short answer."""

    def __init__(self, model: str = "Qwen/Qwen3-8B") -> None:
        self.model = model
        self.script: list[Generation] = []
        # When the script is empty: a Generation chosen from the request body (for clients that
        # send many different requests at once, such as the Open Responses compliance suite).
        self.responder: Optional[Callable[[dict[str, Any]], Generation]] = None
        self.requests: list[dict[str, Any]] = []  # {"path", "body", "headers", "started", "closed_early", "sent"}
        self.closed_early = asyncio.Event()
        self.healthy = True  # what /health answers
        self.app = web.Application(client_max_size=64 * 1024 * 1024)  # vLLM (uvicorn) takes large prompts
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_get("/v1/models", self._models)
        self.app.router.add_get("/health", self._health)
        self.app.router.add_post("/tokenize", self._tokenize)
        self.tokenize_requests: list[dict[str, Any]] = []
        self.tokenize_prompt: list[int] = Generation().prompt_token_ids
        self.tokenize_delay = 0.0
        self.tokenize_gate: Optional[asyncio.Event] = None  # /tokenize answers once a test sets it
        # What the chat template does with a developer message: "render" it (Llama, gpt-oss), "drop"
        # it (Qwen2.5, Qwen3: no branch for the role), or "reject" it (raise_exception: vLLM's 400).
        self.developer_template = "render"

    def queue(self, *generations: Generation) -> None:
        self.script.extend(generations)

    @property
    def last_body(self) -> dict[str, Any]:
        return self.requests[-1]["body"]

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "vllm", "max_model_len": 4096}]})

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.healthy else 503)

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.tokenize_requests.append({"body": body, "started": time.monotonic()})
        await asyncio.sleep(self.tokenize_delay)
        if self.tokenize_gate is not None:
            await self.tokenize_gate.wait()
        tokens = list(self.tokenize_prompt)
        for message in body.get("messages") or []:
            if message.get("role") != "developer":
                continue
            if self.developer_template == "reject":
                return web.json_response({"error": {"message": "Conversation roles must alternate user/assistant",
                                                    "type": "BadRequestError", "param": None, "code": 400}},
                                         status=400)
            if self.developer_template == "render":  # a few ids standing for the rendered message
                tokens += [9000 + len(str(message.get("content")))] * 3
        return web.json_response({"count": len(tokens), "max_model_len": 4096, "tokens": tokens,
                                  "token_strs": None})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        record = {"path": request.path, "body": body, "headers": dict(request.headers),
                  "started": time.monotonic(), "closed_early": False, "sent": 0, "finished": False}
        self.requests.append(record)
        if self.script:
            gen = self.script.pop(0)
        elif self.responder is not None:
            gen = self.responder(body)
        else:
            gen = Generation(deltas=content("Hello from the fake vLLM."))
        if gen.status != 200:
            if gen.gate is not None and not body.get("stream"):
                await gen.gate.wait()
            return web.json_response(
                {"error": {"message": gen.error_message, "type": "BadRequestError", "param": None,
                           "code": gen.status}}, status=gen.status)
        self._body = body
        self._gen = gen
        if gen.raw_chunks is not None:
            return await self._raw_chunks(request, gen, record)
        if gen.raw_body is not None:
            return web.Response(body=gen.raw_body, status=gen.raw_status,
                                headers={"Content-Type": gen.raw_content_type, **gen.raw_headers})
        if gen.stall_headers:
            try:
                await asyncio.sleep(gen.stall_headers)
            except asyncio.CancelledError:
                record["closed_early"] = True
                self.closed_early.set()
                raise
        if not body.get("stream"):
            try:
                await asyncio.sleep(gen.stall_before)
                if gen.gate is not None:  # without streaming the gate holds the whole answer
                    await gen.gate.wait()
            except asyncio.CancelledError:  # the gateway dropped the request before the answer
                record["closed_early"] = True
                self.closed_early.set()
                raise
            record["finished"] = True
            return web.json_response(self._completion(gen))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk_id = f"chatcmpl-{uuid.uuid4().hex}"
        try:
            await asyncio.sleep(gen.stall_before)
            first = self._chunk(chunk_id, {"role": "assistant", "content": ""})
            if body.get("return_token_ids") and gen.inline_token_ids:
                first["prompt_token_ids"] = gen.prompt_token_ids
            await self._send(response, first)
            record["first_chunk_at"] = time.monotonic()
            for i, delta in enumerate(gen.deltas):
                if gen.stream_error_after == i:
                    await self._send(response, {"error": {"message": gen.error_message or "engine error",
                                                          "type": "InternalServerError", "param": None, "code": 500}})
                    await response.write(b"data: [DONE]\n\n")
                    return response
                if gen.drop_after == i:
                    request.transport.close()  # an abrupt end, as a crashed server gives
                    return response
                if gen.delay or i in gen.pauses:
                    await asyncio.sleep(gen.delay + gen.pauses.get(i, 0.0))
                if gen.hold_at == i and gen.hold is not None:
                    await gen.hold.wait()
                if gen.gate is not None and gen.gate_before == i:
                    await gen.gate.wait()
                await self._send(response, self._chunk(chunk_id, delta))
                record["sent"] = i + 1
            record["last_chunk_at"] = time.monotonic()
            if gen.drop_after is not None and gen.drop_after >= len(gen.deltas):
                request.transport.close()
                return response
            if gen.finish_reason is not None:
                await self._send(response, self._chunk(chunk_id, {"content": "", "_tokens": gen.finish_tokens},
                                                       gen.finish_reason))
            if body.get("stream_options", {}).get("include_usage"):
                await self._send(response, {"id": chunk_id, "object": "chat.completion.chunk",
                                            "created": int(time.time()), "model": self.model, "choices": [],
                                            "usage": gen.usage()})
            if gen.send_done:
                await response.write(b"data: [DONE]\n\n")
            record["finished"] = True
        except (ConnectionResetError, asyncio.CancelledError):
            record["closed_early"] = True
            self.closed_early.set()
            raise
        return response

    async def _raw_chunks(self, request: web.Request, gen: Generation, record: dict[str, Any]) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        with self._noting_early_close(record):
            for piece in gen.raw_chunks or []:
                await response.write(piece)
                record["sent"] += 1
                await asyncio.sleep(gen.delay)
            record["finished"] = True
        return response

    @contextlib.contextmanager
    def _noting_early_close(self, record: dict[str, Any]) -> Iterator[None]:
        """The gateway closed the request before its end (the connection reset, or the handler cancelled)."""
        try:
            yield
        except (ConnectionResetError, asyncio.CancelledError):
            record["closed_early"] = True
            self.closed_early.set()
            raise

    async def _send(self, response: web.StreamResponse, obj: dict[str, Any]) -> None:
        await response.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        await asyncio.sleep(0)  # let the socket flush, as one chunk per engine step does

    def _logprobs(self, tokens: list[tuple], text: Optional[str] = None) -> Optional[dict[str, Any]]:
        """vLLM's choice.logprobs; with return_tokens_as_token_ids each token is "token_id:<id>",
        its ``bytes`` still those of its text (the top alternatives' those of "token_id:<id>")."""
        if not self._body.get("logprobs"):
            return None
        as_ids = self._body.get("return_tokens_as_token_ids")
        entries = []
        for token_id, logprob, *named in tokens:
            decoded = named[0] if named else text if text is not None and len(tokens) == 1 else f"<{token_id}>"
            token = f"token_id:{token_id}" if as_ids else decoded
            entries.append({"token": token, "logprob": logprob, "bytes": list(decoded.encode()),
                            "top_logprobs": [{"token": token, "logprob": logprob, "bytes": list(token.encode())}]
                            [: self._body.get("top_logprobs") or 0]})
        return {"content": entries}

    def _chunk(self, chunk_id: str, delta: dict[str, Any], finish_reason: Optional[str] = None) -> dict[str, Any]:
        tokens = delta.get("_tokens", [])
        delta = {k: v for k, v in delta.items() if not k.startswith("_")}
        text = delta.get("content") or delta.get("reasoning") or delta.get("reasoning_content")
        choice: dict[str, Any] = {"index": 0, "delta": delta,
                                  "logprobs": self._logprobs(tokens, text) if tokens else None,
                                  "finish_reason": finish_reason}
        if self._body.get("return_token_ids") and self._gen.inline_token_ids and "role" not in delta:
            choice["token_ids"] = [t[0] for t in tokens]
        if finish_reason is not None:
            choice["stop_reason"] = None
        return {"id": chunk_id, "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.model, "choices": [choice]}

    def _completion(self, gen: Generation) -> dict[str, Any]:
        text = "".join(d.get("content", "") for d in gen.deltas)
        thought = "".join(d.get("reasoning", "") or d.get("reasoning_content", "") for d in gen.deltas)
        calls: dict[int, dict[str, Any]] = {}
        for delta in gen.deltas:
            for fragment in delta.get("tool_calls", []):
                call = calls.setdefault(fragment["index"], {"id": None, "type": "function",
                                                            "function": {"name": None, "arguments": ""}})
                call["id"] = call["id"] or fragment.get("id")
                fn = fragment.get("function", {})
                call["function"]["name"] = call["function"]["name"] or fn.get("name")
                call["function"]["arguments"] += fn.get("arguments", "")
        message = {"role": "assistant", "content": text or None, "refusal": None, "annotations": None,
                   "audio": None, "function_call": None, "reasoning": thought or None,
                   "tool_calls": [calls[i] for i in sorted(calls)]}
        tokens = gen.all_tokens()
        choice = {"index": 0, "message": message, "logprobs": self._logprobs(tokens) if tokens else None,
                  "finish_reason": gen.finish_reason, "stop_reason": None}
        completion = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                      "created": int(time.time()), "model": self.model, "choices": [choice],
                      "usage": gen.usage(), "prompt_logprobs": None, "kv_transfer_params": None}
        if self._body.get("return_token_ids") and gen.inline_token_ids:
            choice["token_ids"] = [t[0] for t in tokens]
            completion["prompt_token_ids"] = gen.prompt_token_ids
        return completion


def usage_answer(usage: bytes, stream: bool) -> Generation:
    """A short answer ("hi") whose usage is exactly ``usage`` (raw JSON, as absurd as it may be)."""
    if stream:
        return Generation(raw_body=(
            b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}\n\n'
            b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}\n\n'
            b'data: {"choices": [], "usage": ' + usage + b"}\n\ndata: [DONE]\n\n"))
    return Generation(raw_body=b'{"choices": [{"index": 0, "message": {"content": "hi"}, "finish_reason": "stop"}], '
                      b'"usage": ' + usage + b"}", raw_content_type="application/json")
