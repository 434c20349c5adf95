"""Layer 4, adapters to Docker engines: connections, calls, events, images, the driver of one host
(the launcher) and of a model over two (the Ray pair), and the socket proxy."""
