"""The policy linter: each code fires on a minimal bad policy and not on its corrected form; suggestions, positions,
and `authz validate` with text, JSON and SARIF output, --fail-on and bundles."""

from __future__ import annotations

import copy
import io
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz import cli
from authz.evaluate import PolicySet, Request, evaluate
from authz.policy import lint
from authz.policy.model import compile_policy
from authz.policy.validate import validate_document

ROOT = Path(__file__).resolve().parents[1]
STREAM = "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/*"
CHANNEL = "arn:aws:kinesisvideo:us-east-1:111122223333:channel/door/*"
ROLE = "arn:aws:iam::111122223333:role/app"


def doc(*statements: dict[str, Any]) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": list(statements)}


def allow(action: Any, resource: Any = STREAM, **more: Any) -> dict[str, Any]:
    return {"Effect": "Allow", "Action": action, "Resource": resource, **more}


def findings(document: dict[str, Any], ptype: str = "identity") -> list[lint.Finding]:
    report = validate_document(document, ptype)
    assert report.valid, report.errors
    return lint.lint_document(report.document, ptype)


def codes(document: dict[str, Any], ptype: str = "identity") -> set[str]:
    return {f.code for f in findings(document, ptype)}


# (code, policy type, bad document, corrected document, path of the finding in the bad one)
CASES: list[tuple[str, str, dict[str, Any], dict[str, Any], str]] = [
    ("UNKNOWN_ACTION", "identity", doc(allow("kinesisvideo:GetMeida")), doc(allow("kinesisvideo:GetMedia")),
     "$.Statement[0].Action"),
    ("UNKNOWN_ACTION", "identity", doc(allow(["sts:GetCallerIdentity", "sts:AssumeRoel"], "*")),
     doc(allow(["sts:GetCallerIdentity", "sts:AssumeRole"], ROLE)), "$.Statement[0].Action[1]"),
    ("ACTION_MATCHES_NOTHING", "identity", doc(allow("kinesisvideo:Gett*")), doc(allow("kinesisvideo:Get*")),
     "$.Statement[0].Action"),
    ("ACTION_NEEDS_WILDCARD_RESOURCE", "identity", doc(allow("kinesisvideo:ListStreams")),
     doc(allow("kinesisvideo:ListStreams", "*")), "$.Statement[0].Action"),
    ("RESOURCE_TYPE_MISMATCH", "identity", doc(allow("kinesisvideo:GetMedia", CHANNEL)),
     doc(allow("kinesisvideo:GetMedia", STREAM)), "$.Statement[0].Action"),
    ("RESOURCE_TYPE_MISMATCH", "identity", doc(allow("kinesisvideo:GetMedia", "arn:aws:s3:::bucket/*")),
     doc(allow("kinesisvideo:GetMedia", "arn:aws:kinesisvideo:*:*:*")), "$.Statement[0].Action"),
    ("RESOURCE_MATCHES_NO_ACTION", "identity", doc(allow(["kinesisvideo:GetMedia"], [STREAM, CHANNEL])),
     doc(allow(["kinesisvideo:GetMedia", "kinesisvideo:ConnectAsViewer"], [STREAM, CHANNEL])),
     "$.Statement[0].Resource[1]"),
    ("MALFORMED_ARN", "identity",
     doc(allow("kinesisvideo:GetMedia", "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01")),
     doc(allow("kinesisvideo:GetMedia", "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/*")),
     "$.Statement[0].Resource"),
    # The developer guide's erratum (spec 7.1): an empty region and the account in the resource part.
    ("MALFORMED_ARN", "identity",
     doc(allow("kinesisvideo:GetMedia", "arn:aws:kinesisvideo::*:111122223333:stream/my-stream/0123456789012")),
     doc(allow("kinesisvideo:GetMedia", "arn:aws:kinesisvideo:*:111122223333:stream/my-stream/0123456789012")),
     "$.Statement[0].Resource"),
    ("MALFORMED_ARN", "identity", doc(allow("kinesisvideo:GetMedia", "arn:aws:kinesisvideo:us-east-1:1111:stream/a/*")),
     doc(allow("kinesisvideo:GetMedia", "arn:aws:kinesisvideo:us-east-1:111122223333:stream/a/*")),
     "$.Statement[0].Resource"),
    ("UNKNOWN_CONDITION_KEY", "identity",
     doc(allow("kinesisvideo:GetMedia", Condition={"IpAddress": {"aws:SourceIpp": "203.0.113.0/24"}})),
     doc(allow("kinesisvideo:GetMedia", Condition={"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}})),
     '$.Statement[0].Condition.IpAddress["aws:SourceIpp"]'),
    ("UNKNOWN_CONDITION_KEY", "identity",
     doc(allow("kinesisvideo:GetMedia", Condition={"StringEquals": {"kinesisvideo:StreamName": "cam"}})),
     doc(allow("kinesisvideo:GetMedia", Condition={"StringEquals": {"aws:ResourceTag/name": "cam"}})),
     '$.Statement[0].Condition.StringEquals["kinesisvideo:StreamName"]'),
    ("CONDITION_KEY_NOT_SUPPORTED", "identity",
     doc(allow("kinesisvideo:GetMedia", Condition={"StringEquals": {"aws:RequestTag/team": "red"}})),
     doc(allow("kinesisvideo:CreateStream", Condition={"StringEquals": {"aws:RequestTag/team": "red"}})),
     '$.Statement[0].Condition.StringEquals["aws:RequestTag/team"]'),
    ("OPERATOR_TYPE_MISMATCH", "identity",
     doc(allow("kinesisvideo:GetMedia", Condition={"StringEquals": {"aws:CurrentTime": "2026-01-01T00:00:00Z"}})),
     doc(allow("kinesisvideo:GetMedia", Condition={"DateLessThan": {"aws:CurrentTime": "2026-01-01T00:00:00Z"}})),
     '$.Statement[0].Condition.StringEquals["aws:CurrentTime"]'),
    ("OPERATOR_TYPE_MISMATCH", "identity",
     doc(allow("kinesisvideo:GetMedia", Condition={"StringLike": {"aws:SourceIp": "10.*"}})),
     doc(allow("kinesisvideo:GetMedia", Condition={"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}})),
     '$.Statement[0].Condition.StringLike["aws:SourceIp"]'),
    ("IFEXISTS_UNNECESSARY", "identity",
     doc(allow("kinesisvideo:GetMedia", Condition={"BoolIfExists": {"aws:SecureTransport": "true"}})),
     doc(allow("kinesisvideo:GetMedia", Condition={"Bool": {"aws:SecureTransport": "true"}})),
     '$.Statement[0].Condition.BoolIfExists["aws:SecureTransport"]'),
    ("SET_OPERATOR_ON_SINGLE_VALUED_KEY", "identity",
     doc(allow("kinesisvideo:GetMedia", Condition={"ForAllValues:StringEquals": {"aws:PrincipalTag/team": "red"}})),
     doc(allow("kinesisvideo:GetMedia", Condition={"StringEquals": {"aws:PrincipalTag/team": "red"}})),
     '$.Statement[0].Condition["ForAllValues:StringEquals"]["aws:PrincipalTag/team"]'),
    ("MISSING_SET_OPERATOR", "identity",
     doc(allow("kinesisvideo:TagStream", Condition={"StringEquals": {"aws:TagKeys": "team"}})),
     doc(allow("kinesisvideo:TagStream", Condition={"ForAllValues:StringEquals": {"aws:TagKeys": "team"},
                                                    "Null": {"aws:TagKeys": "false"}})),
     '$.Statement[0].Condition.StringEquals["aws:TagKeys"]'),
    ("ALLOW_WITH_NOT_ACTION", "identity",
     doc({"Effect": "Allow", "NotAction": "kinesisvideo:DeleteStream", "Resource": STREAM}),
     doc({"Effect": "Deny", "NotAction": "kinesisvideo:DeleteStream", "Resource": STREAM}),
     "$.Statement[0].NotAction"),
    ("ALLOW_WITH_NOT_RESOURCE", "identity",
     doc({"Effect": "Allow", "Action": "kinesisvideo:GetMedia", "NotResource": STREAM}),
     doc({"Effect": "Deny", "Action": "kinesisvideo:GetMedia", "NotResource": STREAM}),
     "$.Statement[0].NotResource"),
    ("PUBLIC_PRINCIPAL_WITHOUT_CONDITION", "resource",
     doc({"Effect": "Allow", "Principal": "*", "Action": "kinesisvideo:GetMedia", "Resource": STREAM}),
     doc({"Effect": "Allow", "Principal": "*", "Action": "kinesisvideo:GetMedia", "Resource": STREAM,
          "Condition": {"StringEquals": {"aws:PrincipalOrgID": "o-abc123"}}}),
     "$.Statement[0].Principal"),
    ("PUBLIC_PRINCIPAL_WITHOUT_CONDITION", "trust",
     doc({"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}),
     doc({"Effect": "Allow", "Principal": {"AWS": "arn:aws:iam::111122223333:root"}, "Action": "sts:AssumeRole"}),
     "$.Statement[0].Principal"),
    ("PASSROLE_ON_STAR", "identity", doc(allow("iam:PassRole", "*")), doc(allow("iam:PassRole", ROLE)),
     "$.Statement[0].Action"),
    ("ASSUMEROLE_ON_STAR", "identity", doc(allow(["sts:AssumeRole"], "*")), doc(allow(["sts:AssumeRole"], ROLE)),
     "$.Statement[0].Action[0]"),
    ("REDUNDANT_STATEMENT", "identity",
     doc(allow("kinesisvideo:Get*"), allow("kinesisvideo:GetMedia")),
     doc(allow("kinesisvideo:Get*"), allow("kinesisvideo:PutMedia")), "$.Statement[1]"),
    ("SHADOWED_BY_DENY", "identity",
     doc(allow("kinesisvideo:GetMedia"), {"Effect": "Deny", "Action": "kinesisvideo:*", "Resource": "*"}),
     doc(allow("kinesisvideo:GetMedia"), {"Effect": "Deny", "Action": "kinesisvideo:*", "Resource": "*",
                                          "Condition": {"Bool": {"aws:SecureTransport": "false"}}}),
     "$.Statement[0]"),
]


@pytest.mark.parametrize("code, ptype, bad, good, path", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_code_fires_on_the_bad_policy_and_not_on_the_corrected_one(code: str, ptype: str, bad: dict[str, Any],
                                                                    good: dict[str, Any], path: str) -> None:
    got = findings(bad, ptype)
    hit = [f for f in got if f.code == code]
    assert hit, [f.as_dict() for f in got]
    assert hit[0].path == path
    assert hit[0].severity is lint.RULES[code][0]
    assert hit[0].message and hit[0].fix
    assert code not in codes(good, ptype), [f.as_dict() for f in findings(good, ptype)]


def test_every_code_has_a_case() -> None:
    assert {c[0] for c in CASES} == set(lint.RULES)


def test_docs_describe_every_code() -> None:
    text = (ROOT / "docs" / "lint.md").read_text(encoding="utf-8")
    for code in lint.RULES:
        assert f"`{code}`" in text, code


def test_unknown_action_suggests_the_closest_action() -> None:
    (f,) = [f for f in findings(doc(allow("kinesisvideo:GetMeida"))) if f.code == "UNKNOWN_ACTION"]
    assert '"kinesisvideo:GetMedia"' in f.message and f.fix == 'write "kinesisvideo:GetMedia"'
    assert f.severity is lint.Severity.ERROR


def test_unknown_condition_key_suggests_the_closest_global_key() -> None:
    (f,) = findings(doc(allow("kinesisvideo:GetMedia", Condition={"IpAddress": {"aws:SourceIpp": "10.0.0.1"}})))
    assert f.code == "UNKNOWN_CONDITION_KEY" and f.fix == 'write "aws:SourceIp"'
    (f,) = findings(doc(allow("kinesisvideo:GetMedia", Condition={"StringEquals": {"aws:PrincpalTag/team": "a"}})))
    assert f.fix == 'write "aws:PrincipalTag/TAG-KEY"'


def test_operator_mismatch_names_an_operator_of_the_keys_type() -> None:
    (f,) = findings(doc(allow("kinesisvideo:GetMedia", Condition={"StringEquals": {"aws:CurrentTime": "2026"}})))
    assert "Date" in f.message and "DateGreaterThan" in f.fix
    # aws:EpochTime is a date that may also be compared as a number.
    assert not findings(doc(allow("kinesisvideo:GetMedia", Condition={"NumericLessThan": {"aws:EpochTime": "1"}})))
    # ARN keys may be compared as text; Null fits every key.
    assert not findings(doc(allow("kinesisvideo:GetMedia", Condition={
        "StringLike": {"aws:PrincipalArn": "arn:aws:iam::*:role/cam-*"}, "Null": {"aws:CurrentTime": "false"}})))


def test_list_streams_with_a_stream_arn_never_matches() -> None:
    (f,) = findings(doc(allow("kinesisvideo:ListStreams")))
    assert f.code == "ACTION_NEEDS_WILDCARD_RESOURCE" and '"Resource": "*"' in f.fix


def test_a_wildcard_action_is_judged_by_all_it_covers() -> None:
    # kinesisvideo:* on a stream ARN: the List actions never match it, the stream actions do; nothing to report.
    assert not findings(doc(allow("kinesisvideo:*")))
    # Only actions without a resource type: the ARN is of no use to any of them.
    assert codes(doc(allow("kinesisvideo:ListS*"))) == {"ACTION_NEEDS_WILDCARD_RESOURCE"}


def test_other_services_are_not_judged_without_a_table() -> None:
    assert not findings(doc(allow(["s3:GetObjekt", "ec2:Describe*", "iam:GetUser"], "arn:aws:s3:::b/*")))
    assert not findings(doc(allow("kinesisvideo:GetMedia", Condition={"StringEquals": {"s3:prefix": "x"}})))


def test_actions_compare_without_case() -> None:
    assert not findings(doc(allow(["KinesisVideo:getmedia", "kinesisvideo:GET*"])))


@pytest.mark.parametrize("resource", [
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/1690000000000",
    "arn:aws:kinesisvideo:*:111122223333:stream/*",
    "arn:aws:kinesisvideo:us-east-1:*:stream/cam-??/*",
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/${aws:PrincipalTag/stream}/*",
    "arn:aws:kinesisvideo:us-east-1:111122223333:*",
    "arn:aws:kinesisvideo:*",
])
def test_well_formed_stream_arns_are_not_reported(resource: str) -> None:
    assert not findings(doc(allow("kinesisvideo:GetMedia", resource)))


@pytest.mark.parametrize("resource", [
    "arn:aws:kinesisvideo:us-east-1:111122223333:streams/cam-01/*",
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/1690000000000/extra",
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/*-suffix",
    "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam 01/*",
])
def test_arns_that_cannot_match_are_malformed(resource: str) -> None:
    assert "MALFORMED_ARN" in codes(doc(allow("kinesisvideo:GetMedia", resource)))


def test_redundant_and_shadowed_respect_conditions_and_principals() -> None:
    # A conditional Allow next to an unconditional one adds nothing; the reverse is not redundant.
    cond = {"Bool": {"aws:SecureTransport": "true"}}
    assert codes(doc(allow("kinesisvideo:GetMedia", Condition=cond), allow("kinesisvideo:GetMedia"))) == \
        {"REDUNDANT_STATEMENT"}
    # Two identical statements: only the later one is reported.
    got = findings(doc(allow("kinesisvideo:GetMedia"), allow("kinesisvideo:GetMedia")))
    assert [(f.code, f.path) for f in got] == [("REDUNDANT_STATEMENT", "$.Statement[1]")]
    # A Deny for one principal does not shadow an Allow for another.
    other = {"AWS": "arn:aws:iam::444455556666:root"}
    mine = {"AWS": "arn:aws:iam::111122223333:root"}
    assert "SHADOWED_BY_DENY" not in codes(doc(
        {"Effect": "Allow", "Principal": mine, "Action": "kinesisvideo:GetMedia", "Resource": STREAM},
        {"Effect": "Deny", "Principal": other, "Action": "kinesisvideo:*", "Resource": "*"}), "resource")
    assert "SHADOWED_BY_DENY" in codes(doc(
        {"Effect": "Allow", "Principal": mine, "Action": "kinesisvideo:GetMedia", "Resource": STREAM},
        {"Effect": "Deny", "Principal": "*", "Action": "kinesisvideo:*", "Resource": "*"}), "resource")
    # A narrower Deny does not shadow a broader Allow.
    assert not findings(doc(allow("kinesisvideo:Get*"), {"Effect": "Deny", "Action": "kinesisvideo:GetMedia",
                                                          "Resource": STREAM}))


def test_paths_of_a_single_statement_object() -> None:
    (f,) = findings({"Version": "2012-10-17", "Statement": allow("kinesisvideo:GetMeida")})
    assert f.path == "$.Statement.Action"


def test_json_positions_find_the_line_of_a_path() -> None:
    text = ('{\n  "Version": "2012-10-17",\n  "Statement": [\n    {"Effect": "Allow",\n'
            '     "Action": ["kinesisvideo:GetMedia", "kinesisvideo:GetMeida"],\n     "Resource": "*",\n'
            '     "Condition": {"IpAddress": {"aws:SourceIpp": "10.0.0.1"}}}]}\n')
    pos = lint.json_positions(text)
    assert lint.locate(pos, "$.Statement[0].Action[1]") == (5, 42)
    assert lint.locate(pos, '$.Statement[0].Condition.IpAddress["aws:SourceIpp"]') == (7, 34)
    assert lint.locate(pos, "$.Statement[0].Nothing[3]") == (4, 5)      # the nearest enclosing path
    yaml_pos = lint.yaml_positions("Version: '2012-10-17'\nStatement:\n  - Effect: Allow\n    Action: [a:b, c:d]\n")
    assert lint.locate(yaml_pos, "$.Statement[0].Action[1]") == (4, 19)


# ------------------------------------------------------------------ authz validate


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(argv, stdin=io.StringIO(""), stdout=out)
    return code, out.getvalue()


def write(tmp_path: Path, name: str, document: Any) -> Path:
    p = tmp_path / name
    p.write_text(json.dumps(document, indent=2))
    return p


def test_validate_prints_findings_and_fails_on_an_error(tmp_path: Path) -> None:
    p = write(tmp_path, "p.json", doc(allow("kinesisvideo:GetMeida")))
    code, out = run(["validate", str(p)])
    assert code == 1
    assert f'{p}: error[UNKNOWN_ACTION]: $.Statement[0].Action: "kinesisvideo:GetMeida"' in out
    assert "fix: write \"kinesisvideo:GetMedia\"" in out and "findings: 1 ERROR" in out


@pytest.mark.parametrize("fail_on, code", [("error", 0), ("security_warning", 1), ("warning", 1), ("suggestion", 1)])
def test_fail_on_sets_the_bar(tmp_path: Path, fail_on: str, code: int) -> None:
    p = write(tmp_path, "p.json", doc({"Effect": "Allow", "NotAction": "kinesisvideo:DeleteStream", "Resource": "*"}))
    got, out = run(["validate", "--fail-on", fail_on, str(p)])
    assert got == code, out
    s = write(tmp_path, "s.json", doc(allow("kinesisvideo:GetMedia", Condition={
        "BoolIfExists": {"aws:SecureTransport": "true"}})))
    assert run(["validate", "--fail-on", "warning", str(s)])[0] == 0
    assert run(["validate", "--fail-on", "suggestion", str(s)])[0] == 1


def test_a_validator_warning_restated_by_a_finding_is_printed_once(tmp_path: Path) -> None:
    p = write(tmp_path, "p.json", doc({"Effect": "Allow", "NotAction": "kinesisvideo:DeleteStream", "Resource": "*"}))
    _, out = run(["validate", str(p)])
    assert out.count("$.Statement[0].NotAction") == 1 and "[ALLOW_WITH_NOT_ACTION]" in out


def test_json_output_round_trips(tmp_path: Path) -> None:
    p = write(tmp_path, "p.json", doc(allow("kinesisvideo:GetMeida"), allow("kinesisvideo:ListStreams")))
    bad = tmp_path / "bad.json"
    bad.write_text('{"Statement": [{"Effect": "allow", "Action": "x:y", "Resource": "*"}]}')
    code, out = run(["validate", "--output", "json", str(p), str(bad)])
    assert code == 1
    got = json.loads(out)
    assert json.loads(json.dumps(got)) == got
    first, second = got["files"]
    assert first["valid"] is True and second["valid"] is False
    assert [(f["code"], f["path"], f["file"]) for f in first["findings"]] == [
        ("UNKNOWN_ACTION", "$.Statement[0].Action", str(p)),
        ("ACTION_NEEDS_WILDCARD_RESOURCE", "$.Statement[1].Action", str(p))]
    direct = [f.as_dict() for f in findings(doc(allow("kinesisvideo:GetMeida"), allow("kinesisvideo:ListStreams")))]
    assert [{k: v for k, v in f.items() if k != "file"} for f in first["findings"]] == direct
    assert second["errors"][0]["path"] == "$.Statement[0].Effect"


def _sarif_shape(log: dict[str, Any]) -> None:
    """The parts of SARIF 2.1.0 that code-scanning tools read (no schema is vendored offline, so by hand)."""
    assert log["version"] == "2.1.0" and log["$schema"].endswith("sarif-2.1.0.json")
    (run_,) = log["runs"]
    driver = run_["tool"]["driver"]
    assert driver["name"] and isinstance(driver["version"], str)
    rule_ids = [r["id"] for r in driver["rules"]]
    assert len(rule_ids) == len(set(rule_ids)) and set(lint.RULES) <= set(rule_ids)
    for r in driver["rules"]:
        assert r["shortDescription"]["text"] and r["defaultConfiguration"]["level"] in ("error", "warning", "note")
    for res in run_["results"]:
        assert res["ruleId"] in rule_ids and res["level"] in ("error", "warning", "note")
        assert res["message"]["text"]
        loc = res["locations"][0]["physicalLocation"]
        assert loc["artifactLocation"]["uri"]
        assert loc["region"]["startLine"] >= 1 and loc["region"]["startColumn"] >= 1


def test_sarif_output_places_each_finding_on_its_line(tmp_path: Path) -> None:
    p = write(tmp_path, "p.json", doc(allow(["kinesisvideo:GetMedia", "kinesisvideo:GetMeida"]),
                                      allow("kinesisvideo:GetMedia", Condition={
                                          "StringEquals": {"aws:CurrentTime": "2026-01-01T00:00:00Z"}})))
    bad = tmp_path / "bad.json"
    bad.write_text('{"Version": "2012-10-17",\n "Statement": [{"Effect": "allow", "Action": "x:y", "Resource": "*"}]}')
    code, out = run(["validate", "--output", "sarif", str(p), str(bad)])
    assert code == 1
    log = json.loads(out)
    _sarif_shape(log)
    results = {r["ruleId"]: r for r in log["runs"][0]["results"]}
    lines = p.read_text().splitlines()
    for rule, needle in (("UNKNOWN_ACTION", '"kinesisvideo:GetMeida"'),
                         ("OPERATOR_TYPE_MISMATCH", '"aws:CurrentTime"')):
        region = results[rule]["locations"][0]["physicalLocation"]["region"]
        line = lines[region["startLine"] - 1]
        assert line[region["startColumn"] - 1:].startswith(needle), (rule, line)
        assert results[rule]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == p.as_uri()
    assert results["UNKNOWN_ACTION"]["level"] == "error"
    invalid = results["INVALID_POLICY"]
    assert invalid["locations"][0]["physicalLocation"]["region"]["startLine"] == 2


def test_bundle_policies_are_linted_with_the_file_and_place(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(
        "account: '123456789012'\n"
        "policies:\n"
        "  - name: P\n"
        "    document:\n"
        "      Version: '2012-10-17'\n"
        "      Statement:\n"
        "        - Effect: Allow\n"
        "          Action: [kinesisvideo:GetMeida]\n"
        "          Resource: '*'\n"
        "roles:\n"
        "  - name: r\n"
        "    trust:\n"
        "      Version: '2012-10-17'\n"
        "      Statement: [{Effect: Allow, Principal: '*', Action: 'sts:AssumeRole'}]\n")
    code, out = run(["validate", str(tmp_path)])
    assert code == 1
    assert "error[UNKNOWN_ACTION]: a.yaml: $.policies[0].document.Statement[0].Action[0]" in out
    assert ("security_warning[PUBLIC_PRINCIPAL_WITHOUT_CONDITION]: a.yaml: $.roles[0].trust.Statement[0]"
            ".Principal") in out
    log = json.loads(run(["validate", "--output", "sarif", str(tmp_path)])[1])
    _sarif_shape(log)
    region = {r["ruleId"]: r["locations"][0]["physicalLocation"]["region"] for r in log["runs"][0]["results"]}
    assert region["UNKNOWN_ACTION"] == {"startLine": 8, "startColumn": 20}


def test_an_export_is_linted_inside_its_url_encoded_documents(tmp_path: Path) -> None:
    from tests.test_bundle import details, encoded
    d = copy.deepcopy(details())
    d["RoleDetailList"][0]["RolePolicyList"] = [{"PolicyName": "p", "PolicyDocument": encoded(
        doc(allow("kinesisvideo:ListStreams")))}]
    p = write(tmp_path, "auth.json", d)
    code, out = run(["validate", str(p)])
    assert code == 1
    assert "error[ACTION_NEEDS_WILDCARD_RESOURCE]: $.RoleDetailList[0].RolePolicyList[0].PolicyDocument.Statement[0]" \
           ".Action" in out


def test_the_bundled_examples_lint_clean() -> None:
    code, out = run(["validate", "--fail-on", "warning", str(ROOT / "examples" / "bundle")])
    assert code == 0, out
    assert "[" not in out.split(": valid bundle directory", 1)[0]


# ------------------------------------------------------------------ properties


_ACTIONS = st.sampled_from(["kinesisvideo:GetMedia", "kinesisvideo:Get*", "kinesisvideo:*", "kinesisvideo:PutMedia",
                            "kinesisvideo:ListStreams", "kinesisvideo:G?tMedia", "*", "kinesisvideo:GetMeida",
                            "kinesisvideo:ConnectAs*"])
_RESOURCES = st.sampled_from(["*", STREAM, "arn:aws:kinesisvideo:*:*:stream/*", CHANNEL,
                              "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-0?/*",
                              "arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01"])
# Codes that say an element never matches a real request: removing it changes no decision.
_DEAD_ELEMENT = {"UNKNOWN_ACTION", "ACTION_MATCHES_NOTHING", "ACTION_NEEDS_WILDCARD_RESOURCE",
                 "RESOURCE_TYPE_MISMATCH", "RESOURCE_MATCHES_NO_ACTION", "MALFORMED_ARN"}
_CONDITIONS = st.sampled_from([None, {"Bool": {"aws:SecureTransport": "true"}},
                               {"StringEquals": {"aws:PrincipalTag/team": "red"}}])


@st.composite
def _statements(draw: st.DrawFn) -> dict[str, Any]:
    s: dict[str, Any] = {"Effect": draw(st.sampled_from(["Allow", "Deny"])),
                         "Action": draw(st.lists(_ACTIONS, min_size=1, max_size=2)),
                         "Resource": draw(st.lists(_RESOURCES, min_size=1, max_size=2))}
    cond = draw(_CONDITIONS)
    if cond:
        s["Condition"] = cond
    return s


# Requests as the gateway forms them: each action with a resource of its type ("*" when it has none).
_STREAMS = ("arn:aws:kinesisvideo:us-east-1:111122223333:stream/cam-01/1",
            "arn:aws:kinesisvideo:us-east-1:111122223333:stream/other/1")
_REQUESTS = [Request("arn:aws:iam::111122223333:user/u", f"kinesisvideo:{a}", r, ctx)
             for a, resources in (("GetMedia", _STREAMS), ("PutMedia", _STREAMS), ("GetClip", _STREAMS),
                                  ("ListStreams", ("*",)),
                                  ("ConnectAsViewer", ("arn:aws:kinesisvideo:us-east-1:111122223333:channel/door/1",)))
             for r in resources
             for ctx in ({"aws:SecureTransport": "true", "aws:PrincipalTag/team": "red"},
                         {"aws:SecureTransport": "false"})]


def _decisions(document: dict[str, Any]) -> list[str]:
    policies = PolicySet(identity=(compile_policy(document, "p"),))
    return [evaluate(r, policies).decision.value for r in _REQUESTS]


@settings(max_examples=200, deadline=None)
@given(st.lists(_statements(), min_size=1, max_size=3))
def test_property_removing_what_a_finding_calls_dead_changes_no_decision(statements: list[dict[str, Any]]) -> None:
    document = doc(*statements)
    got = findings(document)
    before = _decisions(document)
    positions = lint.json_positions(json.dumps(document, indent=1))
    for f in got:
        assert f.path in positions, f.path          # every path is a real place in the document
        if f.code in ("REDUNDANT_STATEMENT", "SHADOWED_BY_DENY"):
            index = int(f.path.removeprefix("$.Statement[").rstrip("]"))
            without = doc(*(s for i, s in enumerate(statements) if i != index))
            assert _decisions(without) == before, f.as_dict()
        elif f.code in _DEAD_ELEMENT:
            m = re.fullmatch(r"\$\.Statement\[(\d+)\]\.(Action|Resource)\[(\d+)\]", f.path)
            assert m, f.path
            i, member, k = int(m[1]), m[2], int(m[3])
            changed = copy.deepcopy(statements)
            del changed[i][member][k]
            if not changed[i][member]:
                del changed[i]
            assert _decisions(doc(*changed)) == before, f.as_dict()


def test_jsonl_cases_carry_their_findings() -> None:
    cases = [{"id": "a", "policy": doc(allow("kinesisvideo:GetMeida"))},
             {"id": "b", "policyType": "resource", "policy": doc(allow("kinesisvideo:GetMedia"))}]
    out = io.StringIO()
    cli.main(["validate", "--jsonl"], stdin=io.StringIO("".join(json.dumps(c) + "\n" for c in cases)), stdout=out)
    a, b = (json.loads(line) for line in out.getvalue().splitlines())
    assert a["valid"] is True and [f["code"] for f in a["findings"]] == ["UNKNOWN_ACTION"]
    assert b["valid"] is False and b["findings"] == []
