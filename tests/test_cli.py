"""The `authz` command line: simulate, validate, test."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from authz import cli
from tests.conformance import load_cases

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str], stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(argv, stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def test_simulate_reports_malformed_cases_in_place_and_goes_on() -> None:
    good = load_cases("decisions")[0]
    lines = [json.dumps(good), "not json", json.dumps([1, 2]), json.dumps({"id": "x", "principal": 5}),
             json.dumps({**good, "id": "bad-ctx", "context": {"k": {"nested": 1}}}), json.dumps(good)]
    code, out = run(["simulate"], "\n".join(lines) + "\n")
    assert code == 0
    got = [json.loads(x) for x in out.splitlines()]
    assert len(got) == 6
    assert got[0]["decision"] == good["expect"] and got[0]["error"] is None
    for bad in got[1:5]:
        assert bad["decision"] is None and bad["error"]
    assert got[3]["id"] == "x" and "principal" in got[3]["error"]
    assert got[5] == got[0]


def test_simulate_explain_adds_the_explanation() -> None:
    case = next(c for c in load_cases("decisions") if c["expect"] == "ImplicitDeny" and "permissionBoundary" in c)
    _, out = run(["simulate", "--explain"], json.dumps(case) + "\n")
    line = json.loads(out)
    assert set(line["explanation"]) >= {"decidedBy", "perPolicyType", "missingContextKeys", "notes", "blockedBy"}


def test_validate_files(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kinesisvideo:GetMedia", "Resource": "*"}]}))
    bad = tmp_path / "bad.json"
    bad.write_text('{"Version": "2012-10-17", "Statement": [{"Effect": "allow", "Action": "GetMedia", "Resource": "*"}]}')
    code, out = run(["validate", str(good)])
    assert code == 0 and "valid identity policy" in out
    code, out = run(["validate", str(good), str(bad)])
    assert code == 1
    assert "$.Statement[0].Effect" in out and "$.Statement[0].Action" in out
    code, out = run(["validate", str(tmp_path / "missing.json")])
    assert code == 1 and "cannot read" in out


def test_validate_jsonl_agrees_with_the_cases() -> None:
    cases = load_cases("validation")
    _, out = run(["validate", "--jsonl"], "".join(json.dumps(c) + "\n" for c in cases))
    got = [json.loads(x) for x in out.splitlines()]
    assert [g["id"] for g in got] == [c["id"] for c in cases]
    for g, c in zip(got, cases):
        assert g["valid"] is (c["expect"] == "accept"), c["id"]
        for e in g["errors"]:
            assert e["path"].startswith("$") and e["message"]


def test_policy_tests_pass_and_fail(tmp_path: Path) -> None:
    code, out = run(["test", str(ROOT / "examples" / "tests")])
    assert code == 0 and "0 failed" in out
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(f"bundle: {ROOT / 'examples' / 'bundle'}\ntests:\n"
                     "  - name: viewers cannot write\n    principal: arn:aws:iam::123456789012:user/viewer\n"
                     "    action: kinesisvideo:PutMedia\n"
                     "    resource: arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012\n"
                     "    expect: Allow\n")
    code, out = run(["test", str(wrong)])
    assert code == 1 and "FAIL" in out and "got ImplicitDeny" in out


@pytest.mark.parametrize("argv", [["--help"], ["simulate", "--help"], ["validate", "--help"], ["test", "--help"]])
def test_help_explains(argv: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "authz.cli", *argv], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0
    assert "usage: authz" in proc.stdout and ("example" in proc.stdout or "COMMAND" in proc.stdout)
