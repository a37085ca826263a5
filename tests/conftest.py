"""Shared fixtures live in tests/fixtures/, one module each, loaded as pytest plugins."""

pytest_plugins = [
    "tests.fixtures.nats",
    "tests.fixtures.origins",
    "tests.fixtures.stack",
    "tests.fixtures.federation",
    "tests.fixtures.fedsites",
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


# `make test` runs the suite in two pytest-xdist workers (`--dist loadgroup`). Each test file
# stays on one worker, so a module's fixtures start once; every test that uses the session's
# `edgecache up` stack (tests/fixtures/stack.py) shares one worker, so that stack starts once.
def pytest_collection_modifyitems(items):  # noqa: ANN001, ANN201 - a pytest hook
    import pytest

    for item in items:
        group = "stack" if "stack" in getattr(item, "fixturenames", ()) else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
