"""`authz validate` on a bundle directory or an IAM authorization-details export: loaded as the sidecar loads it."""

from __future__ import annotations

import copy
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from authz import cli
from authz.store import Store, StoreConfig
from tests.test_bundle import details, encoded, streams_file

ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(argv, stdin=io.StringIO(""), stdout=out)
    return code, out.getvalue()


def with_inline(doc: Any) -> dict[str, Any]:
    d = copy.deepcopy(details())
    d["RoleDetailList"][0]["RolePolicyList"] = [{"PolicyName": "p", "PolicyDocument": doc}]
    return d


def test_an_export_file_is_validated_as_an_export_not_as_one_policy(tmp_path: Path) -> None:
    export = tmp_path / "auth.json"
    export.write_text(json.dumps(details()))
    code, out = run(["validate", str(export)])
    assert code == 0 and "valid IAM authorization-details export" in out and "3 policies" in out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(with_inline(encoded({"Version": "2012-10-17", "Statement": [
        {"Effect": "allow", "Action": "kinesisvideo:GetMedia", "Resource": "*"}]}))))
    code, out = run(["validate", str(bad)])
    assert code == 1
    assert out.startswith(f"{bad}: error: bad.json: $.RoleDetailList[0]") and "Effect" in out


def test_a_bundle_directory_is_loaded_as_the_sidecar_loads_it(tmp_path: Path) -> None:
    code, out = run(["validate", str(ROOT / "examples" / "bundle")])
    assert code == 0 and "valid bundle directory" in out
    (tmp_path / "a.json").write_text(json.dumps(details()))
    (tmp_path / "streams.json").write_text(json.dumps(streams_file()))
    code, out = run(["validate", str(tmp_path)])
    assert code == 0 and "valid bundle directory" in out
    (tmp_path / "z.yaml").write_text("account: '123456789012'\nusers:\n  - name: x\n    policies: [NoSuchPolicy]\n")
    code, out = run(["validate", str(tmp_path)])
    assert code == 1 and "z.yaml" in out and "NoSuchPolicy" in out
    code, out = run(["validate", str(tmp_path / "missing-dir") + "/"])
    assert code == 1 and "cannot read" in out


def test_a_policy_file_is_still_one_policy(tmp_path: Path) -> None:
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "kinesisvideo:GetMedia", "Resource": "*"}]}))
    code, out = run(["validate", str(p)])
    assert code == 0 and "valid identity policy" in out


EFFECTS = st.sampled_from(["Allow", "Deny", "allow", "", "Permit"])
ACTIONS = st.sampled_from(["kinesisvideo:GetMedia", "GetMedia", "kinesisvideo:*", "*", "kinesis video:Get"])
RESOURCES = st.sampled_from(["*", "arn:aws:kinesisvideo:*:*:stream/*", "not-an-arn", ""])


@settings(max_examples=40, deadline=None)
@given(effect=EFFECTS, action=ACTIONS, resource=RESOURCES, as_text=st.booleans())
def test_property_validate_accepts_an_export_exactly_when_the_sidecar_loads_it(
        effect: str, action: str, resource: str, as_text: bool) -> None:
    policy = {"Version": "2012-10-17", "Statement": [{"Effect": effect, "Action": action, "Resource": resource}]}
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "auth.json").write_text(json.dumps(with_inline(encoded(policy) if as_text else policy)))
        code, out = run(["validate", d])
        store = Store(StoreConfig(bundle_dir=Path(d), watch_interval=0))
        store.open()
        try:
            loads = store.ready
        finally:
            store.close()
    assert (code == 0) == loads, out
    if not loads:
        assert "auth.json: $.RoleDetailList[0]" in out


def test_an_export_of_the_wrong_shape_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    p = tmp_path / "auth.json"
    p.write_text(json.dumps({"UserDetailList": ["not an object"]}))
    code, out = run(["validate", str(p)])
    assert code == 1 and out.startswith(f"{p}: error: not a well-formed bundle")
