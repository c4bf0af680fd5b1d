"""A private PostgreSQL cluster in a temporary directory (initdb, pg_ctl, a database per use), for bench and tests."""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

PREFERRED_VERSION = "15"
BIN_GLOB = "/usr/lib/postgresql/*/bin"
PACKAGE = "postgresql-15"
INSTALL_HINT = f"install the PostgreSQL server (Debian/Ubuntu: apt-get install {PACKAGE})"
SUPERUSER = "postgres"       # the database superuser initdb creates (-U), whoever runs the cluster
SYSTEM_USER = "postgres"     # the system account the server runs as when started by root
START_TIMEOUT_S = 60         # pg_ctl -t: crash recovery after an immediate stop is part of a start
START_ATTEMPTS = 3           # a free port found by binding may be taken before the server binds it
BASE_SETTINGS = "-c listen_addresses=127.0.0.1"
# Durability across a server stop, not an operating system crash: fsync=off keeps CREATE DATABASE and
# commits cheap. Tests use this; the fleet bench case keeps PostgreSQL's durable defaults.
FAST_SETTINGS = "-c fsync=off -c full_page_writes=off"


class PgUnavailable(Exception):
    """PostgreSQL cannot be run here; the message says what to install or fix."""


def find_bin_dir() -> Path | None:
    """The bin directory of PostgreSQL 15 if installed, else of the newest version installed."""
    found = [Path(d) for d in glob.glob(BIN_GLOB) if (Path(d) / "initdb").exists() and (Path(d) / "pg_ctl").exists()]
    if not found:
        return None
    for d in found:
        if d.parent.name == PREFERRED_VERSION:
            return d
    return max(found, key=lambda d: int(d.parent.name) if d.parent.name.isdigit() else 0)


def pg_missing() -> str | None:
    """Why a private PostgreSQL cannot be started here (server binaries or psycopg missing), or None."""
    if find_bin_dir() is None:
        return f"no PostgreSQL server binaries under {BIN_GLOB}; {INSTALL_HINT}"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is missing: pip install -e '.[test]'"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            return (f"running as root and PostgreSQL refuses root: there is no '{SYSTEM_USER}' system user to run "
                    f"it as; {INSTALL_HINT} (it creates the user)")
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PgServer:
    """One PostgreSQL cluster in a temporary directory, listening on 127.0.0.1:<port> and on a unix socket there.

    `settings` are extra server options (`-c name=value ...`) added to listening on 127.0.0.1 only.
    """

    def __init__(self, bin_dir: Path, settings: str = "") -> None:
        self.bin_dir = bin_dir
        self.version = int(bin_dir.parent.name) if bin_dir.parent.name.isdigit() else 0
        self.settings = f"{BASE_SETTINGS} {settings}".strip()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            try:
                self._account = pwd.getpwnam(SYSTEM_USER)
            except KeyError:
                raise PgUnavailable(f"running as root and PostgreSQL refuses root: there is no '{SYSTEM_USER}' "
                                    f"system user to run it as; {INSTALL_HINT} (it creates the user)") from None
        # Directly under the temporary directory: pytest's own is private to root and the server could not enter it.
        self.dir = Path(tempfile.mkdtemp(prefix="authz-pg-"))
        if self.as_root:
            os.chown(self.dir, self._account.pw_uid, self._account.pw_gid)
        self.data = self.dir / "data"
        self.logfile = self.dir / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self.running = False

    # -- processes ------------------------------------------------------------------------------------

    def _run(self, *args: str) -> None:
        cmd = [str(self.bin_dir / args[0]), *args[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", SYSTEM_USER, "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.dir)
        if proc.returncode != 0:
            log = self.logfile.read_text(errors="replace")[-3000:] if self.logfile.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}\n"
                               f"server log tail:\n{log}")

    def init(self) -> None:
        """initdb, start on a free port, create the database "authz"."""
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "--encoding=UTF8",
                  "--locale=C", "--no-sync", "--no-instructions")
        for attempt in range(1, START_ATTEMPTS + 1):
            self.port = free_port()
            try:
                self.start()
                break
            except RuntimeError:
                if attempt == START_ATTEMPTS:
                    raise
        self._run("createdb", "-h", str(self.dir), "-p", str(self.port), "-U", SUPERUSER, "authz")

    def start(self) -> None:
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.logfile), "-w", "-t", str(START_TIMEOUT_S),
                  "-o", f"-p {self.port} -k {self.dir} {self.settings}")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop: "immediate" ends every backend at once, as a crash would (recovery runs at the next start)."""
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w", "-t", str(START_TIMEOUT_S))
        self.running = False

    def ensure_running(self) -> None:
        if not self.running:
            self.start()

    def destroy(self) -> None:
        if self.running:
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "PgServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- databases -------------------------------------------------------------------------------------

    def url(self, dbname: str = "authz", password: str = "") -> str:
        auth = f"{SUPERUSER}:{password}" if password else SUPERUSER
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{dbname}"

    def socket_url(self, dbname: str = "authz") -> str:
        return f"postgresql://{SUPERUSER}@/{dbname}?host={self.dir}&port={self.port}"

    def create_database(self) -> str:
        """A new empty database (a copy of template1); its name."""
        import psycopg

        name = f"t{next(self._names)}"
        # From 15 on, the default strategy writes the whole template to the WAL; copying the files is faster.
        strategy = " STRATEGY FILE_COPY" if self.version >= 15 else ""
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}{strategy}")
        return name


def start_cluster(settings: str = "") -> PgServer:
    """A running private cluster with the database "authz"; PgUnavailable (saying what to install) if it cannot run."""
    missing = pg_missing()
    if missing:
        raise PgUnavailable(missing)
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    server = PgServer(bin_dir, settings)
    try:
        server.init()
    except BaseException:
        server.destroy()
        raise
    return server
