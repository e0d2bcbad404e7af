"""Which generated tokens belong to which ``output_text``: the logprobs a client asked for with
``include: ["message.output_text.logprobs"]``.

vLLM reports logprobs for every generated token: reasoning, ``<think>`` tags (plain text tokens for
many models: ``<th`` ``ink`` ``>``), tool-call markup and the end-of-turn token included, and in
chunks that need not line up with the text the gateway finally emits (the ``<think>`` splitter and
vLLM's own parsers hold text back). So tokens are attributed by *position in the generated text*,
not by chunk: the tokens' texts, concatenated, are the raw generation; each piece of message text
the state machine emits is found there, after what was already attributed, and the tokens that
overlap it are its logprobs. Tokens skipped over (tags, reasoning, trimmed whitespace, markup) are
dropped; a token that straddles a boundary (``>The``) belongs to the text it helps write.

This depends only on the text emitted, never on how the upstream chunked it, so a stream and the
same completion fed whole give the same logprobs.

A token holding part of a multi-byte character reaches the gateway as U+FFFD (vLLM decodes each
token alone): a run of those matches any run of non-ASCII characters.
"""

from __future__ import annotations

import bisect
import re
from typing import Any

from ..schema import chat
from .tokens import TOKEN_ID_PREFIX

_REPLACEMENT = "\ufffd"


def token_text(entry: chat.TokenLogprob) -> str:
    """A logprob entry's text. With ``return_tokens_as_token_ids`` the token is ``token_id:N`` but
    vLLM's ``bytes`` are still those of the decoded token."""
    if entry.token.startswith(TOKEN_ID_PREFIX) and entry.bytes is not None:
        return bytes(entry.bytes).decode("utf-8", "replace")
    return entry.token


def client_logprob(entry: chat.TokenLogprob, top: int) -> dict[str, Any]:
    """vLLM's logprob entry in the Responses shape, with readable tokens and ``bytes`` always set."""
    text = token_text(entry)
    return {
        "token": text,
        "logprob": entry.logprob,
        "bytes": entry.bytes if entry.bytes is not None else list(text.encode("utf-8")),
        "top_logprobs": [
            {"token": alt.token, "logprob": alt.logprob,
             "bytes": alt.bytes if alt.bytes is not None else list(alt.token.encode("utf-8"))}
            for alt in (entry.top_logprobs or [])[:top]
        ],
    }


class LogprobAligner:
    """Tokens in generation order, and a cursor into their concatenated text up to which every
    token has been attributed (to a message) or skipped."""

    __slots__ = ("_top", "_text", "_starts", "_entries", "_cursor", "_given")

    def __init__(self, top: int) -> None:
        self._top = top
        self._text = ""  # the texts of the tokens not yet done with, concatenated
        self._starts: list[int] = []  # each token's offset in ``_text``
        self._entries: list[chat.TokenLogprob] = []
        self._cursor = 0  # offset in ``_text``: everything before it is attributed or skipped
        self._given = -1  # index of the last token handed out (a straddling token goes out once)

    def add(self, entries: list[chat.TokenLogprob]) -> None:
        for entry in entries:
            self._starts.append(len(self._text))
            self._entries.append(entry)
            self._text += token_text(entry)

    def take(self, text: str) -> list[dict[str, Any]]:
        """Message text just emitted: the logprobs of the tokens that wrote it."""
        span = self._find(text)
        if span is None:
            return []
        start, end = span
        out = []
        for i in range(len(self._entries)):
            token_start = self._starts[i]
            token_end = self._starts[i + 1] if i + 1 < len(self._starts) else len(self._text)
            if token_start >= end:
                break
            if token_end > start and i > self._given:
                out.append(client_logprob(self._entries[i], self._top))
                self._given = i
        self._advance(end)
        return out

    def skip(self, text: str) -> None:
        """Text emitted as something other than message text (reasoning, call arguments)."""
        span = self._find(text)
        if span is not None:
            self._advance(span[1])

    def _find(self, text: str) -> tuple[int, int] | None:
        if not text:
            return None
        at = self._text.find(text, self._cursor)
        if at >= 0:
            return at, at + len(text)
        if _REPLACEMENT not in self._text:
            return None
        pattern = "".join(re.escape(c) if c.isascii() else f"(?:{re.escape(c)}|{_REPLACEMENT}+)" for c in text)
        match = re.compile(pattern).search(self._text, self._cursor)
        return (match.start(), match.end()) if match else None

    def _advance(self, end: int) -> None:
        """Move the cursor, and forget the tokens wholly before it (so the text kept stays a short
        window however long the generation)."""
        first = bisect.bisect_right(self._starts, end) - 1
        if first > 0:
            cut = self._starts[first]
            del self._starts[:first], self._entries[:first]
            self._starts = [start - cut for start in self._starts]
            self._text = self._text[cut:]
            end -= cut
            self._given -= first
        self._cursor = end
