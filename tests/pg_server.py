"""A real PostgreSQL for tests: the private cluster of bench/pg.py, stop/start for fault tests, a database per test."""

from __future__ import annotations

from typing import Iterator

import pytest

from bench.pg import BIN_GLOB, INSTALL_HINT, PgServer, PgUnavailable, find_bin_dir

__all__ = ["PgServer", "pg_db", "pg_server", "pg_url"]

# Tests need durability across a server stop, not an operating system crash: fsync=off keeps CREATE
# DATABASE and commits cheap.
SERVER_SETTINGS = "-c fsync=off -c full_page_writes=off -c max_connections=100"


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One real PostgreSQL for the session; skips when the server binaries or psycopg are missing."""
    pytest.importorskip("psycopg", reason="psycopg is missing: pip install -e '.[test]'")
    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip(f"no PostgreSQL server binaries under {BIN_GLOB}; {INSTALL_HINT}")
    try:
        server = PgServer(bin_dir, SERVER_SETTINGS)
    except PgUnavailable as exc:
        pytest.skip(str(exc))
    try:
        server.init()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_db(pg_server: PgServer) -> str:
    """A fresh database for one test (the server restarted if a fault test left it stopped); its name."""
    pg_server.ensure_running()
    return pg_server.create_database()


@pytest.fixture
def pg_url(pg_server: PgServer, pg_db: str) -> str:
    return pg_server.url(pg_db)
