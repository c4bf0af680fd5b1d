"""Hostile input against a live server: every case is refused quickly with INVALID_ARGUMENT or
RESOURCE_EXHAUSTED and a message that says what to fix, nothing it carries is applied, and callers
asking at the same time keep getting their answers.

Each row of HOSTILE is one input; the groups are the cases the reliability section of the README
counts. Legal but pathological inputs (wildcard patterns that make naive matchers exponential) are
not refused: they are answered, in linear time (ANSWERED).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from authz.api import ADMIN_TOKEN_HEADER, MAX_MESSAGE_BYTES
from authz.client import AdminClient, AuthzClient, CallError, Check
from authz.policy import limits
from authz.requests import MAX_BATCH, MAX_CONTEXT_KEYS, MAX_CONTEXT_VALUE_CHARS, MAX_CONTEXT_VALUES
from authz.server import settings
from authz.v1 import authz_pb2 as pb
from envoy.service.auth.v3 import external_auth_pb2
from tests.server_fixture import TOKEN, ServerProcess, copy_example_bundle, start_server

ACCT = "123456789012"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
PARTNER_USER = "arn:aws:iam::111111111111:user/partner-uploader"
ROLE = f"arn:aws:iam::{ACCT}:role/PartnerStreamWriter"
YOUR_STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
GET = "kinesisvideo:GetMedia"
INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
MIB = 1024 * 1024

# "Refused quickly": a refusal costs milliseconds (limits are checked before any work). The bound is
# generous for a loaded 2-core CI machine and includes building and sending the hostile message itself
# (10,000 context keys or 5 MiB take ~0.1-0.3 s to serialise in Python), yet far below a real stall.
QUICK_S = 2.0
STEADY_CALLERS = 4
ATTACK_ROUNDS = 3
ATTACKERS = 2
RAW_OPTIONS = [("grpc.max_send_message_length", 64 * MIB), ("grpc.max_receive_message_length", 64 * MIB)]


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action: Any = GET, resource: Any = "*", **extra: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **extra}


def stream_arns(n: int) -> list[str]:
    return [f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/s{i:05d}/*" for i in range(n)]


def nested(depth: int) -> str:
    return '{"Version":"2012-10-17","Statement":' + "[" * depth + "]" * depth + "}"


def dup_effect() -> str:
    return ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Effect":"Deny",'
            '"Action":"kinesisvideo:GetMedia","Resource":"*"}]}')


def dup_operator() -> str:
    return ('{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"kinesisvideo:GetMedia","Resource":"*",'
            '"Condition":{"StringEquals":{"aws:PrincipalTag/team":"a"},'
            '"StringEquals":{"aws:PrincipalTag/team":"b"}}}]}')


def stream_policy(*statements: dict[str, Any]) -> dict[str, Any]:
    return doc(*({"Principal": {"AWS": f"arn:aws:iam::{ACCT}:root"}, **s} for s in statements))


# ------------------------------------------------------------------ the cases


@dataclass(frozen=True)
class Hostile:
    group: str
    name: str
    call: Callable[["Clients"], Any]
    code: grpc.StatusCode | None                      # None: answered (see ANSWERED)
    says: tuple[str, ...] = ()                        # fragments of the message: the limit and the remedy
    field: str | None = None


@dataclass
class Clients:
    authz: AuthzClient
    admin: AdminClient
    raw: grpc.Channel                                 # no client-side size limit, no serialisation checks
    admin_raw: grpc.Channel

    def send(self, method: str, payload: bytes, admin: bool = False) -> bytes:
        channel = self.admin_raw if admin else self.raw
        metadata = ((ADMIN_TOKEN_HEADER, f"Bearer {TOKEN}"),) if admin else ()
        return channel.unary_unary(method)(payload, timeout=10, metadata=metadata)   # type: ignore[no-any-return]


def authorize_bytes(**fields: Any) -> bytes:
    return pb.AuthorizeRequest(**{"principal": VIEWER, "action": GET, "resource": YOUR_STREAM, **fields}
                               ).SerializeToString()


def corrupt_utf8(message: bytes, text: bytes) -> bytes:
    """`message` with one byte of the string field value `text` replaced by 0xFF (not UTF-8 anywhere)."""
    assert message.count(text) == 1
    return message.replace(text, b"\xff" + text[1:])


def check_request_with(header_value: str) -> bytes:
    req = external_auth_pb2.CheckRequest()
    http = req.attributes.request.http
    http.method, http.path, http.host = "POST", "/listStreams", "gw"
    http.headers["x-marker"] = header_value
    return req.SerializeToString()


def big_context(n_keys: int = 1, value_chars: int = 1) -> dict[str, str]:
    return {f"k{i}": "v" * value_chars for i in range(n_keys)}


HOSTILE: list[Hostile] = [
    # -- policies over the size quota
    Hostile("policy over the size quota", "managed policy", lambda c: c.admin.create_policy(
        ACCT, "TooBig", doc(allow(resource=stream_arns(130)))), INVALID,
        (f"limit for managed policies is {limits.MAX_MANAGED_POLICY_CHARS}", "split it into several policies"),
        "document"),
    Hostile("policy over the size quota", "inline user policy", lambda c: c.admin.put_inline_policy(
        ACCT, "user", "viewer", "big", doc(allow(resource=stream_arns(45)))), INVALID,
        (f"{limits.MAX_INLINE_USER_CHARS}", "combine entries with wildcards"), "document"),
    Hostile("policy over the size quota", "role trust policy", lambda c: c.admin.create_role(
        ACCT, "big-trust", doc(*({"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{i:012d}:root"},
                                  "Action": "sts:AssumeRole"} for i in range(40)))), INVALID,
        (f"{limits.MAX_TRUST_POLICY_CHARS}",), "trust_policy"),
    Hostile("policy over the size quota", "session policy", lambda c: c.authz.assume_role(
        PARTNER_USER, ROLE, "big-session", session_policy=doc(allow(resource=stream_arns(45)))), INVALID,
        (f"{limits.MAX_SESSION_POLICY_CHARS}",), "session_policy"),
    Hostile("policy over the size quota", "stream resource policy", lambda c: c.admin.register_resource(
        type="stream", name="big-policy", account=ACCT, region="us-west-2",
        resource_policy=stream_policy(allow(resource=stream_arns(400)))), INVALID,
        (f"{limits.MAX_RESOURCE_POLICY_CHARS}",), "resource_policy"),
    Hostile("policy over the size quota", "simulated document", lambda c: c.authz.simulate(
        VIEWER, GET, YOUR_STREAM, identity_policies=[doc(allow(resource=stream_arns(2_400)))]), EXHAUSTED,
        (f"at most {settings.MAX_SIMULATE_DOCUMENT_CHARS}", "MAX_SIMULATE_DOCUMENT_CHARS"),
        "identity_policies[0].document"),
    # -- deeply nested JSON
    Hostile("deeply nested JSON", "managed policy, 40 levels", lambda c: c.admin.create_policy(
        ACCT, "Deep", nested(40)), INVALID, (f"deeper than {limits.MAX_JSON_DEPTH} levels", "flatten"), "document"),
    Hostile("deeply nested JSON", "inline policy, 5,000 levels", lambda c: c.admin.put_inline_policy(
        ACCT, "user", "viewer", "deep", nested(5_000)), INVALID, ("deeper than", "flatten"), "document"),
    Hostile("deeply nested JSON", "simulated, 60,000 levels", lambda c: c.authz.simulate(
        VIEWER, GET, YOUR_STREAM, identity_policies=[nested(60_000)]), INVALID,
        (f"deeper than {limits.MAX_JSON_DEPTH} levels", "strict JSON"), "identity_policies[0].document"),
    Hostile("deeply nested JSON", "simulated with validation", lambda c: c.authz.simulate(
        VIEWER, GET, YOUR_STREAM, identity_policies=[nested(60_000)], validate=True), INVALID,
        ("deeper than", "flatten"), "identity_policies[0].document"),
    # -- huge arrays
    Hostile("huge arrays", "2,500 actions in a resource policy", lambda c: c.admin.register_resource(
        type="stream", name="many-actions", account=ACCT, region="us-west-2",
        resource_policy=stream_policy(allow(action=[f"k:A{i}" for i in range(2_500)]))), INVALID,
        (f"the limit is {limits.MAX_LIST_ITEMS}", "use wildcards or split the statement"), "resource_policy"),
    Hostile("huge arrays", "30,000 resources, simulated without validation", lambda c: c.authz.simulate(
        VIEWER, GET, YOUR_STREAM, identity_policies=[doc(allow(resource=["*"] * 30_000))]), EXHAUSTED,
        (f"at most {limits.MAX_LIST_ITEMS}", "MAX_LIST_ITEMS"), "identity_policies[0].document"),
    Hostile("huge arrays", "100,000 values of one context key", lambda c: c.authz.authorize(
        VIEWER, GET, YOUR_STREAM, {"aws:TagKeys": ["t"] * 100_000}), EXHAUSTED,
        (f"at most {MAX_CONTEXT_VALUES}",), "context[aws:TagKeys]"),
    Hostile("huge arrays", "10,000 tags on a new user", lambda c: c.admin.create_user(
        ACCT, "tag-bomb", tags={f"t{i}": "v" for i in range(10_000)}), EXHAUSTED,
        (f"at most {limits.MAX_TAGS_PER_PRINCIPAL} tags",), "tags"),
    # -- invalid UTF-8
    Hostile("invalid UTF-8", "Authorize principal", lambda c: c.send(
        "/authz.v1.Authorizer/Authorize", corrupt_utf8(authorize_bytes(), VIEWER.encode())), INVALID,
        ("authz.v1.AuthorizeRequest", "UTF-8")),
    Hostile("invalid UTF-8", "context key of an AuthorizeBatch item", lambda c: c.send(
        "/authz.v1.Authorizer/AuthorizeBatch", corrupt_utf8(pb.AuthorizeBatchRequest(requests=[pb.AuthorizeRequest(
            principal=VIEWER, action=GET, resource=YOUR_STREAM,
            context={"aws:SourceIp": pb.ContextValues(values=["1.2.3.4"])})]).SerializeToString(), b"aws:SourceIp")),
        INVALID, ("authz.v1.AuthorizeBatchRequest", "UTF-8")),
    Hostile("invalid UTF-8", "admin policy document", lambda c: c.send(
        "/authz.v1.PolicyAdmin/CreatePolicy", corrupt_utf8(pb.CreatePolicyRequest(
            account=ACCT, name="Utf", document='{"Version":"2012-10-17","Statement":[]}').SerializeToString(),
            b"Statement"), admin=True), INVALID, ("authz.v1.CreatePolicyRequest", "UTF-8")),
    Hostile("invalid UTF-8", "ext_authz header value", lambda c: c.send(
        "/envoy.service.auth.v3.Authorization/Check", corrupt_utf8(check_request_with("marker-value"),
                                                                   b"marker-value")),
        INVALID, ("envoy.service.auth.v3.CheckRequest", "UTF-8")),
    Hostile("invalid UTF-8", "truncated wire format", lambda c: c.send(
        "/authz.v1.Authorizer/Authorize", authorize_bytes()[:-7]), INVALID, ("not a valid",)),
    # -- duplicate keys
    Hostile("duplicate keys", "Effect twice in a managed policy", lambda c: c.admin.create_policy(
        ACCT, "Dup", dup_effect()), INVALID, ("'Effect' appears more than once", "keep exactly one"), "document"),
    Hostile("duplicate keys", "condition operator twice in an inline policy", lambda c: c.admin.put_inline_policy(
        ACCT, "user", "viewer", "dup", dup_operator()), INVALID,
        ("appears more than once", "under a single operator"), "document"),
    Hostile("duplicate keys", "Effect twice, simulated without validation", lambda c: c.authz.simulate(
        VIEWER, GET, YOUR_STREAM, identity_policies=[dup_effect()]), INVALID,
        ("appears more than once", "each member once"), "identity_policies[0].document"),
    Hostile("duplicate keys", "tag key twice on a new user", lambda c: c.send(
        "/authz.v1.PolicyAdmin/CreateUser", pb.CreateUserRequest(account=ACCT, name="dup-tags", tags=[
            pb.Tag(key="team", value="a"), pb.Tag(key="team", value="b")]).SerializeToString(), admin=True),
        INVALID, ("'team' appears twice",)),
    Hostile("duplicate keys", "session tag twice", lambda c: c.send(
        "/authz.v1.Authorizer/AssumeRole", pb.AssumeRoleRequest(caller=PARTNER_USER, role_arn=ROLE,
                                                                session_name="dup-tags", tags=[
            pb.Tag(key="site", value="a"), pb.Tag(key="site", value="b")]).SerializeToString()),
        INVALID, ("'site' appears twice",)),
    # -- pathological wildcard patterns (over the pattern limit: refused; within it: ANSWERED below)
    Hostile("pathological wildcard patterns", "12,000-character resource pattern", lambda c: c.admin.register_resource(
        type="stream", name="long-pattern", account=ACCT, region="us-west-2",
        resource_policy=stream_policy(allow(resource=f"arn:aws:kinesisvideo:*:{ACCT}:stream/" + "*a" * 6_000))),
        INVALID, (f"the limit for one pattern is {limits.MAX_PATTERN_CHARS}", "shorten it"), "resource_policy"),
    Hostile("pathological wildcard patterns", "over-long action pattern, simulated", lambda c: c.authz.simulate(
        VIEWER, GET, YOUR_STREAM, validate=True, resource_policy=stream_policy(
            allow(action="kinesisvideo:" + "*G" * 5_200))), INVALID,
        (f"the limit for one pattern is {limits.MAX_PATTERN_CHARS}",), "resource_policy.document"),
    # -- 1 MB context values
    Hostile("1 MB context values", "Authorize", lambda c: c.authz.authorize(
        VIEWER, GET, YOUR_STREAM, {"aws:UserAgent": "a" * MIB}), EXHAUSTED,
        (f"longer than {MAX_CONTEXT_VALUE_CHARS} characters",), "context[aws:UserAgent]"),
    Hostile("1 MB context values", "one item of an AuthorizeBatch", lambda c: c.authz.authorize_batch(
        [Check(VIEWER, GET, YOUR_STREAM)] * 3 + [Check(VIEWER, GET, YOUR_STREAM, {"aws:UserAgent": "a" * MIB})]),
        EXHAUSTED, (f"longer than {MAX_CONTEXT_VALUE_CHARS}",), "requests[3].context[aws:UserAgent]"),
    Hostile("1 MB context values", "Simulate", lambda c: c.authz.simulate(
        VIEWER, GET, YOUR_STREAM, context={"aws:UserAgent": "a" * MIB}, identity_policies=[doc(allow())]),
        EXHAUSTED, (f"longer than {MAX_CONTEXT_VALUE_CHARS}",), "request.context[aws:UserAgent]"),
    Hostile("1 MB context values", "AssumeRole", lambda c: c.authz.assume_role(
        PARTNER_USER, ROLE, "big-context", context={"aws:UserAgent": "a" * MIB}), EXHAUSTED,
        (f"longer than {MAX_CONTEXT_VALUE_CHARS}",), "context[aws:UserAgent]"),
    # -- 10,000 context keys
    Hostile("10,000 context keys", "Authorize", lambda c: c.authz.authorize(
        VIEWER, GET, YOUR_STREAM, big_context(10_000)), EXHAUSTED, (f"at most {MAX_CONTEXT_KEYS}",), "context"),
    Hostile("10,000 context keys", "Simulate", lambda c: c.authz.simulate(
        VIEWER, GET, YOUR_STREAM, context=big_context(10_000), identity_policies=[doc(allow())]), EXHAUSTED,
        (f"at most {MAX_CONTEXT_KEYS}",), "request.context"),
    Hostile("10,000 context keys", "AuthorizeBatch item", lambda c: c.authz.authorize_batch(
        [Check(VIEWER, GET, YOUR_STREAM, big_context(10_000))]), EXHAUSTED, (f"at most {MAX_CONTEXT_KEYS}",),
        "requests[0].context"),
    # -- oversized gRPC messages (gRPC refuses them before any handler runs)
    Hostile("oversized gRPC messages", "5 MiB Authorize", lambda c: c.send(
        "/authz.v1.Authorizer/Authorize", authorize_bytes(principal="a" * 5 * MIB)), EXHAUSTED,
        ("larger than max", f"{MAX_MESSAGE_BYTES}")),
    Hostile("oversized gRPC messages", "5 MiB AuthorizeBatch", lambda c: c.send(
        "/authz.v1.Authorizer/AuthorizeBatch", pb.AuthorizeBatchRequest(requests=[pb.AuthorizeRequest(
            principal=VIEWER, action=GET, resource=YOUR_STREAM)] * 50_000).SerializeToString()), EXHAUSTED,
        (f"{MAX_MESSAGE_BYTES}",)),
    Hostile("oversized gRPC messages", "5 MiB admin CreatePolicy", lambda c: c.send(
        "/authz.v1.PolicyAdmin/CreatePolicy", pb.CreatePolicyRequest(
            account=ACCT, name="Huge", document="x" * 5 * MIB).SerializeToString(), admin=True), EXHAUSTED,
        (f"{MAX_MESSAGE_BYTES}",)),
    Hostile("oversized gRPC messages", "5 MiB ext_authz Check", lambda c: c.send(
        "/envoy.service.auth.v3.Authorization/Check", check_request_with("h" * 5 * MIB)), EXHAUSTED,
        (f"{MAX_MESSAGE_BYTES}",)),
    # -- batches over the limit
    Hostile("batches over the limit", f"{MAX_BATCH + 1} requests", lambda c: c.authz.authorize_batch(
        [Check(VIEWER, GET, YOUR_STREAM)] * (MAX_BATCH + 1)), EXHAUSTED,
        (f"at most {MAX_BATCH} (MAX_BATCH)",), "requests"),
    Hostile("batches over the limit", "20,000 requests", lambda c: c.authz.authorize_batch(
        [Check(VIEWER, GET, YOUR_STREAM)] * 20_000), EXHAUSTED, (f"at most {MAX_BATCH}",), "requests"),
]

# Legal inputs that make naive wildcard matchers exponential. The linear matcher answers them.
PATHOLOGICAL = "*a" * 1_500 + "b"                   # 3,001 characters, 1,500 stars
LONG_RESOURCE = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/" + "a" * 1_900 + "/1"
ANSWERED: list[Hostile] = [
    Hostile("pathological wildcard patterns", "1,500-star resource pattern in a stored policy",
            lambda c: c.authz.authorize(f"arn:aws:iam::{ACCT}:user/glob-victim", GET, LONG_RESOURCE), None),
    Hostile("pathological wildcard patterns", "1,500-star StringLike against a 4,096-character value",
            lambda c: c.authz.simulate(VIEWER, GET, YOUR_STREAM, context={"aws:UserAgent": "a" * 4_096},
                                       identity_policies=[doc(allow(Condition={"StringLike": {
                                           "aws:UserAgent": PATHOLOGICAL}}))]), None),
    Hostile("pathological wildcard patterns", "star-and-question action pattern, validated",
            lambda c: c.authz.simulate(VIEWER, "kinesisvideo:" + "G" * 200, YOUR_STREAM, validate=True,
                                       identity_policies=[doc(allow(action="kinesisvideo:" + "*?" * 1_000 + "x"))]),
            None),
]


# ------------------------------------------------------------------ fixtures


@dataclass
class Steady:
    """Callers that keep asking ordinary questions while the hostile inputs arrive."""

    answers: list[float] = field(default_factory=list)     # completion times
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, client: AuthzClient) -> None:
        while not self.stop.is_set():
            try:
                yes = client.authorize(VIEWER, GET, YOUR_STREAM)
                no = client.authorize(VIEWER, "kinesisvideo:PutMedia", YOUR_STREAM)
                wrong = [d for d, want in ((yes.decision, pb.DECISION_ALLOW), (no.decision, pb.DECISION_IMPLICIT_DENY))
                         if d != want]
                with self.lock:
                    if wrong:
                        self.failures.append(f"wrong answers {wrong}")
                    self.answers.append(time.monotonic())
            except CallError as exc:
                with self.lock:
                    self.failures.append(str(exc))

    def answered_between(self, start: float, end: float) -> int:
        with self.lock:
            return sum(1 for t in self.answers if start <= t <= end)

    def wait_for(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.answers) >= n:
                    return
            self.stop.wait(0.01)                # polling a condition, with a deadline
        raise AssertionError(f"the steady callers got fewer than {n} answers in {timeout} s")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("hostile")
    # One Simulate worker per attacker: each hostile Simulate must meet its own refusal, not the
    # concurrency limit (which tests/test_simulate_isolation.py covers).
    s = start_server(copy_example_bundle(root / "bundle"), root / "state", "--watch-interval", "0",
                     "--simulate-processes", str(ATTACKERS))
    yield s
    s.kill()


@pytest.fixture(scope="module")
def clients(server: ServerProcess) -> Iterator[Clients]:
    with server.client(timeout=30) as authz, server.admin(timeout=30) as admin, \
            grpc.insecure_channel(server.addr, options=RAW_OPTIONS) as raw, \
            grpc.insecure_channel(server.admin_addr, options=RAW_OPTIONS) as admin_raw:
        # The one legitimate write: a user whose policy holds a pathological (but valid) pattern.
        glob = admin.create_policy(ACCT, "Glob", doc(allow(
            resource=f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/{PATHOLOGICAL}")))
        admin.create_user(ACCT, "glob-victim")
        admin.attach_policy(ACCT, "user", "glob-victim", glob.arn)
        yield Clients(authz, admin, raw, admin_raw)


@pytest.fixture(scope="module")
def steady(server: ServerProcess, clients: Clients) -> Iterator[Steady]:
    state = Steady()
    channels = [server.client(timeout=30) for _ in range(STEADY_CALLERS)]
    threads = [threading.Thread(target=state.run, args=(c,), daemon=True) for c in channels]
    for t in threads:
        t.start()
    state.wait_for(20)
    yield state
    state.stop.set()
    for t in threads:
        t.join(30)
    for c in channels:
        c.close()


def refusal(case: Hostile, clients: Clients) -> tuple[grpc.StatusCode, str, str, float]:
    """(code, message, field, seconds) of a call that must fail."""
    start = time.monotonic()
    try:
        case.call(clients)
    except CallError as exc:
        return exc.code, exc.message, exc.field, time.monotonic() - start
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or "", "", time.monotonic() - start   # type: ignore[attr-defined]
    raise AssertionError(f"{case.group} / {case.name}: the hostile input was accepted")


def assert_refused_clearly(case: Hostile, clients: Clients) -> None:
    code, message, fld, seconds = refusal(case, clients)
    assert code == case.code, f"{case.name}: {code.name}: {message}"
    for fragment in case.says:
        assert fragment in message, f"{case.name}: {fragment!r} not in {message!r}"
    if case.field is not None:
        assert fld == case.field, f"{case.name}: field {fld!r}"
    assert len(message) < 2_000, "the refusal must not echo the hostile input back"
    assert seconds <= QUICK_S, f"{case.name}: refused after {seconds:.2f} s"


# ------------------------------------------------------------------ tests


@pytest.mark.parametrize("case", HOSTILE, ids=[f"{c.group}: {c.name}" for c in HOSTILE])
def test_hostile_input_is_refused_quickly_with_what_to_fix(case: Hostile, clients: Clients, steady: Steady) -> None:
    assert_refused_clearly(case, clients)
    steady.wait_for(len(steady.answers) + 1)            # ordinary callers are still answered afterwards ...
    assert steady.failures == []                         # ... and were never refused or answered wrongly


@pytest.mark.parametrize("case", ANSWERED, ids=[c.name for c in ANSWERED])
def test_pathological_but_legal_patterns_are_answered_in_linear_time(case: Hostile, clients: Clients) -> None:
    start = time.monotonic()
    answer = case.call(clients)
    seconds = time.monotonic() - start
    assert answer.decision == pb.DECISION_IMPLICIT_DENY         # no match (the text never ends in "b")
    assert seconds <= QUICK_S, f"{case.name}: answered after {seconds:.2f} s"


def test_hostile_barrage_leaves_state_and_concurrent_callers_undisturbed(server: ServerProcess, clients: Clients,
                                                                          steady: Steady) -> None:
    before = clients.admin.status()
    results: list[tuple[str, grpc.StatusCode]] = []
    lock = threading.Lock()

    def attack(offset: int) -> None:
        with server.client(timeout=30) as authz, grpc.insecure_channel(server.addr, options=RAW_OPTIONS) as raw:
            own = Clients(authz, clients.admin, raw, clients.admin_raw)
            for _ in range(ATTACK_ROUNDS):
                for case in HOSTILE[offset::ATTACKERS]:
                    code, _, _, _ = refusal(case, own)
                    with lock:
                        results.append((case.name, code))

    start = time.monotonic()
    attackers = [threading.Thread(target=attack, args=(i,)) for i in range(ATTACKERS)]
    for t in attackers:
        t.start()
    for t in attackers:
        t.join(120)
    end = time.monotonic()

    assert len(results) == ATTACK_ROUNDS * len(HOSTILE)
    assert all(code == case_code(name) for name, code in results), [r for r in results if r[1] != case_code(r[0])]
    assert steady.failures == []
    assert steady.answered_between(start, end) >= STEADY_CALLERS, "callers got no answers during the barrage"
    after = clients.admin.status()
    # Nothing any hostile input carried was applied: no new revision, no new entity.
    assert (after.revision, dict(after.counts)) == (before.revision, dict(before.counts))
    refused = ("TooBig", "Deep", "Dup", "Utf", "Huge")
    assert [p.name for p in clients.admin.list_policies(ACCT) if p.name in refused] == []


def case_code(name: str) -> grpc.StatusCode | None:
    return next(c.code for c in HOSTILE if c.name == name)
