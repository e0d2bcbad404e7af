"""The Responses stream contract (../shared/DESIGN.md), written once as a validator and run on every
stream any test produces. Works on decoded JSON events (dicts), exactly what a client sees.
"""

from __future__ import annotations

from typing import Any, Optional

TERMINAL = {"response.completed": "completed", "response.incomplete": "incomplete", "response.failed": "failed"}


class ContractViolation(AssertionError):
    pass


def check(condition: bool, message: str, event: Optional[dict] = None) -> None:
    if not condition:
        raise ContractViolation(message + (f"\n  at event: {event}" if event is not None else ""))


class StreamChecker:
    """Feed events in order; ``final`` is the terminal Response once the stream ended."""

    def __init__(self) -> None:
        self.count = 0
        self.response_id: Optional[str] = None
        self.open: Optional[dict] = None  # {"index", "item", "text": [...], "part_open": bool, ...}
        self.done_items: list[dict] = []
        self.added_ids: set[str] = set()
        self.final: Optional[dict] = None
        self.previous_type: Optional[str] = None

    def feed(self, event: dict) -> None:
        kind = event.get("type")
        check(self.final is None, "event after the terminal event", event)
        check(event.get("sequence_number") == self.count, f"sequence_number should be {self.count}", event)
        if self.count == 0:
            check(kind == "response.created", "the first event must be response.created", event)
        elif self.count == 1:
            check(kind == "response.in_progress", "the second event must be response.in_progress", event)
        self.count += 1
        handler = getattr(self, "_on_" + kind.replace(".", "_"), None) if isinstance(kind, str) else None
        check(handler is not None, f"unknown event type {kind!r}", event)
        handler(event)
        self.previous_type = kind

    # lifecycle
    def _on_response_created(self, event: dict) -> None:
        response = event["response"]
        check(response.get("status") in ("in_progress", "queued"), "created response must be in progress", event)
        check(response.get("output") == [], "created response has no output yet", event)
        check(isinstance(response.get("id"), str) and response["id"], "response id missing", event)
        self.response_id = response["id"]

    def _on_response_in_progress(self, event: dict) -> None:
        check(event["response"]["id"] == self.response_id, "response id changed", event)

    def _terminal(self, event: dict) -> None:
        response = event["response"]
        status = TERMINAL[event["type"]]
        check(self.open is None, f"item {self.open and self.open['item']['id']} still open at the end", event)
        check(response["id"] == self.response_id, "response id changed", event)
        check(response["status"] == status, f"terminal status should be {status}", event)
        output = response["output"]
        check(len(output) == len(self.done_items), "final output differs in length from the streamed items", event)
        for final_item, streamed in zip(output, self.done_items):
            check(final_item == streamed, f"final output item differs from its output_item.done: {final_item} != {streamed}")
        if status != "failed":
            usage = response.get("usage")
            check(isinstance(usage, dict), "usage missing", event)
            for key in ("input_tokens", "output_tokens", "total_tokens"):
                check(isinstance(usage.get(key), int), f"usage.{key} missing", event)
            check(isinstance(usage.get("input_tokens_details", {}).get("cached_tokens"), int), "cached_tokens missing")
            check(isinstance(usage.get("output_tokens_details", {}).get("reasoning_tokens"), int),
                  "reasoning_tokens missing")
        if status == "incomplete":
            check(bool((response.get("incomplete_details") or {}).get("reason")), "incomplete without reason", event)
        if status == "failed":
            check(self.previous_type == "error", "response.failed must follow an error event", event)
            check(bool((response.get("error") or {}).get("message")), "failed response without error", event)
        self.final = response

    _on_response_completed = _terminal
    _on_response_incomplete = _terminal
    _on_response_failed = _terminal

    def _on_error(self, event: dict) -> None:
        check(isinstance(event.get("message"), str) and event["message"], "error event without message", event)
        check("code" in event and "param" in event, "error event needs code and param", event)

    # items
    def _on_response_output_item_added(self, event: dict) -> None:
        check(self.open is None, "an item was added while another is open", event)
        item = event["item"]
        check(event["output_index"] == len(self.done_items), f"output_index should be {len(self.done_items)}", event)
        check(item["id"] not in self.added_ids, "item id reused", event)
        self.added_ids.add(item["id"])
        check(item.get("status") == "in_progress", "added item must be in_progress", event)
        prefix = {"message": "msg_", "reasoning": "rs_", "function_call": "fc_"}.get(item["type"])
        check(prefix is not None, f"unexpected item type {item['type']}", event)
        check(item["id"].startswith(prefix), f"{item['type']} id should start with {prefix}", event)
        if item["type"] == "message":
            check(item["content"] == [] and item["role"] == "assistant", "added message must be empty", event)
        elif item["type"] == "function_call":
            check(item["arguments"] == "" and item["name"] and item["call_id"], "added call needs name, call_id", event)
        else:
            check(item["summary"] == [], "added reasoning must have an empty summary", event)
        self.open = {"index": event["output_index"], "item": item, "text": [], "part": None, "part_done": False}

    def _expect_open(self, event: dict, item_type: str) -> dict:
        check(self.open is not None, "event for no open item", event)
        open_ = self.open
        check(open_["item"]["type"] == item_type, f"event for a {open_['item']['type']} item", event)
        check(event["item_id"] == open_["item"]["id"], "item_id is not the open item's id", event)
        check(event["output_index"] == open_["index"], "output_index is not the open item's", event)
        return open_

    def _on_response_content_part_added(self, event: dict) -> None:
        check(self.open is not None, "content part for no open item", event)
        item_type = self.open["item"]["type"]
        open_ = self._expect_open(event, item_type)
        check(open_["part"] is None, "a second content part", event)
        check(event["content_index"] == 0, "content_index should be 0", event)
        part = event["part"]
        if item_type == "message":
            check(part == {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
                  or (part.get("type") == "output_text" and part.get("text") == "" and part.get("annotations") == []),
                  "message part must start as empty output_text with annotations", event)
        else:
            check(part == {"type": "reasoning_text", "text": ""}, "reasoning part must start as empty reasoning_text")
        open_["part"] = "content"

    def _on_response_output_text_delta(self, event: dict) -> None:
        open_ = self._expect_open(event, "message")
        check(open_["part"] == "content" and not open_["part_done"], "text delta outside an open part", event)
        check(isinstance(event.get("logprobs"), list), "output_text.delta needs logprobs (a list)", event)
        check(isinstance(event["delta"], str) and event["delta"] != "", "empty delta", event)
        open_["text"].append(event["delta"])

    def _on_response_output_text_done(self, event: dict) -> None:
        open_ = self._expect_open(event, "message")
        check(event["text"] == "".join(open_["text"]), "output_text.done text differs from the deltas", event)
        open_["done_text"] = event["text"]

    def _on_response_content_part_done(self, event: dict) -> None:
        open_ = self._expect_open(event, self.open["item"]["type"] if self.open else "?")
        check("done_text" in open_, "content_part.done before the text's done event", event)
        check(event["part"]["text"] == open_["done_text"], "content_part.done text differs", event)
        open_["part_done"] = True
        open_["final_part"] = event["part"]

    def _on_response_reasoning_text_delta(self, event: dict) -> None:
        open_ = self._expect_open(event, "reasoning")
        check(open_["part"] == "content", "reasoning_text.delta without content_part.added", event)
        check(event["delta"] != "", "empty delta", event)
        open_["text"].append(event["delta"])

    def _on_response_reasoning_text_done(self, event: dict) -> None:
        open_ = self._expect_open(event, "reasoning")
        check(event["text"] == "".join(open_["text"]), "reasoning_text.done differs from the deltas", event)
        open_["done_text"] = event["text"]

    def _on_response_reasoning_summary_part_added(self, event: dict) -> None:
        open_ = self._expect_open(event, "reasoning")
        check(open_["part"] is None and event["summary_index"] == 0, "one summary part, index 0", event)
        check(event["part"] == {"type": "summary_text", "text": ""}, "summary part must start empty", event)
        open_["part"] = "summary"

    def _on_response_reasoning_summary_text_delta(self, event: dict) -> None:
        open_ = self._expect_open(event, "reasoning")
        check(open_["part"] == "summary", "summary delta without summary_part.added", event)
        check(event["delta"] != "", "empty delta", event)
        open_["text"].append(event["delta"])

    def _on_response_reasoning_summary_text_done(self, event: dict) -> None:
        open_ = self._expect_open(event, "reasoning")
        check(event["text"] == "".join(open_["text"]), "summary_text.done differs from the deltas", event)
        open_["done_text"] = event["text"]

    def _on_response_reasoning_summary_part_done(self, event: dict) -> None:
        open_ = self._expect_open(event, "reasoning")
        check(event["part"] == {"type": "summary_text", "text": open_.get("done_text")}, "summary part.done", event)
        open_["part_done"] = True

    def _on_response_function_call_arguments_delta(self, event: dict) -> None:
        open_ = self._expect_open(event, "function_call")
        check(event["delta"] != "", "empty delta", event)
        open_["text"].append(event["delta"])

    def _on_response_function_call_arguments_done(self, event: dict) -> None:
        open_ = self._expect_open(event, "function_call")
        check(event["arguments"] == "".join(open_["text"]), "arguments.done differs from the deltas", event)
        check(event.get("name") == open_["item"]["name"], "arguments.done must carry the name", event)
        open_["done_text"] = event["arguments"]

    def _on_response_output_item_done(self, event: dict) -> None:
        check(self.open is not None, "output_item.done for no open item", event)
        open_ = self.open
        item = event["item"]
        check(event["output_index"] == open_["index"], "output_item.done index differs", event)
        check(item["id"] == open_["item"]["id"] and item["type"] == open_["item"]["type"], "item identity changed")
        check(item["status"] in ("completed", "incomplete"), "done item status", event)
        check("done_text" in open_, f"{item['type']} closed without its text/arguments done event", event)
        if item["type"] == "message":
            check(open_["part_done"], "message closed without content_part.done", event)
            check(item["content"] == [open_["final_part"]], "message content differs from its part", event)
        elif item["type"] == "function_call":
            check(item["call_id"] == open_["item"]["call_id"] and item["name"] == open_["item"]["name"], "call changed")
            check(item["arguments"] == open_["done_text"], "function_call arguments differ", event)
        else:
            check(open_["part_done"], "reasoning closed without its part done", event)
            texts = [p["text"] for p in item["summary"]] + [p["text"] for p in item.get("content") or []]
            check(texts == [open_["done_text"]], "reasoning item text differs from its deltas", event)
        self.done_items.append(item)
        self.open = None


def check_stream(events: list[dict[str, Any]]) -> dict[str, Any]:
    """Validate a whole stream; returns the final Response."""
    checker = StreamChecker()
    for event in events:
        checker.feed(event)
    check(checker.final is not None, "the stream ended without a terminal event")
    return checker.final  # type: ignore[return-value]


def parse_sse(body: bytes) -> list[dict[str, Any]]:
    """Decode an SSE body as a client does, checking ``event:`` matches the payload's type."""
    import json

    events = []
    for frame in body.decode("utf-8").split("\n\n"):
        if not frame.strip():
            continue
        name, data = None, []
        for line in frame.split("\n"):
            if line.startswith(":"):
                continue
            if line.startswith("event: "):
                name = line[len("event: "):]
            elif line.startswith("data: "):
                data.append(line[len("data: "):])
        if not data:
            continue
        check(len(data) == 1, "an event's data must be one line")
        event = json.loads(data[0])
        check(name == event.get("type"), f"SSE event name {name!r} differs from type {event.get('type')!r}")
        events.append(event)
    return events


def output_texts(response: dict[str, Any]) -> list[tuple[str, str]]:
    """(type, text) of each output item: the message's text, the reasoning's text (summary or raw),
    or ``name(arguments)`` for a function call. A compact view to compare Responses in tests."""
    out = []
    for item in response["output"]:
        if item["type"] == "message":
            out.append(("message", item["content"][0]["text"]))
        elif item["type"] == "reasoning":
            out.append(("reasoning", "".join(p["text"] for p in item["summary"] + (item.get("content") or []))))
        else:
            out.append(("function_call", f"{item['name']}({item['arguments']})"))
    return out
