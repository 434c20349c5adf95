"""Layer 7, the `waker` command and the processes it runs."""
