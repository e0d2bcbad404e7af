"""``POST /v1/chat/completions`` as NeMo Gym 0.7.0's ``vllm_model`` serves it, for agents that speak
Chat Completions: the same request preparation as the Responses route (reasoning in history per
Gym's keys, chat_template_kwargs, extra_body, sampling_overrides, token tracking), vLLM's answer with
reasoning wrapped in ``<think>`` tags in the content and the token ids on the message.

``convert`` is pure; ``route`` is the aiohttp handler. ``stream: true`` gets, as from Gym, the
finished answer re-emitted as chunks (no token-by-token streaming: Gym asks vLLM without).
"""
