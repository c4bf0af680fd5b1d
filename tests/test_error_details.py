"""Standard google.rpc error details on a live server, read by a plain gRPC client through grpcio-status."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from authz.requests import MAX_BATCH
from authz.server.errors import REASON_DOMAIN, REASONS
from authz.v1 import authz_pb2 as pb
from authz.v1 import authz_pb2_grpc as pb_grpc
from tests.server_fixture import TOKEN, ServerProcess, copy_example_bundle, start_server

ACCT = "123456789012"
VIEWER = f"arn:aws:iam::{ACCT}:user/viewer"
STREAM = f"arn:aws:kinesisvideo:us-west-2:{ACCT}:stream/your_stream/0123456789012"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("details")
    s = start_server(copy_example_bundle(root / "bundle"), root / "state")
    yield s
    s.kill()


@pytest.fixture(scope="module")
def channels(server: ServerProcess) -> Iterator[tuple[grpc.Channel, grpc.Channel]]:
    with grpc.insecure_channel(server.addr) as decision, grpc.insecure_channel(server.admin_addr) as admin:
        yield decision, admin


def rich_error(call: Callable[..., Any], request: Any, **kw: Any) -> tuple[grpc.RpcError, status_pb2.Status]:
    with pytest.raises(grpc.RpcError) as info:
        call(request, timeout=10, **kw)
    status = rpc_status.from_call(info.value)   # also checks that code and message agree with the call's
    assert status is not None, "no grpc-status-details-bin in the trailing metadata"
    return info.value, status


def details(status: status_pb2.Status) -> tuple[error_details_pb2.ErrorInfo, error_details_pb2.BadRequest | None]:
    info, bad = None, None
    for any_ in status.details:
        if any_.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            any_.Unpack(info)
        elif any_.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            any_.Unpack(bad)
    assert info is not None, "every error carries an ErrorInfo"
    assert info.domain == REASON_DOMAIN
    return info, bad


@pytest.mark.parametrize("action,resource,field,reason", [
    ("kinesisvideo:Get*", STREAM, "action", "INVALID_ACTION"),
    ("kinesisvideo:GetMedia", "stream/your_stream", "resource", "INVALID_RESOURCE"),
])
def test_invalid_argument_carries_bad_request_and_reason(channels: tuple[grpc.Channel, grpc.Channel], action: str,
                                                         resource: str, field: str, reason: str) -> None:
    stub = pb_grpc.AuthorizerStub(channels[0])
    err, status = rich_error(stub.Authorize, pb.AuthorizeRequest(principal=VIEWER, action=action, resource=resource))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details().startswith(f"{field}: ")          # the human message is unchanged
    info, bad = details(status)
    assert info.reason == reason and info.metadata["field"] == field
    assert bad is not None
    assert [(v.field, v.description) for v in bad.field_violations] == [(field, err.details())]


def test_batch_violation_names_the_item(channels: tuple[grpc.Channel, grpc.Channel]) -> None:
    stub = pb_grpc.AuthorizerStub(channels[0])
    good = pb.AuthorizeRequest(principal=VIEWER, action="kinesisvideo:GetMedia", resource=STREAM)
    bad_item = pb.AuthorizeRequest(principal="viewer", action="kinesisvideo:GetMedia", resource=STREAM)
    _, status = rich_error(stub.AuthorizeBatch, pb.AuthorizeBatchRequest(requests=[good, bad_item]))
    info, bad = details(status)
    assert info.reason == "INVALID_PRINCIPAL"
    assert bad is not None and bad.field_violations[0].field == "requests[1].principal"


def test_limits_not_found_and_malformed_bytes_have_reasons(channels: tuple[grpc.Channel, grpc.Channel]) -> None:
    decision, admin = channels
    stub = pb_grpc.AuthorizerStub(decision)
    one = pb.AuthorizeRequest(principal=VIEWER, action="kinesisvideo:GetMedia", resource=STREAM)
    err, status = rich_error(stub.AuthorizeBatch, pb.AuthorizeBatchRequest(requests=[one] * (MAX_BATCH + 1)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info, bad = details(status)
    assert info.reason == "LIMIT_EXCEEDED" and bad is None      # BadRequest only for INVALID_ARGUMENT

    raw = decision.unary_unary("/authz.v1.Authorizer/Authorize")   # no serializers: bytes on the wire
    err, status = rich_error(raw, b"\x0a\x02\xff\xfe")               # field 1 with invalid UTF-8
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(status)[0].reason == "MALFORMED_MESSAGE"

    admin_stub = pb_grpc.PolicyAdminStub(admin)
    arn = f"arn:aws:iam::{ACCT}:policy/NoSuchPolicy"
    err, status = rich_error(admin_stub.GetPolicy, pb.PolicyRef(arn=arn),
                             metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    info, _ = details(status)
    assert info.reason == "NOT_FOUND" and info.metadata["field"] == "arn"


def test_admin_without_token_and_refused_assume_role(channels: tuple[grpc.Channel, grpc.Channel]) -> None:
    decision, admin = channels
    err, status = rich_error(pb_grpc.PolicyAdminStub(admin).Status, pb.Empty())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert details(status)[0].reason == "UNAUTHENTICATED_ADMIN"

    role = f"arn:aws:iam::{ACCT}:role/NoSuchRole"
    err, status = rich_error(pb_grpc.AuthorizerStub(decision).AssumeRole,
                             pb.AssumeRoleRequest(caller=VIEWER, role_arn=role, session_name="sess"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED     # as IAM: no trust, whether or not the role exists
    assert details(status)[0].reason == "ACCESS_DENIED"


def test_the_legacy_field_metadata_is_kept(channels: tuple[grpc.Channel, grpc.Channel]) -> None:
    stub = pb_grpc.AuthorizerStub(channels[0])
    err, _ = rich_error(stub.Authorize, pb.AuthorizeRequest(principal=VIEWER, action="", resource=STREAM))
    assert ("authz-field", "action") in tuple(err.trailing_metadata())


def test_every_reason_is_documented() -> None:
    api = (Path(__file__).resolve().parents[1] / "docs" / "api.md").read_text(encoding="utf-8")
    assert {r for r in REASONS if f"| `{r}` |" not in api} == set()


def test_a_rejected_policy_document_is_invalid_policy(channels: tuple[grpc.Channel, grpc.Channel]) -> None:
    admin = pb_grpc.PolicyAdminStub(channels[1])
    bad = '{"Version": "2012-10-17", "Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}]}'
    err, status = rich_error(admin.CreatePolicy, pb.CreatePolicyRequest(account=ACCT, name="Bad", document=bad),
                             metadata=(("authorization", f"Bearer {TOKEN}"),))
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "Effect" in err.details()
    info, violations = details(status)
    assert info.reason == "INVALID_POLICY"
    assert violations is not None and violations.field_violations[0].description == err.details()
