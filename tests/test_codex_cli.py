"""The real Codex CLI (``@openai/codex`` 0.169.0, ``python -m tests.codex_cli install``) through the
gateway, against the scripted vLLM-shaped upstream.

Codex runs as a subprocess: ``codex exec --json`` with a custom model provider (``wire_api =
"responses"``, ``base_url`` at the gateway) and a throwaway ``CODEX_HOME``. Assertions are on its
``--json`` output and on what the upstream received, never on its exit code (Codex exits 0 with an
empty answer when a turn fails). Codex's own retries are off so that an error is reported at once;
the deadlines below are generous (a slow, shared machine), and nothing is timed.

Skipped when Codex is not installed, unless GATEWAY_REQUIRE_REAL_BACKEND=1 (CI), where it fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests import codex_cli
from tests.conftest import Gateway, GatewayFactory, not_installed
from tests.fake_vllm import Generation, content, reasoning, tool_call

CODEX_DEADLINE_S = 180.0  # for one `codex exec`: far beyond what any run here takes


@pytest.fixture(scope="session")
def codex_binary() -> Path:
    found = codex_cli.binary()
    if found is None:
        not_installed(f"the Codex CLI is not installed: python -m tests.codex_cli install (npm, {codex_cli.VERSION})")
    return found


class Codex:
    """One throwaway Codex installation pointed at a gateway: its home, its working directory."""

    def __init__(self, binary: Path, root: Path, gateway: Gateway, model: str = "qwen3-8b", **provider: Any) -> None:
        self.binary, self.gateway = binary, gateway
        self.home, self.workdir = root / "codex-home", root / "work"
        self.home.mkdir(parents=True)
        self.workdir.mkdir(parents=True)
        settings = {"name": "vllm-gateway", "base_url": gateway.url + "/v1", "wire_api": "responses",
                    "request_max_retries": 0, "stream_max_retries": 0, **provider}
        lines = [f"model = {json.dumps(model)}", 'model_provider = "gateway"', 'approval_policy = "never"',
                 'sandbox_mode = "danger-full-access"', "", "[model_providers.gateway]"]
        lines += [f"{key} = {json.dumps(value)}" for key, value in settings.items()]
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    async def run(self, *args: str, ephemeral: bool = True) -> list[dict[str, Any]]:
        """``codex exec --json [--ephemeral] ARGS``: the JSON events it printed."""
        argv = [str(self.binary), "exec", "--json", "--skip-git-repo-check"]
        if ephemeral:
            argv.append("--ephemeral")
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.home.parent),
               "CODEX_HOME": str(self.home), "NO_COLOR": "1", "RUST_LOG": "error"}
        process = await asyncio.create_subprocess_exec(
            *argv, *args, cwd=self.workdir, env=env, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(), CODEX_DEADLINE_S)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"codex exec did not finish within {CODEX_DEADLINE_S:g} s") from None
        self.stderr = stderr.decode("utf-8", "replace")
        events = []
        for line in stdout.decode("utf-8", "replace").splitlines():
            if line.startswith("{"):
                events.append(json.loads(line))
        assert events, f"codex printed no JSON events; stderr:\n{self.stderr[-3000:]}"
        return events


@pytest.fixture
def codex(codex_binary: Path, tmp_path: Path) -> Any:
    def make(gateway: Gateway, model: str = "qwen3-8b", **provider: Any) -> Codex:
        return Codex(codex_binary, tmp_path / uuid.uuid4().hex[:8], gateway, model, **provider)
    return make


def items(events: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e["item"] for e in events if e.get("type") == "item.completed" and e["item"].get("type") == kind]


def answers(events: list[dict[str, Any]]) -> list[str]:
    return [item["text"] for item in items(events, "agent_message")]


def errors(events: list[dict[str, Any]]) -> list[str]:
    """What Codex reported as errors: ``error`` and ``turn.failed`` events."""
    found = [e.get("message", "") for e in events if e.get("type") == "error"]
    found += [e.get("error", {}).get("message", "") for e in events if e.get("type") == "turn.failed"]
    return found


def tool_messages(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


ANSWER = "Hello from a model behind the gateway."


# --- a plain answer ----------------------------------------------------------------------------


async def test_plain_answer(gateway: Gateway, codex: Any) -> None:
    gateway.upstream.developer_template = "drop"  # as Qwen2.5's and Qwen3's chat templates do
    gateway.upstream.queue(Generation(deltas=content(ANSWER)))
    events = await codex(gateway).run("Say hello.")
    assert answers(events) == [ANSWER] and errors(events) == []
    assert events[-1]["type"] == "turn.completed"
    body = gateway.upstream.requests[0]["body"]
    # Codex's system prompt arrives as developer messages: folded into the system message it reaches
    system = body["messages"][0]
    assert system["role"] == "system" and "Codex" in system["content"]
    assert "developer" not in [m["role"] for m in body["messages"]]
    assert body["messages"][-1] == {"role": "user", "content": "Say hello."}
    names = [t["function"]["name"] for t in body["tools"]]
    assert "exec_command" in names and any(name.startswith("multi_agent_v1__") for name in names)  # namespace
    assert all(t["type"] == "function" for t in body["tools"])  # web_search left out
    assert body["stream"] is True


# --- tools -------------------------------------------------------------------------------------


def quote_tool_output(body: dict[str, Any]) -> Generation:
    """The "model" of the turn after a call (the fake's responder): it quotes the tool output it got."""
    outputs = tool_messages(body)
    assert outputs, "the upstream got no tool output"
    return Generation(deltas=content(f"The command printed: {outputs[-1]}"))


async def test_exec_command_round_trip(gateway: Gateway, codex: Any) -> None:
    marker = uuid.uuid4().hex[:12]
    arguments = json.dumps({"cmd": f"echo {marker}-$((6 * 7))"})
    gateway.upstream.queue(
        Generation(deltas=tool_call(0, "exec_command", arguments, call_id="call-exec-1"), finish_reason="tool_calls"))
    gateway.upstream.responder = quote_tool_output
    events = await codex(gateway).run("Run the command.")
    assert errors(events) == []
    commands = items(events, "command_execution")
    assert len(commands) == 1 and f"{marker}-42" in commands[0]["aggregated_output"]
    assert len(answers(events)) == 1 and f"{marker}-42" in answers(events)[0]  # the shell computed 42
    second = gateway.upstream.requests[1]["body"]
    call = next(m for m in second["messages"] if m["role"] == "assistant")
    assert call["tool_calls"][0]["id"] == "call-exec-1"
    assert call["tool_calls"][0]["function"] == {"name": "exec_command", "arguments": arguments}
    assert any(f"{marker}-42" in output for output in tool_messages(second))


async def test_apply_patch_custom_tool_round_trip(gateway: Gateway, codex: Any) -> None:
    # Codex's model catalog gives gpt-5.5 the free-form (custom) apply_patch tool, with a grammar.
    cli = codex(gateway, model="gpt-5.5")
    patch = '*** Begin Patch\n*** Add File: notes/hello.txt\n+Hello from a "patch" \\o/\n*** End Patch\n'
    gateway.upstream.queue(
        Generation(deltas=tool_call(0, "apply_patch", json.dumps({"input": patch}), size=7, call_id="call-patch"),
                   finish_reason="tool_calls"))
    gateway.upstream.responder = quote_tool_output
    events = await cli.run("Add the notes file.")
    assert errors(events) == []
    assert (cli.workdir / "notes" / "hello.txt").read_text() == 'Hello from a "patch" \\o/\n'
    assert [c["path"] for item in items(events, "file_change") for c in item["changes"]] == [
        str(cli.workdir / "notes" / "hello.txt")]
    offered = next(t["function"] for t in gateway.upstream.requests[0]["body"]["tools"]
                   if t["function"]["name"] == "apply_patch")
    assert list(offered["parameters"]["properties"]) == ["input"] and "lark grammar" in offered["description"]
    second = gateway.upstream.requests[1]["body"]
    call = next(m for m in second["messages"] if m["role"] == "assistant")["tool_calls"][0]
    assert call["id"] == "call-patch" and json.loads(call["function"]["arguments"]) == {"input": patch}
    assert tool_messages(second) and len(answers(events)) == 1  # the custom_tool_call_output came back


async def test_namespace_call_round_trip(gateway: Gateway, codex: Any) -> None:
    # Codex's multi_agent_v1 namespace: the model calls one member by its offered name; Codex gets a
    # function_call with namespace, routes it to its own tool, and sends the call back in history.
    arguments = json.dumps({"target": "agent-that-does-not-exist"})
    gateway.upstream.queue(Generation(deltas=tool_call(0, "multi_agent_v1__close_agent", arguments,
                                                       call_id="call-ns"), finish_reason="tool_calls"))
    gateway.upstream.responder = quote_tool_output
    events = await codex(gateway).run("Close the agent.")
    assert errors(events) == [] and len(answers(events)) == 1
    second = gateway.upstream.requests[1]["body"]
    call = next(m for m in second["messages"] if m["role"] == "assistant")["tool_calls"][0]
    assert call == {"id": "call-ns", "type": "function",
                    "function": {"name": "multi_agent_v1__close_agent", "arguments": arguments}}
    # Codex's close_agent got the call (it checks the id it was given): the namespace routed it
    assert len(tool_messages(second)) == 1 and "invalid agent id agent-that-does-not-exist" in tool_messages(second)[0]


async def test_reasoning_is_echoed_back_and_accepted(gateway: Gateway, codex: Any) -> None:
    thought = "I should run a command to see the date."
    gateway.upstream.queue(
        Generation(deltas=reasoning(thought) + tool_call(0, "exec_command", json.dumps({"cmd": "echo ok"})),
                   finish_reason="tool_calls"),
        Generation(deltas=content("Done.")))
    events = await codex(gateway).run("Think, then run something.")
    assert errors(events) == [] and answers(events) == ["Done."]
    assert [item["text"] for item in items(events, "reasoning")] == [thought]
    # Codex sent the reasoning item back (content: null, encrypted_content: null): accepted, and
    # rebuilt into the assistant turn that made the call.
    second = gateway.upstream.requests[1]["body"]
    turn = next(m for m in second["messages"] if m["role"] == "assistant")
    # As NeMo Gym 0.7.0 sends it (reasoning_field: both): in the fields, not in the content.
    assert (turn["content"], turn["reasoning"], turn["reasoning_content"]) == ("", thought, thought)
    assert turn["tool_calls"]


async def test_exec_resume(gateway: Gateway, codex: Any) -> None:
    cli = codex(gateway)
    gateway.upstream.queue(Generation(deltas=content("The secret word is tangerine.")),
                           Generation(deltas=content("You asked about the secret word.")))
    first = await cli.run("Tell me a secret word.", ephemeral=False)
    thread = next(e["thread_id"] for e in first if e["type"] == "thread.started")
    second = await cli.run("resume", thread, "What did I ask?", ephemeral=False)
    assert answers(second) == ["You asked about the secret word."] and errors(second) == []
    history = gateway.upstream.requests[1]["body"]["messages"]
    said = [(m["role"], m["content"]) for m in history if m["role"] in ("user", "assistant")]
    assert ("user", "Tell me a secret word.") in said
    assert ("assistant", "The secret word is tangerine.") in said
    assert said[-1] == ("user", "What did I ask?")


# --- failures: reported as errors, calls of a failed response not run -------------------------------


@pytest.mark.parametrize("failure", ["http_500", "dropped", "mid_stream_error"])
async def test_upstream_failures_are_reported(gateway: Gateway, codex: Any, failure: str) -> None:
    generation = {
        "http_500": Generation(status=500, error_message="the engine exploded"),
        "dropped": Generation(deltas=content("I was about to say"), drop_after=3, finish_reason=None),
        "mid_stream_error": Generation(deltas=content("Half an answer"), stream_error_after=2,
                                       error_message="the engine exploded"),
    }[failure]
    gateway.upstream.queue(generation)
    events = await codex(gateway).run("Say something.")
    reported = errors(events)
    assert reported, events
    # Text that streamed before the failure is shown as it was, nothing more.
    sent = "".join(d.get("content", "") for d in generation.deltas)
    assert all(answer and sent.startswith(answer) for answer in answers(events)), events
    if failure != "dropped":
        assert any("exploded" in message for message in reported), reported  # vLLM's own message reached Codex
    assert len(gateway.upstream.requests) == 1


async def test_call_cut_off_by_a_drop_is_not_run(gateway: Gateway, codex: Any) -> None:
    cli = codex(gateway)
    witness = cli.workdir / "the-command-ran"
    arguments = json.dumps({"cmd": f"touch {witness}"})
    deltas = tool_call(0, "exec_command", arguments, call_id="call-cut")
    # The call's arguments are complete; the connection drops before finish_reason.
    gateway.upstream.queue(Generation(deltas=deltas, drop_after=len(deltas), finish_reason=None))
    events = await cli.run("Create the file.")
    assert errors(events), events
    assert items(events, "command_execution") == []
    assert not witness.exists()
    assert len(gateway.upstream.requests) == 1  # no tool output was sent back


# --- a long upstream silence ---------------------------------------------------------------------


@pytest.mark.parametrize("keepalive", ["event", "comment"])
async def test_long_silence_and_stream_idle_timeout(make_gateway: GatewayFactory, codex: Any, keepalive: str) -> None:
    gateway = await make_gateway("gateway.keepalive_interval_s=1", f"gateway.keepalive_format={keepalive}")
    words = "I thought for a while, and here is the answer."
    gateway.upstream.queue(Generation(deltas=content(words), pauses={2: 8.0}))
    events = await codex(gateway, stream_idle_timeout_ms=5000).run("Think long.")
    if keepalive == "event":  # the default: Codex's idle timer sees the keepalive events
        assert errors(events) == [] and answers(events) == [words]
    else:  # comments are no SSE events for Codex: it gives up after 5 s (the measurement)
        assert any(re.search("idle timeout", message) for message in errors(events)), events
        assert answers(events) == []

