"""Does each server's chat template render a ``developer`` message?

Codex sends its whole system prompt as ``developer`` messages. Qwen2.5's and Qwen3's chat templates
(and the llama.cpp template the demo ships) have no branch for that role and drop such messages
without a word, so the model never sees them. The gateway asks each server once: vLLM's ``/tokenize``
of a chat with and without a developer message (a template that renders it gives more tokens; one
that refuses the role answers 400), llama.cpp's ``/apply-template`` (is the probe's text in the
prompt?). Where a server does not render the role, developer messages are folded into the system
message (``translate.request``). ``gateway.developer_messages`` forces either way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .client import VLLMClient

log = logging.getLogger("gateway.upstream")

PROBE_TEXT = "Developer probe: answer in English."
# Both chats have a system message: a template that adds a default one when there is none (Qwen2.5:
# "You are Qwen, created by Alibaba Cloud...") would otherwise make the counts say nothing, since a
# server that renders the developer message as the system one (vLLM 0.32 maps the role) drops that
# default. So the developer message is the only difference.
_SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
_USER = {"role": "user", "content": "Hi"}
WITHOUT_DEVELOPER = [_SYSTEM, _USER]
WITH_DEVELOPER = [_SYSTEM, {"role": "developer", "content": PROBE_TEXT}, _USER]
RETRY_UNKNOWN_S = 30.0  # a server that could not say is asked again after this long


def tokenize_verdict(without: Optional[int], with_developer: Optional[int]) -> Optional[bool]:
    """vLLM: token counts of the two chats (None: that /tokenize answered 4xx). True: rendered."""
    if without is None:
        return None  # /tokenize itself does not work: nothing to learn
    if with_developer is None:
        return False  # the template refuses the role (raise_exception in Jinja -> 400)
    return with_developer > without


def template_verdict(prompt: Optional[str]) -> Optional[bool]:
    """llama.cpp: the prompt /apply-template rendered for WITH_DEVELOPER (None: it refused)."""
    if prompt is None:
        return False
    return PROBE_TEXT in prompt


class DeveloperRole:
    """Whether developer messages must be folded, per ``gateway.developer_messages``: ``fold``,
    ``keep``, or ``auto`` (ask every server once; fold when any of them drops the role, since a
    request may go to any server; fold too while a server cannot say, since the system message
    reaches the model under every template)."""

    def __init__(self, client: "VLLMClient", mode: str, model: str) -> None:
        self._client, self._mode, self._model = client, mode, model
        self._known: dict[str, bool] = {}  # server URL -> renders developer messages
        self._retry_at: dict[str, float] = {}  # servers that could not say, and when to ask again
        self._probing: dict[str, asyncio.Task[Optional[bool]]] = {}

    async def must_fold(self) -> bool:
        if self._mode != "auto":
            return self._mode == "fold"
        backends = self._client.pool.backends
        pending = [self._ask(b.url) for b in backends if b.url not in self._known]
        if pending:
            await asyncio.gather(*pending)
        return not all(self._known.get(b.url, False) for b in backends)

    async def _ask(self, url: str) -> None:
        task = self._probing.get(url)
        if task is None:
            if time.monotonic() < self._retry_at.get(url, 0.0):
                return  # it could not say a moment ago: fold meanwhile, ask again later
            task = self._probing[url] = asyncio.ensure_future(self._probe(url))
            task.add_done_callback(lambda done: self._settled(url, done))
        await asyncio.shield(task)  # one probe per server, however many requests wait for it

    def _settled(self, url: str, task: "asyncio.Task[Optional[bool]]") -> None:
        self._probing.pop(url, None)
        verdict = None if task.cancelled() else task.result()
        if verdict is None:
            self._retry_at[url] = time.monotonic() + RETRY_UNKNOWN_S
            return
        self._known[url] = verdict
        log.info("%s: its chat template %s", url, "renders developer messages" if verdict
                 else "drops developer messages; they are folded into the system message")

    async def _probe(self, url: str) -> Optional[bool]:
        from .client import UpstreamError

        try:
            async with asyncio.timeout(10.0):
                return await probe_developer_role(self._client, url, self._model)
        except (UpstreamError, TimeoutError) as exc:
            reason = getattr(exc, "message", None) or "no answer within 10 s"
        except Exception as exc:  # a bug must not fail requests: folding is the safe side
            log.exception("probing %s for developer messages failed", url)
            reason = type(exc).__name__
        log.warning("%s: could not tell whether its chat template renders developer messages (%s); folding them "
                    "into the system message meanwhile (gateway.developer_messages: keep or fold decides)", url,
                    reason)
        return None


async def probe_developer_role(client: "VLLMClient", base: str, model: str) -> Optional[bool]:
    """True when the server's template renders a developer message, False when it drops or refuses
    it, None when the server cannot say."""
    from .client import UpstreamEndpointError

    if client.flavour == "llama.cpp":
        try:
            rendered: Optional[str] = await client.render_template(base, {"messages": WITH_DEVELOPER})
        except UpstreamEndpointError as exc:
            if exc.upstream_status not in (400, 500):  # llama.cpp answers 500 when the template raises
                raise
            rendered = None
        return template_verdict(rendered)

    async def count(messages: list[dict[str, str]]) -> Optional[int]:
        try:
            return len(await client.tokenize(base, {"model": model, "messages": messages,
                                                    "add_generation_prompt": True}))
        except UpstreamEndpointError as exc:
            if exc.upstream_status != 400:
                raise
            return None

    without, with_developer = await asyncio.gather(count(WITHOUT_DEVELOPER), count(WITH_DEVELOPER))
    return tokenize_verdict(without, with_developer)
