"""The decision cache serves an entry only for context values the decision would read identically: compared
exactly, type included, never by `==` alone (a tuple of one key's case-variant spellings equals a plain list)."""

from __future__ import annotations

from typing import Any, Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from authz.evaluate import CompiledPolicySet, Decision, PolicySet, decide
from authz.policy import RequestError, compile_policy
from authz.policy.conditions import Variants, normalise_context
from authz.policy.principals import parse_requester
from authz.store import Store, StoreConfig
from authz.store.bundle import dump_example
from authz.store.cache import DecisionCache, same_value

ACCT = "111122223333"
OPS = f"arn:aws:iam::{ACCT}:user/ops"
STREAM = f"arn:aws:kinesisvideo:us-east-1:{ACCT}:stream/cam-01/1600000000000"
ALLOW_ALL = {"Effect": "Allow", "Action": "kinesisvideo:*", "Resource": "*"}
DENY_OUTSIDE = {"Effect": "Deny", "Action": "kinesisvideo:GetMedia", "Resource": "*",
                "Condition": {"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    bundle = tmp_path_factory.mktemp("cache-exact") / "bundle"
    bundle.mkdir()
    dump_example(bundle / f"{ACCT}.json", {
        "account": ACCT, "users": [{"name": "ops", "inline": {"ops": {"Version": "2012-10-17",
                                                                      "Statement": [ALLOW_ALL, DENY_OUTSIDE]}}}],
        "streams": [{"name": "cam-01", "arn": STREAM}]})
    s = Store(StoreConfig(bundle_dir=bundle, watch_interval=0))
    s.open()
    assert s.ready
    yield s
    s.close()


def test_cached_allow_is_not_served_to_a_key_spelled_twice(store: Store) -> None:
    store.cache.clear()
    # Two values of aws:SourceIp: a plain operator does not match a multivalued key (spec 4.5), so the Deny
    # does not apply.
    first = store.authorize(OPS, "kinesisvideo:GetMedia", STREAM, {"aws:SourceIp": ["10.0.0.1", "192.0.2.1"]})
    assert first.result.decision is Decision.ALLOW
    # The same two values under two spellings of the key: any spelling may satisfy NotIpAddress, so it denies.
    # Its normalised value compares == to the cached one; the cache must still not serve the Allow.
    second = store.authorize(OPS, "kinesisvideo:GetMedia", STREAM, {},
                             trusted_context={"AWS:SOURCEIP": "10.0.0.1", "aws:SourceIp": "192.0.2.1"})
    assert (second.result.decision, second.cached) == (Decision.EXPLICIT_DENY, False)
    again = store.authorize(OPS, "kinesisvideo:GetMedia", STREAM, {"aws:SourceIp": ["10.0.0.1", "192.0.2.1"]})
    assert again.result.decision is Decision.ALLOW


def test_a_caller_context_naming_one_key_twice_is_refused(store: Store) -> None:
    with pytest.raises(RequestError) as err:
        store.authorize(OPS, "kinesisvideo:GetMedia", STREAM, {"aws:SourceIp": "10.0.0.1", "AWS:SOURCEIP": "192.0.2.1"})
    assert err.value.field == "context[aws:SourceIp]" and "'AWS:SOURCEIP'" in str(err.value)
    assert "case-insensitive" in str(err.value)
    with pytest.raises(RequestError):
        store.prepare_context({"aws:PrincipalTag/Team": "a", "aws:principaltag/team": "b"})


def test_same_value_compares_type_at_every_level() -> None:
    assert same_value("a", "a") and same_value(("a", "b"), ("a", "b"))
    assert same_value(Variants(("a", ("b",))), Variants(("a", ("b",))))
    assert not same_value(Variants(("a", "b")), ("a", "b"))
    assert not same_value(("a",), "a") and not same_value(Variants((("a",),)), Variants(("a",)))

    class Sneaky(str):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = str.__hash__

    assert not same_value(Sneaky("x"), "y") and not same_value(Sneaky("x"), Sneaky("y"))
    assert not same_value(["a"], ["a"])       # only str and tuples are values the engine reads


# ------------------------------------------------------------------ the class: a hit is always the fresh answer

KEYS = ("aws:SourceIp", "aws:PrincipalTag/team", "aws:TagKeys", "aws:SecureTransport", "aws:MultiFactorAuthAge")
POLICY = compile_policy({"Version": "2012-10-17", "Statement": [
    ALLOW_ALL,
    DENY_OUTSIDE,
    {"Effect": "Deny", "Action": "kinesisvideo:*", "Resource": "*",
     "Condition": {"StringEquals": {"aws:PrincipalTag/team": "blocked"}}},
    {"Effect": "Deny", "Action": "kinesisvideo:*", "Resource": "*",
     "Condition": {"ForAnyValue:StringLike": {"aws:TagKeys": "secret*"}}},
    {"Effect": "Deny", "Action": "kinesisvideo:*", "Resource": "*",
     "Condition": {"Bool": {"aws:SecureTransport": "false"}}},
    {"Effect": "Deny", "Action": "kinesisvideo:*", "Resource": "*",
     "Condition": {"NumericGreaterThan": {"aws:MultiFactorAuthAge": "3600"}}},
    {"Effect": "Deny", "Action": "kinesisvideo:*", "Resource": "*",
     "Condition": {"StringNotEqualsIgnoreCase": {"aws:PrincipalTag/team": ["red", "blue", "${aws:username}"]}}},
]}, "p")
CPS = CompiledPolicySet(PolicySet(identity=(POLICY,)))
REQUESTER = parse_requester(OPS, "AIDAEXAMPLEUSERID0001")
SCALARS = st.one_of(st.sampled_from(("10.0.0.1", "192.0.2.1", "red", "RED", "blocked", "secret-a", "public", "true",
                                     "false", "10", "3601", "1e3", "")),
                    st.booleans(), st.integers(0, 5000), st.sampled_from((10.0, 3601.5)))
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=3))


def _spellings(key: str) -> st.SearchStrategy[str]:
    return st.sampled_from((key, key.lower(), key.upper(), key.swapcase()))


@st.composite
def contexts(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        for spelling in draw(st.lists(_spellings(key), min_size=1, max_size=2, unique=True)):
            out[spelling] = draw(VALUES)
    return out


@st.composite
def request_pairs(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any]]:
    first = draw(contexts())
    how = draw(st.sampled_from(("independent", "respelled", "retyped")))
    if how == "independent":
        return first, draw(contexts())
    second: dict[str, Any] = {}
    for key, value in first.items():
        values = value if isinstance(value, list) else [value]
        if how == "respelled" and len(values) > 1:
            # The same values, one per spelling of the key: equal as tuples, read differently.
            for spelling, v in zip((key, key.upper(), key.lower(), key.swapcase()), values):
                second[spelling] = v
        elif how == "retyped":
            second[key] = [str(v).lower() if isinstance(v, bool) else str(v) for v in values] \
                if draw(st.booleans()) else (values[0] if len(values) == 1 else values)
        else:
            second[key] = value
    return first, second


def _fresh(values: dict[str, Any]) -> Any:
    return decide(CPS, REQUESTER, "kinesisvideo:GetMedia", STREAM, None, dict(values))


@settings(max_examples=400, deadline=None)
@given(pair=request_pairs())
def test_property_a_cache_hit_is_always_the_fresh_answer(pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    first, second = (normalise_context({**c, "aws:username": "ops"}) for c in pair)
    cache = DecisionCache(8)
    key = ("rev", OPS, "kinesisvideo:getmedia", STREAM)
    cache.put(key, first, _fresh(first), (), 1)
    hit = cache.get(key, second, 1)
    if hit is not None:
        fresh = _fresh(second)
        assert (hit.decision, hit.deciding) == (fresh.decision, fresh.deciding), (pair, hit, fresh)


@settings(max_examples=60, deadline=None)
@given(pair=request_pairs())
def test_property_store_answers_from_cache_equal_fresh_answers(store: Store,
                                                               pair: tuple[dict[str, Any], dict[str, Any]]) -> None:
    # Caller contexts that name a key twice are refused, so the case-variant spellings go in as the
    # trusted context (this process's own gateway mapping), which the store takes as it is.
    first, second = pair
    store.cache.clear()
    store.authorize(OPS, "kinesisvideo:GetMedia", STREAM, {}, trusted_context=first)
    got = store.authorize(OPS, "kinesisvideo:GetMedia", STREAM, {}, trusted_context=second)
    if got.cached:
        store.cache.clear()
        fresh = store.authorize(OPS, "kinesisvideo:GetMedia", STREAM, {}, trusted_context=second)
        assert not fresh.cached
        assert (got.result.decision, got.result.deciding) == (fresh.result.decision, fresh.result.deciding)


def test_the_property_meets_the_case_it_guards() -> None:
    """The respelled pair of the regression is one the property generates and checks."""
    ctx = {"aws:PrincipalTag/team": "red", "aws:username": "ops"}
    first = normalise_context({**ctx, "aws:SourceIp": ["10.0.0.1", "192.0.2.1"]})
    second = normalise_context({**ctx, "aws:SourceIp": "10.0.0.1", "AWS:SOURCEIP": "192.0.2.1"})
    assert first["aws:sourceip"] == second["aws:sourceip"]            # equal by ==, as the old cache compared
    assert (_fresh(first).decision, _fresh(second).decision) == (Decision.ALLOW, Decision.EXPLICIT_DENY)
    cache = DecisionCache(8)
    cache.put("k", first, _fresh(first), (), 1)
    assert cache.get("k", second, 1) is None
