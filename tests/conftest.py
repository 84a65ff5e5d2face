"""Fixtures shared by every test folder: one session broker for integration and deploy tests;
heavy fixture work started at collection in idle-priority processes (tests/prefetch.py)."""

pytest_plugins = ["tests.broker", "tests.prefetch"]
