"""What a response store keeps, and the interface every backend (SQLite, Redis) implements.

A stored response is one record plus its events:

- the record: who stored it (``owner``: a digest of the client's API key, ``""`` without auth), its
  status, the Response JSON (the snapshot taken at creation while it runs, the final one once it
  ended), the input items this request added (``input``), the ids of the responses it continues
  (``chain``: ``previous_response_id`` and that one's own chain, oldest first), timestamps, and a
  lease that the gateway process running it renews;
- its events: the SSE frames sent for it, in batches ``(first_seq, frames)``, one batch per upstream
  read at most (``frames`` is the exact bytes written to the client; frames are dense in
  ``sequence_number``, so a batch's n-th frame is ``first_seq + n``).

Writes that end a response (the final record and the last batch) are one atomic step, so a reader
sees either the running response or the finished one, never half of it. A record left running by a
process that died is found by its expired lease and ended as failed (``abandon``).
"""

from __future__ import annotations

import abc
import re
from dataclasses import dataclass, field
from typing import Optional

TERMINAL_STATUSES = frozenset({"completed", "incomplete", "failed", "cancelled"})

_SEQUENCE_KEY = b'"sequence_number":'
_NUMBER = re.compile(rb"\d+")


def sequence_numbers(frames: bytes) -> tuple[int, int]:
    """The sequence numbers of a batch's first and last frames, read from the frames themselves
    (no scan of the whole batch). Every stored frame is an event with its ``sequence_number``
    (SSE comment keepalives are not stored), and JSON cannot hold the key's bytes inside a string
    (its quotes would be escaped), so the first and last occurrences are those frames' own."""
    first_at, last_at = frames.find(_SEQUENCE_KEY), frames.rfind(_SEQUENCE_KEY)
    first = _NUMBER.match(frames, first_at + len(_SEQUENCE_KEY)) if first_at >= 0 else None
    last = _NUMBER.match(frames, last_at + len(_SEQUENCE_KEY)) if last_at >= 0 else None
    if first is None or last is None:
        raise ValueError("a batch of stored frames holds no numbered event")
    return int(first.group()), int(last.group())


class StoreError(Exception):
    """The store could not do what was asked (disk full, Redis down ...). Never a client's fault."""


@dataclass
class Record:
    id: str
    owner: str
    status: str
    response: bytes  # the Response JSON
    input: bytes  # JSON list of the input items this request added (with ids)
    chain: list[str] = field(default_factory=list)  # earlier responses this one continues, oldest first
    created_at: float = 0.0
    expires_at: float = 0.0
    background: bool = False
    lease_until: Optional[float] = None  # running only: past it, the run's process is gone
    cancel_requested: bool = False
    last_seq: int = -1  # sequence number of the last stored event

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES


@dataclass
class Conversation:
    id: str
    owner: str
    metadata: bytes  # JSON object
    created_at: float
    expires_at: float


@dataclass
class History:
    """One earlier response of a chain, as the next request's input needs it."""

    id: str
    status: str
    input: bytes
    response: bytes


class Store(abc.ABC):
    """Async, safe to call from the event loop: backends keep blocking IO off it."""

    name: str = "store"

    async def start(self) -> None:
        """Open files or connections."""

    async def close(self) -> None:
        """Flush and close."""

    # --- writes ----------------------------------------------------------------------------------

    @abc.abstractmethod
    async def create(self, record: Record) -> None:
        """A new running (or queued) response."""

    @abc.abstractmethod
    async def append(self, response_id: str, first_seq: int, frames: bytes) -> None:
        """One batch of events of a running response (a queued one is then in progress)."""

    @abc.abstractmethod
    async def finish(self, response_id: str, status: str, response: bytes, first_seq: int, frames: bytes) -> None:
        """The last batch (may be empty) and the final Response, in one atomic step."""

    async def create_finished(self, record: Record, status: str, response: bytes, first_seq: int,
                              frames: bytes) -> None:
        """A response that ended before anything of it was stored (a fast stream, an answer that
        was not streamed): ``create`` then ``finish``. A backend may do both in one write."""
        await self.create(record)
        await self.finish(record.id, status, response, first_seq, frames)

    @abc.abstractmethod
    async def renew(self, response_ids: list[str], lease_until: float) -> None:
        """Extend the lease of running responses this process owns."""

    @abc.abstractmethod
    async def request_cancel(self, owner: str, response_id: str) -> None:
        """Mark a running response for cancellation (its process polls ``cancel_requested``)."""

    @abc.abstractmethod
    async def cancel_requested(self, response_ids: list[str]) -> list[str]:
        """Which of these running responses were asked to stop."""

    @abc.abstractmethod
    async def abandon(self, response_id: str, now: float, response: bytes, first_seq: int, frames: bytes) -> bool:
        """End a running response whose lease expired before ``now`` as failed (``response``,
        ``frames`` say so). False when it is not abandoned (it ended, or its lease was renewed)."""

    @abc.abstractmethod
    async def delete(self, owner: str, response_id: str) -> bool:
        """False when there is no such response for this owner."""

    # --- reads -----------------------------------------------------------------------------------

    @abc.abstractmethod
    async def get(self, owner: str, response_id: str) -> Optional[Record]:
        """The record, or None (absent, expired, or another owner's)."""

    @abc.abstractmethod
    async def history(self, owner: str, response_ids: list[str]) -> list[Optional[History]]:
        """The input and Response of each id, in the order asked (None for a missing one)."""

    @abc.abstractmethod
    async def events_after(self, response_id: str, after_seq: int) -> list[tuple[int, bytes]]:
        """Stored batches holding events with ``sequence_number > after_seq``, in order."""

    # --- conversations (the Conversations API): items in order, under an owner -------------------

    @abc.abstractmethod
    async def create_conversation(self, conversation: "Conversation", items: list[tuple[str, bytes]]) -> None:
        """A new conversation with its first items (``(item id, item JSON)``)."""

    @abc.abstractmethod
    async def get_conversation(self, owner: str, conversation_id: str) -> Optional["Conversation"]:
        """The conversation, or None (absent, expired, or another owner's)."""

    @abc.abstractmethod
    async def update_conversation(self, owner: str, conversation_id: str, metadata: bytes) -> bool:
        """Replace its metadata; False when there is no such conversation for this owner."""

    @abc.abstractmethod
    async def delete_conversation(self, owner: str, conversation_id: str) -> bool:
        """The conversation and its items; False when there is no such conversation."""

    @abc.abstractmethod
    async def add_items(self, owner: str, conversation_id: str, items: list[tuple[str, bytes]]) -> bool:
        """Append items, atomically (two responses of one conversation may end at once)."""

    @abc.abstractmethod
    async def conversation_items(self, owner: str, conversation_id: str) -> list[bytes]:
        """Every item's JSON, oldest first."""

    @abc.abstractmethod
    async def delete_item(self, owner: str, conversation_id: str, item_id: str) -> bool:
        """Remove one item; False when the conversation or the item does not exist."""

    # --- housekeeping ----------------------------------------------------------------------------

    async def sweep(self, now: float) -> None:
        """Drop what expired and keep the total size under the bound."""
