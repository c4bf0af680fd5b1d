"""Shared pytest configuration: markers pyproject does not declare, clients of a module's `server`, real PostgreSQL."""

from __future__ import annotations

from typing import Iterator

import pytest

from authz import native
from authz.client import AdminClient, AuthzClient
from tests.pg_server import pg_db, pg_server, pg_url  # noqa: F401  (fixtures: a real PostgreSQL)
from tests.server_fixture import ServerProcess


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: a bounded coverage-guided (atheris) run of about a minute")
    config.addinivalue_line("markers", "sources: replaces functions of the decision path in process (fault injection, "
                                       "counting calls), which the compiled build calls directly: run by `make test`'s "
                                       "second pass, on the pure-Python sources")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not native.compiled():
        return
    skip = pytest.mark.skip(reason=f"needs the pure-Python sources in process; `make test` runs it again with "
                                   f"{native.PURE_ENV}=1")
    for item in items:
        if item.get_closest_marker("sources") is not None:
            item.add_marker(skip)


# A test module that defines a `server` fixture (a live server.py) gets these clients of it.

@pytest.fixture(scope="module")
def authz(server: ServerProcess) -> Iterator[AuthzClient]:
    with server.client() as c:
        yield c


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> Iterator[AdminClient]:
    with server.admin() as c:
        yield c
