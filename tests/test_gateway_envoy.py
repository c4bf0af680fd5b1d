"""The real Envoy with the shipped config in front of a recording upstream, asking the real sidecar (server.py).

Clients are botocore-signed HTTP requests and boto3's own kinesisvideo clients. Every refusal is
also checked at the upstream: a refused request must never reach it.
"""

from __future__ import annotations

import http.client
import json
import shutil
import ssl
import subprocess
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import boto3
import grpc
import pytest
from botocore.auth import SigV4Auth, SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.utils import percent_encode_sequence

from authz.server import healthcheck
from authz.v1 import authz_pb2, authz_pb2_grpc

from tests.example_ids import (ACCOUNT, ADMIN, CAMERA, OTHER_STREAM, PARTNER_ROLE, REGION, SHARED_STREAM, VIEWER,
                                WRITER, YOUR_CHANNEL, YOUR_STREAM, Key, stream, user)
from bench.gateway_env import ENVOY_BIN, SHIPPED_ENVOY_CONFIG
from tests.gateway_env import (  # noqa: F401 (gateway, private_gateway: fixtures)
    Gateway, gateway, make_test_pki, private_gateway, start_gateway)

pytestmark = pytest.mark.integration

TEST_ID = "x-test-id"          # a header every test request carries, to find it (or not) at the upstream

MKV = b"\x1a\x45\xdf\xa3" + bytes(range(256)) * 64      # an EBML header and 16 KiB of "media"


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]
    body: bytes
    test_id: str

    def error(self) -> tuple[str, str]:
        doc = json.loads(self.body)
        assert self.headers.get("x-amzn-errortype") == doc["__type"]
        return doc["__type"], doc["Message"]


def send(gw: Gateway, key: Key | None, path: str, body: bytes = b"", *, headers: Mapping[str, str] | None = None,
         method: str = "POST", region: str = REGION, unsigned_payload: bool = False, chunks: int = 0,
         tamper: Mapping[str, str] | None = None) -> Reply:
    """One signed request through Envoy. `chunks` > 0 streams the body in that many chunks (PutMedia)."""
    test_id = uuid.uuid4().hex
    hdrs = {TEST_ID: test_id, **(headers or {})}
    if unsigned_payload:
        hdrs["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
    req = AWSRequest(method, gw.url + path, data=body, headers=hdrs)
    if key is not None:
        SigV4Auth(key.credentials(), "kinesisvideo", region).add_auth(req)
    sent = {k: v for k, v in req.headers.items()}
    sent.update(tamper or {})
    url = urlsplit(gw.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        if chunks:
            size = -(-len(body) // chunks)
            conn.request(method, path, body=(body[i:i + size] for i in range(0, len(body), size)), headers=sent,
                         encode_chunked=True)
        else:
            conn.request(method, path, body=body, headers=sent)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(), test_id)
    finally:
        conn.close()


def put_media(gw: Gateway, key: Key, *, name: str | None = None, arn: str | None = None,
              extra: Mapping[str, str] | None = None) -> Reply:
    headers = {"Content-Type": "application/octet-stream", "x-amzn-fragment-timecode-type": "ABSOLUTE",
               "x-amzn-producer-start-timestamp": "1768478400.000", **(extra or {})}
    if name is not None:
        headers["x-amzn-stream-name"] = name
    if arn is not None:
        headers["x-amzn-stream-arn"] = arn
    return send(gw, key, "/putMedia", MKV, headers=headers, unsigned_payload=True, chunks=4)


def reached(gw: Gateway, reply: Reply) -> list[Any]:
    return gw.upstream.with_header(TEST_ID, reply.test_id)


def assert_refused(gw: Gateway, reply: Reply, status: int, code: str) -> str:
    assert reply.status == status, reply.body
    got, message = reply.error()
    assert got == code, message
    assert reached(gw, reply) == [], "a refused request reached the upstream"
    return message


def assert_passed(gw: Gateway, reply: Reply, principal: str, action: str, resource: str) -> Any:
    assert reply.status == 200, reply.body
    (rec,) = reached(gw, reply)
    assert rec.headers["x-authz-principal"] == principal
    assert rec.headers["x-authz-action"] == action
    assert rec.headers["x-authz-resource"] == resource
    return rec


def client(gw: Gateway, key: Key, service: str = "kinesisvideo") -> Any:
    return boto3.client(service, endpoint_url=gw.url, region_name=REGION, aws_access_key_id=key.access_key_id,
                        aws_secret_access_key=key.secret, aws_session_token=key.token,
                        config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10))


def refused_by_boto(call: Any, code: str = "AccessDeniedException", status: int = 403, **kwargs: Any) -> str:
    with pytest.raises(ClientError) as info:
        call(**kwargs)
    err = info.value.response
    assert err["Error"]["Code"] == code, err
    assert err["ResponseMetadata"]["HTTPStatusCode"] == status
    return str(err["Error"]["Message"])


def assume_partner_role(gw: Gateway, session_name: str) -> tuple[str, Key]:
    with grpc.insecure_channel(gw.sidecar.address) as channel:
        grant = authz_pb2_grpc.AuthorizerStub(channel).AssumeRole(authz_pb2.AssumeRoleRequest(
            caller=user("partner-uploader", "111111111111"), role_arn=PARTNER_ROLE, session_name=session_name),
            timeout=10)
    return grant.assumed_role_arn, Key(grant.access_key_id, grant.secret_access_key, grant.session_token)


# ---------------------------------------------------------------------------------------------
# The four example policies


def test_camera_put_media_reaches_the_upstream(gateway: Gateway) -> None:
    # The camera also claims to be the admin, and another decision: the gateway's answer replaces both.
    forged = {"x-authz-principal": user("admin"), "x-authz-action": "kinesisvideo:DeleteStream",
              "x-authz-resource": OTHER_STREAM}
    reply = put_media(gateway, CAMERA, name="your_stream", extra=forged)
    rec = assert_passed(gateway, reply, user("camera"), "kinesisvideo:PutMedia", YOUR_STREAM)
    assert rec.body == MKV, "the streamed body must reach the upstream whole"
    acks = [json.loads(line) for line in reply.body.splitlines()]
    assert [a["FragmentTimecode"] for a in acks] == [0, 1, 2] and acks[0]["Bytes"] == len(MKV)


def test_viewer_put_media_gets_403_and_never_reaches_the_upstream(gateway: Gateway) -> None:
    message = assert_refused(gateway, put_media(gateway, VIEWER, name="your_stream"), 403, "AccessDeniedException")
    assert message.startswith(f"User: {user('viewer')} is not authorized to perform: kinesisvideo:PutMedia on "
                              f"resource: {YOUR_STREAM}")


def test_single_stream_writer_is_refused_on_any_other_stream(gateway: Gateway) -> None:
    assert_passed(gateway, put_media(gateway, WRITER, name="your_stream"), user("stream-writer"),
                  "kinesisvideo:PutMedia", YOUR_STREAM)
    assert_passed(gateway, put_media(gateway, WRITER, arn=YOUR_STREAM), user("stream-writer"),
                  "kinesisvideo:PutMedia", YOUR_STREAM)
    for name, arn in (("other_stream", None), ("shared_stream", None), ("not_registered", None),
                      (None, OTHER_STREAM)):
        assert_refused(gateway, put_media(gateway, WRITER, name=name, arn=arn), 403, "AccessDeniedException")


def test_read_only_user_lists_and_describes(gateway: Gateway) -> None:
    kvs = client(gateway, VIEWER)
    before = len(gateway.upstream.records)
    kvs.list_streams(MaxResults=10)
    kvs.describe_stream(StreamName="your_stream")
    kvs.describe_stream(StreamARN=OTHER_STREAM)
    kvs.get_data_endpoint(StreamName="your_stream", APIName="GET_MEDIA")
    got = gateway.upstream.records[before:]
    assert [(r.path, r.headers["x-authz-action"], r.headers["x-authz-resource"]) for r in got] == [
        ("/listStreams", "kinesisvideo:ListStreams", "*"),
        ("/describeStream", "kinesisvideo:DescribeStream", YOUR_STREAM),
        ("/describeStream", "kinesisvideo:DescribeStream", OTHER_STREAM),
        ("/getDataEndpoint", "kinesisvideo:GetDataEndpoint", YOUR_STREAM),
    ]
    assert {r.headers["x-authz-principal"] for r in got} == {user("viewer")}
    refused_by_boto(kvs.create_stream, StreamName="viewer_stream")
    refused_by_boto(kvs.delete_stream, StreamARN=YOUR_STREAM)
    assert len(gateway.upstream.records) == before + 4


def test_cross_account_role_session_writes_to_the_shared_stream(gateway: Gateway) -> None:
    session_arn, session = assume_partner_role(gateway, "partner-upload-1")
    assert session_arn == f"arn:aws:sts::{ACCOUNT}:assumed-role/PartnerStreamWriter/partner-upload-1"
    assert_passed(gateway, put_media(gateway, session, name="shared_stream"), session_arn,
                  "kinesisvideo:PutMedia", SHARED_STREAM)
    client(gateway, session).describe_stream(StreamName="shared_stream")
    assert_refused(gateway, put_media(gateway, session, name="your_stream"), 403, "AccessDeniedException")
    refused_by_boto(client(gateway, session).list_streams)
    # Without its session token the temporary key is nobody.
    tokenless = Key(session.access_key_id, session.secret)
    assert_refused(gateway, put_media(gateway, tokenless, name="shared_stream"), 403, "UnrecognizedClientException")


# ---------------------------------------------------------------------------------------------
# boto3 as the client


def test_boto3_calls_are_allowed_or_refused_exactly_per_policy(gateway: Gateway) -> None:
    admin, camera, viewer, writer = (client(gateway, k) for k in (ADMIN, CAMERA, VIEWER, WRITER))
    admin.create_stream(StreamName="admin_stream", Tags={"team": "ops"})
    admin.tag_stream(StreamARN=YOUR_STREAM, Tags={"site": "lyon"})
    camera.create_stream(StreamName="camera_stream")
    refused_by_boto(camera.describe_stream, StreamName="your_stream")
    refused_by_boto(camera.list_streams)
    refused_by_boto(viewer.tag_stream, StreamARN=YOUR_STREAM, Tags={"site": "nice"})
    refused_by_boto(writer.list_streams)
    refused_by_boto(writer.describe_stream, StreamName="your_stream")
    viewer.describe_signaling_channel(ChannelName="your_channel")
    refused_by_boto(viewer.delete_signaling_channel, ChannelARN=YOUR_CHANNEL)

    # The media and archived-media clients reach the same gateway (GetMedia streams its answer back).
    media = client(gateway, VIEWER, "kinesis-video-media")
    payload = media.get_media(StreamName="your_stream", StartSelector={"StartSelectorType": "NOW"})["Payload"].read()
    assert b"RECEIVED" in payload
    refused_by_boto(client(gateway, CAMERA, "kinesis-video-media").get_media, StreamName="your_stream",
                    StartSelector={"StartSelectorType": "NOW"})
    client(gateway, VIEWER, "kinesis-video-archived-media").list_fragments(StreamName="other_stream")

    tagged = [r for r in gateway.upstream.records if r.path == "/createStream"
              and r.headers["x-authz-principal"] == user("admin")]
    assert json.loads(tagged[-1].body) == {"StreamName": "admin_stream", "Tags": {"team": "ops"}}


def test_wrong_secret_or_tampered_request_is_refused(gateway: Gateway) -> None:
    wrong = Key(VIEWER.access_key_id, "not/the/viewer/secret/key/at/all/000000")
    refused_by_boto(client(gateway, wrong).list_streams, "InvalidSignatureException")
    refused_by_boto(client(gateway, Key("AKIANOSUCHKEY0000000", VIEWER.secret)).list_streams,
                    "UnrecognizedClientException")
    body = json.dumps({"StreamName": "your_stream"}).encode()
    ok = send(gateway, VIEWER, "/describeStream", body, headers={"Content-Type": "application/json"})
    assert_passed(gateway, ok, user("viewer"), "kinesisvideo:DescribeStream", YOUR_STREAM)
    # Same signature, other stream in the body / other stream header / other path: all refused.
    other = json.dumps({"StreamName": "othr_stream"}).encode()
    tampered_body = send_tampered_body(gateway, VIEWER, "/describeStream", body, other)
    assert_refused(gateway, tampered_body, 403, "InvalidSignatureException")
    swapped = put_media(gateway, WRITER, name="your_stream", extra={})
    assert swapped.status == 200
    tampered_header = send(gateway, WRITER, "/putMedia", MKV, unsigned_payload=True,
                           headers={"x-amzn-stream-name": "your_stream", "Content-Type": "application/octet-stream"},
                           tamper={"x-amzn-stream-name": "other_stream"})
    assert_refused(gateway, tampered_header, 403, "InvalidSignatureException")
    unsigned = send(gateway, None, "/listStreams", b"{}", headers={"Content-Type": "application/json"})
    assert_refused(gateway, unsigned, 403, "MissingAuthenticationTokenException")


def send_tampered_body(gw: Gateway, key: Key, path: str, signed_body: bytes, sent_body: bytes) -> Reply:
    """Sign one body, send another of the same length (so only the signature can tell)."""
    assert len(signed_body) == len(sent_body)
    test_id = uuid.uuid4().hex
    req = AWSRequest("POST", gw.url + path, data=signed_body,
                     headers={TEST_ID: test_id, "Content-Type": "application/json"})
    SigV4Auth(key.credentials(), "kinesisvideo", REGION).add_auth(req)
    url = urlsplit(gw.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.request("POST", path, body=sent_body, headers=dict(req.headers.items()))
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(), test_id)
    finally:
        conn.close()


HANDSHAKE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
             "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def connect(gw: Gateway, key: Key, *, path: str = "/", handshake: Mapping[str, str] = HANDSHAKE) -> Reply:
    """A presigned signaling connect as the WebRTC SDKs open it (the handshake headers are not signed)."""
    test_id = uuid.uuid4().hex
    query = percent_encode_sequence({"X-Amz-ChannelARN": YOUR_CHANNEL, "X-Amz-ClientId": "viewer-1"})
    req = AWSRequest("GET", f"{gw.url}{path}?{query}", headers={TEST_ID: test_id})
    SigV4QueryAuth(key.credentials(), "kinesisvideo", REGION, expires=300).add_auth(req)
    url = urlsplit(req.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.request("GET", f"{url.path}?{url.query}", headers={**dict(req.headers.items()), **handshake})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(), test_id)
    finally:
        conn.close()


def test_presigned_signaling_connect(gateway: Gateway) -> None:
    assert_passed(gateway, connect(gateway, ADMIN), user("admin"), "kinesisvideo:ConnectAsViewer", YOUR_CHANNEL)
    assert_refused(gateway, connect(gateway, VIEWER), 403, "AccessDeniedException")
    # Finding 8: only a WebSocket handshake on / is a connect, never a GET elsewhere or a plain GET.
    assert_refused(gateway, connect(gateway, ADMIN, path="/describeStream"), 404, "UnknownOperationException")
    assert_refused(gateway, connect(gateway, ADMIN, handshake={}), 400, "InvalidArgumentException")


# ---------------------------------------------------------------------------------------------
# Only what the signature covers decides (findings 4 and 6)


def test_a_request_signed_for_another_region_is_refused(gateway: Gateway) -> None:
    # The gateway serves us-west-2 (--region): a us-east-1 signature neither resolves names there nor passes.
    kvs = boto3.client("kinesisvideo", endpoint_url=gateway.url, region_name="us-east-1",
                       aws_access_key_id=ADMIN.access_key_id, aws_secret_access_key=ADMIN.secret,
                       config=Config(retries={"max_attempts": 1}, connect_timeout=5, read_timeout=10))
    before = len(gateway.upstream.records)
    message = refused_by_boto(kvs.describe_stream, "InvalidSignatureException", StreamName="your_stream")
    assert "scoped to a valid region" in message and REGION in message
    reply = send(gateway, ADMIN, "/describeStream", b'{"StreamName":"your_stream"}',
                 headers={"Content-Type": "application/json"}, region="eu-west-1")
    assert_refused(gateway, reply, 403, "InvalidSignatureException")
    assert len(gateway.upstream.records) == before


def test_an_unsigned_payload_or_header_never_decides(gateway: Gateway) -> None:
    # UNSIGNED-PAYLOAD on an operation whose body names the stream: any body would have passed.
    reply = send(gateway, WRITER, "/describeStream", b'{"StreamName":"your_stream"}',
                 headers={"Content-Type": "application/json"}, unsigned_payload=True)
    assert "UNSIGNED-PAYLOAD" in assert_refused(gateway, reply, 403, "InvalidSignatureException")
    # A stream header added after signing (the camera signed none) is refused, not read.
    reply = send(gateway, WRITER, "/putMedia", MKV, unsigned_payload=True, chunks=4,
                 headers={"Content-Type": "application/octet-stream"}, tamper={"x-amzn-stream-name": "your_stream"})
    assert "x-amzn-stream-name" in assert_refused(gateway, reply, 403, "InvalidSignatureException")
    # Members that differ only in case: refused before they reach an upstream that could read either.
    reply = send(gateway, ADMIN, "/describeStream", b'{"StreamName":"your_stream","streamName":"other_stream"}',
                 headers={"Content-Type": "application/json"})
    assert "differ only in letter case" in assert_refused(gateway, reply, 400, "SerializationException")


# ---------------------------------------------------------------------------------------------
# Refusals before authorization


def test_malformed_and_unknown_requests_are_refused(gateway: Gateway) -> None:
    both = put_media(gateway, CAMERA, name="your_stream", arn=YOUR_STREAM)
    assert_refused(gateway, both, 400, "InvalidArgumentException")
    unknown = send(gateway, ADMIN, "/deleteEverything", b"{}", headers={"Content-Type": "application/json"})
    assert_refused(gateway, unknown, 404, "UnknownOperationException")
    get_root = send(gateway, ADMIN, "/", method="GET")
    assert_refused(gateway, get_root, 404, "UnknownOperationException")


def test_body_too_large_to_check_is_refused_by_envoy(gateway: Gateway) -> None:
    big = json.dumps({"StreamName": "your_stream", "Pad": "x" * (1 << 20)}).encode()
    reply = send(gateway, ADMIN, "/describeStream", big, headers={"Content-Type": "application/json"})
    assert reply.status == 413
    assert reached(gateway, reply) == []


# ---------------------------------------------------------------------------------------------
# Fail closed


def test_sidecar_stopped_while_envoy_runs_refuses_everything(private_gateway: Gateway) -> None:
    gw = private_gateway
    assert put_media(gw, CAMERA, name="your_stream").status == 200        # control: it worked a moment ago
    assert healthcheck.main(["--address", gw.sidecar.address]) == 0       # the container probe agrees
    gw.sidecar.stop()
    assert gw.sidecar.proc.returncode is not None
    assert healthcheck.main(["--address", gw.sidecar.address, "--timeout", "0.5"]) == 1
    before = len(gw.upstream.records)
    replies = [put_media(gw, CAMERA, name="your_stream"),
               send(gw, ADMIN, "/listStreams", b"{}", headers={"Content-Type": "application/json"}),
               send(gw, None, "/listStreams", b"{}", headers={"Content-Type": "application/json"})]
    with pytest.raises(ClientError) as info:
        client(gw, ADMIN).list_streams()
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert [r.status for r in replies] == [503, 503, 503]
    assert len(gw.upstream.records) == before, "a request reached the upstream without a decision"
    # Envoy counts them as authorization errors (not as denials the sidecar gave).
    assert gw.envoy.stat("http.kvs_gateway.ext_authz.kvs.error") >= len(replies) + 1
    assert gw.envoy.stat("http.kvs_gateway.ext_authz.kvs.ok") == 1


def test_shipped_envoy_config_validates_unmodified(tmp_path: Any) -> None:
    done = subprocess.run([str(ENVOY_BIN), "--mode", "validate", "-c", str(SHIPPED_ENVOY_CONFIG), "-l", "error",
                           "--base-id", str(uuid.uuid4().int % 1_000_000 + 1_000_000)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "OK" in done.stdout


# ---------------------------------------------------------------------------------------------
# --principal-from peer: the client certificate Envoy verified is the principal


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to issue test certificates")
def test_peer_certificate_identity_over_mutual_tls(tmp_path: Any) -> None:
    pki = make_test_pki(tmp_path, {"camera": user("camera"), "viewer": user("viewer")})
    gw = start_gateway(tmp_path, principal_from="peer", mtls=pki)
    try:
        def put(who: str | None) -> Reply:
            ctx = ssl.create_default_context(cafile=str(pki.ca))
            if who is not None:
                ctx.load_cert_chain(*map(str, pki.clients[who]))
            test_id = uuid.uuid4().hex
            conn = http.client.HTTPSConnection("127.0.0.1", gw.envoy.port, context=ctx, timeout=10)
            try:
                conn.request("POST", "/putMedia", body=MKV, headers={TEST_ID: test_id, "x-amzn-stream-name":
                                                                     "your_stream"})
                resp = conn.getresponse()
                return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read(), test_id)
            finally:
                conn.close()

        # No SigV4 at all: the certificate alone says who calls.
        assert_passed(gw, put("camera"), user("camera"), "kinesisvideo:PutMedia", YOUR_STREAM)
        assert_refused(gw, put("viewer"), 403, "AccessDeniedException")
        before = len(gw.upstream.records)
        with pytest.raises((ssl.SSLError, ConnectionError)):
            put(None)                 # no client certificate: the TLS handshake itself is refused
        assert len(gw.upstream.records) == before
    finally:
        gw.close()
