"""The state directory and its SQLite files are private to the server's user, on real files, whatever the umask.

The op log holds secret access keys and session tokens. SQLite gives its `-wal` and `-shm` files the
main file's mode, so the main file's mode is fixed before every open; a directory others may enter is
refused at start with an error naming the path, the mode and the `chmod` that fixes it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.store.errors import StorageFailure
from authz.store.oplog import DB_NAME, OpLog
from tests.server_fixture import ROOT, START_TIMEOUT, copy_example_bundle

COMPANIONS = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def open_and_write(state: Path) -> dict[str, int]:
    """Open the op log, write a row, and return the modes of the files in `state` while it is open
    (closing the last connection checkpoints and removes -wal and -shm)."""
    log = OpLog(state)
    try:
        log.append({"op": "CreateAccessKey", "secret": "not-a-real-secret"})   # the WAL now holds a "secret"
        assert log.all()[-1]["secret"] == "not-a-real-secret"
        return {p.name: mode(p) for p in state.iterdir()}
    finally:
        log.close()


def sqlite_database(state: Path, file_mode: int) -> None:
    """A WAL database as SQLite itself leaves it (main, -wal and -shm), with the main file at `file_mode`.

    The connection stays open while the caller opens it again, so that -wal and -shm exist then too.
    """
    state.mkdir(mode=0o700, exist_ok=True)
    with umask(0):
        db = sqlite3.connect(state / DB_NAME, isolation_level=None)
    os.chmod(state / DB_NAME, file_mode)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS ops (seq INTEGER PRIMARY KEY AUTOINCREMENT, op TEXT NOT NULL)")
    db.execute("INSERT INTO ops (op) VALUES ('{}')")
    _OPEN.append(db)


_OPEN: list[sqlite3.Connection] = []


@pytest.fixture(autouse=True)
def _close_foreign_connections() -> Iterator[None]:
    yield
    while _OPEN:
        _OPEN.pop().close()


@pytest.mark.parametrize("mask", [0o000, 0o002, 0o022], ids=lambda m: f"umask{m:03o}")
def test_a_new_state_dir_and_every_database_file_are_private_on_any_umask(tmp_path: Path, mask: int) -> None:
    state = tmp_path / "parent" / "state"
    with umask(mask):
        modes = open_and_write(state)
    assert mode(state) == 0o700 and mode(state.parent) == 0o700
    assert modes == dict.fromkeys(COMPANIONS, 0o600)
    assert mode(state / DB_NAME) == 0o600


def test_an_existing_world_readable_database_and_its_companions_become_private(tmp_path: Path,
                                                                               caplog: pytest.LogCaptureFixture
                                                                               ) -> None:
    state = tmp_path / "state"
    sqlite_database(state, 0o644)
    assert {n: mode(state / n) for n in COMPANIONS} == dict.fromkeys(COMPANIONS, 0o644)   # as SQLite made them
    with umask(0o022):
        modes = open_and_write(state)
    assert modes == dict.fromkeys(COMPANIONS, 0o600)
    assert f"{state / DB_NAME} had mode 0644" in caplog.text and "rotate them" in caplog.text


@pytest.mark.parametrize("dir_mode", [0o755, 0o750, 0o705, 0o770, 0o711, 0o777], ids=lambda m: f"{m:04o}")
def test_a_state_dir_others_may_enter_is_refused_naming_path_mode_and_fix(tmp_path: Path, dir_mode: int) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(dir_mode)
    with pytest.raises(StorageFailure) as refused:
        OpLog(state)
    message = str(refused.value)
    assert str(state) in message and f"mode {dir_mode:04o}" in message and f"chmod 700 {state}" in message
    assert list(state.iterdir()) == []                      # nothing created in it
    assert mode(state) == dir_mode                          # and nothing changed


def test_a_symbolic_link_in_place_of_the_database_is_refused(tmp_path: Path) -> None:
    state, elsewhere = tmp_path / "state", tmp_path / "elsewhere.db"
    state.mkdir(mode=0o700)
    elsewhere.write_bytes(b"")
    (state / DB_NAME).symlink_to(elsewhere)
    with pytest.raises(StorageFailure, match="is not a regular file"):
        OpLog(state)


def test_the_server_refuses_to_start_on_a_readable_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    done = subprocess.run([sys.executable, str(ROOT / "server.py"), "--listen", "127.0.0.1:0", "--bundle",
                           str(copy_example_bundle(tmp_path / "bundle")), "--state-dir", str(state)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=START_TIMEOUT)
    assert done.returncode == 2, done.stderr
    assert f"cannot start: --state-dir {state} has mode 0755" in done.stderr
    assert f"chmod 700 {state}" in done.stderr
    assert list(state.iterdir()) == []


# The whole class: any umask, any state the directory and the files are found in.
_FILE_MODES = st.none() | st.sampled_from([0o600, 0o644, 0o640, 0o604, 0o666, 0o400, 0o660])


@settings(max_examples=60, deadline=None)
@given(mask=st.sampled_from([0o000, 0o002, 0o007, 0o022, 0o027, 0o077]),
       dir_mode=st.none() | st.sampled_from([0o700, 0o750, 0o755, 0o711, 0o777, 0o770]),
       db_mode=_FILE_MODES)
def test_property_after_open_no_state_file_is_open_to_others(mask: int, dir_mode: int | None,
                                                             db_mode: int | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp) / "state"
        if dir_mode is not None:
            state.mkdir()
            if db_mode is not None:
                sqlite_database(state, db_mode)
            state.chmod(dir_mode)
        try:
            with umask(mask):
                try:
                    modes = open_and_write(state)
                except StorageFailure as exc:
                    # Refused exactly when others could enter the directory, and the refusal says how to fix it.
                    assert dir_mode is not None and dir_mode & 0o077, exc
                    assert f"chmod 700 {state}" in str(exc)
                    return
            assert dir_mode is None or not dir_mode & 0o077
            assert not mode(state) & 0o077
            assert modes == dict.fromkeys(COMPANIONS, 0o600), {n: oct(m) for n, m in modes.items()}
        finally:
            while _OPEN:
                _OPEN.pop().close()
            if state.exists():
                state.chmod(0o700)
