"""--assume-role-auth sigv4: AssumeRole proven by the caller's own signature, on a real server, with boto3's requests.

The request is what boto3's STS client produces: its `before-send` hook captures the prepared, signed
request and answers with a canned response, so nothing leaves the machine. The caller is the key that
signed it, and every parameter comes from the signed body: changing any of them, sending the unsigned
form, or signing for another service is refused, and no mutation of a signed request ever yields
credentials for anything but what was signed (a hypothesis property on the verifier).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote, urlsplit

import boto3
import grpc
import pytest
from botocore.awsrequest import AWSResponse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from authz.client import AuthzClient, CallError
from authz.records import Credential
from authz.v1 import authz_pb2 as pb
from tests import example_ids as ids
from tests.server_fixture import ServerProcess, copy_example_bundle, start_server

PARTNER_ACCOUNT = "111111111111"
PARTNER_USER = ids.user("partner-uploader", PARTNER_ACCOUNT)
PARTNER = ids.Key("AKIAEXAMPLEPARTNER01", "partner/EXAMPLE/secret/key/do/not/use/0")   # examples/bundle
ROLE = ids.PARTNER_ROLE                    # trusts account 111111111111 only
PUT = "kinesisvideo:PutMedia"
_CANNED = (b'<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/"><AssumeRoleResult>'
           b'</AssumeRoleResult><ResponseMetadata><RequestId>0</RequestId></ResponseMetadata></AssumeRoleResponse>')


def session(name: str) -> str:
    return f"arn:aws:sts::{ids.ACCOUNT}:assumed-role/PartnerStreamWriter/{name}"


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def boto3_request(key: ids.Key, role_arn: str, name: str, *, service: str = "sts", region: str = ids.REGION,
                  **params: Any) -> pb.StsSignedRequest:
    """The AssumeRole request boto3's STS client signs with `key` (service: the client to sign with)."""
    client = boto3.client(service, region_name=region, aws_access_key_id=key.access_key_id,
                          aws_secret_access_key=key.secret, aws_session_token=key.token,
                          endpoint_url="https://sts.us-west-2.amazonaws.com")
    captured: list[Any] = []

    def before_send(request: Any, **_: Any) -> AWSResponse:
        captured.append(request)
        return AWSResponse(request.url, 200, {}, _Raw(_CANNED))

    client.meta.events.register("before-send", before_send)
    if service == "sts":
        client.assume_role(RoleArn=role_arn, RoleSessionName=name, **params)
    else:                                       # any signed POST of another service, for the scope test
        client.list_streams()
    r = captured[0]
    url = urlsplit(r.url)
    headers = [pb.StsHeader(name=k, value=v if isinstance(v, str) else v.decode()) for k, v in r.headers.items()]
    headers.append(pb.StsHeader(name="Host", value=url.netloc))     # added by the HTTP layer, and signed
    body = r.body if isinstance(r.body, bytes) else (r.body or "").encode()
    return pb.StsSignedRequest(method=r.method, path=url.path or "/", query=url.query, headers=headers, body=body)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("signed")
    s = start_server(copy_example_bundle(root / "bundle"), root / "state", "--watch-interval", "0",
                     "--assume-role-auth", "sigv4", "--region", ids.REGION)
    yield s
    s.kill()


def signed_call(authz: AuthzClient, signed: pb.StsSignedRequest, **fields: Any) -> pb.AssumeRoleResponse:
    return authz.raw(authz.stub.AssumeRole, pb.AssumeRoleRequest(signed_request=signed, **fields))


def refused(authz: AuthzClient, signed: pb.StsSignedRequest, **fields: Any) -> CallError:
    with pytest.raises(CallError) as info:
        signed_call(authz, signed, **fields)
    return info.value


def test_boto3_signed_request_gets_a_session_for_the_key_owner(authz: AuthzClient) -> None:
    # The signed tags reach the decision: this role's trust policy does not allow sts:TagSession.
    tagged = refused(authz, boto3_request(PARTNER, ROLE, "signed-1", Tags=[{"Key": "site", "Value": "lyon"}]))
    assert tagged.code == grpc.StatusCode.PERMISSION_DENIED and "sts:TagSession" in tagged.message
    grant = signed_call(authz, boto3_request(PARTNER, ROLE, "signed-1", DurationSeconds=900))
    assert grant.decision == pb.DECISION_ALLOW and grant.assumed_role_arn == session("signed-1")
    assert authz.authorize(grant.assumed_role_arn, PUT, ids.SHARED_STREAM,
                           access_key_id=grant.access_key_id).decision == pb.DECISION_ALLOW


def test_the_client_helper_signs_for_its_caller(authz: AuthzClient) -> None:
    grant = authz.assume_role_signed(ROLE, "signed-helper", access_key_id=PARTNER.access_key_id,
                                     secret_access_key=PARTNER.secret, region="us-west-2", duration_seconds=1200,
                                     session_policy={"Version": "2012-10-17", "Statement": [
                                         {"Effect": "Allow", "Action": PUT, "Resource": "*"}]})
    assert grant.assumed_role_arn == session("signed-helper")


def test_unsigned_assume_role_is_refused_naming_the_flag(authz: AuthzClient) -> None:
    with pytest.raises(CallError) as info:
        authz.assume_role(PARTNER_USER, ROLE, "claims-to-be-partner")      # what any caller could claim
    assert info.value.code == grpc.StatusCode.UNAUTHENTICATED
    assert "--assume-role-auth sigv4" in info.value.message and "signed_request" in info.value.message


def test_another_key_cannot_act_as_the_partner(authz: AuthzClient) -> None:
    err = refused(authz, boto3_request(ids.VIEWER, ROLE, "viewer-tries"))    # a real key, not trusted by the role
    assert err.code == grpc.StatusCode.PERMISSION_DENIED and ids.user("viewer") in err.message


def _replace_body(signed: pb.StsSignedRequest, old: str, new: str) -> pb.StsSignedRequest:
    out = pb.StsSignedRequest()
    out.CopyFrom(signed)
    assert old.encode() in out.body
    out.body = out.body.replace(old.encode(), new.encode())
    return out


@pytest.mark.parametrize("old,new", [
    (quote("role/PartnerStreamWriter", safe=""), quote("role/Other", safe="")),
    ("RoleSessionName=tamper", "RoleSessionName=tampex"),
    ("DurationSeconds=900", "DurationSeconds=3600"),
    ("Tags.member.1.Value=a", "Tags.member.1.Value=b"),
])
def test_any_change_to_the_signed_body_is_refused(authz: AuthzClient, old: str, new: str) -> None:
    signed = boto3_request(PARTNER, ROLE, "tamper", DurationSeconds=900, Tags=[{"Key": "k", "Value": "a"}])
    err = refused(authz, _replace_body(signed, old, new))
    assert err.code == grpc.StatusCode.UNAUTHENTICATED and "SignatureDoesNotMatch" in err.message


def _with_header(signed: pb.StsSignedRequest, name: str, value: str) -> pb.StsSignedRequest:
    out = pb.StsSignedRequest()
    out.CopyFrom(signed)
    out.headers.append(pb.StsHeader(name=name, value=value))
    return out


def test_requests_whose_body_is_not_signed_or_that_use_other_forms_are_refused(authz: AuthzClient) -> None:
    good = boto3_request(PARTNER, ROLE, "forms")
    unsigned_payload = _with_header(good, "X-Amz-Content-SHA256", "UNSIGNED-PAYLOAD")
    assert refused(authz, unsigned_payload).code == grpc.StatusCode.UNAUTHENTICATED
    in_query = pb.StsSignedRequest()
    in_query.CopyFrom(good)
    in_query.query = "RoleArn=" + quote(ROLE, safe="")
    err = refused(authz, in_query)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.field == "signed_request.query"
    twice = _with_header(good, "X-AMZ-DATE", "20200101T000000Z")
    assert refused(authz, twice).code == grpc.StatusCode.INVALID_ARGUMENT
    wrong_secret = boto3_request(ids.Key(PARTNER.access_key_id, "not-the-secret"), ROLE, "forms")
    assert refused(authz, wrong_secret).code == grpc.StatusCode.UNAUTHENTICATED
    other_service = boto3_request(PARTNER, ROLE, "forms", service="kinesisvideo")
    err = refused(authz, other_service)
    assert err.code == grpc.StatusCode.UNAUTHENTICATED and "sts" in err.message
    other_region = boto3_request(PARTNER, ROLE, "forms", region="eu-west-1")     # not this server's --region
    err = refused(authz, other_region)
    assert err.code == grpc.StatusCode.UNAUTHENTICATED and "eu-west-1" in err.message
    err = refused(authz, good, caller=ids.user("admin"))
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.field == "caller"
    err = refused(authz, good, context={"aws:SourceIp": pb.ContextValues(values=["10.0.0.1"])})
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.field == "context"
    policy_arns = boto3_request(PARTNER, ROLE, "forms", PolicyArns=[{"arn": "arn:aws:iam::aws:policy/X"}])
    err = refused(authz, policy_arns)
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and "PolicyArns" in err.message


def test_the_unsigned_form_stays_the_default(tmp_path: Path) -> None:
    s = start_server(copy_example_bundle(tmp_path / "bundle"), None, "--watch-interval", "0", "--region", ids.REGION,
                     admin=None, token=None)
    try:
        with s.client() as authz:
            assert authz.assume_role(PARTNER_USER, ROLE, "unsigned").assumed_role_arn == session("unsigned")
            # A signed request is verified in this mode too.
            assert signed_call(authz, boto3_request(PARTNER, ROLE, "signed")).assumed_role_arn == session("signed")
            bad = boto3_request(ids.Key(PARTNER.access_key_id, "wrong"), ROLE, "signed")
            assert refused(authz, bad).code == grpc.StatusCode.UNAUTHENTICATED
    finally:
        s.kill()


# ------------------------------------------------------------------ the whole class: nothing unsigned is believed


_KEYS = {PARTNER.access_key_id: Credential(PARTNER.access_key_id, PARTNER.secret, PARTNER_USER)}


@pytest.fixture(scope="module")
def original() -> tuple[pb.StsSignedRequest, datetime]:
    signed = boto3_request(PARTNER, ROLE, "prop-session", DurationSeconds=1800, Policy='{"Version":"2012-10-17",'
                           '"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}',
                           Tags=[{"Key": "site", "Value": "lyon"}], ExternalId="ext-1234")
    date = next(h.value for h in signed.headers if h.name.lower() == "x-amz-date")
    return signed, datetime.strptime(date, "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)


def _mutate(signed: pb.StsSignedRequest, data: st.DataObject) -> pb.StsSignedRequest:
    out = pb.StsSignedRequest()
    out.CopyFrom(signed)
    what = data.draw(st.sampled_from(["body-byte", "body-insert", "header-value", "header-drop", "header-add",
                                      "method", "path", "query"]))
    if what in ("body-byte", "body-insert"):
        at = data.draw(st.integers(0, len(out.body)))
        byte = data.draw(st.binary(min_size=1, max_size=3))
        out.body = out.body[:at] + byte + out.body[at + (what == "body-byte"):]
    elif what in ("header-value", "header-drop"):
        i = data.draw(st.integers(0, len(out.headers) - 1))
        if what == "header-drop":
            del out.headers[i]
        else:
            out.headers[i].value = data.draw(st.text(max_size=40))
    elif what == "header-add":
        out.headers.append(pb.StsHeader(name=data.draw(st.sampled_from(["X-Amz-Security-Token", "x-forwarded-for",
                                                                        "X-Amz-Content-Sha256", "Extra"])),
                                        value=data.draw(st.text(max_size=40))))
    elif what == "method":
        out.method = data.draw(st.sampled_from(["GET", "PUT", "post"]))
    elif what == "path":
        out.path = data.draw(st.sampled_from(["/x", "//", "/./", ""]))
    else:
        out.query = data.draw(st.sampled_from(["Action=AssumeRole", "RoleSessionName=x", "a"]))
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_property_a_mutated_signed_request_never_asks_for_anything_unsigned(
        original: tuple[pb.StsSignedRequest, datetime], data: st.DataObject) -> None:
    from authz.policy.errors import AuthzError
    from authz.server.sts import Unauthenticated, verify_assume_role

    signed, now = original
    expected = verify_assume_role(signed, _KEYS.get, now)
    assert (expected.caller, expected.role_arn, expected.session_name) == (PARTNER_USER, ROLE, "prop-session")
    mutated = _mutate(signed, data)
    try:
        got = verify_assume_role(mutated, _KEYS.get, now)
    except (Unauthenticated, AuthzError):
        return                                                   # refused: fine
    assert got == expected, "a changed request was believed to ask something that was not signed"
