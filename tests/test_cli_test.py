"""`authz test`: file and case errors, failure explanations, --filter and JUnit output."""

from __future__ import annotations

import contextlib
import io
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from authz import cli

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "examples" / "bundle"
STREAM = "arn:aws:kinesisvideo:us-west-2:123456789012:stream/your_stream/0123456789012"
CAMERA = "arn:aws:iam::123456789012:user/camera"
VIEWER = "arn:aws:iam::123456789012:user/viewer"


def run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(argv, stdin=io.StringIO(""), stdout=out)
    return code, out.getvalue(), err.getvalue()


def case(**over: object) -> dict[str, object]:
    return {"name": "camera pushes", "principal": CAMERA, "action": "kinesisvideo:PutMedia", "resource": STREAM,
            "expect": "Allow", **over}


def write(tmp_path: Path, tests: list[object], name: str = "t.yaml", **top: object) -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"bundle": str(BUNDLE), "tests": tests, **top}))
    return p


def test_an_unreadable_file_is_an_error_naming_it_not_minus_one_passed(tmp_path: Path) -> None:
    bad = tmp_path / "broken.yaml"
    bad.write_text("bundle: [unclosed\n")
    code, out, _ = run(["test", str(bad)])
    assert code == 2
    assert "-1 passed" not in out and out.splitlines()[-1] == "0 passed, 0 failed, 1 test file(s) could not run"
    assert f"ERROR {bad}: cannot read" in out
    code, out, _ = run(["test", str(tmp_path / "absent.yaml")])
    assert code == 2 and "absent.yaml" in out


def test_a_bundle_that_does_not_load_exits_2(tmp_path: Path) -> None:
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({"bundle": "no-such-dir", "tests": [case()]}))
    code, out, _ = run(["test", str(p)])
    assert code == 2 and f"ERROR {p}: the bundle did not load" in out


def test_a_typo_in_a_key_names_the_key_and_the_allowed_keys(tmp_path: Path) -> None:
    c = case()
    c["principle"] = c.pop("principal")
    code, err, _ = run(["test", str(write(tmp_path, [c]))])
    assert code == 2
    assert "tests[0]" in err and "'principle'" in err and "allowed:" in err and "principal" in err
    c = case()
    del c["resource"]
    code, err, _ = run(["test", str(write(tmp_path, [c]))])
    assert code == 2 and "missing key(s) ['resource']" in err


def test_an_invalid_expect_is_refused_with_the_allowed_values(tmp_path: Path) -> None:
    # "allow" (lower case) used to be compared as a string and reported as an ordinary failure;
    # "error: ..." style values could even pass.
    for bad in ("allow", "Deny", "", None, 1):
        code, err, _ = run(["test", str(write(tmp_path, [case(expect=bad)]))])
        assert code == 2, bad
        assert "tests[0].expect" in err and "Allow, ExplicitDeny, ImplicitDeny" in err


def test_a_failing_case_explains_itself(tmp_path: Path) -> None:
    p = write(tmp_path, [case(name="camera denied?", expect="ImplicitDeny"),
                         case(name="viewer pushes", principal=VIEWER)])
    code, out, _ = run(["test", str(p)])
    assert code == 1
    lines = [x for x in out.splitlines() if x.startswith("FAIL")]
    assert len(lines) == 2
    assert "expected ImplicitDeny, got Allow" in lines[0] and "decided by identity policy" in lines[0]
    assert "expected Allow, got ImplicitDeny" in lines[1] and "no statement allowed it" in lines[1]
    assert out.rstrip().endswith("0 passed, 2 failed")


def test_filter_runs_only_matching_names(tmp_path: Path) -> None:
    p = write(tmp_path, [case(name="alpha"), case(name="beta", expect="ExplicitDeny")])
    code, out, _ = run(["test", "-k", "alph", str(p)])
    assert code == 0 and "1 passed, 0 failed" in out
    code, out, _ = run(["test", "--filter", "beta", str(p)])
    assert code == 1 and "0 passed, 1 failed" in out


def test_junit_output(tmp_path: Path) -> None:
    good = write(tmp_path, [case(name="ok one"), case(name="bad one", expect="ExplicitDeny")], "a.yaml")
    broken = tmp_path / "b.yaml"
    broken.write_text("tests: []\n")
    code, out, _ = run(["test", "--output", "junit", str(good), str(broken)])
    assert code == 2
    root = ET.fromstring(out)
    suite = root.find("testsuite")
    assert suite is not None
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("3", "1", "1")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert cases["ok one"].find("failure") is None
    failure = cases["bad one"].find("failure")
    assert failure is not None and "expected ExplicitDeny, got Allow" in (failure.get("message") or "")
    assert "decided by" in (failure.text or "")
    assert any(c.find("error") is not None and "b.yaml" in (c.find("error").get("message") or "")  # type: ignore[union-attr]
               for c in suite.iter("testcase"))
    code, out, _ = run(["test", "--output", "junit", str(ROOT / "examples" / "tests")])
    assert code == 0 and ET.fromstring(out).find("testsuite").get("failures") == "0"  # type: ignore[union-attr]


KEYS = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)


@settings(max_examples=40, deadline=None)
@given(drop=st.sets(st.sampled_from(cli.TEST_CASE_KEYS)), extra=st.sets(KEYS, max_size=2),
       expect=st.one_of(st.sampled_from(cli.EXPECT_VALUES), st.text(max_size=15), st.none(), st.integers()))
def test_property_a_case_either_runs_as_written_or_is_refused_naming_what_to_fix(
        drop: set[str], extra: set[str], expect: object) -> None:
    """Whatever shape a case has, it never counts as a pass unless it is well formed: a case with an
    unknown or missing key or a non-decision expect exits 2 naming the key; otherwise it runs."""
    c: dict[str, object] = case(expect=expect)
    for k in drop:
        c.pop(k, None)
    for k in extra:
        c.setdefault(k, "x")
    with tempfile.TemporaryDirectory() as d:
        code, out, _ = run(["test", str(write(Path(d), [c]))])
    unknown = set(c) - set(cli.TEST_CASE_KEYS)
    missing = set(cli.TEST_CASE_REQUIRED) - set(c)
    if unknown or missing or c.get("expect") not in cli.EXPECT_VALUES:
        assert code == 2 and "0 passed" in out
        named = unknown or missing or {"expect"}
        assert any(k in out for k in named), out
    else:
        assert code in (0, 1)
        assert ("1 passed" in out) == (code == 0) == (expect == "Allow")
