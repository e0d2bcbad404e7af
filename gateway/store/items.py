"""Input items as the store keeps them (pure): every item gets an id and the typed form OpenAI's
``input_items`` lists, and a chain of stored responses becomes the input prefix of the next one."""

from __future__ import annotations

from typing import Any, Optional, Union

import orjson

from ..translate.stream import random_id
from .base import History

_ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco", "reasoning": "rs"}


new_id = random_id  # the same ids as the stream's items


def normalize_input(value: Union[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The request's own input as items with ids (a string is one user message). Items keep every
    key the client sent, so they go back to the translator exactly as they came."""
    if isinstance(value, str):
        return [_message("user", [{"type": "input_text", "text": value}])]
    items = []
    for raw in value:
        item = dict(raw) if isinstance(raw, dict) else raw
        if isinstance(item, dict):
            if "type" not in item and "role" in item:
                item["type"] = "message"
            kind = item.get("type")
            if "id" not in item:  # invalid items are refused later, by the translator, naming the field
                item["id"] = new_id(_ID_PREFIXES.get(kind, "item") if isinstance(kind, str) else "item")
            if item.get("type") == "message" and isinstance(item.get("content"), str):
                part = "output_text" if item.get("role") == "assistant" else "input_text"
                item["content"] = [{"type": part, "text": item["content"]}]
        items.append(item)
    return items


def _message(role: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": new_id("msg"), "type": "message", "role": role, "content": content, "status": "completed"}


def history_items(histories: list[History]) -> list[dict[str, Any]]:
    """The earlier input and output of a chain, oldest first: the prefix of the next input.
    ``instructions`` are not carried over (OpenAI does not either)."""
    items: list[dict[str, Any]] = []
    for history in histories:
        items += orjson.loads(history.input)
        items += orjson.loads(history.response).get("output") or []
    return items


def page(items: list[dict[str, Any]], *, after: Optional[str], before: Optional[str], limit: int,
         order: str) -> dict[str, Any]:
    """OpenAI's cursor list: ``order`` first, then the items strictly after ``after`` and strictly
    before ``before`` (by id), at most ``limit`` of them."""
    ordered = items if order == "asc" else items[::-1]
    ids = [item.get("id") for item in ordered]
    for name, cursor in (("after", after), ("before", before)):
        if cursor is not None and cursor not in ids:
            raise KeyError(name)
    start = ids.index(after) + 1 if after is not None else 0
    stop = ids.index(before) if before is not None else len(ordered)
    window = ordered[start:stop]
    data = window[:limit]
    return {"object": "list", "data": data, "first_id": data[0].get("id") if data else None,
            "last_id": data[-1].get("id") if data else None, "has_more": len(window) > limit}
