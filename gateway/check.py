"""``vllm-gateway check``: validate the configuration and probe every upstream server.

The troubleshooting section, automated. For each ``base_url`` (servers are probed concurrently,
and reported in the configured order) the checks are:

==============  ======================================================================================
reachable       ``GET {base_url}/models`` answers with a model list (refused, 401/403, 404, timeouts
                and non-OpenAI answers are failures, each with what to do)
model served    ``model`` is among the served ids (llama.cpp answers any name: a warning there)
tokenize        the server root's ``/tokenize`` (llama.cpp: ``/apply-template`` then ``/tokenize``);
                a failure only when token tracking needs it, else a warning
generation      a one-token chat completion, with its latency
tool calling    ``tool_choice: "auto"`` with a trivial function tool is accepted (vLLM refuses it
                without ``--enable-auto-tool-choice --tool-call-parser``)
reasoning       how a short thinking generation comes back, against ``uses_reasoning_parser``
developer       whether the chat template renders a ``developer`` message (``/tokenize`` with and
                without one; llama.cpp: ``/apply-template``), and so whether the gateway folds them
                into the system message (``developer_messages``)
token ids       (``return_token_id_information`` only) logprobs carry token ids
==============  ======================================================================================

When a server is unreachable, or does not serve the model, its other checks are not run (they could
only fail the same way). The one-token generation runs alone, so its latency is not inflated by the
other probes; the remaining probes then run concurrently. Each check has its own time limit.

The reasoning rule. The probe streams up to 32 tokens with ``chat_template_kwargs:
{"enable_thinking": true}`` at temperature 0 (streaming, because a reasoning parser splits even a
truncated thought there, while some vLLM versions leave a truncated one in ``content``), then:

=====================================  ===============================  ==============================
the answer had                         ``uses_reasoning_parser: true``  ``uses_reasoning_parser: false``
=====================================  ===============================  ==============================
a ``reasoning``/``reasoning_content``  ! vLLM runs ``--reasoning-       ✓ the parser splits reasoning
field (a reasoning parser runs)        parser``: the gateway reads the  out, as configured
                                       field too, but NeMo Gym's setup
                                       expects tags in the text
``<think>`` / ``</think>`` in content  ✓ the gateway parses the tags    ! the tags stay in the text
neither                                ✓ (nothing to parse was seen)    ✓ (nothing to parse was seen)
=====================================  ===============================  ==============================

A reasoning field wins over tags. Warnings never fail the command; any failure makes it exit 1.

The API key travels only in the ``Authorization`` header: the report says whether one is set, and
anything printed is scrubbed of it (and of secret-looking ``default_headers`` values) besides.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import re
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Optional
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import orjson

from .config import Config
from .upstream.developer_role import WITH_DEVELOPER, WITHOUT_DEVELOPER, template_verdict, tokenize_verdict
from .upstream.sse import DONE, SSEDecoder

__all__ = [
    "CONFIG",
    "DEVELOPER_ROLE",
    "GENERATION",
    "MODEL_SERVED",
    "REACHABLE",
    "REASONING",
    "TOKENIZE",
    "TOKEN_IDS",
    "TOOL_CALLING",
    "CheckResult",
    "Report",
    "ServerReport",
    "Status",
    "main",
    "run_checks",
]

# Check names, as they appear in the report.
CONFIG = "config"
REACHABLE = "reachable"
MODEL_SERVED = "model served"
TOKENIZE = "tokenize"
GENERATION = "generation"
TOOL_CALLING = "tool calling"
REASONING = "reasoning"
TOKEN_IDS = "token ids"
DEVELOPER_ROLE = "developer"
_ORDER = [REACHABLE, MODEL_SERVED, TOKENIZE, GENERATION, TOOL_CALLING, REASONING, DEVELOPER_ROLE, TOKEN_IDS]

# What vLLM answers (400) to tool_choice "auto" without a tool parser (serving_chat.py):
#   "auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set
# and llama-server (500) to tools without --jinja: "tools param requires --jinja flag".
_NO_TOOL_PARSER_MARKERS = ("--enable-auto-tool-choice", "--tool-call-parser")
_NO_JINJA_MARKER = "--jinja"

REASONING_PROBE_TOKENS = 32
_TOKEN_ID_RE = re.compile(r"token_id:-?\d+")
_REDACTED = "***"


class Status(enum.Enum):
    OK = "ok"
    WARN = "warning"
    FAIL = "failed"


@dataclass
class CheckResult:
    name: str
    status: Status
    detail: str
    hint: str = ""  # what to do about it (failures and warnings)


@dataclass
class ServerReport:
    url: str  # as configured; shown with any password masked
    checks: list[CheckResult] = field(default_factory=list)
    not_run: str = ""  # why the remaining checks were not run, if they were not

    def check(self, name: str) -> Optional[CheckResult]:
        return next((c for c in self.checks if c.name == name), None)


@dataclass
class Report:
    server_name: str
    summary: list[tuple[str, str]]  # the resolved configuration, secrets reduced to "set"/"not set"
    config_checks: list[CheckResult]
    servers: list[ServerReport]
    secrets: frozenset[str] = frozenset()  # scrubbed from everything rendered

    def all_checks(self) -> list[CheckResult]:
        return [*self.config_checks, *(c for s in self.servers for c in s.checks)]

    def count(self, status: Status) -> int:
        return sum(1 for c in self.all_checks() if c.status is status)

    @property
    def passed(self) -> int:
        return self.count(Status.OK)

    @property
    def warnings(self) -> int:
        return self.count(Status.WARN)

    @property
    def failed(self) -> int:
        return self.count(Status.FAIL)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0

    def server(self, url: str) -> ServerReport:
        for server in self.servers:
            if server.url == url.rstrip("/"):
                return server
        raise KeyError(url)

    def render(self, use_color: bool = False, ascii_only: bool = False) -> str:
        return _scrub(_render(self, use_color, ascii_only), self.secrets)


# --------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------


async def run_checks(config: Config, *, timeout: float = 30.0) -> Report:
    """Validate ``config`` and probe each of its servers; never raises for what it finds."""
    ms = config.model_server
    config_checks = _check_config(config)
    broken = any(c.status is Status.FAIL for c in config_checks)
    servers = [ServerReport(url=url.rstrip("/")) for url in ms.base_url]
    valid = [s for s in servers if _url_problem(s.url) is None]
    for s in servers:
        if broken:
            s.not_run = "checks not run: fix the configuration first"
        elif s not in valid:
            s.not_run = "checks not run: the URL is invalid"
    if not broken and valid:
        headers = {"Content-Type": "application/json", **ms.default_headers}
        if ms.api_key:
            headers["Authorization"] = f"Bearer {ms.api_key}"
        connect = min(config.gateway.connect_timeout_s, timeout)
        session_timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect)
        async with aiohttp.ClientSession(timeout=session_timeout, headers=headers) as session:
            await asyncio.gather(*(_check_server(config, s, session, timeout) for s in valid))
    return Report(
        server_name=config.server_name,
        summary=_summary(config),
        config_checks=config_checks,
        servers=servers,
        secrets=_secrets(config),
    )


def main(config: Config, use_color: bool) -> int:
    """``vllm-gateway check``: print the report; 0 when nothing failed (warnings allowed), else 1."""
    ascii_only = not _can_encode(sys.stdout, "✓✗→…")
    servers = len(config.model_server.base_url)
    print(f"Checking {servers} server{'s' if servers != 1 else ''} for {config.server_name}"
          f"{'...' if ascii_only else '…'}", flush=True)
    report = asyncio.run(run_checks(config))
    print(report.render(use_color, ascii_only), flush=True)
    return report.exit_code


# --------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------


def _check_config(config: Config) -> list[CheckResult]:
    ms, gw = config.model_server, config.gateway
    results: list[CheckResult] = []
    problems: list[str] = []
    if not isinstance(ms.model, str) or not ms.model.strip():
        problems.append("model is empty")
    if not ms.base_url:
        problems.append("base_url lists no server")
    for i, url in enumerate(ms.base_url):
        problem = _url_problem(url)
        if problem:
            problems.append(f"base_url[{i}] {_display_url(url)!r} {problem}")
    if problems:
        results.append(CheckResult(CONFIG, Status.FAIL, "; ".join(problems),
                                   "set model and base_url (e.g. --model Qwen/Qwen3-8B --base-url "
                                   "http://localhost:8000/v1), then run the check again"))
    else:
        n = len(ms.base_url)
        results.append(CheckResult(CONFIG, Status.OK, f"valid: model {ms.model}, {n} server{'s' if n != 1 else ''}, "
                                                      f"{gw.upstream_flavour} flavour"))
    stripped = [u.rstrip("/") for u in ms.base_url]
    duplicates = sorted({u for u in stripped if stripped.count(u) > 1})
    if duplicates:
        results.append(CheckResult(CONFIG, Status.WARN, f"{', '.join(map(_display_url, duplicates))} is listed "
                                                        "more than once",
                                   "each copy gets its own share of the requests; list each server once"))
    if gw.upstream_flavour == "vllm":
        odd = [u for u in stripped if _url_problem(u) is None and not u.endswith("/v1")]
        if odd:
            results.append(CheckResult(CONFIG, Status.WARN, f"{', '.join(map(_display_url, odd))} does not end "
                                                            "in /v1",
                                       "base_url is vLLM's OpenAI base URL, e.g. http://localhost:8000/v1"))
    return results


def _summary(config: Config) -> list[tuple[str, str]]:
    ms, gw = config.model_server, config.gateway
    rows = [("base_url", ", ".join(_display_url(u) for u in ms.base_url)),
            ("model", ms.model or "(empty)"),
            ("api_key", "set" if ms.api_key else "not set"),
            ("upstream_flavour", gw.upstream_flavour),
            ("uses_reasoning_parser", _yaml_bool(ms.uses_reasoning_parser)),
            ("return_token_id_information", _yaml_bool(ms.return_token_id_information))]
    if ms.request_prompt_and_generation_token_ids:
        rows.append(("request_prompt_and_generation_token_ids", "true"))
    if ms.chat_template_kwargs:
        rows.append(("chat_template_kwargs", ", ".join(sorted(map(str, ms.chat_template_kwargs)))))
    if ms.default_headers:  # names only: values may be credentials
        rows.append(("default_headers", ", ".join(sorted(ms.default_headers))))
    return rows


def _url_problem(url: Any) -> Optional[str]:
    if not isinstance(url, str) or not url.strip():
        return "is empty"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        return "has an invalid port"
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        return "is not an http(s) URL"
    return None


# --------------------------------------------------------------------------
# Probing one server
# --------------------------------------------------------------------------


class _ProbeError(Exception):
    """A probe got no usable answer; the message and hint go into the report as they are."""

    def __init__(self, detail: str, hint: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.hint = hint


@dataclass
class _Answer:
    status: int
    body: Any  # the parsed JSON, or None
    text: str  # the raw body, shortened
    elapsed: float

    @property
    def message(self) -> str:
        """The server's own error message (vLLM's {"error": {"message"}} or older {"message"})."""
        body = self.body
        if isinstance(body, dict):
            error = body.get("error")
            if isinstance(error, dict) and isinstance(error.get("message"), str) and error["message"]:
                return error["message"]
            if isinstance(error, str) and error:
                return error
            for key in ("message", "detail"):
                if body.get(key):
                    return str(body[key])
        return self.text.strip() or f"HTTP {self.status}"


class _Probe:
    def __init__(self, config: Config, base: str, session: aiohttp.ClientSession, timeout: float) -> None:
        self.config = config
        self.base = base
        self.root = base[: -len("/v1")] if base.endswith("/v1") else base
        self.session = session
        self.timeout = timeout
        self.llama = config.gateway.upstream_flavour == "llama.cpp"
        self.kind = "llama-server" if self.llama else "vLLM"
        self.model = config.model_server.model
        self.shown = _display_url(base)
        # Paths for the report's details: the server's URL heads its section already.
        self.base_path = urlsplit(base).path.rstrip("/")
        self.root_path = urlsplit(self.root).path.rstrip("/")

    def chat_body(self, **fields: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "stream": False}
        kwargs = self.config.model_server.chat_template_kwargs
        if kwargs:
            body["chat_template_kwargs"] = dict(kwargs)
        for key, value in fields.items():
            if key == "chat_template_kwargs":
                value = {**body.get("chat_template_kwargs", {}), **value}
            body[key] = value
        return body

    async def call(self, method: str, url: str, body: Optional[dict[str, Any]] = None) -> _Answer:
        started = time.monotonic()
        try:
            data = orjson.dumps(body) if body is not None else None
            async with self.session.request(method, url, data=data) as response:
                raw = await response.read()
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            raise self._connect_error(exc) from None
        except TimeoutError:  # aiohttp's own connect/read timeouts
            raise _ProbeError(f"no answer from {_display_url(url)} within {self.timeout:g} s",
                              self._timeout_hint()) from None
        except aiohttp.ClientError as exc:
            raise _ProbeError(f"{method} {_display_url(url)} failed: {str(exc) or type(exc).__name__}",
                              f"is {self.shown} really {self.kind}? see its log") from None
        try:
            parsed = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            parsed = None
        return _Answer(status, parsed, raw[:300].decode("utf-8", "replace"), time.monotonic() - started)

    async def stream(self, url: str, body: dict[str, Any]) -> tuple[_Answer, list[dict[str, Any]]]:
        """POST a streaming chat completion; returns the answer (body only for errors) and its chunks."""
        started = time.monotonic()
        chunks: list[dict[str, Any]] = []
        try:
            async with self.session.post(url, data=orjson.dumps(body)) as response:
                if response.status >= 400:
                    raw = await response.read()
                    try:
                        parsed = orjson.loads(raw) if raw else None
                    except orjson.JSONDecodeError:
                        parsed = None
                    return _Answer(response.status, parsed, raw[:300].decode("utf-8", "replace"),
                                   time.monotonic() - started), chunks
                decoder = SSEDecoder()
                payloads: list[bytes] = []
                async for data in response.content.iter_any():
                    payloads.extend(decoder.feed(data))
                payloads.extend(decoder.close())
                status = response.status
        except aiohttp.ClientConnectorError as exc:
            raise self._connect_error(exc) from None
        except TimeoutError:
            raise _ProbeError(f"no answer from {_display_url(url)} within {self.timeout:g} s",
                              self._timeout_hint()) from None
        except aiohttp.ClientError as exc:
            raise _ProbeError(f"the stream from {_display_url(url)} broke: {str(exc) or type(exc).__name__}",
                              f"see {self.kind}'s log") from None
        for payload in payloads:
            if payload == DONE:
                break
            try:
                chunk = orjson.loads(payload)
            except orjson.JSONDecodeError:
                raise _ProbeError(f"{_display_url(url)} streamed a line that is not JSON: "
                                  f"{payload[:80].decode('utf-8', 'replace')!r}",
                                  f"is {self.shown} really {self.kind}?") from None
            if isinstance(chunk, dict) and "error" in chunk:
                answer = _Answer(500, chunk, "", time.monotonic() - started)
                raise _ProbeError(f"{self.kind} failed mid-stream: {answer.message}", f"see {self.kind}'s log")
            if isinstance(chunk, dict):
                chunks.append(chunk)
        return _Answer(status, None, "", time.monotonic() - started), chunks

    def _connect_error(self, exc: aiohttp.ClientConnectorError) -> _ProbeError:
        os_error = exc.os_error
        parts = urlsplit(self.base)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if isinstance(os_error, ConnectionRefusedError) or getattr(os_error, "errno", None) == errno.ECONNREFUSED:
            launch = "llama-server" if self.llama else "vLLM (vllm serve)"
            return _ProbeError(f"Connection refused to {self.shown}",
                               f"is {launch} running? Was it started with --port {port} (and --host 0.0.0.0 "
                               "when the gateway runs on another machine)?")
        if isinstance(os_error, socket.gaierror):
            return _ProbeError(f"cannot resolve the host {parts.hostname!r} of {self.shown}",
                               "check the host name in base_url")
        if isinstance(exc, (aiohttp.ClientConnectorCertificateError, aiohttp.ClientSSLError)):
            return _ProbeError(f"TLS failed for {self.shown}: {exc}",
                               "an https URL for a plain-http server? vLLM serves plain http unless given "
                               "--ssl-certfile")
        reason = (os_error.strerror if os_error is not None and os_error.strerror else None) or str(exc)
        return _ProbeError(f"cannot connect to {self.shown}: {reason}",
                           f"is the host reachable from here, and {self.kind} listening on port {port}?")

    def _timeout_hint(self) -> str:
        return (f"is {self.kind} overloaded or still loading the model? Is the host reachable from here "
                "(firewall, --host 0.0.0.0 on the server)?")


async def _check_server(config: Config, report: ServerReport, session: aiohttp.ClientSession, timeout: float) -> None:
    probe = _Probe(config, report.url, session, timeout)
    results: dict[str, CheckResult] = {}

    def done() -> None:
        report.checks = [results[name] for name in _ORDER if name in results]

    served = await _guard(REACHABLE, _reachable(probe), timeout, probe)
    results[REACHABLE] = served.result
    if served.result.status is Status.FAIL:
        report.not_run = "other checks not run: the server cannot be reached"
        return done()
    results[MODEL_SERVED] = _model_served(probe, served.value)
    if results[MODEL_SERVED].status is Status.FAIL:
        report.not_run = "other checks not run: the model is not served there"
        return done()
    # Alone, so that its latency is the server's own.
    results[GENERATION] = (await _guard(GENERATION, _generation(probe), timeout, probe)).result
    ms = config.model_server
    tokenize_needed = ms.return_token_id_information and not (ms.request_prompt_and_generation_token_ids
                                                              and not probe.llama)
    probes: dict[str, Awaitable[_Outcome]] = {
        TOKENIZE: _guard(TOKENIZE, _tokenize(probe, served.value, tokenize_needed), timeout, probe,
                         Status.FAIL if tokenize_needed else Status.WARN,
                         "token tracking needs it" if tokenize_needed else "only token tracking needs it"),
        TOOL_CALLING: _guard(TOOL_CALLING, _tool_calling(probe), timeout, probe),
        REASONING: _guard(REASONING, _reasoning(probe), timeout, probe),
        DEVELOPER_ROLE: _guard(DEVELOPER_ROLE, _developer_role(probe), timeout, probe, Status.WARN),
    }
    if ms.return_token_id_information:
        probes[TOKEN_IDS] = _guard(TOKEN_IDS, _token_ids(probe), timeout, probe)
    for name, outcome in zip(probes, await asyncio.gather(*probes.values())):
        results[name] = outcome.result
    done()


@dataclass
class _Outcome:
    result: CheckResult
    value: Any = None


async def _guard(name: str, probe: Awaitable[_Outcome], timeout: float, p: _Probe,
                 status_on_error: Status = Status.FAIL, extra_hint: str = "") -> _Outcome:
    """Run one check within its time limit; what goes wrong becomes its result, never an exception."""
    try:
        async with asyncio.timeout(timeout):
            return await probe
    except _ProbeError as exc:
        return _Outcome(CheckResult(name, status_on_error, exc.detail, _join_hints(exc.hint, extra_hint)))
    except TimeoutError:
        return _Outcome(CheckResult(name, status_on_error, f"no answer from {p.shown} within {timeout:g} s",
                                    _join_hints(p._timeout_hint(), extra_hint)))
    except Exception as exc:  # a bug or a truly odd answer: report it rather than crash the whole report
        return _Outcome(CheckResult(name, status_on_error, f"unexpected {type(exc).__name__}: {exc}",
                                    f"is {p.shown} really {p.kind}?"))


def _join_hints(*hints: str) -> str:
    return "; ".join(h for h in hints if h)


# --- the checks -----------------------------------------------------------------------------------


async def _reachable(p: _Probe) -> _Outcome:
    async def version() -> Optional[str]:
        if p.llama:
            return None
        try:
            async with asyncio.timeout(min(2.0, p.timeout / 2)):  # a nicety: never what times the check out
                answer = await p.call("GET", f"{p.root}/version")
        except (_ProbeError, TimeoutError):
            return None
        if answer.status == 200 and isinstance(answer.body, dict) and isinstance(answer.body.get("version"), str):
            return answer.body["version"]
        return None

    # Both finish before anything is raised: no request outlives the check.
    answer, served_version = await asyncio.gather(p.call("GET", f"{p.base}/models"), version(),
                                                  return_exceptions=True)
    if isinstance(answer, BaseException):
        raise answer
    if isinstance(served_version, BaseException):  # the version is a nicety, never a failure
        served_version = None
    where = f"GET {p.base_path}/models"
    if answer.status in (401, 403):
        if p.config.model_server.api_key:
            hint = (f"the api_key is not the one {p.kind} was started with (--api-key / VLLM_API_KEY): "
                    "fix api_key (policy_api_key, --api-key)")
        else:
            hint = f"{p.kind} was started with --api-key: set api_key (policy_api_key, --api-key)"
        raise _ProbeError(f"{where} answered {answer.status}: the API key was refused", hint)
    if answer.status == 404:
        hint = (f"base_url is the OpenAI base URL: {p.shown}/v1 ?" if not p.base.endswith("/v1")
                else f"is {p.shown} really {p.kind}? Behind a proxy, it must route /v1/models too")
        raise _ProbeError(f"{where} answered 404", hint)
    if answer.status >= 400:
        hint = (f"{p.kind} is up but failing (or still starting): see its log" if answer.status >= 500
                else f"is {p.shown} really {p.kind}?")
        raise _ProbeError(f"{where} answered {answer.status}: {_shorten(answer.message)}", hint)
    data = answer.body.get("data") if isinstance(answer.body, dict) else None
    if not isinstance(data, list):
        raise _ProbeError(f"{where} answered without a model list", f"is {p.shown} really {p.kind}?")
    models = [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]
    ids = [m["id"] for m in models]
    detail = f"{where} answered in {_ms(answer.elapsed)}"
    if served_version:
        detail += f" (vLLM {served_version})"
    detail += f"; serves {', '.join(ids) if ids else 'nothing'}"
    return _Outcome(CheckResult(REACHABLE, Status.OK, detail), models)


def _model_served(p: _Probe, models: list[dict[str, Any]]) -> CheckResult:
    ids = [m["id"] for m in models]
    entry = next((m for m in models if m["id"] == p.model), None)
    if entry is None:
        aliases = [m for m in models if p.model in (m.get("aliases") or [])]
        entry = aliases[0] if aliases else None
    if entry is not None:
        context = _context_length(entry)
        detail = p.model + (f" (max_model_len {context})" if context else "")
        return CheckResult(MODEL_SERVED, Status.OK, detail)
    served = ", ".join(ids) if ids else "no model"
    if p.llama:  # llama-server answers whatever model name it is sent
        return CheckResult(MODEL_SERVED, Status.WARN, f"{p.model!r} is not among the served ids ({served})",
                           f"llama-server answers any name with its one model; start it with --alias {p.model} "
                           "or set model to its name, so that logs and responses agree")
    hint = (f"set model to {'one of: ' + served if len(ids) > 1 else served}, or start vLLM with "
            f"--served-model-name {p.model}") if ids else "vLLM serves no model: see its log"
    return CheckResult(MODEL_SERVED, Status.FAIL, f"{p.model!r} is not served by {p.shown}; it serves {served}", hint)


async def _tokenize(p: _Probe, models: list[dict[str, Any]], needed: bool) -> _Outcome:
    why = ("token tracking (return_token_id_information) needs it" if needed
           else "only token tracking (return_token_id_information) needs it")
    status = Status.FAIL if needed else Status.WARN
    messages = [{"role": "user", "content": "hi"}]
    if p.llama:
        rendered = await p.call("POST", f"{p.root}/apply-template", {"messages": messages})
        if rendered.status != 200 or not isinstance(rendered.body, dict) or not isinstance(
                rendered.body.get("prompt"), str):
            return _Outcome(CheckResult(TOKENIZE, status, f"POST {p.root_path}/apply-template answered "
                                                          f"{rendered.status}: {_shorten(rendered.message)}",
                                        f"llama-server too old for /apply-template? ({why})"))
        path = "/tokenize"
        answer = await p.call("POST", f"{p.root}{path}",
                              {"content": rendered.body["prompt"], "add_special": False, "parse_special": True})
    else:
        path = "/tokenize"
        answer = await p.call("POST", f"{p.root}{path}",
                              {"model": p.model, "messages": messages, "add_generation_prompt": True})
    where = f"POST {p.root_path}{path}"
    if answer.status == 404:
        return _Outcome(CheckResult(TOKENIZE, status, f"{where} answered 404",
                                    f"{p.kind} serves /tokenize at its root, not under /v1; a proxy in front "
                                    f"of it must route /tokenize too ({why})"))
    if answer.status >= 400:
        return _Outcome(CheckResult(TOKENIZE, status, f"{where} answered {answer.status}: "
                                                      f"{_shorten(answer.message)}", f"see {p.kind}'s log ({why})"))
    tokens = answer.body.get("tokens") if isinstance(answer.body, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        return _Outcome(CheckResult(TOKENIZE, status, f"{where} answered without a list of integer tokens",
                                    f"is {p.shown} really {p.kind}? ({why})"))
    context = answer.body.get("max_model_len")
    if not isinstance(context, int):
        context = next((_context_length(m) for m in models if m["id"] == p.model), None)
    detail = f"{len(tokens)} prompt tokens for a one-message chat"
    if context:
        detail += f", max_model_len {context}"
    return _Outcome(CheckResult(TOKENIZE, Status.OK, detail))


async def _generation(p: _Probe) -> _Outcome:
    body = p.chat_body(messages=[{"role": "user", "content": "Say OK"}], max_tokens=1)
    answer = await p.call("POST", f"{p.base}/chat/completions", body)
    if answer.status >= 400:
        raise _ProbeError(f"POST {p.base_path}/chat/completions answered {answer.status}: "
                          f"{_shorten(answer.message)}",
                          _generation_hint(p, answer))
    message = _first_message(answer.body)
    if message is None:
        raise _ProbeError(f"POST {p.base_path}/chat/completions answered without a chat completion",
                          f"is {p.shown} really {p.kind}?")
    text = message.get("content") or message.get("reasoning") or message.get("reasoning_content") or ""
    shown = f" {_shorten(str(text), 30)!r}" if text else ""
    return _Outcome(CheckResult(GENERATION, Status.OK, f"one token{shown} in {_ms(answer.elapsed)}"))


def _generation_hint(p: _Probe, answer: _Answer) -> str:
    text = answer.message.lower()
    if answer.status == 404 or "does not exist" in text:
        return f"the model name is wrong: set model, or start vLLM with --served-model-name {p.model}"
    if "chat template" in text:
        return "the model has no chat template: start vLLM with --chat-template <file>"
    if "context length" in text or "max_model_len" in text or "maximum context" in text:
        return "even a one-line prompt does not fit: check vLLM's --max-model-len"
    if answer.status >= 500:
        return f"{p.kind}'s engine failed: see its log"
    return f"see {p.kind}'s log for the cause"


_PROBE_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The current time.",
        "parameters": {"type": "object", "properties": {}},
    },
}


async def _tool_calling(p: _Probe) -> _Outcome:
    body = p.chat_body(messages=[{"role": "user", "content": "What time is it?"}], tools=[_PROBE_TOOL],
                       tool_choice="auto", max_tokens=1)
    answer = await p.call("POST", f"{p.base}/chat/completions", body)
    if answer.status < 400 and _first_message(answer.body) is not None:
        how = "--jinja is on" if p.llama else "a tool parser is on"
        return _Outcome(CheckResult(TOOL_CALLING, Status.OK, f'tool_choice "auto" accepted ({how})'))
    if answer.status < 400:
        raise _ProbeError(f"POST {p.base_path}/chat/completions with tools answered without a chat completion",
                          f"is {p.shown} really {p.kind}?")
    message = answer.message
    if any(marker in message for marker in _NO_TOOL_PARSER_MARKERS):
        raise _ProbeError(f'{p.kind} refuses tool_choice "auto" ({answer.status}): {_shorten(message)}',
                          "start vLLM with --enable-auto-tool-choice --tool-call-parser hermes (hermes for "
                          "Qwen2.5/Qwen3; the parser must match the model's chat template: llama3_json for "
                          "Llama 3.x, mistral for Mistral...)")
    if _NO_JINJA_MARKER in message:
        raise _ProbeError(f"llama-server refuses tools ({answer.status}): {_shorten(message)}",
                          "start llama-server with --jinja")
    raise _ProbeError(f'a request with tools and tool_choice "auto" answered {answer.status}: {_shorten(message)}',
                      f"tool calls through the gateway will fail the same way; see {p.kind}'s log")


async def _reasoning(p: _Probe) -> _Outcome:
    body = p.chat_body(messages=[{"role": "user", "content": "What is 17 * 23?"}],
                       max_tokens=REASONING_PROBE_TOKENS, temperature=0, stream=True,
                       chat_template_kwargs={"enable_thinking": True})
    answer, chunks = await p.stream(f"{p.base}/chat/completions", body)
    if answer.status >= 400:
        raise _ProbeError(f"a short thinking generation (enable_thinking) answered {answer.status}: "
                          f"{_shorten(answer.message)}", _generation_hint(p, answer))
    content: list[str] = []
    fields: dict[str, int] = {}
    for chunk in chunks:
        choices = chunk.get("choices")
        if not isinstance(choices, list):
            continue
        for choice in choices:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if not isinstance(delta, dict):
                continue
            for name in ("reasoning", "reasoning_content"):
                if isinstance(delta.get(name), str) and delta[name]:
                    fields[name] = fields.get(name, 0) + len(delta[name])
            if isinstance(delta.get("content"), str):
                content.append(delta["content"])
    text = "".join(content)
    tags = [tag for tag in ("<think>", "</think>") if tag in text]
    uses_parser = p.config.model_server.uses_reasoning_parser
    if fields:
        name = max(fields, key=fields.__getitem__)
        if not uses_parser:
            return _Outcome(CheckResult(REASONING, Status.OK, f"{p.kind} splits reasoning into `{name}`, as "
                                                              "uses_reasoning_parser: false expects"))
        if p.llama:
            what, drop = "llama-server parses reasoning itself", "start llama-server with --reasoning-format none"
        else:
            what, drop = "vLLM runs --reasoning-parser", "drop --reasoning-parser from vLLM's command line"
        return _Outcome(CheckResult(
            REASONING, Status.WARN,
            f"{what} (reasoning arrives in `{name}`): the gateway reads it too, but uses_reasoning_parser: true "
            "(NeMo Gym's vllm_model setup) expects <think> tags in the text",
            f"{drop} (the gateway parses the tags), or set uses_reasoning_parser: false if the parser is intended"))
    if tags:
        seen = " and ".join(tags)
        if uses_parser:
            detail = f"{seen} in the text, no reasoning parser: the gateway parses the tags"
            if tags == ["</think>"] and not p.config.gateway.reasoning_starts_open:
                return _Outcome(CheckResult(
                    REASONING, Status.WARN, f"only </think> in the text: the chat template opens <think> in the "
                                            "prompt, so the reasoning would arrive as answer text",
                    "set gateway.reasoning_starts_open: true"))
            return _Outcome(CheckResult(REASONING, Status.OK, detail))
        return _Outcome(CheckResult(
            REASONING, Status.WARN, f"{seen} in the text while uses_reasoning_parser is false: the tags will stay "
                                    "in the text",
            "set uses_reasoning_parser: true (the gateway then turns them into reasoning items)"))
    return _Outcome(CheckResult(REASONING, Status.OK,
                                f"no reasoning field and no <think> tag in {REASONING_PROBE_TOKENS} tokens with "
                                "enable_thinking (no reasoning parser)"))


async def _developer_role(p: _Probe) -> _Outcome:
    """The same probe the gateway runs before the first request with developer messages."""
    if p.llama:
        answer = await p.call("POST", f"{p.root}/apply-template", {"messages": WITH_DEVELOPER})
        prompt = answer.body.get("prompt") if answer.status == 200 and isinstance(answer.body, dict) else None
        if answer.status == 200 and not isinstance(prompt, str):
            raise _ProbeError(f"POST {p.root_path}/apply-template answered without a prompt",
                              "llama-server too old for /apply-template?")
        renders = template_verdict(prompt if isinstance(prompt, str) else None)
        how = "/apply-template"
    else:
        counts = []
        for messages in (WITHOUT_DEVELOPER, WITH_DEVELOPER):
            answer = await p.call("POST", f"{p.root}/tokenize",
                                  {"model": p.model, "messages": messages, "add_generation_prompt": True})
            tokens = answer.body.get("tokens") if answer.status == 200 and isinstance(answer.body, dict) else None
            if answer.status != 400 and not isinstance(tokens, list):
                raise _ProbeError(f"POST {p.root_path}/tokenize answered {answer.status}: {_shorten(answer.message)}",
                                  "without /tokenize the gateway cannot tell, and folds developer messages into the "
                                  "system message (set gateway.developer_messages to decide)")
            counts.append(len(tokens) if isinstance(tokens, list) else None)
        renders = tokenize_verdict(counts[0], counts[1])
        how = "/tokenize with and without one"
    mode = p.config.gateway.developer_messages
    if p.config.model_server.replace_developer_role_with_system:
        mode = "replace"
    if renders is None:
        raise _ProbeError(f"{how}: {p.kind} cannot tell", "developer messages are folded into the system message")
    if renders:
        detail = "the chat template renders developer messages"
        if mode == "fold":
            detail += "; folded into the system message anyway (developer_messages: fold)"
        return _Outcome(CheckResult(DEVELOPER_ROLE, Status.OK, f"{detail} ({how})"))
    detail = f"the chat template drops developer messages ({how})"
    if mode == "keep":
        return _Outcome(CheckResult(DEVELOPER_ROLE, Status.WARN, detail + "; developer_messages: keep sends them "
                                    "anyway, so the model never sees them",
                                    "set gateway.developer_messages: auto (or fold)"))
    if mode == "replace":
        return _Outcome(CheckResult(DEVELOPER_ROLE, Status.OK, detail + "; replace_developer_role_with_system "
                                                                        "sends them as system messages"))
    return _Outcome(CheckResult(DEVELOPER_ROLE, Status.OK, detail + "; the gateway folds them into the system message"))


async def _token_ids(p: _Probe) -> _Outcome:
    ms = p.config.model_server
    inline = ms.request_prompt_and_generation_token_ids and not p.llama
    extra: dict[str, Any] = {"logprobs": True, "top_logprobs": 1 if p.llama else 0}
    if not p.llama:
        extra["return_tokens_as_token_ids"] = True
    if inline:
        extra["return_token_ids"] = True
    body = p.chat_body(messages=[{"role": "user", "content": "Say OK"}], max_tokens=2, **extra)
    answer = await p.call("POST", f"{p.base}/chat/completions", body)
    if answer.status >= 400:
        hint = (f"{p.kind} refuses logprobs: was it started with --max-logprobs 0?"
                if "logprob" in answer.message.lower() else _generation_hint(p, answer))
        raise _ProbeError(f"a generation with logprobs answered {answer.status}: {_shorten(answer.message)}", hint)
    choice = _first_choice(answer.body)
    if choice is None:
        raise _ProbeError("a generation with logprobs answered without a chat completion",
                          f"is {p.shown} really {p.kind}?")
    logprobs = choice.get("logprobs")
    entries = logprobs.get("content") if isinstance(logprobs, dict) else None
    if not isinstance(entries, list) or not entries or not all(isinstance(e, dict) for e in entries):
        other = "vllm" if p.llama else "llama.cpp"
        raise _ProbeError(f"{p.kind} sent no logprobs for logprobs: true",
                          f"is the upstream really {p.kind}? (if not, set gateway.upstream_flavour: {other})")
    ids: list[int] = []
    if p.llama:
        for entry in entries:
            if not isinstance(entry.get("id"), int):
                raise _ProbeError("llama-server's logprobs carry no token `id`",
                                  "llama-server too old? If the upstream is vLLM, set gateway.upstream_flavour: vllm")
            ids.append(entry["id"])
    else:
        for entry in entries:
            token = entry.get("token")
            if not isinstance(token, str) or not _TOKEN_ID_RE.fullmatch(token):
                raise _ProbeError(f"logprobs tokens look like {_shorten(str(token), 30)!r}, not 'token_id:<int>'",
                                  "vLLM too old for return_tokens_as_token_ids? Upgrade it. (If the upstream is "
                                  "llama.cpp, set gateway.upstream_flavour: llama.cpp)")
            ids.append(int(token.split(":", 1)[1]))
    detail = f"{len(ids)} generated tokens with ids ({', '.join(map(str, ids[:4]))}) and logprobs"
    if inline:
        prompt_ids = answer.body.get("prompt_token_ids") if isinstance(answer.body, dict) else None
        if not isinstance(prompt_ids, list) or not isinstance(choice.get("token_ids"), list):
            raise _ProbeError("vLLM ignored return_token_ids (no prompt_token_ids / token_ids in the answer)",
                              "upgrade vLLM, or set request_prompt_and_generation_token_ids: false (the gateway "
                              "then calls /tokenize)")
        detail += f"; inline ids ({len(prompt_ids)} prompt tokens)"
    return _Outcome(CheckResult(TOKEN_IDS, Status.OK, detail))


# --- helpers --------------------------------------------------------------------------------------


def _first_choice(body: Any) -> Optional[dict[str, Any]]:
    if not isinstance(body, dict):
        return None
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return None
    return choices[0]


def _first_message(body: Any) -> Optional[dict[str, Any]]:
    choice = _first_choice(body)
    message = choice.get("message") if choice is not None else None
    return message if isinstance(message, dict) else None


def _context_length(entry: dict[str, Any]) -> Optional[int]:
    value = entry.get("max_model_len")  # vLLM
    if not isinstance(value, int):
        meta = entry.get("meta")  # llama-server
        value = meta.get("n_ctx") if isinstance(meta, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _shorten(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _yaml_bool(value: Any) -> str:
    return "true" if value is True else "false" if value is False else repr(value)


def _display_url(url: str) -> str:
    """The URL with any password in it masked."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        userinfo, host = parts.netloc.rsplit("@", 1)
        return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:{_REDACTED}@{host}"))
    except ValueError:
        return url


def _secret_header(name: str) -> bool:
    lowered = name.lower().replace("_", "-")
    return any(word in lowered for word in ("auth", "api-key", "apikey", "token", "secret", "password", "cookie"))


def _secrets(config: Config) -> frozenset[str]:
    ms = config.model_server
    found = {ms.api_key, *(v for k, v in ms.default_headers.items() if _secret_header(k))}
    for url in ms.base_url:
        try:
            if urlsplit(url).password:
                found.add(urlsplit(url).password or "")
        except ValueError:
            pass
    return frozenset(s for s in found if isinstance(s, str) and s)


def _scrub(text: str, secrets: frozenset[str]) -> str:
    # Longest first, so a secret containing another is masked whole. Values too short to be a
    # credential (or NeMo Gym's placeholder "EMPTY") would only garble the text.
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4 and secret != "EMPTY":
            text = text.replace(secret, _REDACTED)
    return text


def _can_encode(stream: Any, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

_MARKS = {Status.OK: "✓", Status.WARN: "!", Status.FAIL: "✗"}
_ASCII_MARKS = {Status.OK: "+", Status.WARN: "!", Status.FAIL: "x"}
_COLORS = {Status.OK: "32", Status.WARN: "33", Status.FAIL: "31"}


def _render(report: Report, use_color: bool, ascii_only: bool) -> str:
    def paint(text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if use_color else text

    marks = _ASCII_MARKS if ascii_only else _MARKS
    arrow = "->" if ascii_only else "→"
    # One column for every report, whichever checks ran.
    width = max(len(n) for n in [*_ORDER, CONFIG, *(c.name for c in report.all_checks())])
    lines: list[str] = []

    def add_check(check: CheckResult) -> None:
        mark = paint(marks[check.status], _COLORS[check.status] + ";1")
        lines.append(f"  {mark} {check.name.ljust(width)}  {check.detail}")
        if check.hint and check.status is not Status.OK:
            lines.append(f"    {' ' * width}  {paint(f'{arrow} {check.hint}', '36')}")

    lines.append(paint(f"Configuration ({report.server_name})", "1"))
    key_width = max((len(k) for k, _ in report.summary), default=0)
    for key, value in report.summary:
        lines.append(f"    {key.ljust(key_width)}  {value}")
    for check in report.config_checks:
        add_check(check)
    total = len(report.servers)
    for i, server in enumerate(report.servers, 1):
        lines.append("")
        title = f"Server {i} of {total}: " if total > 1 else "Server: "
        lines.append(paint(title + _display_url(server.url), "1"))
        for check in server.checks:
            add_check(check)
        if server.not_run:
            lines.append(paint(f"  ({server.not_run})", "2"))
    lines.append("")
    passed, warnings, failed = report.passed, report.warnings, report.failed
    summary = (f"{passed} check{'s' if passed != 1 else ''} passed, "
               f"{warnings} warning{'s' if warnings != 1 else ''}, {failed} failed")
    lines.append(paint(summary, "31;1" if failed else "33;1" if warnings else "32;1"))
    return "\n".join(lines)
