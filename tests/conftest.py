"""Fixtures: the fake vLLM and the real gateway, each on a real loopback socket."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, NoReturn

import aiohttp
import pytest
from aiohttp import web

from gateway.config import Config, load_config, shortcut_overrides
from gateway.server.runner import bound_url, start
from tests.contract import check_response, check_stream, parse_sse
from tests.fake_vllm import FakeVLLM

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
MODEL = "Qwen/Qwen3-8B"


async def _start_fake() -> tuple[FakeVLLM, web.AppRunner]:
    fake = FakeVLLM(MODEL)
    runner = web.AppRunner(fake.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    fake.url = bound_url(runner) + "/v1"  # type: ignore[attr-defined]
    return fake, runner


@pytest.fixture
async def upstream() -> AsyncIterator[FakeVLLM]:
    fake, runner = await _start_fake()
    yield fake
    await runner.cleanup()


@pytest.fixture
async def upstream2() -> AsyncIterator[FakeVLLM]:
    """A second vLLM server, for failover and balancing."""
    fake, runner = await _start_fake()
    yield fake
    await runner.cleanup()


# Stored responses of the tests' gateways go here, never into the user's data directory (also for
# the gateway processes tests start: their default data directory is under XDG_DATA_HOME).
STORE_DIR = tempfile.mkdtemp(prefix="gateway-tests-store-")
os.environ["XDG_DATA_HOME"] = STORE_DIR


def gateway_config(base_url: str, *overrides: str, model: str = MODEL) -> Config:
    # The suite checks the Responses contract with OpenAI's conventions; test_nemo_gym.py checks
    # NeMo Gym's (the shipped default) by overriding this back.
    return load_config(
        [ROOT / "config" / "vllm_model.yaml"],
        overrides=shortcut_overrides(base_url, model, "") + [f"gateway.data_dir={STORE_DIR}", "gateway.response_conventions=openai", *overrides],
        environ={},
    )


@dataclass
class Gateway:
    url: str
    upstream: FakeVLLM
    config: Config
    session: aiohttp.ClientSession
    runner: Any = None

    async def post(self, body: dict[str, Any]) -> aiohttp.ClientResponse:
        return await self.session.post(self.url + "/v1/responses", json=body)

    async def stream(self, body: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """POST a streaming request; returns the events and the contract-checked final Response."""
        async with self.session.post(self.url + "/v1/responses", json={**body, "stream": True}) as response:
            assert response.status == 200, await response.text()
            assert response.headers["Content-Type"].startswith("text/event-stream")
            events = parse_sse(await response.read())
        return events, check_stream(events, nemo_gym=self.nemo_gym)

    async def create(self, body: dict[str, Any]) -> dict[str, Any]:
        async with self.session.post(self.url + "/v1/responses", json={**body, "stream": False}) as response:
            assert response.status == 200, await response.text()
            data = await response.json()
        check_response(data, nemo_gym=self.nemo_gym)
        return data

    @property
    def nemo_gym(self) -> bool:
        return self.config.gateway.response_conventions == "nemo_gym"


GatewayFactory = Callable[..., Awaitable[Gateway]]


@pytest.fixture
async def make_gateway(upstream: FakeVLLM) -> AsyncIterator[GatewayFactory]:
    runners = []
    # No cookie jar: each request is a new client unless a test says otherwise (the gateway hands
    # out session cookies for affinity when it has several servers).
    session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar())

    async def make(*overrides: str, base_url: str | list[str] | None = None, model: str = MODEL) -> Gateway:
        url = base_url or upstream.url  # type: ignore[attr-defined]
        if isinstance(url, list):  # several servers: policy_base_url as a YAML list
            overrides = ("policy_base_url=[" + ",".join(url) + "]", *overrides)
            url = url[0]
        config = gateway_config(url, *overrides, model=model)
        runner = await start(config, port=0)
        runners.append(runner)
        return Gateway(bound_url(runner), upstream, config, session, runner)

    yield make
    await session.close()
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def gateway(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway()


# --- the real inference server (llama.cpp + a small Qwen2.5 model) -----------------------------------


def not_installed(message: str) -> NoReturn:
    """A real dependency is missing: skip, except in CI (GATEWAY_REQUIRE_REAL_BACKEND=1), where the
    tests that need it must run, so it is a failure."""
    if os.environ.get("GATEWAY_REQUIRE_REAL_BACKEND") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def llama_server() -> Iterator[str]:
    """Base URL of a real llama-server: GATEWAY_REAL_UPSTREAM if set, else one started here from
    the cached install. Skipped when not installed, unless GATEWAY_REQUIRE_REAL_BACKEND=1 (CI)."""
    url = os.environ.get("GATEWAY_REAL_UPSTREAM")
    if url:
        yield url.rstrip("/")
        return
    from gateway.backends import llama_cpp

    if not llama_cpp.installed():
        not_installed("the llama.cpp backend is not installed: python -m gateway.backends.llama_cpp install")
    with llama_cpp.LlamaServer() as server:
        yield server.url


@pytest.fixture
async def real_gateway(make_gateway: GatewayFactory, llama_server: str) -> Gateway:
    from gateway.backends.llama_cpp import MODEL_ALIAS

    return await make_gateway("gateway.upstream_flavour=llama.cpp", base_url=llama_server, model=MODEL_ALIAS)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


os.environ.setdefault("OPENAI_LOG", "")
