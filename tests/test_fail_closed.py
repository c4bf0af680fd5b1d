"""Fail closed, enumerated: every path on which no decision can be reached ends in a deny or an error status,
never in an allow, at every entry point (Authorize, AuthorizeBatch, AssumeRole, ext_authz Check, the client).

The tables below are the enumeration. STORE_FAULTS break the decision inside the store and the engine and
run through every entry point; AUTHORIZER_PATHS are the gRPC servicer's own ways of not deciding;
NO_DECISION_ANSWERS are the requests the store can only refuse (unknown principal, expired session).
tests/test_ext_authz_unit.py keeps the gateway's own table (FAULTS: clock, readiness, snapshot, SigV4,
mapping, body parsing, answer building); it is counted here, not run again.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.rpc import code_pb2

from authz.client import AuthzClient, CallError, Check
from authz.server.ext_authz import PRINCIPAL_HEADER, ExtAuthzServicer, GatewayOptions
from authz.server import app
from authz.server.config import Config
from authz.server.decision_log import DecisionLog
from authz.store import snapshot as snapshot_module
from authz.store import Store
from authz.store import decisions as decisions_module
from authz.v1 import authz_pb2 as pb
from tests import test_ext_authz_unit as ext_unit
from tests.server_fixture import ManualClock, copy_example_bundle

ACCT = "123456789012"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
CAMERA = f"arn:aws:iam::{ACCT}:user/camera"
PARTNER_USER = "arn:aws:iam::111111111111:user/partner-uploader"
ROLE = f"arn:aws:iam::{ACCT}:role/PartnerStreamWriter"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
SHARED_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/shared_stream/0123456789014"
PUT = "kinesisvideo:PutMedia"
T0 = ext_unit.T0.timestamp()            # the unit tests' signing time, so their request builders work here


@dataclass
class Rig:
    sidecar: app.Sidecar
    clock: ManualClock
    client: AuthzClient
    released: threading.Event = field(default_factory=threading.Event)
    opened: list[int] = field(default_factory=list)

    @property
    def store(self) -> Store:
        return self.sidecar.store


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("fail-closed")
    clock = ManualClock(T0)
    sidecar = app.start(Config(bundle=copy_example_bundle(root / "bundle"), listen="127.0.0.1:0", watch_interval=0,
                               decision_log=str(root / "decisions.jsonl")), clock=clock)
    client = AuthzClient(sidecar.addresses["decision"], timeout=5)
    r = Rig(sidecar, clock, client)
    try:
        yield r
    finally:
        r.released.set()
        client.close()
        sidecar.stop(0)
        for fd in r.opened:
            os.close(fd)


@pytest.fixture(autouse=True)
def uncached(rig: Rig) -> None:
    """Every test decides afresh: a decision cached before a fault was a real decision, and would hide it."""
    rig.store.cache.clear()
    assert rig.sidecar.answers is not None
    rig.sidecar.answers.clear()


def boom(*_args: Any, **_kw: Any) -> Any:
    raise RuntimeError("injected failure")


def exhausted(*_args: Any, **_kw: Any) -> Any:
    raise MemoryError("injected: no memory left")


def undecided(*args: Any, **kw: Any) -> Any:
    """The engine's real answer with its decision removed: a Result that is neither allow nor deny."""
    return REAL_DECIDE(*args, **kw)._replace(decision=None)  # type: ignore[arg-type]


REAL_DECIDE = decisions_module.decide

# Faults inside the store and the engine: (monkeypatch, rig) -> None installs one.
Fault = Callable[[pytest.MonkeyPatch, Rig], None]
STORE_FAULTS: dict[str, Fault] = {
    "engine raises": lambda mp, r: mp.setattr(decisions_module, "decide", boom),
    "engine runs out of memory": lambda mp, r: mp.setattr(decisions_module, "decide", exhausted),
    "engine answers without a decision": lambda mp, r: mp.setattr(decisions_module, "decide", undecided),
    "principal resolution raises": lambda mp, r: mp.setattr(snapshot_module.Snapshot, "resolve", boom),
    "policy set cannot be built": lambda mp, r: mp.setattr(snapshot_module.Snapshot, "policy_set", boom),
    "resource policy lookup raises": lambda mp, r: mp.setattr(snapshot_module.Snapshot, "resource_policy", boom),
    "request context cannot be built": lambda mp, r: mp.setattr(r.store._decisions, "_context", boom),
    "decision cache raises": lambda mp, r: mp.setattr(r.store.cache, "get", boom),
    "store clock raises": lambda mp, r: mp.setattr(r.store, "clock", boom),
}

# The gRPC servicer's own ways of not deciding, with the status each must end in.
AUTHORIZER_PATHS: dict[str, tuple[Fault, grpc.StatusCode]] = {
    "no policy set loaded": (lambda mp, r: mp.setattr(r.store._holder, "_ready", False), grpc.StatusCode.UNAVAILABLE),
    "the answer cannot be built": (lambda mp, r: mp.setattr(app_convert(), "result_to_proto", boom),
                                   grpc.StatusCode.INTERNAL),
    "the decision log cannot be written": (lambda mp, r: log_to_a_full_disk(mp, r), grpc.StatusCode.INTERNAL),
}


def log_to_a_full_disk(mp: pytest.MonkeyPatch, r: Rig) -> None:
    """Point the decision log at /dev/full: every write fails with ENOSPC, as on a full disk."""
    log = r.sidecar.decision_log
    assert isinstance(log, DecisionLog)
    fd = os.open("/dev/full", os.O_WRONLY)
    r.opened.append(fd)
    mp.setattr(log, "_fd", fd)


def app_convert() -> Any:
    from authz.server import convert
    return convert


def refused_or_denied(call: Callable[[], Any]) -> str:
    """'status NAME' when the call failed, 'decision NAME' when it answered; never an allow."""
    try:
        answer = call()
    except CallError as exc:
        return f"status {exc.code.name}"
    decisions = [a.decision for a in (answer if isinstance(answer, list) else [answer])]
    assert pb.DECISION_ALLOW not in decisions, "a path without a decision answered allow"
    return "decision " + ",".join(pb.Decision.Name(d) for d in decisions)


def check_via_ext_authz(r: Rig) -> Any:
    servicer = ExtAuthzServicer(r.store, ext_unit.OPTIONS)       # serves the example bundle's region
    wire = ext_unit.put_media(ext_unit.CAMERA, name="your_stream")
    return servicer.Check(wire.check(), None)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the control: every entry point allows


def test_control_every_entry_point_allows_without_a_fault(rig: Rig) -> None:
    c = rig.client
    assert c.authorize(CAMERA, PUT, YOUR_STREAM).decision == pb.DECISION_ALLOW
    assert [a.decision for a in c.authorize_batch([Check(CAMERA, PUT, YOUR_STREAM)] * 3)] == [pb.DECISION_ALLOW] * 3
    assert c.is_allowed(CAMERA, PUT, YOUR_STREAM)
    assert c.assume_role(PARTNER_USER, ROLE, "control").secret_access_key
    resp = check_via_ext_authz(rig)
    assert resp.status.code == code_pb2.OK and resp.HasField("ok_response")


# ------------------------------------------------------------------ faults in the store, through every entry point


@pytest.mark.sources
@pytest.mark.parametrize("fault", list(STORE_FAULTS))
def test_store_fault_is_never_an_allow_at_any_entry_point(fault: str, rig: Rig,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    sessions = rig.store.status().counts["sessions"]
    STORE_FAULTS[fault](monkeypatch, rig)
    c = rig.client
    assert refused_or_denied(lambda: c.authorize(CAMERA, PUT, YOUR_STREAM)) == "status INTERNAL"
    # A batch is answered whole or not at all: no partial list of answers.
    assert refused_or_denied(lambda: c.authorize_batch([Check(CAMERA, PUT, YOUR_STREAM)] * 3)) == "status INTERNAL"
    assert not c.is_allowed(CAMERA, PUT, YOUR_STREAM)
    # AssumeRole cannot decide either: no credentials are issued, no session is created.
    # (An engine answer that is not an allow is a refusal there, PERMISSION_DENIED, which is as closed.)
    assert refused_or_denied(lambda: c.assume_role(PARTNER_USER, ROLE, "under-fault")) in (
        "status INTERNAL", "status PERMISSION_DENIED")
    assert rig.store.status().counts["sessions"] == sessions
    # Envoy's Check: the request is refused (500 InternalFailure, or 403), never passed on.
    resp = check_via_ext_authz(rig)
    assert resp.status.code != code_pb2.OK and not resp.HasField("ok_response")
    assert resp.denied_response.status.code in (403, 500)
    assert PRINCIPAL_HEADER not in {h.header.key for h in resp.denied_response.headers}


# ------------------------------------------------------------------ the servicer's own no-decision paths


@pytest.mark.sources
@pytest.mark.parametrize("path", list(AUTHORIZER_PATHS))
def test_authorizer_path_without_a_decision_is_an_error_status(path: str, rig: Rig,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    install, code = AUTHORIZER_PATHS[path]
    install(monkeypatch, rig)
    c = rig.client
    assert refused_or_denied(lambda: c.authorize(CAMERA, PUT, YOUR_STREAM)) == f"status {code.name}"
    assert refused_or_denied(lambda: c.authorize_batch([Check(CAMERA, PUT, YOUR_STREAM)] * 2)) == \
        f"status {code.name}"
    assert not c.is_allowed(CAMERA, PUT, YOUR_STREAM)


@pytest.mark.sources
def test_a_decision_that_never_comes_is_a_deny_for_the_client(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    entered = threading.Event()

    def hang(*args: Any, **kw: Any) -> Any:
        entered.set()
        rig.released.wait(30)
        return REAL_DECIDE(*args, **kw)

    monkeypatch.setattr(decisions_module, "decide", hang)
    with AuthzClient(rig.sidecar.addresses["decision"], timeout=0.5) as impatient:
        try:
            assert refused_or_denied(lambda: impatient.authorize(CAMERA, PUT, YOUR_STREAM)) == \
                "status DEADLINE_EXCEEDED"
            assert entered.is_set()
            assert not impatient.is_allowed(CAMERA, PUT, YOUR_STREAM)
        finally:
            rig.released.set()


def test_an_unreachable_sidecar_is_a_deny_for_the_client() -> None:
    with AuthzClient("127.0.0.1:1", timeout=0.5) as nowhere:
        assert refused_or_denied(lambda: nowhere.authorize(CAMERA, PUT, YOUR_STREAM)) == "status UNAVAILABLE"
        assert not nowhere.is_allowed(CAMERA, PUT, YOUR_STREAM)


# ------------------------------------------------------------------ requests the store can only refuse


def test_unknown_principal_is_an_implicit_deny_everywhere(rig: Rig) -> None:
    nobody = f"arn:aws:iam::{ACCT}:user/nobody"
    got = rig.client.authorize(nobody, PUT, YOUR_STREAM, explain=True)
    assert (got.decision, got.explanation.decided_by) == (pb.DECISION_IMPLICIT_DENY, "unknown_principal")
    assert refused_or_denied(lambda: rig.client.authorize_batch([Check(nobody, PUT, YOUR_STREAM)])) == \
        "decision DECISION_IMPLICIT_DENY"
    assert refused_or_denied(lambda: rig.client.assume_role(nobody, ROLE, "nobody")) == "status PERMISSION_DENIED"
    header = ExtAuthzServicer(rig.store, GatewayOptions(principal_from="header:x-principal", region="us-west-2"))
    wire = ext_unit.Wire("POST", "/putMedia", "", {"Host": "gw", "x-amzn-stream-name": "your_stream",
                                                   "x-principal": nobody}, b"mkv", forwarded_body=False)
    resp = header.Check(wire.check(), None)  # type: ignore[arg-type]
    assert resp.status.code != code_pb2.OK and resp.denied_response.status.code == 403


def test_expired_session_is_an_implicit_deny_everywhere(rig: Rig) -> None:
    grant = rig.client.assume_role(PARTNER_USER, ROLE, "short-lived", duration_seconds=900)
    session = grant.assumed_role_arn
    assert rig.client.authorize(session, PUT, SHARED_STREAM).decision == pb.DECISION_ALLOW      # while it lasts
    try:
        rig.clock.now = T0 + 901
        got = rig.client.authorize(session, PUT, SHARED_STREAM, explain=True)
        assert (got.decision, got.explanation.decided_by) == (pb.DECISION_IMPLICIT_DENY, "unknown_principal")
        assert not rig.client.is_allowed(session, PUT, SHARED_STREAM)
        # Nor can the expired session assume anything (role chaining).
        assert refused_or_denied(lambda: rig.client.assume_role(session, ROLE, "chained")) == \
            "status PERMISSION_DENIED"
    finally:
        rig.clock.now = T0


# ------------------------------------------------------------------ the enumeration itself


def test_the_enumeration_covers_every_stage_of_a_decision() -> None:
    """Each stage a decision passes through has at least one fault above (or in the gateway's table)."""
    stages = {
        "readiness": ["no policy set loaded", "store not ready"],
        "clock": ["store clock raises", "clock raises"],
        "request parsing": ["mapping raises", "body parsing raises"],
        "authentication": ["signature verification raises", "credential lookup raises"],
        "principal": ["principal resolution raises"],
        "context": ["request context cannot be built"],
        "cache": ["decision cache raises"],
        "policies": ["policy set cannot be built", "resource policy lookup raises", "registry lookup raises"],
        "engine": ["engine raises", "engine runs out of memory", "engine answers without a decision"],
        "answer": ["the answer cannot be built", "building the allow answer raises", "metadata cannot be encoded"],
        "observers": ["the decision log cannot be written"],
    }
    enumerated = set(STORE_FAULTS) | set(AUTHORIZER_PATHS) | set(ext_unit.FAULTS)
    for stage, faults in stages.items():
        assert set(faults) <= enumerated, f"{stage}: {set(faults) - enumerated} not enumerated"
