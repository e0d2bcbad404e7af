"""NeMo Gym 0.7.0 parity: its shipped config files, and a differential test against its own server.

Gym 0.7.0 runs in its own cached venv (``python -m tests.nemo_gym_reference install``; see that
package for why); ``runner.py`` drives its ``VLLMModel`` under FastAPI's TestClient with a fake vLLM
client. The gateway runs for real (aiohttp app on a loopback socket) in front of a scripted vLLM
that sends the very answer Gym's fake client returned. A seeded generator makes the corpus:
requests, vLLM answers and config keys set and unset, both token-tracking modes.

Every difference must be zero or on ALLOWED below, each with its reason. Skipped without the
install, except in CI (GATEWAY_REQUIRE_REAL_BACKEND=1), where it must run.
"""

from __future__ import annotations

import copy
import json
import os
import random
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import aiohttp
import pytest
import yaml
from aiohttp import web

from gateway.config import ConfigError, load_config, shortcut_overrides
from gateway.server.runner import bound_url, start
from gateway.upstream.developer_role import WITH_DEVELOPER, WITHOUT_DEVELOPER
from tests import nemo_gym_reference as gym

ROOT = Path(__file__).resolve().parent.parent
MODEL = "Qwen/Qwen3-8B"
CORPUS_SIZE = 400
CHAT_CORPUS_SIZE = 150
SEED = 20261201


@pytest.fixture(scope="module")
def gym_python() -> Path:
    if not gym.installed():
        message = "NeMo Gym 0.7.0 is not installed: python -m tests.nemo_gym_reference install"
        if os.environ.get("GATEWAY_REQUIRE_REAL_BACKEND") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return gym.python()


# --- 1. Gym's shipped config files ---------------------------------------------------------------


class _AnyVariable(Mapping[str, str]):
    """An environment in which every ${var} a Gym config names is set (URL-shaped for URLs)."""

    def __getitem__(self, key: str) -> str:
        return "http://localhost:8000/v1" if "url" in key.lower() else "value"

    def get(self, key: str, default: Any = None) -> Any:
        return default if key.startswith("NEMO_GYM_") else self[key]

    def __contains__(self, key: object) -> bool:
        return not str(key).startswith("NEMO_GYM_")

    def __iter__(self):  # type: ignore[override]
        return iter(())

    def __len__(self) -> int:
        return 0


def _vllm_model_configs(wheel: Path) -> list[tuple[Path, str]]:
    found = []
    for path in sorted(wheel.glob("**/*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except (yaml.YAMLError, UnicodeDecodeError):
            continue
        for top, value in (data or {}).items() if isinstance(data, dict) else ():
            models = value.get("responses_api_models") if isinstance(value, dict) else None
            if isinstance(models, dict) and isinstance(models.get("vllm_model"), dict):
                found.append((path, top))
    return found


def test_shipped_config_is_gyms_own(gym_python: Path) -> None:
    wheel = gym.wheel_dir()
    ours = yaml.safe_load((ROOT / "config" / "vllm_model.yaml").read_text())
    assert ours == yaml.safe_load((wheel / "responses_api_models/vllm_model/configs/vllm_model.yaml").read_text())
    training = yaml.safe_load((ROOT / "config" / "vllm_model_for_training.yaml").read_text())
    assert training == yaml.safe_load(
        (wheel / "responses_api_models/vllm_model/configs/vllm_model_for_training.yaml").read_text())


# Where loading a shipped file through the gateway and through Gym's own loader may differ: file
# name -> (what each side does, why). Everything else must load to the same values.
CONFIG_DIFFERENCES = {
    "vllm_model_completions.yaml": "Gym runs it; the gateway refuses use_completions_api by name (it talks "
                                   "to vLLM's /v1/chat/completions only)",
    "browsecomp/config.yaml": "api_key: ${oc.select:inference_api_key,null} is null unless inference_api_key is "
                              "set; Gym's VLLMModelConfig then refuses the file (api_key must be a string), the "
                              "gateway sends no key, as it does for any api_key: null",
}
# Files neither loader can load: file name -> why.
CONFIG_UNLOADABLE = {
    "reward_profiling/configs/container_config.yaml": "its config_paths name a file on its author's cluster "
                                                      "(/lustre/...), which neither Gym nor the gateway can read",
}


def _known(table: Mapping[str, str], path: Path) -> bool:
    return any(path.as_posix().endswith(name) for name in table)


def _wheel_config_cases(wheel: Path) -> list[dict[str, Any]]:
    """Each shipped vllm_model block, as a user runs it: a file that only patches the model server
    (its block has no entrypoint) goes over Gym's vllm_model.yaml; blocks for Gym's local vLLM
    launcher, which leave the server to be filled in (or write a ``dummy`` to fill in), get it on
    the command line, as a user does."""
    from gateway.gym_config import Resolver, apply_directives, load_config_files

    base = wheel / "responses_api_models/vllm_model/configs/vllm_model.yaml"
    cases = []
    for path, top in _vllm_model_configs(wheel):
        long = f"{top}.responses_api_models.vllm_model"
        own = yaml.safe_load(path.read_text())[top]["responses_api_models"]["vllm_model"]
        files = [str(path)] if "entrypoint" in own else [str(base), str(path)]
        overrides: dict[str, Any] = {}
        if own.get("supply_prefix_token_ids"):
            overrides[f"{long}.return_token_id_information"] = True  # Gym requires it with prefix supply
        try:
            tree = load_config_files(files, _AnyVariable())
            apply_directives(tree)
            resolver = Resolver(tree, _AnyVariable(), str)
        except ConfigError:  # the gateway refuses the file: the test says whether rightly
            tree, resolver = {top: {"responses_api_models": {"vllm_model": own}}}, None
        block = tree[top]["responses_api_models"]["vllm_model"]
        for key, value in (("base_url", "http://localhost:8000/v1"), ("api_key", "EMPTY"), ("model", "m")):
            written = block.get(key, "???")
            try:
                written = resolver.resolve(written, f"{long}.{key}") if resolver and written != "???" else written
            except ConfigError:
                pass
            if written in ("???", "dummy") or "<" in str(written):  # placeholders
                overrides[f"{long}.{key}"] = value
        cases.append({"path": path, "files": files, "server": top, "overrides": overrides})
    return cases


def _gateway_loads(case: dict[str, Any]) -> Any:
    overrides = [f"+{key}={json.dumps(value) if isinstance(value, bool) else value}"
                 for key, value in case["overrides"].items()]
    return load_config(case["files"], server_name=case["server"], environ=_AnyVariable(), overrides=overrides)


def test_every_vllm_model_config_in_the_wheel_loads_or_names_what_is_refused(gym_python: Path) -> None:
    wheel = gym.wheel_dir()
    cases = _wheel_config_cases(wheel)
    assert len(cases) >= 25  # 31 in 0.7.0
    refused, unsupported_resolver = [], []
    for case in cases:
        path = case["path"]
        try:
            config = _gateway_loads(case)
        except ConfigError as exc:
            # Only a Gym feature the gateway lacks may stop a file, and the message says which; or a
            # file that Gym cannot load either (CONFIG_UNLOADABLE, checked against Gym below).
            if _known(CONFIG_UNLOADABLE, path):
                continue
            if "resolver is not supported" in str(exc) or "_delete_key" in str(exc) or "._copy:" in str(exc):
                unsupported_resolver.append((path, str(exc)))
                continue
            assert ": not supported by the gateway: " in str(exc), (path, str(exc))
            refused.append((path.name, str(exc).split(":")[0]))
            continue
        assert config.model_server.model
    # The ones refused in 0.7.0: /v1/completions, responses-native servers, an endpoint file.
    assert {key.rsplit(".", 1)[1] for _, key in refused} <= {"use_completions_api", "is_responses_native",
                                                              "endpoint_file"}
    assert any(name == "vllm_model_completions.yaml" for name, _ in refused)
    # oc.select, nested and relative interpolations, _copy / _delete_key, config_paths: all loaded.
    assert unsupported_resolver == []


def _model_server_values(config: Any) -> dict[str, Any]:
    import msgspec

    return msgspec.structs.asdict(config.model_server)


def test_every_vllm_model_config_in_the_wheel_loads_as_gyms_own_loader_loads_it(gym_python: Path) -> None:
    """The same file through Gym 0.7.0's own loader (its config_paths, merge, directives, OmegaConf,
    its VLLMModelConfig) and through the gateway's: the same value for every key both have."""
    from gateway.config import NEMO_GYM_IGNORED_KEYS, ModelServerConfig

    cases = _wheel_config_cases(gym.wheel_dir())
    lines = "".join(json.dumps({"files": c["files"], "server": c["server"], "overrides": c["overrides"]}) + "\n"
                    for c in cases)
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEMO_GYM_")}
    out = subprocess.run([str(gym_python), str(gym.CONFIG_RUNNER)], input=lines, capture_output=True, text=True,
                         timeout=600, env=env, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr[-4000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(results) == len(cases), out.stderr[-4000:]

    gym_keys_seen: set[str] = set()
    compared = 0
    for case, theirs in zip(cases, results):
        path, what = case["path"], f"{case['path'].relative_to(gym.wheel_dir())} [{case['server']}]"
        try:
            ours: Any = _model_server_values(_gateway_loads(case))
        except ConfigError as exc:
            ours = exc
        if _known(CONFIG_UNLOADABLE, path):
            assert isinstance(ours, ConfigError) and "error" in theirs, (what, ours, theirs)
            assert "not found" in str(ours) and "ConfigPathNotFoundError" in theirs["error"], (what, ours, theirs)
            continue
        if _known(CONFIG_DIFFERENCES, path):
            # A known difference: exactly one side refuses the file.
            assert isinstance(ours, ConfigError) != ("error" in theirs), (what, ours, theirs)
            continue
        assert "error" not in theirs, (what, theirs["error"])
        assert not isinstance(ours, ConfigError), (what, str(ours))
        validated = theirs["validated"]
        gym_keys_seen |= set(validated)
        for key, value in validated.items():
            if key not in ModelServerConfig.__struct_fields__:
                continue
            mine = ours[key]
            if key in NEMO_GYM_IGNORED_KEYS:  # kept as written, unused: compare what the file says
                value = theirs["block"].get(key)
            elif key == "base_url":
                value = [value] if isinstance(value, str) else value
            assert mine == value, (what, key, mine, value)
            compared += 1
    # Every key of Gym's VLLMModelConfig is one of the gateway's (acting, ignored or refused).
    assert gym_keys_seen and gym_keys_seen <= set(ModelServerConfig.__struct_fields__), \
        gym_keys_seen - set(ModelServerConfig.__struct_fields__)
    assert compared >= 25 * 30  # each file, key by key (1008 in 0.7.0)


_LANGUAGE_BASE = r"""
host: gpu
port: 8000
flag: true
nums: [1, 2, 3]
which: port
deep_key: deep
nested: {inner: {deep: 7}, sib: x}
maybe: ???
nothing: null
templates: {kwargs: {enable_thinking: true, drop_me: 1}}
base_block:
  responses_api_models:
    vllm_model:
      entrypoint: app.py
      base_url: http://${host}:${port}/v1
      api_key: k
      model: base-model
      return_token_id_information: false
      uses_reasoning_parser: true
      extra_body: {a: 1, b: 2, own_model: "${..model}"}
      chat_template_kwargs: {enable_thinking: true}
moved_block:
  responses_api_models:
    vllm_model:
      entrypoint: app.py
      base_url: http://moved:1/v1
      api_key: ""
      model: moved-model
      return_token_id_information: false
      uses_reasoning_parser: false
"""

_LANGUAGE_FILE = r"""
config_paths: [base.yaml]
policy_model:
  responses_api_models:
    vllm_model:
      entrypoint: app.py
      base_url: http://${host}:${port}/v1
      api_key: ${oc.select:no_such_key,''}
      model: ${oc.env:GATEWAY_TEST_SET_VAR}
      return_token_id_information: ${oc.select:no_such_flag,false}
      uses_reasoning_parser: ${oc.select:flag,false}
      chat_template_kwargs: {_copy: templates.kwargs, _delete_key: drop_me, extra: 2}
      extra_body:
        embedded: "http://${host}:${port}/v1"
        typed: ${port}
        list_item: ${nums[1]}
        list_item_dot: ${nums.2}
        nested_key: ${${which}}
        dynamic_path: ${nested.inner.${deep_key}}
        sibling: ${.typed}
        uncle: ${..model}
        select_absolute: ${oc.select:nested.inner.deep}
        select_missing: ${oc.select:nope,fallback}
        select_marker: ${oc.select:maybe,42}
        select_none: ${oc.select:nope}
        select_relative: ${oc.select:.typed,0}
        select_null: ${oc.select:nope,null}
        select_spaces: "${oc.select: nested.sib , q }"
        select_text: "text ${oc.select:nested.sib,q}"
        env_text: ${oc.env:GATEWAY_TEST_UNSET_VAR,plain}
        env_int: ${oc.env:GATEWAY_TEST_UNSET_VAR,8000}
        env_bool: ${oc.env:GATEWAY_TEST_UNSET_VAR,true}
        env_null: ${oc.env:GATEWAY_TEST_UNSET_VAR,null}
        env_quoted: ${oc.env:GATEWAY_TEST_UNSET_VAR,'a, b'}
        env_double_quoted: ${oc.env:GATEWAY_TEST_UNSET_VAR,"it's"}
        env_nested: ${oc.env:GATEWAY_TEST_UNSET_VAR,${host}}
        env_built: ${oc.env:GATEWAY_TEST_UNSET_VAR,http://${host}:${port}}
        env_set: ${oc.env:GATEWAY_TEST_SET_VAR,unused}
        env_empty_default: ${oc.env:GATEWAY_TEST_UNSET_VAR,}
        decode_int: ${oc.decode:'8000'}
        decode_list: ${oc.decode:${oc.env:GATEWAY_TEST_UNSET_VAR,'[1, true, x]'}}
        decode_null: ${oc.decode:null}
        embedded_null: a${nothing}b
        embedded_bool: x-${flag}
        escaped: \${not.a.ref}
        whole_mapping: ${nested.inner}
        deleted_here: {_delete_key: gone, gone: 1, kept: 2}
copied:
  _copy: base_block
  responses_api_models:
    vllm_model:
      model: copied-model
      chat_template_kwargs: {enable_thinking: false}
inherited: ${inherit_from:moved_block}
also_copied: ${copy:base_block}
"""


def test_nemo_gyms_config_language_resolves_as_gyms_own_loader_resolves_it(gym_python: Path,
                                                                           tmp_path: Path) -> None:
    """OmegaConf's interpolations and resolvers, Gym's directives and config_paths, each construct
    once: the gateway and Gym 0.7.0's own loader (OmegaConf 2.3) give the same values."""
    (tmp_path / "base.yaml").write_text(_LANGUAGE_BASE)
    main = tmp_path / "main.yaml"
    main.write_text(_LANGUAGE_FILE)
    environ = {"GATEWAY_TEST_SET_VAR": "from-env/model"}
    servers = ["policy_model", "copied", "inherited", "also_copied", "base_block", "moved_block"]
    cases = [{"files": [str(main)], "server": server, "overrides": {}, "environ": environ,
              "every_variable_set": False} for server in servers]
    out = subprocess.run([str(gym_python), str(gym.CONFIG_RUNNER)],
                         input="".join(json.dumps(c) + "\n" for c in cases), capture_output=True, text=True,
                         timeout=300, cwd=str(tmp_path),
                         env={k: v for k, v in os.environ.items() if not k.startswith("NEMO_GYM_")})
    assert out.returncode == 0, out.stderr[-4000:]
    results = dict(zip(servers, (json.loads(line) for line in out.stdout.splitlines() if line.strip())))
    assert len(results) == len(servers), out.stderr[-4000:]

    for server, theirs in results.items():
        try:
            ours: Any = _model_server_values(load_config([main], server_name=server, environ=environ))
        except ConfigError as exc:
            ours = exc
        if server == "moved_block":  # ${inherit_from:...} moved it away: gone for both
            assert isinstance(ours, ConfigError) and "error" in theirs, (server, ours, theirs)
            continue
        assert "error" not in theirs, (server, theirs["error"])
        assert not isinstance(ours, ConfigError), (server, str(ours))
        for key in ("base_url", "api_key", "model", "return_token_id_information", "uses_reasoning_parser",
                    "chat_template_kwargs", "extra_body"):
            value = theirs["validated"][key]
            value = [value] if key == "base_url" and isinstance(value, str) else value
            assert ours[key] == value, (server, key, ours[key], value)
    # What each construct gives (the same on both sides, checked above), spelled out:
    extra = results["policy_model"]["validated"]["extra_body"]
    assert extra["nested_key"] == 8000 and extra["uncle"] == "from-env/model" and extra["env_int"] == "8000"
    assert extra["env_null"] is None and extra["select_marker"] == 42 and extra["escaped"] == "${not.a.ref}"
    assert extra["decode_list"] == [1, True, "x"] and extra["deleted_here"] == {"kept": 2}
    assert results["policy_model"]["validated"]["chat_template_kwargs"] == {"enable_thinking": True, "extra": 2}
    assert results["copied"]["validated"]["extra_body"]["own_model"] == "copied-model"  # resolved where it landed
    assert results["inherited"]["validated"]["model"] == "moved-model"


def test_nemo_gym_config_language_refuses_by_key(tmp_path: Path) -> None:
    """What the gateway's loader still lacks, or what cannot be, is an error naming the key."""
    def error(block_line: str, top: str = "") -> str:
        path = tmp_path / "c.yaml"
        path.write_text(f"{top}\npolicy_model:\n  vllm_model:\n    base_url: http://a:1/v1\n    model: m\n"
                        f"    {block_line}\n")
        with pytest.raises(ConfigError) as info:
            load_config([path], environ={})
        return str(info.value)

    long = "policy_model.vllm_model"
    message = error("extra_body: {when: '${now:%H}'}")
    assert message.startswith(f"{long}.extra_body.when: the ${{now:...}} resolver is not supported")
    assert error("extra_body: {a: '${hydra:runtime.cwd}'}").startswith(f"{long}.extra_body.a: the ${{hydra:")
    assert "unterminated" in error("extra_body: {a: '${oc.select:x'}")
    assert "goes above the top" in error("extra_body: {a: '${.....x}'}")
    assert f"{long}.extra_body.a refers to ${{.nope}}, which is not set" in error("extra_body: {a: '${.nope}'}")
    assert "oc.env takes 1 or 2 argument(s), got 3" in error("extra_body: {a: '${oc.env:A,b,c}'}")
    assert "copies or inherits from nowhere.at.all, which is not in the merged config" in \
        error("extra_body: {a: 1}", top="other: {_copy: nowhere.at.all}")
    assert "'missing_key' is not a key of" in \
        error("extra_body: {a: 1}", top="src: {a: 1}\nother: {_copy: src, _delete_key: missing_key}")
    include = tmp_path / "inc.yaml"
    include.write_text("config_paths: [does/not/exist.yaml]\n")
    with pytest.raises(ConfigError, match="config_paths entry 'does/not/exist.yaml' was not found"):
        load_config([include], environ={})


# --- 2. the corpus ---------------------------------------------------------------------------------

# Gym bugs the gateway keeps fixing (README, "NeMo Gym"): a case that contains one is expected to
# differ on the side named, and only there.
GYM_BUGS = {
    "several_blocks_in_a_turn": ("request", "Gym sends only the first <think> block of a history turn as reasoning; "
                                 "the gateway sends all of them"),
    "reasoning_content_only": ("request", "Gym drops a reasoning item's content when its summary is empty"),
    "refusal_in_history": ("request", "Gym moves an assistant refusal part into `refusal`, which chat templates "
                           "do not render; the gateway keeps it in the content"),
    "blocks_around_text": ("response", "Gym moves every <think> block before all the text; the gateway keeps "
                           "reasoning and text in the order generated"),
    "unclosed_think": ("response", "Gym leaves an unclosed <think> in the answer; the gateway makes it reasoning"),
    "max_tokens_400": ("response", "Gym takes any vLLM 400 that mentions max_tokens for a context overflow and "
                       "answers empty; the gateway passes the 400 on"),
    "top_logprobs_without_logprobs": ("request", "Gym forwards top_logprobs without logprobs (vLLM then 400s "
                                      "or ignores it); the gateway asks only when the client includes logprobs"),
    "request_extension": ("both", "Gym answers 422 to a Responses request with a top-level vLLM extension "
                          "(chat_template_kwargs); the gateway accepts it"),
    "continue_final_tokenize": ("request", "Gym tokenizes a continued assistant message as a new turn "
                                "(add_generation_prompt); the gateway tokenizes what is generated from"),
}

# Differences that are not differences in what vLLM generates or what a trainer gets.
ALLOWED = {
    "vllm_ignored_fields": "Gym forwards Responses fields vLLM ignores (metadata, store, service_tier, "
                           "prompt_cache_key, safety_identifier, truncation, parallel_tool_calls without "
                           "tools, top_logprobs); the gateway sends `stream: false` (vLLM's default)",
    "text_part_as_string": "a lone text part is sent as a string; vLLM renders [{type: text, text: x}] and x "
                           "the same (its chat-template content-format conversion)",
    "extra_tokenize": "the gateway starts /tokenize with the generation, before it knows whether vLLM "
                      "sends prompt ids inline, so it may ask when Gym does not; the ids used are the same",
    "ids": "item ids are fresh per response on both sides; the gateway's function_call ids are fc_… (the "
           "Responses contract; Codex reads them), Gym reuses the call_id",
    "nulls": "a key null on one side and absent (or [] for output_text.logprobs, 0 for usage details) on "
             "the other: Gym's pydantic models read both alike",
    "incomplete_details_message": "the gateway adds a human-readable incomplete_details.message",
    "reasoning_status": "Gym's reasoning items have status null; the gateway's are completed (the schema)",
    "usage_zeros": "no usage from vLLM (a context overflow): Gym's usage is null, the gateway's zeros",
    "add_generation_prompt": "the gateway's /tokenize says add_generation_prompt: true, vLLM's default",
}

USER_TEXTS = ["What is 2+2?", "hi", "  spaced out  \n", "Explain <b>tags</b>.", "Ünïcödé ✓"]
ANSWERS = [
    ("", ()), ("Hello there.", ()), ("\n\nHello.", ()), ("  padded  ", ()),
    ("<think>plan</think>\n\nThe answer is 4.", ()), ("<think>\nq\n</think>\n\n", ()),
    ("stray</think> after", ()), ("thinking was opened by the template</think>\n\nAnswer.", ()),
    ("<think>a</think><think>b</think>text", ()),
    ("<think>a</think>X<think>b</think>Y", ("blocks_around_text",)),
    ("<think>never closed", ("unclosed_think",)),
]
TOOLS = [{"type": "function", "name": "get_weather", "description": "Weather in a city", "strict": True,
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def _config(rng: random.Random) -> dict[str, Any]:
    config: dict[str, Any] = {}
    options = {
        "return_token_id_information": [True, False],
        "uses_reasoning_parser": [True, False],
        "reasoning_field": ["both", "reasoning", "reasoning_content"],
        "uses_interleaved_reasoning": [True, False],
        "preserve_reasoning_in_assistant_content": [True, False],
        "replace_developer_role_with_system": [True, False],
        "chat_template_kwargs": [{"enable_thinking": True}],
        "extra_body": [{"top_k": 20, "repetition_penalty": 1.05}, {"temperature": 0.6, "max_tokens": 128}],
        "sampling_overrides": [{"temperature": 1.0, "top_p": 1.0}, {"top_p": 0.8}],
        "forward_request_chat_template_kwargs": [True, False],
        "continue_final_assistant_message": [True],
        "propagate_context_overflow_errors": [True, False],
        "request_prompt_and_generation_token_ids": [True],
        "sequential_reasoning_allowed": [False],
    }
    for key, values in options.items():
        if rng.random() < 0.35:
            config[key] = rng.choice(values)
    return config


def _history_turn(rng: random.Random, tags: set[str], tracking: bool) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    kind = rng.random()
    if kind < 0.5:
        blocks = rng.choice([["why"], ["first", "second"], []])
        if len(blocks) > 1:
            tags.add("several_blocks_in_a_turn")
        if blocks or rng.random() < 0.3:
            item: dict[str, Any] = {"type": "reasoning", "id": "rs_h",
                                    "summary": [{"type": "summary_text", "text": b} for b in blocks]}
            if not blocks and rng.random() < 0.5:
                item["content"] = [{"type": "reasoning_text", "text": "raw"}]
                tags.add("reasoning_content_only")
            items.append(item)
    text = rng.choice(["Sure.", "", "<think>inline</think>Done.", None])
    if text and "<think>" in text and items:
        tags.add("several_blocks_in_a_turn")  # the reasoning item's block and the inline one
    if text is not None:
        parts: list[dict[str, Any]] = [{"type": "output_text", "text": text, "annotations": []}]
        if rng.random() < 0.1:
            parts.append({"type": "refusal", "refusal": "I can't."})
            tags.add("refusal_in_history")
        items.append({"type": "message", "role": "assistant", "id": "msg_h", "status": "completed", "content": parts})
    if rng.random() < 0.4:
        items.append({"type": "function_call", "id": "fc_h", "call_id": "call_h1", "name": "get_weather",
                      "arguments": '{"city": "Paris"}', "status": "completed"})
        if tracking and rng.random() < 0.7:
            items[-1].update(prompt_token_ids=[1, 2], generation_token_ids=[7, 8], generation_log_probs=[-0.1, -0.2])
            if rng.random() < 0.3:
                items[-1]["routed_experts"] = [[[3, 5]], [[1, 2]]]
        items.append({"type": "function_call_output", "call_id": "call_h1", "output": "18C"})
    elif items and tracking and rng.random() < 0.7:
        items[-1].update(prompt_token_ids=[1, 2, 3], generation_token_ids=[9], generation_log_probs=[-0.5])
    return items


def _request(rng: random.Random, config: dict[str, Any], tags: set[str]) -> dict[str, Any]:
    tracking = config.get("return_token_id_information", False)
    request: dict[str, Any] = {"model": "client-model"}
    if rng.random() < 0.25:
        request["input"] = rng.choice(USER_TEXTS)
    else:
        items: list[dict[str, Any]] = []
        if rng.random() < 0.3:
            role = rng.choice(["system", "developer"])
            content: Any = "Be brief."
            if rng.random() < 0.5:
                content = [{"type": "input_text", "text": "Rule one. "}, {"type": "input_text", "text": "Rule two."}]
            items.append({"role": role, "content": content})
        for _ in range(rng.choice([0, 1, 2])):
            items.append({"role": "user", "content": rng.choice(USER_TEXTS)})
            items.extend(_history_turn(rng, tags, tracking))
        if rng.random() < 0.8 or not items:
            text = rng.choice(USER_TEXTS)
            items.append({"role": "user", "content": text if rng.random() < 0.5
                          else [{"type": "input_text", "text": text}]})
        elif config.get("continue_final_assistant_message") and tracking and items[-1].get("role") == "assistant":
            tags.add("continue_final_tokenize")
        request["input"] = items
    if rng.random() < 0.3:
        request["instructions"] = "You are helpful."
    if rng.random() < 0.3:
        request["tools"] = copy.deepcopy(TOOLS)
        request["tool_choice"] = rng.choice(["auto", "required", {"type": "function", "name": "get_weather"}])
        request["parallel_tool_calls"] = rng.choice([True, False])
    for key, values in (("temperature", [0.0, 0.7]), ("top_p", [0.9]), ("max_output_tokens", [64, 4096])):
        if rng.random() < 0.3:
            request[key] = rng.choice(values)
    _metadata_and_extensions(rng, request, audio=0.05, extension=0.1)
    if "chat_template_kwargs" in request:
        tags.add("request_extension")
    return request


def _metadata_and_extensions(rng: random.Random, request: dict[str, Any], audio: float, extension: float) -> None:
    """NeMo Gym's metadata side channels (JSON strings) and a top-level chat_template_kwargs."""
    metadata = {}
    if rng.random() < 0.2:
        metadata["chat_template_kwargs"] = json.dumps({"enable_thinking": rng.choice([True, False])})
    if rng.random() < 0.15:
        metadata["extra_body"] = json.dumps(rng.choice([{"top_logprobs": None}, {"min_p": 0.05},
                                                        {"temperature": 0.2}]))
    if rng.random() < audio:
        metadata["audio_data"] = "data:audio/wav;base64,UklGRg=="
    if metadata:
        request["metadata"] = metadata
    if rng.random() < extension:
        request["chat_template_kwargs"] = {"enable_thinking": False}


def _answer(rng: random.Random, config: dict[str, Any], request: dict[str, Any], tags: set[str]) -> dict[str, Any]:
    if rng.random() < 0.06:
        return {"error_status": 400, "error_body": json.dumps({
            "object": "error", "type": "BadRequestError", "param": None, "code": 400,
            "message": "This model's maximum context length is 4096 tokens. However, you requested 5000 tokens "
                       "in the messages, Please reduce the length of the messages."})}
    if rng.random() < 0.03:
        tags.add("max_tokens_400")
        return {"error_status": 400, "error_body": json.dumps({
            "object": "error", "type": "BadRequestError", "param": None, "code": 400,
            "message": "min_tokens must be less than or equal to max_tokens=64, got 100."})}
    content, answer_tags = rng.choice(ANSWERS)
    tags.update(answer_tags)
    message: dict[str, Any] = {"role": "assistant", "content": content, "tool_calls": []}
    if config.get("uses_reasoning_parser", True) and rng.random() < 0.35:
        message[rng.choice(["reasoning", "reasoning_content"])] = rng.choice(["I reason.", "\nsteps\n"])
        items = request.get("input")
        continued = config.get("continue_final_assistant_message") and isinstance(items, list) \
            and items[-1].get("role") == "assistant"
        if continued and content and "<think>" in content:
            # a continuation's reasoning field is text (Gym's join), so the <think> block comes after text
            tags.add("blocks_around_text")
    calls = []
    if request.get("tools") and rng.random() < 0.6:
        for i in range(rng.choice([1, 2])):
            calls.append({"id": f"chatcmpl-tool-{i}", "type": "function",
                          "function": {"name": "get_weather", "arguments": json.dumps({"city": ["Lima", "Rome"][i]})}})
    message["tool_calls"] = calls
    finish = rng.choice(["stop", "stop", "length"]) if not calls else "tool_calls"
    n_tokens = rng.randint(1, 6)
    completion: dict[str, Any] = {
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1700000000, "model": MODEL,
        "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None}],
        "usage": {"prompt_tokens": 11, "completion_tokens": n_tokens, "total_tokens": 11 + n_tokens},
    }
    if config.get("return_token_id_information"):
        ids = [rng.randint(0, 150000) for _ in range(n_tokens)]
        completion["choices"][0]["logprobs"] = {"content": [
            {"token": f"token_id:{t}", "logprob": -rng.random(), "bytes": None, "top_logprobs": []} for t in ids]}
        if rng.random() < 0.3:  # vLLM --enable-return-routed-experts (NeMo RL's router replay)
            message["routed_experts"] = [[[rng.randint(0, 63), rng.randint(0, 63)]] for _ in ids]
        if config.get("request_prompt_and_generation_token_ids"):
            completion["prompt_token_ids"] = list(range(100, 111))
            completion["choices"][0]["token_ids"] = ids
    return completion


# What the fake /tokenize answers for every case (11 prompt tokens).
TOKENIZE_ANSWER = {"tokens": list(range(100, 111)), "count": 11, "max_model_len": 4096}


def corpus() -> list[dict[str, Any]]:
    rng = random.Random(SEED)
    cases = []
    while len(cases) < CORPUS_SIZE:
        config = _config(rng)
        tags: set[str] = set()
        request = _request(rng, config, tags)
        answer = _answer(rng, config, request, tags)
        if "top_logprobs" in request:
            tags.add("top_logprobs_without_logprobs")
        cases.append({"config": config, "request": request, "answer": answer, "tags": sorted(tags),
                      "tokenize": dict(TOKENIZE_ANSWER)})
    return cases


CHAT_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city", "strict": True,
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def _chat_request(rng: random.Random, config: dict[str, Any], tags: set[str]) -> dict[str, Any]:
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.4:
        messages.append({"role": rng.choice(["system", "developer"]), "content": "Be brief."})
    for _ in range(rng.choice([0, 1, 2])):
        messages.append({"role": "user", "content": rng.choice(USER_TEXTS)})
        text = rng.choice(["Sure.", "<think>r</think>Done.", "<think>a</think>x<think>b</think>y", None, ""])
        if text and text.count("<think>") > 1 and config.get("uses_reasoning_parser", True):
            tags.add("several_blocks_in_a_turn")
        turn: dict[str, Any] = {"role": "assistant", "content": text}
        if rng.random() < 0.4:
            turn["tool_calls"] = [{"id": "call_1", "type": "function",
                                   "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]
            messages.append(turn)
            messages.append({"role": "tool", "tool_call_id": "call_1", "content": "3C"})
        else:
            messages.append(turn)
    if rng.random() < 0.85 or not messages:
        messages.append({"role": "user", "content": rng.choice(USER_TEXTS)})
    elif config.get("continue_final_assistant_message") and config.get("return_token_id_information") \
            and messages[-1]["role"] == "assistant":
        tags.add("continue_final_tokenize")
    request: dict[str, Any] = {"model": "client-model", "messages": messages}
    if rng.random() < 0.3:
        request["tools"] = copy.deepcopy(CHAT_TOOLS)
        request["tool_choice"] = rng.choice(["auto", "required"])
    for key, values in (("temperature", [0.0, 0.7]), ("top_p", [0.9]), ("max_tokens", [64])):
        if rng.random() < 0.3:
            request[key] = rng.choice(values)
    _metadata_and_extensions(rng, request, audio=0.0, extension=0.15)
    if rng.random() < 0.25:  # Gym re-emits the finished answer as chunks
        request["stream"] = True
        if rng.random() < 0.5:
            request["stream_options"] = {"include_usage": True}
    return request


def chat_corpus() -> list[dict[str, Any]]:
    rng = random.Random(SEED + 1)
    cases = []
    while len(cases) < CHAT_CORPUS_SIZE:
        config = _config(rng)
        tags: set[str] = set()
        request = _chat_request(rng, config, tags)
        answer = _answer(rng, config, request, tags)
        tags.discard("request_extension")  # Chat Completions has chat_template_kwargs (Gym's own field)
        cases.append({"config": config, "request": request, "answer": answer, "tags": sorted(tags),
                      "path": "/v1/chat/completions",
                      "tokenize": dict(TOKENIZE_ANSWER)})
    return cases


# --- 3. running both -------------------------------------------------------------------------------


def run_gym(python: Path, cases: list[dict[str, Any]], **env: str) -> list[dict[str, Any]]:
    lines = "".join(json.dumps({k: v for k, v in case.items() if k != "tags"}) + "\n" for case in cases)
    out = subprocess.run([str(python), str(gym.RUNNER)], input=lines, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "NEMO_GYM_REASONING_FIELD": "", **env})
    assert out.returncode == 0, out.stderr[-4000:]
    results = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(results) == len(cases), out.stderr[-4000:]
    return results


class ScriptedVLLM:
    """Answers /v1/chat/completions with the current case's answer, /tokenize with its tokenize."""

    def __init__(self) -> None:
        self.case: dict[str, Any] = {}
        self.chat: list[dict[str, Any]] = []
        self.tokenize: list[dict[str, Any]] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_post("/tokenize", self._tokenize)
        self.app.router.add_get("/health", self._health)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def _chat(self, request: web.Request) -> web.Response:
        self.chat.append(await request.json())
        answer = self.case["answer"]
        if "error_status" in answer:
            return web.Response(status=answer["error_status"], text=answer["error_body"],
                                content_type="application/json")
        return web.json_response(answer)

    async def _tokenize(self, request: web.Request) -> web.Response:
        body = await request.json()
        if body.get("messages") in (WITH_DEVELOPER, WITHOUT_DEVELOPER):
            # The gateway asks once whether the chat template renders developer messages (it folds
            # them into the system message where the template would drop them, a fix Gym lacks):
            # this template renders them, as the templates Gym's developer messages rely on do.
            return web.json_response({"tokens": list(range(10 * len(body["messages"]))), "count": 0})
        self.tokenize.append(body)
        return web.json_response(self.case["tokenize"])


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[ScriptedVLLM, str]]:
    fake = ScriptedVLLM()
    runner = web.AppRunner(fake.app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield fake, bound_url(runner) + "/v1"
    await runner.cleanup()


def _override_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


async def run_gateway(scripted: tuple[ScriptedVLLM, str], cases: list[dict[str, Any]],
                      *extra: str) -> list[dict[str, Any]]:
    fake, url = scripted
    runners: dict[str, Any] = {}
    results = []
    async with aiohttp.ClientSession() as session:
        try:
            for case in cases:
                key = json.dumps(case["config"], sort_keys=True)
                if key not in runners:
                    block = "policy_model.responses_api_models.vllm_model"
                    overrides = [f"+{block}.{k}={_override_value(v)}" for k, v in case["config"].items()]
                    config = load_config([ROOT / "config" / "vllm_model.yaml"], environ={},
                                         overrides=shortcut_overrides(url, MODEL, "") + overrides + list(extra))
                    runner = await start(config, port=0)
                    runners[key] = (runner, bound_url(runner))
                fake.case, fake.chat, fake.tokenize = case, [], []
                async with session.post(runners[key][1] + case.get("path", "/v1/responses"),
                                        json=case["request"]) as response:
                    text = await response.text()
                    try:
                        body = json.loads(text)
                    except ValueError:
                        body = text  # a stream
                    results.append({"status": response.status, "body": body, "chat": fake.chat,
                                    "tokenize": fake.tokenize})
        finally:
            for runner, _ in runners.values():
                await runner.cleanup()
    return results


# --- 4. comparing ----------------------------------------------------------------------------------

_VLLM_IGNORED = {"metadata", "store", "service_tier", "prompt_cache_key", "prompt_cache_retention",
                 "safety_identifier", "truncation", "top_logprobs", "stream", "background", "include"}


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def normal_chat_body(body: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in body.items() if k not in _VLLM_IGNORED}  # allowed: vllm_ignored_fields
    if "tools" not in body:
        body.pop("parallel_tool_calls", None)
    messages = []
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, list) and len(content) == 1 and content[0].get("type") == "text":
            message = {**message, "content": content[0]["text"]}  # allowed: text_part_as_string
        messages.append({k: v for k, v in message.items() if v is not None or k == "content"})
    body["messages"] = messages
    return body


_ECHOED_SAMPLING = ("temperature", "top_p", "top_logprobs", "max_output_tokens", "presence_penalty",
                    "frequency_penalty")


def normal_response(status: int, body: Any) -> Any:
    if status != 200:
        return {"status": status}
    output = []
    for item in body["output"]:
        item = _drop_nulls({k: v for k, v in item.items() if k != "id"})  # allowed: ids, nulls
        if item["type"] == "reasoning":
            item.pop("status", None)  # allowed: reasoning_status
        for part in item.get("content") or []:
            if part.get("logprobs") == []:
                del part["logprobs"]
        output.append(item)
    usage = body.get("usage") or {}
    details = (usage.get("input_tokens_details") or {}).get("cached_tokens") or 0, \
              (usage.get("output_tokens_details") or {}).get("reasoning_tokens") or 0
    incomplete = body.get("incomplete_details")
    return {
        "status": body["status"],
        "incomplete_reason": incomplete and incomplete.get("reason"),  # allowed: incomplete_details_message
        "model": body["model"],
        # the echo of the request's sampling (Gym's: as the request sent it, null when it did not)
        "sampling": {key: body.get(key) for key in _ECHOED_SAMPLING},
        "output": output,
        # allowed: usage_zeros
        "usage": (usage.get("input_tokens", 0), usage.get("output_tokens", 0), usage.get("total_tokens", 0), details),
    }


def normal_chat_answer(status: int, body: Any) -> Any:
    if status != 200:
        return {"status": status}
    if isinstance(body, str):  # a stream: its chunks, ids and times aside (allowed: ids)
        chunks = [line[len("data: "):] for line in body.split("\n") if line.startswith("data: ")]
        return [chunk if chunk == "[DONE]" else _drop_nulls({k: v for k, v in json.loads(chunk).items()
                                                             if k not in ("id", "created")}) for chunk in chunks]
    answer = _drop_nulls({k: v for k, v in body.items() if k not in ("id", "created")})  # allowed: ids, nulls
    for choice in answer.get("choices", []):
        if choice.get("message", {}).get("tool_calls") == []:
            del choice["message"]["tool_calls"]  # allowed: nulls ([] and null tool_calls)
    usage = answer.get("usage")
    if isinstance(usage, dict):
        answer["usage"] = {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens") if k in usage}
    return answer


def differences(case: dict[str, Any], gym_result: dict[str, Any], ours: dict[str, Any]) -> list[str]:
    excused = {GYM_BUGS[tag][0] for tag in case["tags"]}
    if "both" in excused:
        return []
    found = []
    if "request" not in excused:
        gym_bodies = [normal_chat_body(b) for b in gym_result["chat"]]
        our_bodies = [normal_chat_body(b) for b in ours["chat"]]
        if gym_bodies != our_bodies:
            found.append(f"chat body:\n  gym: {gym_bodies}\n  ours: {our_bodies}")
        # allowed: extra_tokenize (the gateway may ask when Gym did not; when Gym asks, it is the same)
        our_tokenize = [{k: v for k, v in b.items() if (k, v) != ("add_generation_prompt", True)}
                        for b in ours["tokenize"]]  # allowed: add_generation_prompt
        if gym_result["tokenize"] and [normal_chat_body(b) for b in gym_result["tokenize"]] != \
                [normal_chat_body(b) for b in our_tokenize]:
            found.append(f"tokenize:\n  gym: {gym_result['tokenize']}\n  ours: {ours['tokenize']}")
    if "response" not in excused:
        normal = normal_chat_answer if case.get("path") == "/v1/chat/completions" else normal_response
        theirs, mine = normal(gym_result["status"], gym_result["body"]), normal(ours["status"], ours["body"])
        if theirs != mine:
            found.append(f"response:\n  gym: {theirs}\n  ours: {mine}")
    return found


@pytest.mark.parametrize("route", ["responses", "chat_completions"])
async def test_differential_against_nemo_gym(gym_python: Path, scripted: tuple[ScriptedVLLM, str], route: str) -> None:
    cases = corpus() if route == "responses" else chat_corpus()
    gym_results = run_gym(gym_python, cases)
    ours = await run_gateway(scripted, cases)
    failures = []
    for i, (case, theirs, mine) in enumerate(zip(cases, gym_results, ours)):
        diffs = differences(case, theirs, mine)
        if diffs:
            failures.append(f"case {i} {json.dumps({k: case[k] for k in ('config', 'request', 'answer', 'tags')})}\n"
                            + "\n".join(diffs))
    tracked = sum(1 for case in cases if case["config"].get("return_token_id_information"))
    assert 0 < tracked < len(cases)  # both tracking modes are in the corpus
    assert not failures, f"{len(failures)} of {len(cases)} cases differ:\n\n" + "\n\n".join(failures[:8])


# --- 5. the Gym behaviours the differential cannot see (streams, sessions, files) -------------------

from tests.conftest import Gateway, GatewayFactory  # noqa: E402
from tests.fake_vllm import Generation, content, reasoning  # noqa: E402

NEMO_GYM = "gateway.response_conventions=nemo_gym"
BLOCK = "+policy_model.responses_api_models.vllm_model"


def _comparable(response: dict[str, Any]) -> dict[str, Any]:
    return {"status": response["status"], "output": [
        {k: v for k, v in item.items() if k != "id"} for item in response["output"]]}


@pytest.mark.parametrize("deltas", [
    reasoning("I reason.") + content("<think>more</think>\n\nstray</think> kept  "),
    content("<think>a</think><think>b</think>\n\ntext"),
    content("  \n"),
], ids=["field_then_tags", "two_blocks", "whitespace_only"])
async def test_nemo_gym_conventions_stream_the_same_response(make_gateway: GatewayFactory,
                                                              deltas: list[dict[str, Any]]) -> None:
    """Summary parts, kept tags and untrimmed text stream by the contract, and the streamed Response
    is the one the non-streaming request returns."""
    gateway = await make_gateway(NEMO_GYM)
    gateway.upstream.queue(Generation(deltas=deltas, finish_reason="length"),
                           Generation(deltas=deltas, finish_reason="length"))
    _, streamed = await gateway.stream({"input": "hi"})
    created = await gateway.create({"input": "hi"})
    assert _comparable(streamed) == _comparable(created)
    assert created["status"] == "incomplete"
    assert all(item["status"] == "completed" for item in created["output"])  # Gym's item status


async def test_two_summaries_for_a_reasoning_field_and_think_tags(gateway_nemo: Gateway) -> None:
    gateway_nemo.upstream.queue(Generation(deltas=reasoning("R") + content("<think>a</think>B")))
    response = await gateway_nemo.create({"input": "hi"})
    assert [part["text"] for part in response["output"][0]["summary"]] == ["R", "a"]
    assert response["output"][1]["content"][0]["text"] == "B"


async def test_openai_conventions_differ_where_gym_and_openai_disagree(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway("gateway.response_conventions=openai")
    gateway.upstream.queue(Generation(deltas=content("stray</think>  answer  "), finish_reason="length"),
                           Generation(deltas=[]))
    cut = await gateway.create({"input": "hi"})
    assert cut["output"][0]["status"] == "incomplete"
    assert cut["output"][0]["content"][0]["text"] == "stray  answer"  # tag dropped, block trimmed
    assert (await gateway.create({"input": "hi"}))["output"] == []


async def test_sampling_echo_follows_the_conventions(make_gateway: GatewayFactory) -> None:
    """nemo_gym: the Response echoes the request's own sampling values, null where it sent none,
    as Gym 0.7.0 does (the differential holds it against Gym's server), also where the config's
    extra_body or sampling_overrides changed what vLLM was sent; streamed and not. openai: what vLLM
    was sent, OpenAI's defaults where nothing was (numbers, as the Open Responses schema wants)."""
    config = (f"{BLOCK}.extra_body={{top_p: 0.6, max_tokens: 99}}", f"{BLOCK}.sampling_overrides={{temperature: 0.9}}")
    keys = ("temperature", "top_p", "presence_penalty", "frequency_penalty", "top_logprobs", "max_output_tokens")
    gym = await make_gateway(NEMO_GYM, *config)
    gym.upstream.queue(*[Generation(deltas=content("ok")) for _ in range(3)])
    unsent = await gym.create({"input": "hi"})
    assert {key: unsent[key] for key in keys} == dict.fromkeys(keys)
    assert gym.upstream.last_body["temperature"] == 0.9 and gym.upstream.last_body["top_p"] == 0.6
    events, streamed = await gym.stream({"input": "hi", "temperature": 0.3, "top_logprobs": 2, "max_output_tokens": 50})
    assert [streamed[key] for key in keys] == [0.3, None, None, None, 2, 50]
    assert events[0]["response"]["temperature"] == 0.3 and events[0]["response"]["top_p"] is None

    openai = await make_gateway("gateway.response_conventions=openai", *config)
    openai.upstream.queue(Generation(deltas=content("ok")), Generation(deltas=content("ok")))
    assert [(await openai.create({"input": "hi"}))[key] for key in keys] == [0.9, 0.6, 0.0, 0.0, 0, 99]
    assert [(await openai.create({"input": "hi", "temperature": 0.3}))[key] for key in keys][:2] == [0.9, 0.6]


@pytest.fixture
async def gateway_nemo(make_gateway: GatewayFactory) -> Gateway:
    return await make_gateway(NEMO_GYM)


async def test_nothing_generated_gives_one_empty_message(gateway_nemo: Gateway) -> None:
    gateway_nemo.upstream.queue(Generation(deltas=[]))
    response = await gateway_nemo.create({"input": "hi"})
    assert [item["type"] for item in response["output"]] == ["message"]
    assert response["output"][0]["content"][0]["text"] == ""


async def test_session_forwarded_as_conversation_id(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(NEMO_GYM, f"{BLOCK}.forward_session_id_as_conversation_id=true")
    gateway.upstream.queue(Generation(deltas=content("ok")))
    async with gateway.session.post(gateway.url + "/v1/responses", json={"input": "hi"},
                                    headers={"X-Session-Id": "rollout-7"}) as response:
        assert response.status == 200
    assert gateway.upstream.last_body["conversation_params"] == {"conversation_id": "rollout-7"}


async def test_sequential_reasoning_not_allowed_answers_without_vllm(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(NEMO_GYM, f"{BLOCK}.sequential_reasoning_allowed=false")
    items = [{"role": "user", "content": "hi"}, {"type": "reasoning", "summary": [{"type": "summary_text", "text": "t"}]}]
    events, final = await gateway.stream({"input": items})
    assert not gateway.upstream.requests
    assert final["status"] == "incomplete" and final["incomplete_details"]["reason"] == "content_filter"


async def test_audio_path_under_audio_root(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    (tmp_path / "clip.wav").write_bytes(b"RIFF")
    gateway = await make_gateway(NEMO_GYM, f"{BLOCK}.audio_root={tmp_path}")
    gateway.upstream.queue(Generation(deltas=content("ok")))
    await gateway.create({"input": "what is said?", "metadata": {"audio_path": "clip.wav"}})
    assert gateway.upstream.last_body["messages"][-1]["content"] == [
        {"type": "audio_url", "audio_url": {"url": "data:audio/wav;base64,UklGRg=="}},
        {"type": "text", "text": "what is said?"}]
    response = await gateway.post({"input": "x", "metadata": {"audio_path": "missing.wav"}})
    assert response.status == 400 and "cannot be read" in (await response.json())["error"]["message"]


async def test_context_overflow_passed_on_when_gym_says_so(make_gateway: GatewayFactory) -> None:
    gateway = await make_gateway(NEMO_GYM, f"{BLOCK}.propagate_context_overflow_errors=true")
    gateway.upstream.queue(Generation(status=400, error_message="This model's maximum context length is 10 tokens."))
    response = await gateway.post({"input": "hi"})
    assert response.status == 400
    assert "maximum context length" in (await response.json())["error"]["message"]


async def test_a_continued_assistant_message_is_one_text(make_gateway: GatewayFactory) -> None:
    """continue_final_assistant_message: vLLM's parser splits the continuation into reasoning and
    content; NeMo Gym joins them back into the text being continued, and so does the gateway."""
    gateway = await make_gateway(NEMO_GYM, f"{BLOCK}.continue_final_assistant_message=true")
    gateway.upstream.queue(Generation(deltas=reasoning("so the answer") + content(" is 4.")))
    history = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "Let me see,"}]
    events, final = await gateway.stream({"input": history})
    body = gateway.upstream.last_body
    assert (body["continue_final_message"], body["add_generation_prompt"]) == (True, False)
    assert [item["type"] for item in final["output"]] == ["message"]
    assert final["output"][0]["content"][0]["text"] == "so the answer is 4."


async def test_transport_log_in_gyms_format(gym_python: Path, scripted: tuple[ScriptedVLLM, str],
                                            tmp_path: Path) -> None:
    """gateway.transport_log_format: nemo_gym writes the lines Gym 0.7.0 writes for the same calls:
    the same events, the same keys, the same payloads (as the differential compares them)."""
    cases = [case for case in corpus() if not case["tags"]][:40]
    assert any("error_status" in case["answer"] for case in cases)
    gym_log, our_log = tmp_path / "gym.jsonl", tmp_path / "ours.jsonl"
    run_gym(gym_python, cases, NEMO_GYM_VLLM_TRANSPORT_LOG=str(gym_log))
    await run_gateway(scripted, cases, f"gateway.transport_log={our_log}", "gateway.transport_log_format=nemo_gym")
    theirs = [json.loads(line) for line in gym_log.read_text().splitlines()]
    ours = [json.loads(line) for line in our_log.read_text().splitlines()]
    assert [e["event"] for e in ours] == [e["event"] for e in theirs]
    for mine, gyms in zip(ours, theirs):
        assert set(mine) == set(gyms), (mine["event"], set(mine) ^ set(gyms))
        assert mine["schema_version"] == 2
        if mine["event"] == "transport_request":
            assert normal_chat_body(mine["request_payload"]) == normal_chat_body(gyms["request_payload"])
            assert mine["embedded_images"] == gyms["embedded_images"]
        elif mine["event"] == "transport_response":
            assert mine["raw_response"] == gyms["raw_response"]
        else:
            assert (mine["http_status"], mine["raw_response_body"]) == (gyms["http_status"], gyms["raw_response_body"])
