"""Shared fixtures live in tests/fixtures/, one module each, loaded as pytest plugins."""

pytest_plugins = [
    "tests.fixtures.nats",
    "tests.fixtures.origins",
    "tests.fixtures.stack",
    "tests.fixtures.federation",
]

# Property tests: few examples per run, for the suite's time budget (HYPOTHESIS_PROFILE=thorough
# for a longer search); no deadline, as the machine is shared and noisy.
import os  # noqa: E402

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "suite", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("thorough", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
