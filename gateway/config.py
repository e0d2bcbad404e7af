"""Configuration loading, the way NeMo Gym configures its ``vllm_model`` server.

A gateway deployment is described by the same YAML a NeMo Gym user already has:

* one or more config files, deep-merged in order (later files win), each
  over the files its ``config_paths`` pull in;
* an ``env.yaml`` whose top-level keys are merged over the config files and are
  what ``${name}`` interpolations normally refer to (``policy_base_url``,
  ``policy_api_key``, ``policy_model_name``);
* dotted command-line overrides (``key.path=value``, ``+key.path=value``,
  ``~key.path``), applied last so they win over everything.

The precedence (config files < env.yaml < command line) is NeMo Gym's. The
model server block lives at ``<server_name>.responses_api_models.<name>`` (NeMo
Gym's form) or at the shorter ``<server_name>.<name>``; when both are present
the short one is merged over the long one, so an override written in the short
form patches a config written in the long form.

NeMo Gym's language beyond YAML (OmegaConf's interpolations and resolvers, Gym's
``_inherit_from`` / ``_copy`` / ``_delete_key`` and ``config_paths``) is in
``gym_config.py``. We deliberately do not depend on Hydra/OmegaConf: owning the
loader lets every error name the exact key path and keeps secrets out of messages.
"""

import difflib
import logging
import math
import os
import re
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, Optional
from urllib.parse import urlsplit, urlunsplit

import msgspec
import yaml

from .gym_config import CONFIG_PATHS_KEY, ConfigError, Resolver, apply_directives, load_config_files, load_yaml
from .gym_config import MISSING as _MISSING
from .gym_config import deep_merge as _deep_merge
from .gym_config import get_path as _get_path
from .gym_config import join as _join
from .gym_config import type_name as _type_name
from .redact import Secrets

__all__ = [
    "NEMO_GYM_IGNORED_KEYS",
    "Config",
    "ConfigError",
    "GatewaySettings",
    "ModelServerConfig",
    "load_config",
    "redacted",
    "shortcut_overrides",
]

logger = logging.getLogger("gateway.config")

# Shown instead of secret values.
_REDACTED = "***"

# Top-level keys the CLI shortcut flags fill in; the shipped configs refer to
# them as ${policy_base_url} etc., exactly like NeMo Gym's.
_SHORTCUT_KEYS = {
    "policy_base_url": "--base-url",
    "policy_model_name": "--model",
    "policy_api_key": "--api-key",
}


# --------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------

# NeMo Gym 0.7.0's VLLMModelConfig keys fall in three groups (README, "NeMo Gym"):
#
# * keys that act, as fields of ModelServerConfig below, with Gym's defaults;
# * server-launch keys Gym's launcher reads (the gateway listens on gateway.host/port): accepted
#   and ignored, the ones that look like they could matter with a warning;
# * features the gateway does not provide: accepted at Gym's inert value (what the shipped
#   configs write), refused with a message saying so at any other value.
NEMO_GYM_LAUNCH_KEYS = frozenset(
    {"entrypoint", "name", "host", "port", "num_workers", "domain", "datasets",
     "token_id_capture_non_generating_requests"}
)
# key -> (values that do nothing, why another value cannot be honoured)
NEMO_GYM_REFUSED_KEYS: dict[str, tuple[tuple[Any, ...], str]] = {
    "is_responses_native": ((None, False), "the gateway exists to translate for models that are not Responses-native; "
                            "point NeMo Gym's own vllm_model at a Responses-native server instead"),
    "use_completions_api": ((None, False), "the gateway talks to vLLM's /v1/chat/completions only; "
                            "vLLM's /v1/completions (base models) is not supported"),
    "render_chat_template": ((None, False), "client-side chat-template rendering goes with use_completions_api, "
                             "which the gateway does not support"),
    "tokenizer": ((None,), "a client-side tokenizer goes with use_completions_api, which the gateway does not support"),
    "endpoint_file": ((None,), "the gateway does not re-read a published endpoint; list the servers in base_url "
                      "(several are balanced, with health checks and failover)"),
}
# Tuning keys of a refused feature: accepted at any value, they do nothing without it.
_NEMO_GYM_DEPENDENT_KEYS = {
    "endpoint_stale_grace_s": "endpoint_file",
    "endpoint_connection_retries": "endpoint_file",
    "endpoint_check_interval_s": "endpoint_file",
}
NEMO_GYM_IGNORED_KEYS = NEMO_GYM_LAUNCH_KEYS | frozenset(NEMO_GYM_REFUSED_KEYS) | frozenset(_NEMO_GYM_DEPENDENT_KEYS)

# Values of launch keys that do not deserve a warning. None means "absent".
_IGNORED_KEY_INERT_VALUES: dict[str, tuple[Any, ...]] = {"entrypoint": (None, "app.py")}
_IGNORED_KEY_WARNED = frozenset({"host", "port"})

# Where to look instead, for ignored keys that have a gateway counterpart.
_IGNORED_KEY_HINTS = {
    "host": "the gateway listens on gateway.host",
    "port": "the gateway listens on gateway.port",
}

_REASONING_FIELD_MODES = ("both", "reasoning", "reasoning_content")


def _is_inert(key: str, value: Any) -> bool:
    # Compare type-aware: YAML's 1 must not count as True, nor 0 as False.
    inert_values = NEMO_GYM_REFUSED_KEYS[key][0] if key in NEMO_GYM_REFUSED_KEYS else _IGNORED_KEY_INERT_VALUES.get(key, (None,))
    return any(type(value) is type(inert) and value == inert for inert in inert_values)


def _field_error(field: str, message: str) -> ValueError:
    # msgspec turns a ValueError raised in __post_init__ into a ValidationError
    # carrying only the message, without a path. The "field: message" shape
    # lets _convert() put the full key path in front of it.
    return ValueError(f"{field}: {message}")


def _display_url(url: str) -> str:
    """The URL with any password in it masked, fit for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        netloc = parts.netloc.rsplit("@", 1)
        userinfo = netloc[0].split(":", 1)[0]
        return urlunsplit(parts._replace(netloc=f"{userinfo}:{_REDACTED}@{netloc[1]}"))
    except ValueError:
        return url


def _check_url(url: Any, field: str) -> str:
    if not isinstance(url, str):
        raise _field_error(field, f"expected str, got {_type_name(url)}")
    url = url.strip().rstrip("/")
    example = "expected http(s)://host[:port][/path], e.g. http://localhost:8000/v1"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a non-numeric or out-of-range port
    except ValueError:
        raise _field_error(field, f"{_display_url(url)!r} has an invalid port ({example})") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        hint = " (missing http:// ?)" if "://" not in url else ""
        raise _field_error(field, f"{_display_url(url)!r} is not an http(s) URL{hint}; {example}")
    if url.count("://") > 1:
        # e.g. `policy_base_url=http://a:8000/v1,http://b:8000/v1`, which would otherwise pass as one URL.
        raise _field_error(field, f"{_display_url(url)!r} looks like several URLs; give them as a list [url1, url2]")
    return url


class ModelServerConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """One upstream model server block; keys and meanings are NeMo Gym's ``vllm_model`` ones."""

    # One or more vLLM OpenAI-compatible servers (".../v1"); requests are spread
    # over them. A single string is accepted and normalised to a list.
    base_url: list[str]
    # Sent as the bearer token; may be empty for an unauthenticated vLLM.
    api_key: str = ""
    model: str
    # Attach prompt/generation token IDs and logprobs to output items (training).
    return_token_id_information: bool = False
    # vLLM runs with a reasoning parser, so reasoning arrives in a separate
    # field rather than inside <think> tags in the content.
    uses_reasoning_parser: bool = True
    # Ask vLLM to return prompt and generation token IDs inline.
    request_prompt_and_generation_token_ids: bool = False
    replace_developer_role_with_system: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    # Merged into every upstream request body (OpenAI client's extra_body).
    extra_body: dict[str, Any] | None = None
    # Sampling parameters forced on every upstream request, replacing the caller's.
    sampling_overrides: dict[str, Any] | None = None
    default_headers: dict[str, str] = {}

    # --- NeMo Gym 0.7.0 keys that act (same defaults and meaning as Gym's VLLMModelConfig) ---
    # vLLM's 400 for an over-long prompt is passed on as is, instead of an empty response.
    propagate_context_overflow_errors: bool = False
    # Reasoning of earlier turns goes back to vLLM (as reasoning_field says); false: dropped.
    uses_interleaved_reasoning: bool = True
    # Which assistant-message key(s) carry that reasoning. Unset: the NEMO_GYM_REASONING_FIELD
    # environment variable, then "both" (Gym's rule).
    reasoning_field: Optional[Literal["both", "reasoning", "reasoning_content"]] = None
    # History reasoning stays in the content as <think>...</think> instead of a field.
    preserve_reasoning_in_assistant_content: bool = False
    # false: a request whose last message is an empty assistant turn gets an empty answer
    # (finish_reason content_filter) without calling vLLM.
    sequential_reasoning_allowed: bool = True
    # The request's own top-level chat_template_kwargs are merged (over the config's, under
    # metadata's); false, Gym's default: dropped, with a warning once.
    forward_request_chat_template_kwargs: bool = False
    # A trailing assistant message is continued (continue_final_message) instead of a new turn.
    continue_final_assistant_message: bool = False
    # The session key goes to the backend as conversation_params.conversation_id.
    forward_session_id_as_conversation_id: bool = False
    # Prefix for relative metadata.audio_path / audio_paths.
    audio_root: Optional[str] = None
    # Needs Gym's token-capture lineage (a verified parent's tokens), which only Gym's own server
    # records: accepted with a warning, requests go unchanged (Gym's behaviour without a parent).
    supply_prefix_token_ids: bool = False

    # Accepted for NeMo Gym compatibility (see NEMO_GYM_IGNORED_KEYS): launch keys, and features
    # refused at any value other than their inert one.
    entrypoint: Any = None
    name: Any = None
    host: Any = None
    port: Any = None
    num_workers: Any = None
    domain: Any = None
    datasets: Any = None
    token_id_capture_non_generating_requests: Any = None
    is_responses_native: Any = None
    use_completions_api: Any = None
    render_chat_template: Any = None
    tokenizer: Any = None
    endpoint_file: Any = None
    endpoint_stale_grace_s: Any = None
    endpoint_connection_retries: Any = None
    endpoint_check_interval_s: Any = None

    def __post_init__(self) -> None:
        # Runs both after msgspec.convert and on direct construction, so the
        # invariants below hold however the object was made.
        if isinstance(self.base_url, str):
            self.base_url = [_check_url(self.base_url, "base_url")]
        elif isinstance(self.base_url, list) and self.base_url:
            self.base_url = [_check_url(u, f"base_url[{i}]") for i, u in enumerate(self.base_url)]
        else:
            raise _field_error("base_url", "must be a URL or a non-empty list of URLs")
        if self.api_key is None:  # `policy_api_key:` left blank in env.yaml
            self.api_key = ""
        if not isinstance(self.model, str) or not self.model.strip():
            raise _field_error("model", "must be a non-empty model name")
        if self.default_headers is None:
            self.default_headers = {}


class GatewaySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The gateway's own settings: the top-level ``gateway:`` section."""

    host: str = "127.0.0.1"
    # Deliberately neither vLLM's 8000 nor the NeMo Gym head server's usual ports.
    port: int = 8300
    # Reasoning output items carry summary_text parts (what NeMo Gym produces)
    # or raw reasoning_text content.
    reasoning_presentation: Literal["summary", "raw"] = "summary"
    # How reasoning items found in input history are re-sent to vLLM: inlined
    # as <think>...</think> in the assistant content, as a separate message
    # field, or dropped. Unset: as NeMo Gym's keys say (uses_reasoning_parser,
    # uses_interleaved_reasoning, preserve_reasoning_in_assistant_content and
    # the model server's reasoning_field), which is what Gym sends.
    reasoning_history: Optional[Literal["think_tags", "field", "drop"]] = None
    # Message field used when reasoning_history == "field" is set here.
    reasoning_field: Literal["reasoning_content", "reasoning", "both"] = "reasoning_content"
    # Where NeMo Gym's Response and OpenAI's disagree, which to follow. "nemo_gym" (Gym's config
    # gets Gym's behaviour): items of a response cut by length stay "completed", a stray </think>
    # stays in the text, nothing generated gives one empty message, text is not trimmed,
    # reasoning blocks in a row are summary parts of one item. "openai": the Responses API's.
    response_conventions: Literal["nemo_gym", "openai"] = "nemo_gym"
    # The chat template already opens <think> in the prompt, so generated text
    # starts inside reasoning (relevant without a reasoning parser).
    reasoning_starts_open: bool = False
    # --- timeouts (seconds) towards vLLM ---
    connect_timeout_s: float = 10.0
    # Until vLLM's first byte: covers queueing and prefill of a long prompt under load.
    first_byte_timeout_s: float = 600.0
    # Silence between two chunks of a stream: longer means vLLM stalled (error + response.failed).
    idle_timeout_s: float = 300.0
    # Total time allowed for one upstream request, streaming included.
    request_timeout_s: float = 3600.0
    # While a stream (or a non-streaming answer) is silent this long, vLLM's /health is asked, then
    # as often again; when it fails the answer ends at once (upstream_dead), not after idle_timeout_s:
    # a dead engine can leave a stream open and silent. 0: never.
    dead_upstream_probe_s: float = 10.0
    # During upstream silences, an SSE comment this often keeps clients with idle timeouts
    # (Codex, OpenClaw: 120 s) from aborting.
    keepalive_interval_s: float = 15.0
    # What a keepalive is: a data-bearing {"type": "keepalive", "sequence_number": n} event (what
    # OpenAI's servers send; Codex's stream_idle_timeout_ms counts only events) or a ": keepalive"
    # SSE comment (proxies only).
    keepalive_format: Literal["event", "comment"] = "event"
    # --- what requests may hold ---
    # Tools that only OpenAI's servers run (web_search, file_search, code_interpreter,
    # image_generation, remote mcp, computer use, ...): left out of the model's request (logged),
    # or refused with a 400.
    hosted_tools: Literal["drop", "reject"] = "drop"
    # Developer messages: "auto" asks each server whether its chat template renders them and folds
    # them into the system message where one does not (Qwen2.5, Qwen3); "fold" always; "keep" never.
    developer_messages: Literal["auto", "fold", "keep"] = "auto"
    # --- several vLLM servers ---
    # Retries of a request that failed before vLLM answered (refused, 429, 502/503/504), each on
    # another server when there is one, with exponential backoff from retry_backoff_s.
    max_retries: int = 2
    retry_backoff_s: float = 0.2
    retry_backoff_max_s: float = 2.0
    # Active checks of each server's /health; 0 disables them.
    health_check_interval_s: float = 10.0
    # Passive ejection: after this many failures in a row a server gets no traffic for eject_s
    # (doubling while it keeps failing, up to 8x), then gets it again.
    eject_after_failures: int = 3
    eject_s: float = 10.0
    # Session affinity (prefix caching): the header carrying a session key; NeMo Gym's session
    # cookie and the request's prompt_cache_key work too.
    session_header: str = "x-session-id"
    # --- the gateway's own clients ---
    # Bearer keys clients must send (none: no auth). Keys can also come from a file, one per line.
    api_keys: list[str] = []
    api_keys_file: Optional[str] = None
    cors_allow_origins: list[str] = []
    # SIGTERM: streams get this long to finish before they end with response.failed.
    shutdown_grace_s: float = 30.0
    # Request bodies: at most this many bytes once decoded (and as sent, when not compressed) ...
    max_request_bytes: int = 16 * 1024 * 1024
    # ... and at most this many on the wire when compressed (Content-Encoding gzip, deflate, br, zstd).
    max_compressed_request_bytes: int = 4 * 1024 * 1024
    # The most read from one upstream answer (a completion, a whole stream; decompressed), and from
    # one SSE event of a stream that has not ended yet: beyond, the answer is an upstream_too_large error.
    max_upstream_response_bytes: int = 64 * 1024 * 1024
    max_upstream_event_bytes: int = 4 * 1024 * 1024
    # Python's cyclic garbage collector runs after this many new container objects. With Python's
    # default, 700, it ran every other response at c=64, each pass walking the live streams'
    # objects: 6-7 % of the gateway's CPU. What startup loaded is frozen out of its passes. 700
    # restores Python's behaviour.
    gc_threshold: int = 50_000
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # One line per request (request id, model, status, timings, tokens) as text or JSON.
    log_format: Literal["text", "json"] = "text"
    # Prometheus metrics at GET /metrics.
    metrics: bool = True
    # Opt-in JSON lines of the exact upstream requests and responses (prompts and outputs: keep it
    # off in production). NeMo Gym's NEMO_GYM_VLLM_TRANSPORT_LOG environment variable works too.
    transport_log: Optional[str] = None
    # Its lines: the gateway's (one per request) or NeMo Gym 0.7.0's (schema_version 2 events).
    transport_log_format: Literal["gateway", "nemo_gym"] = "gateway"
    # What speaks Chat Completions behind the gateway. "llama.cpp" (llama-server) differs from vLLM
    # in how token ids come back and in its /tokenize; see README, "Upstream flavours".
    upstream_flavour: Literal["vllm", "llama.cpp"] = "vllm"
    # --- the inspector (GET /inspect: every request live, for debugging agents; see README) ---
    # Off by default. It shows prompts and outputs: give it an admin key of its own (not one of the
    # clients' api_keys), or leave the key unset and it answers loopback clients only.
    inspect: bool = False
    inspect_admin_key: Optional[str] = None
    # Requests kept in memory (the most recent ones), and the most memory they may hold, roughly.
    inspect_buffer: int = 200
    inspect_buffer_mb: int = 256
    # OpenTelemetry traces (span per request, child per upstream attempt), exported over OTLP as the
    # standard OTEL_EXPORTER_OTLP_* variables say. Needs `pip install 'vllm-responses-gateway[otel]'`.
    tracing: bool = False
    # --- stored responses (README, "Stored responses") ---
    # false: nothing is stored, and previous_response_id, background and conversation are refused.
    store: bool = True
    store_backend: Literal["sqlite", "redis"] = "sqlite"
    # The SQLite file lives here (created if missing); empty: $XDG_DATA_HOME/vllm-gateway, else
    # ~/.local/share/vllm-gateway.
    data_dir: str = ""
    redis_url: Optional[str] = None  # redis://host:port/db, for store_backend: redis
    # Seconds a stored response is kept (OpenAI keeps them 30 days).
    store_ttl: float = 30 * 24 * 3600.0
    # Bound on everything stored (responses, their input and events): the oldest go first.
    store_max_bytes: int = 1024**3
    # A running response's process renews its lease this often (÷3); a response whose lease ran
    # out (its gateway process died) is ended as failed.
    store_lease_s: float = 30.0

    def __post_init__(self) -> None:
        if not isinstance(self.port, int) or isinstance(self.port, bool) or not 1 <= self.port <= 65535:
            raise _field_error("port", f"must be between 1 and 65535, got {self.port!r}")
        for field in ("connect_timeout_s", "request_timeout_s", "first_byte_timeout_s", "idle_timeout_s",
                      "keepalive_interval_s", "eject_s", "retry_backoff_s", "retry_backoff_max_s",
                      "store_ttl", "store_lease_s"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
                raise _field_error(field, f"must be a finite number of seconds > 0, got {value!r}")
        for field in ("health_check_interval_s", "shutdown_grace_s", "dead_upstream_probe_s"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise _field_error(field, f"must be a finite number of seconds >= 0, got {value!r}")
        for field, low, high in (("max_retries", 0, 10), ("eject_after_failures", 1, 1000),
                                 ("gc_threshold", 100, 10_000_000)):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise _field_error(field, f"must be an integer from {low} to {high}, got {value!r}")
        if self.store and self.store_backend == "redis" and not self.redis_url:
            raise _field_error("redis_url", "must name the Redis server (redis://host:port/0) with store_backend: redis")
        if not isinstance(self.store_max_bytes, int) or isinstance(self.store_max_bytes, bool) or self.store_max_bytes <= 0:
            raise _field_error("store_max_bytes", f"must be > 0, got {self.store_max_bytes!r}")
        for field in ("max_request_bytes", "max_compressed_request_bytes", "max_upstream_response_bytes",
                      "max_upstream_event_bytes"):
            size = getattr(self, field)
            if not isinstance(size, int) or isinstance(size, bool) or size <= 0:
                raise _field_error(field, f"must be > 0, got {size!r}")
        buffer = self.inspect_buffer
        if not isinstance(buffer, int) or isinstance(buffer, bool) or not 1 <= buffer <= 100_000:
            raise _field_error("inspect_buffer", f"must be an integer from 1 to 100000, got {buffer!r}")
        budget = self.inspect_buffer_mb
        if not isinstance(budget, int) or isinstance(budget, bool) or not 1 <= budget <= 1 << 20:
            raise _field_error("inspect_buffer_mb", f"must be a whole number of MB from 1 up, got {budget!r}")
        if self.inspect_admin_key is not None:
            if not isinstance(self.inspect_admin_key, str) or len(self.inspect_admin_key) < 8:
                raise _field_error("inspect_admin_key", "must be a string of at least 8 characters")
            if self.inspect_admin_key in self.api_keys:
                # a client's key must not open the inspector: it shows every client's traffic
                raise _field_error("inspect_admin_key", "must differ from every key in api_keys")


class Config(msgspec.Struct, kw_only=True):
    """The loaded configuration."""

    server_name: str  # top-level key holding the model server block, e.g. "policy_model"
    model_server: ModelServerConfig
    gateway: GatewaySettings


# --------------------------------------------------------------------------
# Command-line overrides
# --------------------------------------------------------------------------

# Key segments: anything but separators, brackets, whitespace and the
# characters that carry meaning in override syntax.
_KEY_PATH_RE = re.compile(r"[^\s.=~+\[\]${}]+(?:\.[^\s.=~+\[\]${}]+)*")
_INT_RE = re.compile(r"[-+]?(?:0|[1-9](?:_?[0-9])*)")
_FLOAT_RE = re.compile(r"[-+]?(?:(?:\d+\.\d*|\.\d+)(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|inf|nan)", re.IGNORECASE)
_SINGLE_QUOTED_RE = re.compile(r"'(?:[^']|'')*'", re.DOTALL)
_DOUBLE_QUOTED_RE = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
# Key names whose values are credentials: api_key, policy_api_key, hf_token...
# (whole words only, so max_tokens is not one).
_SECRET_NAME_RE = re.compile(
    r"(?:^|[._-])(?:api[_-]?key|apikey|token|secret|password|passwd|authorization)(?:$|[._-])", re.IGNORECASE
)


def _shown_override(text: str) -> str:
    """The override as it may appear in a message: secret-looking values masked."""
    key, sep, _ = text.partition("=")
    return f"{key}={_REDACTED}" if sep and _SECRET_NAME_RE.search(key) else text


def _parse_override_value(raw: str, text: str) -> Any:
    """Hydra-like value parsing: a few scalar forms and YAML flow collections; otherwise the text verbatim.

    We do not hand arbitrary text to YAML: `yes`, `2024-01-01`, `a: b` or
    `x #y` would come back as something other than what was typed.
    """
    if raw == "":
        return ""
    if _SINGLE_QUOTED_RE.fullmatch(raw):
        # Same as YAML single quotes ('' is a quote) but without line folding,
        # so any string survives a quote/unquote round trip exactly.
        return raw[1:-1].replace("''", "'")
    if _DOUBLE_QUOTED_RE.fullmatch(raw):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"override {_shown_override(text)!r}: invalid double-quoted string") from None
    if raw[0] in "[{":
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = None
        if not isinstance(value, (list, dict)):
            raise ConfigError(f"override {_shown_override(text)!r}: value is not a valid [list] or {{mapping}}")
        return value
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "~"):
        return None
    if _INT_RE.fullmatch(raw):
        return int(raw.replace("_", ""))
    if _FLOAT_RE.fullmatch(raw):
        return float(raw)
    return raw


def _parse_override(text: str) -> tuple[str, list[str], bool, Any]:
    """Split an override into (operation, key path, has_value, value)."""
    if not isinstance(text, str):
        raise ConfigError(f"override {text!r} is not a string")
    malformed = ConfigError(
        f"malformed override {_shown_override(text)!r}: expected key.path=value, +key.path=value or ~key.path"
    )
    if text.startswith("~"):
        op, body = "delete", text[1:]
    elif text.startswith("++"):
        op, body = "set", text[2:]
    elif text.startswith("+"):
        op, body = "set", text[1:]
    else:
        op, body = "set", text
    # The key cannot contain "=", so the first one separates key and value and
    # the value may contain any number of them (base64 API keys do).
    key, sep, raw = body.partition("=")
    key = key.strip()
    if not _KEY_PATH_RE.fullmatch(key) or (op == "set" and not sep):
        raise malformed
    value = _parse_override_value(raw, text) if sep else None
    return op, key.split("."), bool(sep), value


def _apply_override(root: dict[str, Any], text: str, server_name: str) -> None:
    op, parts, has_value, value = _parse_override(text)
    dotted = ".".join(parts)
    if op == "set":
        # Hydra distinguishes key=, +key= and ++key=; we accept all three as
        # "set, creating the key if needed", which is what users mean here.
        node = root
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:  # absent, or `key: null` in YAML: becomes a mapping
                child = node[part] = {}
            elif not isinstance(child, dict):
                where = ".".join(parts[: i + 1])
                raise ConfigError(
                    f"override {_shown_override(text)!r}: cannot set {dotted} because {where} "
                    f"is a {_type_name(child)}, not a mapping",
                    key=dotted,
                )
            node = child
        node[parts[-1]] = value
        return

    # Deletion. A short-form path (`server.name.key`) also finds the key in the
    # long form, mirroring how the two forms are merged.
    candidates = [parts]
    if len(parts) >= 3 and parts[0] == server_name and parts[1] != "responses_api_models":
        candidates.append([parts[0], "responses_api_models", *parts[1:]])
    for candidate in candidates:
        found, current = _get_path(root, candidate)
        parent_found, parent = _get_path(root, candidate[:-1])
        if found and parent_found and isinstance(parent, dict):
            if has_value and current != value:
                raise ConfigError(
                    f"override {_shown_override(text)!r}: {dotted} does not have that value, not deleting it",
                    key=dotted,
                )
            del parent[candidate[-1]]
            return
    raise ConfigError(f"override {text.partition('=')[0]!r}: cannot delete {dotted}, it is not set", key=dotted)


def _quote_override_value(value: str) -> str:
    """Quote a string so that the override parser and interpolation return it unchanged."""
    # `${` would start an interpolation: escape it the OmegaConf way, doubling
    # any backslashes right in front of it (they would otherwise be read as
    # escaping each other).
    value = re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    return "'" + value.replace("'", "''") + "'"


def shortcut_overrides(base_url: str | None, model: str | None, api_key: str | None) -> list[str]:
    """Overrides for the CLI shortcut flags (--base-url, --model, --api-key).

    They set the top-level ``policy_base_url``, ``policy_model_name`` and
    ``policy_api_key`` that the configs interpolate, and, being overrides,
    win over env.yaml. Values are taken verbatim: an API key full of ``=``,
    ``:``, ``#``, quotes or even ``${`` comes through unchanged. ``None``
    means "flag not given".
    """
    overrides = []
    for key, value in (("policy_base_url", base_url), ("policy_model_name", model), ("policy_api_key", api_key)):
        if value is not None:
            overrides.append(f"+{key}={_quote_override_value(value)}")
    return overrides


def _env_hint(name: str) -> str:
    hints = ["define it in env.yaml", f"pass {name}=... on the command line"]
    if name in _SHORTCUT_KEYS:
        hints.append(f"use {_SHORTCUT_KEYS[name]}")
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        hints.append(f"set the environment variable {name.upper()}")
    return ", ".join(hints[:-1]) + ", or " + hints[-1]


# --------------------------------------------------------------------------
# Locating and validating the blocks
# --------------------------------------------------------------------------


class _Block(msgspec.Struct):
    value: dict[str, Any]
    long_path: str | None  # "<server>.responses_api_models.<name>", if that form is present
    short_path: str | None  # "<server>.<name>", if that form is present
    short_keys: frozenset[str]  # keys the short form sets (they win)

    def path_of(self, field: str) -> str:
        """Where a field was written, so errors point at the right place."""
        if self.short_path is not None and (field in self.short_keys or self.long_path is None):
            return self.short_path
        return self.long_path or ""


def _find_model_block(root: dict[str, Any], server_name: str, sources: str) -> _Block:
    looked = f"looked for {server_name}.responses_api_models.<name> (NeMo Gym's form) and {server_name}.<name>"
    server = root.get(server_name)
    if not isinstance(server, dict) or not server:
        others = sorted(
            k for k, v in root.items() if isinstance(v, dict) and isinstance(v.get("responses_api_models"), dict)
        )
        names = ", ".join(others)
        hint = f"; model server blocks exist under: {names} (choose one as the server name)" if others else ""
        if server is not None and not isinstance(server, dict):
            raise ConfigError(
                f"{server_name}: expected a mapping holding the model server block, got {_type_name(server)}",
                key=server_name,
            )
        raise ConfigError(f"no model server block found: {looked}{sources}{hint}", key=server_name)

    long_path = short_path = None
    long_block: dict[str, Any] = {}
    name = None
    models = server.get("responses_api_models")
    if models is not None:
        if not isinstance(models, dict):
            key = f"{server_name}.responses_api_models"
            raise ConfigError(f"{key}: expected a mapping of one model server, got {_type_name(models)}", key=key)
        if len(models) > 1:
            key = f"{server_name}.responses_api_models"
            raise ConfigError(
                f"{key} holds several model servers ({', '.join(map(str, models))}); keep exactly one, "
                f"e.g. delete the others with ~{key}.<name>",
                key=key,
            )
        if models:
            name = next(iter(models))
            long_path = f"{server_name}.responses_api_models.{name}"
            long_block = models[name]
            if not isinstance(long_block, dict):
                raise ConfigError(f"{long_path}: expected a mapping, got {_type_name(long_block)}", key=long_path)

    others = [k for k in server if k != "responses_api_models"]
    for key in others:
        if server[key] is not None and not isinstance(server[key], dict):
            full = f"{server_name}.{key}"
            raise ConfigError(
                f"{full}: unexpected key; model server settings belong under "
                f"{server_name}.responses_api_models.<name> or {server_name}.<name>",
                key=full,
            )
    if name is not None:
        unexpected = [k for k in others if k != name]
        if unexpected:
            key = f"{server_name}.{unexpected[0]}"
            raise ConfigError(
                f"{key}: unexpected key; the model server is {long_path}, which the short form "
                f"{server_name}.{name} may also set",
                key=key,
            )
    elif len(others) > 1:
        raise ConfigError(
            f"{server_name} holds several candidate model server blocks ({', '.join(map(str, others))}); "
            "keep exactly one",
            key=server_name,
        )
    elif others:
        name = others[0]
    else:
        raise ConfigError(f"no model server block found: {looked}{sources}", key=server_name)

    short_block: dict[str, Any] = {}
    if name in server:
        short_path = f"{server_name}.{name}"
        short_block = server[name]
        if short_block is None:
            short_block = {}
        if not isinstance(short_block, dict):
            raise ConfigError(f"{short_path}: expected a mapping, got {_type_name(short_block)}", key=short_path)

    return _Block(
        value=_deep_merge(long_block, short_block),
        long_path=long_path,
        short_path=short_path,
        short_keys=frozenset(short_block),
    )


_MSGSPEC_PATH_RE = re.compile(r"^(?P<msg>.*) - at (?P<inkey>`key` in )?`\$(?P<path>[^`]*)`$", re.DOTALL)
_POST_INIT_RE = re.compile(r"^(?P<field>[A-Za-z_]\w*)(?P<index>\[\d+\])?: (?P<msg>.*)$", re.DOTALL)


def _convert(data: dict[str, Any], cls: type, path_of: Callable[[str], str]) -> Any:
    """msgspec.convert with errors carrying the full dotted key path."""
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as e:
        text = str(e)
    if m := _MSGSPEC_PATH_RE.match(text):
        # "$.field[0].x" -> "<prefix>.field[0].x"
        rel = m["path"].lstrip(".")
        field = re.split(r"[.\[]", rel, maxsplit=1)[0]
        key = path_of(field) + ("." if not rel.startswith("[") else "") + rel
        message = m["msg"].replace("`", "")
        message = message[:1].lower() + message[1:]
        if m["inkey"]:
            message = f"mapping key: {message}"
        allowed = typing.get_args(typing.get_type_hints(cls).get(field))
        if message.startswith("invalid enum value") and allowed:
            message += f"; expected one of: {', '.join(map(repr, allowed))}"
    elif m := _POST_INIT_RE.match(text):
        key = _join(path_of(m["field"]), m["field"] + (m["index"] or ""))
        message = m["msg"]
    else:  # not expected: the pre-checks catch unknown and missing keys
        key = path_of("")
        message = text.replace("`", "")
    raise ConfigError(f"{key}: {message}", key=key) from None


def _check_keys(
    data: dict[str, Any], cls: type, path_of: Callable[[str], str], required: Sequence[str] = ()
) -> None:
    known = cls.__struct_fields__
    for key in data:
        if key not in known:
            full = _join(path_of(str(key)), key)
            close = difflib.get_close_matches(str(key), known, n=1)
            suggestion = f" (did you mean {close[0]!r}?)" if close else ""
            if cls is ModelServerConfig:
                # The ignored NeMo Gym keys are accepted too, but listing them would bury the useful ones.
                listed = ", ".join(sorted(f for f in known if f not in NEMO_GYM_IGNORED_KEYS))
                listed += (f" (and NeMo Gym's launch and unsupported-feature keys "
                           f"{', '.join(sorted(NEMO_GYM_IGNORED_KEYS))})")
            else:
                listed = ", ".join(sorted(known))
            raise ConfigError(f"{full}: unknown key{suggestion}; known keys: {listed}", key=full)
    for key in required:
        full = _join(path_of(key), key)
        if key not in data:
            raise ConfigError(f"{full}: required key is missing", key=full)
        if data[key] == _MISSING:
            raise ConfigError(f"{full}: set to ??? (a mandatory value never filled in)", key=full)


def _build_model_server(block: _Block, resolver: Resolver, secrets: set[str]) -> ModelServerConfig:
    _check_keys(block.value, ModelServerConfig, block.path_of, required=("base_url", "model"))
    data: dict[str, Any] = {}
    for key, raw in block.value.items():
        full = _join(block.path_of(key), key)
        if key in NEMO_GYM_IGNORED_KEYS:
            # Never used, so an unresolvable reference in one must not stop us.
            try:
                data[key] = resolver.resolve(raw, full)
            except ConfigError:
                data[key] = raw
            continue
        data[key] = resolver.resolve(raw, full)
    # The key may have come from the environment: later messages must not show it either.
    _collect_secrets(data, secrets, block.path_of(""))

    # A few shapes msgspec would reject with a less helpful message.
    if data.get("api_key", "") is None:
        data["api_key"] = ""
    if "default_headers" in data and data["default_headers"] is None:
        data["default_headers"] = {}
    url = data["base_url"]
    url_path = block.path_of("base_url")
    if not isinstance(url, (str, list)) or url == []:
        full = _join(url_path, "base_url")
        raise ConfigError(f"{full}: expected a URL or a non-empty list of URLs, got {_type_name(url)}", key=full)
    try:
        # A single string is reported as `base_url`, a list item as `base_url[i]`.
        if isinstance(url, str):
            data["base_url"] = [_check_url(url, "base_url")]
        else:
            data["base_url"] = [_check_url(u, f"base_url[{i}]") for i, u in enumerate(url)]
    except ValueError as e:
        field = str(e).split(":", 1)[0]
        raise ConfigError(f"{url_path}.{e}", key=_join(url_path, field)) from None
    headers = data.get("default_headers")
    if isinstance(headers, dict):
        for name, value in headers.items():
            if not isinstance(name, str) or not isinstance(value, str):
                full = _join(block.path_of("default_headers"), f"default_headers.{name}")
                what = "header name" if not isinstance(name, str) else "header value"
                shown = value if isinstance(name, str) else name
                raise ConfigError(f"{full}: {what} must be a str, got {_type_name(shown)}", key=full)

    return _convert(data, ModelServerConfig, block.path_of)


def _build_gateway(root: dict[str, Any], resolver: Resolver) -> GatewaySettings:
    section = root.get("gateway")
    if section is None:
        section = {}
    if not isinstance(section, dict):
        raise ConfigError(f"gateway: expected a mapping of gateway settings, got {_type_name(section)}", key="gateway")

    def path_of(_field: str) -> str:
        return "gateway"

    _check_keys(section, GatewaySettings, path_of)
    data = {key: resolver.resolve(raw, f"gateway.{key}") for key, raw in section.items()}
    if isinstance(data.get("log_level"), str):
        data["log_level"] = data["log_level"].upper()  # `log_level: debug` is what people type
    return _convert(data, GatewaySettings, path_of)


def _check_nemo_gym_keys(model_server: ModelServerConfig, block: _Block, environ: Mapping[str, str]) -> None:
    """Refuse the Gym features the gateway lacks, apply Gym's own cross-key rules, fill Gym's
    environment default of ``reasoning_field``."""
    for key, (_, reason) in NEMO_GYM_REFUSED_KEYS.items():
        if not _is_inert(key, getattr(model_server, key)):
            full = _join(block.path_of(key), key)
            raise ConfigError(f"{full}: not supported by the gateway: {reason}", key=full)
    if model_server.supply_prefix_token_ids and not model_server.return_token_id_information:
        full = _join(block.path_of("supply_prefix_token_ids"), "supply_prefix_token_ids")
        raise ConfigError(f"{full}: requires return_token_id_information: true (as in NeMo Gym)", key=full)
    if model_server.reasoning_field is None:
        value = environ.get("NEMO_GYM_REASONING_FIELD", "").strip() or "both"
        if value not in _REASONING_FIELD_MODES:
            raise ConfigError(
                f"NEMO_GYM_REASONING_FIELD must be one of {', '.join(_REASONING_FIELD_MODES)}, got {value!r}",
                key="reasoning_field",
            )
        model_server.reasoning_field = value  # type: ignore[assignment]


def _warn_ignored(model_server: ModelServerConfig, block: _Block) -> None:
    for key in sorted(NEMO_GYM_LAUNCH_KEYS & _IGNORED_KEY_WARNED):
        if not _is_inert(key, getattr(model_server, key)):
            hint = f" ({_IGNORED_KEY_HINTS[key]})" if key in _IGNORED_KEY_HINTS else ""
            # The value itself is not logged: configs are not a safe place to assume non-secret.
            logger.warning(
                "%s is a NeMo Gym launch setting the gateway does not use; ignoring it%s",
                _join(block.path_of(key), key), hint,
            )
    if model_server.supply_prefix_token_ids:
        logger.warning(
            "%s: true has no effect through the gateway: prefix supply needs NeMo Gym's token-capture "
            "lineage (a verified parent's tokens), which only Gym's own server records; requests go to "
            "vLLM unchanged, as Gym sends them when no parent is recorded",
            _join(block.path_of("supply_prefix_token_ids"), "supply_prefix_token_ids"),
        )


# --------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------


def _is_secret_header(name: str) -> bool:
    lowered = name.lower().replace("_", "-")
    return any(word in lowered for word in ("auth", "api-key", "apikey", "token", "secret", "password", "cookie"))


_WHOLE_REFERENCE_RE = re.compile(r"\$\{[^{}]*\}")


def _collect_secrets(node: Any, into: set[str], key: str = "") -> None:
    """Gather string values stored under secret-looking keys (api_key, *_token, headers...)."""
    if isinstance(node, dict):
        in_headers = key.endswith("default_headers")
        for k, v in node.items():
            secret = isinstance(k, str) and bool(_SECRET_NAME_RE.search(k) or (in_headers and _is_secret_header(k)))
            if secret and isinstance(v, str):
                # A bare reference such as ${policy_api_key} names the secret, it is not one.
                if not _WHOLE_REFERENCE_RE.fullmatch(v):
                    into.add(v)
            else:
                _collect_secrets(v, into, _join(key, k))
    elif isinstance(node, list):
        for v in node:
            _collect_secrets(v, into, key)


def _scrub(message: str, secrets: set[str]) -> str:
    # Longest first, so a secret containing another is masked whole. Very short
    # values are skipped: masking "abc" everywhere would garble messages, and
    # is not a credential worth protecting.
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 6 and secret != "EMPTY":
            message = message.replace(secret, _REDACTED)
    return message


def redacted(config: Config) -> dict[str, Any]:
    """The whole configuration as plain data, safe to print or log.

    ``api_key``, secret-looking ``default_headers`` (Authorization, X-Api-Key,
    ...) and passwords inside base URLs are replaced by "***". An empty
    ``api_key`` stays empty, so "no key configured" remains visible.
    """
    data = msgspec.to_builtins(config)
    server = data["model_server"]
    if server.get("api_key"):
        server["api_key"] = _REDACTED
    server["default_headers"] = {
        name: (_REDACTED if _is_secret_header(name) else value) for name, value in server["default_headers"].items()
    }
    server["base_url"] = [_display_url(url) for url in server["base_url"]]
    data["gateway"]["api_keys"] = [_REDACTED for _ in data["gateway"]["api_keys"]]
    if data["gateway"].get("inspect_admin_key"):
        data["gateway"]["inspect_admin_key"] = _REDACTED
    if data["gateway"].get("redis_url"):
        data["gateway"]["redis_url"] = _display_url(data["gateway"]["redis_url"])
    # The key could also have been pasted into some other value (an ignored
    # NeMo Gym key, extra_body...): mask it wherever it occurs.
    secrets = {config.model_server.api_key, *config.gateway.api_keys, config.gateway.inspect_admin_key or ""}
    return _scrub_tree(data, secrets - {""})


def _scrub_tree(node: Any, secrets: set[str]) -> Any:
    if isinstance(node, str):
        return _scrub(node, secrets)
    if isinstance(node, dict):
        return {k: _scrub_tree(v, secrets) for k, v in node.items()}
    if isinstance(node, list):
        return [_scrub_tree(v, secrets) for v in node]
    return node


# --------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------


def load_config(
    config_paths: Sequence[str | os.PathLike],
    *,
    env_file: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    server_name: str = "policy_model",
) -> Config:
    """Load, merge, interpolate and validate the configuration.

    Precedence, lowest first (NeMo Gym's): ``config_paths`` in order, then
    ``env_file``, then ``overrides`` in order; then Gym's directives. ``${name}``
    refers to the merged tree (dotted paths allowed), falling back to ``environ``
    (exact name, then upper-cased); ``${oc.env:VAR[,default]}`` reads ``environ``
    directly, ``${oc.select:key,default}`` the tree only (see gym_config.py).

    Raises ConfigError, whose message names the offending key path or file.
    """
    if isinstance(config_paths, (str, os.PathLike)):  # a lone path is an easy mistake to make
        config_paths = [config_paths]
    if isinstance(overrides, str):
        overrides = [overrides]
    environ = os.environ if environ is None else environ
    if not isinstance(server_name, str) or not server_name or "." in server_name:
        raise ConfigError(f"server name {server_name!r} must be a non-empty top-level key without dots")

    root: dict[str, Any] = {}
    secrets: set[str] = set()
    try:
        root = load_config_files(config_paths, environ)
        if env_file is not None:
            env = load_yaml(env_file, "env file")
            if CONFIG_PATHS_KEY in env:
                logger.warning("%s: config_paths in the env file are not read; give the files as config files",
                               os.fspath(env_file))
            root = _deep_merge(root, env)
        for text in overrides:
            _apply_override(root, text, server_name)
        apply_directives(root)  # NeMo Gym's _inherit_from / _copy / _delete_key, once all is merged
        _collect_secrets(root, secrets)

        sources = f" (in {', '.join(map(os.fspath, config_paths))})" if config_paths else " (no config file given)"
        block = _find_model_block(root, server_name, sources)
        resolver = Resolver(root, environ, _env_hint)
        model_server = _build_model_server(block, resolver, secrets)
        _check_nemo_gym_keys(model_server, block, environ)
        gateway = _build_gateway(root, resolver)
    except ConfigError as e:
        # Safety net: however a secret found its way into a message (say, an
        # API key put in base_url by mistake), it does not leave this function.
        message = Secrets(secrets).scrub(str(e))
        if message != str(e):
            raise ConfigError(message, key=e.key) from None
        raise

    _warn_ignored(model_server, block)
    config = Config(server_name=server_name, model_server=model_server, gateway=gateway)
    logger.debug("loaded configuration: %s", redacted(config))
    return config
