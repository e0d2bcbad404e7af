"""Runs inside NeMo Gym 0.7.0's venv (see __init__.py): Gym's own ``VLLMModel`` under FastAPI's
``TestClient``, with a fake vLLM client that records what it is sent and answers as scripted.

stdin: one JSON case per line, ``{"config": {...VLLMModelConfig keys...}, "request": {...},
"answer": <chat.completion dict> | {"error_status": int, "error_body": str}, "tokenize": {...},
"path": "/v1/responses"}``. stdout: one JSON line per case, ``{"status", "body", "chat": [bodies sent
to /chat/completions], "tokenize": [bodies sent to /tokenize]}``. Exceptions inside Gym become a
500 here, as they do in Gym's server.
"""

import copy
import json
import logging
import os
import sys
from unittest.mock import MagicMock

os.environ.setdefault("NEMO_GYM_REASONING_FIELD", "both")
logging.disable(logging.CRITICAL)

from aiohttp.client_exceptions import ClientResponseError  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

import nemo_gym.server_utils  # noqa: E402
from nemo_gym.server_utils import ServerClient  # noqa: E402
from responses_api_models.vllm_model.app import VLLMModel, VLLMModelConfig  # noqa: E402

nemo_gym.server_utils.get_global_config_dict = lambda *a, **k: {}


class FakeVLLMClient:
    """Stands in for NeMoGymAsyncOpenAI: the kwargs are the JSON body Gym would POST."""

    def __init__(self) -> None:
        self.case: dict = {}
        self.chat: list = []
        self.tokenize: list = []

    async def create_chat_completion(self, **kwargs):
        self.chat.append(copy.deepcopy(kwargs))
        answer = self.case["answer"]
        if "error_status" in answer:
            error = ClientResponseError(MagicMock(real_url="http://vllm.test/v1/chat/completions"), (),
                                        status=answer["error_status"], message="error")
            error.response_content = answer["error_body"].encode()
            raise error
        return copy.deepcopy(answer)

    async def create_tokenize(self, **kwargs):
        self.tokenize.append(copy.deepcopy(kwargs))
        return copy.deepcopy(self.case["tokenize"])


_servers: dict = {}


def _client_for(config: dict) -> tuple[TestClient, FakeVLLMClient]:
    key = json.dumps(config, sort_keys=True)
    if key not in _servers:
        full = dict(host="127.0.0.1", port=1, base_url="http://vllm.test/v1", api_key="", model="Qwen/Qwen3-8B",
                    entrypoint="app.py", name="policy_model", return_token_id_information=False,
                    uses_reasoning_parser=True)
        full.update(config)
        server = VLLMModel(config=VLLMModelConfig(**full),
                           server_client=MagicMock(spec=ServerClient, global_config_dict={}))
        fake = FakeVLLMClient()
        server._clients = [fake]
        app = server.setup_webserver()
        server.setup_exception_middleware(app)
        _servers[key] = (TestClient(app, raise_server_exceptions=False), fake)
    return _servers[key]


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        case = json.loads(line)
        client, fake = _client_for(case.get("config", {}))
        fake.case, fake.chat, fake.tokenize = case, [], []
        response = client.post(case.get("path", "/v1/responses"), json=case["request"])
        try:
            body = response.json()
        except ValueError:
            body = response.text
        out = {"status": response.status_code, "body": body, "chat": fake.chat, "tokenize": fake.tokenize}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
