"""Layer 5, the imperative shell: the supervisor (the one writer of each model's state), what it
publishes, and manual control over its commands."""
