"""Watch on live servers: the first message is Authorize's answer, then one message per change of it (admin writes,
reloads, the clock), through the decision listener's redirect, for both clients, --workers and the CLI."""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import shutil

import grpc
import pytest

from authz.aio_client import AsyncAuthzClient
from authz.client import (WATCH_ADDRESS_METADATA_KEY, AdminClient, AuthzClient, CallError, Decision, DecisionKind,
                          TlsFiles, Watching, answer_key, watch_address)
from authz.server import settings
from authz.v1 import authz_pb2 as pb
from tests.gateway_env import make_test_pki
from tests.server_fixture import ServerProcess, copy_example_bundle, start_server
from tests.server_fixture import server_factory  # noqa: F401 - a fixture, requested by name

ACCT = "123456789012"
CAMERA = f"arn:aws:iam::{ACCT}:user/camera"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
PUT, GET = "kinesisvideo:PutMedia", "kinesisvideo:GetMedia"
FLIP_SECONDS = 1.0        # the bound: a change reaches a watch within 1 s of its acknowledgement
WAIT_SECONDS = 10.0       # waiting for something that must come (not a bound under test)
CLI = [sys.executable, "-m", "authz.cli"]


def policy(effect: str, action: str, condition: dict[str, Any] | None = None) -> dict[str, Any]:
    statement: dict[str, Any] = {"Effect": effect, "Action": action, "Resource": "*"}
    if condition is not None:
        statement["Condition"] = condition
    return {"Version": "2012-10-17", "Statement": [statement]}


class Follower:
    """Iterates a Watching on its own thread: each Decision (with the time it arrived), then how it ended."""

    END = object()

    def __init__(self, watching: Watching) -> None:
        self.watching = watching
        self.items: queue.Queue[tuple[float, Any]] = queue.Queue()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            for decision in self.watching:
                self.items.put((time.time(), decision))
            self.items.put((time.time(), self.END))
        except CallError as exc:
            self.items.put((time.time(), exc))

    def next(self, timeout: float = WAIT_SECONDS) -> Decision:
        _, item = self.items.get(timeout=timeout)
        assert isinstance(item, Decision), item
        return item

    def timed(self, timeout: float) -> tuple[float, Decision]:
        at, item = self.items.get(timeout=timeout)
        assert isinstance(item, Decision), item
        return at, item

    def end(self, timeout: float = WAIT_SECONDS) -> CallError | None:
        """None for an end OK; the CallError otherwise."""
        _, item = self.items.get(timeout=timeout)
        if isinstance(item, CallError):
            return item
        assert item is self.END, item
        return None


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("watch")


@pytest.fixture(scope="module")
def server(root: Path) -> Iterator[ServerProcess]:
    s = start_server(copy_example_bundle(root / "bundle"), root / "state", "--decision-log", str(root / "d.jsonl"))
    yield s
    s.kill()


@pytest.fixture
def admin(server: ServerProcess) -> Iterator[AdminClient]:
    with server.admin() as a:
        yield a


def revision(admin: AdminClient) -> int:
    return admin.status().revision


def without_cached(d: Decision) -> pb.AuthorizeResponse:
    copy = pb.AuthorizeResponse()
    copy.CopyFrom(d.proto)
    copy.cached = False
    return copy


# ------------------------------------------------------------------ changes


def test_watch_pushes_each_change_of_the_decision_and_only_then(server: ServerProcess, admin: AdminClient,
                                                               root: Path) -> None:
    with server.client() as authz, authz.watch(CAMERA, PUT, STREAM, request_id="cam-watch") as watching:
        follower = Follower(watching)
        first = follower.next()
        # The first message is what Authorize answers, revision included (`cached` says which cache answered).
        assert without_cached(first) == without_cached(authz.authorize(CAMERA, PUT, STREAM))
        assert first.allowed

        # A change that keeps the answer (the camera may now also describe streams) sends nothing ...
        admin.put_inline_policy(ACCT, "user", "camera", "describe", policy("Allow", "kinesisvideo:DescribeStream"))
        # ... which the next message proves: it is the one of the Deny that follows, not one of the change above.
        admin.put_inline_policy(ACCT, "user", "camera", "deny", policy("Deny", PUT))
        denied_at = revision(admin)
        denied = follower.next(timeout=FLIP_SECONDS)
        assert denied.decision is DecisionKind.EXPLICIT_DENY and denied.revision == denied_at
        assert without_cached(denied) == without_cached(authz.authorize(CAMERA, PUT, STREAM))

        # A bundle reload that changes nothing sends nothing (the next message is the change back).
        reloaded = admin.reload()
        assert reloaded.ok
        admin.delete_inline_policy(ACCT, "user", "camera", "deny")
        back_at = revision(admin)
        back = follower.next(timeout=FLIP_SECONDS)
        assert back.allowed and back.revision == back_at > reloaded.revision
        assert answer_key(back.proto) == answer_key(first.proto)
        admin.delete_inline_policy(ACCT, "user", "camera", "describe")
    assert follower.end() is None          # cancelled: the iteration just stops

    # Each message pushed is a decision log line of rpc Watch, under the watch's request id.
    lines = [json.loads(line) for line in (root / "d.jsonl").read_text().splitlines()]
    pushed = [(r["decision"], r["revision"]) for r in lines if r["rpc"] == "Watch" and r["request_id"] == "cam-watch"]
    assert pushed == [("Allow", first.revision), ("ExplicitDeny", denied_at), ("Allow", back_at)]


def test_a_time_condition_flips_the_decision_at_its_instant(server: ServerProcess, admin: AdminClient) -> None:
    edge = int(time.time()) + 3
    when = datetime.fromtimestamp(edge, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    admin.put_inline_policy(ACCT, "user", "viewer", "from-then", policy(
        "Deny", GET, {"DateGreaterThan": {"aws:CurrentTime": when}}))
    try:
        with server.client() as authz, authz.watch(VIEWER, GET, STREAM) as watching:
            follower = Follower(watching)
            assert follower.next().allowed
            # Nothing else changes: the clock alone flips it, at the first second after `when`.
            flips = edge + 1
            at, denied = follower.timed(timeout=flips - time.time() + FLIP_SECONDS)
            assert denied.decision is DecisionKind.EXPLICIT_DENY
            assert flips <= at < flips + FLIP_SECONDS
            assert authz.authorize(VIEWER, GET, STREAM).decision is DecisionKind.EXPLICIT_DENY
    finally:
        admin.delete_inline_policy(ACCT, "user", "viewer", "from-then")


def test_of_200_watches_only_the_affected_one_hears(server: ServerProcess, admin: AdminClient) -> None:
    streams = [f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/s{i}/1234567890123" for i in range(199)]

    async def main() -> None:
        async with AsyncAuthzClient(server.addr) as authz:
            viewers = [authz.watch(VIEWER, GET, s) for s in streams]
            camera = authz.watch(CAMERA, PUT, STREAM)
            firsts = await asyncio.wait_for(asyncio.gather(*(anext(w) for w in [*viewers, camera])), WAIT_SECONDS)
            assert all(d.allowed for d in firsts)

            await asyncio.to_thread(admin.put_inline_policy, ACCT, "user", "camera", "deny", policy("Deny", PUT))
            one = await asyncio.to_thread(revision, admin)
            heard = await asyncio.wait_for(anext(camera), FLIP_SECONDS)
            assert heard.decision is DecisionKind.EXPLICIT_DENY and heard.revision == one
            # The 199 others heard nothing: their next message is the one of the change that reaches them all.
            await asyncio.to_thread(admin.put_inline_policy, ACCT, "group", "viewers", "deny", policy("Deny", GET))
            everyone = await asyncio.to_thread(revision, admin)
            nexts = await asyncio.wait_for(asyncio.gather(*(anext(w) for w in viewers)), WAIT_SECONDS)
            assert {(d.decision, d.revision) for d in nexts} == {(DecisionKind.EXPLICIT_DENY, everyone)}
            # ... and the camera heard nothing of that one.
            await asyncio.to_thread(admin.delete_inline_policy, ACCT, "user", "camera", "deny")
            back = await asyncio.wait_for(anext(camera), FLIP_SECONDS)
            assert back.allowed and back.revision == everyone + 1
            for w in [*viewers, camera]:
                await w.aclose()
        await asyncio.to_thread(admin.delete_inline_policy, ACCT, "group", "viewers", "deny")

    asyncio.run(main())


# ------------------------------------------------------------------ the request and the redirect


def test_a_watch_refuses_what_authorize_refuses(server: ServerProcess) -> None:
    with server.client() as authz:
        with pytest.raises(CallError) as refused:
            authz.authorize(CAMERA, "not-an-action", STREAM)
        with pytest.raises(CallError) as watched:
            next(iter(authz.watch(CAMERA, "not-an-action", STREAM)))
    assert (watched.value.code, watched.value.reason, watched.value.field, watched.value.message) == (
        refused.value.code, refused.value.reason, refused.value.field, refused.value.message)


def test_the_decision_listener_redirects_watch_to_the_streaming_listener(server: ServerProcess,
                                                                         admin: AdminClient) -> None:
    watch = server.listening[0]["watch"]
    assert admin.status().watch_address == watch           # Status names it too
    with grpc.insecure_channel(server.addr) as channel:
        call = channel.unary_stream("/authz.v1.Authorizer/Watch")(
            pb.AuthorizeRequest(principal=CAMERA, action=PUT, resource=STREAM).SerializeToString())
        with pytest.raises(grpc.RpcError) as info:
            next(call)
    failed: Any = info.value
    assert failed.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"streaming listener at {watch} (--watch-listen)" in failed.details()
    assert WATCH_ADDRESS_METADATA_KEY == settings.WATCH_ADDRESS_HEADER        # the server's name is the clients'
    assert dict(failed.trailing_metadata())[WATCH_ADDRESS_METADATA_KEY] == watch
    # The redirect reads nothing of the request; the streaming listener refuses bytes that are no request.
    for addr, code in ((server.addr, grpc.StatusCode.FAILED_PRECONDITION), (watch, grpc.StatusCode.INVALID_ARGUMENT)):
        with grpc.insecure_channel(addr) as channel, pytest.raises(grpc.RpcError) as garbage:
            next(channel.unary_stream("/authz.v1.Authorizer/Watch")(b"\xff\xff\xff"))
        assert garbage.value.code() == code         # type: ignore[attr-defined]
    # Both clients follow it; given the streaming listener's own address, they need no redirect.
    for addr in (server.addr, watch):
        with AuthzClient(addr) as authz, authz.watch(CAMERA, PUT, STREAM) as watching:
            assert next(iter(watching)).allowed

    async def aio(addr: str) -> Decision:
        async with AsyncAuthzClient(addr) as authz:
            async with authz.watch(CAMERA, PUT, STREAM) as watching:
                return await anext(watching)

    assert asyncio.run(aio(server.addr)).allowed and asyncio.run(aio(watch)).allowed


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to issue test certificates")
def test_the_streaming_listener_speaks_the_decision_listeners_tls(server_factory: Any, tmp_path: Path) -> None:
    (tmp_path / "pki").mkdir()
    pki = make_test_pki(tmp_path / "pki", {})          # the server's certificate: localhost and 127.0.0.1
    s = server_factory(copy_example_bundle(tmp_path / "bundle"), None, "--tls-cert", str(pki.server_cert),
                       "--tls-key", str(pki.server_key), admin=None, token=None, tls=TlsFiles(ca=pki.ca))
    watch = s.listening[0]["watch"]
    port = s.addr.rpartition(":")[2]
    # Dialled by name, redirected to 127.0.0.1: the certificate is checked against the name dialled.
    for addr in (s.addr, f"localhost:{port}", watch):
        with AuthzClient(addr, tls=TlsFiles(ca=pki.ca)) as authz, authz.watch(CAMERA, PUT, STREAM) as watching:
            assert next(iter(watching)).allowed, addr
    with grpc.insecure_channel(watch) as plaintext, pytest.raises(grpc.RpcError):
        next(plaintext.unary_stream("/authz.v1.Authorizer/Watch")(b"", timeout=3))


def test_a_wildcard_address_means_the_host_dialled() -> None:
    assert watch_address("127.0.0.1:50051", "0.0.0.0:50052") == "127.0.0.1:50052"
    assert watch_address("sidecar.internal:50051", "[::]:7000") == "sidecar.internal:7000"
    assert watch_address("[::1]:50051", "0.0.0.0:50052") == "[::1]:50052"
    assert watch_address("dns:///sidecar:50051", "0.0.0.0:1") == "sidecar:1"
    assert watch_address("127.0.0.1:50051", "10.0.0.7:50052") == "10.0.0.7:50052"


def held_next_port() -> tuple[socket.socket, int]:
    """A listening socket on 127.0.0.1:P+1 and a port P free next to it (for --listen: its default watch port taken)."""
    while True:
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1] - 1
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                held.close()
                continue
        return held, port


@pytest.mark.parametrize("workers", [1, 2])
def test_a_taken_default_port_gives_way_to_a_free_one(server_factory: Any, tmp_path: Path, workers: int) -> None:
    held, port = held_next_port()
    with held:
        s = server_factory(copy_example_bundle(tmp_path / "bundle"), tmp_path / "state", "--listen",
                           f"127.0.0.1:{port}", admin=None, token=None, workers=workers)
        watch = s.listening[0]["watch"]
        assert s.addr == f"127.0.0.1:{port}" and watch != f"127.0.0.1:{port + 1}"
        assert any("--watch-listen: the default address" in line and "is taken" in line for line in s.log)
        with s.client() as authz, authz.watch(CAMERA, PUT, STREAM) as watching:     # the redirect finds it
            assert next(iter(watching)).allowed


def test_without_a_streaming_listener_watch_is_unimplemented(server_factory: Any, tmp_path: Path) -> None:
    s = server_factory(copy_example_bundle(tmp_path / "bundle"), None, "--watch-listen", "off", admin=None, token=None)
    assert "watch" not in s.listening[0]
    with s.client() as authz, pytest.raises(CallError) as info:
        next(iter(authz.watch(CAMERA, PUT, STREAM)))
    assert info.value.code == grpc.StatusCode.UNIMPLEMENTED and "--watch-listen" in info.value.message


def test_before_the_first_load_a_watch_is_unavailable(server_factory: Any, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "broken.yaml").write_text("account: [unclosed\n")
    s = server_factory(bundle, None, admin=None, token=None, wait_serving=False)
    with s.client() as authz, pytest.raises(CallError) as info:
        next(iter(authz.watch(CAMERA, PUT, STREAM)))
    assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.reason == "NOT_SERVING"


# ------------------------------------------------------------------ the end of a stream


def test_shutdown_ends_watches_unavailable_saying_to_reconnect(server_factory: Any, tmp_path: Path) -> None:
    s = server_factory(copy_example_bundle(tmp_path / "bundle"), tmp_path / "state")
    with s.client() as authz, authz.watch(CAMERA, PUT, STREAM) as watching:
        follower = Follower(watching)
        assert follower.next().allowed
        s.stop()
        ended = follower.end()
    assert ended is not None and ended.code == grpc.StatusCode.UNAVAILABLE
    assert "stopping" in ended.message and "reconnect" in ended.message


def test_resume_reconnects_after_a_restart_and_skips_what_it_already_said(server_factory: Any,
                                                                          tmp_path: Path) -> None:
    bundle, state = copy_example_bundle(tmp_path / "bundle"), tmp_path / "state"
    first = server_factory(bundle, state)
    with first.client() as authz, authz.watch(CAMERA, PUT, STREAM, resume=20) as watching:
        follower = Follower(watching)
        before = follower.next()
        assert before.allowed
        first.stop()
        again = server_factory(bundle, state, "--listen", first.addr)      # the same address, a new process
        with again.admin() as admin:
            admin.put_inline_policy(ACCT, "user", "camera", "deny", policy("Deny", PUT))
            denied_at = revision(admin)
        # The first message of the new watch (still Allow, or already the deny) is not said twice.
        after = follower.next(timeout=WAIT_SECONDS + FLIP_SECONDS)
        assert after.decision is DecisionKind.EXPLICIT_DENY and after.revision == denied_at


def test_workers_share_the_streaming_port_and_every_worker_hears_changes(server_factory: Any,
                                                                        tmp_path: Path) -> None:
    s = server_factory(copy_example_bundle(tmp_path / "bundle"), tmp_path / "state", workers=2)
    assert len({w["watch"] for w in s.listening}) == 1          # one port, shared (SO_REUSEPORT)
    with s.client() as authz, s.admin() as admin:
        followers = [Follower(authz.watch(CAMERA, PUT, STREAM)) for _ in range(6)]   # spread over the workers
        assert all(f.next().allowed for f in followers)
        admin.put_inline_policy(ACCT, "user", "camera", "deny", policy("Deny", PUT))
        assert {f.next(timeout=FLIP_SECONDS).decision for f in followers} == {DecisionKind.EXPLICIT_DENY}
        for f in followers:
            f.watching.cancel()


# ------------------------------------------------------------------ the command line


def test_authz_watch_prints_a_json_line_per_decision(server: ServerProcess, admin: AdminClient) -> None:
    # SIGINT as a terminal gives it: a shell that started the tests in the background (`make test &`) made them
    # ignore SIGINT, and a child would inherit that; the command itself runs with the default disposition.
    proc = subprocess.Popen([*CLI, "watch", "--server", server.addr, "--principal", CAMERA, "--action", PUT,
                             "--resource", STREAM], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["decision"] == "Allow" and first["revision"] == revision(admin)
        assert first["deciding_statements"][0]["policy_name"].endswith("policy/KinesisVideoCameraWriter")
        assert datetime.fromisoformat(first["time"].replace("Z", "+00:00")).tzinfo is not None
        admin.put_inline_policy(ACCT, "user", "camera", "deny", policy("Deny", PUT))
        second = json.loads(proc.stdout.readline())
        assert (second["decision"], second["revision"]) == ("ExplicitDeny", revision(admin))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(WAIT_SECONDS) == 130
        assert proc.stderr is not None and proc.stderr.read() == ""      # Ctrl-C: quietly
    finally:
        proc.kill()
        admin.delete_inline_policy(ACCT, "user", "camera", "deny")


def test_authz_watch_says_what_failed(server: ServerProcess) -> None:
    done = subprocess.run([*CLI, "watch", "--server", server.addr, "--principal", CAMERA, "--action", "bad",
                           "--resource", STREAM], capture_output=True, text=True, timeout=WAIT_SECONDS)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.startswith("authz watch: INVALID_ARGUMENT: ") and "action" in done.stderr


def test_a_client_finds_the_streaming_listener_again_after_a_restart_on_another_port(tmp_path: Path) -> None:
    """The redirected address a client remembers is forgotten when it no longer answers, for both clients."""
    from bench.gateway_env import free_port

    bundle = copy_example_bundle(tmp_path / "bundle")
    decision = f"127.0.0.1:{free_port()}"
    options = (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500))

    def serve() -> ServerProcess:
        return start_server(bundle, None, "--listen", decision, "--watch-listen", f"127.0.0.1:{free_port()}")

    started: list[ServerProcess] = []

    async def main() -> None:
        async with AsyncAuthzClient(decision, options=options) as aio:
            with AuthzClient(decision, options=options) as authz:
                for restart in (False, True):
                    if restart:
                        started[-1].stop()
                    started.append(serve())
                    with authz.watch(CAMERA, PUT, STREAM) as w:
                        assert next(iter(w)).allowed, restart
                    async with aio.watch(CAMERA, PUT, STREAM) as aw:
                        assert (await aw.__anext__()).allowed, restart

    try:
        asyncio.run(main())
    finally:
        for s in started:
            s.kill()
