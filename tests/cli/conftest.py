"""Fixtures the CLI tests share with others."""

from tests.runtime_plugins.test_run import gemma  # noqa: F401  (gemma3:270m, created in the store)
