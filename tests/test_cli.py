"""The command line as a user runs it: real processes, real signals."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.conftest import ROOT, free_port

GATEWAY = [sys.executable, "-m", "gateway"]


def run(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([*GATEWAY, *args], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_help_explains_commands_and_overrides() -> None:
    top = run("--help")
    assert top.returncode == 0 and "serve" in top.stdout and "demo" in top.stdout
    serve = run("serve", "--help")
    assert serve.returncode == 0
    assert "+policy_model.vllm_model.base_url=" in serve.stdout and "--base-url" in serve.stdout


def test_config_errors_name_the_key_and_exit_2() -> None:
    result = run("print-config", "--base-url", "http://localhost:8000/v1", "--model", "m",
                 "+policy_model.vllm_model.uses_reasoning_parsr=true")
    assert result.returncode == 2
    assert "uses_reasoning_parsr" in result.stderr and "uses_reasoning_parser" in result.stderr  # suggestion
    missing = run("print-config", env={"HOME": "/nonexistent"})
    assert missing.returncode == 2 and "policy_base_url" in missing.stderr


def test_print_config_masks_the_key() -> None:
    result = run("print-config", "--base-url", "http://localhost:8000/v1", "--model", "m", "--api-key", "sk-hidden-42")
    assert result.returncode == 0
    config = json.loads(result.stdout)
    assert config["model_server"]["api_key"] == "***" and "sk-hidden-42" not in result.stdout
    assert config["model_server"]["base_url"] == ["http://localhost:8000/v1"]


def test_env_file_and_short_override() -> None:
    env_file = ROOT / "tests" / "data" / "env.cli-test.yaml"
    env_file.parent.mkdir(exist_ok=True)
    env_file.write_text("policy_base_url: http://gpu-a:8000/v1\npolicy_api_key: EMPTY\npolicy_model_name: Qwen/Qwen3-8B\n")
    try:
        result = run("print-config", "--env-file", str(env_file), "+policy_model.vllm_model.base_url=http://gpu-b:10240/v1")
    finally:
        env_file.unlink()
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    assert config["model_server"]["base_url"] == ["http://gpu-b:10240/v1"]
    assert config["model_server"]["model"] == "Qwen/Qwen3-8B"


def test_serve_answers_and_stops_cleanly_on_sigterm() -> None:
    port = free_port()
    dead_upstream = f"http://127.0.0.1:{free_port()}/v1"
    process = subprocess.Popen([*GATEWAY, "serve", "--base-url", dead_upstream, "--model", "m", "--port", str(port)],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                pytest.fail("health must be 503 while vLLM is unreachable")
            except urllib.error.HTTPError as exc:
                assert exc.code == 503
                body = json.loads(exc.read())
                assert body["upstreams"][0]["url"] == dead_upstream and not body["upstreams"][0]["ok"]
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "the gateway did not start"
                time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=15)
        assert process.returncode == 0
        assert f"listening on http://127.0.0.1:{port}" in stderr
    finally:
        if process.poll() is None:
            process.kill()


def test_port_in_use_is_a_clear_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run("serve", "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--port", str(port))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.real_model
def test_demo_streams_a_real_answer(llama_server: str) -> None:
    result = run("demo", "--once", "--port", str(free_port()), timeout=300)
    assert result.returncode == 0, result.stderr
    assert "[reasoning]" in result.stdout or "[answer]" in result.stdout or "[tool call" in result.stdout
    assert "response.completed" in result.stdout or "response.incomplete" in result.stdout


def test_workers_share_the_port_and_stop_together() -> None:
    """Waits for what it checks (each worker's "listening" line, then the port's answer), never for
    a fixed time: it failed once on a loaded machine when a worker got SIGTERM before it had even
    started listening."""
    import queue
    import threading

    port = free_port()
    process = subprocess.Popen([*GATEWAY, "serve", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                                "--port", str(port), "--workers", "2"],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines: "queue.Queue[str | None]" = queue.Queue()

    def read_stderr() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    stderr: list[str] = []
    try:
        while sum("(worker " in line for line in stderr) < 2:  # both listen (each logs it once bound)
            line = lines.get(timeout=120)
            assert line is not None, "".join(stderr)
            stderr.append(line)
        with open(f"/proc/{process.pid}/task/{process.pid}/children") as f:
            children = f.read().split()
        assert len(children) == 2, "two worker processes"
        for _ in range(10):  # the port answers (whichever worker the kernel picks)
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=60)
            assert answer.value.code == 503  # no vLLM behind it: unhealthy, but answered
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, "".join(stderr)
        reader.join(timeout=60)
        while (line := lines.get(timeout=60)) is not None:
            stderr.append(line)
        assert sum("(worker " in line for line in stderr) == 2  # each worker logged that it listens, once
        assert not any(os.path.exists(f"/proc/{pid}") and open(f"/proc/{pid}/stat").read().split()[2] != "Z"
                       for pid in children)
    finally:
        if process.poll() is None:
            process.kill()


def test_check_reports_an_unreachable_server() -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    result = run("check", "--base-url", dead, "--model", "m", "--api-key", "sk-do-not-print")
    assert result.returncode == 1
    assert f"Connection refused to {dead}" in result.stdout and "sk-do-not-print" not in result.stdout


def test_workers_auto_is_one_per_usable_core_and_nonsense_is_refused() -> None:
    from gateway.cli import build_parser

    args = build_parser().parse_args(["serve", "--workers", "auto"])
    assert args.workers == len(os.sched_getaffinity(0))
    assert build_parser().parse_args(["serve", "--workers", "3"]).workers == 3
    refused = run("serve", "--base-url", "http://localhost:8000/v1", "--model", "m", "--workers", "many")
    assert refused.returncode == 2 and "must be a number or 'auto', not 'many'" in refused.stderr


def test_the_inspector_refuses_several_workers() -> None:
    # its buffer lives in one process: a page would see one worker's requests only
    result = run("serve", "--base-url", "http://localhost:8000/v1", "--model", "m", "--workers", "2",
                 "--port", str(free_port()), "gateway.inspect=true")
    assert result.returncode == 2 and "--workers 1" in result.stderr


def test_print_config_masks_the_inspector_admin_key() -> None:
    result = run("print-config", "--base-url", "http://localhost:8000/v1", "--model", "m",
                 "gateway.inspect=true", "gateway.inspect_admin_key=admin-secret-xyz")
    assert result.returncode == 0 and "admin-secret-xyz" not in result.stdout
    assert json.loads(result.stdout)["gateway"]["inspect_admin_key"] == "***"


def test_the_server_tunes_the_garbage_collector_and_refuses_nonsense() -> None:
    """`serve` freezes what startup loaded out of the collector's passes and applies gc_threshold
    (Python's default of 700 cost 6-7 % of the CPU at 64 streams: gateway/bench/README.md)."""
    probe = ("import gc; from gateway.server.runner import tune_gc; before = gc.get_freeze_count(); "
             "tune_gc(12345); print(gc.get_threshold()[0], before, gc.get_freeze_count() > 10000)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["12345", "0", "True"]
    bad = run("print-config", "--base-url", "http://localhost:8000/v1", "--model", "m", "gateway.gc_threshold=0")
    assert bad.returncode == 2 and "gc_threshold" in bad.stderr and "100" in bad.stderr
    default = run("print-config", "--base-url", "http://localhost:8000/v1", "--model", "m")
    assert json.loads(default.stdout)["gateway"]["gc_threshold"] == 50000
