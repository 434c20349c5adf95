"""The waker: control plane of the inference gateway (container lifecycle, readiness, routing data)."""
