"""Starts `server.py` as a real subprocess on ephemeral ports and waits until gRPC health says SERVING.

Synchronisation is by events only: a reader thread parses the server's `listening {...}` log line
(text, or the message of a --log-format json line) for the bound addresses, and readiness comes
from a health Watch stream, never from sleeping.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest

from authz.client import AdminClient, AuthzClient, TlsFiles
from authz.store import Store, StoreConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_BUNDLE = ROOT / "examples" / "bundle"
TOKEN = "test-admin-token"
START_TIMEOUT = 30.0


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    bundle: Path | None
    state_dir: Path | None
    token: str | None
    workers: int = 1
    tls: TlsFiles | None = None                       # what clients use by default (TLS servers)
    listening: list[dict[str, Any]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    _seen: threading.Condition = field(default_factory=threading.Condition)

    # ------------------------------------------------------------ start-up

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._seen:
                self.log.append(line)
                _, marker, rest = f" {_message(line)}".partition(" listening ")
                if marker:
                    self.listening.append(json.loads(rest))
                self._seen.notify_all()
        with self._seen:
            self._seen.notify_all()

    def wait_listening(self, timeout: float = START_TIMEOUT) -> None:
        def done() -> bool:
            return len(self.listening) >= self.workers or self.proc.poll() is not None
        with self._seen:
            self._seen.wait_for(done, timeout)
        if len(self.listening) < self.workers:
            raise RuntimeError(f"server did not start (exit {self.proc.poll()}):\n{''.join(self.log)}")

    @property
    def addr(self) -> str:
        return str(self.listening[0]["decision"])

    @property
    def admin_addr(self) -> str:
        for entry in self.listening:
            if "admin" in entry:
                return str(entry["admin"])
        raise LookupError("this server has no admin listener")

    @property
    def metrics_addr(self) -> str:
        return str(self.listening[0]["metrics"])

    def client(self, **kw: Any) -> AuthzClient:
        kw.setdefault("tls", self.tls)
        return AuthzClient(self.addr, **kw)

    def admin(self, token: str | None = None, **kw: Any) -> AdminClient:
        kw.setdefault("tls", self.tls)
        return AdminClient(self.admin_addr, token=token if token is not None else self.token, **kw)

    def wait_serving(self, timeout: float = START_TIMEOUT) -> None:
        with self.client() as c:
            c.wait_until_serving(timeout=timeout)

    # ------------------------------------------------------------ shutdown

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def kill(self) -> int:
        """SIGKILL, to the --workers children too (a killed supervisor cannot pass it on)."""
        if self.proc.poll() is None:
            for worker in self.listening:
                if worker.get("pid") not in (None, self.proc.pid):
                    try:
                        os.kill(int(worker["pid"]), signal.SIGKILL)
                    except ProcessLookupError:
                        pass
        return self.stop(signal.SIGKILL)


def _message(line: str) -> str:
    """The message of a log line: the whole line as text, or its "message" member with --log-format json."""
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except ValueError:
            return line
        if isinstance(record, dict) and isinstance(record.get("message"), str):
            return record["message"]
    return line


def copy_example_bundle(dest: Path) -> Path:
    shutil.copytree(EXAMPLE_BUNDLE, dest)
    return dest


@contextmanager
def example_store(directory: Path) -> Iterator[Store]:
    """An open in-process Store on a copy of the example bundle under `directory` (not watched), closed after."""
    s = Store(StoreConfig(bundle_dir=copy_example_bundle(directory / "bundle"), watch_interval=0))
    s.open()
    try:
        yield s
    finally:
        s.close()


def start_server(bundle: Path | None, state_dir: Path | None = None, *args: str, token: str | None = TOKEN,
                 admin: str | None = "127.0.0.1:0", workers: int = 1, wait_serving: bool = True,
                 env: dict[str, str] | None = None, tls: TlsFiles | None = None,
                 program: list[str] | None = None, cwd: Path = ROOT) -> ServerProcess:
    """`python server.py` on 127.0.0.1:0; the admin token is passed through AUTHZ_ADMIN_TOKEN (not argv).

    `program` replaces `python server.py` (e.g. an installed `authz serve`), run in `cwd`.
    """
    cmd = [*(program or [sys.executable, str(ROOT / "server.py")]), "--listen", "127.0.0.1:0", "--log-level", "INFO"]
    if bundle is not None:
        cmd += ["--bundle", str(bundle)]
    if state_dir is not None:
        cmd += ["--state-dir", str(state_dir)]
    if admin is not None:
        cmd += ["--admin-listen", admin]
    if workers > 1:
        cmd += ["--workers", str(workers)]
    cmd += list(args)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    full_env["PYTHONUNBUFFERED"] = "1"
    if token is not None:
        full_env["AUTHZ_ADMIN_TOKEN"] = token
    full_env.update(env or {})
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    server = ServerProcess(proc, bundle, state_dir, token, workers, tls)
    threading.Thread(target=server._read_stderr, name="server-stderr", daemon=True).start()
    try:
        server.wait_listening()
        if wait_serving:
            server.wait_serving()
    except BaseException:
        server.kill()
        raise
    return server


@pytest.fixture
def server_factory() -> Iterator[Any]:
    """A function that starts servers (see start_server); every one of them is stopped afterwards."""
    started: list[ServerProcess] = []

    def factory(*args: Any, **kw: Any) -> ServerProcess:
        s = start_server(*args, **kw)
        started.append(s)
        return s

    yield factory
    for s in started:
        s.kill()


@dataclass
class ManualClock:
    """A clock for in-process servers (`app.start(..., clock=...)`) that moves only when a test sets `now`."""

    now: float

    def __call__(self) -> float:
        return self.now
