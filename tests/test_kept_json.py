"""JSON bytes that live as long as a stream (gateway/jsonbytes.py) take their own size in memory,
not orjson's whole write buffer (4 KB at the least, about ten times the JSON for larger ones)."""

from __future__ import annotations

import tracemalloc
from typing import Any, Callable

from gateway import jsonbytes
from gateway.translate.request import ConversionSettings, decode_request, plan_chat_request


def held_bytes(make: Callable[[], Any], n: int = 200) -> float:
    """Traced memory per object of ``n`` objects made by ``make`` and kept."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [make() for _ in range(n)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    size = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(kept) == n
    return size / n


def test_kept_json_takes_its_own_size() -> None:
    for text in ("x" * 100, "x" * 3000, "x" * 100_000):
        doc = {"a": text}
        length = len(jsonbytes.dumps(doc))
        assert held_bytes(lambda: jsonbytes.dumps(doc)) < length + 200, length


def test_a_plans_upstream_payload_takes_its_own_size() -> None:
    """The payload sent to vLLM is kept for the whole stream: with 1,000 streams open, orjson's
    buffer would cost 4 MB more than the payloads themselves."""
    req = decode_request(b'{"model": "m", "input": "Say hello.", "stream": true}')
    settings = ConversionSettings(model="m")

    def payload() -> bytes:
        return plan_chat_request(req, settings, response_id="resp_1", created_at=0).payload  # the plan goes

    length = len(payload())
    held = held_bytes(payload)
    assert held < length + 200, f"a {length}-byte payload held {held:.0f} bytes"
