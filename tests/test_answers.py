"""The decision port's answer memo and context memo (authz.server.answers), on real servers and real stores.

An answer comes from the memo only for the identical request bytes, against the same store revision,
while the store's clock is within the answer's validity (the current second for a decision that read the
clock, before the end of a role session): every test here repeats identical bytes and checks that the memo answers when it may
(`cached`) and that it stops answering the moment the revision, the clock or the session says so. The
context memo never lets a request skip validation, and every memoised answer equals the one the store
gives the plain way (a hypothesis property). Time is an injected clock; nothing sleeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import grpc
import pytest
import yaml
from google.protobuf import descriptor as pb_descriptor
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.api import context_to_proto
from authz.client import AdminClient, AuthzClient, CallError
from authz.evaluate import Result
from authz.policy.conditions import MULTIVALUED_KEYS
from authz.policy.errors import LimitError, RequestError
from authz.server import app, convert
from authz.server.answers import Answers, encode_batch, parse_batch
from authz.server.config import Config
from authz.server.errors import Undecodable
from authz.store import Store, StoreConfig
from authz.v1 import authz_pb2 as pb
from authz.v1 import wire_pb2
from tests import example_ids as ids
from tests.server_fixture import ManualClock, copy_example_bundle

ACCT = ids.ACCOUNT
PARTNER_USER = ids.user("partner-uploader", "111111111111")
CAMERA, VIEWER, ADMIN_USER = ids.user("camera"), ids.user("viewer"), ids.user("admin")
CLOCKED = ids.user("clocked")              # allowed to PutMedia only while aws:CurrentTime < BOUNDARY
CONDITIONAL = ids.user("conditional")      # conditions on the keys the property test sends
NOT_BEFORE = ids.user("not-before")        # allowed to PutMedia only once aws:CurrentTime >= BOUNDARY
PUT, GET = "kinesisvideo:PutMedia", "kinesisvideo:GetMedia"
TOKEN = "answers-admin-token"
NOT_VALID = "the request is not a valid authz.v1.AuthorizeRequest"

BOUNDARY = 1_900_000_000                   # 2030-03-17T17:46:40Z, a whole second
T0 = BOUNDARY - 100_000 + 0.25             # every test starts here (a fraction into a second)


def iso(t: float) -> str:
    return datetime.fromtimestamp(int(t), tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def allow(action: str | list[str], resource: str = "*", condition: dict[str, Any] | None = None,
          effect: str = "Allow", sid: str = "") -> dict[str, Any]:
    s: dict[str, Any] = {"Effect": effect, "Action": action, "Resource": resource}
    if condition:
        s["Condition"] = condition
    if sid:
        s["Sid"] = sid
    return s


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


CLOCKED_POLICY = doc(allow(PUT, condition={"DateLessThan": {"aws:CurrentTime": iso(BOUNDARY)}}, sid="BeforeBoundary"))
NOT_BEFORE_POLICY = doc(allow(PUT, condition={"DateGreaterThanEquals": {"aws:CurrentTime": iso(BOUNDARY)}},
                             sid="FromBoundary"))
CONDITIONAL_POLICY = doc(
    allow(GET, condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}, sid="GetFromTenNet"),
    allow(PUT, condition={"ForAllValues:StringEquals": {"aws:TagKeys": ["a", "b"]}}, sid="PutWithTagsAB"),
    allow(PUT, effect="Deny", condition={"StringEquals": {"aws:RequestTag/env": "prod"}}, sid="NoProdPut"),
    allow("kinesisvideo:DescribeStream", condition={"DateLessThan": {"aws:CurrentTime": iso(BOUNDARY)}},
          sid="DescribeBeforeBoundary"),
    allow("kinesisvideo:ListStreams", condition={"Bool": {"aws:SecureTransport": "true"}}, sid="ListOverTls"),
    allow("kinesisvideo:GetDataEndpoint", f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/${{aws:RequestTag/stream}}/*",
          sid="EndpointOfTaggedStream"),
    allow("kinesisvideo:DeleteStream", effect="Deny",
          condition={"ForAnyValue:StringLike": {"aws:TagKeys": "x*"}}, sid="NoDeleteWithX"),
    allow("kinesisvideo:DeleteStream", condition={"StringEqualsIgnoreCase": {"aws:PrincipalTag/team": "video"}},
          sid="DeleteForVideoTeam"),
)


def make_bundle(dest: Path) -> Path:
    """The example bundle plus two users whose policies read context keys (the clock among them)."""
    bundle = copy_example_bundle(dest)
    path = bundle / f"{ACCT}.yaml"
    data = yaml.safe_load(path.read_text())
    data["users"] += [{"name": "clocked", "inline": {"until-boundary": CLOCKED_POLICY}},
                      {"name": "not-before", "inline": {"from-boundary": NOT_BEFORE_POLICY}},
                      {"name": "conditional", "tags": {"team": "video"}, "inline": {"conditions": CONDITIONAL_POLICY}}]
    path.write_text(yaml.safe_dump(data))
    return bundle


def request(principal: str, action: str, resource: str, context: Mapping[str, Sequence[str] | str] | None = None,
            *, explain: bool = False, request_id: str = "") -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(principal=principal, action=action, resource=resource,
                               context=context_to_proto(context), explain=explain, request_id=request_id)


def encode(principal: str, action: str, resource: str, context: Mapping[str, Sequence[str] | str] | None = None,
           **kw: Any) -> bytes:
    return request(principal, action, resource, context, **kw).SerializeToString(deterministic=True)


def corrupt_utf8(message: bytes, text: bytes) -> bytes:
    """`message` with the first byte of the (unique) string `text` replaced by 0xFF: not UTF-8 anywhere."""
    assert message.count(text) == 1
    return message.replace(text, b"\xff" + text[1:])


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def batch_bytes(items: Sequence[bytes]) -> bytes:
    """An AuthorizeBatchRequest written by hand: field 1, length-delimited, once per item."""
    return b"".join(b"\x0a" + varint(len(i)) + i for i in items)


def without_cached(data: bytes) -> pb.AuthorizeResponse:
    r = pb.AuthorizeResponse.FromString(data)
    r.cached = False
    return r


# ------------------------------------------------------------------ a real server with an injected clock


@dataclass
class Rig:
    sidecar: app.Sidecar
    clock: ManualClock
    authz: AuthzClient
    admin: AdminClient
    raw: grpc.Channel

    @property
    def store(self) -> Store:
        return self.sidecar.store

    @property
    def answers(self) -> Answers:
        assert self.sidecar.answers is not None
        return self.sidecar.answers

    def call(self, method: str, payload: bytes) -> bytes:
        try:
            out = self.raw.unary_unary(f"/authz.v1.Authorizer/{method}")(payload, timeout=10)
        except grpc.RpcError as err:
            raise CallError.of(err) from None
        assert isinstance(out, bytes)
        return out

    def authorize(self, raw: bytes) -> pb.AuthorizeResponse:
        """Authorize with exactly these request bytes."""
        return pb.AuthorizeResponse.FromString(self.call("Authorize", raw))


def start(root: Path, clock: ManualClock, **config: Any) -> app.Sidecar:
    return app.start(Config(bundle=make_bundle(root / "bundle"), listen="127.0.0.1:0", admin_listen="127.0.0.1:0",
                            admin_token=TOKEN, watch_interval=0, **config), clock=clock)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    clock = ManualClock(T0)
    sidecar = start(tmp_path_factory.mktemp("answers"), clock)
    authz = AuthzClient(sidecar.addresses["decision"], timeout=10)
    admin = AdminClient(sidecar.addresses["admin"], token=TOKEN, timeout=10)
    raw = grpc.insecure_channel(sidecar.addresses["decision"])
    try:
        yield Rig(sidecar, clock, authz, admin, raw)
    finally:
        raw.close()
        authz.close()
        admin.close()
        sidecar.stop(0)


@pytest.fixture(autouse=True)
def fresh(request: pytest.FixtureRequest) -> None:
    """Tests on the shared server start at T0 with both memos and the decision cache empty."""
    if "rig" not in request.fixturenames:
        return
    r: Rig = request.getfixturevalue("rig")
    r.clock.now = T0
    r.store.cache.clear()
    r.answers.clear()


# ------------------------------------------------------------------ 1. repeats


def test_a_repeated_request_is_answered_from_the_memo(rig: Rig) -> None:
    raw = encode(CAMERA, PUT, ids.YOUR_STREAM, {"aws:SourceIp": "192.0.2.10"})
    hits, status_hits = rig.store.cache.stats()["hits"], rig.admin.status().cache_hits
    first = rig.authorize(raw)
    assert (first.decision, first.cached) == (pb.DECISION_ALLOW, False)
    assert [s.policy_name for s in first.deciding_statements] == [
        f"arn:aws:iam::{ACCT}:policy/KinesisVideoCameraWriter"]
    assert rig.answers.stats()["answers"] == 1
    second = rig.authorize(raw)
    assert second.cached
    assert (second.decision, list(second.deciding_statements), second.revision) == (
        first.decision, list(first.deciding_statements), first.revision)
    assert rig.store.cache.stats()["hits"] == hits + 1            # the memo hit is counted as a cache hit
    assert rig.admin.status().cache_hits == status_hits + 1
    # Other bytes for the same question (a request_id) miss the memo and meet the store's decision cache.
    third = rig.authorize(encode(CAMERA, PUT, ids.YOUR_STREAM, {"aws:SourceIp": "192.0.2.10"}, request_id="r-3"))
    assert (third.decision, third.cached) == (pb.DECISION_ALLOW, True)
    assert rig.answers.stats()["answers"] == 2
    assert rig.store.cache.stats()["hits"] == hits + 2


def test_a_repeated_deny_and_an_unknown_principal_are_memoised_too(rig: Rig) -> None:
    for raw, decision in ((encode(VIEWER, PUT, ids.YOUR_STREAM), pb.DECISION_IMPLICIT_DENY),
                          (encode(ids.user("nobody"), GET, ids.YOUR_STREAM), pb.DECISION_IMPLICIT_DENY)):
        first, second = rig.authorize(raw), rig.authorize(raw)
        assert (first.decision, first.cached) == (decision, False)
        assert (second.decision, second.cached) == (decision, True)


# ------------------------------------------------------------------ 2. a new revision


def test_an_admin_write_changes_the_answer_to_identical_bytes(rig: Rig) -> None:
    rig.admin.create_user(ACCT, "flipper")
    rig.admin.put_inline_policy(ACCT, "user", "flipper", "put", doc(allow(PUT)))
    raw = encode(ids.user("flipper"), PUT, ids.YOUR_STREAM)
    allowed = rig.authorize(raw)
    assert (allowed.decision, allowed.cached) == (pb.DECISION_ALLOW, False)
    assert rig.authorize(raw).cached
    rig.admin.put_inline_policy(ACCT, "user", "flipper", "stop", doc(allow(PUT, effect="Deny", sid="Stop")))
    denied = rig.authorize(raw)
    assert (denied.decision, denied.cached) == (pb.DECISION_EXPLICIT_DENY, False)
    assert denied.revision > allowed.revision
    assert [s.sid for s in denied.deciding_statements] == ["Stop"]
    again = rig.authorize(raw)
    assert (again.decision, again.cached) == (pb.DECISION_EXPLICIT_DENY, True)
    rig.admin.delete_inline_policy(ACCT, "user", "flipper", "stop")
    back = rig.authorize(raw)
    assert (back.decision, back.cached) == (pb.DECISION_ALLOW, False)


def test_a_bundle_reload_changes_the_answer_to_identical_bytes(rig: Rig) -> None:
    bundle = rig.sidecar.config.bundle
    assert bundle is not None
    path = bundle / f"{ACCT}.yaml"
    original = path.read_text()
    data = yaml.safe_load(original)
    for user in data["users"]:
        if user["name"] == "camera":
            user["policies"] = []
    raw = encode(CAMERA, PUT, ids.YOUR_STREAM)
    assert rig.authorize(raw).decision == pb.DECISION_ALLOW
    assert rig.authorize(raw).cached
    try:
        path.write_text(yaml.safe_dump(data))
        assert rig.admin.reload().ok
        flipped = rig.authorize(raw)
        assert (flipped.decision, flipped.cached) == (pb.DECISION_IMPLICIT_DENY, False)
    finally:
        path.write_text(original)
        assert rig.admin.reload().ok
    # A reload rebuilds the state and empties the memo, even when it changes nothing; then the log holds
    # nothing new, so the revision stays.
    restored = rig.authorize(raw)
    assert (restored.decision, restored.cached) == (pb.DECISION_ALLOW, False)
    assert rig.admin.reload().ok
    same = rig.authorize(raw)
    assert (same.decision, same.cached) == (pb.DECISION_ALLOW, False)
    assert same.revision == restored.revision


# ------------------------------------------------------------------ 3. the clock


def test_an_answer_that_read_the_clock_lasts_until_the_end_of_its_second(rig: Rig) -> None:
    raw = encode(CLOCKED, PUT, ids.YOUR_STREAM)
    rig.clock.now = BOUNDARY - 1.5                      # two seconds before the boundary, mid-second
    first = rig.authorize(raw)
    assert (first.decision, first.cached) == (pb.DECISION_ALLOW, False)
    rig.clock.now = BOUNDARY - 1.01                     # same second: the memo answers
    assert rig.authorize(raw).cached
    rig.clock.now = BOUNDARY - 1.0                      # next second: same answer, but decided again
    nxt = rig.authorize(raw)
    assert (nxt.decision, nxt.cached) == (pb.DECISION_ALLOW, False)
    rig.clock.now = BOUNDARY - 0.25                     # a fraction before the boundary second
    assert rig.authorize(raw).decision == pb.DECISION_ALLOW
    rig.clock.now = BOUNDARY - 0.001
    hit = rig.authorize(raw)
    assert (hit.decision, hit.cached) == (pb.DECISION_ALLOW, True)
    rig.clock.now = BOUNDARY                            # the boundary: DateLessThan no longer holds
    past = rig.authorize(raw)
    assert (past.decision, past.cached) == (pb.DECISION_IMPLICIT_DENY, False)
    assert rig.authorize(raw).cached


def test_valid_until_is_the_end_of_the_second_only_for_clock_readers(rig: Rig) -> None:
    rig.clock.now = BOUNDARY - 0.25
    clock_reader = rig.store.authorize(CLOCKED, PUT, ids.YOUR_STREAM)
    assert clock_reader.result.allowed and clock_reader.valid_until == BOUNDARY
    assert clock_reader.valid_from == BOUNDARY - 1                # only within the second it was decided in
    plain = rig.store.authorize(CAMERA, PUT, ids.YOUR_STREAM)
    assert plain.result.allowed and plain.valid_until == math.inf and plain.valid_from == -math.inf
    unknown = rig.store.authorize(ids.user("nobody"), PUT, ids.YOUR_STREAM)
    assert unknown.valid_until == math.inf
    # The caller's own time (either spelling) is not the clock's: the answer does not expire with it.
    for key in ("aws:CurrentTime", "AWS:CURRENTTIME"):
        supplied = rig.store.authorize(CLOCKED, PUT, ids.YOUR_STREAM, {key: iso(BOUNDARY - 10)})
        assert supplied.result.allowed and supplied.valid_until == math.inf
    # aws:EpochTime from the caller does not stand in for the aws:CurrentTime the policy reads.
    epoch_only = rig.store.authorize(CLOCKED, PUT, ids.YOUR_STREAM, {"aws:EpochTime": str(BOUNDARY - 10)})
    assert epoch_only.valid_until == BOUNDARY


def test_an_answer_that_read_no_clock_key_survives_clock_changes(rig: Rig) -> None:
    raw = encode(CAMERA, PUT, ids.YOUR_STREAM)
    assert not rig.authorize(raw).cached
    for now in (T0 + 1, T0 + 86_400, BOUNDARY + 10**6):
        rig.clock.now = now
        again = rig.authorize(raw)
        assert (again.decision, again.cached) == (pb.DECISION_ALLOW, True)


def test_a_caller_supplied_current_time_does_not_expire_with_the_clock(rig: Rig) -> None:
    raw = encode(CLOCKED, PUT, ids.YOUR_STREAM, {"aws:CurrentTime": iso(BOUNDARY - 10)})
    rig.clock.now = BOUNDARY - 0.5
    first = rig.authorize(raw)
    assert (first.decision, first.cached) == (pb.DECISION_ALLOW, False)
    rig.clock.now = BOUNDARY + 3_600                    # the clock is past the boundary; the caller's time is not
    later = rig.authorize(raw)
    assert (later.decision, later.cached) == (pb.DECISION_ALLOW, True)
    # Control: without the caller's time, the same question at this clock is denied.
    assert rig.authorize(encode(CLOCKED, PUT, ids.YOUR_STREAM)).decision == pb.DECISION_IMPLICIT_DENY


def test_a_clock_stepped_back_does_not_get_an_answer_from_a_later_second(rig: Rig) -> None:
    raw = encode(NOT_BEFORE, PUT, ids.YOUR_STREAM)
    rig.clock.now = BOUNDARY + 0.5
    assert rig.authorize(raw).decision == pb.DECISION_ALLOW
    rig.clock.now = BOUNDARY - 3_600                    # the clock is stepped back an hour
    assert not rig.store.authorize(NOT_BEFORE, PUT, ids.YOUR_STREAM).result.allowed     # the store: deny
    stepped_back = rig.authorize(raw)    # may come from the decision cache, which keyed the deny on the time
    assert stepped_back.decision == pb.DECISION_IMPLICIT_DENY


# ------------------------------------------------------------------ 4. role sessions


def test_a_session_answer_is_not_served_after_the_session_expires(rig: Rig) -> None:
    issued = rig.clock.now
    grant = rig.authz.assume_role(PARTNER_USER, ids.PARTNER_ROLE, "memo-session", duration_seconds=900)
    expires = issued + 900
    session = grant.assumed_role_arn
    raw = encode(session, PUT, ids.SHARED_STREAM)
    first = rig.authorize(raw)
    assert (first.decision, first.cached) == (pb.DECISION_ALLOW, False)
    assert rig.authorize(raw).cached
    assert rig.store.authorize(session, PUT, ids.SHARED_STREAM).valid_until == expires
    rig.clock.now = expires - 0.001
    last = rig.authorize(raw)
    assert (last.decision, last.cached) == (pb.DECISION_ALLOW, True)
    rig.clock.now = expires
    expired = rig.authorize(raw)
    assert (expired.decision, expired.cached) == (pb.DECISION_IMPLICIT_DENY, False)
    assert not expired.deciding_statements


# ------------------------------------------------------------------ 5. the context memo


CTX_A = {"aws:SourceIp": "10.1.2.3", "aws:TagKeys": ["a", "b"]}
CTX_B = {"aws:SourceIp": "192.0.2.1", "aws:RequestTag/env": "dev"}


def bad_requests() -> dict[str, bytes]:
    """Requests with invalid UTF-8, each sharing some context entries with CTX_A or CTX_B."""
    key = encode(CONDITIONAL, GET, ids.YOUR_STREAM, {"aws:SourceIp": "10.1.2.3", "aws:TagKeys": ["a", "b"],
                                                     "aws:Referer": "x"})
    value = encode(CONDITIONAL, GET, ids.YOUR_STREAM, {"aws:SourceIp": "10.1.2.3", "aws:TagKeys": ["a", "zz"]})
    principal = encode(CONDITIONAL, GET, ids.YOUR_STREAM, CTX_A)
    return {"context key": corrupt_utf8(key, b"aws:Referer"),
            "context value": corrupt_utf8(value, b"zz"),
            "principal": corrupt_utf8(principal, CONDITIONAL.encode())}


@pytest.mark.parametrize("where", sorted(bad_requests()))
def test_invalid_utf8_is_refused_on_a_fresh_memo_and_after_valid_contexts(rig: Rig, where: str) -> None:
    bad = bad_requests()[where]
    with pytest.raises(Undecodable) as fresh_error:
        Answers(rig.store).decide(bad)
    assert NOT_VALID in str(fresh_error.value)
    warm = Answers(rig.store)
    for ctx in (CTX_A, CTX_B):
        for principal in (CONDITIONAL, CAMERA):
            for _ in range(2):
                warm.decide(encode(principal, GET, ids.YOUR_STREAM, ctx))
    assert warm.stats()["contexts"] == 2
    for _ in range(2):                                  # a refusal is not remembered as anything
        with pytest.raises(Undecodable) as warm_error:
            warm.decide(bad)
        assert NOT_VALID in str(warm_error.value)
    assert warm.stats()["contexts"] == 2
    # Through the server, on a memo warmed with the same valid contexts.
    for ctx in (CTX_A, CTX_B):
        rig.authorize(encode(CONDITIONAL, GET, ids.YOUR_STREAM, ctx))
    for _ in range(2):
        with pytest.raises(CallError) as served:
            rig.authorize(bad)
        assert served.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert NOT_VALID in served.value.message and "UTF-8" in served.value.message


def test_a_context_is_prepared_once_and_reused_for_another_principal(rig: Rig,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    prepared: list[Mapping[str, Any]] = []
    real = rig.store.prepare_context

    def counting(context: Mapping[str, Any], trusted_context: Mapping[str, Any] | None = None) -> Any:
        prepared.append(context)
        return real(context, trusted_context)

    monkeypatch.setattr(rig.store, "prepare_context", counting)   # counts; the real method does the work
    answers = Answers(rig.store)
    first = answers.decide(encode(CONDITIONAL, GET, ids.YOUR_STREAM, CTX_A))
    assert answers.stats()["contexts"] == 1 and len(prepared) == 1
    other = answers.decide(encode(CAMERA, GET, ids.YOUR_STREAM, CTX_A))
    assert (answers.stats()["contexts"], answers.stats()["answers"]) == (1, 2)
    assert len(prepared) == 1
    assert pb.AuthorizeResponse.FromString(first.data).decision == pb.DECISION_ALLOW    # 10.1.2.3 is in 10/8
    assert pb.AuthorizeResponse.FromString(other.data).decision == pb.DECISION_IMPLICIT_DENY
    # The reused context still decides: the same principal with another source address is denied.
    moved = answers.decide(encode(CONDITIONAL, GET, ids.YOUR_STREAM, {**CTX_A, "aws:SourceIp": "192.0.2.1"}))
    assert pb.AuthorizeResponse.FromString(moved.data).decision == pb.DECISION_IMPLICIT_DENY
    assert answers.stats()["contexts"] == 2 and len(prepared) == 2
    # A change that touches one principal keeps both memos (a context depends on no state at all); a
    # bundle load, which may touch anything, empties them.
    rig.admin.create_user(ACCT, "context-memo-bump")
    assert (answers.stats()["contexts"], answers.stats()["answers"]) == (2, 3)
    assert rig.admin.reload().ok
    assert answers.stats()["contexts"] == 0 and answers.stats()["answers"] == 0


# ------------------------------------------------------------------ 6. property: memo answers = plain answers


PRINCIPALS = [CAMERA, VIEWER, ADMIN_USER, ids.user("stream-writer"), PARTNER_USER, CLOCKED, CONDITIONAL,
              f"arn:aws:iam::{ACCT}:root", "anonymous", ids.user("ghost"), ids.user("Camera"),
              "arn:aws:iam::999999999999:user/camera", f"arn:aws:sts::{ACCT}:assumed-role/PartnerStreamWriter/ghost"]
ACTIONS = [PUT, GET, "kinesisvideo:DescribeStream", "kinesisvideo:CreateStream", "kinesisvideo:ListStreams",
           "kinesisvideo:GetDataEndpoint", "kinesisvideo:DeleteStream", "kinesisvideo:putmedia"]
RESOURCES = [ids.YOUR_STREAM, ids.OTHER_STREAM, ids.SHARED_STREAM, ids.YOUR_CHANNEL, "*",
             ids.stream("unregistered", "1600000000000")]
KEYS = ["aws:SourceIp", "aws:sourceip", "AWS:SOURCEIP", "aws:TagKeys", "aws:tagkeys", "aws:RequestTag/env",
        "aws:requesttag/ENV", "aws:RequestTag/stream", "aws:CurrentTime", "aws:currenttime", "aws:SecureTransport",
        "aws:username", "aws:PrincipalTag/team", "custom:key"]
VALUES = ["10.1.2.3", "192.0.2.1", "not-an-ip", "a", "b", "x1", "prod", "dev", "true", "false", "your_stream",
          "shared_stream", iso(BOUNDARY - 10), iso(BOUNDARY + 10), ""]

Context = list[tuple[str, list[str]]]


@st.composite
def contexts(draw: st.DrawFn) -> Context:
    """0-4 distinct keys (possibly a key spelled twice with different case), 0-3 values each."""
    keys = draw(st.lists(st.sampled_from(KEYS), max_size=4, unique=True))
    twice: bool = draw(st.booleans())
    if keys and twice:                               # force one key spelled twice
        twin = keys[0].swapcase()
        if twin not in keys and len(keys) < 4:
            keys.insert(draw(st.integers(0, len(keys))), twin)
    return [(k, draw(st.lists(st.sampled_from(VALUES), max_size=3))) for k in keys]


def plain_context(ctx: Context) -> dict[str, str | list[str]]:
    """A JSON-style context: one value as a string, several (or any for a multivalued key) as a list."""
    return {k: v[0] if len(v) == 1 and k.lower() not in MULTIVALUED_KEYS else list(v) for k, v in ctx}


@dataclass
class PropertyStore:
    store: Store
    answers: Answers
    session: str


@pytest.fixture(scope="module")
def prop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PropertyStore]:
    store = Store(StoreConfig(bundle_dir=make_bundle(tmp_path_factory.mktemp("prop") / "bundle"), watch_interval=0),
                  clock=lambda: BOUNDARY - 0.5)
    store.open()
    session = store.assume_role(PARTNER_USER, ids.PARTNER_ROLE, "prop-session").assumed_role_arn
    try:
        yield PropertyStore(store, Answers(store), session)
    finally:
        store.close()


def comparable(result: Result, ctx: Context) -> Result:
    """The whole Result (reasons, keys read, missing keys), except that with a key spelled twice the explain-only
    missing keys and notes are left out: the engine tries the spellings in the order of the context mapping and
    stops at the first that satisfies a condition, and a parsed protobuf map does not keep the caller's order."""
    if len({k.lower() for k, _ in ctx}) < len(ctx):
        return result._replace(missing_keys=(), notes=())
    return result


Query = tuple[str, str, str, Context, str, bool]   # principal, action, resource, context, request_id, deterministic


@st.composite
def queries(draw: st.DrawFn) -> list[Query]:
    """1-4 requests; later ones often repeat an earlier one's context or its principal, action and resource
    with another context, so that the context memo is shared across principals and must tell contexts apart."""
    out: list[Query] = []
    for _ in range(draw(st.integers(1, 4))):
        principal = draw(st.one_of(st.just(CONDITIONAL), st.sampled_from(PRINCIPALS + ["SESSION"])))
        action, resource = draw(st.sampled_from(ACTIONS)), draw(st.sampled_from(RESOURCES))
        ctx = draw(contexts())
        share: bool = draw(st.booleans())
        if out and share:
            earlier = draw(st.sampled_from(out))
            same_context: bool = draw(st.booleans())
            if same_context:
                ctx = earlier[3]                                   # the same context, another question
            else:
                principal, action, resource = earlier[:3]          # the same question, another context
        out.append((principal, action, resource, ctx, draw(st.sampled_from(["", "req-1"])), draw(st.booleans())))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qs=queries(), warm=st.booleans(), plain_first=st.booleans())
def test_memo_answers_equal_plain_store_answers(prop: PropertyStore, qs: list[Query], warm: bool,
                                                plain_first: bool) -> None:
    store, answers = prop.store, prop.answers
    if not warm:       # else both memos and the decision cache keep what earlier examples left
        answers.clear()
        store.cache.clear()
    for principal, action, resource, ctx, request_id, deterministic in qs:
        if principal == "SESSION":
            principal = prop.session
        req = pb.AuthorizeRequest(principal=principal, action=action, resource=resource, request_id=request_id,
                                  context={k: pb.ContextValues(values=v) for k, v in ctx})
        raw = req.SerializeToString(deterministic=deterministic)
        try:
            plain = store.authorize(principal, action, resource, plain_context(ctx))
        except (RequestError, LimitError) as refused:   # the memo path refuses the same request the same way
            with pytest.raises(type(refused)) as also:
                answers.decide(raw)
            # About the same field; which key first (a protobuf map does not keep the caller's order) may differ.
            assert also.value.field.split("[")[0] == refused.field.split("[")[0]
            continue
        first = None if plain_first else answers.decide(raw)
        expected = convert.result_to_proto(plain.result, plain.revision, False, False)
        if first is None:
            first = answers.decide(raw)
        assert without_cached(first.data) == expected, (principal, action, resource, ctx)
        assert comparable(first.result, ctx) == comparable(plain.result, ctx)
        again = answers.decide(raw)                       # the memo's answer
        assert again.cached and pb.AuthorizeResponse.FromString(again.data).cached
        assert without_cached(again.data) == expected, (principal, action, resource, ctx)


# ------------------------------------------------------------------ 7. batches


def test_a_batch_answers_as_the_single_calls_do(rig: Rig) -> None:
    items = [encode(CAMERA, PUT, ids.YOUR_STREAM),
             encode(VIEWER, PUT, ids.YOUR_STREAM),
             encode(CONDITIONAL, GET, ids.YOUR_STREAM, CTX_A),
             encode(CONDITIONAL, PUT, ids.YOUR_STREAM, {"aws:TagKeys": ["a"], "aws:RequestTag/env": "prod"}),
             encode(ids.user("ghost"), GET, ids.YOUR_STREAM),
             encode(CAMERA, PUT, ids.YOUR_STREAM)]          # a repeat inside the batch
    hits = rig.admin.status().cache_hits
    batched = pb.AuthorizeBatchResponse.FromString(rig.call("AuthorizeBatch", batch_bytes(items))).responses
    assert len(batched) == len(items)
    assert batched[-1].cached                                # memoised by item 0 of the same batch
    assert rig.admin.status().cache_hits == hits + 1         # the batch's memo hit is counted, once
    singles = [rig.call("Authorize", raw) for raw in items]
    assert all(pb.AuthorizeResponse.FromString(s).cached for s in singles)     # memoised by the batch
    for got, single in zip(batched, singles):
        got.cached = False
        assert got == without_cached(single)
    assert [r.decision for r in batched] == [pb.DECISION_ALLOW, pb.DECISION_IMPLICIT_DENY, pb.DECISION_ALLOW,
                                             pb.DECISION_EXPLICIT_DENY, pb.DECISION_IMPLICIT_DENY, pb.DECISION_ALLOW]
    # The server's batch encoding is protobuf's own.
    assert encode_batch(singles) == pb.AuthorizeBatchResponse(
        responses=[pb.AuthorizeResponse.FromString(s) for s in singles]).SerializeToString()
    assert encode_batch([]) == pb.AuthorizeBatchResponse().SerializeToString() == b""
    assert parse_batch(batch_bytes(items)) == items
    assert parse_batch(pb.AuthorizeBatchRequest(requests=[request(CAMERA, PUT, ids.YOUR_STREAM)]).SerializeToString()
                       ) == [request(CAMERA, PUT, ids.YOUR_STREAM).SerializeToString()]


@pytest.mark.parametrize("where", sorted(bad_requests()))
def test_a_batch_item_with_invalid_utf8_names_its_index(rig: Rig, where: str) -> None:
    good = [encode(CONDITIONAL, GET, ids.YOUR_STREAM, CTX_A), encode(CAMERA, PUT, ids.YOUR_STREAM)]
    for raw in good:                                          # items 0 and 1 answered from the memo
        rig.authorize(raw)
    payload = batch_bytes([*good, bad_requests()[where], encode(VIEWER, GET, ids.YOUR_STREAM)])
    with pytest.raises(CallError) as info:
        rig.call("AuthorizeBatch", payload)
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[2]" in info.value.message
    assert "authz.v1.AuthorizeBatchRequest" in info.value.message


# ------------------------------------------------------------------ 8. --cache-size 0


def test_cache_size_zero_never_answers_from_a_cache(tmp_path: Path) -> None:
    clock = ManualClock(T0)
    sidecar = start(tmp_path, clock, cache_size=0)
    try:
        assert sidecar.answers is not None and sidecar.answers.stats()["answer_capacity"] == 0
        with grpc.insecure_channel(sidecar.addresses["decision"]) as channel:
            call = channel.unary_unary("/authz.v1.Authorizer/Authorize")
            for raw in (encode(CAMERA, PUT, ids.YOUR_STREAM), encode(CLOCKED, PUT, ids.YOUR_STREAM),
                        encode(CONDITIONAL, GET, ids.YOUR_STREAM, CTX_A)):
                answers = [pb.AuthorizeResponse.FromString(call(raw, timeout=10)) for _ in range(3)]
                assert [a.cached for a in answers] == [False, False, False]
                assert answers[0].decision == pb.DECISION_ALLOW
                assert len({a.SerializeToString() for a in answers}) == 1
            batch = pb.AuthorizeBatchResponse.FromString(channel.unary_unary("/authz.v1.Authorizer/AuthorizeBatch")(
                batch_bytes([encode(CAMERA, PUT, ids.YOUR_STREAM)] * 3), timeout=10))
            assert [r.cached for r in batch.responses] == [False, False, False]
        assert sidecar.answers.stats()["answers"] == 0
        assert sidecar.store.cache.stats()["hits"] == 0
    finally:
        sidecar.stop(0)


# ------------------------------------------------------------------ 9. explain


def test_explained_requests_are_never_memoised(rig: Rig) -> None:
    raw = encode(CLOCKED, PUT, ids.YOUR_STREAM, explain=True)
    plain_raw = encode(CAMERA, PUT, ids.YOUR_STREAM, explain=True)
    for r in (raw, plain_raw):
        answers = [rig.authorize(r) for _ in range(3)]
        for a in answers:
            assert a.HasField("explanation") and a.explanation.decided_by
            assert (a.decision, a.cached) == (pb.DECISION_ALLOW, False)
    assert rig.answers.stats()["answers"] == 0
    # A memoised unexplained answer is not handed to an explained request for the same question.
    unexplained = encode(CAMERA, PUT, ids.YOUR_STREAM)
    rig.authorize(unexplained)
    assert rig.authorize(unexplained).cached
    explained = rig.authorize(plain_raw)
    assert explained.HasField("explanation") and not explained.cached


# ------------------------------------------------------------------ 10. the wire views match the API


def _length_delimited(f: pb_descriptor.FieldDescriptor) -> bool:
    return f.type in (f.TYPE_BYTES, f.TYPE_STRING, f.TYPE_MESSAGE)


def _repeated(f: pb_descriptor.FieldDescriptor) -> bool:
    return bool(f.is_repeated)     # protobuf >= 6.31 (its upb descriptors have no `label`)


@pytest.mark.parametrize("view,api,raw_fields", [
    (wire_pb2.AuthorizeRequestView, pb.AuthorizeRequest, {"context"}),
    (wire_pb2.AuthorizeBatchRequestView, pb.AuthorizeBatchRequest, {"requests"}),
    (wire_pb2.AuthorizeBatchResponseView, pb.AuthorizeBatchResponse, {"responses"}),
])
def test_wire_views_have_the_api_field_numbers_names_and_types(view: Any, api: Any, raw_fields: set[str]) -> None:
    v, a = view.DESCRIPTOR, api.DESCRIPTOR
    assert v.full_name == f"{a.full_name}View"
    assert sorted(v.fields_by_number) == sorted(a.fields_by_number)
    for number, vf in v.fields_by_number.items():
        af = a.fields_by_number[number]
        assert vf.name == af.name, number
        assert _repeated(vf) == _repeated(af), vf.name
        if vf.name in raw_fields:
            assert vf.type == vf.TYPE_BYTES and af.type == af.TYPE_MESSAGE, vf.name
            assert _repeated(vf) and _length_delimited(af)
        else:
            assert (vf.type, vf.message_type, vf.enum_type) == (af.type, af.message_type, af.enum_type), vf.name
    ctx = pb.AuthorizeRequest.DESCRIPTOR.fields_by_name["context"]
    assert ctx.message_type.GetOptions().map_entry
