"""Choosing a vLLM server for each request (no IO here; the clock is injected).

- A request with a session key (header, ``prompt_cache_key`` or NeMo Gym's session cookie) goes to
  the server that rendezvous hashing gives that key among the available ones, so a conversation
  stays where its prefix is cached; when a server leaves, only its sessions move.
- Otherwise the available server with the fewest requests in flight gets it.
- Available means: not ejected and, when active checks run, last seen healthy. A server is ejected
  after ``eject_after`` failures in a row, for ``eject_s`` (doubling while it keeps failing, up to
  8x); it gets traffic again when that time is over or an active check finds it healthy.
- When no server is available, every server is tried anyway: refusing outright would turn a
  flapping health check into an outage.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional


@dataclass
class Backend:
    url: str  # the OpenAI base URL, e.g. http://gpu-1:8000/v1
    in_flight: int = 0
    healthy: bool = True  # as the last active check saw it
    failures: int = 0  # consecutive
    ejected_until: float = 0.0
    ejections: int = 0  # consecutive ejections, for the backoff
    last_error: Optional[str] = None
    _key: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        self._key = self.url.encode()


class BackendPool:
    def __init__(self, urls: Iterable[str], *, eject_after: int = 3, eject_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.backends = [Backend(url) for url in urls]
        if not self.backends:
            raise ValueError("at least one base_url is needed")
        self._eject_after = eject_after
        self._eject_s = eject_s
        self._clock = clock
        self._turn = 0

    def available(self, exclude: frozenset[str] = frozenset()) -> list[Backend]:
        now = self._clock()
        usable = [b for b in self.backends if b.url not in exclude and b.healthy and b.ejected_until <= now]
        return usable or [b for b in self.backends if b.url not in exclude]

    def choose(self, session_key: Optional[str] = None, exclude: frozenset[str] = frozenset()) -> Optional[Backend]:
        candidates = self.available(exclude)
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        if session_key:
            key = session_key.encode("utf-8", "surrogatepass")  # header and cookie bytes may be anything
            return max(candidates, key=lambda b: hashlib.blake2b(b._key + b"\0" + key, digest_size=8).digest())
        # fewest in flight; ties rotate so idle servers share the load
        self._turn += 1
        fewest = min(b.in_flight for b in candidates)
        tied = [b for b in candidates if b.in_flight == fewest]
        return tied[self._turn % len(tied)]

    def key_for(self, backend: Backend) -> str:
        """A new session key that routes to ``backend`` (as things stand): a client without a
        session gets one for the server least in flight, and keeps it through its cookie."""
        candidates = self.available()
        for _ in range(256):
            key = uuid.uuid4().hex
            if backend not in candidates or self.choose(key) is backend:
                return key
        return key  # unreachable in practice: each try hits with probability 1/len(candidates)

    def success(self, backend: Backend) -> None:
        backend.failures = 0
        backend.ejections = 0
        backend.last_error = None

    def failure(self, backend: Backend, error: str) -> None:
        backend.failures += 1
        backend.last_error = error
        if backend.failures >= self._eject_after:
            backend.ejected_until = self._clock() + self._eject_s * min(2 ** backend.ejections, 8)
            backend.ejections += 1
            backend.failures = 0

    def health(self, backend: Backend, ok: bool, error: Optional[str] = None) -> None:
        """An active check's verdict; a healthy server comes back from ejection at once."""
        backend.healthy = ok
        if ok:
            backend.ejected_until = 0.0
        else:
            backend.last_error = error

    def status(self) -> list[dict[str, object]]:
        now = self._clock()
        return [
            {"url": b.url, "ok": b.healthy and b.ejected_until <= now, "healthy": b.healthy,
             "ejected": b.ejected_until > now, "in_flight": b.in_flight,
             **({"error": b.last_error} if b.last_error else {})}
            for b in self.backends
        ]
