"""The inspector in a real headless browser (Debian's chromium + chromedriver, driven by selenium):
a streamed request with reasoning and a tool call shows up on /inspect *while* it streams — the
scripted upstream holds the last piece back until the page has shown the rest — then it is
replayed with an edit. Screenshots go to tests/artifacts/ (or $GATEWAY_TEST_ARTIFACTS).

Skipped when chromium or chromedriver is missing, unless GATEWAY_REQUIRE_REAL_BACKEND=1 (CI, which
installs them with tests/install_browser.sh).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from tests.conftest import ROOT, GatewayFactory
from tests.contract import check_stream, parse_sse
from tests.fake_vllm import Generation, content, reasoning, tool_call

ADMIN_KEY = "inspector-admin-key-for-tests"
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "Weather now in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
WAIT_S = 60  # generous: the machine is shared; every wait ends as soon as its condition holds


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("GATEWAY_TEST_ARTIFACTS") or ROOT / "tests" / "artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser() -> Iterator[Any]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        message = "chromium and chromium-driver are not installed: bash tests/install_browser.sh"
        if os.environ.get("GATEWAY_REQUIRE_REAL_BACKEND") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="inspect-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1440,1100", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def until(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    """Wait (in a thread: selenium blocks) until ``condition(driver)`` is truthy."""
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page re-renders as the feed arrives: an element found a moment ago may be gone when its
    # text is read; that is "not yet", so the condition is asked again.
    wait = WebDriverWait(driver, WAIT_S, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    try:
        return await asyncio.to_thread(wait.until, condition)
    except TimeoutException:
        raise AssertionError(f"the page never showed {what}") from None


def text_of(driver: Any, css: str) -> str:
    """The text of every element matching ``css``, read in one go in the page (it redraws)."""
    return driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map((e) => e.innerText).join(' ')", css)


def click(driver: Any, css: str) -> bool:
    """Clicks the first element matching ``css``, found and clicked in one go in the page."""
    return driver.execute_script("const e = document.querySelector(arguments[0]); if (e) e.click(); return !!e;", css)


async def test_inspector_shows_a_stream_live_and_replays_it(make_gateway: GatewayFactory, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    gateway = await make_gateway("gateway.inspect=true", f"gateway.inspect_admin_key={ADMIN_KEY}")
    fake = gateway.upstream
    session = {"x-session-id": "agent-run-42"}
    # an earlier turn of the same agent session, already finished: the list groups them
    fake.queue(Generation(deltas=content("I will look it up.")))
    async with gateway.session.post(gateway.url + "/v1/responses", headers=session,
                                    json={"input": "Plan the trip.", "stream": False}) as response:
        assert response.status == 200

    await asyncio.to_thread(browser.get, f"{gateway.url}/inspect?key={ADMIN_KEY}")
    assert "key=" not in browser.current_url  # the key left the address bar for a cookie
    await until(browser, lambda d: text_of(d, "#conn") == "live", "its live feed connected")

    gate = asyncio.Event()
    thought = "The user wants the weather in Lima; I should call get_weather."
    deltas = (reasoning(thought, size=6) + content("Let me check that for you.", size=5)
              + tool_call(0, "get_weather", '{"city": "Lima"}', size=6, call_id="call_lima"))
    for i, delta in enumerate(deltas):  # logprobs, so the page shades tokens
        delta["_tokens"] = [(1000 + i, -0.05 * (i % 7) - (1.6 if i % 5 == 0 else 0.0))]
    held = len(deltas) - 1  # the call's last argument piece waits until the page has shown the rest
    fake.queue(Generation(deltas=deltas, finish_reason="tool_calls", gate_before=held, gate=gate))
    body = {"model": "Qwen/Qwen3-8B", "input": "What is the weather in Lima?", "stream": True, "tools": [WEATHER_TOOL],
            "include": ["message.output_text.logprobs"], "top_logprobs": 1}

    async def client() -> bytes:
        async with gateway.session.post(gateway.url + "/v1/responses", json=body, headers=session) as response:
            assert response.status == 200
            return await response.read()

    streaming = asyncio.ensure_future(client())
    await until(browser, lambda d: click(d, ".req:has(.badge.live)"), "the live request")
    await until(browser, lambda d: thought in text_of(d, ".item.reasoning .body"), "the reasoning")
    await until(browser, lambda d: "Let me check that for you." in text_of(d, ".item.message .body"), "the text")
    await until(browser, lambda d: text_of(d, ".item.function_call .fname") == "get_weather", "the tool call")
    await until(browser, lambda d: '{"city": "' in text_of(d, ".item.function_call .body"), "the call's first arguments")
    # all of that while the response had not completed: vLLM still holds the last piece back
    assert not streaming.done() and not gate.is_set()
    assert text_of(browser, "#status-badge") == "live"
    assert '{"city": "Lima"}' not in text_of(browser, ".item.function_call .body")
    await asyncio.to_thread(browser.save_screenshot, str(artifacts_dir() / "inspect-live.png"))

    gate.set()
    final = check_stream(parse_sse(await asyncio.wait_for(streaming, WAIT_S)))
    assert final["status"] == "completed"
    await until(browser, lambda d: text_of(d, "#status-badge") == "completed", "the completed status")
    await until(browser, lambda d: '{"city": "Lima"}' in text_of(d, ".item.function_call .body"), "the whole call")
    # timings, usage and the aligned stream are there; tokens are shaded by their probability
    assert text_of(browser, ".cards .card:first-child .k").upper() == "TIME TO FIRST TOKEN"
    assert re.fullmatch(r"[\d.]+ m?s", text_of(browser, ".cards .card:first-child .v"))
    assert text_of(browser, ".cards .card:nth-child(4) .v") == str(len(deltas))  # output tokens, from usage
    assert browser.find_elements(By.CSS_SELECTOR, "svg.gaps rect"), "no gap chart"
    assert browser.find_elements(By.CSS_SELECTOR, ".tokens .tok.reasoning"), "no shaded tokens"
    # every chunk vLLM sent is in the stream table (role chunk, deltas, finish, usage, [DONE])
    assert len(browser.find_elements(By.CSS_SELECTOR, "table.stream .chunk")) == len(deltas) + 4
    assert "function_call_arguments.done" in text_of(browser, "table.stream")
    await asyncio.to_thread(browser.save_screenshot, str(artifacts_dir() / "inspect.png"))
    original_id = browser.current_url.rsplit("#", 1)[1]

    # replay with an edit: the city becomes Quito
    fake.queue(Generation(deltas=reasoning("Quito this time.") + content("Checking Quito.")))
    assert text_of(browser, ".head .actions button.primary") == "Replay…"
    await until(browser, lambda d: click(d, ".head .actions button.primary"), "the replay button")
    await until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".replay textarea"), "the replay editor")
    edited = browser.execute_script(
        "const t = document.querySelector('.replay textarea');"
        "t.value = t.value.replace('weather in Lima', 'weather in Quito'); return t.value;")
    assert "weather in Quito" in edited
    assert text_of(browser, ".replay button.primary") == "Send"
    await until(browser, lambda d: click(d, ".replay button.primary"), "the send button")
    await until(browser, lambda d: "Checking Quito." in text_of(d, ".item.message .body"), "the replay's answer")
    await until(browser, lambda d: text_of(d, "#status-badge") == "completed", "the replay completed")
    assert fake.last_body["messages"][-1]["content"] == "What is the weather in Quito?"
    assert original_id in text_of(browser, ".meta")  # "replay of <original>"
    replay = await (await gateway.session.get(gateway.url + "/inspect/api/requests",
                                              headers={"Authorization": f"Bearer {ADMIN_KEY}"})).json()
    assert [s["replay_of"] for s in replay] == [None, None, original_id]
    assert {s["session"] for s in replay} == {"agent-run-42"}
    await asyncio.to_thread(browser.save_screenshot, str(artifacts_dir() / "inspect-replay.png"))


async def test_inspector_shows_a_chat_completion(make_gateway: GatewayFactory, browser: Any) -> None:
    """A streamed /v1/chat/completions request on the page: marked as chat, its answer as items, its
    chunks and [DONE] in the stream table, no script error."""
    gateway = await make_gateway("gateway.inspect=true", f"gateway.inspect_admin_key={ADMIN_KEY}")
    gateway.upstream.queue(Generation(deltas=reasoning("Weigh it.") + content("Chat answer.", size=50)))
    async with gateway.session.post(gateway.url + "/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "stream": True}) as response:
        assert response.status == 200 and (await response.read()).endswith(b"data: [DONE]\n\n")
        request_id = response.headers["X-Request-Id"]
    await asyncio.to_thread(browser.get, f"{gateway.url}/inspect?key={ADMIN_KEY}#{request_id}")
    await until(browser, lambda d: text_of(d, "#status-badge") == "completed", "the chat completion")
    assert "chat" in text_of(browser, ".req .badge")
    await until(browser, lambda d: "Chat answer." in text_of(d, ".item.message .body"), "the answer")
    assert "<think>Weigh it.</think>" in text_of(browser, ".item.message .body")  # Gym's form of the answer
    assert "[DONE]" in text_of(browser, "table.stream") and "chat.completion.chunk" in text_of(browser, "table.stream")
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, errors
    await asyncio.to_thread(browser.save_screenshot, str(artifacts_dir() / "inspect-chat.png"))
