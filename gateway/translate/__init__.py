"""The sans-IO core: pure conversion and the Responses event state machine (no aiohttp below here)."""
