"""Layer 4, adapters to a model server's own HTTP API (vLLM's sleep protocol)."""
