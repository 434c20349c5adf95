"""Layer 6, the waker's HTTP application: what nginx calls (wake, model list, health), the admin API,
model controls, loading feedback streams, metrics and the dashboard."""
