"""``vllm-gateway check`` against scripted vLLM servers on real sockets: healthy, misconfigured
(no tool parser, a reasoning parser on while the config expects tags, wrong key, wrong model,
no /tokenize, too old for token ids), unreachable and stalled; and once against the real llama.cpp
server."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

import pytest
from aiohttp import web

from gateway import check
from gateway.check import (DEVELOPER_ROLE, GENERATION, MODEL_SERVED, REACHABLE, REASONING, TOKEN_IDS, TOKENIZE, TOOL_CALLING,
                           Report, Status)
from gateway.config import Config, load_config, shortcut_overrides
from gateway.server.runner import bound_url
from tests.conftest import MODEL, ROOT, free_port
from tests.fake_vllm import FakeVLLM, Generation, content, reasoning

OK, WARN, FAIL = Status.OK, Status.WARN, Status.FAIL

# vLLM's exact answer to tool_choice "auto" without --enable-auto-tool-choice --tool-call-parser
# (vllm/entrypoints/openai/serving_chat.py, create_error_response: 400, BadRequestError).
NO_TOOL_PARSER = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
API_KEY = "sk-check-secret-4242"


class ScriptedVLLM(FakeVLLM):
    """FakeVLLM with vLLM's server flags as switches. Every answer is chosen from the request
    itself (the check sends its probes concurrently, so a queue would not do)."""

    def __init__(self, *, tool_parser: bool = True, reasoning_parser: bool = False, think_tags: bool = False,
                 tokenize: bool = True, token_ids_as_ids: bool = True, api_key: Optional[str] = None,
                 served: Optional[list[str]] = None, stall: float = 0.0, echo_auth: bool = False) -> None:
        super().__init__(MODEL)
        self.tool_parser = tool_parser
        self.reasoning_parser = reasoning_parser
        self.think_tags = think_tags
        self.tokenize_enabled = tokenize
        self.token_ids_as_ids = token_ids_as_ids
        self.api_key = api_key
        self.served = served or [MODEL]
        self.stall = stall
        self.echo_auth = echo_auth
        self.app.router.add_get("/version", self._version)
        self.app.middlewares.append(self._auth)

    @web.middleware
    async def _auth(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        # vLLM's --api-key guards the /v1 routes only.
        if self.api_key and request.path.startswith("/v1") and \
                request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)

    async def _version(self, request: web.Request) -> web.Response:
        return web.json_response({"version": "0.11.0"})

    async def _models(self, request: web.Request) -> web.Response:
        await asyncio.sleep(self.stall)
        return web.json_response({"object": "list", "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "vllm", "root": name, "max_model_len": 4096}
            for name in self.served]})

    async def _tokenize(self, request: web.Request) -> web.Response:
        if not self.tokenize_enabled:  # e.g. a proxy that routes /v1 only
            return web.json_response({"detail": "Not Found"}, status=404)
        return await super()._tokenize(request)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append({"path": request.path, "body": body, "headers": dict(request.headers)})
        if body.get("model") not in self.served:
            return _error(404, f"The model `{body.get('model')}` does not exist.", "NotFoundError")
        if body.get("tool_choice") == "auto" and not self.tool_parser:
            echo = f" (sent {request.headers.get('Authorization')})" if self.echo_auth else ""
            return _error(400, NO_TOOL_PARSER + echo)
        thinking = (body.get("chat_template_kwargs") or {}).get("enable_thinking")
        if thinking and self.reasoning_parser:
            gen = Generation(deltas=reasoning("The user asks for 17 times 23. 17*20=340, 17*3=51"),
                             finish_reason="length")
        elif thinking and self.think_tags:
            gen = Generation(deltas=content("<think>The user asks for 17 times 23."), finish_reason="length")
        elif body.get("logprobs"):
            gen = Generation(deltas=[{"content": "OK", "_tokens": [(3925, -0.1)]}], finish_tokens=[(151645, -0.01)])
        else:
            gen = Generation(deltas=content("OK"), finish_reason="length")
        if body.get("stream"):
            # FakeVLLM streams what its script says: put this answer first, then let it run at once
            # (no await in between, so a concurrent probe cannot take it).
            self.script.insert(0, gen)
            return await super()._chat(request)
        # Without streaming, answer here synchronously: FakeVLLM keeps the current body on self.
        self._body = {**body, "return_tokens_as_token_ids": body.get("return_tokens_as_token_ids")
                      and self.token_ids_as_ids}
        self._gen = gen
        return web.json_response(self._completion(gen))


def _error(status: int, message: str, kind: str = "BadRequestError") -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": status}},
                             status=status)


Start = Callable[..., Awaitable[ScriptedVLLM]]


@pytest.fixture
async def start_vllm() -> AsyncIterator[Start]:
    runners: list[web.AppRunner] = []

    async def start(**flags: Any) -> ScriptedVLLM:
        fake = ScriptedVLLM(**flags)
        runner = web.AppRunner(fake.app, handler_cancellation=True, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        fake.url = bound_url(runner) + "/v1"  # type: ignore[attr-defined]
        return fake

    yield start
    for runner in runners:
        await runner.cleanup()


def make_config(base_url: str | list[str], *overrides: str, api_key: str = "", model: str = MODEL) -> Config:
    if isinstance(base_url, list):
        overrides = ("policy_base_url=[" + ",".join(base_url) + "]", *overrides)
        base_url = base_url[0]
    return load_config([ROOT / "config" / "vllm_model.yaml"],
                       overrides=shortcut_overrides(base_url, model, api_key) + list(overrides), environ={})


def outcomes(report: Report, url: str) -> dict[str, Status]:
    return {c.name: c.status for c in report.server(url).checks}


def unreachable_url() -> str:
    return f"http://127.0.0.1:{free_port()}/v1"


# --- healthy ------------------------------------------------------------------------------------


async def test_healthy_vllm_passes_every_check(start_vllm: Start) -> None:
    fake = await start_vllm()
    report = await check.run_checks(make_config(fake.url))
    assert outcomes(report, fake.url) == {REACHABLE: OK, MODEL_SERVED: OK, TOKENIZE: OK, GENERATION: OK,
                                          TOOL_CALLING: OK, REASONING: OK, DEVELOPER_ROLE: OK}
    assert [c.status for c in report.config_checks] == [OK]
    assert (report.passed, report.warnings, report.failed, report.exit_code) == (8, 0, 0, 0)
    text = report.render()
    assert "8 checks passed, 0 warnings, 0 failed" in text
    assert "vLLM 0.11.0" in text and "max_model_len 4096" in text
    assert "api_key" in text and "not set" in text
    # the checks appear in a fixed order, each once
    names = [line.split()[1] for line in text.splitlines() if line.startswith("  ✓ ")]
    assert names == ["config", "reachable", "model", "tokenize", "generation", "tool", "reasoning", "developer"]
    # what the probes sent: a one-token generation, a tool with tool_choice auto, a thinking stream
    bodies = [r["body"] for r in fake.requests]
    assert any(b.get("max_tokens") == 1 and not b.get("tools") for b in bodies)
    assert any(b.get("tool_choice") == "auto" and b.get("tools") for b in bodies)
    assert any(b.get("stream") and b["chat_template_kwargs"] == {"enable_thinking": True} for b in bodies)
    assert fake.tokenize_requests[0]["body"]["add_generation_prompt"] is True


async def test_healthy_vllm_with_token_tracking(start_vllm: Start) -> None:
    fake = await start_vllm()
    report = await check.run_checks(make_config(fake.url, "+policy_model.vllm_model.return_token_id_information=true"))
    assert outcomes(report, fake.url)[TOKEN_IDS] is OK
    assert report.exit_code == 0 and report.failed == 0 and report.passed == 9
    detail = report.server(fake.url).check(TOKEN_IDS).detail  # type: ignore[union-attr]
    assert "3925" in detail and "151645" in detail
    body = next(r["body"] for r in fake.requests if r["body"].get("logprobs"))
    assert body["return_tokens_as_token_ids"] is True and body["top_logprobs"] == 0 and body["max_tokens"] == 2


# --- misconfigured ------------------------------------------------------------------------------


async def test_no_tool_parser_fails_with_the_flags_to_add(start_vllm: Start) -> None:
    fake = await start_vllm(tool_parser=False)
    report = await check.run_checks(make_config(fake.url))
    assert outcomes(report, fake.url) == {REACHABLE: OK, MODEL_SERVED: OK, TOKENIZE: OK, GENERATION: OK,
                                          TOOL_CALLING: FAIL, REASONING: OK, DEVELOPER_ROLE: OK}
    assert report.exit_code == 1 and report.failed == 1
    result = report.server(fake.url).check(TOOL_CALLING)
    assert result is not None and NO_TOOL_PARSER in result.detail
    assert "--enable-auto-tool-choice --tool-call-parser hermes" in result.hint
    text = report.render()
    assert fake.url in text and "--enable-auto-tool-choice --tool-call-parser hermes" in text
    assert text.rstrip().endswith("7 checks passed, 0 warnings, 1 failed")


async def test_reasoning_parser_on_while_config_expects_tags_warns(start_vllm: Start) -> None:
    fake = await start_vllm(reasoning_parser=True)
    report = await check.run_checks(make_config(fake.url))  # uses_reasoning_parser: true, the default
    assert outcomes(report, fake.url)[REASONING] is WARN
    result = report.server(fake.url).check(REASONING)
    assert result is not None and "--reasoning-parser" in result.detail and "`reasoning`" in result.detail
    assert "drop --reasoning-parser" in result.hint
    assert report.exit_code == 0 and (report.warnings, report.failed) == (1, 0)  # a warning does not fail
    assert "7 checks passed, 1 warning, 0 failed" in report.render()
    # the same server is right for a config that says a parser runs
    report = await check.run_checks(make_config(fake.url, "+policy_model.vllm_model.uses_reasoning_parser=false"))
    assert outcomes(report, fake.url)[REASONING] is OK and report.warnings == 0


async def test_think_tags_without_tag_parsing_warn(start_vllm: Start) -> None:
    fake = await start_vllm(think_tags=True)
    report = await check.run_checks(make_config(fake.url, "+policy_model.vllm_model.uses_reasoning_parser=false"))
    result = report.server(fake.url).check(REASONING)
    assert result is not None and result.status is WARN and "tags will stay in the text" in result.detail
    # with the default (the gateway parses tags) the same server is fine
    report = await check.run_checks(make_config(fake.url))
    assert outcomes(report, fake.url)[REASONING] is OK


async def test_unreachable_server_names_the_url_and_the_port(start_vllm: Start) -> None:
    url = unreachable_url()
    port = url.split(":")[2].split("/")[0]
    report = await check.run_checks(make_config(url), timeout=5)
    assert outcomes(report, url) == {REACHABLE: FAIL}
    assert report.exit_code == 1
    result = report.server(url).check(REACHABLE)
    assert result is not None and result.detail == f"Connection refused to {url}"
    assert "is vLLM (vllm serve) running" in result.hint and f"--port {port}" in result.hint
    text = report.render()
    assert f"✗ reachable     Connection refused to {url}\n" in text
    assert "other checks not run" in text and "1 check passed, 0 warnings, 1 failed" in text


async def test_servers_are_checked_concurrently_and_reported_in_order(start_vllm: Start) -> None:
    slow = await start_vllm(stall=1.0)  # GET /models takes a second
    slower = await start_vllm(stall=1.0)
    fast = await start_vllm(tool_parser=False)
    dead = unreachable_url()
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await check.run_checks(make_config([slow.url, dead, fast.url, slower.url]), timeout=5)
    assert loop.time() - started < 1.8  # one after the other would take 2 s at least
    assert [s.url for s in report.servers] == [slow.url, dead, fast.url, slower.url]
    assert outcomes(report, slower.url)[TOOL_CALLING] is OK
    assert outcomes(report, slow.url)[TOOL_CALLING] is OK
    assert outcomes(report, dead) == {REACHABLE: FAIL}
    assert outcomes(report, fast.url)[TOOL_CALLING] is FAIL
    text = report.render()
    assert text.index(slow.url) < text.index(dead) < text.index(fast.url)
    assert "Server 2 of 4: " + dead in text


async def test_wrong_api_key_fails_and_is_never_printed(start_vllm: Start, capsys: pytest.CaptureFixture) -> None:
    fake = await start_vllm(api_key=API_KEY)
    wrong = "sk-wrong-key-0000"
    report = await check.run_checks(make_config(fake.url, api_key=wrong))
    assert outcomes(report, fake.url) == {REACHABLE: FAIL}
    result = report.server(fake.url).check(REACHABLE)
    assert result is not None and "401" in result.detail and "api_key" in result.hint
    assert wrong not in report.render() and wrong not in repr(report.all_checks())
    # no key at all: says to set one
    report = await check.run_checks(make_config(fake.url))
    assert "set api_key" in report.server(fake.url).check(REACHABLE).hint  # type: ignore[union-attr]
    # the right key: everything passes, the key goes to vLLM in the header and nowhere else
    config = make_config(fake.url, api_key=API_KEY)
    code = await asyncio.to_thread(check.main, config, False)
    out = capsys.readouterr().out
    assert code == 0 and API_KEY not in out
    assert "api_key                      set" in out
    assert all(r["headers"]["Authorization"] == f"Bearer {API_KEY}" for r in fake.requests if r["body"])


async def test_key_echoed_by_the_server_is_scrubbed(start_vllm: Start) -> None:
    fake = await start_vllm(api_key=API_KEY, tool_parser=False, echo_auth=True)  # a buggy proxy, say
    report = await check.run_checks(make_config(fake.url, api_key=API_KEY))
    result = report.server(fake.url).check(TOOL_CALLING)
    assert result is not None and result.status is FAIL and API_KEY in result.detail  # what the server said...
    text = report.render()
    assert API_KEY not in text and "Bearer ***" in text  # ...is not what gets printed


async def test_model_not_served_lists_the_served_names(start_vllm: Start) -> None:
    fake = await start_vllm(served=["Qwen/Qwen3-4B", "other"])
    report = await check.run_checks(make_config(fake.url))
    assert outcomes(report, fake.url) == {REACHABLE: OK, MODEL_SERVED: FAIL}
    result = report.server(fake.url).check(MODEL_SERVED)
    assert result is not None and "Qwen/Qwen3-4B, other" in result.detail
    assert f"--served-model-name {MODEL}" in result.hint
    assert report.exit_code == 1 and "other checks not run" in report.render()


async def test_missing_tokenize_warns_unless_token_tracking_needs_it(start_vllm: Start) -> None:
    fake = await start_vllm(tokenize=False)
    report = await check.run_checks(make_config(fake.url))
    result = report.server(fake.url).check(TOKENIZE)
    assert result is not None and result.status is WARN and "404" in result.detail
    assert "/tokenize" in result.hint and report.exit_code == 0
    report = await check.run_checks(make_config(fake.url, "+policy_model.vllm_model.return_token_id_information=true"))
    assert outcomes(report, fake.url)[TOKENIZE] is FAIL and report.exit_code == 1
    # inline ids from vLLM replace /tokenize
    report = await check.run_checks(make_config(
        fake.url, "+policy_model.vllm_model.return_token_id_information=true",
        "+policy_model.vllm_model.request_prompt_and_generation_token_ids=true"))
    assert outcomes(report, fake.url)[TOKENIZE] is WARN and outcomes(report, fake.url)[TOKEN_IDS] is OK
    assert "inline ids (5 prompt tokens)" in report.server(fake.url).check(TOKEN_IDS).detail  # type: ignore


async def test_vllm_without_token_ids_in_logprobs_fails(start_vllm: Start) -> None:
    fake = await start_vllm(token_ids_as_ids=False)
    report = await check.run_checks(make_config(fake.url, "+policy_model.vllm_model.return_token_id_information=true"))
    result = report.server(fake.url).check(TOKEN_IDS)
    assert result is not None and result.status is FAIL and "'token_id:<int>'" in result.detail
    assert "too old for return_tokens_as_token_ids" in result.hint and report.exit_code == 1


async def test_a_stalled_server_fails_within_the_timeout(start_vllm: Start) -> None:
    fake = await start_vllm(stall=3)
    started = asyncio.get_running_loop().time()
    report = await check.run_checks(make_config(fake.url), timeout=0.3)
    assert asyncio.get_running_loop().time() - started < 2
    result = report.server(fake.url).check(REACHABLE)
    assert result is not None and result.status is FAIL and "within 0.3 s" in result.detail


async def test_config_warnings_and_summary(start_vllm: Start) -> None:
    fake = await start_vllm()
    root = fake.url[: -len("/v1")]
    headers = "+policy_model.vllm_model.default_headers={X-Api-Key: hdr-secret-77}"
    report = await check.run_checks(make_config(root, headers))
    assert [c.status for c in report.config_checks] == [OK, WARN]
    assert "does not end in /v1" in report.config_checks[1].detail
    result = report.server(root).check(REACHABLE)
    assert result is not None and result.status is FAIL and f"{root}/v1 ?" in result.hint
    text = report.render()
    assert "X-Api-Key" in text and "hdr-secret-77" not in text


def test_main_prints_the_report_and_returns_the_exit_code(capsys: pytest.CaptureFixture) -> None:
    url = unreachable_url()
    assert check.main(make_config(url), use_color=False) == 1
    out = capsys.readouterr().out
    assert "Connection refused to " + url in out and "\033[" not in out
    assert check.main(make_config(url), use_color=True) == 1
    out = capsys.readouterr().out
    assert "\033[31;1m✗\033[0m reachable" in out and out.rstrip().endswith("\033[0m")


def test_ascii_rendering() -> None:
    report = Report("policy_model", [("model", "m")], [check.CheckResult("config", OK, "valid")],
                    [check.ServerReport("http://h:1/v1", [check.CheckResult(REACHABLE, FAIL, "refused", "start it")])])
    text = report.render(ascii_only=True)
    assert text.isascii() and "  x reachable     refused" in text and "-> start it" in text


# --- the real llama.cpp server ------------------------------------------------------------------


@pytest.mark.real_model
async def test_real_llama_cpp_server(llama_server: str) -> None:
    from gateway.backends.llama_cpp import MODEL_ALIAS

    config = make_config(llama_server, "gateway.upstream_flavour=llama.cpp",
                         "+policy_model.vllm_model.return_token_id_information=true", model=MODEL_ALIAS)
    report = await check.run_checks(config, timeout=120)
    results = outcomes(report, llama_server)
    assert report.failed == 0, report.render()
    assert results[REACHABLE] is OK and results[MODEL_SERVED] is OK and results[TOKENIZE] is OK
    assert results[GENERATION] is OK and results[TOOL_CALLING] is OK and results[TOKEN_IDS] is OK
    # llama-server splits reasoning out itself (--reasoning-format auto), which the default config warns about
    assert results[REASONING] in (OK, WARN)
    assert report.exit_code == 0


@pytest.mark.parametrize("template, mode, status, says", [
    ("render", "auto", OK, "renders developer messages"),
    ("drop", "auto", OK, "drops developer messages (/tokenize with and without one); the gateway folds them"),
    ("reject", "auto", OK, "drops developer messages"),
    ("drop", "keep", WARN, "the model never sees them"),
])
async def test_developer_role_is_reported(start_vllm: Start, template: str, mode: str, status: Any, says: str) -> None:
    fake = await start_vllm()
    fake.developer_template = template
    report = await check.run_checks(make_config(fake.url, f"gateway.developer_messages={mode}"))
    result = report.server(fake.url).check(DEVELOPER_ROLE)
    assert result is not None and result.status is status and says in result.detail
    if status is WARN:
        assert "developer_messages: auto" in result.hint
    sent = [[m["role"] for m in r["body"]["messages"]] for r in fake.tokenize_requests]
    assert ["system", "user"] in sent and ["system", "developer", "user"] in sent  # only the developer differs
