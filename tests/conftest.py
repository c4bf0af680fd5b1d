"""Shared pytest configuration: markers that pyproject does not declare."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: a bounded coverage-guided (atheris) run of about a minute")
