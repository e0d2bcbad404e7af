"""aiohttp client side: the vLLM servers behind the gateway."""
