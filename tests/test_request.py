"""Unit tests for gateway.translate.request: Responses request -> Chat Completions request (pure, no IO).

Covers NeMo Gym's own round-trip fixture, every input form, assistant-turn grouping, the reasoning
history modes, instructions, tools, sampling, NeMo Gym's precedence rules, every InvalidRequest the
translator raises (exact ``param`` and ``code``) and the Response skeleton echoed to the client.
Tests marked ``xfail(strict=True)`` prove a product bug; their ``reason`` says what is wrong.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Union

import msgspec
import orjson
import pytest

from gateway.translate.errors import InvalidRequest
from gateway.translate.request import SAMPLING_DEFAULTS, ChatPlan, ConversionSettings, decode_request, plan_chat_request
from gateway.translate.stream import StreamOptions

MODEL = "Qwen/Qwen3-8B"
RESPONSE_ID = "resp_0123456789abcdef"
CREATED_AT = 1_756_498_939

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
ROUND_TRIP = REFERENCE / "nemo_gym_round_trip.json"

TOKEN_KEYS = ("prompt_token_ids", "generation_token_ids", "generation_log_probs")
TOKENS_A = {"prompt_token_ids": [1, 2, 3], "generation_token_ids": [4, 5], "generation_log_probs": [-0.5, -0.25]}
TOKENS_B = {"prompt_token_ids": [1, 2, 3, 4, 5, 6], "generation_token_ids": [7], "generation_log_probs": [0.0]}

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "strict": True,
}


# --- helpers ---------------------------------------------------------------------------------------


def plan(body: Union[dict[str, Any], bytes], **settings: Any) -> ChatPlan:
    """Decode ``body`` (a dict is JSON-encoded first) and plan it, as the server does."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    req = decode_request(raw)
    return plan_chat_request(
        req, ConversionSettings(model=settings.pop("model", MODEL), **settings),
        response_id=RESPONSE_ID, created_at=CREATED_AT,
    )


def chat(body: Union[dict[str, Any], bytes], **settings: Any) -> dict[str, Any]:
    return plan(body, **settings).body


def messages(input_: Any, **settings: Any) -> list[dict[str, Any]]:
    return chat({"input": input_}, **settings)["messages"]


def rejected(body: Union[dict[str, Any], bytes], **settings: Any) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        plan(body, **settings)
    return info.value


def user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": text}


def assistant(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": text}], **extra}


def call(call_id: str, name: str = "get_weather", arguments: str = '{"city": "Paris"}', **extra: Any) -> dict[str, Any]:
    return {"type": "function_call", "call_id": call_id, "name": name, "arguments": arguments, **extra}


def call_output(call_id: str, output: Any = "sunny") -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": call_id, "output": output}


def reasoning(*summary: str, content: Any = None, **extra: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "reasoning", "summary": [{"type": "summary_text", "text": s} for s in summary]}
    if content is not None:
        item["content"] = [{"type": "reasoning_text", "text": c} for c in content]
    item.update(extra)
    return item


def tool_call(call_id: str, name: str = "get_weather", arguments: str = '{"city": "Paris"}') -> dict[str, Any]:
    """The Chat Completions shape of ``call(...)``."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


# --- 1. NeMo Gym's round-trip fixture --------------------------------------------------------------


@pytest.fixture(scope="module")
def round_trip() -> dict[str, Any]:
    if not ROUND_TRIP.is_file():
        pytest.skip(
            f"NeMo Gym round-trip fixture not found at {ROUND_TRIP}: it lives in ../shared/reference beside "
            "the clone (CI has it)."
        )
    return json.loads(ROUND_TRIP.read_text(encoding="utf-8"))


def _without_nulls(message: dict[str, Any]) -> dict[str, Any]:
    """A model_dump has every field; null ones are simply absent from a well-formed request."""
    return {key: value for key, value in message.items() if value is not None}


@pytest.mark.parametrize(
    ("return_token_id_information", "expected_key"),
    [(False, "expected_output"), (True, "expected_output_return_token_id_information")],
    ids=["plain", "with_token_ids"],
)
def test_nemo_gym_round_trip_fixture(
    round_trip: dict[str, Any], return_token_id_information: bool, expected_key: str
) -> None:
    model = round_trip["input"]["model"]
    input_ = [
        {"role": "system", "content": "system"},
        {"role": "user", "content": "hello!"},
        *round_trip["input"]["output"],
    ]
    body = chat(
        {"model": model, "input": input_},
        model=model,
        reasoning_history="think_tags",
        return_token_id_information=return_token_id_information,
    )
    expected = [_without_nulls(m) for m in round_trip[expected_key]["messages"]]
    assert [m["role"] for m in body["messages"]] == ["system", "user", "assistant", "tool", "tool", "tool", "assistant"]
    assert body["messages"] == expected
    assert body["model"] == model


def test_round_trip_token_ids_come_from_the_last_item_of_each_turn(round_trip: dict[str, Any]) -> None:
    output = round_trip["input"]["output"]
    carriers = [item for item in output if "prompt_token_ids" in item]
    assert len(carriers) == 2  # the third function_call (turn 1) and the closing reasoning item (turn 2)
    body = chat({"input": [user("hello!"), *output]}, return_token_id_information=True)
    assistants = [m for m in body["messages"] if m["role"] == "assistant"]
    for message, carrier in zip(assistants, carriers):
        assert {key: message[key] for key in TOKEN_KEYS} == {key: carrier[key] for key in TOKEN_KEYS}


def test_round_trip_without_token_tracking_carries_no_token_keys(round_trip: dict[str, Any]) -> None:
    body = chat({"input": [user("hello!"), *round_trip["input"]["output"]]})
    for message in body["messages"]:
        assert not set(TOKEN_KEYS) & set(message)


# --- 2. input forms --------------------------------------------------------------------------------


def test_string_input_is_one_user_message() -> None:
    assert messages("Hello there") == [{"role": "user", "content": "Hello there"}]


def test_message_without_type_is_a_message() -> None:
    with_type = messages([{"type": "message", "role": "user", "content": "hi"}])
    without_type = messages([{"role": "user", "content": "hi"}])
    assert without_type == with_type == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("role", ["user", "system", "developer", "assistant"])
def test_roles_are_kept(role: str) -> None:
    assert messages([{"role": role, "content": "text"}]) == [{"role": role, "content": "text"}]


def test_single_text_part_collapses_to_a_string() -> None:
    assert messages([{"role": "user", "content": [{"type": "input_text", "text": "only"}]}]) == [
        {"role": "user", "content": "only"}
    ]


def test_several_parts_stay_a_list() -> None:
    content = [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]
    assert messages([{"role": "user", "content": content}]) == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]


def test_output_text_in_a_user_message_is_text() -> None:
    content = [{"type": "output_text", "text": "quoted"}, {"type": "input_text", "text": "mine"}]
    assert messages([{"role": "user", "content": content}])[0]["content"] == [
        {"type": "text", "text": "quoted"},
        {"type": "text", "text": "mine"},
    ]


def test_input_image_with_detail() -> None:
    content = [
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
        {"type": "input_image", "image_url": "https://example.com/cat.png"},
    ]
    assert messages([{"role": "user", "content": content}])[0]["content"] == [
        {"type": "text", "text": "What is this?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
    ]


def test_a_single_image_part_stays_a_list() -> None:
    content = [{"type": "input_image", "image_url": "https://example.com/cat.png", "detail": "high"}]
    assert messages([{"role": "user", "content": content}])[0]["content"] == [
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "high"}}
    ]


def test_assistant_parts_join_to_text_including_refusal() -> None:
    content = [
        {"type": "output_text", "text": "I can help with that. ", "annotations": [], "logprobs": []},
        {"type": "refusal", "refusal": "But not with this."},
    ]
    item = {"type": "message", "role": "assistant", "content": content, "id": "msg_1", "status": "completed"}
    assert messages([item]) == [{"role": "assistant", "content": "I can help with that. But not with this."}]


def test_item_ids_and_statuses_are_ignored() -> None:
    items = [
        {**user("hi"), "id": "msg_u", "status": "completed"},
        call("call_1", id="fc_1", status="completed"),
        {**call_output("call_1"), "id": None, "status": None},
    ]
    assert messages(items) == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call("call_1")]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("plain", "plain"),
        ([{"type": "input_text", "text": "one part"}], "one part"),
        (
            [{"type": "input_text", "text": "see"}, {"type": "input_image", "image_url": "https://x/y.png"}],
            [{"type": "text", "text": "see"}, {"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
        ),
    ],
    ids=["string", "one_part", "parts"],
)
def test_function_call_output_forms(output: Any, expected: Any) -> None:
    assert messages([call("c1"), call_output("c1", output)])[1] == {
        "role": "tool", "tool_call_id": "c1", "content": expected
    }


def test_request_model_is_ignored() -> None:
    assert chat({"model": "gpt-4o", "input": "hi"})["model"] == MODEL


# --- 3. function calls and assistant turns ---------------------------------------------------------


def test_function_call_and_output() -> None:
    assert messages([user("weather?"), call("call_1"), call_output("call_1", '{"temp": 21}')]) == [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [tool_call("call_1")]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]


def test_consecutive_calls_merge_in_order() -> None:
    items = [
        call("c1", arguments='{"city": "Paris"}'),
        call("c2", name="get_time", arguments="{}"),
        call("c3", arguments='{"city": "Rome"}'),
        call_output("c1", "a"),
        call_output("c2", "b"),
        call_output("c3", "c"),
    ]
    result = messages(items)
    assert result[0] == {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            tool_call("c1", arguments='{"city": "Paris"}'),
            tool_call("c2", name="get_time", arguments="{}"),
            tool_call("c3", arguments='{"city": "Rome"}'),
        ],
    }
    assert [(m["role"], m.get("tool_call_id")) for m in result[1:]] == [("tool", "c1"), ("tool", "c2"), ("tool", "c3")]


def test_reasoning_message_and_calls_make_one_assistant_message() -> None:
    items = [user("q"), reasoning("Let me look."), assistant("Checking."), call("c1"), call("c2")]
    assert messages(items) == [
        {"role": "user", "content": "q"},
        {
            "role": "assistant",
            "content": "<think>Let me look.</think>Checking.",
            "tool_calls": [tool_call("c1"), tool_call("c2")],
        },
    ]


def test_consecutive_assistant_messages_join() -> None:
    assert messages([assistant("Hello, "), assistant("world.")]) == [{"role": "assistant", "content": "Hello, world."}]


@pytest.mark.parametrize("role", ["user", "system", "developer"])
def test_a_non_assistant_message_ends_the_assistant_turn(role: str) -> None:
    items = [assistant("first"), call("c1"), {"role": role, "content": "between"}, assistant("second")]
    assert messages(items) == [
        {"role": "assistant", "content": "first", "tool_calls": [tool_call("c1")]},
        {"role": role, "content": "between"},
        {"role": "assistant", "content": "second"},
    ]


def test_a_function_call_output_ends_the_assistant_turn() -> None:
    items = [call("c1"), call_output("c1"), reasoning("again"), call("c2")]
    assert messages(items) == [
        {"role": "assistant", "content": None, "tool_calls": [tool_call("c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "assistant", "content": "<think>again</think>", "tool_calls": [tool_call("c2")]},
    ]


def test_assistant_turn_with_text_only_has_no_tool_calls_key() -> None:
    assert messages([assistant("done")]) == [{"role": "assistant", "content": "done"}]


def test_token_fields_travel_onto_the_assistant_message_last_carrier_wins() -> None:
    items = [user("q"), reasoning("r", **TOKENS_A), call("c1", **TOKENS_B), call_output("c1"), assistant("answer")]
    result = messages(items, return_token_id_information=True)
    assert result[1] == {
        "role": "assistant",
        "content": "<think>r</think>",
        "tool_calls": [tool_call("c1")],
        **TOKENS_B,
    }
    # The next turn carries no token keys of its own and inherits none.
    assert result[3] == {"role": "assistant", "content": "answer"}


def test_token_fields_on_an_assistant_message() -> None:
    result = messages([user("q"), assistant("a", **TOKENS_A)], return_token_id_information=True)
    assert result[1] == {"role": "assistant", "content": "a", **TOKENS_A}


def test_token_fields_are_dropped_when_tracking_is_off() -> None:
    assert messages([user("q"), assistant("a", **TOKENS_A)]) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]


# --- 4. reasoning history --------------------------------------------------------------------------

MULTI_REASONING = [
    user("q"),
    reasoning("first", "second"),
    reasoning(content=["third (raw)"]),
    assistant("answer"),
    call("c1"),
]


def test_think_tags_wrap_every_block_in_order() -> None:
    result = messages(MULTI_REASONING, reasoning_history="think_tags")
    assert result[1] == {
        "role": "assistant",
        "content": "<think>first</think><think>second</think><think>third (raw)</think>answer",
        "tool_calls": [tool_call("c1")],
    }


def test_think_tags_is_the_default() -> None:
    assert messages(MULTI_REASONING) == messages(MULTI_REASONING, reasoning_history="think_tags")


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
def test_field_mode_joins_blocks_into_the_configured_field(field: str) -> None:
    result = messages(MULTI_REASONING, reasoning_history="field", reasoning_field=field)
    assert result[1] == {
        "role": "assistant",
        field: "first\n\nsecond\n\nthird (raw)",
        "content": "answer",
        "tool_calls": [tool_call("c1")],
    }


def test_field_mode_with_calls_only_has_empty_content() -> None:
    # NeMo Gym 0.7.0 takes the <think> block out of the content buffer, which leaves "" (not null).
    result = messages([reasoning("why"), call("c1")], reasoning_history="field")
    assert result == [
        {"role": "assistant", "reasoning_content": "why", "content": "", "tool_calls": [tool_call("c1")]}
    ]


def test_field_mode_both_sets_both_keys() -> None:
    result = messages([reasoning("why"), assistant("a")], reasoning_history="field", reasoning_field="both")
    assert result == [{"role": "assistant", "reasoning_content": "why", "reasoning": "why", "content": "a"}]


def test_field_mode_takes_think_blocks_out_of_assistant_text_too() -> None:
    # As NeMo Gym: reasoning a client left in the text as tags goes to the field as well.
    result = messages([assistant("<think>r</think>answer")], reasoning_history="field")
    assert result == [{"role": "assistant", "reasoning_content": "r", "content": "answer"}]


def test_field_mode_without_reasoning_sets_no_field() -> None:
    result = messages([assistant("plain")], reasoning_history="field")
    assert result == [{"role": "assistant", "content": "plain"}]


def test_drop_mode_forgets_reasoning() -> None:
    result = messages(MULTI_REASONING, reasoning_history="drop")
    assert result[1] == {"role": "assistant", "content": "answer", "tool_calls": [tool_call("c1")]}
    assert messages([reasoning("why"), call("c1")], reasoning_history="drop") == [
        {"role": "assistant", "content": "", "tool_calls": [tool_call("c1")]}
    ]


def test_summary_parts_are_preferred_over_raw_content() -> None:
    item = reasoning("the summary", content=["the raw text"])
    assert messages([item, assistant("x")]) == [{"role": "assistant", "content": "<think>the summary</think>x"}]


def test_raw_content_is_used_when_there_is_no_summary() -> None:
    item = reasoning(content=["raw one", "raw two"])
    assert messages([item, assistant("x")]) == [
        {"role": "assistant", "content": "<think>raw one</think><think>raw two</think>x"}
    ]


def test_empty_reasoning_blocks_are_skipped() -> None:
    assert messages([reasoning("", "kept", ""), assistant("x")]) == [
        {"role": "assistant", "content": "<think>kept</think>x"}
    ]


def test_think_tags_keep_reasoning_interleaved_with_text_in_item_order() -> None:
    items = [reasoning("plan"), assistant("Step one. "), reasoning("reconsider"), assistant("Step two.")]
    assert messages(items) == [
        {"role": "assistant", "content": "<think>plan</think>Step one. <think>reconsider</think>Step two."}
    ]


@pytest.mark.parametrize(
    ("mode", "empty_turn"),
    [
        ("think_tags", [reasoning()]),
        ("think_tags", [reasoning("", content=[""])]),
        ("think_tags", [assistant("")]),
        ("field", [reasoning()]),
        ("drop", [reasoning("dropped anyway"), assistant("")]),
    ],
    ids=["empty_reasoning", "blank_blocks", "empty_message", "field_empty_reasoning", "drop_reasoning_only"],
)
def test_an_empty_assistant_turn_is_sent_as_nemo_gym_sends_it(mode: str, empty_turn: list[dict[str, Any]]) -> None:
    # NeMo Gym 0.7.0's flush_assistant sends an assistant turn that held any item; content null
    # when its buffer is empty, "" when only a dropped <think> block was in it.
    content = "" if mode == "drop" else None
    assert messages([user("q"), *empty_turn, user("again")], reasoning_history=mode) == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": content},
        {"role": "user", "content": "again"},
    ]


def test_field_mode_keeps_a_reasoning_only_turn() -> None:
    assert messages([user("q"), reasoning("why"), user("again")], reasoning_history="field") == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "reasoning_content": "why", "content": ""},
        {"role": "user", "content": "again"},
    ]


def test_an_empty_turn_carrying_token_ids_is_kept_for_training() -> None:
    result = messages([user("q"), assistant("", **TOKENS_A), user("again")], return_token_id_information=True)
    assert result == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": None, **TOKENS_A},
        {"role": "user", "content": "again"},
    ]


def test_an_empty_turn_with_token_ids_but_tracking_off_has_no_token_keys() -> None:
    result = messages([user("q"), assistant("", **TOKENS_A), user("again")], return_token_id_information=False)
    assert result == [{"role": "user", "content": "q"}, {"role": "assistant", "content": None},
                      {"role": "user", "content": "again"}]


# --- 5. instructions and roles ---------------------------------------------------------------------


def test_instructions_become_the_leading_system_message() -> None:
    assert chat({"input": "hi", "instructions": "Be brief."})["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]


def test_instructions_fold_leading_system_and_developer_messages() -> None:
    items = [
        {"role": "developer", "content": "dev rules"},
        {"role": "system", "content": "sys rules"},
        user("hi"),
        {"role": "developer", "content": "later"},
    ]
    assert chat({"input": items, "instructions": "Be brief."})["messages"] == [
        {"role": "system", "content": "Be brief.\n\ndev rules\n\nsys rules"},
        {"role": "user", "content": "hi"},
        {"role": "developer", "content": "later"},
    ]


def test_leading_system_messages_are_not_merged_without_instructions() -> None:
    items = [{"role": "system", "content": "a"}, {"role": "system", "content": "b"}, user("hi")]
    assert messages(items) == [
        {"role": "system", "content": "a"},
        {"role": "system", "content": "b"},
        {"role": "user", "content": "hi"},
    ]


def test_a_leading_developer_message_with_several_text_parts_is_folded() -> None:
    # NeMo Gym folds the parts' text (joined as they are) into the one system message.
    parts = [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]
    result = chat({"input": [{"role": "developer", "content": parts}, user("hi")], "instructions": "I"})["messages"]
    assert result == [{"role": "system", "content": "I\n\nab"}, {"role": "user", "content": "hi"}]


def test_a_leading_system_message_with_an_image_is_not_folded() -> None:
    parts = [{"type": "input_text", "text": "a"}, {"type": "input_image", "image_url": "data:image/png;base64,AA"}]
    result = chat({"input": [{"role": "system", "content": parts}, user("hi")], "instructions": "I"})["messages"]
    assert result[0] == {"role": "system", "content": "I"}
    assert result[1]["role"] == "system" and len(result[1]["content"]) == 2


def test_replace_developer_role_with_system() -> None:
    items = [{"role": "developer", "content": "d1"}, user("hi"), {"role": "developer", "content": "d2"}]
    assert messages(items, replace_developer_role_with_system=True) == [
        {"role": "system", "content": "d1"},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "d2"},
    ]
    assert [m["role"] for m in messages(items)] == ["developer", "user", "developer"]


# --- 6. tools --------------------------------------------------------------------------------------


def test_tools_convert_to_chat_functions_without_strict() -> None:
    body = chat({"input": "hi", "tools": [WEATHER_TOOL, {"type": "function", "name": "now"}]})
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather for a city",
                "parameters": WEATHER_TOOL["parameters"],
            },
        },
        {"type": "function", "function": {"name": "now"}},
    ]


def test_no_tools_means_no_tool_keys() -> None:
    body = chat({"input": "hi", "tools": [], "parallel_tool_calls": False, "tool_choice": "auto"})
    assert not {"tools", "tool_choice", "parallel_tool_calls"} & set(body)


@pytest.mark.parametrize("choice", ["auto", "none", "required"])
def test_tool_choice_strings_are_forwarded(choice: str) -> None:
    assert chat({"input": "hi", "tools": [WEATHER_TOOL], "tool_choice": choice})["tool_choice"] == choice


def test_tool_choice_object_becomes_the_chat_form() -> None:
    body = chat({"input": "hi", "tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "name": "get_weather"}})
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_tool_choice_absent_is_not_sent() -> None:
    assert "tool_choice" not in chat({"input": "hi", "tools": [WEATHER_TOOL]})


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_harmless_tool_choice_without_tools_is_dropped(choice: str) -> None:
    assert "tool_choice" not in chat({"input": "hi", "tool_choice": choice})


@pytest.mark.parametrize("parallel", [True, False])
def test_parallel_tool_calls_forwarded_with_tools(parallel: bool) -> None:
    body = chat({"input": "hi", "tools": [WEATHER_TOOL], "parallel_tool_calls": parallel})
    assert body["parallel_tool_calls"] is parallel


def test_parallel_tool_calls_absent_is_not_sent() -> None:
    assert "parallel_tool_calls" not in chat({"input": "hi", "tools": [WEATHER_TOOL]})


# --- 7. sampling and output format -----------------------------------------------------------------


def test_minimal_body() -> None:
    assert chat({"input": "hi"}) == {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": False,
                                     **SAMPLING_DEFAULTS}


def test_sampling_fields_map_onto_chat() -> None:
    body = chat({"input": "hi", "temperature": 0.6, "top_p": 0.95, "max_output_tokens": 512})
    assert (body["temperature"], body["top_p"], body["max_tokens"]) == (0.6, 0.95, 512)
    assert "max_output_tokens" not in body


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("top_k", 20),
        ("min_p", 0.05),
        ("min_tokens", 3),
        ("seed", 1234),
        ("stop", "\n\n"),
        ("stop", ["</answer>", "STOP"]),
        ("presence_penalty", 0.5),
        ("frequency_penalty", -0.5),
        ("repetition_penalty", 1.05),
    ],
)
def test_vllm_sampling_extensions_pass_through(name: str, value: Any) -> None:
    assert chat({"input": "hi", name: value})[name] == value


@pytest.mark.parametrize(
    "fields", [{"temperature": 0}, {"temperature": 2}, {"top_p": 0}, {"top_p": 1}, {"max_output_tokens": 1}]
)
def test_sampling_bounds_are_inclusive(fields: dict[str, Any]) -> None:
    body = chat({"input": "hi", **fields})
    for name, value in fields.items():
        assert body["max_tokens" if name == "max_output_tokens" else name] == value


def test_reasoning_effort() -> None:
    assert chat({"input": "hi", "reasoning": {"effort": "high", "summary": "auto"}})["reasoning_effort"] == "high"
    assert "reasoning_effort" not in chat({"input": "hi", "reasoning": {"summary": "auto"}})


def test_json_schema_format() -> None:
    fmt = {
        "type": "json_schema",
        "name": "answer",
        "schema": {"type": "object", "properties": {"x": {"type": "integer"}}},
        "strict": True,
        "description": "The answer",
    }
    assert chat({"input": "hi", "text": {"format": fmt}})["response_format"] == {
        "type": "json_schema",
        "json_schema": {
            "name": "answer",
            "schema": {"type": "object", "properties": {"x": {"type": "integer"}}},
            "strict": True,
            "description": "The answer",
        },
    }


def test_json_schema_format_defaults_its_name() -> None:
    fmt = {"type": "json_schema", "schema": {"type": "object"}}
    assert chat({"input": "hi", "text": {"format": fmt}})["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "response", "schema": {"type": "object"}},
    }


def test_json_object_format() -> None:
    body = chat({"input": "hi", "text": {"format": {"type": "json_object"}}})
    assert body["response_format"] == {"type": "json_object"}


def test_text_format_sends_no_response_format() -> None:
    assert "response_format" not in chat({"input": "hi", "text": {"format": {"type": "text"}, "verbosity": "low"}})


def test_user() -> None:
    assert chat({"input": "hi", "user": "user-42"})["user"] == "user-42"


def test_stream_asks_for_usage() -> None:
    result = plan({"input": "hi", "stream": True, "stream_options": {"include_obfuscation": False}})
    assert result.stream is True
    assert result.body["stream"] is True
    assert result.body["stream_options"] == {"include_usage": True}


def test_non_stream_has_no_stream_options() -> None:
    result = plan({"input": "hi", "stream": False, "stream_options": {"include_obfuscation": False}})
    assert result.stream is False
    assert result.body["stream"] is False
    assert "stream_options" not in result.body


def test_plan_carries_the_configured_stream_options() -> None:
    options = StreamOptions(parse_think_tags=False, reasoning_starts_open=True, reasoning_presentation="raw")
    assert plan({"input": "hi"}, stream_options=options).options is options


@pytest.mark.parametrize(
    "fields",
    [
        {"store": True},
        {"truncation": "auto"},
        {"service_tier": "default"},
        {"prompt_cache_key": "k"},
        {"prompt_cache_retention": "24h"},
        {"safety_identifier": "s"},
        {"include": ["reasoning.encrypted_content"]},
        {"text": {"verbosity": "high"}},
        {"reasoning": {"summary": "detailed"}},
        {"background": False},
    ],
    ids=lambda f: next(iter(f)),
)
def test_parameters_accepted_without_effect(fields: dict[str, Any]) -> None:
    assert chat({"input": "hi", **fields}) == chat({"input": "hi"})


# --- 7b. logprobs and token tracking ---------------------------------------------------------------

LOGPROBS = "message.output_text.logprobs"
TRACKING_KEYS = ("logprobs", "top_logprobs", "return_tokens_as_token_ids", "return_token_ids")


def test_no_logprobs_by_default() -> None:
    result = plan({"input": "hi"})
    assert not set(TRACKING_KEYS) & set(result.body)
    assert (result.text_logprobs, result.track_tokens, result.tokenize) == (None, False, None)


@pytest.mark.parametrize(("top_logprobs", "expected"), [(None, 0), (0, 0), (5, 5), (20, 20)])
def test_include_logprobs_asks_vllm_for_them(top_logprobs: Any, expected: int) -> None:
    body: dict[str, Any] = {"input": "hi", "include": ["reasoning.encrypted_content", LOGPROBS]}
    if top_logprobs is not None:
        body["top_logprobs"] = top_logprobs
    result = plan(body)
    assert result.text_logprobs == expected  # alternatives per token the client gets
    assert (result.body["logprobs"], result.body["top_logprobs"]) == (True, expected)
    assert "return_tokens_as_token_ids" not in result.body
    assert result.response.top_logprobs == (top_logprobs or 0)


def test_top_logprobs_without_include_asks_for_nothing() -> None:
    result = plan({"input": "hi", "top_logprobs": 3})
    assert not set(TRACKING_KEYS) & set(result.body)
    assert result.text_logprobs is None
    assert result.response.top_logprobs == 3


def test_token_tracking_asks_for_token_ids_and_plans_a_tokenize_call() -> None:
    result = plan(
        {
            "input": "hi",
            "instructions": "sys",
            "tools": [WEATHER_TOOL],
            "temperature": 0.5,
            "max_output_tokens": 64,
            "chat_template_kwargs": {"enable_thinking": False},
        },
        return_token_id_information=True,
    )
    body = result.body
    assert (body["logprobs"], body["top_logprobs"], body["return_tokens_as_token_ids"]) == (True, 0, True)
    assert "return_token_ids" not in body
    assert result.track_tokens is True and result.text_logprobs is None
    # /tokenize gets exactly the prompt-deciding fields of the generation request (DESIGN.md).
    assert result.tokenize == {
        "model": MODEL,
        "messages": body["messages"],
        "tools": body["tools"],
        "chat_template_kwargs": {"enable_thinking": False},
        "add_generation_prompt": True,
    }


def test_token_tracking_tokenize_body_without_tools_or_kwargs() -> None:
    result = plan({"input": "hi"}, return_token_id_information=True)
    assert result.tokenize == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "add_generation_prompt": True,
    }


def test_inline_prompt_token_ids_replace_the_tokenize_call() -> None:
    result = plan({"input": "hi"}, return_token_id_information=True, request_prompt_and_generation_token_ids=True)
    assert result.body["return_token_ids"] is True and result.body["return_tokens_as_token_ids"] is True
    assert result.tokenize is None


def test_token_tracking_keeps_the_clients_top_logprobs() -> None:
    result = plan({"input": "hi", "include": [LOGPROBS], "top_logprobs": 4}, return_token_id_information=True)
    assert (result.body["top_logprobs"], result.text_logprobs, result.track_tokens) == (4, 4, True)


def test_llama_cpp_flavour_asks_for_ids_its_way() -> None:
    """llama.cpp gives each token's id in logprobs (no return_tokens_as_token_ids) and sends logprobs
    only with at least one alternative; its prompt ids always come from /tokenize."""
    result = plan({"input": "hi"}, return_token_id_information=True, request_prompt_and_generation_token_ids=True,
                  upstream_flavour="llama.cpp")
    assert (result.body["logprobs"], result.body["top_logprobs"]) == (True, 1)
    assert "return_tokens_as_token_ids" not in result.body and "return_token_ids" not in result.body
    assert result.tokenize is not None and result.tokenize["messages"] == [{"role": "user", "content": "hi"}]
    client = plan({"input": "hi", "include": [LOGPROBS]}, upstream_flavour="llama.cpp")
    assert client.body["top_logprobs"] == 1 and client.text_logprobs == 0


def test_token_tracking_needs_one_choice() -> None:
    error = rejected({"input": "hi"}, return_token_id_information=True, extra_body={"n": 2})
    assert (error.param, error.code) == ("n", "invalid_value") and error.message
    assert chat({"input": "hi"}, extra_body={"n": 2})["n"] == 2  # fine without tracking


# --- 8. precedence (NeMo Gym) ----------------------------------------------------------------------


def test_config_extra_body_reaches_the_body() -> None:
    body = chat({"input": "hi"}, extra_body={"skip_special_tokens": False, "top_k": 5})
    assert body["skip_special_tokens"] is False and body["top_k"] == 5


def test_metadata_extra_body_beats_config_extra_body() -> None:
    body = chat(
        {"input": "hi", "metadata": {"extra_body": json.dumps({"top_k": 7, "min_p": 0.1})}},
        extra_body={"top_k": 5, "seed": 1},
    )
    assert (body["top_k"], body["min_p"], body["seed"]) == (7, 0.1, 1)


def test_request_fields_beat_metadata_extra_body() -> None:
    body = chat(
        {
            "input": "hi",
            "temperature": 0.3,
            "top_k": 3,
            "metadata": {"extra_body": json.dumps({"temperature": 0.2, "top_k": 2, "seed": 2})},
        },
        extra_body={"temperature": 0.1},
    )
    assert (body["temperature"], body["top_k"], body["seed"]) == (0.3, 3, 2)


def test_sampling_overrides_beat_everything() -> None:
    body = chat(
        {"input": "hi", "temperature": 0.3, "top_p": 0.5, "metadata": {"extra_body": json.dumps({"temperature": 0.2})}},
        extra_body={"temperature": 0.1},
        sampling_overrides={"temperature": 1.0, "top_p": 1.0},
    )
    assert (body["temperature"], body["top_p"]) == (1.0, 1.0)


def test_model_messages_and_stream_cannot_be_overridden_by_extra_body() -> None:
    body = chat(
        {
            "model": "client-model",
            "input": "hi",
            "metadata": {"extra_body": json.dumps({"model": "m2", "messages": []})},
        },
        extra_body={"model": "m1", "stream": True, "stream_options": {"include_usage": False}},
    )
    assert body["model"] == MODEL
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert body["stream"] is False
    # The streaming request still asks for usage whatever extra_body says.
    streamed = chat({"input": "hi", "stream": True}, extra_body={"stream_options": {"include_usage": False}})
    assert streamed["stream_options"] == {"include_usage": True}


def test_chat_template_kwargs_precedence() -> None:
    body = chat(
        {
            "input": "hi",
            "metadata": {
                "chat_template_kwargs": json.dumps({"enable_thinking": True, "b": "metadata", "c": "metadata"})
            },
            "chat_template_kwargs": {"c": "request", "d": "request"},
        },
        chat_template_kwargs={"enable_thinking": False, "a": "config", "b": "config"},
    )
    # NeMo Gym's order: config < the request's own < metadata.
    assert body["chat_template_kwargs"] == {
        "enable_thinking": True,
        "a": "config",
        "b": "metadata",
        "c": "metadata",
        "d": "request",
    }


def test_request_chat_template_kwargs_are_dropped_unless_forwarded() -> None:
    # NeMo Gym's forward_request_chat_template_kwargs: false (its default) drops them.
    body = chat({"input": "hi", "chat_template_kwargs": {"enable_thinking": True}},
                forward_request_chat_template_kwargs=False, chat_template_kwargs={"a": 1})
    assert body["chat_template_kwargs"] == {"a": 1}


@pytest.mark.parametrize(
    ("body", "settings", "expected"),
    [
        ({"input": "hi"}, {"chat_template_kwargs": {"enable_thinking": False}}, {"enable_thinking": False}),
        (
            {"input": "hi", "metadata": {"chat_template_kwargs": '{"enable_thinking": true}'}},
            {},
            {"enable_thinking": True},
        ),
        ({"input": "hi", "chat_template_kwargs": {"enable_thinking": True}}, {}, {"enable_thinking": True}),
    ],
    ids=["config", "metadata", "request"],
)
def test_chat_template_kwargs_from_each_source(body: dict[str, Any], settings: dict[str, Any], expected: Any) -> None:
    assert chat(body, **settings)["chat_template_kwargs"] == expected


def test_no_chat_template_kwargs_means_no_key() -> None:
    assert "chat_template_kwargs" not in chat({"input": "hi", "metadata": {"chat_template_kwargs": "{}"}})


def test_settings_are_not_mutated_by_the_body() -> None:
    extra = {"nested": {"x": 1}}
    overrides = {"logit_bias": {"1": 0.5}}
    kwargs = {"enable_thinking": False}
    settings = ConversionSettings(
        model=MODEL, extra_body=copy.deepcopy(extra), sampling_overrides=copy.deepcopy(overrides),
        chat_template_kwargs=dict(kwargs),
    )
    first = plan_chat_request(decode_request(b'{"input": "hi"}'), settings, response_id="r1", created_at=1)
    first.body["nested"]["x"] = 2
    first.body["logit_bias"]["1"] = 9.0
    first.body["chat_template_kwargs"]["enable_thinking"] = True
    assert settings.extra_body == extra
    assert settings.sampling_overrides == overrides
    assert settings.chat_template_kwargs == kwargs
    second = plan_chat_request(decode_request(b'{"input": "hi"}'), settings, response_id="r2", created_at=2)
    assert second.body["nested"] == {"x": 1} and second.body["logit_bias"] == {"1": 0.5}


# --- 9. errors -------------------------------------------------------------------------------------

ERROR_CASES = [
    # body, param, code
    pytest.param(b'{"input": ', None, "invalid_json", id="malformed_json"),
    pytest.param(b'{"input": "hi"} trailing', None, "invalid_json", id="trailing_garbage"),
    pytest.param(b"", None, "invalid_json", id="empty_body"),
    pytest.param(b"\xff", None, "invalid_json", id="invalid_utf8_outside_a_string"),
    # msgspec raises UnicodeDecodeError (not DecodeError) for these: once a 500 from the server.
    pytest.param(b'{"input": "caf\xc3"}', None, "invalid_json", id="invalid_utf8_inside_a_string"),
    pytest.param(b'{"input": "hi", "user": "\xed\xa0\x80"}', None, "invalid_json", id="utf8_encoded_surrogate"),
    pytest.param(b"[]", None, "invalid_type", id="body_not_an_object"),
    pytest.param({}, "input", "missing_required_parameter", id="missing_input"),
    pytest.param({"input": 5}, "input", "invalid_type", id="input_wrong_type"),
    pytest.param({"input": "hi", "temperature": "hot"}, "temperature", "invalid_type", id="temperature_wrong_type"),
    pytest.param({"input": "hi", "stream": "yes"}, "stream", "invalid_type", id="stream_wrong_type"),
    pytest.param({"input": "hi", "max_output_tokens": 1.5}, "max_output_tokens", "invalid_type", id="max_tokens_float"),
    pytest.param({"input": "hi", "frobnicate": 1}, "frobnicate", "unknown_parameter", id="unknown_parameter"),
    pytest.param({"input": []}, "input", "empty_array", id="empty_input"),
    pytest.param({"input": ["hi"]}, "input[0]", "invalid_type", id="item_not_an_object"),
    pytest.param({"input": [user("a"), {"role": "user", "content": 5}]}, "input[1].content", "invalid_type", id="content_wrong_type"),
    pytest.param(
        {"input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
        "input[0].content[0].text", "invalid_type", id="part_text_wrong_type",
    ),
    pytest.param({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type", "unsupported_value", id="unknown_item_type"),
    pytest.param({"input": [{"content": "no role, no type"}]}, "input[0].type", "unsupported_value", id="item_without_type_or_role"),
    pytest.param(
        {"input": [{"role": "user", "content": [{"text": "x"}]}]},
        "input[0].content[0].type", "missing_required_parameter", id="part_without_type",
    ),
    pytest.param(
        {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]},
        "input[0].call_id", "missing_required_parameter", id="function_call_without_call_id",
    ),
    pytest.param(
        {"input": [{"type": "function_call", "call_id": "c", "arguments": "{}"}]},
        "input[0].name", "missing_required_parameter", id="function_call_without_name",
    ),
    pytest.param(
        {"input": [{"type": "function_call_output", "output": "x"}]},
        "input[0].call_id", "missing_required_parameter", id="function_call_output_without_call_id",
    ),
    pytest.param({"input": [{"type": "message", "role": "user"}]}, "input[0].content", "missing_required_parameter", id="message_without_content"),
    pytest.param({"input": [{"type": "reasoning", "summary": None}]}, "input[0].summary", "invalid_type", id="reasoning_summary_null"),
    pytest.param(
        {"input": [user("q"), {"role": "user", "content": [{"type": "refusal", "refusal": "no"}]}]},
        "input[1].content[0].type", "invalid_value", id="refusal_in_user_message",
    ),
    pytest.param(
        {"input": [{"role": "assistant", "content": [{"type": "input_image", "image_url": "https://x/y.png"}]}]},
        "input[0].content[0].type", "invalid_value", id="image_in_assistant_message",
    ),
    pytest.param(
        {"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file_123"}]}]},
        "input[0].content[0].image_url", "missing_required_parameter", id="image_by_file_id",
    ),
    pytest.param(
        {"input": [user("q"), call("c1", prompt_token_ids=[1])]},
        "input[1].generation_token_ids", "invalid_value", id="token_keys_only_prompt",
    ),
    pytest.param(
        {"input": [call("c1", prompt_token_ids=[1], generation_token_ids=[2])]},
        "input[0].generation_log_probs", "invalid_value", id="token_keys_without_log_probs",
    ),
    pytest.param(
        {"input": [reasoning("r", generation_token_ids=[2], generation_log_probs=[0.0])]},
        "input[0].prompt_token_ids", "invalid_value", id="token_keys_without_prompt",
    ),
    pytest.param(
        {"input": [assistant("a", prompt_token_ids=[1], generation_token_ids=[2, 3], generation_log_probs=[0.0])]},
        "input[0].generation_log_probs", "invalid_value", id="token_keys_length_mismatch",
    ),
    pytest.param({"input": "hi", "tools": [{"type": 3}]}, "tools[0].type", "invalid_type", id="tool_type_not_string"),
    pytest.param({"input": "hi", "tools": [{"type": "namespace", "name": "ns"}]}, "tools[0].tools", "invalid_type",
                 id="namespace_without_tools"),
    pytest.param({"input": "hi", "tools": [{"type": "namespace", "name": "ns", "tools": [{"type": "web_search"}]}]},
                 "tools[0].tools[0].type", "invalid_value", id="namespace_holding_a_hosted_tool"),
    pytest.param({"input": "hi", "tools": [{"type": "custom", "name": "p", "format": {"type": "regex"}}]},
                 "tools[0].format.type", "invalid_value", id="custom_tool_unknown_format"),
    pytest.param({"input": "hi", "tools": [WEATHER_TOOL, dict(WEATHER_TOOL)]}, "tools[1].name", "duplicate_value",
                 id="tool_declared_twice"),
    pytest.param({"input": "hi", "tools": [WEATHER_TOOL], "tool_choice": {"type": "allowed_tools", "mode": "auto",
                  "tools": [{"type": "function", "name": "nope"}]}}, "tool_choice.tools[0].name", "invalid_value",
                 id="allowed_tools_names_an_unknown_tool"),
    pytest.param({"input": "hi", "tools": [{"type": "web_search"}], "tool_choice": {"type": "allowed_tools",
                  "mode": "required", "tools": [{"type": "web_search"}]}}, "tool_choice.tools", "invalid_value",
                 id="allowed_tools_required_allows_only_hosted_tools"),
    pytest.param(
        {"input": "hi", "tools": [WEATHER_TOOL, {"type": "function", "name": "f", "parameters": "{}"}]},
        "tools[1].parameters", "invalid_type", id="tool_parameters_not_object",
    ),
    pytest.param({"input": "hi", "tools": [{"type": "function"}]}, "tools[0].name", "missing_required_parameter", id="tool_without_name"),
    pytest.param(
        {"input": "hi", "tools": [{"type": "function", "name": "f", "description": 3}]},
        "tools[0].description", "invalid_type", id="tool_description_not_string",
    ),
    pytest.param({"input": "hi", "tools": ["f"]}, "tools[0]", "invalid_type", id="tool_not_an_object"),
    pytest.param({"input": "hi", "tool_choice": "required"}, "tool_choice", "invalid_value", id="tool_choice_required_without_tools"),
    pytest.param(
        {"input": "hi", "tool_choice": {"type": "function", "name": "f"}},
        "tool_choice.name", "invalid_value", id="tool_choice_function_without_tools",
    ),
    pytest.param({"input": "hi", "tools": [WEATHER_TOOL], "tool_choice": "sometimes"}, "tool_choice", "invalid_value", id="tool_choice_bad_string"),
    pytest.param(
        {"input": "hi", "tools": [WEATHER_TOOL], "tool_choice": {"type": "file_search"}},
        "tool_choice.type", "unsupported_value", id="tool_choice_bad_type",
    ),
    pytest.param({"input": "hi", "previous_response_id": "resp_1"}, "previous_response_id", "unsupported_parameter", id="previous_response_id"),
    pytest.param({"input": "hi", "background": True}, "background", "unsupported_parameter", id="background"),
    pytest.param({"input": "hi", "conversation": "conv_1"}, "conversation", "unsupported_parameter", id="conversation"),
    pytest.param({"input": "hi", "prompt": {"id": "pmpt_1"}}, "prompt", "unsupported_parameter", id="prompt"),
    pytest.param({"input": "hi", "max_tool_calls": -1}, "max_tool_calls", "integer_below_min_value", id="max_tool_calls_negative"),
    pytest.param({"input": "hi", "moderation": {"model": "omni-moderation-latest"}}, "moderation", "unsupported_parameter", id="moderation"),
    pytest.param({"input": "hi", "prompt_cache_options": {"prewarm": True}}, "prompt_cache_options.prewarm", "unsupported_parameter", id="prewarm"),
    pytest.param({"input": "hi", "top_logprobs": 21}, "top_logprobs", "invalid_value", id="top_logprobs_above_20"),
    pytest.param({"input": "hi", "top_logprobs": -1}, "top_logprobs", "invalid_value", id="top_logprobs_negative"),
    pytest.param({"input": "hi", "temperature": 2.5}, "temperature", "invalid_value", id="temperature_above_2"),
    pytest.param({"input": "hi", "temperature": -0.1}, "temperature", "invalid_value", id="temperature_negative"),
    pytest.param({"input": "hi", "top_p": 1.5}, "top_p", "invalid_value", id="top_p_above_1"),
    pytest.param({"input": "hi", "top_p": -0.5}, "top_p", "invalid_value", id="top_p_negative"),
    pytest.param({"input": "hi", "max_output_tokens": 0}, "max_output_tokens", "integer_below_min_value", id="max_output_tokens_0"),
    pytest.param({"input": "hi", "max_output_tokens": -5}, "max_output_tokens", "integer_below_min_value", id="max_output_tokens_negative"),
    pytest.param({"input": "hi", "metadata": {"extra_body": "{not json"}}, "metadata.extra_body", "invalid_value", id="metadata_extra_body_bad_json"),
    pytest.param({"input": "hi", "metadata": {"extra_body": "[1, 2]"}}, "metadata.extra_body", "invalid_value", id="metadata_extra_body_not_object"),
    pytest.param(
        {"input": "hi", "metadata": {"chat_template_kwargs": "enable_thinking=false"}},
        "metadata.chat_template_kwargs", "invalid_value", id="metadata_chat_template_kwargs_bad_json",
    ),
    pytest.param({"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type", "invalid_value", id="text_format_unknown"),
    pytest.param({"input": "hi", "text": {"format": {}}}, "text.format.type", "invalid_value", id="text_format_without_type"),
    pytest.param(
        {"input": "hi", "text": {"format": {"type": "json_schema", "name": "n"}}},
        "text.format.schema", "missing_required_parameter", id="json_schema_without_schema",
    ),
    pytest.param(
        {"input": [{"role": "user", "content": [{"type": "bogus_part", "text": "x"}]}]},
        "input[0].content[0].type", "invalid_value", id="unknown_content_part_type",
    ),
    pytest.param(
        {"input": [{"role": "robot", "content": "x"}]}, "input[0].role", "invalid_value", id="unknown_role",
    ),
    pytest.param(
        {"input": "hi", "metadata": {"n": 1}}, "metadata.n", "invalid_type", id="metadata_value_not_string",
    ),
    pytest.param(
        {"input": "hi", "tools": [WEATHER_TOOL], "tool_choice": {"type": "function"}},
        "tool_choice.name", "missing_required_parameter", id="tool_choice_function_without_name",
    ),
]


@pytest.mark.parametrize(("body", "param", "code"), ERROR_CASES)
def test_invalid_requests(body: Union[dict[str, Any], bytes], param: Any, code: str) -> None:
    error = rejected(body)
    assert isinstance(error.message, str) and error.message.strip()
    assert (error.param, error.code) == (param, code)
    assert str(error) == error.message


def test_unknown_content_part_and_role_errors_name_the_field() -> None:
    """Unknown part types and roles name the exact field and the offending value."""
    part = rejected({"input": [{"role": "user", "content": [{"type": "bogus_part", "text": "x"}]}]})
    assert part.param == "input[0].content[0].type" and "bogus_part" in part.message
    role = rejected({"input": [user("ok"), {"role": "robot", "content": "x"}]})
    assert role.param == "input[1].role" and "robot" in role.message


def test_token_keys_are_validated_even_when_tracking_is_off() -> None:
    error = rejected({"input": [call("c1", prompt_token_ids=[1])]}, return_token_id_information=False)
    assert error.param == "input[0].generation_token_ids"


def test_unknown_parameter_message_names_it() -> None:
    assert "frobnicate" in rejected({"input": "hi", "frobnicate": 1}).message


def test_error_position_counts_items() -> None:
    items = [user("a"), call("c1"), call_output("c1"), {"type": "function_call", "call_id": "c2", "name": "f"}]
    assert rejected({"input": items}).param == "input[3].arguments"


# --- 10. the Response skeleton ---------------------------------------------------------------------


def test_response_skeleton_defaults() -> None:
    response = plan({"input": "hi"}).response
    assert (response.id, response.created_at, response.status, response.model) == (
        RESPONSE_ID, CREATED_AT, "in_progress", MODEL
    )
    assert response.object == "response"
    assert response.output == []
    assert response.instructions is None
    assert response.tools == []
    assert response.tool_choice == "auto"
    assert response.parallel_tool_calls is True
    assert response.text == {"format": {"type": "text"}}
    assert response.reasoning == {"effort": None, "summary": None}
    assert response.metadata == {}
    # The sampling values sent to vLLM, OpenAI's defaults made explicit (the Open Responses schema
    # wants numbers, and the echo must be what was used).
    assert (response.temperature, response.top_p, response.presence_penalty, response.frequency_penalty) == (
        1.0, 1.0, 0.0, 0.0)
    assert (response.top_logprobs, response.max_output_tokens, response.max_tool_calls, response.user) == (
        0, None, None, None)
    assert (response.store, response.background, response.service_tier, response.truncation) == (
        False, False, "default", "disabled")
    assert (response.safety_identifier, response.prompt_cache_key, response.completed_at) == (None, None, None)


def test_response_skeleton_echoes_the_request() -> None:
    tool_choice = {"type": "function", "name": "get_weather"}
    fmt = {"type": "json_schema", "name": "answer", "schema": {"type": "object"}}
    metadata = {"task": "t1", "chat_template_kwargs": '{"enable_thinking": false}'}
    response = plan(
        {
            "model": "client-model",
            "input": "hi",
            "instructions": "Be brief.",
            "tools": [WEATHER_TOOL],
            "tool_choice": tool_choice,
            "parallel_tool_calls": False,
            "temperature": 0.7,
            "top_p": 0.9,
            "max_output_tokens": 256,
            "metadata": metadata,
            "reasoning": {"effort": "low", "summary": "concise"},
            "text": {"format": fmt},
            "user": "user-42",
        }
    ).response
    assert response.model == MODEL
    assert response.instructions == "Be brief."
    assert response.tools == [WEATHER_TOOL]  # echoed as sent, strict included
    assert response.tool_choice == tool_choice  # the Responses form, not the Chat one
    assert response.parallel_tool_calls is False
    assert (response.temperature, response.top_p, response.max_output_tokens) == (0.7, 0.9, 256)
    assert response.metadata == metadata
    assert response.reasoning == {"effort": "low", "summary": "concise"}
    assert response.text == {"format": fmt}
    assert response.user == "user-42"


@pytest.mark.parametrize("choice", ["none", "required"])
def test_response_echoes_tool_choice_string(choice: str) -> None:
    assert plan({"input": "hi", "tools": [WEATHER_TOOL], "tool_choice": choice}).response.tool_choice == choice


def test_response_skeleton_encodes_to_json() -> None:
    encoded = json.loads(msgspec.json.encode(plan({"input": "hi", "instructions": "I"}).response))
    assert encoded["id"] == RESPONSE_ID and encoded["object"] == "response"
    assert encoded["status"] == "in_progress" and encoded["instructions"] == "I"
    assert encoded["tool_choice"] == "auto" and encoded["text"] == {"format": {"type": "text"}}
    assert encoded["output"] == [] and encoded["previous_response_id"] is None and encoded["store"] is False


def test_response_metadata_is_a_copy() -> None:
    result = plan({"input": "hi", "metadata": {"k": "v"}})
    result.response.metadata["k"] = "changed"
    assert plan({"input": "hi", "metadata": {"k": "v"}}).response.metadata == {"k": "v"}
