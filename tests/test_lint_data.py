"""The linter's tables (authz/policy/data/actions.json) against the gateway's route table, and the route table against
botocore's service models: three sources that must name the same Kinesis Video Streams operations."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import botocore.session
import pytest

from authz.gateway.mapping import ROUTES, SERVICE_PREFIX, WSS_PATH, Route
from authz.policy import lint
from authz.policy.conditions import MULTIVALUED_KEYS

# The SDK clients whose operations the gateway routes (spec 7.2 "SDK client" column).
SDK_MODELS = ("kinesisvideo", "kinesis-video-media", "kinesis-video-archived-media", "kinesis-video-signaling",
              "kinesis-video-webrtc-storage")
# Routes with no operation in botocore's models: the WebRTC signaling connects are WebSocket handshakes, not
# SDK calls, and PutMedia is a streaming upload only the producer SDKs (not botocore) implement.
ROUTES_WITHOUT_SDK_OPERATION = {"ConnectAsMaster", "ConnectAsViewer", "PutMedia"}
# IAM actions with no HTTP route (every kinesisvideo action has one today).
ACTIONS_WITHOUT_ROUTE: set[str] = set()

RAW = json.loads(resources.files("authz.policy").joinpath("data", lint.DATA_FILE).read_text(encoding="utf-8"))
KVS = RAW["services"][SERVICE_PREFIX]


def test_every_table_action_is_a_route_and_every_route_an_action() -> None:
    routed = {r.action for r in ROUTES}
    assert set(KVS["actions"]) - ACTIONS_WITHOUT_ROUTE == routed
    assert ACTIONS_WITHOUT_ROUTE <= set(KVS["actions"])


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.action)
def test_resource_types_agree_with_the_route(route: Route) -> None:
    types = KVS["actions"][route.action]["resourceTypes"]
    expected = [] if route.resource == "none" else sorted(route.resource.split("|"))
    assert sorted(types) == expected


def test_tag_condition_keys_agree_with_the_routes_tag_forms() -> None:
    for route in ROUTES:
        keys = set(KVS["actions"][route.action]["conditionKeys"])
        assert ("aws:RequestTag/${TagKey}" in keys) == (route.tags in ("map", "list")), route.action
        assert ("aws:TagKeys" in keys) == bool(route.tags), route.action


def test_arn_formats_are_the_spec_formats() -> None:
    for rtype, info in KVS["resourceTypes"].items():
        name = "StreamName" if rtype == "stream" else "ChannelName"
        head = "arn:${Partition}:kinesisvideo:${Region}:${Account}"
        assert info["arn"] == f"{head}:{rtype}/${{{name}}}/${{CreationTime}}"
    assert {t for a in KVS["actions"].values() for t in a["resourceTypes"]} == set(KVS["resourceTypes"])


def _sdk_operations() -> dict[str, tuple[str, str]]:
    session = botocore.session.get_session()
    ops: dict[str, tuple[str, str]] = {}
    available = set(session.get_available_services())
    for name in SDK_MODELS:
        assert name in available, f"botocore has no {name} model"
        model = session.get_service_model(name)
        assert model.signing_name == SERVICE_PREFIX
        for op in model.operation_names:
            http = model.operation_model(op).http
            assert op not in ops, f"{op} is in two models"
            ops[op] = (http["method"], http["requestUri"])
    return ops


def test_the_route_table_matches_every_botocore_operation() -> None:
    ops = _sdk_operations()
    routes = {r.action: r for r in ROUTES}
    assert set(ops) == set(routes) - ROUTES_WITHOUT_SDK_OPERATION
    for op, (method, uri) in ops.items():
        assert (routes[op].method, routes[op].path) == (method, uri), op
    for action in ROUTES_WITHOUT_SDK_OPERATION:
        assert routes[action].path == WSS_PATH or routes[action].body == "mkv"


def test_sts_actions_are_names_not_resource_tables() -> None:
    # sts is tabled for its action names only: its resource types are not checked.
    assert lint.tables().services["sts"].resource_types is None
    assert all(re.fullmatch(r"[A-Z][A-Za-z]+", a) for a in RAW["services"]["sts"]["actions"])


def test_global_keys_cover_the_spec_table() -> None:
    spec = Path(__file__).parent / "data" / "spec" / "iam-spec.md"
    if not spec.exists():
        pytest.skip(f"{spec} not found")
    section = spec.read_text(encoding="utf-8").split("## 6.", 1)[1].split("## 7.", 1)[0]
    named = set(re.findall(r"`(aws:[A-Za-z]+(?:/<key>)?)`", section))
    t = lint.tables()
    for key in named:
        info = t.key(key.replace("<key>", "team"))
        assert info is not None, key
    assert t.key("aws:CurrentTime").types == ("Date",)               # type: ignore[union-attr]
    assert t.key("aws:EpochTime").types == ("Date", "Numeric")       # type: ignore[union-attr]
    assert t.key("aws:SourceIp").types == ("IPAddress",)             # type: ignore[union-attr]
    multi = {k for k, v in RAW["globalConditionKeys"].items() if v["multivalued"]}
    assert {"aws:TagKeys", "aws:CalledVia", "aws:PrincipalOrgPaths", "aws:ResourceOrgPaths",
            "aws:PrincipalServiceNamesList"} <= multi
    # The validator's own list of multivalued keys (its warnings) agrees with the tables.
    assert MULTIVALUED_KEYS <= {k.lower() for k in multi}
