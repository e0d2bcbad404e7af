"""Tools the client declares -> the functions the model is offered, and the way back (pure).

A Chat Completions server knows one kind of tool, the function. The Responses API has more:

- ``function``: offered as it is;
- ``namespace``: a group of functions (and custom tools) under a name; each member is offered as a
  function named ``<namespace>__<name>``, and a call to it comes back as a ``function_call`` with
  ``namespace`` set and the member's own ``name`` (the openai SDK's shape, what Codex reads);
- ``custom``: free-form text input (Codex's ``apply_patch``): offered as a function with one string
  argument, ``input`` (the grammar, if any, is put in the description); a call comes back as a
  ``custom_tool_call`` whose ``input`` is that string, decoded as it streams (``CustomInputDecoder``);
- everything else (``web_search``, ``file_search``, ``code_interpreter``, ``image_generation``,
  remote ``mcp``, computer use, ...) is run by OpenAI's servers or needs their models: left out of
  the model's request (the server logs it) or, with ``gateway.hosted_tools: reject``, refused.

``tool_choice`` maps onto the offered names; ``allowed_tools`` is enforced by offering the model
only the allowed tools (vLLM has no ``allowed_tools``), with its ``mode`` as the Chat Completions
``tool_choice``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Optional

from .errors import InvalidRequest

NAMESPACE_SEPARATOR = "__"
CUSTOM_INPUT_ARGUMENT = "input"
OFFERED_KINDS = ("function", "custom", "namespace")


@dataclass(frozen=True)
class ToolTarget:
    """What the client declared behind one offered function name."""

    kind: str  # "function" | "custom"
    name: str
    namespace: Optional[str] = None


def offered_name(name: str, namespace: Optional[str] = None) -> str:
    """The name a declared tool is offered under (a namespace's function: ``namespace__name``). A
    history item sent back by the client gets the same, declared this time or not."""
    return f"{namespace}{NAMESPACE_SEPARATOR}{name}" if namespace else name


@dataclass
class OfferedTools:
    """The functions the model is offered, and what each name means to the client."""

    functions: list[dict[str, Any]] = field(default_factory=list)  # Chat Completions ``tools``
    targets: dict[str, ToolTarget] = field(default_factory=dict)  # offered name -> declared tool
    left_out: list[str] = field(default_factory=list)  # types of the tools not offered (hosted)

    def select(self, names: set[str]) -> list[dict[str, Any]]:
        return [tool for tool in self.functions if tool["function"]["name"] in names]


def offer_tools(tools: Optional[list[Any]], reject_hosted: bool = False) -> OfferedTools:
    offered = OfferedTools()
    for i, tool in enumerate(tools or []):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise InvalidRequest(f"Invalid '{where}': expected an object.", param=where, code="invalid_type")
        kind = tool.get("type")
        if kind == "namespace":
            namespace = _name(tool, where)
            members = tool.get("tools")
            if not isinstance(members, list):
                raise InvalidRequest(f"Invalid '{where}.tools': a namespace needs a list of tools.",
                                     param=f"{where}.tools", code="invalid_type")
            context = tool.get("description")
            for j, member in enumerate(members):
                member_where = f"{where}.tools[{j}]"
                member_kind = member.get("type") if isinstance(member, dict) else None
                if member_kind not in ("function", "custom"):
                    raise InvalidRequest(
                        f"Invalid '{member_where}.type': a namespace holds 'function' and 'custom' tools, "
                        f"not {member_kind!r}.", param=f"{member_where}.type", code="invalid_value")
                _add(offered, member, member_where, namespace, context if isinstance(context, str) else None)
        elif kind in ("function", "custom"):
            _add(offered, tool, where, None, None)
        elif not isinstance(kind, str) or not kind:
            raise InvalidRequest(f"Invalid '{where}.type': expected a tool type such as 'function', got {kind!r}.",
                                 param=f"{where}.type", code="invalid_type" if not isinstance(kind, str) else
                                 "invalid_value")
        elif reject_hosted:
            raise InvalidRequest(
                f"Invalid '{where}.type': {kind!r} tools are run by OpenAI's servers, and this gateway "
                "(in front of a Chat Completions server) cannot run them; it offers the model "
                "'function', 'custom' and 'namespace' tools.",
                param=f"{where}.type", code="unsupported_value")
        else:
            offered.left_out.append(str(kind))
    return offered


def _name(tool: dict[str, Any], where: str) -> str:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"Missing required parameter: '{where}.name'.", param=f"{where}.name",
                             code="missing_required_parameter")
    return name


def _add(offered: OfferedTools, tool: dict[str, Any], where: str, namespace: Optional[str],
         context: Optional[str]) -> None:
    name = _name(tool, where)
    kind = tool["type"]
    offered_as = offered_name(name, namespace)
    if offered_as in offered.targets:
        raise InvalidRequest(f"Invalid '{where}.name': a tool named {offered_as!r} was declared twice.",
                             param=f"{where}.name", code="duplicate_value")
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise InvalidRequest(f"Invalid '{where}.description': expected a string.", param=f"{where}.description",
                             code="invalid_type")
    if context:  # the namespace's description says what its functions are for
        description = f"{context}\n\n{description}" if description else context
    function: dict[str, Any] = {"name": offered_as}
    if kind == "function":
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(f"Invalid '{where}.parameters': a JSON Schema object is expected.",
                                 param=f"{where}.parameters", code="invalid_type")
        if description:
            function["description"] = description
        if parameters is not None:
            function["parameters"] = parameters
        # ``strict`` is not forwarded (as NeMo Gym): vLLM's tool parsers do not enforce it.
    else:
        grammar = _grammar(tool.get("format"), where)
        text = description or ""
        if grammar:
            text = f"{text}\n\n{grammar}" if text else grammar
        function["description"] = text or "A tool that takes free-form text."
        function["parameters"] = {
            "type": "object",
            "properties": {CUSTOM_INPUT_ARGUMENT: {"type": "string", "description": "The tool's whole input, as text."}},
            "required": [CUSTOM_INPUT_ARGUMENT],
            "additionalProperties": False,
        }
    offered.functions.append({"type": "function", "function": function})
    offered.targets[offered_as] = ToolTarget(kind, name, namespace)


def _grammar(fmt: Any, where: str) -> str:
    """A custom tool's input format, as words the model can follow (vLLM cannot enforce a Lark
    grammar on one argument of a tool call)."""
    if fmt is None:
        return ""
    if not isinstance(fmt, dict):
        raise InvalidRequest(f"Invalid '{where}.format': expected an object.", param=f"{where}.format",
                             code="invalid_type")
    if fmt.get("type") in (None, "text"):
        return ""
    if fmt.get("type") == "grammar":
        definition = fmt.get("definition")
        if not isinstance(definition, str) or not definition:
            raise InvalidRequest(f"Missing required parameter: '{where}.format.definition'.",
                                 param=f"{where}.format.definition", code="missing_required_parameter")
        syntax = fmt.get("syntax") or "lark"
        return f"The input must follow this {syntax} grammar:\n{definition}"
    raise InvalidRequest(f"Invalid '{where}.format.type': {fmt.get('type')!r}; expected 'text' or 'grammar'.",
                         param=f"{where}.format.type", code="invalid_value")


# --- tool_choice ----------------------------------------------------------------------------------


@dataclass
class ToolChoicePlan:
    functions: list[dict[str, Any]]  # what the model is offered (all tools, or the allowed ones)
    tool_choice: Any = None  # the Chat Completions tool_choice, None to leave it out


def plan_tool_choice(choice: Any, offered: OfferedTools) -> ToolChoicePlan:
    functions = offered.functions
    if choice is None:
        return ToolChoicePlan(functions)
    if isinstance(choice, str):
        if choice not in ("auto", "none", "required"):
            raise InvalidRequest(
                f"Invalid 'tool_choice': {choice!r}; expected 'auto', 'none', 'required' or an object.",
                param="tool_choice")
        if choice == "required" and not functions:
            raise InvalidRequest("tool_choice 'required' needs at least one tool the model can call.",
                                 param="tool_choice")
        return ToolChoicePlan(functions, choice if functions else None)
    if not isinstance(choice, dict):
        raise InvalidRequest("Invalid 'tool_choice': expected a string or an object.", param="tool_choice",
                             code="invalid_type")
    kind = choice.get("type")
    if kind in ("function", "custom"):
        name = choice.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("Missing required parameter: 'tool_choice.name'.", param="tool_choice.name",
                                 code="missing_required_parameter")
        offered_name = _find(offered, kind, name, choice.get("namespace"))
        if offered_name is None:
            raise InvalidRequest(f"tool_choice names the {kind} tool {name!r}, which is not among the tools.",
                                 param="tool_choice.name")
        return ToolChoicePlan(functions, {"type": "function", "function": {"name": offered_name}})
    if kind == "allowed_tools":
        mode = choice.get("mode", "auto")
        if mode not in ("auto", "required"):
            raise InvalidRequest(f"Invalid 'tool_choice.mode': {mode!r}; expected 'auto' or 'required'.",
                                 param="tool_choice.mode")
        entries = choice.get("tools")
        if not isinstance(entries, list):
            raise InvalidRequest("Missing required parameter: 'tool_choice.tools'.", param="tool_choice.tools",
                                 code="missing_required_parameter")
        allowed: set[str] = set()
        for i, entry in enumerate(entries):
            allowed |= _allowed(entry, offered, f"tool_choice.tools[{i}]")
        selected = offered.select(allowed)
        if mode == "required" and not selected:
            raise InvalidRequest("tool_choice 'allowed_tools' with mode 'required' allows no tool the model can call.",
                                 param="tool_choice.tools")
        return ToolChoicePlan(selected, mode if selected else None)
    raise InvalidRequest(
        f"Invalid 'tool_choice': type {kind!r} forces a tool that only OpenAI's servers run, or is unknown; "
        "use 'auto', 'none', 'required', {'type': 'function' | 'custom', 'name': ...} or 'allowed_tools'.",
        param="tool_choice.type", code="unsupported_value")


def _find(offered: OfferedTools, kind: str, name: str, namespace: Optional[str]) -> Optional[str]:
    """The offered name for a tool named in tool_choice: a top-level tool of that name first, then
    the one namespace member of that name."""
    matches = [offered_name for offered_name, target in offered.targets.items()
               if target.kind == kind and target.name == name and (namespace is None or target.namespace == namespace)]
    top_level = [m for m in matches if offered.targets[m].namespace is None]
    if top_level:
        return top_level[0]
    return matches[0] if len(matches) == 1 else None


def _allowed(entry: Any, offered: OfferedTools, where: str) -> set[str]:
    if not isinstance(entry, dict):
        raise InvalidRequest(f"Invalid '{where}': expected an object.", param=where, code="invalid_type")
    kind = entry.get("type")
    if kind in ("function", "custom"):
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidRequest(f"Missing required parameter: '{where}.name'.", param=f"{where}.name",
                                 code="missing_required_parameter")
        offered_name = _find(offered, kind, name, entry.get("namespace"))
        if offered_name is None:
            raise InvalidRequest(f"'{where}' allows the {kind} tool {name!r}, which is not among the tools.",
                                 param=f"{where}.name")
        return {offered_name}
    if kind == "namespace":
        name = entry.get("name")
        members = {o for o, target in offered.targets.items() if target.namespace == name}
        if not members:
            raise InvalidRequest(f"'{where}' allows the namespace {name!r}, which is not among the tools.",
                                 param=f"{where}.name")
        return members
    return set()  # a hosted tool: not offered to the model anyway


# --- custom tool input, decoded as it streams -----------------------------------------------------

# The only way an arguments string starts that lets its input be streamed: ``{"input": "``, with
# JSON whitespace where JSON allows it. Anything else is decoded at the end.
_OPENING = '{"input":"'
_WHITESPACE_BEFORE = {0, 1, 8, 9}  # positions in _OPENING before which whitespace may come
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


class CustomInputDecoder:
    """Turns the arguments of an offered custom-tool function (``{"input": "..."}``, arriving in
    pieces) into the tool's input text, piece by piece: ``feed`` returns the text that became
    certain, ``finish`` the rest once all arguments are in and the whole input."""

    __slots__ = ("_state", "_matched", "_escape", "_high", "_text", "_raw")

    def __init__(self) -> None:
        self._state = "opening"  # -> "string" -> "after"; or "whole" (decoded at the end)
        self._matched = 0  # characters of _OPENING seen
        self._escape = ""  # an escape sequence being read (starts with the backslash)
        self._high = ""  # a high surrogate waiting for its low half
        self._text: list[str] = []  # decoded so far (what feed returned)
        self._raw: list[str] = []

    def feed(self, piece: str) -> str:
        self._raw.append(piece)
        out: list[str] = []
        for ch in piece:
            state = self._state
            if state == "string":
                self._string_char(ch, out)
            elif state == "opening":
                if ch in " \t\r\n" and self._matched in _WHITESPACE_BEFORE:
                    continue
                if ch == _OPENING[self._matched]:
                    self._matched += 1
                    if self._matched == len(_OPENING):
                        self._state = "string"
                else:
                    self._state = "whole"
            elif state in ("after", "whole"):
                pass
        text = "".join(out)
        if text:
            self._text.append(text)
        return text

    def _string_char(self, ch: str, out: list[str]) -> None:
        if self._escape:
            self._escape += ch
            if self._escape[1] == "u":
                if len(self._escape) < 6:
                    return
                code = int(self._escape[2:], 16) if _is_hex(self._escape[2:]) else 0xFFFD
                self._escape = ""
                if 0xD800 <= code < 0xDC00:
                    self._flush_high(out)
                    self._high = chr(code)
                    return
                if 0xDC00 <= code < 0xE000 and self._high:
                    out.append((self._high + chr(code)).encode("utf-16", "surrogatepass").decode("utf-16"))
                    self._high = ""
                    return
                self._flush_high(out)
                out.append(chr(code) if not 0xDC00 <= code < 0xE000 else "\ufffd")
                return
            self._flush_high(out)
            out.append(_ESCAPES.get(ch, ch))
            self._escape = ""
            return
        if ch == "\\":
            self._escape = ch
            return
        self._flush_high(out)
        if ch == '"':
            self._state = "after"
            return
        out.append(ch)

    def _flush_high(self, out: list[str]) -> None:
        if self._high:  # a lone surrogate cannot be encoded: the replacement character stands for it
            out.append("\ufffd")
            self._high = ""

    @property
    def streamed(self) -> str:
        """What ``feed`` has returned so far."""
        return "".join(self._text)

    def finish(self) -> tuple[str, str]:
        """(the text not yet returned, the whole input)."""
        streamed = "".join(self._text)
        whole = _input_of("".join(self._raw))
        if self._state == "whole" or not streamed:
            whole = whole if whole is not None else "".join(self._raw)
            tail = whole[len(streamed):] if whole.startswith(streamed) else ""
            return tail, streamed + tail
        # Streamed: what was sent stands (a client has it already); the JSON can only add to it.
        if whole is not None and whole.startswith(streamed):
            return whole[len(streamed):], whole
        return "", streamed


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in text)


def _input_of(arguments: str) -> Optional[str]:
    """The input text in complete arguments: the ``input`` string, or the one string value of an
    object (a model that named the argument differently); None when there is none."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        if isinstance(value.get(CUSTOM_INPUT_ARGUMENT), str):
            return value[CUSTOM_INPUT_ARGUMENT]
        strings = [v for v in value.values() if isinstance(v, str)]
        if len(value) == 1 and strings:
            return strings[0]
    return None


def custom_arguments(text: str) -> str:
    """A custom tool call's input as the arguments of its offered function (history)."""
    return json.dumps({CUSTOM_INPUT_ARGUMENT: text}, ensure_ascii=False)
