"""Hypothesis draws the same examples on every run (derandomize, no example database), so a CI failure
repeats and a pass never depends on the draw; `deadline=None` because CI is a loaded two-core machine,
and the slowness health check is off for the same reason (the only check that depends on the machine).
HYPOTHESIS_PROFILE=explore draws new examples on each run, to look for what the fixed ones miss."""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "repeatable", derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("explore", database=None, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))
