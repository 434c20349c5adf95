"""Layer 4, adapters to this machine: GPU memory, systemd."""
