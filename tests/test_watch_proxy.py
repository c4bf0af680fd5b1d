"""The Watch example (examples/watch_proxy): a client streams PutMedia through the proxy to a real upstream while a
real sidecar's Watch says Allow; a Deny cuts the stream off, a deny or an absent sidecar refuses it at connect.
And, through the real Envoy, x-authz-valid-for reaches the upstream for a role session (docs/gateway.md).

The client and the upstream play PutMedia: the client sends a fragment, the upstream answers each fragment with
an ack line, the client sends the next one on that ack. The tests wait on those events (so many acks seen, the
connection's end), never on sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
import math
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import yaml
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from authz.aio_client import AsyncAdminClient, AsyncAuthzClient
from bench.gateway_env import Envoy, Sidecar, free_port, render_envoy_config
from tests.example_ids import ADMIN as ADMIN_KEY, CAMERA as CAMERA_KEY, ACCOUNT, REGION, SHARED_STREAM, \
    YOUR_STREAM, Key, user
from tests.gateway_env import Gateway, gateway  # noqa: F401 (gateway: a fixture)
from tests.server_fixture import ServerProcess, copy_example_bundle, start_server
from tests.test_gateway_envoy import assume_partner_role, put_media

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
CAMERA_WRITER = f"arn:aws:iam::{ACCOUNT}:policy/KinesisVideoCameraWriter"
DENY_PUT = {"Version": "2012-10-17",
            "Statement": [{"Effect": "Deny", "Action": "kinesisvideo:PutMedia", "Resource": "*"}]}
FRAGMENT_BYTES = 16 * 1024
FLOWING_ACKS = 3                # acks seen before a test calls the stream established
# The bound: both connections end within 1 s of the Deny's acknowledgement. Here it is a few tens of
# milliseconds (the watch message, then two aborts), so 1 s leaves a wide margin on a loaded machine.
CUT_OFF_SECONDS = 1.0
CLOCK_EDGE_SECONDS = 3          # a Deny whose time condition starts to hold this long after it is written
ENVOY_SLACK_SECONDS = 0.25      # Envoy's stream limit starts a few ms after the check that computed it
ENVOY_CAP_SECONDS = 4           # the Lua filter's cap in the Envoy test (docs/gateway.md: 3600), over CLOCK_EDGE
EVENT_TIMEOUT = 30.0            # how long a test waits for an event that should come before it fails
RESUME_SECONDS = 0.5            # the proxy's wait for an Allow after UNAVAILABLE, in the sidecar-lost test


def _load_proxy() -> ModuleType:
    spec = importlib.util.spec_from_file_location("watch_proxy", ROOT / "examples" / "watch_proxy" / "proxy.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


wp = _load_proxy()


# ---------------------------------------------------------------------------------------------
# The parts: sidecar, upstream, client


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("watch-proxy")
    s = start_server(copy_example_bundle(root / "bundle"), root / "state")
    yield s
    s.kill()


def camera_user(server: ServerProcess, name: str) -> str:
    """A user of its own for one test, with the example camera's policy (PutMedia on any stream)."""
    with server.admin() as admin:
        admin.create_user(ACCOUNT, name)
        admin.attach_policy(ACCOUNT, "user", name, CAMERA_WRITER)
    return user(name)


@dataclass
class Upstream:
    """The media service: acks every fragment with a line, notes how each connection ended and when."""

    server: asyncio.Server | None = None
    connections: int = 0
    acks: int = 0
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Future[float] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    async def session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n")
            while True:
                await reader.readexactly(FRAGMENT_BYTES)
                self.acks += 1
                self.progress.set()
                writer.write(b'{"EventType":"RECEIVED","Fragment":%d}\n' % self.acks)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            if not self.ended.done():
                self.ended.set_result(time.monotonic())
        finally:
            writer.close()

    async def until_acks(self, n: int) -> None:
        while self.acks < n:
            self.progress.clear()
            await self.progress.wait()

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[:2]  # type: ignore[no-any-return]


@dataclass
class Client:
    """A camera: the PutMedia head, then fragments, one at a time (the next on the ack of the last), as many as
    the test asked for (`more`); idle in between, until the connection ends."""

    status_line: bytes = b""
    acks: int = 0
    wanted: int = FLOWING_ACKS
    ended: float = 0.0              # time.monotonic() when the connection ended
    ended_wall: float = 0.0         # and time.time(), to compare with a policy's instant
    progress: asyncio.Event = field(default_factory=asyncio.Event)

    def more(self, fragments: int) -> None:
        self.wanted += fragments
        self.progress.set()

    async def put_media(self, proxy: tuple[str, int], principal: str, stream_arn: str = YOUR_STREAM) -> bytes:
        """Streams until the proxy or the upstream ends it; returns what was read after the last ack line."""
        reader, writer = await asyncio.open_connection(*proxy)
        writer.write(f"POST /putMedia HTTP/1.1\r\nx-authz-principal: {principal}\r\n"
                     f"x-amzn-stream-arn: {stream_arn}\r\n\r\n".encode())
        rest, sender = b"", None
        try:
            self.status_line = await reader.readline()
            if not self.status_line.startswith(b"HTTP/1.1 200"):
                return await reader.read()
            await reader.readuntil(b"\r\n\r\n")
            sender = asyncio.create_task(self.send(writer))
            while (line := await reader.readline()).endswith(b"\n"):
                self.acks += 1
                self.progress.set()
            rest = line
        except ConnectionError:
            pass
        finally:
            self.ended, self.ended_wall = time.monotonic(), time.time()
            if sender is not None:
                sender.cancel()
            writer.close()
        return rest

    async def send(self, writer: asyncio.StreamWriter) -> None:
        sent = 0
        with contextlib.suppress(ConnectionError):
            while True:
                while sent >= self.wanted or sent > self.acks:
                    self.progress.clear()
                    await self.progress.wait()
                writer.write(b"\x1a" * FRAGMENT_BYTES)
                await writer.drain()
                sent += 1


@dataclass
class Rig:
    proxy: Any                       # wp.WatchProxy
    address: tuple[str, int]
    upstream: Upstream
    ends: list[str]


@asynccontextmanager
async def rig(sidecar_addr: str, **kw: Any) -> AsyncIterator[Rig]:
    """Upstream, then the proxy (asking the sidecar at `sidecar_addr`) in front of it, on loopback."""
    upstream = Upstream()
    upstream.server = await asyncio.start_server(upstream.session, "127.0.0.1", 0)
    ends: list[str] = []
    async with AsyncAuthzClient(sidecar_addr, options=wp.SIDECAR_CHANNEL_OPTIONS) as authz:
        proxy = wp.WatchProxy(authz, upstream.address, ended=lambda _request, why: ends.append(why), **kw)
        server = await proxy.serve("127.0.0.1", 0)
        try:
            yield Rig(proxy, server.sockets[0].getsockname()[:2], upstream, ends)
        finally:
            server.close()
            upstream.server.close()


async def flowing(r: Rig, client: Client, principal: str) -> asyncio.Task[bytes]:
    """Start the client's stream and return once the upstream has acked FLOWING_ACKS fragments."""
    stream = asyncio.create_task(client.put_media(r.address, principal))
    await asyncio.wait_for(r.upstream.until_acks(FLOWING_ACKS), EVENT_TIMEOUT)
    assert client.status_line.startswith(b"HTTP/1.1 200")
    return stream


# ---------------------------------------------------------------------------------------------
# Cut off on a deny


def test_an_admin_deny_cuts_the_stream_off_within_a_second(sidecar: ServerProcess) -> None:
    principal = camera_user(sidecar, "proxy-cut")

    async def main() -> None:
        async with rig(sidecar.addr) as r, AsyncAdminClient(sidecar.admin_addr, token=sidecar.token) as admin:
            client = Client()
            stream = await flowing(r, client, principal)
            await admin.put_inline_policy(ACCOUNT, "user", "proxy-cut", "deny-put", DENY_PUT)
            acknowledged = time.monotonic()
            await asyncio.wait_for(stream, EVENT_TIMEOUT)
            upstream_end = await asyncio.wait_for(r.upstream.ended, EVENT_TIMEOUT)
            assert r.ends == [wp.DENIED]
            assert client.ended - acknowledged < CUT_OFF_SECONDS, "the client's stream outlived the deny"
            assert upstream_end - acknowledged < CUT_OFF_SECONDS, "the upstream's stream outlived the deny"
            # A new stream of the same principal is now refused before it reaches the upstream.
            again = Client()
            body = await asyncio.wait_for(again.put_media(r.address, principal), EVENT_TIMEOUT)
            assert again.status_line.startswith(b"HTTP/1.1 403") and b"AccessDeniedException" in body
            assert r.upstream.connections == 1

    asyncio.run(main())


def test_a_change_that_keeps_the_allow_leaves_the_stream_alone(sidecar: ServerProcess) -> None:
    principal = camera_user(sidecar, "proxy-keep")

    async def main() -> None:
        async with rig(sidecar.addr) as r, AsyncAdminClient(sidecar.admin_addr, token=sidecar.token) as admin:
            client = Client()
            stream = await flowing(r, client, principal)
            # A new revision that leaves this stream's answer as it was: another user's Deny. The stream still
            # flows afterwards (more fragments acked), and the deny that follows is the first thing that ends it.
            await admin.create_user(ACCOUNT, "proxy-other")
            await admin.put_inline_policy(ACCOUNT, "user", "proxy-other", "deny-put", DENY_PUT)
            client.more(FLOWING_ACKS)
            await asyncio.wait_for(r.upstream.until_acks(r.upstream.acks + FLOWING_ACKS), EVENT_TIMEOUT)
            assert not stream.done() and r.ends == []
            await admin.put_inline_policy(ACCOUNT, "user", "proxy-keep", "deny-put", DENY_PUT)
            await asyncio.wait_for(stream, EVENT_TIMEOUT)
            assert r.ends == [wp.DENIED]

    asyncio.run(main())


def test_a_time_condition_cuts_the_stream_off_at_its_instant(sidecar: ServerProcess) -> None:
    principal = camera_user(sidecar, "proxy-clock")

    async def main() -> None:
        async with rig(sidecar.addr) as r, AsyncAdminClient(sidecar.admin_addr, token=sidecar.token) as admin:
            client = Client()
            stream = await flowing(r, client, principal)
            # A Deny from a few seconds ahead: the answer stays Allow for now (no message), and at that instant
            # the sidecar re-decides the watch by itself, with no other change.
            edge = math.ceil(time.time()) + CLOCK_EDGE_SECONDS
            start = datetime.fromtimestamp(edge, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            await admin.put_inline_policy(ACCOUNT, "user", "proxy-clock", "deny-later", {
                "Version": "2012-10-17", "Statement": [{
                    "Effect": "Deny", "Action": "kinesisvideo:PutMedia", "Resource": "*",
                    "Condition": {"DateGreaterThanEquals": {"aws:CurrentTime": start}}}]})
            await asyncio.wait_for(stream, EVENT_TIMEOUT)
            assert r.ends == [wp.DENIED]
            assert edge <= client.ended_wall < edge + CUT_OFF_SECONDS, (client.ended_wall - edge)

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# Refused at connect


def test_a_denied_principal_is_refused_at_connect(sidecar: ServerProcess) -> None:
    async def main() -> None:
        async with rig(sidecar.addr) as r:
            for principal in (user("viewer"), user("nobody-at-all")):
                client = Client()
                body = await asyncio.wait_for(client.put_media(r.address, principal), EVENT_TIMEOUT)
                assert client.status_line.startswith(b"HTTP/1.1 403"), (principal, client.status_line)
                assert b"AccessDeniedException" in body and principal.encode() in body
            # The single-stream writer may write to its stream only.
            client = Client()
            await asyncio.wait_for(client.put_media(r.address, user("stream-writer"), SHARED_STREAM), EVENT_TIMEOUT)
            assert client.status_line.startswith(b"HTTP/1.1 403")
            assert r.upstream.connections == 0 and r.ends == []

    asyncio.run(main())


def test_a_malformed_request_is_refused(sidecar: ServerProcess) -> None:
    async def main() -> None:
        async with rig(sidecar.addr) as r:
            reader, writer = await asyncio.open_connection(*r.address)
            writer.write(b"POST /putMedia HTTP/1.1\r\nx-amzn-stream-arn: " + YOUR_STREAM.encode() + b"\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), EVENT_TIMEOUT)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 400") and b"x-authz-principal" in answer
            assert r.upstream.connections == 0

    asyncio.run(main())


def test_the_upstream_gets_one_request_per_connection() -> None:
    async def head_of(raw: bytes) -> Any:
        reader = asyncio.StreamReader()
        reader.feed_data(raw)
        reader.feed_eof()
        return await wp.read_request(reader)

    sent = (f"POST /putMedia HTTP/1.1\r\nConnection: keep-alive\r\nx-authz-principal: {user('camera')}\r\n"
            f"x-amzn-stream-arn: {YOUR_STREAM}\r\ntransfer-encoding: chunked\r\n\r\n").encode()
    request = asyncio.run(head_of(sent + b"4\r\nbody\r\n"))
    assert (request.principal, request.stream_arn) == (user("camera"), YOUR_STREAM)
    # What goes upstream asks it to close after this request: a second one pipelined after the body (for
    # another stream, say) is never read as a request, since only this one was authorised.
    assert request.head == sent.replace(b"Connection: keep-alive\r\n", b"").replace(
        b"\r\n\r\n", b"\r\nconnection: close\r\n\r\n")
    for bad in (sent.replace(b"x-amzn-stream-arn", b"x-authz-principal"),       # a header twice
                sent.replace(b"\r\ntransfer-encoding", b"\r\n transfer-encoding")):  # obsolete line folding
        with pytest.raises(wp.Refused) as info:
            asyncio.run(head_of(bad))
        assert info.value.status == 400


# ---------------------------------------------------------------------------------------------
# Fail closed without the sidecar


def test_without_the_sidecar_streams_are_refused_and_cut_off(tmp_path: Path) -> None:
    server = start_server(copy_example_bundle(tmp_path / "bundle"), tmp_path / "state")
    try:
        async def main() -> None:
            async with rig(server.addr, resume_seconds=RESUME_SECONDS) as r:
                client = Client()
                stream = await flowing(r, client, user("camera"))
                server.kill()               # mid-stream: the watch fails UNAVAILABLE and cannot be opened again
                await asyncio.wait_for(stream, EVENT_TIMEOUT)
                assert r.ends == [wp.RESUME_FAILED]
                # At connect: 503, and nothing reaches the upstream.
                late = Client()
                body = await asyncio.wait_for(late.put_media(r.address, user("camera")), EVENT_TIMEOUT)
                assert late.status_line.startswith(b"HTTP/1.1 503") and b"ServiceUnavailable" in body
                assert r.upstream.connections == 1

        asyncio.run(main())
    finally:
        server.kill()


def test_a_restarted_sidecar_resumes_the_watch_and_the_stream(tmp_path: Path) -> None:
    bundle, state = copy_example_bundle(tmp_path / "bundle"), tmp_path / "state"
    ports = ("--listen", f"127.0.0.1:{free_port()}", "--watch-listen", f"127.0.0.1:{free_port()}")
    servers = [start_server(bundle, state, *ports)]
    principal = camera_user(servers[0], "proxy-resume")
    try:
        async def main() -> None:
            async with rig(servers[0].addr, resume_seconds=EVENT_TIMEOUT) as r:
                client = Client()
                stream = await flowing(r, client, principal)
                # SIGTERM: the watch ends UNAVAILABLE (the server is stopping), the proxy holds the stream and
                # opens the watch again once the sidecar is back on its ports; the stream then flows on.
                await asyncio.to_thread(servers[0].stop)
                servers.append(await asyncio.to_thread(start_server, bundle, state, *ports))
                client.more(FLOWING_ACKS)
                await asyncio.wait_for(r.upstream.until_acks(r.upstream.acks + FLOWING_ACKS), EVENT_TIMEOUT)
                assert not stream.done() and r.ends == []
                # The resumed watch is live: a Deny still cuts the stream off.
                async with AsyncAdminClient(servers[1].admin_addr, token=servers[1].token) as admin:
                    await admin.put_inline_policy(ACCOUNT, "user", "proxy-resume", "deny-put", DENY_PUT)
                await asyncio.wait_for(stream, EVENT_TIMEOUT)
                assert r.ends == [wp.DENIED]

        asyncio.run(main())
    finally:
        for server in servers:
            server.kill()


def test_a_watch_the_sidecar_refuses_refuses_the_stream(tmp_path: Path) -> None:
    server = start_server(copy_example_bundle(tmp_path / "bundle"), tmp_path / "state", "--max-watches", "1")
    try:
        async def main() -> None:
            async with rig(server.addr) as r:
                stream = await flowing(r, Client(), user("camera"))
                second = Client()          # a second watch is past --max-watches: RESOURCE_EXHAUSTED
                body = await asyncio.wait_for(second.put_media(r.address, user("camera")), EVENT_TIMEOUT)
                assert second.status_line.startswith(b"HTTP/1.1 503") and b"ServiceUnavailable" in body
                assert r.upstream.connections == 1 and not stream.done()
                stream.cancel()             # the camera hangs up: the session ends as a stream normally does
                await asyncio.wait_for(r.upstream.ended, EVENT_TIMEOUT)

        asyncio.run(main())
    finally:
        server.kill()


# ---------------------------------------------------------------------------------------------
# The Envoy path: x-authz-valid-for at the upstream


def test_the_valid_for_header_reaches_the_upstream_for_a_role_session(gateway: Gateway) -> None:  # noqa: F811
    session_arn, session = assume_partner_role(gateway, "valid-for-1")
    reply = put_media(gateway, session, name="shared_stream")
    assert reply.status == 200, reply.body
    (rec,) = gateway.upstream.with_header("x-test-id", reply.test_id)
    assert rec.headers["x-authz-principal"] == session_arn
    assert 0 < int(rec.headers["x-authz-valid-for"]) <= 3600      # the session's end, rounded down
    # A user without time conditions: unbounded, so no header at all.
    reply = put_media(gateway, CAMERA_KEY, name="your_stream")
    (rec,) = gateway.upstream.with_header("x-test-id", reply.test_id)
    assert "x-authz-valid-for" not in rec.headers
    # A copy the client sends is removed before ext_authz by the shipped config: signed, the request no longer
    # verifies (the header it signed is gone), so it is refused and never reaches the upstream.
    reply = put_media(gateway, CAMERA_KEY, name="your_stream", extra={"x-authz-valid-for": "99999"})
    assert reply.status == 403, reply.body
    assert gateway.upstream.with_header("x-test-id", reply.test_id) == []


def envoy_recipe(max_seconds: int) -> tuple[list[Any], dict[str, Any]]:
    """The header_mutation removals and the Lua filter of docs/gateway.md's recipe, as the page gives them, with
    the Lua filter's cap lowered to `max_seconds` (so that a test sees it apply)."""
    page = (ROOT / "docs" / "gateway.md").read_text()
    block = page[page.index("**Envoy ends the stream itself**"):].split("```yaml\n", 1)[1].split("```", 1)[0]
    filters = {f["name"]: f for f in yaml.safe_load(block)}
    removals = filters["envoy.filters.http.header_mutation"]["typed_config"]["mutations"]["request_mutations"]
    lua = filters["envoy.filters.http.lua"]
    source = lua["typed_config"]["default_source_code"]
    assert "local MAX_SECONDS = 3600\n" in source["inline_string"]
    source["inline_string"] = source["inline_string"].replace("MAX_SECONDS = 3600", f"MAX_SECONDS = {max_seconds}")
    return removals, lua


@dataclass
class Upstreamed:
    """One request as the upstream saw it: its head, and when it began and ended."""

    head: bytes
    began: float
    ended: asyncio.Future[float] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    async def duration(self) -> float:
        return await asyncio.wait_for(self.ended, EVENT_TIMEOUT) - self.began


def test_envoy_ends_a_stream_when_x_authz_valid_for_runs_out(tmp_path: Path) -> None:
    removals, lua = envoy_recipe(ENVOY_CAP_SECONDS)
    token = tmp_path / "admin-token"
    token.write_text("valid-for-token\n")
    admin_addr = f"127.0.0.1:{free_port()}"
    sidecar = Sidecar(tmp_path, extra_args=("--admin-listen", admin_addr, "--admin-token-file", str(token)))
    try:
        async def main() -> None:
            seen: list[Upstreamed] = []

            async def upstream_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                request = Upstreamed(await reader.readuntil(b"\r\n\r\n"), time.time())
                seen.append(request)
                writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nack\r\n")
                with contextlib.suppress(ConnectionError):
                    while await reader.read(1 << 16):
                        pass
                request.ended.set_result(time.time())
                writer.close()

            upstream = await asyncio.start_server(upstream_session, "127.0.0.1", 0)
            cfg = render_envoy_config(sidecar=("127.0.0.1", sidecar.port),
                                      upstream=upstream.sockets[0].getsockname()[:2])
            hcm = cfg["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            chain = hcm["http_filters"]
            names = [f["name"] for f in chain]
            chain[names.index("envoy.filters.http.header_mutation")]["typed_config"]["mutations"][
                "request_mutations"] = removals
            chain.insert(names.index("envoy.filters.http.router"), lua)
            envoy = await asyncio.to_thread(Envoy, tmp_path, cfg)
            try:
                # The camera is denied PutMedia from a few seconds ahead: allowed now, for that long by the clock.
                edge = math.ceil(time.time()) + CLOCK_EDGE_SECONDS
                start = datetime.fromtimestamp(edge, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
                async with AsyncAdminClient(admin_addr, token="valid-for-token") as admin:
                    await admin.put_inline_policy(ACCOUNT, "user", "camera", "deny-later", {
                        "Version": "2012-10-17", "Statement": [{
                            "Effect": "Deny", "Action": "kinesisvideo:PutMedia", "Resource": "*",
                            "Condition": {"DateGreaterThanEquals": {"aws:CurrentTime": start}}}]})
                client_ended = await stream_through(envoy.port, CAMERA_KEY)
                camera = seen[0]
                valid_for = int(header_of(camera.head, "x-authz-valid-for") or -1)
                assert 0 < valid_for <= CLOCK_EDGE_SECONDS < ENVOY_CAP_SECONDS
                # Envoy resets the upstream's stream that many seconds after it began, a few ms after the check
                # that rounded them down: never after the edge. The client's connection closes up to the
                # listener's delayed_close_timeout (1 s by default) later; nothing reaches the upstream then.
                assert abs(await camera.duration() - valid_for) <= ENVOY_SLACK_SECONDS
                assert edge - 1 < await camera.ended <= edge + ENVOY_SLACK_SECONDS, (camera.ended.result() - edge)
                assert client_ended >= camera.ended.result()
                assert envoy.stat("cluster.kvs_media.upstream_rq_max_duration_reached") == 1

                # The admin's decision is unbounded: the copy the client added is removed in front, and the
                # Lua filter's cap ends the stream (not the client's value, one second).
                await stream_through(envoy.port, ADMIN_KEY, {"x-authz-valid-for": "1"})
                unbounded = seen[1]
                assert header_of(unbounded.head, "x-authz-valid-for") is None
                assert abs(await unbounded.duration() - ENVOY_CAP_SECONDS) <= ENVOY_SLACK_SECONDS
                assert envoy.stat("cluster.kvs_media.upstream_rq_max_duration_reached") == 2
            finally:
                await asyncio.to_thread(envoy.stop)
                upstream.close()

        asyncio.run(main())
    finally:
        sidecar.stop()


def header_of(head: bytes, name: str) -> str | None:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def stream_through(port: int, key: Key, unsigned: dict[str, str] | None = None) -> float:
    """A signed PutMedia through Envoy on `port`: one chunk, then read until the connection ends; returns
    time.time() then. `unsigned`: headers added after signing."""
    request = AWSRequest("POST", f"http://127.0.0.1:{port}/putMedia", headers={
        "x-amzn-stream-name": "your_stream", "Content-Type": "application/octet-stream",
        "X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD", "Transfer-Encoding": "chunked"})
    SigV4Auth(key.credentials(), "kinesisvideo", REGION).add_auth(request)
    headers = {**dict(request.headers.items()), **(unsigned or {})}
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST /putMedia HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n".encode()
                 + "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode() + b"\r\n")
    writer.write(b"4000\r\n" + b"\x1a" * 0x4000 + b"\r\n")
    try:
        while await asyncio.wait_for(reader.read(1 << 16), EVENT_TIMEOUT):
            pass
    except ConnectionError:
        pass
    finally:
        writer.close()
    return time.time()
