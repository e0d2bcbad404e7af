"""vllm-responses-gateway: the OpenAI Responses API in front of vLLM Chat Completions servers."""
