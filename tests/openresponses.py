"""The Open Responses compliance suite (``bin/compliance-test.ts`` of the openresponses/openresponses
repository) run against the gateway.

    python -m tests.openresponses install                             # bun and zod from npm, cached
    python -m tests.openresponses run CHECKOUT                        # scripted vLLM-shaped upstream
    python -m tests.openresponses run CHECKOUT --upstream llama.cpp   # the real llama.cpp model
    python -m tests.openresponses run CHECKOUT --upstream URL --model NAME   # any vLLM server

CHECKOUT is a clone of that repository, kept outside this one (none of its code is committed
here). The suite needs only bun and zod: they are installed from npm into
``~/.cache/vllm-gateway/openresponses-tools`` and found through ``NODE_PATH``, so the checkout's
own dependencies (a web site's) are never installed. Each HTTP test runs on its own
(``--filter``), one after the other, so that a small CPU model answers one request at a time.
WebSocket and compaction tests are outside the gateway's scope (it serves neither) and are not run.
``tests/test_openresponses.py`` runs this when ``OPENRESPONSES_CHECKOUT`` names a checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

BUN_VERSION = "1.4.4"
ZOD_VERSION = "3.25.76"  # the major version the suite's generated schemas are written for
SUITE_TIMEOUT_S = 900.0  # one test against a CPU model, generously


def tools_dir() -> Path:
    cache = Path(os.environ.get("VLLM_GATEWAY_CACHE", Path.home() / ".cache" / "vllm-gateway"))
    return cache / "openresponses-tools"


def bun_binary() -> Path:
    return tools_dir() / "node_modules" / ".bin" / "bun"


def install() -> Path:
    """bun and zod from npm (seconds; nothing when already there). Returns the bun binary."""
    bun, zod = bun_binary(), tools_dir() / "node_modules" / "zod" / "package.json"
    if bun.exists() and zod.exists() and json.loads(zod.read_text())["version"] == ZOD_VERSION:
        version = subprocess.run([str(bun), "--version"], capture_output=True, text=True).stdout.strip()
        if version == BUN_VERSION:
            return bun
    tools_dir().mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(tools_dir()),
                    f"bun@{BUN_VERSION}", f"zod@{ZOD_VERSION}"], check=True)
    return bun


def suite_test_ids(checkout: Path) -> list[str]:
    """The suite's test ids, read from its source, in its order."""
    source = (checkout / "src" / "lib" / "compliance-tests.ts").read_text()
    templates = source[source.index("export const testTemplates"):]
    return re.findall(r'^\s{4}id: "([^"]+)"', templates, re.M)


def in_scope(test_id: str) -> bool:
    """HTTP tests of ``POST /responses``: the gateway serves no WebSocket and no compaction."""
    return not test_id.startswith("websocket-") and not test_id.startswith("compact")


@dataclass
class SuiteResult:
    results: list[dict[str, Any]] = field(default_factory=list)  # the suite's own result objects
    out_of_scope: list[str] = field(default_factory=list)

    @property
    def passed(self) -> list[str]:
        return [r["id"] for r in self.results if r["status"] == "passed"]

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.results if r["status"] != "passed"]

    def summary(self) -> str:
        lines = [f"{len(self.passed)} passed, {len(self.failed)} failed "
                 f"(HTTP tests; {len(self.out_of_scope)} WebSocket/compaction tests not run)"]
        for result in self.failed:
            lines.append(f"  FAILED {result['id']}: {reason(result)}")
        return "\n".join(lines)


def reason(result: dict[str, Any]) -> str:
    """Why a test failed: the suite's errors, and the gateway's error message when the suite
    printed the error body as ``[object Object]``."""
    errors = " | ".join(result.get("errors") or [result["status"]])
    body = result.get("response")
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        errors += f" (the gateway said: {body['error'].get('message')})"
    return errors


async def run_suite(checkout: Path, base_url: str, model: str, api_key: str = "unused",
                    only: Optional[list[str]] = None) -> SuiteResult:
    bun = install()
    env = {**os.environ, "NODE_PATH": str(tools_dir() / "node_modules")}
    outcome = SuiteResult()
    for test_id in only or suite_test_ids(checkout):
        if not in_scope(test_id):
            outcome.out_of_scope.append(test_id)
            continue
        process = await asyncio.create_subprocess_exec(
            str(bun), "run", "bin/compliance-test.ts", "--base-url", base_url, "--api-key", api_key,
            "--model", model, "--filter", test_id, "--json",
            cwd=checkout, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), SUITE_TIMEOUT_S)
        except asyncio.TimeoutError:
            process.kill()
            await process.wait()
            outcome.results.append({"id": test_id, "status": "failed",
                                    "errors": [f"no result within {SUITE_TIMEOUT_S:.0f} s"]})
            continue
        try:
            report = json.loads(stdout)
        except json.JSONDecodeError:
            outcome.results.append({"id": test_id, "status": "failed",
                                    "errors": [f"the suite printed no JSON: {stderr.decode()[-2000:]}"]})
            continue
        outcome.results.extend(report["results"])
    return outcome


# --- what the suite runs against ---------------------------------------------------------------------


def scripted_answer(body: dict[str, Any]) -> Any:
    """What a vLLM server with a reasoning parser and a tool parser would stream for the suite's
    requests: reasoning, then a call of the first tool when tools are offered, else a short answer."""
    from tests.fake_vllm import Generation, content, reasoning, tool_call

    tools = body.get("tools") or []
    if tools:
        name = tools[0]["function"]["name"]
        return Generation(deltas=reasoning("The user wants the weather; I will call the tool.")
                          + tool_call(0, name, '{"location": "San Francisco, CA"}'),
                          finish_reason="tool_calls", prompt_tokens=61, completion_tokens=24)
    return Generation(deltas=reasoning("A short, direct answer will do.") + content("Hello there, friend!"),
                      prompt_tokens=23, completion_tokens=14)


async def against_gateway(checkout: Path, upstream: str, model: Optional[str] = None, *,
                          llama_cpp_flavour: bool = False, greedy: bool = False,
                          only: Optional[list[str]] = None, conventions: Optional[str] = None) -> SuiteResult:
    """Start the gateway in front of ``upstream`` and run the suite against it.

    ``upstream``: ``scripted`` (the vLLM-shaped fake, answering from ``scripted_answer``),
    ``llama.cpp`` (the real CPU model, started here), or the base URL of a running server
    (``llama_cpp_flavour`` when it is a llama-server). ``greedy``: the deployment's default
    sampling is temperature 0 (always with llama.cpp's tiny model). ``conventions``:
    ``gateway.response_conventions`` (unset: the default, ``nemo_gym``)."""
    from aiohttp import web

    from gateway.config import load_config, shortcut_overrides
    from gateway.server.runner import bound_url, start
    from tests.fake_vllm import FakeVLLM

    root = Path(__file__).resolve().parent.parent
    cleanups: list[Any] = []
    try:
        if upstream == "scripted":
            fake = FakeVLLM(model or "Qwen/Qwen3-8B")
            fake.responder = scripted_answer
            fake_runner = web.AppRunner(fake.app, access_log=None)
            await fake_runner.setup()
            await web.TCPSite(fake_runner, "127.0.0.1", 0).start()
            cleanups.append(fake_runner.cleanup)
            base_url, model = bound_url(fake_runner) + "/v1", fake.model
        elif upstream == "llama.cpp":
            from gateway.backends import llama_cpp

            server = await asyncio.to_thread(llama_cpp.LlamaServer().start)
            cleanups.append(lambda: asyncio.to_thread(server.stop))
            base_url, model, llama_cpp_flavour = server.url, llama_cpp.MODEL_ALIAS, True
        else:
            base_url, model = upstream, model or "model"
        overrides = shortcut_overrides(base_url, model, "")
        if llama_cpp_flavour:
            overrides.append("gateway.upstream_flavour=llama.cpp")
        if conventions is not None:
            overrides.append(f"gateway.response_conventions={conventions}")
        if greedy or llama_cpp_flavour:
            # The suite's requests set no sampling values, so the deployment's defaults apply: for
            # a 0.5B CPU model greedy decoding, set where an operator sets defaults (extra_body),
            # so the run is reproducible (at OpenAI's default temperature 1 it can ramble for minutes).
            overrides.append("+policy_model.responses_api_models.vllm_model.extra_body={temperature: 0, seed: 7}")
        config = load_config([root / "config" / "vllm_model.yaml"], overrides=overrides, environ={})
        gateway = await start(config, port=0)
        cleanups.append(gateway.cleanup)
        return await run_suite(checkout, bound_url(gateway) + "/v1", model, only=only)
    finally:
        for cleanup in reversed(cleanups):
            await cleanup()


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.openresponses", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="install bun and zod from npm into the cache")
    run = commands.add_parser("run", help="run the suite's HTTP tests against the gateway")
    run.add_argument("checkout", type=Path, help="a clone of openresponses/openresponses")
    run.add_argument("--upstream", default="scripted", help="scripted, llama.cpp, or a vLLM base URL")
    run.add_argument("--model", help="the model name (with a vLLM base URL)")
    run.add_argument("--json", type=Path, help="also write the suite's results here")
    run.add_argument("--only", help="comma-separated test ids (default: every HTTP test)")
    run.add_argument("--llama-cpp", action="store_true", help="the --upstream URL is a llama-server")
    run.add_argument("--greedy", action="store_true", help="deployment default temperature 0 (small models)")
    run.add_argument("--conventions", choices=["nemo_gym", "openai"],
                     help="gateway.response_conventions (default: the gateway's default, nemo_gym)")
    args = parser.parse_args(argv)
    if args.command == "install":
        print(install())
        return 0
    only = args.only.split(",") if args.only else None
    outcome = asyncio.run(against_gateway(args.checkout.resolve(), args.upstream, args.model,
                                          llama_cpp_flavour=args.llama_cpp, greedy=args.greedy, only=only,
                                          conventions=args.conventions))
    if args.json:
        args.json.write_text(json.dumps(outcome.results, indent=2))
    print(outcome.summary())
    return 0 if not outcome.failed else 1


if __name__ == "__main__":
    sys.exit(main())
