"""Shared pytest set-up: fixtures live in tests/support/, one module per real thing."""

pytest_plugins = ["tests.support.etcd", "tests.support.netns"]
