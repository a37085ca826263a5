"""Shared fixtures live in tests/fixtures/, one module each, loaded as pytest plugins."""

pytest_plugins = [
    "tests.fixtures.nats",
    "tests.fixtures.origins",
    "tests.fixtures.stack",
]
