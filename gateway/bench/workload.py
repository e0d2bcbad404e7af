"""What the fake upstream "generates": vLLM-shaped ``chat.completion.chunk`` streams, pre-encoded.

A workload is (mix, tokens per response, tokens per chunk). Tokens are grouped into chunks the way
vLLM groups one engine step's tokens: a chunk carries ``tokens_per_chunk`` consecutive tokens of the
same kind (content, or the arguments of one tool call); a tool call's first fragment (id, type,
name) is a chunk of its own, as vLLM's hermes parser sends it.

Mixes:

* ``text``      - answer text only;
* ``reasoning`` - ``<think>`` + reasoning + ``</think>`` in ``content`` (vLLM without a reasoning
  parser, the gateway's default), then the answer; half and half;
* ``tools``     - two tool calls (hermes style: name fragment, then argument pieces);
* ``mixed``     - a quarter reasoning, a quarter text, half tool calls.

Every stream is: the role chunk, the deltas, the finish chunk, the usage chunk (when the request
asked for ``stream_options.include_usage``), ``data: [DONE]``, exactly as vLLM writes them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Optional

import orjson

MIXES = ("text", "reasoning", "tools", "mixed")
MODEL = "bench"

_WORDS = (
    "the quick brown fox jumps over a lazy dog while many small tokens stream through the gateway "
    "to clients that read every event as soon as it arrives"
).split()

TOOLS = [  # declared in gateway requests of the tool mixes (the gateway echoes them in the Response)
    {"type": "function", "name": "search", "description": "Search the web.",
     "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}},
    {"type": "function", "name": "fetch", "description": "Fetch a page.",
     "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}},
]


@dataclass(frozen=True)
class Workload:
    mix: str = "text"
    tokens: int = 256
    tokens_per_chunk: int = 1

    def __post_init__(self) -> None:
        if self.mix not in MIXES:
            raise ValueError(f"unknown mix {self.mix!r}; one of {', '.join(MIXES)}")
        if self.tokens < (1 if self.mix == "text" else 16):
            raise ValueError(f"--tokens must be >= {1 if self.mix == 'text' else 16} for mix {self.mix}")
        if self.tokens_per_chunk < 1:
            raise ValueError("--tokens-per-chunk must be >= 1")

    # --- naming in URLs: the upstream serves every workload, chosen by the path prefix ----------

    @property
    def path(self) -> str:
        return self.path_for("w")

    def path_for(self, scenario: str, *params: object) -> str:
        """The upstream path prefix (before ``/v1``) for this workload in one of its scenarios."""
        return "/".join([f"/{scenario}/{self.mix}/{self.tokens}/{self.tokens_per_chunk}", *map(str, params)])

    def describe(self) -> str:
        return f"mix={self.mix}, {self.tokens} tokens/response, {self.tokens_per_chunk} token(s)/chunk"

    # --- the generation -------------------------------------------------------------------------

    def pieces(self) -> list[tuple]:
        """The tokens in order: ("c", text) content tokens, ("n", call, id, name) the name fragment
        of a tool call, ("a", call, text) argument tokens."""
        n = self.tokens
        if self.mix == "text":
            return _text(n)
        if self.mix == "reasoning":
            return _reasoning(n // 2) + _text(n - n // 2)
        if self.mix == "tools":
            return _calls(n, 2)
        quarter = n // 4
        return _reasoning(quarter) + _text(quarter) + _calls(n - 2 * quarter, 2)

    def deltas(self) -> list[dict[str, Any]]:
        """The ``delta`` objects of the chunks between the role chunk and the finish chunk."""
        out: list[dict[str, Any]] = []
        group: list[tuple] = []

        def flush() -> None:
            if not group:
                return
            if group[0][0] == "c":
                out.append({"content": "".join(p[1] for p in group)})
            else:
                call = group[0][1]
                out.append({"tool_calls": [{"index": call, "function": {"arguments": "".join(p[2] for p in group)}}]})
            group.clear()

        for piece in self.pieces():
            if piece[0] == "n":
                flush()
                _, call, call_id, name = piece
                out.append({"tool_calls": [{"id": call_id, "type": "function", "index": call,
                                            "function": {"name": name, "arguments": ""}}]})
                continue
            same = group and group[0][0] == piece[0] and (piece[0] == "c" or group[0][1] == piece[1])
            if not same or len(group) >= self.tokens_per_chunk:
                flush()
            group.append(piece)
        flush()
        return out

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.mix in ("tools", "mixed") else "stop"

    def payloads(self, include_usage: bool = True) -> list[bytes]:
        """Each ``data:`` payload of the stream (JSON), ``[DONE]`` last."""
        chunk_id = "chatcmpl-bench0123456789abcdef0123456789abcdef"
        created = int(time.time())

        def chunk(delta: dict[str, Any], finish: Optional[str] = None) -> bytes:
            choice: dict[str, Any] = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            if finish is not None:
                choice["stop_reason"] = None
            return orjson.dumps({"id": chunk_id, "object": "chat.completion.chunk", "created": created,
                                 "model": MODEL, "choices": [choice]})

        out = [chunk({"role": "assistant", "content": ""})]
        out += [chunk(delta) for delta in self.deltas()]
        out.append(chunk({"content": ""}, self.finish_reason))
        if include_usage:
            out.append(orjson.dumps({
                "id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": MODEL,
                "choices": [], "usage": {"prompt_tokens": 12, "total_tokens": 12 + self.tokens,
                                         "completion_tokens": self.tokens, "prompt_tokens_details": None}}))
        out.append(b"[DONE]")
        return out

    def sse_frames(self, include_usage: bool = True) -> list[bytes]:
        """``data: <payload>\\n\\n`` per chunk: the SSE body, one frame per chunk."""
        return [b"data: " + p + b"\n\n" for p in self.payloads(include_usage)]

    def completion(self) -> bytes:
        """The same generation as one non-streamed ``chat.completion`` (for ``stream: false``)."""
        text, calls = [], {}
        for piece in self.pieces():
            if piece[0] == "c":
                text.append(piece[1])
            elif piece[0] == "n":
                calls[piece[1]] = {"id": piece[2], "type": "function", "function": {"name": piece[3], "arguments": ""}}
            else:
                calls[piece[1]]["function"]["arguments"] += piece[2]
        message = {"role": "assistant", "content": "".join(text) or None, "reasoning": None,
                   "tool_calls": [calls[i] for i in sorted(calls)]}
        return orjson.dumps({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()), "model": MODEL,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": self.finish_reason}],
            "usage": {"prompt_tokens": 12, "total_tokens": 12 + self.tokens, "completion_tokens": self.tokens}})

    # --- what clients send ----------------------------------------------------------------------

    def chat_request(self) -> bytes:
        """A Chat Completions request, as the gateway would send it (for the direct runs)."""
        body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "Write something."}],
                                "stream": True, "stream_options": {"include_usage": True}}
        if self.mix in ("tools", "mixed"):
            body["tools"] = [{"type": "function", "function": {k: t[k] for k in ("name", "description", "parameters")}}
                             for t in TOOLS]
        return orjson.dumps(body)

    def responses_request(self) -> bytes:
        body: dict[str, Any] = {"model": MODEL, "input": "Write something.", "stream": True}
        if self.mix in ("tools", "mixed"):
            body["tools"] = TOOLS
        return orjson.dumps(body)


def parse_path(prefix: str) -> tuple[str, Workload, list[str]]:
    """``/w/text/256/1`` -> ("w", Workload, []); ``/trickle/text/40/1/200`` -> ("trickle", ..., ["200"]).

    The first segment names the upstream's scenario; the next three the workload; the rest are the
    scenario's own parameters."""
    parts = [p for p in prefix.split("/") if p]
    if not parts:
        return "w", Workload(), []
    if len(parts) < 4:
        raise ValueError(f"bad workload path {prefix!r}")
    return parts[0], Workload(parts[1], int(parts[2]), int(parts[3])), parts[4:]


# --- token builders -------------------------------------------------------------------------------


def _words(n: int, start: int = 0) -> list[str]:
    return [" " + _WORDS[(start + i) % len(_WORDS)] for i in range(n)]


def _text(n: int) -> list[tuple]:
    return [("c", w) for w in _words(n)]


def _reasoning(n: int) -> list[tuple]:
    """``<think>`` + n-3 reasoning tokens + ``</think>`` + ``\\n\\n``: n tokens in ``content``."""
    return [("c", "<think>")] + [("c", w) for w in _words(max(n - 3, 1), 7)] + [("c", "</think>"), ("c", "\n\n")]


def _calls(n: int, count: int) -> list[tuple]:
    """``count`` tool calls sharing n tokens: a name fragment, then ``{"query": "...words..."}``."""
    out: list[tuple] = []
    for call in range(count):
        budget = n // count if call < count - 1 else n - (n // count) * (count - 1)
        words = max(budget - 5, 1)
        name = TOOLS[call % len(TOOLS)]["name"]
        out.append(("n", call, f"chatcmpl-tool-bench{call:04d}", name))
        args = ['{"', "query", '": "'] + [w.strip() + " " for w in _words(words, 3 * call)] + ['"}']
        out += [("a", call, a) for a in args]
    return out
