"""The wildcard matcher: table cases, equivalence with the obvious matcher, hostile input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.policy.glob import Glob, glob_match_slow

TABLE = [
    ("*", "", True), ("*", "anything/at:all", True), ("", "", True), ("", "a", False),
    ("abc", "abc", True), ("abc", "abd", False), ("a?c", "abc", True), ("a?c", "ac", False),
    ("cam-*", "cam-01/1600000000000", True), ("*/test/*", "1/2/test/3/object.jpg", True),
    ("*/test/*", "test/object.jpg", False), ("bucket/*/test/*", "bucket//test/object.jpg", True),
    ("bucket/*/test/*", "bucket/1-test/object.jpg", False), ("Get*", "GetMedia", True),
    ("get*media*", "getmediaforfragmentlist", True), ("get*media*", "getclip", False),
    ("a*b*c", "abc", True), ("a*b*c", "acb", False), ("*?", "", False), ("*?", "x", True),
    ("[ab]", "a", False), ("[ab]", "[ab]", True),   # no character classes, unlike fnmatch
    ("a**b", "ab", True), ("??", "ab", True), ("??", "abc", False),
]


@pytest.mark.parametrize("pattern,text,expected", TABLE)
def test_table(pattern: str, text: str, expected: bool) -> None:
    assert Glob.of(pattern).match(text) is expected
    assert glob_match_slow(pattern, text) is expected


@settings(max_examples=600, deadline=None)
@given(st.text(alphabet="ab*?/", max_size=12), st.text(alphabet="ab/", max_size=14))
def test_equals_the_obvious_matcher(pattern: str, text: str) -> None:
    assert Glob.of(pattern).match(text) == glob_match_slow(pattern, text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="ab?", min_size=1, max_size=40), st.text(alphabet="ab", max_size=300))
def test_long_question_mark_chunks_use_the_bit_parallel_scan(chunk: str, text: str) -> None:
    pattern = "*" + chunk + "*"
    assert Glob.of(pattern).match(text) == glob_match_slow(pattern, text)


@pytest.mark.parametrize("pattern,text,expected", [
    ("*" + "?a" * 5000 + "*b", "a" * 10000, False),
    ("a*" * 5000, "a" * 10000 + "b", True),
    ("*" + "?" * 5000 + "b", "a" * 10000, False),
    ("*a" * 5000 + "*c", "a" * 10000 + "b", False),
    ("*" + "a?" * 2500 + "c*", "ab" * 5000, False),
])
def test_hostile_patterns_are_answered(pattern: str, text: str, expected: bool) -> None:
    # Timing lives in `make bench-engine`; here: exponential or quadratic matchers would not return.
    assert Glob.of(pattern).match(text) is expected
