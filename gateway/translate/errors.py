"""The error the pure core raises for a request it cannot honour; the server turns it into an
OpenAI-style 400 (``{"error": {"message", "type", "param", "code"}}``)."""

from __future__ import annotations

import re
from typing import Optional

import msgspec


class InvalidRequest(Exception):
    status = 400  # the HTTP status; a subclass may say 404 (a stored response that does not exist)

    def __init__(self, message: str, param: Optional[str] = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
# The name runs to the last backtick: a field may be called "" or contain a backtick itself.
_UNKNOWN_FIELD = re.compile(r"^Object contains unknown field `(?P<name>.*)`$", re.S)
_MISSING_FIELD = re.compile(r"^Object missing required field `(?P<name>.*)`$", re.S)


def from_validation_error(exc: msgspec.ValidationError, prefix: str = "") -> InvalidRequest:
    """Turn msgspec's ``"Expected `str`, got `int` - at `$.input[0].content`"`` into an
    InvalidRequest whose ``param`` is ``input[0].content`` (OpenAI's notation)."""
    text = str(exc)
    path = ""
    match = _PATH.search(text)
    if match:
        path = match.group("path")
        text = text[: match.start()]
        if "[...]" in path:  # msgspec's notation for "some key of a mapping": name the mapping
            path = path[: path.index("[...]")]
    param = (prefix + path).lstrip(".") or None
    unknown = _UNKNOWN_FIELD.match(text)
    if unknown:
        name = unknown.group("name")
        full = f"{param}.{name}" if param else name
        return InvalidRequest(f"Unknown parameter: '{full}'.", param=full, code="unknown_parameter")
    missing = _MISSING_FIELD.match(text)
    if missing:
        name = missing.group("name")
        full = f"{param}.{name}" if param else name
        return InvalidRequest(f"Missing required parameter: '{full}'.", param=full, code="missing_required_parameter")
    where = f" at '{param}'" if param else ""
    # "Expected `str`, got `int`" is a type error; "Invalid enum value 'robot'" a value error.
    code = "invalid_type" if text.startswith("Expected") else "invalid_value"
    return InvalidRequest(f"Invalid value{where}: {text}.", param=param, code=code)
