"""Token information for RL training: exact prompt ids, generated ids and their log-probabilities.

Generated ids come from vLLM's logprobs (asked for with ``return_tokens_as_token_ids``, so each
``logprobs.content[j].token`` is ``"token_id:<int>"``), optionally cross-checked against the
choice's inline ``token_ids``. When the client also wants readable logprobs (``include``), vLLM is
asked for readable tokens and the ids inline (``return_token_ids``) instead, and the ids come
from there, one per logprob. Prompt ids come, in NeMo Gym's order, from a complete bundle on
the message, from vLLM's inline ``prompt_token_ids``, or from ``/tokenize``. Anything partial or
disagreeing is an error: a silently wrong training sample is worse than a failed one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..schema import chat

TOKEN_ID_PREFIX = "token_id:"

# Fields of a chat request that decide the prompt: exactly these go to /tokenize (NeMo Gym's list).
PROMPT_FIELDS = ("model", "messages", "tools", "chat_template_kwargs", "mm_processor_kwargs")


class TokenInfoError(Exception):
    pass


@dataclass
class TokenInfo:
    prompt_token_ids: list[int]
    generation_token_ids: list[int]
    generation_log_probs: list[float]


@dataclass
class GenerationTokens:
    """Accumulates what the chunks of one generation say about its tokens."""

    logprob_ids: list[Optional[int]] = field(default_factory=list)  # None: a readable token, id inline
    logprobs: list[float] = field(default_factory=list)
    inline_ids: Optional[list[int]] = None  # choice.token_ids, when vLLM sent them
    inline_prompt_ids: Optional[list[int]] = None
    bundle: Optional[TokenInfo] = None  # a complete set already on the message

    def add_choice(self, choice: chat.ChunkChoice) -> None:
        logprobs = choice.logprobs
        if logprobs is not None and logprobs.content:
            ids, values = self.logprob_ids, self.logprobs
            for entry in logprobs.content:
                ids.append(token_id(entry))
                values.append(entry.logprob)
        if choice.token_ids is not None:
            if self.inline_ids is None:
                self.inline_ids = []
            self.inline_ids.extend(choice.token_ids)

    def assemble(self, tokenized_prompt: Optional[list[int]], completion_tokens: Optional[int]) -> TokenInfo:
        if self.bundle is not None:
            return self.bundle
        ids = self.logprob_ids
        if any(i is None for i in ids):  # readable logprobs: the ids are the inline ones
            if self.inline_ids is None:
                raise TokenInfoError(
                    "a logprobs token is text, not 'token_id:<int>', and no inline token_ids came: the upstream "
                    "ignored return_tokens_as_token_ids and return_token_ids (is it vLLM?)")
            if len(self.inline_ids) != len(ids):
                raise TokenInfoError(
                    f"vLLM sent {len(self.inline_ids)} token_ids but log-probabilities for {len(ids)} tokens")
            ids = self.inline_ids
        elif self.inline_ids is not None and self.inline_ids != ids:
            raise TokenInfoError(
                f"vLLM's token_ids ({len(self.inline_ids)} ids) disagree with the ids in its logprobs ({len(ids)} ids)"
            )
        if completion_tokens is not None and completion_tokens != len(ids):
            raise TokenInfoError(
                f"the upstream reported {completion_tokens} generated tokens but sent log-probabilities for "
                f"{len(ids)}: when streaming, vLLM 0.19 leaves out the tokens its tool or reasoning parser swallows "
                "(0.32 does not), and llama.cpp those it holds at the end; use stream: false, or on vLLM "
                "request_prompt_and_generation_token_ids: true, for exact token tracking there"
            )
        prompt = self.inline_prompt_ids if self.inline_prompt_ids is not None else tokenized_prompt
        if prompt is None:
            raise TokenInfoError("no prompt token ids: vLLM sent none and /tokenize gave none")
        return TokenInfo(list(prompt), list(ids), list(self.logprobs))


def token_id(entry: chat.TokenLogprob) -> Optional[int]:
    """vLLM: ``"token_id:<int>"`` in ``token`` (return_tokens_as_token_ids); llama.cpp: ``id``;
    None for vLLM's readable tokens (the ids then come inline)."""
    if entry.token.startswith(TOKEN_ID_PREFIX):
        return parse_token_id(entry.token)
    return entry.id


def parse_token_id(token: str) -> int:
    if not token.startswith(TOKEN_ID_PREFIX):
        raise TokenInfoError(
            f"a logprobs token is {token[:40]!r}, not 'token_id:<int>': the upstream ignored "
            "return_tokens_as_token_ids (is it vLLM?)"
        )
    try:
        return int(token[len(TOKEN_ID_PREFIX):])
    except ValueError:
        raise TokenInfoError(f"a logprobs token is {token[:40]!r}, not 'token_id:<int>'") from None


def tokenize_body(chat_body: dict[str, Any]) -> dict[str, Any]:
    """The /tokenize request for a generation request: its prompt-affecting fields only."""
    body = {key: chat_body[key] for key in PROMPT_FIELDS if chat_body.get(key) is not None}
    if chat_body.get("continue_final_message"):
        # The prompt ends inside the assistant turn being continued, not at a new one.
        body["continue_final_message"] = True
        body["add_generation_prompt"] = False
    else:
        body["add_generation_prompt"] = True
    return body


def bundle_from_message(message: chat.Message) -> Optional[TokenInfo]:
    """NeMo Gym's first source: a complete set of token keys already on the completion message."""
    values = (message.prompt_token_ids, message.generation_token_ids, message.generation_log_probs)
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise TokenInfoError("the completion message carries only part of the token information")
    prompt, ids, logprobs = values
    assert prompt is not None and ids is not None and logprobs is not None
    if len(ids) != len(logprobs):
        raise TokenInfoError("generation_token_ids and generation_log_probs on the message differ in length")
    return TokenInfo(list(prompt), list(ids), list(logprobs))
