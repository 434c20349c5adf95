"""Layer 4, adapters to the Hugging Face hub: weights fetched into the cache an engine reads."""
