"""Layer 2, config: `models.toml` read into frozen dataclasses and validated once, at the boundary."""
