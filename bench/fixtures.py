"""Deterministic benchmark inputs: identity policies, the KVS request mix, gRPC payloads and bundle files."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from authz.evaluate import Request

ACCOUNT = "123456789012"
REGION = "us-west-2"
CREATION = "1612345678901"           # creation-time suffix of every fixture ARN (no run of ten zeros: see MARKER)
TEAMS = ("red", "blue", "green", "gold")
POLICY_POOL = 1_000                  # managed policies in a generated bundle
POLICIES_PER_PRINCIPAL = 3
STREAMS_PER_BUNDLE = 200
CHANNELS_PER_BUNDLE = 50

# A fixed-width counter in a serialized request. The load generator replaces it with the request's
# sequence number, so every request of an "unique" payload names a different resource: no decision
# cache can answer it. The payload keeps its length, so the protobuf framing stays valid.
MARKER = b"0000000000"

# Context keys a gateway supplies; the store derives the principal keys (username, userid, PrincipalArn,
# PrincipalAccount, PrincipalType, PrincipalTag/*) itself, so gRPC requests carry only these.
REQUEST_CONTEXT: dict[str, str] = {
    "aws:SourceIp": "10.1.2.3",
    "aws:CurrentTime": "2026-01-31T12:00:00Z",
    "aws:EpochTime": "1769860800",
    "aws:SecureTransport": "true",
}

# The five request kinds of the mix, in the order they cycle.
MIX_KINDS = ("PutMedia", "GetMedia", "DescribeStream", "ListStreams", "ConnectAsViewer")


def stream_arn(name: str, region: str = REGION) -> str:
    return f"arn:aws:kinesisvideo:{region}:{ACCOUNT}:stream/{name}/{CREATION}"


def channel_arn(name: str, region: str = REGION) -> str:
    return f"arn:aws:kinesisvideo:{region}:{ACCOUNT}:channel/{name}/{CREATION}"


def user_name(i: int) -> str:
    return f"u{i:06d}"


def user_arn(i: int) -> str:
    return f"arn:aws:iam::{ACCOUNT}:user/{user_name(i)}"


def user_id(i: int) -> str:
    return f"AIDA{i:017d}"


def user_tags(i: int) -> dict[str, str]:
    return {"team": TEAMS[i % len(TEAMS)], "role": "admin" if i % 50 == 0 else "viewer"}


# ------------------------------------------------------------------ identity policies

def _statement(template: int, k: int) -> dict[str, Any]:
    """One of eight statement shapes, parameterised by the policy number k."""
    team = TEAMS[k % len(TEAMS)]
    if template == 0:
        return {"Sid": f"ReadOnly{k}", "Effect": "Allow",
                "Action": ["kinesisvideo:Describe*", "kinesisvideo:List*"], "Resource": "*",
                "Condition": {"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"}}}
    if template == 1:
        return {"Sid": f"Produce{k}", "Effect": "Allow",
                "Action": ["kinesisvideo:PutMedia", "kinesisvideo:GetDataEndpoint"],
                "Resource": f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/cam-{k % 100:03d}*/*",
                "Condition": {"StringEquals": {"aws:PrincipalTag/team": team}}}
    if template == 2:
        return {"Sid": f"Viewer{k}", "Effect": "Allow", "Action": "kinesisvideo:ConnectAs*",
                "Resource": f"arn:aws:kinesisvideo:*:{ACCOUNT}:channel/door-{k % 100}*/*",
                "Condition": {"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", f"192.168.{k % 256}.0/24"]}}}
    if template == 3:
        return {"Effect": "Allow",
                "Action": ["kinesisvideo:GetMedia", "kinesisvideo:GetHLSStreamingSessionURL", "kinesisvideo:GetClip"],
                "Resource": [f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/site-{k % 100}-*/*",
                             f"arn:aws:kinesisvideo:{REGION}:{ACCOUNT}:stream/${{aws:username}}-*/*"]}
    if template == 4:
        return {"Sid": f"NoDelete{k}", "Effect": "Deny", "Action": "kinesisvideo:Delete*", "Resource": "*",
                "Condition": {"StringNotEquals": {"aws:PrincipalTag/role": "admin"}}}
    if template == 5:
        return {"Sid": f"Lobby{k}", "Effect": "Allow", "Action": "kinesisvideo:Get*",
                "Resource": f"arn:aws:kinesisvideo:us-*:{ACCOUNT}:stream/lobby-??/*",
                "Condition": {"DateLessThan": {"aws:CurrentTime": "2030-01-01T00:00:00Z"},
                              "Bool": {"aws:SecureTransport": "true"}}}
    if template == 6:
        return {"Sid": f"Europe{k}", "Effect": "Allow", "Action": "kinesisvideo:*",
                "Resource": f"arn:aws:kinesisvideo:eu-west-1:{ACCOUNT}:*",
                "Condition": {"StringEquals": {"aws:PrincipalTag/team": team}}}
    return {"Sid": f"Quarantine{k}", "Effect": "Deny", "Action": "kinesisvideo:PutMedia",
            "Resource": "arn:aws:kinesisvideo:*:*:stream/quarantine-*/*"}


NOT_ACTION_DENY: dict[str, Any] = {
    "Sid": "OnlyVideo", "Effect": "Deny", "NotAction": ["kinesisvideo:*", "sts:GetCallerIdentity"], "Resource": "*"}


def identity_policy_document(k: int) -> dict[str, Any]:
    """Policy number k: five statements of mixed shapes; policy 0 ends with the one NotAction deny."""
    statements = [_statement((k + j) % 8, k) for j in range(5)]
    if k == 0:
        statements[-1] = NOT_ACTION_DENY
    return {"Version": "2012-10-17", "Statement": statements}


def policy_name(k: int) -> str:
    return f"p{k:04d}"


# ------------------------------------------------------------------ requests

def mix_target(kind: str, x: int, suffix: str = "") -> tuple[str, str]:
    """(action, resource) of request kind `kind`, variant x; `suffix` is appended to the resource name."""
    if kind == "PutMedia":
        # One variant in eight writes to a quarantined stream: the mix includes explicit denies.
        name = f"quarantine-{x}" if x % 8 == 7 else f"cam-{x % 100:03d}-front"
        return "kinesisvideo:PutMedia", stream_arn(name + suffix)
    if kind == "GetMedia":
        return "kinesisvideo:GetMedia", stream_arn(f"site-{x % 100}-yard" + suffix)
    if kind == "DescribeStream":
        return "kinesisvideo:DescribeStream", stream_arn(f"cam-{x % 100:03d}-back" + suffix)
    if kind == "ListStreams":
        return "kinesisvideo:ListStreams", "*"
    if kind == "ConnectAsViewer":
        return "kinesisvideo:ConnectAsViewer", channel_arn(f"door-{x % 100}-main" + suffix)
    raise ValueError(f"unknown request kind {kind!r}; use one of {', '.join(MIX_KINDS)}")


def engine_context(i: int = 1) -> dict[str, str]:
    """The full request context of user i, as the gateway and store together would supply it."""
    ctx = {
        "aws:username": user_name(i),
        "aws:userid": user_id(i),
        "aws:PrincipalArn": user_arn(i),
        "aws:PrincipalAccount": ACCOUNT,
        "aws:PrincipalType": "User",
        **REQUEST_CONTEXT,
    }
    for key, value in user_tags(i).items():
        ctx[f"aws:PrincipalTag/{key}"] = value
    return ctx


def engine_requests(variants: int = 8, principal: int = 1) -> list[Request]:
    """The KVS request mix for one principal: `variants` requests of each kind, interleaved."""
    ctx = engine_context(principal)
    out: list[Request] = []
    for x in range(variants):
        for kind in MIX_KINDS:
            action, resource = mix_target(kind, x)
            out.append(Request(user_arn(principal), action, resource, ctx))
    return out


def authorize_payloads(principals: Sequence[int], *, unique: bool, variants: int = 8) -> list[bytes]:
    """Serialized AuthorizeRequest messages of the mix for the given users.

    With `unique`, every payload names a resource containing MARKER and ListStreams (resource "*",
    which no counter can make distinct) is left out of the mix.
    """
    from authz.v1 import authz_pb2

    out: list[bytes] = []
    n = 0
    for x in range(variants):
        for kind in MIX_KINDS:
            if unique and kind == "ListStreams":
                continue
            p = principals[n % len(principals)]
            n += 1
            action, resource = mix_target(kind, x, "-" + MARKER.decode() if unique else "")
            msg = authz_pb2.AuthorizeRequest(principal=user_arn(p), action=action, resource=resource)
            for key, value in REQUEST_CONTEXT.items():
                msg.context[key].values.append(value)
            data = msg.SerializeToString(deterministic=True)
            if unique and data.count(MARKER) != 1:
                raise AssertionError("fixture payload must contain the counter marker exactly once")
            out.append(data)
    return out


def batch_payloads(singles: Sequence[bytes], batch: int, count: int = 4) -> list[bytes]:
    """`count` serialized AuthorizeBatchRequest messages of `batch` requests each, cycling `singles`.

    A batch payload built from unique singles carries MARKER `batch` times; the load generator
    gives each occurrence its own number.
    """
    from authz.v1 import authz_pb2

    out: list[bytes] = []
    k = 0
    for _ in range(count):
        msg = authz_pb2.AuthorizeBatchRequest()
        for _ in range(batch):
            msg.requests.append(authz_pb2.AuthorizeRequest.FromString(singles[k % len(singles)]))
            k += 1
        out.append(msg.SerializeToString(deterministic=True))
    return out


# ------------------------------------------------------------------ bundles

@dataclass(frozen=True)
class Bundle:
    """A generated bundle directory and what a benchmark needs to know about it."""

    directory: Path
    principals: int
    policies: int
    bytes: int


def bundle_document(principals: int, *, pool: int = POLICY_POOL, per_principal: int = POLICIES_PER_PRINCIPAL,
                    seed: int = 0) -> dict[str, Any]:
    """One account in the hand-written bundle format (bench/README.md), `principals` IAM users."""
    rng = random.Random(seed)
    pool = max(pool, per_principal)
    policies = [{"name": policy_name(k), "path": "/", "document": identity_policy_document(k)} for k in range(pool)]
    users = []
    for i in range(principals):
        users.append({
            "name": user_name(i), "path": "/",
            "policies": [policy_name(k) for k in rng.sample(range(pool), per_principal)],
            "inline": {}, "groups": ["viewers"] if i % 10 == 0 else [],
            "tags": user_tags(i), "boundary": None,
            "access_keys": [{"id": f"AKIA{i:016d}", "secret": f"bench{i:035d}"}],
        })
    streams: list[dict[str, Any]] = [{"name": f"cam-{s % 100:03d}-{'front' if s < 100 else 'back'}", "region": REGION,
                "arn": stream_arn(f"cam-{s % 100:03d}-{'front' if s < 100 else 'back'}"),
                "tags": {"site": f"s{s % 7}"}, "policy": None} for s in range(STREAMS_PER_BUNDLE)]
    channels: list[dict[str, Any]] = [{"name": f"door-{c}-main", "region": REGION, "arn": channel_arn(f"door-{c}-main"),
                 "tags": {}, "policy": None} for c in range(CHANNELS_PER_BUNDLE)]
    trust = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT}:root"}, "Action": "sts:AssumeRole"}]}
    return {
        "account": ACCOUNT,
        "policies": policies,
        "users": users,
        "groups": [{"name": "viewers", "path": "/", "policies": [policy_name(0)], "inline": {}}],
        "roles": [{"name": "camera", "path": "/", "trust": trust, "policies": [policy_name(1)], "inline": {},
                   "tags": {"team": "red"}, "max_session_duration": 3600}],
        "streams": streams,
        "channels": channels,
        # "scps" left out: the account is not in an organization (an empty list would mean one with no levels).
    }


# Users of the engine bundle: user number -> attached identity policies. IAM allows 20 managed policies
# per user and 10 per group, so 50 policies take 10 direct ones plus four groups of ten.
ENGINE_USERS = {1: 1, 2: 10, 3: 50}
MAX_DIRECT = 10


def engine_bundle_document() -> dict[str, Any]:
    """One account whose users 1, 2 and 3 carry the engine case's 1, 10 and 50 identity policies."""
    most = max(ENGINE_USERS.values())
    policies = [{"name": policy_name(k), "path": "/", "document": identity_policy_document(k)} for k in range(most)]
    group_count = -(-(most - MAX_DIRECT) // MAX_DIRECT)      # group g holds policies 10(g+1) .. 10(g+1)+9
    groups = [{"name": f"g{g}", "path": "/", "inline": {},
               "policies": [policy_name(k) for k in range(MAX_DIRECT * (g + 1), min(most, MAX_DIRECT * (g + 2)))]}
              for g in range(group_count)]
    users = []
    for i, n in ENGINE_USERS.items():
        extra = -(-max(0, n - MAX_DIRECT) // MAX_DIRECT)
        users.append({"name": user_name(i), "path": "/", "inline": {}, "tags": user_tags(i), "boundary": None,
                      "policies": [policy_name(k) for k in range(min(n, MAX_DIRECT))],
                      "groups": [f"g{g}" for g in range(extra)], "access_keys": []})
    return {"account": ACCOUNT, "policies": policies, "users": users, "groups": groups, "roles": [],
            "streams": [], "channels": []}


def write_bundle(directory: Path, principals: int, *, pool: int = POLICY_POOL,
                 per_principal: int = POLICIES_PER_PRINCIPAL, seed: int = 0) -> Bundle:
    """Write a one-account bundle (`<account>.json`) with `principals` users into `directory`, creating it."""
    doc = bundle_document(principals, pool=pool, per_principal=per_principal, seed=seed)
    return write_bundle_document(directory, doc, principals)


def write_bundle_document(directory: Path, doc: dict[str, Any], principals: int) -> Bundle:
    """Write one account document as `<account>.json` into `directory`, creating it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{doc['account']}.json"
    text = json.dumps(doc, separators=(",", ":"))
    path.write_text(text, encoding="utf-8")
    return Bundle(directory, principals, len(doc["policies"]), len(text.encode()))
