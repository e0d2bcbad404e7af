"""Tests for gateway.config: NeMo Gym-style YAML + env.yaml + overrides."""

import logging
import textwrap
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.config import (
    NEMO_GYM_IGNORED_KEYS,
    ConfigError,
    GatewaySettings,
    ModelServerConfig,
    load_config,
    redacted,
    shortcut_overrides,
)

REPO = Path(__file__).resolve().parents[1]
VLLM_MODEL = REPO / "config" / "vllm_model.yaml"
VLLM_MODEL_TRAINING = REPO / "config" / "vllm_model_for_training.yaml"
ENV_EXAMPLE = REPO / "config" / "env.yaml.example"

LONG = "policy_model.responses_api_models.vllm_model"
SHORT = "policy_model.vllm_model"
SECRET = "sk-Th1s=Is:A#Secret/Key+x"


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


@pytest.fixture
def env_file(tmp_path: Path) -> Path:
    # Quoted, as a key full of YAML punctuation must be in a real env.yaml.
    return write(
        tmp_path / "env.yaml",
        f"""\
        policy_base_url: http://gpu-node:8000/v1/
        policy_api_key: "{SECRET}"
        policy_model_name: Qwen/Qwen3-8B
        """,
    )


def load(*paths, env=None, overrides=(), environ=None, **kw):
    return load_config(
        list(paths) or [VLLM_MODEL],
        env_file=env,
        overrides=overrides,
        environ={} if environ is None else environ,
        **kw,
    )


def error_of(*paths, **kw) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load(*paths, **kw)
    return info.value


# --------------------------------------------------------------------------
# Shipped configs
# --------------------------------------------------------------------------


def test_vllm_model_yaml_loads_with_env_file(env_file):
    config = load(VLLM_MODEL, env=env_file)
    server = config.model_server
    assert config.server_name == "policy_model"
    assert server.base_url == ["http://gpu-node:8000/v1"]  # list, trailing "/" stripped
    assert server.api_key == SECRET
    assert server.model == "Qwen/Qwen3-8B"
    assert server.return_token_id_information is False
    assert server.uses_reasoning_parser is True
    assert server.entrypoint == "app.py"
    assert config.gateway == GatewaySettings()


def test_vllm_model_for_training_yaml_requests_token_ids(env_file):
    server = load(VLLM_MODEL_TRAINING, env=env_file).model_server
    assert server.return_token_id_information is True
    assert server.request_prompt_and_generation_token_ids is False
    assert server.model == "Qwen/Qwen3-8B"


def test_shipped_seed_config_matches_nemo_gym_form():
    import yaml

    data = yaml.safe_load(VLLM_MODEL.read_text())
    assert data == {
        "policy_model": {
            "responses_api_models": {
                "vllm_model": {
                    "entrypoint": "app.py",
                    "base_url": "${policy_base_url}",
                    "api_key": "${policy_api_key}",
                    "model": "${policy_model_name}",
                    "return_token_id_information": False,
                    "uses_reasoning_parser": True,
                    # NeMo Gym 0.7.0's additions (test_nemo_gym.py compares with the wheel's file)
                    "uses_interleaved_reasoning": True,
                    "chat_template_kwargs": None,
                    "sampling_overrides": None,
                    "extra_body": None,
                    "default_headers": {},
                    "endpoint_file": None,
                    "endpoint_stale_grace_s": 300.0,
                    "endpoint_connection_retries": 8,
                    "endpoint_check_interval_s": 10.0,
                }
            }
        }
    }


def test_env_yaml_example_works_as_env_file():
    server = load(VLLM_MODEL, env=ENV_EXAMPLE).model_server
    assert server.base_url == ["http://localhost:8000/v1"]
    assert server.api_key == "EMPTY"
    assert server.model == "Qwen/Qwen3-8B"


def test_variables_fall_back_to_environment_exact_then_upper_case():
    environ = {
        "POLICY_BASE_URL": "http://from-env:8000/v1",
        "policy_api_key": "exact-name",
        "POLICY_API_KEY": "upper-name",
        "POLICY_MODEL_NAME": "m",
    }
    server = load(VLLM_MODEL, environ=environ).model_server
    assert server.base_url == ["http://from-env:8000/v1"]
    assert server.api_key == "exact-name"
    assert server.model == "m"


def test_env_file_wins_over_environment_and_config_files(tmp_path, env_file):
    config = write(tmp_path / "c.yaml", "policy_base_url: http://from-config:1/v1\n")
    server = load(VLLM_MODEL, config, env=env_file, environ={"POLICY_BASE_URL": "http://env:2/v1"}).model_server
    assert server.base_url == ["http://gpu-node:8000/v1"]


def test_current_nemo_gym_config_loads_unchanged(tmp_path, env_file):
    # NeMo Gym's later vllm_model.yaml adds keys; all must be accepted.
    config = write(
        tmp_path / "gym.yaml",
        """\
        policy_model:
          responses_api_models:
            vllm_model:
              entrypoint: app.py
              num_workers: 8
              base_url: ${policy_base_url}
              api_key: ${policy_api_key}
              model: ${policy_model_name}
              return_token_id_information: false
              uses_reasoning_parser: true
              uses_interleaved_reasoning: true
              chat_template_kwargs: null
              sampling_overrides: null
              extra_body: null
              default_headers: {}
        """,
    )
    server = load(config, env=env_file).model_server
    assert server.num_workers == 8
    assert server.default_headers == {}
    assert server.chat_template_kwargs is None


def test_model_server_config_direct_construction_normalises_base_url():
    server = ModelServerConfig(base_url="https://host/v1/", model="m")
    assert server.base_url == ["https://host/v1"]
    with pytest.raises(ValueError, match="base_url"):
        ModelServerConfig(base_url="ftp://host", model="m")


# --------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------


def test_short_form_override_wins_over_long_form(env_file):
    config = load(VLLM_MODEL, env=env_file, overrides=["+policy_model.vllm_model.base_url=http://gpu:10240/v1"])
    assert config.model_server.base_url == ["http://gpu:10240/v1"]
    # The rest of the long form still applies.
    assert config.model_server.api_key == SECRET


def test_long_form_override_without_plus(env_file):
    config = load(VLLM_MODEL, env=env_file, overrides=[f"{LONG}.return_token_id_information=true"])
    assert config.model_server.return_token_id_information is True


def test_double_plus_override_and_top_level_variable(env_file):
    config = load(VLLM_MODEL, env=env_file, overrides=["++policy_model_name=other/model"])
    assert config.model_server.model == "other/model"


def test_short_form_deep_merges_mappings(tmp_path, env_file):
    config = write(
        tmp_path / "c.yaml",
        """\
        policy_model:
          responses_api_models:
            vllm_model:
              chat_template_kwargs: {enable_thinking: true, keep: 1}
        """,
    )
    server = load(
        VLLM_MODEL,
        config,
        env=env_file,
        overrides=["+policy_model.vllm_model.chat_template_kwargs.enable_thinking=false"],
    ).model_server
    assert server.chat_template_kwargs == {"enable_thinking": False, "keep": 1}


def test_short_form_alone_is_enough(tmp_path):
    config = write(
        tmp_path / "c.yaml",
        """\
        policy_model:
          vllm_model:
            base_url: http://h:1/v1
            model: m
        """,
    )
    server = load(config).model_server
    assert server.base_url == ["http://h:1/v1"]


def test_overrides_alone_without_config_files():
    overrides = ["+policy_model.vllm_model.base_url=http://h:1/v1", "+policy_model.vllm_model.model=m"]
    config = load_config([], overrides=overrides, environ={})
    assert config.model_server.model == "m"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("true", True),
        ("False", False),
        ("null", None),
        ("42", 42),
        ("-1.5", -1.5),
        ("[a,b]", ["a", "b"]),
        ("[1, true]", [1, True]),
        ("{a: 1}", {"a": 1}),
        ("http://x:1/v1", "http://x:1/v1"),
        ("yes", "yes"),  # not YAML 1.1's boolean
        ("2024-01-01", "2024-01-01"),  # not a date
        ("a: b #c", "a: b #c"),  # not a mapping, no comment stripping
        ("007", "007"),
        ("x=y=z", "x=y=z"),  # only the first "=" separates key and value
        ("", ""),
        ("'quoted true'", "quoted true"),
        ("'it''s'", "it's"),
        ('"tab\\there"', "tab\there"),
    ],
)
def test_override_value_parsing(env_file, raw, expected):
    config = load(VLLM_MODEL, env=env_file, overrides=[f"+{SHORT}.extra_body.v={raw}"])
    value = config.model_server.extra_body["v"]
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("override", ["no_equals_sign", "=value", "a..b=1", "~", "+", ".a=1", "a b=1", "x=[unclosed"])
def test_malformed_override_is_quoted_in_error(env_file, override):
    error = error_of(VLLM_MODEL, env=env_file, overrides=[override])
    assert repr(override) in str(error)


def test_override_through_a_scalar_is_an_error(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=["policy_model_name.x=1"])
    assert "policy_model_name is a str, not a mapping" in str(error)


def test_tilde_deletes_key_falling_back_to_default(env_file):
    config = load(VLLM_MODEL_TRAINING, env=env_file, overrides=[f"~{LONG}.return_token_id_information"])
    assert config.model_server.return_token_id_information is False
    # The short form finds the key in the long form too.
    config = load(VLLM_MODEL_TRAINING, env=env_file, overrides=[f"~{SHORT}.return_token_id_information"])
    assert config.model_server.return_token_id_information is False


def test_tilde_with_value_must_match(env_file):
    config = load(VLLM_MODEL_TRAINING, env=env_file, overrides=[f"~{LONG}.return_token_id_information=true"])
    assert config.model_server.return_token_id_information is False
    error = error_of(VLLM_MODEL_TRAINING, env=env_file, overrides=[f"~{LONG}.return_token_id_information=false"])
    assert "does not have that value" in str(error)


def test_tilde_of_missing_key_is_an_error(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=[f"~{LONG}.no_such_key"])
    assert f"{LONG}.no_such_key" in str(error)


def test_deleting_required_key_names_it(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=[f"~{LONG}.model"])
    assert str(error) == f"{LONG}.model: required key is missing"
    assert error.key == f"{LONG}.model"


def test_later_override_wins(env_file):
    config = load(VLLM_MODEL, env=env_file, overrides=["policy_model_name=a", "policy_model_name=b"])
    assert config.model_server.model == "b"


# --------------------------------------------------------------------------
# Merging files
# --------------------------------------------------------------------------


def test_later_config_file_wins_and_mappings_deep_merge(tmp_path, env_file):
    first = write(
        tmp_path / "a.yaml",
        """\
        policy_model:
          responses_api_models:
            vllm_model:
              model: first
              extra_body: {a: 1, b: 2}
        gateway: {port: 9001, host: 0.0.0.0}
        """,
    )
    second = write(
        tmp_path / "b.yaml",
        """\
        policy_model:
          responses_api_models:
            vllm_model:
              model: second
              extra_body: {b: 3}
        gateway: {port: 9002}
        """,
    )
    config = load(VLLM_MODEL, first, second, env=env_file)
    assert config.model_server.model == "second"
    assert config.model_server.extra_body == {"a": 1, "b": 3}
    assert config.model_server.base_url == ["http://gpu-node:8000/v1"]  # from the first file
    assert (config.gateway.host, config.gateway.port) == ("0.0.0.0", 9002)


def test_lists_are_replaced_not_merged(tmp_path, env_file):
    a = write(tmp_path / "a.yaml", "policy_base_url: [http://a:1/v1, http://b:1/v1]\n")
    b = write(tmp_path / "b.yaml", "policy_base_url: [http://c:1/v1]\n")
    config = load(VLLM_MODEL, a, b, overrides=["policy_model_name=m", "policy_api_key=k"])
    assert config.model_server.base_url == ["http://c:1/v1"]


def test_missing_file_is_named(tmp_path):
    error = error_of(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(error) and "does not exist" in str(error)


def test_invalid_yaml_names_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.yaml", f"policy_api_key: {SECRET}\nfoo: [unclosed\nbar: 1\n")
    error = error_of(bad)
    assert f"{bad}:3:4: not valid YAML" in str(error)
    assert SECRET not in str(error)


def test_top_level_must_be_a_mapping(tmp_path):
    bad = write(tmp_path / "list.yaml", "- a\n- b\n")
    error = error_of(bad)
    assert "list.yaml" in str(error) and "mapping" in str(error)


def test_missing_env_file_is_named(tmp_path):
    error = error_of(VLLM_MODEL, env=tmp_path / "env.yaml")
    assert "env file" in str(error) and "env.yaml" in str(error)


# --------------------------------------------------------------------------
# Interpolation
# --------------------------------------------------------------------------


def test_missing_variable_names_key_variable_and_hint():
    error = error_of(VLLM_MODEL, overrides=["policy_api_key=x", "policy_model_name=m"])
    message = str(error)
    assert message.startswith(f"{LONG}.base_url refers to ${{policy_base_url}}, which is not set")
    assert "env.yaml" in message and "policy_base_url=..." in message and "--base-url" in message
    assert error.key == f"{LONG}.base_url"


def test_missing_nested_variable_names_both_keys(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=["policy_base_url=http://${host_name}:8000/v1"])
    assert "policy_base_url refers to ${host_name}, which is not set" in str(error)
    assert f"needed by {LONG}.base_url" in str(error)


def test_mandatory_missing_marker_is_reported(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=["policy_model_name=???"])
    assert "${policy_model_name}" in str(error) and "???" in str(error)


def test_reference_cycle_is_detected(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=["policy_base_url=${a.b}", "a.b=${policy_base_url}"])
    assert "cycle" in str(error)
    assert "policy_base_url -> a.b -> policy_base_url" in str(error)


def test_self_reference_is_a_cycle(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=[f"{LONG}.model=${{{LONG}.model}}"])
    assert "cycle" in str(error)


def test_whole_value_interpolation_keeps_type(tmp_path, env_file):
    config = write(
        tmp_path / "c.yaml",
        """\
        urls: [http://a:1/v1, http://b:2/v1]
        settings: {port: 9100, flag: true, kwargs: {enable_thinking: false}}
        policy_model:
          responses_api_models:
            vllm_model:
              base_url: ${urls}
              return_token_id_information: ${settings.flag}
              chat_template_kwargs: ${settings.kwargs}
        gateway:
          port: ${settings.port}
          host: "${settings.flag}-${settings.port}"
        """,
    )
    result = load(VLLM_MODEL, config, env=env_file)
    assert result.model_server.base_url == ["http://a:1/v1", "http://b:2/v1"]
    assert result.model_server.return_token_id_information is True
    assert result.model_server.chat_template_kwargs == {"enable_thinking": False}
    assert result.gateway.port == 9100
    assert result.gateway.host == "True-9100"  # embedded references render as text


def test_embedding_a_list_in_a_string_is_an_error(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=["urls=[a,b]", "policy_model_name=x-${urls}"])
    assert "policy_model_name" in str(error) and "list" in str(error)


def test_list_item_reference(env_file):
    overrides = ["urls=[http://a:1/v1,http://b:2/v1]", "policy_base_url=${urls.1}"]
    config = load(VLLM_MODEL, env=env_file, overrides=overrides)
    assert config.model_server.base_url == ["http://b:2/v1"]


def test_oc_env_resolver(env_file):
    config = load(
        VLLM_MODEL,
        env=env_file,
        overrides=[f"{SHORT}.api_key=${{oc.env:MY_KEY}}", f"{SHORT}.model=${{oc.env:MY_MODEL,fallback/model}}"],
        environ={"MY_KEY": "from-env"},
    )
    assert config.model_server.api_key == "from-env"
    assert config.model_server.model == "fallback/model"


def test_oc_env_missing_variable(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=[f"{SHORT}.model=${{oc.env:MY_MODEL}}"])
    assert f"{SHORT}.model refers to ${{oc.env:MY_MODEL}}" in str(error) and "MY_MODEL is not set" in str(error)


def test_escaped_interpolation_is_literal(env_file):
    config = load(VLLM_MODEL, env=env_file, overrides=[f"+{SHORT}.extra_body.t=\\${{not_a_ref}}"])
    assert config.model_server.extra_body == {"t": "${not_a_ref}"}


def test_unresolvable_reference_in_unrelated_key_is_not_an_error(tmp_path, env_file):
    other = write(tmp_path / "o.yaml", "judge_model: {url: '${never_set}'}\n")
    assert load(VLLM_MODEL, other, env=env_file).model_server.model == "Qwen/Qwen3-8B"


def test_mandatory_marker_in_a_later_file_does_not_replace_a_value(tmp_path, env_file):
    # OmegaConf's merge: ??? means "to be filled in", not "unset what is there".
    later = write(tmp_path / "later.yaml", "policy_model:\n  responses_api_models:\n    vllm_model:\n      model: ???\n")
    assert load(VLLM_MODEL, later, env=env_file).model_server.model == "Qwen/Qwen3-8B"


def test_config_paths_merge_as_nemo_gym_merges_them(tmp_path, env_file):
    # Gym's rule: a file merges over the files it pulls in; an entry is read once, pulled in by
    # the first file (breadth first) that names it: here main names b and c, and b names c too,
    # so c is main's (merged after b), not b's.
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "b.yaml", "config_paths: [sub/c.yaml]\nwho: b\nonly_b: 1\n")
    write(tmp_path / "sub" / "c.yaml", "who: c\nonly_c: 1\n")
    main = write(tmp_path / "main.yaml", f"""\
        config_paths: [{VLLM_MODEL}, sub/b.yaml, sub/c.yaml]
        policy_model:
          responses_api_models:
            vllm_model:
              extra_body: {{who: "${{who}}", b: "${{only_b}}", c: "${{only_c}}"}}
        """)
    # found in the folder above the including file (where Gym looks in its install root)
    config = load(main, env=env_file)
    assert config.model_server.extra_body == {"who": "c", "b": 1, "c": 1}
    assert config.model_server.model == "Qwen/Qwen3-8B"  # from vllm_model.yaml, an absolute entry


def test_config_paths_search_extra_roots_first(tmp_path, env_file):
    for root, who in (("extra", "extra"), ("beside", "beside")):
        (tmp_path / root / "inc").mkdir(parents=True)
        write(tmp_path / root / "inc" / "x.yaml", f"policy_model: {{vllm_model: {{extra_body: {{who: {who}}}}}}}\n")
    main = write(tmp_path / "beside" / "main.yaml", f"config_paths: [{VLLM_MODEL}, inc/x.yaml]\n")
    assert load(main, env=env_file).model_server.extra_body == {"who": "beside"}
    environ = {"NEMO_GYM_EXTRA_ROOTS": str(tmp_path / "extra")}
    assert load(main, env=env_file, environ=environ).model_server.extra_body == {"who": "extra"}


def test_config_paths_must_be_a_list_of_paths(tmp_path):
    main = write(tmp_path / "main.yaml", "config_paths: {a: 1}\n")
    assert "config_paths must be a list of paths" in str(error_of(main))


def test_gym_directives_copy_inherit_and_delete(tmp_path):
    config = write(tmp_path / "c.yaml", """\
        judge:
          responses_api_models:
            vllm_model: {base_url: "http://judge:1/v1", model: judge, extra_body: {a: 1, b: 2}}
        policy_model:
          _inherit_from: judge
          responses_api_models:
            vllm_model: {model: policy, extra_body: {_delete_key: a, c: 3}}
        copy_of_judge: ${copy:judge}
        """)
    result = load(config)
    # the judge block moved here, its own keys merged over it; `a` was deleted before the merge,
    # where the block had no `a` yet, so the judge's `a` stays (Gym's order)
    assert result.model_server.model == "policy" and str(result.model_server.base_url) == "['http://judge:1/v1']"
    assert result.model_server.extra_body == {"a": 1, "b": 2, "c": 3}
    assert "no model server block found" in str(error_of(config, server_name="judge"))
    # a copy reads the tree as it was before the pass: the judge, though it has moved since
    assert load(config, server_name="copy_of_judge").model_server.model == "judge"


# --------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------


def test_type_error_names_full_long_path(tmp_path, env_file):
    config = write(
        tmp_path / "c.yaml",
        """\
        policy_model:
          responses_api_models:
            vllm_model:
              uses_reasoning_parser: "yes"
        """,
    )
    error = error_of(VLLM_MODEL, config, env=env_file)
    assert str(error) == f"{LONG}.uses_reasoning_parser: expected bool, got str"


def test_type_error_names_short_path_when_set_there(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=[f"+{SHORT}.chat_template_kwargs=[1]"])
    assert str(error).startswith(f"{SHORT}.chat_template_kwargs: expected object")


def test_type_error_in_list_item(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=["policy_base_url=[http://a:1/v1, 5]"])
    assert str(error) == f"{LONG}.base_url[1]: expected str, got int"


def test_unknown_key_is_named_with_suggestion(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=[f"+{SHORT}.return_token_ids_information=true"])
    message = str(error)
    assert message.startswith(f"{SHORT}.return_token_ids_information: unknown key")
    assert "did you mean 'return_token_id_information'?" in message
    assert "uses_reasoning_parser" in message  # known keys are listed


def test_unknown_gateway_key_is_named_with_suggestion(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=["gateway.prot=9000"])
    assert str(error).startswith("gateway.prot: unknown key (did you mean 'port'?)")


def test_missing_required_keys_are_named(tmp_path):
    config = write(tmp_path / "c.yaml", "policy_model:\n  vllm_model:\n    model: m\n")
    assert str(error_of(config)) == f"{SHORT}.base_url: required key is missing"
    config = write(tmp_path / "c.yaml", "policy_model:\n  vllm_model:\n    base_url: http://h/v1\n")
    assert str(error_of(config)) == f"{SHORT}.model: required key is missing"


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("localhost:8000/v1", "missing http://"),
        ("ftp://host/v1", "not an http(s) URL"),
        ("http://host:99999/v1", "invalid port"),
        ("http:///v1", "not an http(s) URL"),
        ("[]", "non-empty list"),
        ("5", "expected a URL"),
        ("http://a:8000/v1,http://b:8000/v1", "several URLs"),
    ],
)
def test_bad_base_url(env_file, value, fragment):
    error = error_of(VLLM_MODEL, env=env_file, overrides=[f"policy_base_url={value}"])
    assert str(error).startswith(f"{LONG}.base_url")
    assert fragment in str(error)


def test_bad_base_url_list_item_is_indexed(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=["policy_base_url=[http://ok:1/v1, nope]"])
    assert str(error).startswith(f"{LONG}.base_url[1]:")


def test_base_url_string_and_list(env_file):
    single = load(VLLM_MODEL, env=env_file, overrides=["policy_base_url=https://h.example/v1//"])
    assert single.model_server.base_url == ["https://h.example/v1"]
    several = load(VLLM_MODEL, env=env_file, overrides=["policy_base_url=[http://a:8000/v1/, http://b:8000/v1]"])
    assert several.model_server.base_url == ["http://a:8000/v1", "http://b:8000/v1"]


def test_several_model_servers_must_be_disambiguated(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=["+policy_model.responses_api_models.other.model=x"])
    assert "policy_model.responses_api_models" in str(error)
    assert "vllm_model" in str(error) and "other" in str(error)


def test_short_name_differing_from_long_name_is_an_error(env_file):
    error = error_of(VLLM_MODEL, env=env_file, overrides=["+policy_model.openai_model.model=x"])
    assert str(error).startswith("policy_model.openai_model: unexpected key")


def test_no_model_block_lists_where_it_looked(tmp_path, env_file):
    error = error_of(VLLM_MODEL, env=env_file, server_name="judge_model")
    message = str(error)
    assert "judge_model.responses_api_models.<name>" in message and "judge_model.<name>" in message
    assert "policy_model" in message  # points at the block that does exist


def test_other_server_name_selects_other_block(tmp_path, env_file):
    config = write(
        tmp_path / "c.yaml",
        """\
        judge_model:
          responses_api_models:
            vllm_model: {base_url: "http://judge:1/v1", model: judge}
        """,
    )
    result = load(VLLM_MODEL, config, env=env_file, server_name="judge_model")
    assert result.server_name == "judge_model"
    assert result.model_server.model == "judge"


def test_blank_api_key_is_empty(env_file):
    assert load(VLLM_MODEL, env=env_file, overrides=["policy_api_key=null"]).model_server.api_key == ""
    assert load(VLLM_MODEL, env=env_file, overrides=["policy_api_key="]).model_server.api_key == ""


def test_ignored_keys_warn_only_when_not_default(caplog, env_file):
    assert {"entrypoint", "name", "host", "port", "num_workers", "domain"} <= NEMO_GYM_IGNORED_KEYS
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        load(VLLM_MODEL, env=env_file)  # entrypoint: app.py is NeMo Gym's normal value
    assert caplog.records == []
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        load(VLLM_MODEL, env=env_file, overrides=[f"+{SHORT}.num_workers=4", f"+{SHORT}.port=1234"])
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"{SHORT}.port" in m and "gateway.port" in m for m in messages)


@pytest.mark.parametrize("override", ["is_responses_native=true", "use_completions_api=true",
                                      "render_chat_template=true", "tokenizer=Qwen/Qwen3-8B",
                                      "endpoint_file=/tmp/endpoint"])
def test_nemo_gym_features_the_gateway_lacks_are_refused(env_file, override):
    message = str(error_of(VLLM_MODEL, env=env_file, overrides=[f"+{SHORT}.{override}"]))
    key = override.split("=")[0]
    assert message.startswith(f"{SHORT}.{key}: not supported by the gateway: ")


def test_supply_prefix_token_ids_follows_gyms_rule_and_warns(caplog, env_file):
    message = str(error_of(VLLM_MODEL, env=env_file, overrides=[f"+{SHORT}.supply_prefix_token_ids=true"]))
    assert "requires return_token_id_information: true" in message
    with caplog.at_level(logging.WARNING, logger="gateway.config"):
        load(VLLM_MODEL, env=env_file, overrides=[f"+{SHORT}.supply_prefix_token_ids=true",
                                                   f"+{SHORT}.return_token_id_information=true"])
    assert any("supply_prefix_token_ids: true has no effect through the gateway" in r.getMessage()
               for r in caplog.records)


def test_reasoning_field_defaults_as_in_nemo_gym(env_file):
    assert load(VLLM_MODEL, env=env_file).model_server.reasoning_field == "both"
    environ = {"NEMO_GYM_REASONING_FIELD": "reasoning"}
    assert load(VLLM_MODEL, env=env_file, environ=environ).model_server.reasoning_field == "reasoning"
    explicit = load(VLLM_MODEL, env=env_file, environ=environ, overrides=[f"+{SHORT}.reasoning_field=reasoning_content"])
    assert explicit.model_server.reasoning_field == "reasoning_content"


# --------------------------------------------------------------------------
# The gateway section
# --------------------------------------------------------------------------


def test_gateway_defaults():
    settings_ = GatewaySettings()
    assert settings_.port not in (8000, 10240)
    # reasoning_history unset: NeMo Gym's keys decide (see test_nemo_gym.py).
    assert (settings_.reasoning_presentation, settings_.reasoning_history) == ("summary", None)


def test_gateway_section_values(env_file):
    config = load(
        VLLM_MODEL,
        env=env_file,
        overrides=[
            "gateway.port=9000",
            "gateway.reasoning_presentation=raw",
            "gateway.reasoning_history=field",
            "gateway.reasoning_field=reasoning",
            "gateway.connect_timeout_s=2",
            "gateway.log_level=debug",
        ],
    )
    gateway = config.gateway
    assert gateway.port == 9000
    assert (gateway.reasoning_presentation, gateway.reasoning_history, gateway.reasoning_field) == (
        "raw",
        "field",
        "reasoning",
    )
    assert gateway.connect_timeout_s == 2.0 and isinstance(gateway.connect_timeout_s, float)
    assert gateway.log_level == "DEBUG"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("gateway.port=0", "gateway.port: must be between 1 and 65535, got 0"),
        ("gateway.port=65536", "gateway.port: must be between 1 and 65535, got 65536"),
        ("gateway.port='9000'", "gateway.port: expected int, got str"),
        ("gateway.connect_timeout_s=0", "gateway.connect_timeout_s: must be a finite number of seconds > 0, got 0.0"),
        ("gateway.request_timeout_s=-1", "gateway.request_timeout_s: must be a finite number of seconds > 0, got -1.0"),
        ("gateway.max_request_bytes=0", "gateway.max_request_bytes: must be > 0, got 0"),
        ("gateway.reasoning_starts_open=1", "gateway.reasoning_starts_open: expected bool, got int"),
    ],
)
def test_gateway_section_rejects_bad_values(env_file, override, message):
    assert str(error_of(VLLM_MODEL, env=env_file, overrides=[override])) == message


def test_gateway_section_rejects_bad_literal(env_file):
    message = str(error_of(VLLM_MODEL, env=env_file, overrides=["gateway.reasoning_history=inline"]))
    assert message.startswith("gateway.reasoning_history: invalid enum value 'inline'")
    assert "'think_tags', 'field', 'drop'" in message


def test_gateway_section_must_be_a_mapping(env_file):
    assert str(error_of(VLLM_MODEL, env=env_file, overrides=["gateway=8300"])).startswith("gateway: expected a mapping")


# --------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        ["policy_base_url=${policy_api_key}"],  # key put in base_url by mistake
        [f"{SHORT}.base_url=${{policy_api_key}}"],
        [f"policy_model..api_key={SECRET}"],  # malformed override carrying the key
        [f"+{SHORT}.api_key=[{SECRET}]"],  # wrong type
        [f"+{SHORT}.api_key={{k: {SECRET}}}"],
        [f"+{SHORT}.api_kye={SECRET}"],  # misspelt key
        [f"+{SHORT}.default_headers.Authorization=Bearer {SECRET}", f"+{SHORT}.base_url=Bearer {SECRET}"],
        ["policy_model_name=${oc.env:NOPE}"],
        [f"policy_api_key.x={SECRET}"],
    ],
)
def test_api_key_never_in_error_messages(env_file, overrides):
    error = error_of(VLLM_MODEL, env=env_file, overrides=overrides)
    assert SECRET not in str(error)
    assert "Th1s=Is" not in str(error)


def test_api_key_from_environment_never_in_error_messages(env_file):
    error = error_of(
        VLLM_MODEL,
        env=env_file,
        overrides=[f"{SHORT}.base_url=${{oc.env:OPENAI_API_KEY}}", f"{SHORT}.api_key=${{oc.env:OPENAI_API_KEY}}"],
        environ={"OPENAI_API_KEY": SECRET},
    )
    assert SECRET not in str(error)


def test_redacted_hides_api_key_and_auth_headers(env_file):
    config = load(
        VLLM_MODEL,
        env=env_file,
        overrides=[
            f"+{SHORT}.default_headers.Authorization=Bearer {SECRET}",
            f"+{SHORT}.default_headers.x-api-key='{SECRET}'",
            f"+{SHORT}.default_headers.X-Request-Source=gateway",
            "policy_base_url=http://user:hunter2pass@h:1/v1",
            "gateway.store_backend=redis", "gateway.redis_url=redis://:redispass99@h:6379/0",
        ],
    )
    data = redacted(config)
    assert SECRET not in repr(data) and "hunter2pass" not in repr(data) and "redispass99" not in repr(data)
    assert data["gateway"]["redis_url"] == "redis://:***@h:6379/0"
    assert data["model_server"]["api_key"] == "***"
    assert data["model_server"]["default_headers"] == {
        "Authorization": "***",
        "x-api-key": "***",
        "X-Request-Source": "gateway",
    }
    assert data["model_server"]["model"] == "Qwen/Qwen3-8B"
    assert data["gateway"]["port"] == 8300
    # The real config is untouched.
    assert config.model_server.api_key == SECRET


def test_api_key_never_logged(caplog, env_file):
    with caplog.at_level(logging.DEBUG, logger="gateway.config"):
        load(VLLM_MODEL, env=env_file, overrides=[f"+{SHORT}.host={SECRET}"])
    assert caplog.records  # something was logged
    assert all(SECRET not in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------
# CLI shortcuts
# --------------------------------------------------------------------------

TRICKY_KEYS = [
    "abc=def==",
    "sk:with:colons",
    "key #not-a-comment",
    "#leading-hash",
    "it's \"quoted\"",
    "true",
    "123",
    "null",
    "[not, a, list]",
    "{not: a mapping}",
    "${policy_model_name}",
    "back\\slash\\${x}",
    " padded ",
    "",
]


@pytest.mark.parametrize("api_key", TRICKY_KEYS)
def test_shortcut_api_key_survives_unchanged(env_file, api_key):
    overrides = shortcut_overrides(None, None, api_key)
    assert len(overrides) == 1 and overrides[0].startswith("+policy_api_key=")
    config = load(VLLM_MODEL, env=env_file, overrides=overrides)
    assert config.model_server.api_key == api_key


@settings(max_examples=200, deadline=None)
@given(api_key=st.text())
def test_shortcut_api_key_round_trips_any_text(api_key):
    # "???" is OmegaConf's (and NeMo Gym's) marker for a mandatory value not filled in.
    assume(api_key != "???")
    overrides = shortcut_overrides("http://h:1/v1", "m", api_key)
    config = load_config([VLLM_MODEL], overrides=overrides, environ={})
    assert config.model_server.api_key == api_key


def test_shortcuts_win_over_env_file_and_feed_interpolation(env_file):
    overrides = shortcut_overrides("http://cli-host:9999/v1", "cli/model", "cli-key")
    config = load(VLLM_MODEL, env=env_file, overrides=overrides)
    assert config.model_server.base_url == ["http://cli-host:9999/v1"]
    assert config.model_server.model == "cli/model"
    assert config.model_server.api_key == "cli-key"


def test_shortcuts_none_leave_env_values():
    assert shortcut_overrides(None, None, None) == []
    assert [o.split("=", 1)[0] for o in shortcut_overrides("http://h/v1", "m", None)] == [
        "+policy_base_url",
        "+policy_model_name",
    ]


def test_shortcuts_alone_satisfy_the_seed_config():
    config = load_config([VLLM_MODEL], overrides=shortcut_overrides("http://h:1/v1", "m", "k"), environ={})
    assert (config.model_server.base_url, config.model_server.model, config.model_server.api_key) == (
        ["http://h:1/v1"],
        "m",
        "k",
    )
