"""Real inference servers the gateway can run in front of on a machine without a GPU (for trying it and for CI)."""
