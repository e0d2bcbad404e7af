"""aiohttp application: routes, SSE writing, error mapping."""
