"""Layer 4, adapters to nginx: its rendered config and njs route table, the process or container it runs
in, and its activity datagrams."""
