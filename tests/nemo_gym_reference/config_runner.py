"""Runs inside NeMo Gym 0.7.0's venv (see __init__.py): Gym's own config loading for one model
server block, to compare with what the gateway loads from the same files.

stdin: one JSON case per line, ``{"files": [paths], "server": name, "overrides": {dotted key:
value}, "environ": {name: value}, "every_variable_set": bool (default true)}``. Gym's steps, in
its order: ``config_paths`` includes (``load_extra_config_paths``), the merge with the overrides
last (as Gym merges its command line), its directives (``_recursively_swap_keys``), then OmegaConf
resolving ``<server>.responses_api_models.vllm_model`` and Gym's ``VLLMModelConfig`` validating
it (the values its server runs with).

``every_variable_set`` stands for the gateway test's environment in which every variable is set
(``tests/test_nemo_gym.py``, ``_AnyVariable``), the only way Gym can see it: every ``oc.env``
variable the merged tree names is set in the environment, and every plain ``${name}`` OmegaConf
cannot find becomes a top-level key; both get the value the gateway's test gives that name.

stdout: one JSON line per case: ``{"block": {...}, "validated": {...}}`` or ``{"error": "..."}``.
"""

import copy
import json
import logging
import os
import re
import sys

logging.disable(logging.CRITICAL)

from omegaconf import DictConfig, OmegaConf  # noqa: E402
from omegaconf.errors import InterpolationKeyError  # noqa: E402

from nemo_gym.global_config import GlobalConfigDictParser  # noqa: E402
from responses_api_models.vllm_model.app import VLLMModelConfig  # noqa: E402

_OC_ENV_RE = re.compile(r"oc\.env:\s*([A-Za-z_][A-Za-z0-9_]*)")
_MISSING_KEY_RE = re.compile(r"Interpolation key '([^']+)' not found")
_set_variables: list = []  # what the last case put in the environment


def variable_value(name: str) -> str:
    """What tests/test_nemo_gym.py's _AnyVariable gives a name."""
    return "http://localhost:8000/v1" if "url" in name.lower() else "value"


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def load(case: dict) -> dict:
    parser = GlobalConfigDictParser()
    _, configs = parser.load_extra_config_paths(case["files"])
    command_line = OmegaConf.create({})
    for key, value in case.get("overrides", {}).items():
        OmegaConf.update(command_line, key, value, force_add=True)
    merged: DictConfig = OmegaConf.merge(*configs, command_line)
    for name in _set_variables:
        os.environ.pop(name, None)
    _set_variables.clear()
    variables = dict(case.get("environ", {}))
    if case.get("every_variable_set", True):
        for text in _strings(OmegaConf.to_container(merged, resolve=False)):
            for name in _OC_ENV_RE.findall(text):
                if not name.startswith("NEMO_GYM_"):
                    variables.setdefault(name, variable_value(name))
    for name, value in variables.items():
        os.environ[name] = value
        _set_variables.append(name)
    filled = []
    while True:  # Gym's swap reads list items resolved, so a missing name may stop it too
        attempt = copy.deepcopy(merged)
        try:
            parser._recursively_swap_keys(attempt)
            block = OmegaConf.to_container(attempt[case["server"]]["responses_api_models"]["vllm_model"],
                                           resolve=True)
            break
        except InterpolationKeyError as exc:
            match = _MISSING_KEY_RE.search(str(exc))
            if not case.get("every_variable_set", True) or match is None or match.group(1) in filled:
                raise
            filled.append(match.group(1))
            OmegaConf.update(merged, match.group(1), variable_value(match.group(1)), force_add=True)
    launch = {"host": "127.0.0.1", "port": 1, "name": case["server"], "entrypoint": "app.py"}
    validated = VLLMModelConfig.model_validate({**launch, **block}).model_dump(mode="json")
    return {"block": block, "validated": validated, "filled": filled}


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        try:
            out = load(case)
        except Exception as exc:  # Gym refuses the file: say how
            out = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
