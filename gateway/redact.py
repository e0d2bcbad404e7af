"""The one place that takes configured secrets out of text leaving the process.

What is secret: the upstream ``api_key`` (and ``Bearer <key>``), the gateway's own client keys,
secret-looking ``default_headers`` values (Authorization, X-Api-Key, ...), credentials written in a
``base_url`` (the password, ``user:password`` and its base64 form as sent in ``Basic`` auth) and,
whatever the configuration, the password of any ``scheme://user:password@`` URL in any text.

Where it is applied (each boundary calls ``scrub``/``scrub_bytes``, nothing else masks): every
non-streamed HTTP answer (``errors_middleware``: errors, ``/health``, ``/metrics``, ``/v1/models``),
the terminal events of a stream (``error``, ``response.failed``, ``response.incomplete``: where
upstream text reaches a client), every log line (the formatters), the transport log, configuration
errors. Upstream error text is the usual carrier: vLLM or a proxy in front of it may echo the
request's ``Authorization`` header in its error message.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Iterable
from urllib.parse import unquote, urlsplit

import orjson

MASK = "***"
_MIN_LENGTH = 4  # shorter values would garble every message and protect nothing
_NOT_SECRET = {"EMPTY", "none", "None", "null"}  # NeMo Gym's placeholder key, and friends
# the password of any URL with credentials: scheme://user:password@host
_URL_PASSWORD = re.compile(r"(?<=://)([^/?#@\s:]*):[^/?#@\s]*@")
_URL_PASSWORD_BYTES = re.compile(rb"(?<=://)([^/?#@\s:]*):[^/?#@\s]*@")
_SECRET_HEADER_WORDS = ("auth", "api-key", "apikey", "token", "secret", "password", "cookie")


class Secrets:
    def __init__(self, values: Iterable[str] = ()) -> None:
        found: set[str] = set()
        for value in values:
            value = value.strip()
            if len(value) >= _MIN_LENGTH and value not in _NOT_SECRET:
                found.add(value)
        self._text = sorted(found, key=len, reverse=True)  # longest first: a secret containing another goes whole
        forms: set[bytes] = set()
        for value in found:
            forms.add(value.encode("utf-8", "surrogatepass"))
            forms.add(orjson.dumps(value)[1:-1])  # as it appears inside a JSON string
        self._bytes = sorted(forms, key=len, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._text)

    def scrub(self, text: str) -> str:
        for value in self._text:
            if value in text:
                text = text.replace(value, MASK)
        if "://" in text and "@" in text:
            text = _URL_PASSWORD.sub(r"\1:" + MASK + "@", text)
        return text

    def scrub_bytes(self, data: bytes) -> bytes:
        for value in self._bytes:
            if value in data:
                data = data.replace(value, MASK.encode())
        if b"://" in data and b"@" in data:
            data = _URL_PASSWORD_BYTES.sub(rb"\1:" + MASK.encode() + b"@", data)
        return data


def url_credentials(url: str) -> list[str]:
    """The secret forms of the credentials in a URL: the password (as written and decoded),
    ``user:password`` and its base64 (what ``Authorization: Basic`` carries)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    if parts.password is None:
        return []
    user, password = unquote(parts.username or ""), unquote(parts.password)
    pair = f"{user}:{password}"
    return [parts.password, password, pair, base64.b64encode(pair.encode()).decode()]


def is_secret_header(name: str) -> bool:
    lowered = name.lower().replace("_", "-")
    return any(word in lowered for word in _SECRET_HEADER_WORDS)


def secrets_of(config: Any, client_keys: Iterable[str] = ()) -> Secrets:
    """Every secret of a loaded ``Config`` (plus the client keys read from ``api_keys_file``)."""
    model, gateway = config.model_server, config.gateway
    values = [model.api_key, *gateway.api_keys, *client_keys, getattr(gateway, "inspect_admin_key", None) or ""]
    for name, value in model.default_headers.items():
        if is_secret_header(name):
            values.append(value)
            scheme, _, credential = value.partition(" ")
            if credential and scheme.lower() in ("bearer", "basic", "token"):
                values.append(credential)
    for url in [*model.base_url, getattr(gateway, "redis_url", None) or ""]:
        values += url_credentials(url)
    return Secrets(values)
