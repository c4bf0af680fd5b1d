"""The Python clients: typed results and error details from a live server, the asyncio client, and which calls
gRPC retries (proved against a real server on a real port that refuses the first attempts)."""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import grpc
import pytest

from authz.aio_client import AsyncAdminClient, AsyncAuthzClient
from authz.client import (ADMIN, AUTHORIZER, NEVER_RETRIED_METHODS, RETRIED_METHODS, RETRY_MAX_ATTEMPTS,
                          AdminClient, AuthzClient, CallError, Check, Credentials, Decision, DecisionKind,
                          Explanation, FieldViolation, MatchedStatement, PolicyInfo, ServerStatus, Validation,
                          service_config)
from authz.v1 import authz_pb2 as pb
from tests.server_fixture import ServerProcess, copy_example_bundle, start_server

ACCT, PARTNER = "123456789012", "111111111111"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"
GET, PUT = "kinesisvideo:GetMedia", "kinesisvideo:PutMedia"
ROLE = f"arn:aws:iam::{ACCT}:role/PartnerStreamWriter"
PARTNER_USER = f"arn:aws:iam::{PARTNER}:user/partner-uploader"
READ_ONLY = f"arn:aws:iam::{ACCT}:policy/KinesisVideoReadOnly"
ALLOW_ALL = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"}]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("client")
    s = start_server(copy_example_bundle(root / "bundle"), root / "state")
    yield s
    s.kill()


# ------------------------------------------------------------------ typed results


def test_decisions_are_typed(authz: AuthzClient) -> None:
    allowed = authz.authorize(VIEWER, GET, STREAM)
    assert isinstance(allowed, Decision) and allowed.allowed and allowed.decision is DecisionKind.ALLOW
    assert allowed.deciding_statements == (MatchedStatement("identity", READ_ONLY, allowed.deciding_statements[0].sid,
                                                            allowed.deciding_statements[0].index, "Allow"),)
    assert allowed.revision >= 1 and allowed.explanation is None
    assert allowed.proto.decision == pb.DECISION_ALLOW                  # the raw message stays at hand

    denied = authz.authorize(VIEWER, PUT, STREAM, explain=True)
    assert not denied.allowed and denied.decision is DecisionKind.IMPLICIT_DENY
    assert isinstance(denied.explanation, Explanation) and denied.explanation.decided_by == "no_allow"
    with pytest.raises(AttributeError):
        denied.revision = 0          # type: ignore[misc]  # frozen

    batch = authz.authorize_batch([Check(VIEWER, GET, STREAM), Check(VIEWER, PUT, STREAM)])
    assert [d.decision for d in batch] == [DecisionKind.ALLOW, DecisionKind.IMPLICIT_DENY]

    simulated = authz.simulate(VIEWER, PUT, STREAM, identity_policies=[ALLOW_ALL])
    assert isinstance(simulated, Decision) and simulated.allowed
    assert [s.policy_type for s in simulated.deciding_statements] == ["identity"]


def test_an_unknown_decision_number_is_a_deny() -> None:
    odd = Decision.from_proto(pb.AuthorizeResponse(decision=7, revision=3))   # from a newer server, say
    assert odd.decision is DecisionKind.UNSPECIFIED and not odd.allowed


def test_assume_role_gives_credentials(authz: AuthzClient) -> None:
    grant = authz.assume_role(PARTNER_USER, ROLE, "typed-session", duration_seconds=900)
    assert isinstance(grant, Credentials)
    assert grant.assumed_role_arn == f"arn:aws:sts::{ACCT}:assumed-role/PartnerStreamWriter/typed-session"
    assert grant.access_key_id.startswith("ASIA") and grant.secret_access_key and grant.session_token
    assert grant.secret_access_key not in repr(grant) and grant.session_token not in repr(grant)
    assert authz.authorize(grant.assumed_role_arn, PUT, STREAM, access_key_id=grant.access_key_id).revision >= 1


def test_admin_reads_are_typed(admin: AdminClient) -> None:
    policy = admin.get_policy(READ_ONLY)
    assert isinstance(policy, PolicyInfo) and policy.arn == READ_ONLY and policy.default_version in policy.versions
    assert READ_ONLY in [p.arn for p in admin.list_policies(ACCT)]
    status = admin.status()
    assert isinstance(status, ServerStatus) and status.serving and status.counts["users"] >= 1
    report = admin.validate_policy("identity", {"Version": "2012-10-17", "Statement": [{"Effect": "Maybe"}]})
    assert isinstance(report, Validation) and not report.valid and report.errors[0].path.startswith("$.Statement")


def test_call_errors_carry_reason_and_field_violations(authz: AuthzClient, admin: AdminClient) -> None:
    with pytest.raises(CallError) as info:
        authz.authorize(VIEWER, "kinesisvideo:Get*", STREAM)
    err = info.value
    assert (err.code, err.field, err.reason, err.domain) == (grpc.StatusCode.INVALID_ARGUMENT, "action",
                                                             "INVALID_ACTION", "authz.kvs")
    assert err.violations == (FieldViolation("action", err.message),)
    with pytest.raises(CallError) as info:
        admin.get_policy(f"arn:aws:iam::{ACCT}:policy/Missing")
    assert (info.value.code, info.value.reason, info.value.violations) == (grpc.StatusCode.NOT_FOUND, "NOT_FOUND", ())


# ------------------------------------------------------------------ asyncio


def test_the_asyncio_clients_answer_as_the_blocking_ones(server: ServerProcess, authz: AuthzClient) -> None:
    async def main() -> None:
        async with AsyncAuthzClient(server.addr) as a, AsyncAdminClient(server.admin_addr, token=server.token) as adm:
            await a.wait_until_serving(timeout=10)
            assert await a.health() == "SERVING"
            got = await a.authorize(VIEWER, GET, STREAM, explain=True)
            expected = authz.authorize(VIEWER, GET, STREAM, explain=True)
            assert got.decision == expected.decision and got.deciding_statements == expected.deciding_statements
            assert got.explanation == expected.explanation
            assert await a.is_allowed(VIEWER, GET, STREAM) and not await a.is_allowed(VIEWER, PUT, STREAM)
            batch = await a.authorize_batch([Check(VIEWER, GET, STREAM), Check(VIEWER, PUT, STREAM)])
            assert [d.allowed for d in batch] == [True, False]
            assert (await a.simulate(VIEWER, PUT, STREAM, identity_policies=[ALLOW_ALL])).allowed
            grant = await a.assume_role(PARTNER_USER, ROLE, "async-session")
            assert isinstance(grant, Credentials) and grant.assumed_role_arn.endswith("/async-session")
            with pytest.raises(CallError) as info:
                await a.authorize("viewer", GET, STREAM)
            assert (info.value.reason, info.value.field) == ("INVALID_PRINCIPAL", "principal")
            assert isinstance(await adm.get_policy(READ_ONLY), PolicyInfo)
            created = await adm.create_user(ACCT, "async-user")
            assert created.arn == f"arn:aws:iam::{ACCT}:user/async-user"
        async with AsyncAdminClient(server.admin_addr) as no_token:
            with pytest.raises(CallError) as info:
                await no_token.status()
            assert info.value.reason == "UNAUTHENTICATED_ADMIN"
    asyncio.run(main())


# ------------------------------------------------------------------ retries


def test_retried_and_never_retried_methods_cover_the_services_once() -> None:
    services = {AUTHORIZER: pb.DESCRIPTOR.services_by_name["Authorizer"],
                ADMIN: pb.DESCRIPTOR.services_by_name["PolicyAdmin"]}
    every = {(name, m.name) for name, s in services.items() for m in s.methods}
    ours = {(s, m) for s, m in RETRIED_METHODS if s in services}
    assert ours | NEVER_RETRIED_METHODS == every and not ours & NEVER_RETRIED_METHODS
    assert (AUTHORIZER, "AssumeRole") in NEVER_RETRIED_METHODS
    assert ours == {(AUTHORIZER, "Authorize"), (AUTHORIZER, "AuthorizeBatch"), (AUTHORIZER, "Simulate"),
                    (ADMIN, "GetPolicy"), (ADMIN, "ListPolicies"), (ADMIN, "Status"), (ADMIN, "ValidatePolicy"),
                    (ADMIN, "WhoCan"), (ADMIN, "AccessOf")}
    config = json.loads(service_config())
    [method_config] = config["methodConfig"]
    assert {(n["service"], n["method"]) for n in method_config["name"]} == RETRIED_METHODS
    assert method_config["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]


class FlakyServer:
    """A real gRPC server on a real port: every method fails its first `failures` calls with UNAVAILABLE,
    then answers; counts the calls of each method."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()
        self.server = grpc.server(ThreadPoolExecutor(4))
        self.server.add_generic_rpc_handlers((self,))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.server.start()

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler:
        answers: dict[str, bytes] = {
            f"/{AUTHORIZER}/Authorize": pb.AuthorizeResponse(decision=pb.DECISION_ALLOW, revision=9).SerializeToString(),
            f"/{AUTHORIZER}/AssumeRole": pb.AssumeRoleResponse(assumed_role_arn="arn").SerializeToString(),
            f"/{ADMIN}/CreateUser": pb.PrincipalInfo(arn="arn:u").SerializeToString(),
        }
        method = details.method

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                n = self.calls[method] = self.calls.get(method, 0) + 1
            if n <= self.failures:
                context.abort(grpc.StatusCode.UNAVAILABLE, f"attempt {n} refused")
            return answers[method]
        return grpc.unary_unary_rpc_method_handler(handle)

    def stop(self) -> None:
        self.server.stop(0).wait()


@pytest.fixture
def flaky() -> Iterator[Callable[[int], FlakyServer]]:
    started: list[FlakyServer] = []

    def make(failures: int) -> FlakyServer:
        started.append(FlakyServer(failures))
        return started[-1]
    yield make
    for s in started:
        s.stop()


FAILURES = RETRY_MAX_ATTEMPTS - 2      # fewer than the attempts gRPC makes, so that the last one succeeds


def test_authorize_is_retried_until_it_succeeds(flaky: Callable[[int], FlakyServer]) -> None:
    server = flaky(FAILURES)
    with AuthzClient(server.addr, timeout=30) as client:
        answer = client.authorize(VIEWER, GET, STREAM)
    assert answer.allowed and answer.revision == 9
    assert server.calls == {f"/{AUTHORIZER}/Authorize": FAILURES + 1}


def test_retries_stop_at_the_attempt_limit(flaky: Callable[[int], FlakyServer]) -> None:
    server = flaky(RETRY_MAX_ATTEMPTS + 1)
    with AuthzClient(server.addr, timeout=30) as client:
        assert not client.is_allowed(VIEWER, GET, STREAM)
    assert server.calls == {f"/{AUTHORIZER}/Authorize": RETRY_MAX_ATTEMPTS}


def test_retries_can_be_turned_off(flaky: Callable[[int], FlakyServer]) -> None:
    server = flaky(FAILURES)
    with AuthzClient(server.addr, timeout=30, options=[("grpc.enable_retries", 0)]) as client:
        assert not client.is_allowed(VIEWER, GET, STREAM)
    assert server.calls == {f"/{AUTHORIZER}/Authorize": 1}


def test_assume_role_and_admin_writes_are_never_retried(flaky: Callable[[int], FlakyServer]) -> None:
    server = flaky(FAILURES)
    with AuthzClient(server.addr, timeout=30) as client, AdminClient(server.addr, timeout=30) as admin:
        with pytest.raises(CallError) as info:
            client.assume_role(PARTNER_USER, ROLE, "once")
        assert info.value.code == grpc.StatusCode.UNAVAILABLE and info.value.message == "attempt 1 refused"
        with pytest.raises(CallError) as info:
            admin.create_user(ACCT, "once")
        assert info.value.message == "attempt 1 refused"
    assert server.calls == {f"/{AUTHORIZER}/AssumeRole": 1, f"/{ADMIN}/CreateUser": 1}


def test_the_asyncio_client_retries_the_same_calls(flaky: Callable[[int], FlakyServer]) -> None:
    server = flaky(FAILURES)

    async def main() -> tuple[Decision, Any]:
        async with AsyncAuthzClient(server.addr, timeout=30) as client:
            answer = await client.authorize(VIEWER, GET, STREAM)
            try:
                await client.assume_role(PARTNER_USER, ROLE, "once")
            except CallError as err:
                return answer, err
            return answer, None
    answer, err = asyncio.run(main())
    assert answer.allowed and isinstance(err, CallError) and err.code == grpc.StatusCode.UNAVAILABLE
    assert server.calls == {f"/{AUTHORIZER}/Authorize": FAILURES + 1, f"/{AUTHORIZER}/AssumeRole": 1}
