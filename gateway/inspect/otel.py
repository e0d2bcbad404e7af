"""OpenTelemetry traces of the same requests the inspector shows (optional: the ``otel`` extra).

One span per request (``chat {model}``, the logical inference with all its retries), and under it
one HTTP client span per try at a vLLM server (``POST``). Attributes follow the GenAI semantic
conventions (``gen_ai.*``) and, for the tries, the HTTP ones; the gateway's request id is
``gateway.request.id``, so a span is found from a log line and back. Prompts and outputs are not
put on spans (they can be large and sensitive): the inspector is the place to read them.
"""

from __future__ import annotations

import os
from typing import Any, Optional
from urllib.parse import urlsplit

from ..observe import Outcome, RequestObserver

PROVIDER = "vllm"
TRACER_NAME = "vllm-responses-gateway"

# Responses request field -> GenAI attribute, read from the Chat Completions body that went to vLLM
# (its values are what vLLM really used, after the gateway's defaults and overrides).
_REQUEST_ATTRIBUTES = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}


def default_tracer_provider() -> Any:
    """The global provider when the application set one up, else one exporting over OTLP/HTTP as
    the standard ``OTEL_EXPORTER_OTLP_*`` / ``OTEL_SERVICE_NAME`` variables say."""
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
    except ImportError:
        raise RuntimeError("gateway.tracing needs OpenTelemetry: pip install 'vllm-responses-gateway[otel]'") from None
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    current = trace.get_tracer_provider()
    if isinstance(current, TracerProvider):
        return current
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": TRACER_NAME}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class Tracing:
    """The ``Observer`` that makes spans; ``provider`` is an OpenTelemetry TracerProvider."""

    def __init__(self, provider: Any, session_header: str, mask_url: Any = None) -> None:
        from opentelemetry import trace

        self.provider = provider
        self.tracer = provider.get_tracer(TRACER_NAME)
        self._trace = trace
        self.session_header = session_header
        self._mask_url = mask_url or (lambda url: url)

    def __call__(self, request_id: str, request: Any, raw: bytes) -> "RequestSpans":
        return RequestSpans(self, request_id, request)

    def shutdown(self) -> None:
        self.provider.force_flush()


class RequestSpans(RequestObserver):
    def __init__(self, tracing: Tracing, request_id: str, request: Any) -> None:
        trace = tracing._trace
        self._tracing = tracing
        self._status = trace.Status
        self._status_code = trace.StatusCode
        self.span = tracing.tracer.start_span("chat", kind=trace.SpanKind.SERVER, attributes={
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": PROVIDER,
            "gateway.request.id": request_id,
            "http.request.method": request.method,
            "url.path": request.path,
        })
        session = request.headers.get(tracing.session_header)
        if session:
            self.span.set_attribute("gen_ai.conversation.id", session)
        self._has_session = bool(session)
        self._context = trace.set_span_in_context(self.span)
        self._attempts: dict[str, Any] = {}  # server -> its open span
        self._first_output = False

    def planned(self, request: Any, plan: Any) -> None:
        self._request(plan.body, plan.stream)
        self.span.set_attribute("gen_ai.response.id", plan.response.id)
        if request.prompt_cache_key and not self._has_session:
            self.span.set_attribute("gen_ai.conversation.id", request.prompt_cache_key)

    def chat_planned(self, body: Any, payload: bytes, stream: bool) -> None:
        self._request(body, stream)
        key = body.get("prompt_cache_key")
        if isinstance(key, str) and key and not self._has_session:
            self.span.set_attribute("gen_ai.conversation.id", key)

    def _request(self, body: Any, stream: bool) -> None:
        """The attributes of the Chat Completions body that went to vLLM."""
        model = body.get("model")
        span = self.span
        if model:
            span.update_name(f"chat {model}")
            span.set_attribute("gen_ai.request.model", model)
        for field, attribute in _REQUEST_ATTRIBUTES.items():
            value = body.get(field)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                span.set_attribute(attribute, value)
        stop = body.get("stop")
        if stop:
            span.set_attribute("gen_ai.request.stop_sequences", [stop] if isinstance(stop, str) else list(stop))
        span.set_attribute("gateway.stream", bool(stream))

    def attempt_started(self, server: str) -> None:
        trace = self._tracing._trace
        parts = urlsplit(server)
        attributes: dict[str, Any] = {
            "http.request.method": "POST",
            "url.full": self._tracing._mask_url(server) + "/chat/completions",
            "server.address": parts.hostname or "",
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": PROVIDER,
        }
        if parts.port:
            attributes["server.port"] = parts.port
        self._attempts[server] = self._tracing.tracer.start_span(
            "POST", context=self._context, kind=trace.SpanKind.CLIENT, attributes=attributes)

    def attempt_ended(self, server: str, error: Any) -> None:
        span = self._attempts.get(server)
        if span is None:
            return
        if error is None:
            span.set_attribute("http.response.status_code", 200)
            return  # it answered: the try lasts until the answer has been read, ended in ended()
        del self._attempts[server]
        status = getattr(error, "upstream_status", None)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        span.set_attribute("error.type", str(status) if status is not None else error.code)
        span.set_status(self._status(self._status_code.ERROR, error.message))
        span.end()

    def received(self, chunks: Any) -> None:
        if not self._first_output:
            self._first_output = True
            self.span.add_event("gen_ai.first_chunk")

    def ended(self, outcome: Outcome) -> None:
        span = self.span
        response = outcome.response
        failure: Optional[str] = None
        if response is not None:
            span.set_attribute("gen_ai.response.model", response.model)
            span.set_attribute("gateway.response.status", response.status)
            usage = response.usage
            if usage is not None:
                span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
            if response.error is not None:
                failure = response.error.code or "error"
                span.set_status(self._status(self._status_code.ERROR, response.error.message))
        completion = outcome.completion
        if completion is not None:  # /v1/chat/completions
            if isinstance(completion.get("model"), str):
                span.set_attribute("gen_ai.response.model", completion["model"])
            if isinstance(completion.get("id"), str):
                span.set_attribute("gen_ai.response.id", completion["id"])
            usage = completion.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("prompt_tokens"), int):
                span.set_attribute("gen_ai.usage.input_tokens", usage["prompt_tokens"])
                span.set_attribute("gen_ai.usage.output_tokens", usage.get("completion_tokens") or 0)
        if outcome.finish_reason:
            span.set_attribute("gen_ai.response.finish_reasons", [outcome.finish_reason])
        span.set_attribute("http.response.status_code", outcome.status)
        if outcome.status == 499:
            failure = "cancelled"  # the client left
            span.set_status(self._status(self._status_code.ERROR, "the client left before the end"))
        elif outcome.status >= 400 or outcome.error is not None:  # (a chat stream fails with 200)
            error = outcome.error or {}
            failure = error.get("code") or error.get("type") or str(outcome.status)
            span.set_status(self._status(self._status_code.ERROR, error.get("message") or f"HTTP {outcome.status}"))
        if failure is not None:
            span.set_attribute("error.type", failure)
        for attempt in self._attempts.values():
            if outcome.status == 499:
                attempt.set_attribute("error.type", "cancelled")
            attempt.end()
        self._attempts.clear()
        span.end()
