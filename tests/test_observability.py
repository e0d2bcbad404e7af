"""Metrics after real requests, the per-request log line, request ids, and the transport log."""

from __future__ import annotations

import json
import logging
import re

import pytest

from gateway.server.observability import JsonFormatter
from tests.conftest import GatewayFactory, free_port
from tests.fake_vllm import Generation, content, reasoning, tool_call


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        match = re.match(r"^([a-zA-Z_:]+)(\{(.*)\})? (\S+)$", line)
        if not match or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(3) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(match.group(4))
    return 0.0


async def test_metrics_after_real_requests(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.eject_after_failures=10")  # stays in service through the 503s
    gateway.upstream.queue(Generation(deltas=reasoning("think") + content("Hello there"), prompt_tokens=11,
                                      completion_tokens=7),
                           Generation(deltas=tool_call(0, "f", "{}"), finish_reason="tool_calls", prompt_tokens=5,
                                      completion_tokens=3),
                           *[Generation(status=503, error_message="down")] * 3)
    await gateway.stream({"input": "a"})
    assert (await gateway.post({"input": "b"})).status == 200
    assert (await gateway.post({"input": "c", "stream": True})).status == 502  # after two retries
    assert (await gateway.post({"input": 5})).status == 400
    text = await (await gateway.session.get(gateway.url + "/metrics")).text()
    route = "/v1/responses"
    assert metric(text, "gateway_requests_total", route=route, status="200") == 2
    assert metric(text, "gateway_requests_total", route=route, status="502") == 1
    assert metric(text, "gateway_requests_total", route=route, status="400") == 1
    assert metric(text, "gateway_tokens_total", direction="input") == 16
    assert metric(text, "gateway_tokens_total", direction="output") == 10
    assert metric(text, "gateway_responses_total", status="completed") == 2
    assert metric(text, "gateway_time_to_first_token_seconds_count") == 2
    assert metric(text, "gateway_request_duration_seconds_count", route=route, stream="true") == 2
    server = gateway.upstream.url
    assert metric(text, "gateway_upstream_errors_total", server=server, code="upstream_error") >= 1
    assert metric(text, "gateway_upstream_retries_total", server=server) == 2  # 503 is retried, twice
    assert metric(text, "gateway_upstream_healthy", server=server) == 1
    assert metric(text, "gateway_open_streams") == 0
    assert "sk-" not in text


async def test_open_streams_gauge_counts_live_streams(make_gateway: GatewayFactory) -> None:
    import asyncio

    gateway = await make_gateway()
    gateway.upstream.queue(Generation(deltas=content("slow"), pauses={0: 1.0}))
    task = asyncio.ensure_future(gateway.stream({"input": "a"}))
    await asyncio.sleep(0.4)
    text = await (await gateway.session.get(gateway.url + "/metrics")).text()
    assert metric(text, "gateway_open_streams") == 1
    await task


async def test_one_log_line_per_request_with_its_id(make_gateway: GatewayFactory,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gateway.access")
    gateway = await make_gateway("policy_api_key=sk-secret-upstream")
    gateway.upstream.queue(Generation(deltas=content("Hi"), prompt_tokens=9, completion_tokens=2))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q", "stream": True},
                                    headers={"X-Request-Id": "trace-42"}) as response:
        assert response.headers["X-Request-Id"] == "trace-42"
        await response.read()
    records = [r for r in caplog.records if r.name == "gateway.access"]
    assert len(records) == 1
    fields = records[0].fields
    assert fields["request_id"] == "trace-42" and fields["status"] == 200 and fields["stream"] is True
    assert fields["model"] == "Qwen/Qwen3-8B" and fields["response_status"] == "completed"
    assert (fields["input_tokens"], fields["output_tokens"]) == (9, 2)
    assert fields["ttft_ms"] >= 0 and fields["duration_ms"] >= fields["ttft_ms"]
    assert fields["upstream"] == gateway.upstream.url
    assert gateway.upstream.requests[-1]["headers"]["X-Request-ID"] == "trace-42"  # sent to vLLM too
    line = JsonFormatter().format(records[0])
    assert json.loads(line)["request_id"] == "trace-42"
    assert "sk-secret-upstream" not in caplog.text + line


async def test_generated_request_id_when_absent_or_unsafe(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway()
    for header in ({}, {"X-Request-Id": "bad id; with spaces"}, {"X-Request-Id": "x" * 500}):
        async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "q"}, headers=header) as r:
            rid = r.headers["X-Request-Id"]
            assert re.fullmatch(r"req_[0-9a-f]{32}", rid)
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": 5}) as r:
        assert r.status == 400 and r.headers["X-Request-Id"].startswith("req_")


async def test_transport_log_has_exact_upstream_io(make_gateway: GatewayFactory, tmp_path) -> None:
    path = tmp_path / "transport.jsonl"
    gateway = await make_gateway(f"gateway.transport_log={path}", "policy_api_key=sk-never-logged")
    gateway.upstream.queue(Generation(deltas=content("<think>x</think>raw output", size=100)),
                           Generation(deltas=content("plain")),
                           Generation(status=400, error_message="bad request from vLLM"))
    await gateway.stream({"input": "first"})
    await gateway.create({"input": "second"})
    assert (await gateway.post({"input": "third"})).status == 400
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(lines) == 3
    streamed, whole, failed = lines
    assert streamed["request"]["messages"] == [{"role": "user", "content": "first"}]
    assert "<think>x</think>" in streamed["response"]["body"] and "data: [DONE]" in streamed["response"]["body"]
    assert json.loads(whole["response"]["body"])["choices"][0]["message"]["content"] == "plain"
    assert failed["response"]["status"] == 400 and "bad request from vLLM" in failed["response"]["body"]
    assert all(line["request_id"].startswith("req_") and line["url"] == gateway.upstream.url for line in lines)
    assert "sk-never-logged" not in path.read_text()


async def test_metrics_can_be_turned_off(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.metrics=false")
    assert (await gateway.session.get(gateway.url + "/metrics")).status == 404


def test_workers_aggregate_metrics() -> None:
    """With --workers 2, /metrics (answered by either worker) adds up both workers' counts."""
    import os
    import signal
    import subprocess
    import sys
    import time
    import urllib.error
    import urllib.request

    from tests.conftest import ROOT

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    process = subprocess.Popen([sys.executable, "-m", "gateway", "serve", "--base-url", "http://127.0.0.1:9/v1",
                                "--model", "m", "--port", str(port), "--workers", "2"], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                assert time.monotonic() < deadline
                time.sleep(0.1)
        for _ in range(20):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/responses", data=b"{}",
                                             headers={"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(request, timeout=5)
            except urllib.error.HTTPError as exc:
                assert exc.code == 400
        counts = set()
        for _ in range(6):  # whichever worker answers, the total is the same
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
            counts.add(metric(text, "gateway_requests_total", route="/v1/responses", status="400"))
        assert counts == {20.0}
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)


async def test_a_requests_series_are_looked_up_once_and_still_count(make_gateway: GatewayFactory,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The series a request touches are found by labels() the first time only (it checks and locks
    on every call); later requests of the same route and status count on the same series."""
    from gateway.server.app import METRICS_KEY

    gateway = await make_gateway()
    gateway.upstream.queue(*[Generation(deltas=content("Hi"), prompt_tokens=3, completion_tokens=1)] * 3)
    await gateway.stream({"input": "a"})
    metrics = gateway.runner.app[METRICS_KEY]
    looked_up: list[str] = []
    for counter in (metrics.requests, metrics.duration, metrics.responses, metrics.tokens):
        labels = counter.labels
        monkeypatch.setattr(counter, "labels", lambda *a, _l=labels, **k: looked_up.append(str(a)) or _l(*a, **k))
    await gateway.stream({"input": "b"})
    await gateway.stream({"input": "c"})
    assert looked_up == []
    text = await (await gateway.session.get(gateway.url + "/metrics")).text()
    assert metric(text, "gateway_requests_total", route="/v1/responses", status="200") == 3
    assert metric(text, "gateway_request_duration_seconds_count", route="/v1/responses", stream="true") == 3
    assert metric(text, "gateway_responses_total", status="completed") == 3
    assert metric(text, "gateway_tokens_total", direction="input") == 9
