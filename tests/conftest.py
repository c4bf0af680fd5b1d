"""Shared pytest configuration: markers pyproject does not declare, clients of a module's `server`, real PostgreSQL."""

from __future__ import annotations

from typing import Iterator

import pytest

from authz.client import AdminClient, AuthzClient
from tests.pg_server import pg_db, pg_server, pg_url  # noqa: F401  (fixtures: a real PostgreSQL)
from tests.server_fixture import ServerProcess


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: a bounded coverage-guided (atheris) run of about a minute")


# A test module that defines a `server` fixture (a live server.py) gets these clients of it.

@pytest.fixture(scope="module")
def authz(server: ServerProcess) -> Iterator[AuthzClient]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[AdminClient]:
    with server.admin() as c:
        yield c
