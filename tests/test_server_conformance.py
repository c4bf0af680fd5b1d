"""The conformance decisions through a live server: every case via Simulate (identical to the in-process
engine), and the documentation-example cases that a bundle can express via the store path (Authorize)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from authz.client import AdminClient, AuthzClient
from authz.evaluate import evaluate
from authz.policy.arn import account_of
from authz.policy.validate import validate_document
from authz.server.convert import result_to_proto
from authz.store.snapshot import DERIVED_KEYS, DERIVED_PREFIXES
from authz.store.state import _KVS_ARN
from authz.v1 import authz_pb2 as pb
from tests.conformance import load_cases, policy_set, request
from tests.server_fixture import ServerProcess, copy_example_bundle, start_server

CASES = load_cases("decisions")
DOC_ACCOUNT = "123456789012"
USER_PREFIX = f"arn:aws:iam::{DOC_ACCOUNT}:user/"
OTHER_POLICY_KEYS = ("resourcePolicy", "permissionBoundary", "sessionPolicy", "scpLevels", "rcpLevels")
UNKNOWN = object()      # a value the store derives that a case cannot know (aws:userid, aws:CurrentTime)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("conformance")
    s = start_server(copy_example_bundle(root / "bundle"), None, "--watch-interval", "0")
    yield s
    s.kill()


# ------------------------------------------------------------------ Simulate: every case


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_simulate_matches_engine(authz: AuthzClient, case: dict[str, Any]) -> None:
    got = authz.simulate(case["principal"], case["action"], case["resource"], context=case.get("context"),
                         identity_policies=case.get("identityPolicies", []),
                         resource_policy=case.get("resourcePolicy"),
                         permissions_boundary=case.get("permissionBoundary"),
                         session_policy=case.get("sessionPolicy"), scp_levels=case.get("scpLevels"),
                         rcp_levels=case.get("rcpLevels"), resource_account=case["resourceAccount"], explain=True)
    local = evaluate(request(case), policy_set(case), explain=True)
    assert got.proto == result_to_proto(local, 0, False, True)  # the whole answer, explanation included
    assert pb.Decision.Name(got.decision) == "DECISION_" + {"Allow": "ALLOW", "ExplicitDeny": "EXPLICIT_DENY",
                                                             "ImplicitDeny": "IMPLICIT_DENY"}[case["expect"]]


# ------------------------------------------------------------------ the store path: bundle + Authorize


def _store_context(case: dict[str, Any]) -> dict[str, Any]:
    """The context the store will evaluate with: the caller's keys minus the ones it derives, plus its own."""
    principal, resource = case["principal"], case["resource"]
    ctx = {k.lower(): v for k, v in case["context"].items()
           if k.lower() not in DERIVED_KEYS and not k.lower().startswith(DERIVED_PREFIXES)}
    ctx.update({"aws:username": principal.rsplit("/", 1)[-1], "aws:userid": UNKNOWN, "aws:principalarn": principal,
                "aws:principalaccount": DOC_ACCOUNT, "aws:principaltype": "User"})
    for k, v in case["context"].items():   # the bundle gives the user and the resource exactly these tags
        if k.lower().startswith(("aws:principaltag/", "aws:resourcetag/")):
            ctx[k.lower()] = v
    if resource != "*":
        ctx["aws:resourceaccount"] = account_of(resource)
    ctx.setdefault("aws:currenttime", UNKNOWN)
    ctx.setdefault("aws:epochtime", UNKNOWN)
    return ctx


def expressible(case: dict[str, Any]) -> bool:
    """A plain user of the documentation account with identity policies only, whose policies read no
    context key the store would give a different value than the case does."""
    principal, resource = case["principal"], case["resource"]
    if case["source"] not in ("seed-examples", "seed-edge") or not principal.startswith(USER_PREFIX):
        return False
    if "/" in principal[len(USER_PREFIX):] or any(k in case for k in OTHER_POLICY_KEYS):
        return False
    owner = DOC_ACCOUNT if resource == "*" else account_of(resource)
    if case["resourceAccount"] != owner:
        return False
    if any(k.lower().startswith("aws:resourcetag/") for k in case["context"]) and not _KVS_ARN.match(resource):
        return False
    if not all(validate_document(p, "identity").valid for p in case["identityPolicies"]):
        return False
    given = {k.lower(): v for k, v in case["context"].items()}
    derived = _store_context(case)
    text = json.dumps(case["identityPolicies"]).lower()
    differing = {k for k in given.keys() | derived.keys() if given.get(k, None) != derived.get(k, None)}
    return not any(k in text for k in differing)


STORE_CASES = [c for c in CASES if expressible(c)]


def test_store_path_covers_the_documentation_examples() -> None:
    # Guard against a filter that silently lets nothing through.
    assert len(STORE_CASES) >= 40
    assert {c["expect"] for c in STORE_CASES} == {"Allow", "ExplicitDeny", "ImplicitDeny"}


def _bundle(case: dict[str, Any]) -> dict[str, Any]:
    user = case["principal"].rsplit("/", 1)[-1]
    tags = {k.split("/", 1)[1]: v for k, v in case["context"].items() if k.lower().startswith("aws:principaltag/")}
    doc: dict[str, Any] = {
        "account": DOC_ACCOUNT, "region": "us-west-2",
        "policies": [{"name": f"p{i}", "document": p} for i, p in enumerate(case["identityPolicies"])],
        "users": [{"name": user, "policies": [f"p{i}" for i in range(len(case["identityPolicies"]))],
                   "tags": tags}],
    }
    m = _KVS_ARN.match(case["resource"])
    if m:
        rtags = {k.split("/", 1)[1]: v for k, v in case["context"].items()
                 if k.lower().startswith("aws:resourcetag/")}
        doc[m.group(4) + "s"] = [{"name": m.group(5), "arn": case["resource"], "tags": rtags}]
    return doc


def _write_bundle(directory: Path, doc: dict[str, Any]) -> None:
    for old in directory.iterdir():
        old.unlink()
    tmp = directory / ".bundle.json.tmp"
    tmp.write_text(json.dumps(doc))
    os.replace(tmp, directory / "bundle.json")


@pytest.mark.parametrize("case", STORE_CASES, ids=[c["id"] for c in STORE_CASES])
def test_store_path_matches_engine(server: ServerProcess, authz: AuthzClient, admin: AdminClient,
                                   case: dict[str, Any]) -> None:
    assert server.bundle is not None
    _write_bundle(server.bundle, _bundle(case))
    reloaded = admin.reload()
    assert reloaded.ok, reloaded.error
    context = {k: v for k, v in case["context"].items()
               if not k.lower().startswith(("aws:principaltag/", "aws:resourcetag/"))}
    got = authz.authorize(case["principal"], case["action"], case["resource"], context, explain=True)
    assert got.revision == reloaded.revision             # decided against the bundle just loaded
    local = evaluate(request(case), policy_set(case))
    assert pb.Decision.Name(got.decision) == pb.Decision.Name(result_to_proto(local, 0, False, False).decision)
    assert local.decision.value == case["expect"]
