"""The Open Responses specification's own compliance suite against the gateway (tests/openresponses.py
runs it). It needs a checkout of the openresponses/openresponses repository, which is not part of
this one: set ``OPENRESPONSES_CHECKOUT`` to its path, or these tests skip and say so. bun and zod
come from npm (cached) the first time.

The suite holds the Responses API's conventions (``gateway.response_conventions: openai``): every
HTTP test must pass with the scripted vLLM-shaped upstream. With the real llama.cpp model the
image-input test may fail, and only with an error that names the reason (the 0.5B model has no
vision); every other HTTP test must pass.

Under the default ``nemo_gym`` conventions the gateway echoes the sampling values as NeMo Gym 0.7.0
does, null where the request sent none (vLLM then applies the model's generation_config, whose
values the gateway cannot know), and the suite's schema wants numbers: those five fields, and
nothing else, fail there (README, "Open Responses compliance").
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.backends.llama_cpp import MODEL_ALIAS
from tests.openresponses import SuiteResult, against_gateway, in_scope, reason, suite_test_ids

CHECKOUT_VARIABLE = "OPENRESPONSES_CHECKOUT"


@pytest.fixture(scope="module")
def checkout() -> Path:
    value = os.environ.get(CHECKOUT_VARIABLE)
    if not value:
        pytest.skip(f"{CHECKOUT_VARIABLE} is not set: it names a checkout of openresponses/openresponses "
                    "(see the README, 'Open Responses compliance')")
    path = Path(value)
    if not (path / "bin" / "compliance-test.ts").exists():
        pytest.skip(f"{CHECKOUT_VARIABLE}={value} holds no bin/compliance-test.ts")
    return path


def assert_ran_every_http_test(outcome: SuiteResult, checkout: Path) -> None:
    expected = [test_id for test_id in suite_test_ids(checkout) if in_scope(test_id)]
    assert sorted(r["id"] for r in outcome.results) == sorted(expected)
    assert len(expected) >= 8  # the suite's HTTP tests as of this writing; fewer means it was misread


async def test_compliance_suite_scripted_upstream(checkout: Path) -> None:
    outcome = await against_gateway(checkout, "scripted", conventions="openai")
    assert_ran_every_http_test(outcome, checkout)
    assert not outcome.failed, outcome.summary()


# What the suite's schema refuses under the nemo_gym conventions: Gym's null echo, field by field.
NEMO_GYM_NULL_ECHO = {f"{name}: Expected number, received null"
                      for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty", "top_logprobs")}


async def test_compliance_suite_under_the_nemo_gym_conventions_fails_only_on_the_null_sampling_echo(
        checkout: Path) -> None:
    outcome = await against_gateway(checkout, "scripted")  # the default conventions
    assert_ran_every_http_test(outcome, checkout)
    for result in outcome.failed:
        assert set(result.get("errors") or []) == NEMO_GYM_NULL_ECHO, outcome.summary()


@pytest.mark.real_model
async def test_compliance_suite_real_model(checkout: Path, llama_server: str) -> None:
    outcome = await against_gateway(checkout, llama_server, MODEL_ALIAS, llama_cpp_flavour=True, conventions="openai")
    assert_ran_every_http_test(outcome, checkout)
    for result in outcome.failed:
        assert result["id"] == "image-input", outcome.summary()
        assert "image input is not supported" in reason(result), reason(result)
