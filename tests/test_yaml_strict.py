"""YAML read as strictly as JSON: a key given twice at any depth is an error naming the file and line (bundles,
`authz validate`, `authz test`); dates stay text; non-finite numbers are refused."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from authz import cli
from authz.policy.yamltext import StrictLoader, load_yaml
from authz.store import Store, StoreConfig
from authz.store.bundle import BundleError, load_bundle

ACCT = "111122223333"

DUPLICATE_EFFECT = f"""account: "{ACCT}"
users:
  - name: ops
    inline:
      ops:
        Version: 2012-10-17
        Statement:
          - Effect: Deny
            Action: "kinesisvideo:DeleteStream"
            Resource: "*"
            Effect: Allow
"""


def run(argv: list[str], stdin: str = "") -> tuple[int, str]:
    out = io.StringIO()
    code = cli.main(argv, stdin=io.StringIO(stdin), stdout=out)
    return code, out.getvalue()


def test_bundle_with_a_key_given_twice_deep_down_does_not_load(tmp_path: Path) -> None:
    (tmp_path / "ops.yaml").write_text(DUPLICATE_EFFECT)
    with pytest.raises(BundleError) as err:
        load_bundle(tmp_path)
    message = str(err.value)
    assert message.startswith("ops.yaml: ") and "line 11" in message and "'Effect'" in message
    assert "first on line 8" in message
    store = Store(StoreConfig(bundle_dir=tmp_path, watch_interval=0, cache_size=0))
    store.open()
    try:
        assert not store.ready and "line 11" in store.status().last_load_error
    finally:
        store.close()


def test_bundle_without_the_duplicate_loads_with_an_unquoted_version(tmp_path: Path) -> None:
    (tmp_path / "ops.yaml").write_text(DUPLICATE_EFFECT.replace("            Effect: Allow\n", ""))
    state = load_bundle(tmp_path)
    assert ACCT in state.accounts


@pytest.mark.parametrize("text,line", [
    ("a: 1\na: 2\n", 2),
    ("a:\n  b: {c: 1, c: 1}\n", 2),
    ("base: &b {Effect: Deny}\nstmt:\n  <<: *b\n  Effect: Allow\n", 4),     # a merge key does not override
    ("a: [{x: 1}, {y: 2, y: 3}]\n", 1),
    ("1: a\n1: b\n", 2),
])
def test_any_key_given_twice_is_refused_with_its_line(text: str, line: int) -> None:
    value, problems = load_yaml(text, max_chars=1000)
    assert value is None and len(problems) == 1
    assert f"line {line}," in problems[0].message and "more than once" in problems[0].message


@pytest.mark.parametrize("text", ["a: .inf\n", "a: -.Inf\n", "a: .nan\n", "a: " + "9" * 5000 + "\n"])
def test_non_finite_and_unconvertible_numbers_are_refused(text: str) -> None:
    value, problems = load_yaml(text, max_chars=10_000)
    assert value is None and "line 1" in problems[0].message


def test_dates_stay_text_and_the_size_limit_holds() -> None:
    assert load_yaml("Version: 2012-10-17\nt: 2001-12-14t21:59:43.10-05:00\n", max_chars=100)[0] == {
        "Version": "2012-10-17", "t": "2001-12-14t21:59:43.10-05:00"}
    value, problems = load_yaml("a: " + "x" * 200, max_chars=100)
    assert value is None and "the limit is 100" in problems[0].message


def test_validate_reads_yaml_policies(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("Version: 2012-10-17\nStatement:\n  - Effect: Allow\n    Action: kinesisvideo:Get*\n"
                    "    Resource: '*'\n")
    dup = tmp_path / "dup.yml"
    dup.write_text("Version: 2012-10-17\nStatement:\n  - Effect: Deny\n    Effect: Allow\n"
                   "    Action: kinesisvideo:Get*\n    Resource: '*'\n")
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text("Version: 2012-10-17\nStatement:\n  - Effect: allow\n    Action: kinesisvideo:Get*\n"
                     "    Resource: '*'\n")
    code, out = run(["validate", str(good)])
    assert code == 0 and "valid identity policy" in out
    code, out = run(["validate", str(good), str(dup), str(wrong)])
    assert code == 1
    assert f"{dup}: error: $: not valid YAML: line 4, column 5:" in out and "'Effect'" in out
    assert f"{wrong}: error: $.Statement[0].Effect:" in out


def test_authz_test_refuses_a_test_file_with_a_key_given_twice(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "ops.yaml").write_text(DUPLICATE_EFFECT.replace("            Effect: Allow\n", ""))
    case = ("bundle: bundle\ntests:\n  - name: delete\n    principal: arn:aws:iam::111122223333:user/ops\n"
            "    action: kinesisvideo:DeleteStream\n    resource: '*'\n    expect: {expect}\n")
    (tmp_path / "ok.yaml").write_text(case.format(expect="ExplicitDeny"))
    code, out = run(["test", str(tmp_path / "ok.yaml")])
    assert code == 0, out
    (tmp_path / "dup.yaml").write_text(case.format(expect="ExplicitDeny") + "    expect: Allow\n")
    code, out = run(["test", str(tmp_path / "dup.yaml")])
    assert code == 2 and "line 8" in out and "more than once" in out
    (tmp_path / "dup.json").write_text('{"bundle": "bundle", "bundle": "x", "tests": []}')
    code, out = run(["test", str(tmp_path / "dup.json")])
    assert code == 2 and "$.bundle" in out and "more than once" in out


def test_test_files_larger_than_the_limit_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "MAX_TEST_FILE_CHARS", 64)
    (tmp_path / "big.yaml").write_text("bundle: b\ntests: []\n" + "#" * 100 + "\n")
    code, out = run(["test", str(tmp_path / "big.yaml")])
    assert code == 2 and "the limit is 64" in out


# ------------------------------------------------------------------ the class: every duplicate, at any depth

KEY = st.text("abcdefgh", min_size=1, max_size=3).map(lambda s: "k" + s)   # never a YAML bool, null or number
SCALAR = st.one_of(st.text("ab XY:#-'\"\\\t\u00e9\u4e2d{}[],&*!|>%@`", max_size=6), st.integers(-1000, 1000),
                   st.booleans())
MAPPING = st.recursive(st.dictionaries(KEY, SCALAR, min_size=1, max_size=3),
                       lambda inner: st.dictionaries(KEY, st.one_of(SCALAR, inner, st.lists(inner, max_size=2)),
                                                     min_size=1, max_size=3), max_leaves=10)


def _render(node: dict[str, Any], dup: tuple[Any, ...] | None) -> tuple[str, int | None]:
    """Block-style YAML; the mapping at `dup` repeats its first key last. Returns (text, line of the repeat)."""
    lines: list[str] = []
    where: list[int] = []

    def mapping(m: dict[str, Any], indent: str, first_prefix: str, path: tuple[Any, ...]) -> None:
        prefix = first_prefix
        for k, v in m.items():
            if isinstance(v, dict):
                lines.append(f"{prefix}{k}:")
                mapping(v, indent + "  ", indent + "  ", (*path, k))
            elif isinstance(v, list):
                lines.append(f"{prefix}{k}:" + (" []" if not v else ""))
                for i, item in enumerate(v):
                    mapping(item, indent + "    ", indent + "  - ", (*path, k, i))
            else:
                lines.append(f"{prefix}{k}: {json.dumps(v, ensure_ascii=False)}")
            prefix = indent
        if path == dup:
            lines.append(f"{indent}{next(iter(m))}: \"again\"")
            where.append(len(lines))

    mapping(node, "", "", ())
    return "\n".join(lines) + "\n", (where[0] if where else None)


def _mapping_paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(node, dict):
        out.append(path)
        for k, v in node.items():
            out += _mapping_paths(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _mapping_paths(v, (*path, i))
    return out


@settings(max_examples=200, deadline=None)
@given(doc=MAPPING, data=st.data())
def test_property_a_key_given_twice_anywhere_is_refused_naming_its_line(doc: dict[str, Any],
                                                                       data: st.DataObject) -> None:
    text, _ = _render(doc, None)
    assert load_yaml(text, max_chars=1 << 20) == (doc, [])
    assert yaml.load(text, Loader=StrictLoader) == yaml.safe_load(text)     # only duplicates are treated otherwise
    dup = data.draw(st.sampled_from(_mapping_paths(doc)), label="duplicate at")
    text, line = _render(doc, dup)
    value, problems = load_yaml(text, max_chars=1 << 20)
    assert value is None and len(problems) == 1
    assert f"line {line}," in problems[0].message and "more than once" in problems[0].message
