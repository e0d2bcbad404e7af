"""Metrics (Prometheus), the per-request log line, request ids and the transport log.

Metrics live in a registry per application (several apps may share a test process). With
``serve --workers N`` each worker writes to ``PROMETHEUS_MULTIPROC_DIR`` (set by the CLI before the
workers fork) and ``/metrics`` aggregates all of them, whichever worker answers the scrape.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import time
from typing import Any, Optional

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from ..redact import Secrets
from ..translate.stream import random_id

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("gateway_requests", "Requests answered, by route and HTTP status",
                                ["route", "status"], registry=r)
        self.open_streams = Gauge("gateway_open_streams", "Responses streams open now", registry=r,
                                  multiprocess_mode="livesum")
        self.ttft = Histogram("gateway_time_to_first_token_seconds",
                              "From request to the first output event (reasoning, text or tool call)",
                              buckets=_LATENCY_BUCKETS, registry=r)
        self.duration = Histogram("gateway_request_duration_seconds", "Whole request, by route and stream",
                                  ["route", "stream"], buckets=_LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("gateway_tokens", "Tokens, as vLLM counted them", ["direction"], registry=r)
        self.reasoning_tokens = Counter("gateway_reasoning_tokens", "Reasoning tokens vLLM reported", registry=r)
        self.responses = Counter("gateway_responses", "Responses by final status", ["status"], registry=r)
        self.upstream_errors = Counter("gateway_upstream_errors", "Upstream failures by server and kind",
                                       ["server", "code"], registry=r)
        self.upstream_retries = Counter("gateway_upstream_retries", "Requests retried after a server failed",
                                        ["server"], registry=r)
        self.upstream_healthy = Gauge("gateway_upstream_healthy", "1 when the server passed its last check",
                                      ["server"], registry=r, multiprocess_mode="max")
        self.upstream_in_flight = Gauge("gateway_upstream_in_flight", "Requests in flight per server",
                                        ["server"], registry=r, multiprocess_mode="livesum")
        # The labelled series every request touches, looked up once: prometheus_client's labels()
        # checks and locks on every call (9.7 -> 4.8 µs of a request's bookkeeping). The keys are
        # few: routes are the app's own, statuses and response statuses a handful.
        self.input_tokens, self.output_tokens = self.tokens.labels("input"), self.tokens.labels("output")
        self._answered: dict[tuple[str, int, bool], tuple[Any, Any]] = {}
        self._responses: dict[str, Any] = {}

    def answered(self, route: str, status: int, streamed: bool, seconds: float) -> None:
        """A request answered: its count by route and status, its duration by route and stream."""
        series = self._answered.get((route, status, streamed))
        if series is None:
            series = self._answered[(route, status, streamed)] = (
                self.requests.labels(route, str(status)), self.duration.labels(route, "true" if streamed else "false"))
        series[0].inc()
        series[1].observe(seconds)

    def response_ended(self, status: str) -> None:
        series = self._responses.get(status)
        if series is None:
            series = self._responses[status] = self.responses.labels(status)
        series.inc()

    def upstream_error(self, server: str, code: str) -> None:
        self.upstream_errors.labels(server, code).inc()

    def upstream_retry(self, server: str) -> None:
        self.upstream_retries.labels(server).inc()

    def render(self, pool_status: list[dict[str, Any]]) -> bytes:
        for server in pool_status:
            self.upstream_healthy.labels(server["url"]).set(1 if server["ok"] else 0)
            self.upstream_in_flight.labels(server["url"]).set(server["in_flight"])
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


# --- request ids ----------------------------------------------------------------------------------

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(header: Optional[str]) -> str:
    """The client's X-Request-Id when it is a sane token, else a new one."""
    if header and _CLIENT_ID.match(header):
        return header
    return random_id("req")


# --- logs -----------------------------------------------------------------------------------------


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the request fields if any."""

    def __init__(self, secrets: Secrets = Secrets()) -> None:
        super().__init__()
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return self.secrets.scrub(self._format(record))

    def _format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


# Control characters (CR, LF, ESC ..., C1, the Unicode line separators) in a logged value, say a
# path sent as /x%0a2099-01-01 INFO ..., would start a forged line: they are written escaped.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def escape_controls(text: str) -> str:
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}",
                        text)


class TextFormatter(logging.Formatter):
    """One line per record, whatever the values in it (a traceback, when there is one, follows)."""

    def __init__(self, secrets: Secrets = Secrets()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.converter = time.gmtime
        self.secrets = secrets

    def format(self, record: logging.LogRecord) -> str:
        return self.secrets.scrub(super().format(record))  # the traceback too

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = escape_controls(super().formatMessage(record))
        fields = getattr(record, "fields", None)
        if fields:
            text += " " + " ".join(escape_controls(f"{k}={v}") for k, v in fields.items() if v is not None)
        return text


def configure_logging(level: str, fmt: str, secrets: Secrets = Secrets()) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter(secrets) if fmt == "json" else TextFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)  # our own line replaces it


# --- transport log --------------------------------------------------------------------------------


class TransportLog:
    """Opt-in JSON lines of the exact upstream requests and responses, for debugging what a model
    really produced (NeMo Gym's NEMO_GYM_VLLM_TRANSPORT_LOG). It holds prompts and outputs: keep
    it off in production. Authorization is never written."""

    def __init__(self, path: str, secrets: Secrets = Secrets()) -> None:
        self.path = path
        self.secrets = secrets
        parent = os.path.dirname(path)
        if parent:
            os.makedirs(parent, exist_ok=True)

    def write(self, request_id: str, url: str, request: Any, status: Optional[int], response: bytes,
              error: Optional[str] = None, **_: Any) -> None:
        entry = {
            "time": time.time(),
            "request_id": request_id,
            "url": url,
            "request": request,
            "response": {"status": status, "body": response.decode("utf-8", "replace")},
        }
        if error:
            entry["error"] = error
        line = self.secrets.scrub_bytes(orjson.dumps(entry))  # an upstream may echo the Authorization header
        with open(self.path, "ab") as f:
            f.write(line + b"\n")


# NeMo Gym's trace headers, read into its transport log's context (ints where Gym reads ints).
_GYM_CONTEXT_HEADERS = {"run_id": "x-nemo-gym-log-run-id", "adapter": "x-nemo-gym-log-adapter",
                        "task_id": "x-nemo-gym-log-task-id", "domain": "x-nemo-gym-log-domain",
                        "task_attempt": "x-nemo-gym-log-task-attempt", "step": "x-nemo-gym-log-step",
                        "parse_attempt": "x-nemo-gym-log-parse-attempt"}
_GYM_INT_CONTEXT = {"task_attempt", "step", "parse_attempt"}


def nemo_gym_log_context(headers: Any) -> dict[str, Any]:
    context: dict[str, Any] = {}
    for name, header in _GYM_CONTEXT_HEADERS.items():
        value = headers.get(header)
        if not value:
            continue
        if name in _GYM_INT_CONTEXT:
            try:
                context[name] = int(value)
            except ValueError:
                continue
        else:
            context[name] = value
    return context


def _embedded_images(messages: Any) -> list[dict[str, Any]]:
    """NeMo Gym's index of the data: URL images in a request (sizes and SHA-256s)."""
    images: list[dict[str, Any]] = []
    for m, message in enumerate(messages if isinstance(messages, list) else []):
        content = message.get("content") if isinstance(message, dict) else None
        for p, part in enumerate(content if isinstance(content, list) else []):
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            if not isinstance(url, str):
                continue
            encoded = url.split(",", 1)[1] if url.startswith("data:") and "," in url else ""
            try:
                decoded = base64.b64decode(encoded, validate=False) if encoded else b""
            except ValueError:
                decoded = b""
            images.append({"message_index": m, "part_index": p, "data_url_chars": len(url),
                           "encoded_sha256": hashlib.sha256(encoded.encode("ascii", "ignore")).hexdigest(),
                           "decoded_bytes": len(decoded), "decoded_sha256": hashlib.sha256(decoded).hexdigest()})
    return images


class NemoGymTransportLog(TransportLog):
    """The transport log in NeMo Gym 0.7.0's format (``gateway.transport_log_format: nemo_gym``):
    schema_version 2, a ``transport_request`` line and a ``transport_response`` /
    ``transport_error_response`` / ``transport_error`` line per upstream call, with Gym's fields and
    its ``x-nemo-gym-log-*`` context. A streamed answer's ``raw_response`` is its SSE text (Gym
    itself never streams from vLLM)."""

    def __init__(self, path: str, secrets: Secrets = Secrets(), base_urls: Optional[list[str]] = None) -> None:
        super().__init__(path, secrets)
        self.base_urls = base_urls or []
        self.calls = 0

    def write(self, request_id: str, url: str, request: Any, status: Optional[int], response: bytes,
              error: Optional[str] = None, *, context: Optional[dict[str, Any]] = None,
              elapsed_s: float = 0.0, **_: Any) -> None:
        self.calls += 1
        finished = time.time_ns()
        elapsed = int(elapsed_s * 1e9)
        common = {**(context or {}), "schema_version": 2, "call_index": self.calls, "pid": os.getpid()}
        payload = json.dumps(request, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        lines = [{**common, "event": "transport_request", "timestamp_unix_ns": finished - elapsed,
                  "configured_base_urls": self.base_urls, "request_payload": request,
                  "request_payload_sha256": hashlib.sha256(payload.encode("utf-8")).hexdigest(),
                  "embedded_images": _embedded_images(request.get("messages") if isinstance(request, dict) else None)}]
        end = {**common, "timestamp_unix_ns": finished, "elapsed_ns": elapsed}
        text = response.decode("utf-8", "replace")
        if status is not None and status >= 400:
            lines.append({**end, "event": "transport_error_response", "http_status": status,
                          "raw_response_body": text, "error": error or ""})
        elif error:
            lines.append({**end, "event": "transport_error", "error_type": "UpstreamError", "error": error})
        else:
            try:
                raw: Any = json.loads(text)
            except ValueError:
                raw = text
            lines.append({**end, "event": "transport_response", "raw_response": raw})
        data = b"".join(self.secrets.scrub_bytes(json.dumps(line, ensure_ascii=False, sort_keys=True).encode())
                        + b"\n" for line in lines)
        with open(self.path, "ab") as f:
            f.write(data)
