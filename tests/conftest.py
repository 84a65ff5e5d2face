"""Fixtures shared by every test folder: one session broker for integration and deploy tests."""

pytest_plugins = ["tests.broker"]
