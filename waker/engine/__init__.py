"""Layer 4, adapters to a model server's own HTTP API: its health, its load, vLLM's sleep protocol."""
