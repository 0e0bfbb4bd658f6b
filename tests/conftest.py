"""Shared pytest set-up: fixtures live in tests/support/, one module per real thing."""

from hypothesis import HealthCheck, settings

# netns before the plugins that import it: pytest rewrites the asserts of a plugin module
# only when it is the first to import it.
pytest_plugins = [
    "tests.support.etcd",
    "tests.support.kernel",
    "tests.support.netns",
    "tests.support.cni",
    "tests.support.vpp",
]

# The machine runs network namespaces and etcd beside hypothesis: wall-clock deadlines
# would make property tests flaky without making them any stronger.
settings.register_profile("srv6ctl", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("srv6ctl")
