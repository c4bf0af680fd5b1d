"""Faults: nothing acknowledged is lost, nothing is half-applied, and the last good state keeps serving.

* kill -9 in the middle of a stream of admin writes, three times over, with restarts in between;
* the state directory full (a real full tmpfs, and the file-size limit), read-only, removed or replaced;
* the bundle directory gone, its files replaced by garbage, a file caught half-written;
* the sidecar hung (SIGSTOP) behind the real Envoy;
* SIGTERM received by a thread other than the main one.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import platform
import random
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from authz.client import AdminClient, AuthzClient, CallError, Check
from authz.store.oplog import DB_NAME
from authz.v1 import authz_pb2 as pb
from tests.gateway_env import Gateway, private_gateway  # noqa: F401 - a fixture, requested by name
from tests.server_fixture import ROOT, TOKEN, ServerProcess, copy_example_bundle, start_server
from tests.test_gateway_envoy import CAMERA as CAMERA_KEY
from tests.test_gateway_envoy import put_media, reached

ACCT = "123456789012"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
PARTNER_USER = "arn:aws:iam::111111111111:user/partner-uploader"
ROLE = f"arn:aws:iam::{ACCT}:role/PartnerStreamWriter"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
GET, PUT, DESCRIBE = "kinesisvideo:GetMedia", "kinesisvideo:PutMedia", "kinesisvideo:DescribeStream"
ALLOW = pb.DECISION_ALLOW


def user_arn(name: str) -> str:
    return f"arn:aws:iam::{ACCT}:user/{name}"


def known(authz: AuthzClient, name: str) -> bool:
    return authz.authorize(user_arn(name), GET, YOUR_STREAM, explain=True).explanation.decided_by != \
        "unknown_principal"


def poll(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Wait for a condition, checking it every 20 ms, with a deadline (no sleeping as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        threading.Event().wait(0.02)


# ------------------------------------------------------------------ kill -9 during a stream of admin writes

WRITERS = 3
ACKS_PER_CYCLE = 36
KILL_CYCLES = 3
STEPS = ("create", "inline", "tag", "attach")     # one user's life, in order; each step is one admin call
SHARED_POLICY = "KillTestDescribe"


def step_document(cycle: int, writer: int, i: int) -> dict[str, Any]:
    """The inline policy of one user: its Sid names the user, and its PutMedia grant needs the user's tag."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": f"C{cycle}W{writer}N{i}", "Effect": "Allow", "Action": GET, "Resource": YOUR_STREAM},
        {"Sid": "Tagged", "Effect": "Allow", "Action": PUT, "Resource": "*",
         "Condition": {"StringEquals": {"aws:PrincipalTag/seq": f"{cycle}.{writer}.{i}"}}}]}


def name_of(cycle: int, writer: int, i: int) -> str:
    return f"c{cycle}-w{writer}-{i}"


@dataclass
class WriterLog:
    acked: list[tuple[int, str]] = field(default_factory=list)    # (user number, step), in order
    interrupted_by: str = ""


def write_stream(admin: AdminClient, cycle: int, writer: int, log: WriterLog, acks: threading.Semaphore) -> None:
    shared = f"arn:aws:iam::{ACCT}:policy/{SHARED_POLICY}"
    i = 0
    while True:
        name = name_of(cycle, writer, i)
        calls: dict[str, Callable[[], Any]] = {
            "create": lambda: admin.create_user(ACCT, name),
            "inline": lambda: admin.put_inline_policy(ACCT, "user", name, "grant", step_document(cycle, writer, i)),
            "tag": lambda: admin.tag_principal(ACCT, "user", name, {"seq": f"{cycle}.{writer}.{i}"}),
            "attach": lambda: admin.attach_policy(ACCT, "user", name, shared),
        }
        for step in STEPS:
            try:
                calls[step]()
            except CallError as exc:
                log.interrupted_by = exc.code.name
                return
            log.acked.append((i, step))
            acks.release()
        i += 1


def present_steps(authz: AuthzClient, cycle: int, writer: int, upto: int) -> list[tuple[int, str]]:
    """Which steps of the first `upto` users a server has, read from its decisions alone."""
    out: list[tuple[int, str]] = []
    for i in range(upto):
        arn = user_arn(name_of(cycle, writer, i))
        get, put, describe = authz.authorize_batch([Check(arn, GET, YOUR_STREAM, explain=True),
                                                    Check(arn, PUT, YOUR_STREAM), Check(arn, DESCRIBE, YOUR_STREAM)])
        steps = {
            "create": get.explanation.decided_by != "unknown_principal",
            # The complete document, down to its Sid: a torn write could not produce this answer.
            "inline": get.decision == ALLOW and [s.sid for s in get.deciding_statements] == [f"C{cycle}W{writer}N{i}"],
            "tag": put.decision == ALLOW,
            "attach": describe.decision == ALLOW,
        }
        out.extend((i, s) for s in STEPS if steps[s])
    return out


def sequence(upto: int) -> list[tuple[int, str]]:
    return [(i, s) for i in range(upto) for s in STEPS]


def persisted_ops(state: Path) -> list[dict[str, Any]]:
    """The op log as the next start will read it: the database and its write-ahead log, copied (so that
    reading recovers nothing in place, and a directory seen through /proc/PID/root can be read)."""
    with tempfile.TemporaryDirectory() as copy:
        for name in (DB_NAME, f"{DB_NAME}-wal"):
            if (state / name).exists():
                shutil.copyfile(state / name, Path(copy) / name)
        db = sqlite3.connect(Path(copy) / DB_NAME)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            return [json.loads(row[0]) for row in db.execute("SELECT op FROM ops ORDER BY seq")]
        finally:
            db.close()


def test_kill_9_during_admin_writes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    bundle, state = copy_example_bundle(tmp_path / "bundle"), tmp_path / "state"
    logs: dict[tuple[int, int], WriterLog] = {}
    server = start_server(bundle, state, "--watch-interval", "0")
    try:
        with server.admin() as admin:
            admin.create_policy(ACCT, SHARED_POLICY, {"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": DESCRIBE, "Resource": "*"}]})
        for cycle in range(KILL_CYCLES):
            acks = threading.Semaphore(0)
            admins = [server.admin(timeout=10) for _ in range(WRITERS)]
            threads = []
            for w in range(WRITERS):
                logs[cycle, w] = WriterLog()
                threads.append(threading.Thread(target=write_stream, args=(admins[w], cycle, w, logs[cycle, w], acks)))
                threads[-1].start()
            for _ in range(ACKS_PER_CYCLE):
                assert acks.acquire(timeout=30), "the admin writes stalled"
            assert server.kill() == -signal.SIGKILL          # while the writers are still writing
            for t in threads:
                t.join(30)
            for a in admins:
                a.close()
            # Every writer was cut off in the middle of its stream, not at a convenient point.
            assert all(logs[cycle, w].interrupted_by for w in range(WRITERS))

            ops = persisted_ops(state)                       # intact, and every row a whole op
            documents = {o["name"]: o["document"] for o in ops if o["op"] == "PutInlinePolicy"}
            for (c, w), log in logs.items():
                for i, step in log.acked:
                    if step == "inline":
                        assert json.loads(documents[name_of(c, w, i)]) == step_document(c, w, i)

            server = start_server(bundle, state, "--watch-interval", "0")
            with server.client() as authz:
                for (c, w), log in logs.items():
                    upto = (log.acked[-1][0] if log.acked else 0) + 2
                    present = present_steps(authz, c, w, upto)
                    assert set(log.acked) <= set(present), f"acknowledged but lost: {set(log.acked) - set(present)}"
                    # Applied in order, all or nothing: what is there is a prefix of the stream, and at most the
                    # one call in flight at the kill is there without its acknowledgement.
                    assert present == sequence(upto)[:len(present)], f"writer {c}.{w}: not a prefix: {present}"
                    assert len(present) - len(log.acked) in (0, 1)
    finally:
        server.kill()
    assert sum(len(log.acked) for log in logs.values()) >= KILL_CYCLES * ACKS_PER_CYCLE


# ------------------------------------------------------------------ the state directory fails


def _can_mount_private_tmpfs() -> bool:
    probe = Path(os.environ.get("TMPDIR", "/tmp")) / f"authz-mount-probe-{os.getpid()}"
    probe.mkdir(exist_ok=True)
    try:
        done = subprocess.run(["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "-o", "size=64k",
                               "tmpfs", str(probe)], capture_output=True, timeout=10)
        return done.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False
    finally:
        probe.rmdir()


def start_wrapped(prefix: list[str], bundle: Path, state: Path) -> ServerProcess:
    """server.py behind a command prefix that execs it (so the pid is the server's), otherwise as start_server."""
    cmd = [*prefix, sys.executable, str(ROOT / "server.py"), "--listen", "127.0.0.1:0", "--admin-listen",
           "127.0.0.1:0", "--bundle", str(bundle), "--state-dir", str(state), "--watch-interval", "0"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTHZ_")}
    env.update(PYTHONUNBUFFERED="1", AUTHZ_ADMIN_TOKEN=TOKEN)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    server = ServerProcess(proc, bundle, state, TOKEN)
    threading.Thread(target=server._read_stderr, daemon=True).start()
    try:
        server.wait_listening()
        server.wait_serving()
    except BaseException:
        server.kill()
        raise
    return server


@dataclass
class StateFault:
    """One way --state-dir stops taking writes: how to run the server, break it, mend it, and find it."""

    says: str                                         # in the refusal: what happened
    prefix: Callable[[Path], list[str]] = lambda state: []
    durable_across_restart: bool = True               # False: the directory lives and dies with the process
    ctx: dict[str, Any] = field(default_factory=dict)

    def visible(self, server: ServerProcess, state: Path) -> Path:
        return state if self.durable_across_restart else Path(f"/proc/{server.proc.pid}/root{state}")


def _fill(directory: Path) -> Path:
    """Write one file until the filesystem refuses with ENOSPC."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        chunk = b"\0" * 65536
        try:
            while True:
                f.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def _break(kind: str, fault: StateFault, server: ServerProcess, state: Path) -> None:
    here = fault.visible(server, state)
    if kind == "full (tmpfs)":
        fault.ctx["filler"] = _fill(here)
    elif kind == "full (file size limit)":
        soft, hard = resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE)
        fault.ctx["limit"] = (soft, hard)
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (1, hard))   # writes past byte 1 fail (EFBIG)
    elif kind == "read-only":
        for p in here.iterdir():
            p.chmod(0o400)
        here.chmod(0o500)
    elif kind in ("removed", "replaced"):
        here.rename(here.with_name("state.aside"))
        if kind == "replaced":       # an older copy put back in its place
            shutil.copytree(here.with_name("state.aside"), here)
        else:
            here.mkdir(mode=0o700)


def _mend(kind: str, fault: StateFault, server: ServerProcess, state: Path) -> None:
    here = fault.visible(server, state)
    if kind == "full (tmpfs)":
        fault.ctx["filler"].unlink()
    elif kind == "full (file size limit)":
        resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, fault.ctx["limit"])
    elif kind == "read-only":
        here.chmod(0o700)
        for p in here.iterdir():
            p.chmod(0o600)
    elif kind in ("removed", "replaced"):
        shutil.rmtree(here)
        here.with_name("state.aside").rename(here)


STATE_FAULTS: dict[str, Callable[[], StateFault]] = {
    "full (tmpfs)": lambda: StateFault(
        "database or disk is full", durable_across_restart=False,
        prefix=lambda state: ["unshare", "-m", "--propagation", "private", "sh", "-c",
                              'mount -t tmpfs -o size=1m,mode=0700 tmpfs "$0" && exec "$@"', str(state)]),
    "full (file size limit)": lambda: StateFault("disk I/O error"),
    # Root ignores permission bits: the server runs without CAP_DAC_OVERRIDE so that they apply to it.
    "read-only": lambda: StateFault("is read-only", prefix=lambda state: (
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--"] if os.geteuid() == 0 else [])),
    "removed": lambda: StateFault("is gone"),
    "replaced": lambda: StateFault("was replaced"),
}


@pytest.mark.parametrize("kind", list(STATE_FAULTS))
def test_state_dir_fault_refuses_admin_writes_and_keeps_answering(kind: str, tmp_path: Path) -> None:
    if kind == "full (tmpfs)" and not _can_mount_private_tmpfs():
        pytest.skip("cannot mount a tmpfs in a private mount namespace here (needs CAP_SYS_ADMIN)")
    if kind == "read-only" and os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission bits cannot be made to apply")
    fault = STATE_FAULTS[kind]()
    bundle, state = copy_example_bundle(tmp_path / "bundle"), tmp_path / "state"
    state.mkdir(mode=0o700)
    server = start_wrapped(fault.prefix(state), bundle, state)
    try:
        with server.admin() as admin, server.client() as authz:
            admin.create_user(ACCT, "before")
            revision = admin.status().revision
            _break(kind, fault, server, state)
            try:
                for write in (lambda: admin.create_user(ACCT, "during"),
                              lambda: admin.put_inline_policy(ACCT, "user", "viewer", "p", {
                                  "Version": "2012-10-17", "Statement": [
                                      {"Effect": "Deny", "Action": GET, "Resource": "*"}]}),
                              lambda: authz.assume_role(PARTNER_USER, ROLE, "during-fault")):
                    with pytest.raises(CallError) as refused:
                        write()
                    err = refused.value
                    assert err.code == grpc.StatusCode.UNAVAILABLE, err
                    assert "the change was not saved and not applied" in err.message and fault.says in err.message
                # Decisions go on from memory, and nothing refused was applied there either.
                assert authz.authorize(VIEWER, GET, YOUR_STREAM).decision == ALLOW
                assert known(authz, "before") and not known(authz, "during")
                assert admin.status().revision == revision and admin.status().serving
            finally:
                _mend(kind, fault, server, state)
            admin.create_user(ACCT, "after")                          # writes resume once the fault is gone
            assert known(authz, "after")
        users = [o["name"] for o in persisted_ops(fault.visible(server, state)) if o["op"] == "CreatePrincipal"]
        assert users == ["before", "after"]
    finally:
        server.kill()
    if fault.durable_across_restart:
        again = start_server(bundle, state, "--watch-interval", "0")
        try:
            with again.client() as authz:
                assert [known(authz, n) for n in ("before", "during", "after")] == [True, False, True]
        finally:
            again.kill()


# ------------------------------------------------------------------ the bundle directory fails

VERSIONED = user_arn("versioned")


def versioned_bundle(version: int) -> str:
    """A bundle file whose one policy names its version in its Sid: every answer says which version decided."""
    return json.dumps({"account": ACCT, "region": "us-west-2",
                       "policies": [{"name": "Versioned", "document": {"Version": "2012-10-17", "Statement": [
                           {"Sid": f"V{version}", "Effect": "Allow", "Action": GET, "Resource": "*"}]}}],
                       "users": [{"name": "versioned", "policies": ["Versioned"]}]}, indent=1)


def put_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def served_version(authz: AuthzClient) -> tuple[int, int]:
    """(version, revision) of the answer the server gives now."""
    r = authz.authorize(VERSIONED, GET, YOUR_STREAM)
    assert r.decision == ALLOW
    (statement,) = r.deciding_statements
    return int(statement.sid[1:]), r.revision


def metric(server: ServerProcess, name: str) -> float:
    with urllib.request.urlopen(f"http://{server.metrics_addr}/metrics", timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


@pytest.fixture
def watched(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    bundle = copy_example_bundle(tmp_path / "bundle")
    (bundle / "versioned.json").write_text(versioned_bundle(1))
    s = start_server(bundle, tmp_path / "state", "--watch-interval", "0.05", "--metrics-listen", "127.0.0.1:0")
    yield s, bundle
    s.kill()


def test_bundle_directory_vanishing_keeps_the_last_good_snapshot(watched: tuple[ServerProcess, Path]) -> None:
    server, bundle = watched
    with server.client() as authz, server.admin() as admin:
        good = served_version(authz)
        bundle.rename(bundle.with_name("bundle.gone"))
        poll(lambda: "missing or unreadable" in admin.status().last_load_error, "the watcher to report it")
        assert served_version(authz) == good                                  # same version, same revision
        reloaded = admin.reload()
        assert not reloaded.ok and "does not exist" in reloaded.error and reloaded.revision == good[1]
        assert metric(server, "authz_last_load_error") == 1 and metric(server, "authz_ready") == 1
        assert any("still serving revision" in line for line in server.log)
        bundle.with_name("bundle.gone").rename(bundle)
        poll(lambda: admin.status().last_load_error == "", "the error to clear once the directory is back")
        assert served_version(authz)[0] == 1


GARBAGE: dict[str, Callable[[], tuple[str, bytes]]] = {
    "random bytes in the JSON file": lambda: ("versioned.json", random.Random(7).randbytes(4096)),
    "invalid UTF-8 in a JSON string": lambda: ("versioned.json", versioned_bundle(9).encode().replace(
        b"versioned", b"version\xffd", 1)),
    "a JSON array at the top": lambda: ("versioned.json", b"[1, 2, 3]"),
    "a member given twice": lambda: ("versioned.json", b'{"account": "123456789012", "account": "111111111111"}'),
    "an empty file": lambda: ("versioned.json", b""),
    "NUL bytes in a YAML file": lambda: ("zz-garbage.yaml", b"account: \0\0\0\x01\x02"),
    "YAML that is not a mapping": lambda: ("zz-garbage.yaml", b"- just\n- a list\n"),
    "an invalid policy": lambda: ("versioned.json", edited(
        versioned_bundle(9), lambda d: d["policies"][0]["document"]["Statement"][0].update(Effect="Permit"))),
    "a user attached to a managed policy that does not exist": lambda: ("versioned.json", edited(
        versioned_bundle(9), lambda d: d["users"][0].update(policies=["Missing"]))),
}


def edited(text: str, change: Callable[[dict[str, Any]], Any]) -> bytes:
    doc = json.loads(text)
    change(doc)
    return json.dumps(doc).encode()


def test_bundle_replaced_by_garbage_keeps_the_last_good_snapshot(tmp_path: Path) -> None:
    bundle = copy_example_bundle(tmp_path / "bundle")
    (bundle / "versioned.json").write_text(versioned_bundle(1))
    server = start_server(bundle, None, "--watch-interval", "0")
    try:
        with server.client() as authz, server.admin() as admin:
            for version, (what, make) in enumerate(GARBAGE.items(), start=2):
                good = served_version(authz)
                name, data = make()
                put_atomically(bundle / name, data)
                result = admin.reload()
                assert not result.ok and result.error.startswith(name), (what, result.error)
                assert served_version(authz) == good, what                    # not a single answer changed
                assert admin.status().last_load_error == result.error
                (bundle / "zz-garbage.yaml").unlink(missing_ok=True)
                put_atomically(bundle / "versioned.json", versioned_bundle(version).encode())
                assert admin.reload().ok
                assert served_version(authz)[0] == version, what
    finally:
        server.kill()


def test_bundle_file_caught_half_written(watched: tuple[ServerProcess, Path]) -> None:
    server, bundle = watched
    text = versioned_bundle(2).encode()
    with server.client() as authz, server.admin() as admin:
        good = served_version(authz)
        with open(bundle / "versioned.json", "wb") as f:                       # written in place, not atomically
            f.write(text[: len(text) // 2])
            f.flush()
            # The writer stalls here: the watcher sees a file that stopped changing and tries it.
            poll(lambda: admin.status().last_load_error.startswith("versioned.json"), "the half file to be tried")
            assert served_version(authz) == good
            f.write(text[len(text) // 2:])
        poll(lambda: served_version(authz)[0] == 2, "the finished file to be loaded")
        assert admin.status().last_load_error == ""


# ------------------------------------------------------------------ the sidecar hangs behind Envoy


def test_sidecar_hung_behind_envoy_refuses_and_forwards_nothing(private_gateway: Gateway) -> None:
    gw = private_gateway
    assert put_media(gw, CAMERA_KEY, name="your_stream").status == 200          # control
    before = len(gw.upstream.records)
    os.kill(gw.sidecar.proc.pid, signal.SIGSTOP)
    try:
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda _: put_media(gw, CAMERA_KEY, name="your_stream"), range(4)))
        assert [r.status for r in replies] == [503] * 4                         # Envoy's 1 s timeout, fail closed
        assert all(reached(gw, r) == [] for r in replies) and len(gw.upstream.records) == before
        assert gw.envoy.stat("http.kvs_gateway.ext_authz.kvs.error") >= 4
    finally:
        os.kill(gw.sidecar.proc.pid, signal.SIGCONT)
    poll(lambda: put_media(gw, CAMERA_KEY, name="your_stream").status == 200, "the sidecar to answer again")


# ------------------------------------------------------------------ SIGTERM, whichever thread gets it

SYS_TGKILL = {"x86_64": 234, "aarch64": 131}.get(platform.machine())


@pytest.mark.skipif(sys.platform != "linux" or SYS_TGKILL is None, reason="needs Linux tgkill")
def test_sigterm_stops_the_sidecar_whichever_thread_receives_it(tmp_path: Path) -> None:
    # The kernel gives a process-directed signal to any thread that does not block it, often one of
    # gRPC's. Send it to such a thread on purpose: the sidecar must still drain and exit.
    s = start_server(copy_example_bundle(tmp_path / "bundle"), None, "--drain-grace", "0", admin=None, token=None)
    try:
        pid = s.proc.pid
        others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
        assert others, "the server has no other threads"
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.syscall(SYS_TGKILL, pid, others[0], signal.SIGTERM) == 0
        assert s.proc.wait(timeout=15) == 0
        poll(lambda: any("stopped" in line for line in s.log), "the log to say it stopped")
    finally:
        s.kill()
