"""Server configuration: the flags of `python server.py` and `authz serve`, each also read from AUTHZ_<FLAG>.

This module imports neither grpc nor the servicers: with --workers N the supervisor forks the
worker processes before gRPC is loaded (see app.py).
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from ..gateway.principal import (MAX_REGIONS, PRINCIPAL_FROM_HELP, parse_principal_from, parse_regions,
                                 parse_trusted_proxies)
from ..store.errors import StorageFailure
from ..store.holder import DEFAULT_CACHE_SIZE, DEFAULT_WATCH_INTERVAL
from ..store.pglog import URL_SCHEMES, PgChangeLog
from ..store.sealed import KEY_ENV, parse_key
from . import settings
from .logs import LOG_FORMATS, LOG_LEVELS

ENV_PREFIX = "AUTHZ_"
UNIX_PREFIX = "unix:"
# --demo serves the example bundle from the first of these that exists: where the container image puts it
# (outside the package, next to the virtualenv it installs), then a source checkout's examples/bundle.
DEMO_BUNDLE_DIRS = (Path(sys.prefix) / "share" / "kvs-authz" / "examples" / "bundle",
                    Path(__file__).resolve().parents[2] / "examples" / "bundle")
# How to make the fleet's store key, and that every member needs the same one: said wherever a key is missing.
STORE_KEY_HOW = (f"make one with `head -c 32 /dev/urandom | base64`, keep it as a secret, and give the same key to "
                 f"every sidecar of the fleet and to `authz push` (in {KEY_ENV} or a file named by --store-key-file)")
# --bundle (or --demo) with --store: the bundle comes from the store, never from a directory of one sidecar.
FLEET_BUNDLE = "in fleet mode the store holds the bundle: publish it with `authz push --store URL DIR`"
SWITCH_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
                 "off": False, "": False}


@dataclass(frozen=True)
class Config:
    bundle: Path | None = None
    listen: str = settings.DEFAULT_LISTEN
    admin_listen: str | None = None
    admin_token: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    state_dir: Path | None = None
    # Fleet mode (--store): the shared PostgreSQL store, and the key sealing the secrets in it (never printed).
    store_url: str | None = field(default=None, repr=False)
    store_key: bytes | None = field(default=None, repr=False)
    cache_size: int = DEFAULT_CACHE_SIZE
    metrics_listen: str | None = None
    decision_log: str | None = None
    workers: int = 1
    threads: int = settings.DEFAULT_THREADS
    watch_interval: float = DEFAULT_WATCH_INTERVAL
    drain_grace: float = settings.DRAIN_GRACE_SECONDS
    log_level: str = "INFO"
    log_format: str = "text"          # text, or json: one object per line (authz.server.logs)
    principal_from: str = "sigv4"     # Envoy ext_authz: where the caller's identity comes from
    region: str = "us-east-1"         # Envoy ext_authz: regions served, comma-separated; the first for unsigned sources
    trusted_proxies: tuple[str, ...] = ()
    memo_bytes: int = settings.MEMO_MAX_BYTES            # the decision port's memos, together (answers.py)
    simulate_processes: int = settings.SIMULATE_PROCESSES  # Simulate's own processes; 0: on the server threads
    assume_role_auth: str = "none"    # AssumeRole: "none" believes `caller`; "sigv4" verifies the signed STS request
    otlp_endpoint: str | None = None  # OpenTelemetry: export a span per decision RPC here (authz.server.tracing)
    demo: bool = False                # --demo: `bundle` is the shipped example bundle, with its published keys
    require_no_new_access: bool = False   # a reloaded bundle that allows new access is refused (authz.analysis)
    # Watch streams (authz.server.watch): the streaming listener, "" for the default (--listen's host, port + 1,
    # or a free port when that one is taken) or None for none (--watch-listen off), and the cap on open watches.
    watch_listen: str | None = ""
    max_watches: int = settings.MAX_WATCHES
    watch_queue_max: int = settings.WATCH_QUEUE_MAX   # never a flag: tests lower it to meet the bound quickly
    max_authorize_streams: int = settings.MAX_AUTHORIZE_STREAMS   # AuthorizeStream (authz.server.stream), per process
    authorize_stream_in_flight: int = settings.AUTHORIZE_STREAM_MAX_IN_FLIGHT   # never a flag: tests lower it
    authorize_stream_queued_bytes: int = settings.AUTHORIZE_STREAM_MAX_QUEUED_BYTES   # the same
    reuse_port: bool = False          # set by the --workers supervisor for its children, never a flag
    worker_index: int = 0


def env_name(flag: str) -> str:
    """--admin-listen -> AUTHZ_ADMIN_LISTEN"""
    return ENV_PREFIX + flag.lstrip("-").replace("-", "_").upper()


def split_host_port(address: str, flag: str) -> tuple[str, int]:
    """'127.0.0.1:50051', '[::1]:50051' or ':50051' (all interfaces) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{flag}: expected HOST:PORT, e.g. 127.0.0.1:50051; got {address!r}")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def watch_listen_address(config: Config) -> str | None:
    """The streaming listener's address: --watch-listen as given, or by default --listen's host with its port + 1
    (port 0 stays 0: a free port); None with --watch-listen off."""
    if config.watch_listen is None:
        return None
    if config.watch_listen:
        return config.watch_listen
    host, port = split_host_port(config.listen, "--listen")
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port + 1 if port else 0}"


def listen_error(flag: str, address: str, exc: BaseException) -> str:
    """The one line a listener that cannot bind is reported with: the address, why, and the flag that sets it."""
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        why = "the address is already in use"
    else:
        why = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
    return (f"{flag}: cannot listen on {address}: {why}; choose a free address with {flag} "
            f"(or {env_name(flag)}), or stop the process that holds it")


def _positive(kind: Callable[[str], Any], minimum: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


DESCRIPTION = """\
IAM-exact authorization sidecar for Kinesis Video Streams gateways (gRPC).

The decision listener (--listen) serves authz.v1.Authorizer, Envoy's external authorization
(envoy.service.auth.v3.Authorization, see deploy/README.md), gRPC health and reflection. The admin
service authz.v1.PolicyAdmin is only ever served on the separate --admin-listen address (a TCP
address, which then needs --admin-token or mutual TLS, or a unix socket). Every flag can also be
set through the environment variable named after it: --admin-listen -> AUTHZ_ADMIN_LISTEN.
"""

EPILOG = """\
examples:
  python server.py --bundle examples/bundle --state-dir .state
  python server.py --bundle /etc/authz/bundle --listen 0.0.0.0:50051 \\
      --admin-listen unix:/run/authz/admin.sock --metrics-listen 127.0.0.1:9464 --decision-log -
  AUTHZ_ADMIN_TOKEN=s3cret authz serve --bundle b/ --admin-listen 127.0.0.1:50052
  fleet mode (every sidecar on one PostgreSQL store; the bundle is published to it, not given with --bundle):
    authz push --store postgresql://authz@db:5432/authz --store-key-file /run/secrets/store-key examples/bundle
    authz serve --store postgresql://authz@db:5432/authz --store-key-file /run/secrets/store-key

SIGTERM drains in-flight calls (--drain-grace) and exits 0.

The decision path runs compiled (`make native`, part of `make setup`) while that build is newer than
every source file, else from the sources (same answers, slower); the `listening` log line and Status
say which ("engine"). To run the sources always:
  AUTHZ_PURE_PYTHON=1 python server.py --bundle examples/bundle --state-dir .state
"""


class _AppendReplacingDefault(argparse.Action):
    """A repeatable flag whose first use replaces the default (or environment value) instead of adding to it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        current = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, [*(current if isinstance(current, list) else []), values])


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)

    def flag(name: str, help_text: str, *, secret: bool = False, **kw: Any) -> None:
        env = env_name(name)
        default = kw.pop("default", None)
        shown = f"; default {default}" if default is not None else ""
        if env in os.environ and not secret:   # a secret is read after parsing, so --help never prints it
            default = os.environ[env]          # argparse applies `type` to string defaults
        ap.add_argument(name, default=default, help=f"{help_text}{shown} [env {env}]", **kw)

    flag("--bundle", "directory of bundle files (IAM get-account-authorization-details JSON or hand-written "
                     "YAML/JSON), watched for changes; it must exist at start (the server exits otherwise). "
                     "Without it the server starts with no policies and denies everything until some are "
                     "loaded through the admin service or --state-dir; e.g. --bundle examples/bundle",
         type=Path, metavar="DIR")
    flag("--demo", "serve the example bundle shipped with kvs-authz (examples/bundle: example users with "
                   "published access keys; for trying the sidecar, never for real traffic) when --bundle is not "
                   "given or does not exist, as in the container image with nothing mounted; refused when "
                   "--bundle names an existing directory; e.g. AUTHZ_DEMO=1", action="store_true")
    flag("--listen", "decision listener: Authorizer + health + reflection; e.g. --listen 0.0.0.0:50051",
         default=settings.DEFAULT_LISTEN, metavar="HOST:PORT")
    flag("--watch-listen", "streaming listener: authz.v1.Authorizer/Watch (a grpc.aio server on its own thread, "
                           "with the decision listener's TLS settings; the decision listener redirects Watch calls "
                           f"here); HOST:PORT, or {settings.WATCH_OFF} for none. Default: --listen's host with its "
                           "port + 1, or a free port (logged) when that one is taken; set it when a firewall must "
                           "know the port; e.g. --watch-listen 0.0.0.0:50053", metavar="ADDR")
    flag("--max-watches", "open Watch streams each process holds at most (each costs about 25 KB); one more is "
                          "refused with RESOURCE_EXHAUSTED; e.g. --max-watches 20000",
         type=_positive(int, 1), default=settings.MAX_WATCHES, metavar="N")
    flag("--max-authorize-streams", "open AuthorizeStream streams each process holds at most (on the streaming "
                                    "listener; one stream carries many decisions); one more is refused with "
                                    "RESOURCE_EXHAUSTED; e.g. --max-authorize-streams 2000",
         type=_positive(int, 1), default=settings.MAX_AUTHORIZE_STREAMS, metavar="N")
    flag("--admin-listen", "admin listener (PolicyAdmin + health), never the decision listener: HOST:PORT or "
                           "unix:PATH; e.g. --admin-listen unix:/run/authz/admin.sock. Without it there is no "
                           "admin service", metavar="ADDR")
    flag("--admin-token", "bearer token every admin call must present as metadata 'authorization: Bearer TOKEN'; "
                          "prefer the environment variable or --admin-token-file over the command line (visible in ps); "
                          "e.g. AUTHZ_ADMIN_TOKEN=$(cat /run/secrets/authz-admin)", secret=True,
         metavar="TOKEN")
    flag("--admin-token-file", "read the admin token from this file (first line); e.g. /run/secrets/authz-admin",
         type=Path, metavar="PATH")
    flag("--tls-cert", "PEM certificate chain for both listeners (TCP); e.g. --tls-cert /etc/authz/tls.crt",
         type=Path, metavar="PATH")
    flag("--tls-key", "PEM private key for --tls-cert; e.g. --tls-key /etc/authz/tls.key", type=Path, metavar="PATH")
    flag("--tls-client-ca", "PEM CA bundle: require client certificates signed by it (mutual TLS) on both "
                            "listeners; on the admin listener this authenticates admin callers without a token",
         type=Path, metavar="PATH")
    flag("--state-dir", "directory for the SQLite log of admin changes and sessions, replayed at start; "
                        "without it admin changes live only in memory; e.g. --state-dir /var/lib/authz",
         type=Path, metavar="DIR")
    flag("--store", "fleet mode: keep the change log (admin changes, access keys, AssumeRole sessions) and the "
                    "published bundle in this shared PostgreSQL database, so that every sidecar pointed at it serves "
                    "the same state; postgresql://USER@HOST:PORT/DB (or postgres://, or a unix socket: "
                    "postgresql://USER@/DB?host=/run/postgresql). The bundle is published with `authz push --store "
                    "URL DIR`, so --bundle is refused with it; needs the store key (--store-key-file or "
                    f"{KEY_ENV}); pass the password in PGPASSWORD or ~/.pgpass, not in the URL on the command line "
                    "(visible in ps). Without --store nothing is shared; e.g. --store "
                    "postgresql://authz@db.internal:5432/authz", metavar="URL")
    flag("--store-key-file", "with --store: read the fleet's store key (base64 of 32 bytes, sealing the secrets "
                             f"kept in the store) from this file; or set {KEY_ENV} to the key itself (never a plain "
                             "flag, so that it is not visible in ps). Every sidecar of a fleet needs the same key; "
                             "make one with `head -c 32 /dev/urandom | base64`; e.g. --store-key-file "
                             "/run/secrets/authz-store-key", type=Path, metavar="PATH")
    flag("--cache-size", "entries of the decision cache and of the decision port's answer memo, each "
         "(0 disables both); e.g. --cache-size 200000",
         type=_positive(int, 0), default=DEFAULT_CACHE_SIZE, metavar="N")
    flag("--memo-bytes", "bytes the decision port's answer and context memos may hold together (each entry is "
         f"charged what it keeps alive; requests over {settings.MEMO_MAX_REQUEST_BYTES} bytes are never "
         "memoised); e.g. --memo-bytes 33554432",
         type=_positive(int, 0), default=settings.MEMO_MAX_BYTES, metavar="BYTES")
    flag("--simulate-processes", "processes that run Simulate calls, so that a large one never slows decisions; "
         "at most this many Simulates at once, more are refused (RESOURCE_EXHAUSTED); 0 runs them on the server "
         "threads; e.g. --simulate-processes 2",
         type=_positive(int, 0), default=settings.SIMULATE_PROCESSES, metavar="N")
    flag("--metrics-listen", "serve Prometheus metrics (text format) at http://ADDR/metrics (with --workers N, "
                             "worker i on PORT+i); e.g. --metrics-listen 127.0.0.1:9464", metavar="HOST:PORT")
    flag("--decision-log", "append one JSON line per decision (time, request id, principal, action, resource, "
                           "decision, deciding statements, revision, latency) to PATH, or '-' for stdout; "
                           "secrets are never logged; e.g. --decision-log /var/log/authz/decisions.jsonl",
         metavar="PATH|-")
    flag("--workers", "processes sharing the decision port through SO_REUSEPORT; with N > 1, --state-dir (or "
                      "--store) is required, worker 0 alone serves the admin listener, and every worker follows "
                      f"the shared state (within {settings.WORKER_SYNC_INTERVAL} s under --state-dir; as the store "
                      "notifies it with --store, each worker a member of the fleet); e.g. --workers 2",
         type=_positive(int, 1), default=1, metavar="N")
    flag("--threads", "threads serving gRPC calls in each process; e.g. --threads 16", type=_positive(int, 1),
         default=settings.DEFAULT_THREADS, metavar="N")
    flag("--watch-interval", "seconds between checks of the bundle directory for changes (0 disables "
                             "watching; reload through the admin Reload call); e.g. --watch-interval 5",
         type=_positive(float, 0), default=DEFAULT_WATCH_INTERVAL, metavar="SECONDS")
    flag("--require-no-new-access", "refuse a reloaded bundle that allows any (principal, action, resource) the "
                                     "state being served does not, as an invalid bundle is refused: the last good "
                                     "state keeps serving, the load error (Status, the Reload answer) lists the new "
                                     "access (docs/analysis.md); --bundle only (a fleet gates `authz push "
                                     "--require-no-new-access`); e.g. AUTHZ_REQUIRE_NO_NEW_ACCESS=1",
         action="store_true")
    flag("--drain-grace", "on SIGTERM, seconds in-flight calls get to finish; e.g. --drain-grace 30",
         type=_positive(float, 0), default=settings.DRAIN_GRACE_SECONDS, metavar="SECONDS")
    flag("--principal-from", f"Envoy ext_authz (served on the decision listener): who the caller is; "
                             f"{PRINCIPAL_FROM_HELP}; e.g. --principal-from header:x-authenticated-principal",
         default="sigv4", metavar="SOURCE")
    flag("--region", "Envoy ext_authz: the regions this gateway serves (repeat the flag or separate with commas, "
                     f"at most {MAX_REGIONS}); a request signed for another region is refused "
                     "(InvalidSignatureException), and the first region is where names resolve for callers without "
                     "a SigV4 scope (header: and peer sources); e.g. --region us-west-2", default="us-east-1",
         metavar="REGION", action=_AppendReplacingDefault)
    flag("--trusted-proxies", "Envoy ext_authz: comma-separated CIDRs of proxies in front of Envoy whose "
                              "X-Forwarded-For entries are believed for aws:SourceIp; e.g. --trusted-proxies "
                              "10.0.0.0/8", default="", metavar="CIDRS")
    flag("--assume-role-auth", "who the caller of AssumeRole on the decision port is: none (the request's "
                               "`caller`, believed: for a gateway calling on its clients' behalf) or sigv4 (the "
                               "request must carry the STS AssumeRole HTTP request signed with the caller's key; "
                               "every parameter comes from its signed body); e.g. --assume-role-auth sigv4",
         default="none", metavar="MODE", choices=list(settings.ASSUME_ROLE_AUTH_MODES))
    flag("--otlp-endpoint", "OpenTelemetry tracing: export a span per decision RPC (Authorize, AuthorizeBatch, "
                            "Simulate, Check), child of the caller's W3C traceparent, to this OTLP/gRPC collector; "
                            "needs pip install 'kvs-authz[otel]'; e.g. --otlp-endpoint http://127.0.0.1:4317",
         metavar="URL")
    flag("--log-level", "DEBUG, INFO, WARNING or ERROR; e.g. --log-level DEBUG", default="INFO", metavar="LEVEL",
         type=str.upper, choices=list(LOG_LEVELS))
    flag("--log-format", "text, or json: one object per line with time, level, logger, message and the request "
                         "id of the call it is about; e.g. --log-format json", default="text", metavar="FORMAT",
         type=str.lower, choices=list(LOG_FORMATS))
    return ap


def parse_config(argv: Sequence[str] | None = None, prog: str | None = None) -> Config:
    """Flags (and environment) -> Config; exits with a usage message naming the flag when they do not fit."""
    ap = build_parser(prog)
    a = ap.parse_args(argv)
    for action in ap._actions:   # argparse checks `choices` on the command line only, not on an environment default
        if action.choices is not None and getattr(a, action.dest) not in action.choices:
            flag_name = action.option_strings[-1]
            ap.error(f"{flag_name}: {os.environ.get(env_name(flag_name))!r} (from {env_name(flag_name)}) is not one "
                     f"of {', '.join(map(str, action.choices))}; e.g. {flag_name} {next(iter(action.choices))}")
    token: str | None = a.admin_token or os.environ.get(env_name("--admin-token")) or None
    if a.admin_token_file is not None:
        try:
            token = a.admin_token_file.read_text(encoding="utf-8").splitlines()[0].strip() or None
        except (OSError, IndexError) as exc:
            ap.error(f"--admin-token-file: cannot read a token from {a.admin_token_file}: {exc}")
    demo = bool(a.demo) if a.demo in (None, True) else SWITCH_VALUES.get(str(a.demo).strip().lower())
    if demo is None:
        ap.error(f"--demo: {a.demo!r} (from {env_name('--demo')}) is not a switch; use {env_name('--demo')}=1 "
                 f"to serve the example bundle, or {env_name('--demo')}=0")
    store_url, store_key = _fleet(ap, a, demo)
    gate = a.require_no_new_access
    gate = bool(gate) if gate in (None, True) else SWITCH_VALUES.get(str(gate).strip().lower())
    if gate is None:
        ap.error(f"--require-no-new-access: {a.require_no_new_access!r} (from {env_name('--require-no-new-access')}) "
                 "is not a switch; use 1 or 0")
    if gate and store_url is not None:
        ap.error("--require-no-new-access applies to --bundle reloads; in fleet mode gate the bundle when it is "
                 "published: authz push --require-no-new-access")
    bundle = a.bundle
    if demo:
        if bundle is not None and bundle.is_dir():
            ap.error(f"--demo serves the example bundle, but --bundle {str(bundle)!r} holds a bundle of its own; "
                     f"unset --demo ({env_name('--demo')}) to serve it")
        bundle = next((d for d in DEMO_BUNDLE_DIRS if d.is_dir()), None)
        if bundle is None:
            ap.error(f"--demo: the example bundle is not installed here (looked in "
                     f"{', '.join(map(str, DEMO_BUNDLE_DIRS))}); give --bundle DIR instead")
    elif bundle is not None and not bundle.is_dir():
        ap.error(f"--bundle: {str(bundle)!r} does not exist or is not a directory; point --bundle (or "
                 f"{env_name('--bundle')}) at the directory of bundle files, e.g. --bundle examples/bundle, or "
                 f"leave it out to start empty. In a container, mount your bundle directory at {bundle} "
                 f"(docker run -v /path/to/bundle:{bundle}:ro ...), or set {env_name('--demo')}=1 to try the "
                 "example policies")
    try:
        split_host_port(a.listen, "--listen")
        if a.metrics_listen:
            split_host_port(a.metrics_listen, "--metrics-listen")
        if a.admin_listen and not a.admin_listen.startswith(UNIX_PREFIX):
            split_host_port(a.admin_listen, "--admin-listen")
        watch_listen: str | None = (a.watch_listen or "").strip()
        if watch_listen == settings.WATCH_OFF:
            watch_listen = None
        elif watch_listen:
            split_host_port(watch_listen, "--watch-listen")
            if watch_listen in (a.listen, a.admin_listen, a.metrics_listen) and not watch_listen.endswith(":0"):
                raise ValueError(f"--watch-listen {watch_listen}: another listener has that address; give the "
                                 "streaming listener its own port, or --watch-listen off")
        elif split_host_port(a.listen, "--listen")[1] == 65535:
            raise ValueError("--watch-listen: the default is --listen's port + 1, and --listen uses 65535; "
                             "give --watch-listen HOST:PORT (or off)")
    except ValueError as exc:
        ap.error(str(exc))
    try:
        parse_principal_from(a.principal_from)
        region = ",".join(parse_regions(a.region))
        proxies = parse_trusted_proxies(a.trusted_proxies)
    except ValueError as exc:
        ap.error(str(exc))
    if (a.tls_cert is None) != (a.tls_key is None):
        ap.error("--tls-cert and --tls-key go together")
    if a.tls_client_ca is not None and a.tls_cert is None:
        ap.error("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key")
    if a.admin_listen:
        if a.admin_listen == a.listen and not a.listen.endswith(":0"):
            ap.error("--admin-listen must differ from --listen: the admin service is never on the decision listener")
        if not a.admin_listen.startswith(UNIX_PREFIX) and token is None and a.tls_client_ca is None:
            ap.error("an admin listener on TCP needs --admin-token (or AUTHZ_ADMIN_TOKEN) or --tls-client-ca; "
                     "or use a unix socket: --admin-listen unix:PATH")
    elif token is not None:
        ap.error("--admin-token without --admin-listen: there is no admin listener to protect")
    if a.workers > 1 and a.state_dir is None and store_url is None:
        ap.error("--workers > 1 needs --state-dir (or --store): the worker processes share admin changes and "
                 "sessions through it")
    return Config(bundle=bundle, listen=a.listen, admin_listen=a.admin_listen or None, admin_token=token,
                  tls_cert=a.tls_cert, tls_key=a.tls_key, tls_client_ca=a.tls_client_ca, state_dir=a.state_dir,
                  store_url=store_url, store_key=store_key,
                  cache_size=a.cache_size, metrics_listen=a.metrics_listen or None,
                  decision_log=a.decision_log or None, workers=a.workers, threads=a.threads,
                  watch_interval=a.watch_interval, drain_grace=a.drain_grace, log_level=a.log_level,
                  log_format=a.log_format,
                  principal_from=a.principal_from.strip(), region=region, trusted_proxies=proxies,
                  memo_bytes=a.memo_bytes, simulate_processes=a.simulate_processes,
                  assume_role_auth=a.assume_role_auth, otlp_endpoint=a.otlp_endpoint or None, demo=demo,
                  require_no_new_access=bool(gate),
                  watch_listen=watch_listen, max_watches=a.max_watches,
                  max_authorize_streams=a.max_authorize_streams)


def check_store_url(url: str, flag: str = "--store") -> None:
    """A fleet store URL that PostgreSQL can be asked with, and what fleet mode needs installed; ValueError naming
    `flag` otherwise (without the URL, which may hold a password)."""
    if not url.startswith(URL_SCHEMES):
        scheme = url.partition("://")[0] if "://" in url else ""
        found = f"the scheme {scheme + '://'!r}" if scheme else "no postgresql:// scheme"
        raise ValueError(f"{flag}: the store must be a PostgreSQL URL, got {found}; e.g. {flag} "
                         "postgresql://authz@db.internal:5432/authz (or postgresql://authz@/authz?host=/run/postgresql "
                         "for a unix socket)")
    try:
        PgChangeLog(url)           # parses the URL; connects only when first used
    except (ValueError, StorageFailure) as exc:
        raise ValueError(f"{flag}: {exc}") from None
    if importlib.util.find_spec("cryptography") is None:
        raise ValueError(f"{flag}: the store's secrets are sealed with cryptography, which is not installed: "
                         "pip install 'kvs-authz[fleet]'")


def read_store_key(key_file: Path | None, flag: str = "--store-key-file") -> bytes | None:
    """The fleet's store key from `key_file`, else from AUTHZ_STORE_KEY; None when neither is given.
    ValueError (saying what to fix) when it cannot be read or is not base64 of 32 bytes."""
    if key_file is not None:
        try:
            text = key_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"{flag}: cannot read the store key from {key_file}: {exc.strerror or exc}") from None
        return parse_key(text, f"{flag} {key_file}")
    text = os.environ.get(KEY_ENV, "")
    return parse_key(text, KEY_ENV) if text.strip() else None


def _fleet(ap: argparse.ArgumentParser, a: argparse.Namespace, demo: bool) -> tuple[str | None, bytes | None]:
    """--store, its key and what may not go with it -> (store URL, key); exits naming the flag otherwise."""
    url = (a.store or "").strip() or None
    try:
        key = read_store_key(a.store_key_file)
    except ValueError as exc:
        ap.error(str(exc) + ("" if url is not None else " (the store key is only used with --store)"))
    if url is None:
        if key is not None:
            given = "--store-key-file" if a.store_key_file is not None else KEY_ENV
            ap.error(f"{given} without --store: the store key seals secrets in a shared store; give --store URL "
                     f"(or {env_name('--store')}) too, or drop {given}")
        return None, None
    try:
        check_store_url(url)
    except ValueError as exc:
        ap.error(str(exc))
    if demo:
        ap.error(f"--demo with --store: {FLEET_BUNDLE} (the example bundle too: `authz push --store URL "
                 f"examples/bundle`); unset --demo ({env_name('--demo')})")
    if a.bundle is not None:
        ap.error(f"--bundle with --store: {FLEET_BUNDLE}, and start the sidecar without --bundle "
                 f"({env_name('--bundle')})")
    if key is None:
        ap.error(f"--store needs the store key that seals the secrets kept in the store (access keys, session "
                 f"credentials): {STORE_KEY_HOW}")
    return url, key
