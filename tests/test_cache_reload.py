"""Cache invalidation and reloads on a live server: a change through the admin API or the bundle flips the
very next decision, and a bundle rewritten 50 times under 200 concurrent callers never fails a call nor
mixes two policy sets in one answer."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from authz.client import AdminClient, AuthzClient, CallError
from authz.v1 import authz_pb2 as pb
from tests.server_fixture import ServerProcess, copy_example_bundle, start_server

ACCT = "123456789012"
CAMERA = f"arn:aws:iam::{ACCT}:user/camera"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("cache")
    s = start_server(copy_example_bundle(root / "bundle"), root / "state", "--watch-interval", "0")
    yield s
    s.kill()


def put_media(authz: AuthzClient) -> pb.AuthorizeResponse:
    return authz.authorize(CAMERA, "kinesisvideo:PutMedia", YOUR_STREAM)


def test_admin_change_flips_the_next_decision(server: ServerProcess) -> None:
    with server.client() as authz, server.admin() as admin:
        assert put_media(authz).decision == pb.DECISION_ALLOW
        assert put_media(authz).cached                        # the next answer would come from the cache ...
        admin.put_inline_policy(ACCT, "user", "camera", "stop", {"Version": "2012-10-17", "Statement": [
            {"Effect": "Deny", "Action": "kinesisvideo:PutMedia", "Resource": "*"}]})
        denied = put_media(authz)                             # ... but the change invalidated it
        assert (denied.decision, denied.cached) == (pb.DECISION_EXPLICIT_DENY, False)
        assert put_media(authz).cached
        admin.delete_inline_policy(ACCT, "user", "camera", "stop")
        assert put_media(authz).decision == pb.DECISION_ALLOW


def camera_without_policies(server: ServerProcess) -> tuple[Path, str, str]:
    """(bundle file, its text, the same bundle with the camera's policies removed)."""
    assert server.bundle is not None
    path = server.bundle / f"{ACCT}.yaml"
    original = path.read_text()
    doc = yaml.safe_load(original)
    for user in doc["users"]:
        if user["name"] == "camera":
            user["policies"] = []
    return path, original, yaml.safe_dump(doc)


def test_bundle_change_flips_the_next_decision(server: ServerProcess) -> None:
    path, original, changed = camera_without_policies(server)
    with server.client() as authz, server.admin() as admin:
        assert put_media(authz).decision == pb.DECISION_ALLOW
        assert put_media(authz).cached
        try:
            path.write_text(changed)
            assert admin.reload().ok
            flipped = put_media(authz)
            assert (flipped.decision, flipped.cached) == (pb.DECISION_IMPLICIT_DENY, False)
        finally:
            path.write_text(original)
            assert admin.reload().ok
        assert put_media(authz).decision == pb.DECISION_ALLOW


def test_sighup_reloads_the_bundle(server: ServerProcess) -> None:
    """Watching is off for this server (--watch-interval 0): only the signal can pick the change up."""
    path, original, changed = camera_without_policies(server)
    with server.client() as authz, server.admin() as admin:
        before = admin.status().revision
        assert put_media(authz).decision == pb.DECISION_ALLOW
        try:
            path.write_text(changed)
            assert put_media(authz).decision == pb.DECISION_ALLOW       # not watched: nothing changed yet
            server.proc.send_signal(signal.SIGHUP)
            # The reload runs off the signal handler: poll the condition, with a deadline.
            deadline = time.monotonic() + 20
            pause = threading.Event()
            while admin.status().revision == before and time.monotonic() < deadline:
                pause.wait(0.05)
            assert admin.status().revision > before
            assert put_media(authz).decision == pb.DECISION_IMPLICIT_DENY
        finally:
            path.write_text(original)
            assert admin.reload().ok
        assert put_media(authz).decision == pb.DECISION_ALLOW


# ------------------------------------------------------------------ reload under load

WRITER = f"arn:aws:iam::{ACCT}:user/writer"
STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/load/1600000000000"
VERSIONS = 50
CALLERS = 200
CHANNELS = 4


def invalid(version: int) -> bool:
    return version % 5 == 4


def bundle_text(version: int) -> str:
    """Version v: an identity policy with Sid I<v> and a stream policy with Sid R<v>. Both must allow, so an
    allow names one statement of each: an answer that mixed two versions would name two numbers."""
    doc: dict[str, Any] = {
        "account": ACCT, "region": "us-west-2",
        "policies": [{"name": "Writer", "document": {"Version": "2012-10-17", "Statement": [
            {"Sid": f"I{version}", "Effect": "Allow", "Action": "kinesisvideo:PutMedia", "Resource": "*"}]}}],
        "users": [{"name": "writer", "policies": ["Writer"]}],
        "streams": [{"name": "load", "arn": STREAM, "policy": {"Version": "2012-10-17", "Statement": [
            {"Sid": f"R{version}", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCT}:root"},
             "Action": "kinesisvideo:PutMedia", "Resource": STREAM}]}}],
    }
    if invalid(version):
        if version % 10 == 4:       # a reference to a policy that does not exist: rejected after parsing
            doc["users"].append({"name": "broken", "policies": ["Missing"]})
        else:                       # not even JSON
            return json.dumps(doc)[:-40]
    return json.dumps(doc)


def write_bundle(directory: Path, version: int) -> None:
    tmp = directory / ".load.json.tmp"
    tmp.write_text(bundle_text(version))
    os.replace(tmp, directory / "load.json")


@dataclass
class Caller:
    answers: list[tuple[int, int, tuple[str, ...]]] = field(default_factory=list)   # revision, decision, sids
    failures: list[str] = field(default_factory=list)


def version_of(sids: tuple[str, ...]) -> int:
    versions = {int(s[1:]) for s in sids}
    assert len(versions) == 1 and sorted(s[0] for s in sids) == ["I", "R"], f"mixed answer: {sids}"
    return versions.pop()


def test_reload_under_load(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    write_bundle(bundle, 0)
    s = start_server(bundle, None, "--watch-interval", "0.05", "--threads", "16")
    done = threading.Event()
    started = threading.Barrier(CALLERS + 1)
    clients = [s.client(timeout=30) for _ in range(CHANNELS)]
    callers = [Caller() for _ in range(CALLERS)]

    def call(me: Caller, authz: AuthzClient) -> None:
        started.wait()
        while True:
            last = done.is_set()            # the last call starts after the final reload
            try:
                r = authz.authorize(WRITER, "kinesisvideo:PutMedia", STREAM)
                me.answers.append((r.revision, r.decision, tuple(st.sid for st in r.deciding_statements)))
            except CallError as err:
                me.failures.append(str(err))
            if last:
                return

    threads = [threading.Thread(target=call, args=(c, clients[i % CHANNELS])) for i, c in enumerate(callers)]
    try:
        for t in threads:
            t.start()
        started.wait()
        with s.admin() as admin:
            for version in range(1, VERSIONS + 1):
                write_bundle(bundle, version)
                result = admin.reload()
                assert result.ok != invalid(version), (version, result.error)
            assert admin.status().last_load_error == ""
        done.set()
        for t in threads:
            t.join(60)
    finally:
        done.set()
        for c in clients:
            c.close()
        s.kill()

    assert [f for c in callers for f in c.failures] == []                  # zero failed RPCs
    valid = {v for v in range(VERSIONS + 1) if not invalid(v)}
    seen_by_revision: dict[int, int] = {}
    for c in callers:
        last_version = last_revision = -1
        for revision, decision, sids in c.answers:
            assert decision == pb.DECISION_ALLOW
            version = version_of(sids)                                     # never a mix of two versions
            assert version in valid                                        # never a rejected version
            assert seen_by_revision.setdefault(revision, version) == version
            assert version >= last_version and revision >= last_revision   # never back to an older set
            last_version, last_revision = version, revision
    answered = {version_of(sids) for c in callers for _, _, sids in c.answers}
    assert len(answered) > 1                                               # answers spanned the reloads
    assert all(version_of(c.answers[-1][2]) == VERSIONS for c in callers)  # and all end on the last one
