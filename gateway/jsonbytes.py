"""JSON bytes to keep: ``orjson.dumps`` copied to their own size.

orjson (3.13) returns its whole write buffer as the ``bytes``: 4 KB for the smallest document and
about ten times the JSON for larger ones (measured with tracemalloc: 108 bytes of JSON hold 4 KB,
3 KB hold 32 KB, 100 KB hold 1 MB). That is nothing for a body sent and dropped, but a plan's
upstream payload, a stored response's input and the inspector's entries live as long as their
stream or longer: kept, they are copied to their size first (a memcpy of the JSON itself).
"""

from __future__ import annotations

from typing import Any

import orjson


def dumps(obj: Any, **options: Any) -> bytes:
    return bytes(memoryview(orjson.dumps(obj, **options)))
