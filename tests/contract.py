"""The Responses stream contract (../shared/DESIGN.md), written once as a validator and run on every
stream any test produces. Works on decoded JSON events (dicts), exactly what a client sees.
"""

from __future__ import annotations

from typing import Any, Optional

TERMINAL = {"response.completed": "completed", "response.incomplete": "incomplete", "response.failed": "failed"}
TOKEN_KEYS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")
CALL_TYPES = {"function_call": "arguments", "custom_tool_call": "input"}  # call item type -> its streamed field


class ContractViolation(AssertionError):
    pass


def check(condition: bool, message: str, event: Optional[dict] = None) -> None:
    if not condition:
        raise ContractViolation(message + (f"\n  at event: {event}" if event is not None else ""))


class StreamChecker:
    """Feed events in order; ``final`` is the terminal Response once the stream ended."""

    def __init__(self, *, nemo_gym: bool = False) -> None:
        self.nemo_gym = nemo_gym  # NeMo Gym's conventions (see check_response)
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
        check_response(response, nemo_gym=self.nemo_gym)
        self.response_id = response["id"]

    def _on_response_in_progress(self, event: dict) -> None:
        check(event["response"]["id"] == self.response_id, "response id changed", event)
        check_response(event["response"], nemo_gym=self.nemo_gym)

    def _terminal(self, event: dict) -> None:
        response = event["response"]
        status = TERMINAL[event["type"]]
        if status == "failed" and response.get("status") == "cancelled":  # a cancelled background run
            status = "cancelled"
        streamed_items = list(self.done_items)
        if self.open is not None and self.open["item"]["type"] in CALL_TYPES and status != "completed":
            # The rule for unfinished responses: a call gets no done events, and the Response lists
            # it as incomplete, holding exactly what was streamed of it.
            open_ = self.open
            check(open_.get("done_text") is None, "an unfinished response's call got its done event", event)
            unfinished = {**open_["item"], "status": "incomplete"}
            unfinished[CALL_TYPES[unfinished["type"]]] = "".join(open_["text"])
            last = response["output"][-1] if response["output"] else {}
            unfinished.update({key: last[key] for key in TOKEN_KEYS if key in last})  # only the Response has them
            streamed_items.append(unfinished)
            self.open = None
        check(self.open is None, f"item {self.open and self.open['item']['id']} still open at the end", event)
        check(response["id"] == self.response_id, "response id changed", event)
        check(response["status"] == status, f"terminal status should be {status}", event)
        check_response(response, nemo_gym=self.nemo_gym)
        output = response["output"]
        check(len(output) == len(streamed_items), "final output differs in length from the streamed items", event)
        if status == "completed":
            check(all(item["status"] == "completed" for item in output), "a completed response's item is not", event)
        for final_item, streamed in zip(output, streamed_items):
            check(final_item == streamed, f"final output item differs from its output_item.done: {final_item} != {streamed}")
        if status not in ("failed", "cancelled"):
            usage = response.get("usage")
            check(isinstance(usage, dict), "usage missing", event)
            for key in ("input_tokens", "output_tokens", "total_tokens"):
                check(isinstance(usage.get(key), int), f"usage.{key} missing", event)
            check(isinstance(usage.get("input_tokens_details", {}).get("cached_tokens"), int), "cached_tokens missing")
            check(isinstance(usage.get("output_tokens_details", {}).get("reasoning_tokens"), int),
                  "reasoning_tokens missing")
        if status == "incomplete":
            check(bool((response.get("incomplete_details") or {}).get("reason")), "incomplete without reason", event)
        if status in ("failed", "cancelled"):
            check(self.previous_type == "error", "response.failed must follow an error event", event)
            check(bool((response.get("error") or {}).get("message")), "failed response without error", event)
        self.final = response

    _on_response_completed = _terminal
    _on_response_incomplete = _terminal
    _on_response_failed = _terminal

    def _on_keepalive(self, event: dict) -> None:
        check(set(event) == {"type", "sequence_number"}, "a keepalive carries only type and sequence_number", event)

    def _on_error(self, event: dict) -> None:
        # OpenAI's flat shape. The Open Responses schema nests these fields under "error", but the
        # openai SDK raises on any event with an "error" key (README: where OpenAI and the spec differ).
        check(isinstance(event.get("message"), str) and event["message"], "error event without message", event)
        check("code" in event and "param" in event, "error event needs code and param", event)
        check("error" not in event, "error event must be flat: the openai SDK raises on an 'error' key", event)

    # items
    def _on_response_output_item_added(self, event: dict) -> None:
        check(self.open is None, "an item was added while another is open", event)
        item = event["item"]
        check(event["output_index"] == len(self.done_items), f"output_index should be {len(self.done_items)}", event)
        check(item["id"] not in self.added_ids, "item id reused", event)
        self.added_ids.add(item["id"])
        check(item.get("status") == "in_progress", "added item must be in_progress", event)
        check_item(item, "output_item.added item")
        prefix = {"message": "msg_", "reasoning": "rs_", "function_call": "fc_", "custom_tool_call": "ctc_"}.get(
            item["type"])
        check(prefix is not None, f"unexpected item type {item['type']}", event)
        check(item["id"].startswith(prefix), f"{item['type']} id should start with {prefix}", event)
        if item["type"] == "message":
            check(item["content"] == [] and item["role"] == "assistant", "added message must be empty", event)
        elif item["type"] in CALL_TYPES:
            check(item[CALL_TYPES[item["type"]]] == "" and item["name"] and item["call_id"],
                  "added call needs name, call_id", event)
            check(item.get("namespace", "x") != "", "namespace, when present, is a name", event)
        else:
            check(item["summary"] == [], "added reasoning must have an empty summary", event)
        self.open = {"index": event["output_index"], "item": item, "text": [], "part": None, "part_done": False,
                     "parts": []}

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
        if item_type == "reasoning":  # several blocks in a row may be parts of one item (NeMo Gym's form)
            self._next_reasoning_part(open_, event, event["content_index"])
        else:
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
        check(not open_["part_done"], "content_part.done twice", event)
        open_["part_done"] = True
        open_["parts"].append(open_["done_text"])
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
        self._next_reasoning_part(open_, event, event["summary_index"])
        check(event["part"] == {"type": "summary_text", "text": ""}, "summary part must start empty", event)
        open_["part"] = "summary"

    def _next_reasoning_part(self, open_: dict, event: dict, index: int) -> None:
        """A reasoning item's parts come one at a time, indices 0, 1, ..., each done before the next."""
        check(open_["part"] is None or open_["part_done"], "a reasoning part opened while one is open", event)
        check(index == len(open_["parts"]), f"reasoning part index should be {len(open_['parts'])}", event)
        open_["text"], open_["part_done"] = [], False
        open_.pop("done_text", None)

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
        check(not open_["part_done"], "summary part.done twice", event)
        open_["part_done"] = True
        open_["parts"].append(open_["done_text"])

    def _on_response_function_call_arguments_delta(self, event: dict) -> None:
        open_ = self._expect_open(event, "function_call")
        check(event["delta"] != "", "empty delta", event)
        open_["text"].append(event["delta"])

    def _on_response_function_call_arguments_done(self, event: dict) -> None:
        open_ = self._expect_open(event, "function_call")
        check(event["arguments"] == "".join(open_["text"]), "arguments.done differs from the deltas", event)
        check(event.get("name") == open_["item"]["name"], "arguments.done must carry the name", event)
        open_["done_text"] = event["arguments"]

    def _on_response_custom_tool_call_input_delta(self, event: dict) -> None:
        open_ = self._expect_open(event, "custom_tool_call")
        check(isinstance(event["delta"], str) and event["delta"] != "", "empty delta", event)
        open_["text"].append(event["delta"])

    def _on_response_custom_tool_call_input_done(self, event: dict) -> None:
        open_ = self._expect_open(event, "custom_tool_call")
        check(event["input"] == "".join(open_["text"]), "custom_tool_call_input.done differs from the deltas", event)
        open_["done_text"] = event["input"]

    def _on_response_output_item_done(self, event: dict) -> None:
        check(self.open is not None, "output_item.done for no open item", event)
        open_ = self.open
        item = event["item"]
        check(event["output_index"] == open_["index"], "output_item.done index differs", event)
        check(item["id"] == open_["item"]["id"] and item["type"] == open_["item"]["type"], "item identity changed")
        check(item["status"] in ("completed", "incomplete"), "done item status", event)
        check_item(item, "output_item.done item")
        check("done_text" in open_, f"{item['type']} closed without its text/arguments done event", event)
        if item["type"] == "message":
            check(open_["part_done"], "message closed without content_part.done", event)
            check(item["content"] == [open_["final_part"]], "message content differs from its part", event)
        elif item["type"] in CALL_TYPES:
            check(item["call_id"] == open_["item"]["call_id"] and item["name"] == open_["item"]["name"], "call changed")
            check(item.get("namespace") == open_["item"].get("namespace"), "call namespace changed", event)
            check(item[CALL_TYPES[item["type"]]] == open_["done_text"], f"{item['type']} content differs", event)
        else:
            check(open_["part_done"], "reasoning closed without its part done", event)
            texts = [p["text"] for p in item["summary"]] + [p["text"] for p in item.get("content") or []]
            check(texts == open_["parts"], "reasoning item text differs from its deltas", event)
        self.done_items.append(item)
        self.open = None


# --- the Response object, as the Open Responses schema requires it (ResponseResource) ---------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_str(value: Any) -> bool:
    return isinstance(value, str)


def _or_null(predicate: Any) -> Any:
    return lambda value: value is None or predicate(value)


# Every key the schema requires, with what its value must be. Extra keys (NeMo Gym's token ids,
# ``user``) are allowed, as the schema allows them.
RESPONSE_KEYS: dict[str, Any] = {
    "id": _is_str,
    "object": lambda v: v == "response",
    "created_at": _is_int,
    "completed_at": _or_null(_is_int),
    "status": lambda v: v in ("queued", "in_progress", "completed", "incomplete", "failed", "cancelled"),
    "incomplete_details": _or_null(lambda v: isinstance(v, dict) and _is_str(v.get("reason"))),
    "model": _is_str,
    "previous_response_id": _or_null(_is_str),
    "instructions": _or_null(_is_str),
    "output": lambda v: isinstance(v, list),
    "error": _or_null(lambda v: isinstance(v, dict) and _is_str(v.get("code")) and _is_str(v.get("message"))),
    "tools": lambda v: isinstance(v, list),
    "tool_choice": lambda v: v in ("none", "auto", "required") or isinstance(v, dict),
    "truncation": lambda v: v in ("auto", "disabled"),
    "parallel_tool_calls": lambda v: isinstance(v, bool),
    "text": lambda v: isinstance(v, dict) and isinstance(v.get("format"), dict),
    "top_p": _is_number,
    "presence_penalty": _is_number,
    "frequency_penalty": _is_number,
    "top_logprobs": _is_int,
    "temperature": _is_number,
    "reasoning": _or_null(lambda v: isinstance(v, dict) and "effort" in v and "summary" in v),
    "usage": _or_null(lambda v: isinstance(v, dict)),
    "max_output_tokens": _or_null(_is_int),
    "max_tool_calls": _or_null(_is_int),
    "store": lambda v: isinstance(v, bool),
    "background": lambda v: isinstance(v, bool),
    "service_tier": _is_str,
    "metadata": lambda v: isinstance(v, dict),
    "safety_identifier": _or_null(_is_str),
    "prompt_cache_key": _or_null(_is_str),
}


# Under gateway.response_conventions: nemo_gym the Response echoes the request's own sampling
# values as NeMo Gym does, null where it sent none (OpenAI's Response type allows null there).
NEMO_GYM_NULLABLE = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "top_logprobs")


def check_response(response: dict[str, Any], *, nemo_gym: bool = False) -> None:
    """A Response (created, in progress, final, or non-streamed) against the Open Responses schema;
    ``nemo_gym``: with NeMo Gym's conventions' nulls allowed (NEMO_GYM_NULLABLE)."""
    for key, valid in RESPONSE_KEYS.items():
        check(key in response, f"Response lacks {key!r}")
        if nemo_gym and key in NEMO_GYM_NULLABLE and response[key] is None:
            continue
        check(valid(response[key]), f"Response {key!r} is invalid: {response[key]!r}")
    check((response["completed_at"] is not None) == (response["status"] == "completed"),
          "completed_at is set exactly when the status is completed")
    for i, tool in enumerate(response["tools"]):
        if tool.get("type") == "function":
            check(_is_str(tool.get("name")), f"tools[{i}].name missing")
            for key in ("description", "parameters", "strict"):
                check(key in tool, f"tools[{i}] lacks {key!r} (null when not given)")
    for i, item in enumerate(response["output"]):
        check_item(item, f"output[{i}]")
    if response["usage"] is not None:
        usage = response["usage"]
        for key in ("input_tokens", "output_tokens", "total_tokens"):
            check(_is_int(usage.get(key)), f"usage.{key} missing")
        check(_is_int((usage.get("input_tokens_details") or {}).get("cached_tokens")), "cached_tokens missing")
        check(_is_int((usage.get("output_tokens_details") or {}).get("reasoning_tokens")), "reasoning_tokens missing")


def check_item(item: dict[str, Any], where: str) -> None:
    check(_is_str(item.get("id")) and item.get("status") in ("in_progress", "completed", "incomplete"),
          f"{where} needs an id and a status", item)
    if item["type"] == "reasoning":
        check(isinstance(item.get("summary"), list), f"{where}.summary must be a list", item)
        # a string or no key at all: null fails the schema
        check("encrypted_content" not in item or _is_str(item["encrypted_content"]),
              f"{where}.encrypted_content must be a string when present", item)
    elif item["type"] == "message":
        check(item.get("role") == "assistant" and isinstance(item.get("content"), list), f"{where} content", item)
        for part in item["content"]:
            check(part.get("type") == "output_text" and _is_str(part.get("text"))
                  and isinstance(part.get("annotations"), list), f"{where} has an invalid content part", item)
    elif item["type"] in CALL_TYPES:
        for key in ("call_id", "name", CALL_TYPES[item["type"]]):
            check(_is_str(item.get(key)), f"{where}.{key} must be a string", item)
        check("namespace" not in item or _is_str(item["namespace"]), f"{where}.namespace must be a string", item)


def check_stream(events: list[dict[str, Any]], *, nemo_gym: bool = False) -> dict[str, Any]:
    """Validate a whole stream; returns the final Response."""
    checker = StreamChecker(nemo_gym=nemo_gym)
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
        elif item["type"] == "custom_tool_call":
            out.append(("custom_tool_call", f"{item['name']}<{item['input']}>"))
        else:
            out.append(("function_call", f"{item['name']}({item['arguments']})"))
    return out
